"""Per-step latency of the edge runtime against the PyTorch reference DPS, same network, same run.

Measures on this machine, batch 1 (and a batch sweep for the runtime):
- runtime guided step (forward-with-saves + backward + M corrector score calls), by precision;
- runtime Jacobian-free step (score calls only);
- PyTorch reference step (autograd through the network, the same algorithm), and the paper's
  configuration (M = 2 correctors: 3 forwards + 1 backward per step);
- the split of the runtime step into engine time and numpy loop overhead;
- the floor: the network's FLOPs per step (PyTorch's FLOP counter) over this machine's measured
  float32 matrix-multiply rate.
Ratios only compare numbers taken in this one run on this one machine.
"""

from __future__ import annotations

import time

import numpy as np

from ckm_edge.runtime import defaults, tasks
from ckm_edge.runtime.dps import DPSConfig
from ckm_edge.runtime.engine import EngineConfig, open_engine
from ckm_edge.runtime.package import Package
from ckm_edge.runtime.sampler import Observations, sample

SPEEDUP_TARGET = 2.5  # the runtime's guided step against the PyTorch reference's, on a CPU
CONSTRUCTION_TARGET_S = 2.0  # a default construction, seconds per map on this project's CPU


class _TimedEngine:
    """Wraps an engine and adds up the time spent inside it."""

    def __init__(self, engine):
        self.engine, self.seconds = engine, 0.0

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.seconds += time.perf_counter() - t0
        return out

    def score(self, x, t):
        return self._timed(self.engine.score, x, t)

    def forward(self, x, t):
        return self._timed(self.engine.forward, x, t)

    def backward(self, saved, v):
        return self._timed(self.engine.backward, saved, v)


def _problem(tile: np.ndarray, batch: int):
    x = np.repeat(tile[None], batch, axis=0)
    rng = np.random.default_rng(0)
    op = tasks.make_operator("ipbox", rng, x)
    return x, op, tasks.observe(op, x, rng)


def runtime_step(pkg: Package, tile: np.ndarray, precision: str, steps: int, batch: int = 1,
                 corrector: int = 1, jacobian_free: bool = False, threads: int = 0, device: str = "cpu",
                 backend: str = "onnxruntime") -> dict:
    x, op, y = _problem(tile, batch)
    schedule = pkg.schedule().respace(steps)
    cfg = DPSConfig(corrector_steps=corrector, jacobian_free=jacobian_free)
    with open_engine(pkg, EngineConfig(precision=precision, threads=threads, device=device, backend=backend)) as engine:
        warm = pkg.schedule().respace(2)
        sample(engine, warm, Observations.of(op, y, x.shape[1:], batch), [np.random.default_rng(b) for b in range(batch)], cfg)
        timed = _TimedEngine(engine)
        t0 = time.perf_counter()
        sample(timed, schedule, Observations.of(op, y, x.shape[1:], batch), [np.random.default_rng(b) for b in range(batch)], cfg)
        total = time.perf_counter() - t0
    return {"step_s": total / steps, "engine_s": timed.seconds / steps, "overhead_s": (total - timed.seconds) / steps}


def construction_times(pkg: Package, tile: np.ndarray, task_names=("ipbox", "sr2", "jtqr"), dps_steps: int = defaults.RECORD_DPS_STEPS,
                       threads: int = 0, sigma: float = tasks.DEFAULT_SIGMA) -> list[dict]:
    """Seconds per map of a whole construction, per task, same tile and engine: the paper's DPS
    (dps_steps steps, M = 1, one sample) against the default construction (the package's
    recommendation: sampler, steps and samples)."""
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.recommend import resolve

    rows = []
    shape = tile.shape
    with open_engine(pkg, EngineConfig(threads=threads)) as engine:
        engine.score(tile[None], np.ones(1, np.float32))  # warm-up
        for task in task_names:
            rng = np.random.default_rng(0)
            op = tasks.make_operator(task, rng, tile[None])
            y = tasks.observe(op, tile[None], rng, sigma)
            sampler, steps, samples = resolve(pkg.manifest.samplers, op)
            runs = {"default": ConstructConfig(steps, samples, sampler=sampler),
                    "dps": ConstructConfig(dps_steps, 1, sampler=DPSConfig(corrector_steps=1))}
            row = {"task": task, "default": f"{steps} steps x {samples} samples"}
            for name, cfg in runs.items():
                t0 = time.perf_counter()
                construct(engine, pkg.schedule(), op, y, shape, cfg, sigma=sigma)
                row[f"{name}_s"] = time.perf_counter() - t0
            rows.append(row)
    return rows


