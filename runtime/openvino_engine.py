"""The engine interface over OpenVINO (Intel's inference runtime, common on x86 base-station servers).

    engine = OvEngine(package, EngineConfig(precision="fp32", backend="openvino"))

The package's ONNX graphs are compiled by OpenVINO's ONNX front end for its CPU plugin; nothing
is converted ahead of time, so every package runs on both backends. Precision:

- fp32 graphs run with `INFERENCE_PRECISION_HINT = f32`: OpenVINO would otherwise pick bf16 on
  CPUs that have it, which moves scores by ~1% (measured on the shipped prior), not what fp32 means.
- fp16 graphs run with an f16 hint where the CPU plugin supports it (else f32). bf16, the
  plugin's default on CPUs with it, was ~2x faster on this project's CPU but moved scores by 1.4%,
  twice ONNX Runtime's fp16 (measured on the shipped prior): a different precision, not this one.
- int8 graphs (QDQ) run OpenVINO's low-precision kernels, the ops left unquantized at f32 (as
  ONNX Runtime runs them). The package's activations are signed and symmetric (what TensorRT
  takes); OpenVINO gets them as unsigned with zero point 128 (`unsigned_activations`: the same
  quantization grid, value for value), the form its CPU kernels are built for: with the signed form
  they were 43% off on an AMD EPYC. Those kernels still depend on the CPU: an int8 engine checks
  itself on a probe when it opens and refuses to run where it disagrees with the QDQ reference
  (`_check_int8`).
- `deterministic` forces f32, one thread and `EXECUTION_MODE_HINT = ACCURACY`.

Infer requests are per thread (an OpenVINO request is not thread-safe; compiled models are), and
the forward-with-saves graph's outputs stay in its request's memory until that thread's next
forward: `backward` refuses saved tensors from an older forward instead of reading overwritten ones.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ckm_edge.runtime.engine import EngineBase, EngineConfig, EngineError, graph_inputs, network_inputs
from ckm_edge.runtime.package import Package


def unavailable_reason() -> str | None:
    """Why OpenVINO cannot run here (None when it can)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "the openvino package is not installed (install ckm-edge with the `openvino` extra)"
    return None


def _unsigned_or_path(path):
    """What OpenVINO reads for an int8 graph: its unsigned-activation form where `onnx` is
    installed, else the file as shipped (the probe in `_check_int8` then decides)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return str(path)
    return unsigned_activations(path)[0]


class _Saved:
    """The forward graph's outputs a backward reads, tied to the request that holds them."""

    def __init__(self, tensors: list, generation: int, owner: int):
        self.tensors, self.generation, self.owner = tensors, generation, owner


INT8_TOLERANCE = 0.25  # relative score error of OpenVINO's int8 kernels against the QDQ reference
U8_ZERO_POINT = "ckm_edge_u8_zero_point"  # the shared initializer `unsigned_activations` adds


