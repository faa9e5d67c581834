"""Network size against edge cost, and against accuracy where trained models are given: the
measured curve the prior's size is chosen by.

Per U-Net (a preset, or a trained checkpoint named `label=path`):

- parameters, and FLOPs per score evaluation of one 128 x 128 tile (torch.utils.flop_counter;
  a multiply-add counts 2);
- the fp32 score graph's size on disk, and the package size estimated from the parameters at the
  shipped package's measured ratio (ckm-prior 1.0.0: 20.6 MiB of fp32, fp16 and int8 graphs for
  1.53 M parameters, 14.1 bytes per parameter: the backward graphs keep transposed weights too);
- ONNX Runtime CPU latency of one score evaluation at batch 1 and 4 (median of `repeats` after a
  warm-up) on this machine: what a DiffPIR step costs at the edge;
- for trained checkpoints, accuracy: gain RMSE (all and unobserved cells) of the default
  construction (runtime.recommend's built-in recommendation, the runtime's own sampler over the
  PyTorch network: benchmarks.gpu.TorchEngine) on held-out tiles for the paper tasks.

Untrained presets give the cost side only; accuracy needs each size trained on the same data for
the same budget (docs/training.md).
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ckm_edge.runtime.tasks import PAPER_TASKS

PACKAGE_BYTES_PER_PARAMETER = 14.1  # measured on ckm-prior 1.0.0 (fp32, fp16, int8 graphs)
PACKAGE_LIMIT_MIB = 25.0  # the shipped prior's package (fp32, fp16 and int8 graphs) at most


@dataclasses.dataclass(frozen=True)
class Candidate:
    label: str
    checkpoint: Path | None  # None: an untrained preset (cost only)


def parse_candidate(text: str) -> Candidate:
    """`PRESET` or `LABEL=CHECKPOINT`."""
    from ckm_edge.training.unet import PRESETS

    if "=" in text:
        label, path = text.split("=", 1)
        if not Path(path).is_file():
            raise ValueError(f"checkpoint {path} of {label!r} does not exist")
        return Candidate(label, Path(path))
    if text not in PRESETS:
        raise ValueError(f"{text!r} is neither a preset ({', '.join(PRESETS)}) nor LABEL=CHECKPOINT")
    return Candidate(text, None)


def load(candidate: Candidate, tile_size: int):
    """(model, meta) of a candidate: the checkpoint's, or a freshly initialised preset prior."""
    import torch

    from ckm_edge.runtime.schedule import Schedule
    from ckm_edge.training.checkpoint import load_model
    from ckm_edge.training.unet import PRESETS, ScoreModel

    if candidate.checkpoint is not None:
        model, meta = load_model(candidate.checkpoint)
        if meta.get("kind") != "prior":
            raise ValueError(f"{candidate.checkpoint} is a {meta.get('kind')!r} model, not a prior")
        return model.float().eval(), meta
    torch.manual_seed(0)
    unet = dataclasses.replace(PRESETS[candidate.label], in_channels=2, out_channels=2, time_conditional=True)
    schedule = Schedule.vp(1000)
    return ScoreModel(unet, schedule).eval(), {"unet": unet.to_dict(), "schedule": schedule.to_dict()}


def cost(model, tile_size: int, repeats: int = 10, batches=(1, 4)) -> dict:
    """Parameters, FLOPs per evaluation, graph bytes, ORT CPU latency per batch (ms)."""
    import onnxruntime as ort
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ckm_edge.export.onnx_export import example_inputs, export_score

    params = sum(p.numel() for p in model.parameters())
    inputs = example_inputs(model, 1, tile_size, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    out = {"parameters": int(params), "gflops_per_eval": counter.get_total_flops() / 1e9}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_score(model, Path(tmp) / "score.onnx", tile_size)
        out["score_graph_mib"] = path.stat().st_size / 2**20
        out["package_mib_estimate"] = params * PACKAGE_BYTES_PER_PARAMETER / 2**20
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        latency = {}
        for b in batches:
            feed = {i.name: np.repeat(v.numpy(), b, axis=0) for i, v in zip(sess.get_inputs(), example_inputs(
                model, 1, tile_size, torch.Generator().manual_seed(1)))}
            sess.run(None, feed)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t0)
            latency[str(b)] = statistics.median(times) * 1e3
        out["ort_cpu_ms"] = latency
    return out


def accuracy(model, meta: dict, tiles: np.ndarray, task_names=PAPER_TASKS, sigma: float = 0.01, seed: int = 0,
             device: str = "cpu") -> dict:
    """Gain RMSE (all / unobserved cells, dB) of the default construction per task, mean over tiles."""
    from ckm_edge.benchmarks import solvers
    from ckm_edge.benchmarks.gpu import TorchEngine
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.recommend import resolve
    from ckm_edge.runtime.schedule import Schedule

    engine = TorchEngine(model, device)
    schedule = Schedule.from_dict(meta["schedule"])
    shape = tiles.shape[1:]
    out = {}
    for (task, i), (op, y, unobs, _) in solvers.problems(tiles, task_names, sigma, seed).items():
        sampler, steps, samples = resolve(None, op)
        result = construct(engine, schedule, op, y, shape, ConstructConfig(steps, samples, seed, sampler=sampler), sigma=sigma)
        out.setdefault(task, []).append(solvers.metrics(result.mean, tiles[i], unobs))
    return {t: solvers.mean_metrics(rows) for t, rows in out.items()}


def run(candidates: list[Candidate], tiles: np.ndarray | None, repeats: int = 10, device: str = "cpu",
        progress=print) -> dict:
    """A row per candidate (cost; accuracy for trained ones given `tiles`), each saying whether its
    estimated package is over the shipped prior's limit."""
    rows = []
    size = 128 if tiles is None else tiles.shape[-1]
    for c in candidates:
        model, meta = load(c, size)
        row = {"label": c.label, "checkpoint": None if c.checkpoint is None else str(c.checkpoint),
               "unet": meta.get("unet"), "trained_steps": meta.get("trained_steps"), **cost(model, size, repeats)}
        row["over_package_limit"] = row["package_mib_estimate"] > PACKAGE_LIMIT_MIB
        if c.checkpoint is not None and tiles is not None:
            row["accuracy"] = accuracy(model, meta, tiles, device=device)
        rows.append(row)
        progress(f"{c.label}: {row['parameters'] / 1e6:.2f} M parameters, {row['gflops_per_eval']:.2f} GFLOP, "
                 f"{row['ort_cpu_ms']['1']:.1f} ms at batch 1")
    return {"rows": rows, "package_limit_mib": PACKAGE_LIMIT_MIB}
