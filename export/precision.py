"""Precision variants of the exported graphs: FP16 (GPUs) and INT8 QDQ (CPUs, TensorRT).

TensorRT 10+/11 builds strongly typed networks, so precision lives in the ONNX itself: an FP16
graph (float16 weights and math, float32 inputs/outputs kept for the runtime) and a QDQ graph
(QuantizeLinear/DequantizeLinear pairs around quantized ops) for INT8. One INT8 ONNX therefore
serves ONNX Runtime and TensorRT alike.

INT8 is post-training static quantization calibrated on the training data: the calibration
inputs are training tiles perturbed by the package's own schedule at random steps (what the
score network sees while sampling), and for the backward graph the forward's saved tensors on
those inputs with cotangents of the size the sampler produces.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from ckm_edge.runtime.schedule import Schedule


def to_fp16(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # Keep float32 inputs/outputs; ops whose float16 versions ONNX Runtime's CPU provider lacks
    # (and that are numerically sensitive) stay in float32.
    converted = convert_float_to_float16(model, keep_io_types=True,
                                         op_block_list=["Round", "InstanceNormalization", "Softmax", "ScatterND", "GatherND"])
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(dst))


def calibration_inputs(tiles: np.ndarray, schedule: Schedule, rng: np.random.Generator,
                       condition_channels: int = 0) -> list[dict]:
    """One feed {x, t} per tile: x_i = scale_i x0 + std_i z at a random step i.

    A site-aware graph also gets `cond` (runtime.condition): the tile's own building layout and a
    base station drawn in or near the tile, each known or not with probability 1/2, so the
    quantization ranges cover the unconditional and the site-aware settings alike."""
    from ckm_edge.runtime import codec, condition

    encoding = condition.Encoding.for_channels(condition_channels) if condition_channels else None
    feeds = []
    for tile in tiles:
        i = np.array([rng.integers(len(schedule))])
        z = rng.standard_normal((1,) + tile.shape)
        x = schedule.perturb(tile[None].astype(np.float64), z, i).astype(np.float32)
        feed = {"x": x, "t": schedule.times[i].astype(np.float32)}
        if condition_channels:
            h, w = tile.shape[-2:]
            building = codec.building_mask(tile)[None] if rng.random() < 0.5 else None
            bs = None
            if rng.random() < 0.5:
                bs = np.array([rng.uniform(-0.25, 1.25) * h, rng.uniform(-0.25, 1.25) * w, rng.uniform(10, 40)])
            feed["cond"] = condition.site_condition(building, bs, (h, w), batch=1, encoding=encoding)
        feeds.append(feed)
    return feeds


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
CONVOLUTIONS = ("Conv", "ConvTranspose")


def kept_in_float(model: onnx.ModelProto) -> list[str]:
    """The convolutions an INT8 graph keeps in float: the first and the last in topological order.

    In the score and forward graphs these are the stem (it reads the noisy map and the condition
    directly; 2-7 input channels) and the head (it writes the score; 2 output channels); in the
    backward graph, their transposes. They cost little (few channels) and carry the most
    quantization error into the result: with them in INT8, the default construction of the
    shipped prior lost 2.0-2.3 % gain RMSE on IPrandom and SR x2; with them in float, 0.9-1.0 %
    (procedural held-out tiles, issue 17)."""
    convs = [n.name for n in model.graph.node if n.op_type in CONVOLUTIONS]
    return sorted({convs[0], convs[-1]}) if convs else []


def to_int8(src: Path, dst: Path, feeds: list[dict]) -> list[str]:
    """Static QDQ quantization (symmetric, per-channel weights, min-max ranges over `feeds`) of
    the convolutions and matrix products, but for those `kept_in_float`; returns their names."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst.parent.mkdir(parents=True, exist_ok=True)
    prepared = dst.with_suffix(".prep.onnx")
    logging.getLogger("root").setLevel(logging.ERROR)
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    kept = kept_in_float(onnx.load(str(prepared), load_external_data=False))
    quantize_static(
        str(prepared), str(dst), _Reader(feeds),
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        per_channel=True, calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=kept,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    prepared.unlink(missing_ok=True)
    return kept


def backward_feeds(forward_onnx: Path, feeds: list[dict], rng: np.random.Generator) -> list[dict]:
    """Calibration feeds of the backward graph: the fp32 forward's saved tensors plus cotangents."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(forward_onnx), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()[1:]]
    out = []
    for feed in feeds:
        saved = sess.run(None, feed)[1:]
        v = rng.standard_normal(feed["x"].shape).astype(np.float32)
        v /= np.sqrt((v**2).sum())  # the sampler's cotangent g0 has unit norm per sample
        out.append({**dict(zip(names, saved)), "v": v})
    return out