def torch_step(model, schedule_dict: dict, tile: np.ndarray, steps: int, corrector: int, threads: int = 0,
               device: str = "cpu") -> float:
    import torch

    from ckm_edge.runtime.schedule import Schedule
    from ckm_edge.training.reference_dps import DPSConfig, dps_sample

    if threads:
        torch.set_num_threads(threads)
    x, op, y = _problem(tile, 1)
    schedule = Schedule.from_dict(schedule_dict).respace(steps)
    cfg = DPSConfig(corrector_steps=corrector)
    model = model.to(device)
    y_t = torch.from_numpy(y).to(device)
    dps_sample(model, Schedule.from_dict(schedule_dict).respace(2), op, y_t, shape=x.shape,
               rng=np.random.default_rng(0), cfg=cfg, device=device)
    t0 = time.perf_counter()
    dps_sample(model, schedule, op, y_t, shape=x.shape, rng=np.random.default_rng(0), cfg=cfg, device=device)
    if device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def network_flops(model, tile_size: int) -> dict:
    """FLOPs of one forward and of one backward (input gradient only) at batch 1."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 2, tile_size, tile_size, requires_grad=True)
    t = torch.tensor([0.5])
    with FlopCounterMode(display=False) as fwd:
        s = model(x, t)
    with FlopCounterMode(display=False) as bwd:
        torch.autograd.grad(s, x, torch.ones_like(s))
    return {"forward": int(fwd.get_total_flops()), "backward": int(bwd.get_total_flops())}


def machine_gflops(seconds: float = 1.0) -> float:
    """Sustained float32 matrix-multiply rate of this machine through numpy's BLAS."""
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    a @ a
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ a
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - t0) / 1e9


def run(pkg: Package, model, meta: dict, tile: np.ndarray, steps: int = 10, batches=(1, 4), threads: int = 0,
        device: str = "cpu", backend: str = "onnxruntime") -> dict:
    """Every per-step measurement of the module docstring in one run, and on a CPU whole
    constructions (`construction_times`); the targets met as data."""
    import collections

    import onnx

    where = {"device": device, "backend": backend, "threads": threads}
    torch_m1 = torch_step(model, meta["schedule"], tile, steps, corrector=1, threads=threads, device=device)
    torch_m2 = torch_step(model, meta["schedule"], tile, steps, corrector=2, threads=threads, device=device)
    flops = network_flops(model, pkg.tile_size)
    gflops = _matmul_gflops(device)
    runtime = {f"{p}-b{b}": runtime_step(pkg, tile, p, steps, batch=b, **where) for p in pkg.precisions for b in batches}
    runtime["fp32-b1-jacobian-free"] = runtime_step(pkg, tile, "fp32", steps, jacobian_free=True, **where)
    ratio = torch_m1 / runtime["fp32-b1"]["step_s"]
    constructions = construction_times(pkg, tile, threads=threads) if device == "cpu" else []
    backward = collections.Counter(n.op_type for n in onnx.load(str(pkg.graph_path("fp32", "backward")),
                                                                load_external_data=False).graph.node)
    return {"steps_timed": steps, "threads": threads or "default", "package": f"{pkg.name} {pkg.version}",
            "tile_size": pkg.tile_size, "device": device, "backend": backend,
            "torch_reference": {"M1_step_s": torch_m1, "M2_paper_step_s": torch_m2}, "flops": flops,
            "machine_gflops": round(gflops, 1), "floor_M1_step_s": (2 * flops["forward"] + flops["backward"]) / (gflops * 1e9),
            "runtime": runtime, "speedup_fp32_vs_torch": ratio, "speedup_target": SPEEDUP_TARGET,
            "target_met": ratio >= SPEEDUP_TARGET if device == "cpu" else None,
            "backward_ops": {op: backward.get(op, 0) for op in ("ConvTranspose", "Conv")},
            "constructions": constructions, "construction_target_s": CONSTRUCTION_TARGET_S,
            "constructions_target_met": all(r["default_s"] <= CONSTRUCTION_TARGET_S for r in constructions) if constructions
            else None}