def unsigned_activations(path) -> tuple[bytes, int]:
    """The QDQ graph at `path` (its external weights read in) with every activation quantized
    signed-symmetric (int8, zero point 0) re-expressed as unsigned with zero point 128: q + 128 on
    the same scale, so Quantize -> Dequantize gives the same values (the grid [-128 s, 127 s] is
    kept, saturation included). Weights, and any quantized tensor read by anything but a
    DequantizeLinear or leaving the graph, are untouched. Returns (serialized model, activations
    rewritten). Needs the `onnx` package (the `openvino` extra)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    initializers = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in g.output}

    def signed_zero(name: str) -> bool:
        if name not in initializers:
            return False
        zp = numpy_helper.to_array(initializers[name])
        return zp.dtype == np.int8 and zp.shape == () and int(zp) == 0

    rewritten = 0
    for q in (n for n in g.node if n.op_type == "QuantizeLinear"):
        readers = consumers.get(q.output[0], [])
        if (len(q.input) < 3 or q.input[0] in initializers or not signed_zero(q.input[2]) or q.output[0] in outputs
                or not readers or any(r.op_type != "DequantizeLinear" or len(r.input) < 3 or not signed_zero(r.input[2])
                                      for r in readers)):
            continue
        q.input[2] = U8_ZERO_POINT
        for r in readers:
            r.input[2] = U8_ZERO_POINT
        rewritten += 1
    if rewritten:
        g.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), U8_ZERO_POINT))
    return model.SerializeToString(), rewritten


class OvEngine(EngineBase):
    library = "OpenVINO"

    def __init__(self, package: Package, config: EngineConfig = EngineConfig()):
        super().__init__()
        reason = unavailable_reason()
        if reason:
            raise EngineError(f"OpenVINO engine unavailable: {reason}")
        if config.device != "cpu":
            raise EngineError(f"the OpenVINO backend runs on the CPU, not {config.device!r}")
        import openvino as ov

        self.package, self.config = package, config
        self._core = ov.Core()
        self._compiled: dict = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._compile("score")
        if config.precision == "int8":
            self._check_int8()

    def _properties(self) -> dict:
        props = {"PERFORMANCE_HINT": "LATENCY"}
        props["INFERENCE_NUM_THREADS"] = self.config.cpu_threads()
        if self.config.precision in ("fp32", "int8") or self.config.deterministic:
            props["INFERENCE_PRECISION_HINT"] = "f32"  # int8: the ops left unquantized, as ONNX Runtime runs them
        elif self.config.precision == "fp16":
            capabilities = self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            props["INFERENCE_PRECISION_HINT"] = "f16" if "FP16" in capabilities else "f32"
        if self.config.deterministic:
            props["INFERENCE_NUM_THREADS"] = 1
            props["EXECUTION_MODE_HINT"] = "ACCURACY"
        return props

    def _compile(self, graph: str):
        self._check_open()
        with self._lock:
            if graph not in self._compiled:
                path = self.package.graph_path(self.config.precision, graph)
                model = str(path)
                if self.config.precision == "int8":
                    model = self._checked(f"reading {path}", self._core.read_model, _unsigned_or_path(path))
                self._compiled[graph] = self._checked(f"compiling {path}", self._core.compile_model, model, "CPU",
                                                      self._properties())
                if {"forward", "backward"} <= self._compiled.keys():
                    self._link()
            return self._compiled[graph]

    def _check_int8(self) -> None:
        """OpenVINO's int8 kernels depend on the CPU: on an AMD EPYC (AVX512-VNNI and -BF16; OpenVINO
        2025.4 and 2026.4, every property tried) the shipped prior's int8 scores with the package's
        signed activations were 43% off its fp32 scores, ONNX Runtime's int8 3%; the same graph
        with its activations unsigned (`unsigned_activations`, what the engine compiles) 3.2%.
        Kernels are per CPU, so an int8 engine first scores a fixed probe and compares with the
        QDQ graph's reference semantics (ONNX Runtime's int8 where installed, else OpenVINO's fp32
        graph), refusing to open when they disagree by more than INT8_TOLERANCE."""
        n = self.package.tile_size
        x = np.random.default_rng(0).uniform(0.0, 1.0, (2, 2, n, n)).astype(np.float32)
        t = np.array([0.9, 0.1], np.float32)
        feeds = network_inputs(x, t, None, self.condition_channels)
        path = self.package.graph_path("int8", "score")
        try:
            import onnxruntime as ort

            ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            against = "ONNX Runtime's int8"
        except ImportError:
            fp32 = self.package.graph_path("fp32", "score")
            if not fp32.exists():
                return
            ref = self._core.compile_model(str(fp32), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feeds)[0]
            against = "the package's fp32 graph"
        out = self.score(x, t)
        self.calls.clear()
        err = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))
        if not err <= INT8_TOLERANCE:
            name = self._core.get_property("CPU", "FULL_DEVICE_NAME")
            raise EngineError(f"OpenVINO's int8 kernels on this CPU ({name}) disagree with {against} by {err:.0%} "
                              f"on a probe (more than {INT8_TOLERANCE:.0%}): run int8 with the onnxruntime backend, "
                              "or fp32 / fp16 with openvino")

    def _link(self) -> None:
        """Which forward output feeds each backward input (by tensor name; saved_i -> saved_i)."""
        outputs = [o.get_names() for o in self._compiled["forward"].outputs]
        self._feeds_from = []
        for port in self._compiled["backward"].inputs:
            names = port.get_names()
            if "v" in names:
                self._feeds_from.append(None)
                continue
            match = [i for i, o in enumerate(outputs) if o & names]
            if len(match) != 1:
                raise EngineError("the package's forward outputs do not line up with its backward inputs")
            self._feeds_from.append(match[0])

    def _request(self, graph: str):
        requests = self._local.__dict__.setdefault("requests", {})
        if graph not in requests:
            requests[graph] = self._compile(graph).create_infer_request()
        return requests[graph]

    # -- the hooks -------------------------------------------------------------------------------
    def _score(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        request = self._request("score")
        self._checked("score graph", request.infer, graph_inputs(x, t, cond))
        return np.array(request.get_output_tensor(0).data, copy=True)

    def _forward(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> tuple[np.ndarray, Any]:
        request = self._request("forward")
        self._checked("forward graph", request.infer, graph_inputs(x, t, cond))
        self._compile("backward")
        outputs = [request.get_output_tensor(i) for i in range(len(self._compiled["forward"].outputs))]
        self._local.generation = getattr(self._local, "generation", 0) + 1
        saved = _Saved(outputs, self._local.generation, threading.get_ident())
        return np.array(outputs[0].data, copy=True), saved

    def _backward(self, saved: Any, v: np.ndarray) -> np.ndarray:
        if (not isinstance(saved, _Saved) or saved.owner != threading.get_ident()
                or saved.generation != getattr(self._local, "generation", None)):
            raise EngineError("backward needs the saved tensors of this thread's latest forward call "
                              "(OpenVINO keeps them in the forward request's memory)")
        request = self._request("backward")
        feeds = {i: (v if k is None else saved.tensors[k]) for i, k in enumerate(self._feeds_from)}
        self._checked("backward graph", request.infer, feeds)
        return np.array(request.get_output_tensor(0).data, copy=True)

    def _release(self) -> None:
        self._compiled.clear()
        self._local = threading.local()