def _matmul_gflops(device: str) -> float:
    """The float32 matrix-multiply rate the floor is taken at: the GPU's on cuda, numpy's BLAS on a CPU."""
    if device != "cuda":
        return machine_gflops()
    import torch

    from ckm_edge.benchmarks.gpu import matmul_rate

    return matmul_rate(torch.device("cuda"), torch.float32) / 1e9


# --- engine backends side by side -----------------------------------------------------------------

BACKEND_VARIANTS = {
    # label: EngineConfig overrides
    "ONNX Runtime": {"backend": "onnxruntime"},  # the runtime's default: only the score graph's workers spin
    "ONNX Runtime, spinning": {"backend": "onnxruntime", "spinning": True},
    "ONNX Runtime, no spinning": {"backend": "onnxruntime", "spinning": False},
    "OpenVINO": {"backend": "openvino"},
}


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _engine_times(engine, one, four, v, repeats: int, build) -> dict:
    """Median milliseconds of score calls (batch 1, 4) and a guided step; seconds of `build(engine)`."""

    def guided():
        _, saved = engine.forward(*one)
        engine.backward(saved, v)
        engine.score(*one)

    return {"score_b1_ms": 1e3 * _median_seconds(lambda: engine.score(*one), repeats),
            "score_b4_ms": 1e3 * _median_seconds(lambda: engine.score(*four), repeats),
            "guided_step_ms": 1e3 * _median_seconds(guided, repeats),
            "construction_s": _median_seconds(lambda: build(engine), max(1, repeats // 2))}


def backend_comparison(pkg: Package, tile: np.ndarray, precisions, variants: dict | None = None, threads: int = 0,
                       repeats: int = 5, sigma: float = tasks.DEFAULT_SIGMA) -> dict:
    """Per precision and engine variant, in one run: one score call at batch 1 and 4, one guided
    DPS step (forward-with-saves + backward + score) at batch 1, the default construction of an SR
    x2 tile (the package's recommendation), and the score's largest deviation from ONNX Runtime
    FP32 relative to its largest value (what a backend or precision changes in the network); and
    which variant's construction was fastest per precision."""
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.recommend import resolve

    variants = variants or BACKEND_VARIANTS
    rng = np.random.default_rng(0)
    x1 = (tile[None] + 0.1 * rng.standard_normal((1,) + tile.shape)).astype(np.float32)
    x4 = np.repeat(x1, 4, axis=0)
    t1, t4 = np.full(1, 0.3, np.float32), np.full(4, 0.3, np.float32)
    v = rng.standard_normal(x1.shape).astype(np.float32)
    op = tasks.make_operator("sr2", np.random.default_rng(1), tile[None])
    y = tasks.observe(op, tile[None], np.random.default_rng(1), sigma)
    sampler, steps, samples = resolve(pkg.manifest.samplers, op)
    cfg = ConstructConfig(steps, samples, sampler=sampler)

    def build(engine):
        return construct(engine, pkg.schedule(), op, y, tile.shape, cfg, sigma=sigma)

    with open_engine(pkg, EngineConfig(threads=threads)) as ref_engine:
        reference = ref_engine.score(x4, t4)
    rows = []
    for precision in precisions:
        for label, overrides in variants.items():
            row = {"precision": precision, "engine": label}
            try:
                engine = open_engine(pkg, EngineConfig(precision=precision, threads=threads, **overrides))
            except Exception as e:  # an engine this machine cannot open is reported, not fatal
                rows.append({**row, "error": str(e)})
                continue
            with engine:
                s = engine.score(x4, t4)
                row["score_rel_dev"] = float(np.abs(s - reference).max() / np.abs(reference).max())
                row.update(_engine_times(engine, (x1, t1), (x4, t4), v, repeats, build))
            rows.append(row)
    fastest: dict = {}
    for r in rows:
        if "error" not in r and (r["precision"] not in fastest or r["construction_s"] < fastest[r["precision"]]["construction_s"]):
            fastest[r["precision"]] = r
    return {"rows": rows, "package": f"{pkg.name} {pkg.version}", "construction": {"steps": steps, "samples": samples},
            "fastest": {p: r["engine"] for p, r in fastest.items()}}
