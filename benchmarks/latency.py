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

from runtime import tasks
from runtime.engine import EngineConfig, open_engine
from runtime.package import Package
from runtime.dps import DPSConfig
from runtime.sampler import Observations, sample


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
    with open_engine(pkg, EngineConfig(precision=precision, threads=threads, device=device), backend) as engine:
        warm = pkg.schedule().respace(2)
        sample(engine, warm, Observations.of(op, y, x.shape[1:], batch), [np.random.default_rng(b) for b in range(batch)], cfg)
        timed = _TimedEngine(engine)
        t0 = time.perf_counter()
        sample(timed, schedule, Observations.of(op, y, x.shape[1:], batch), [np.random.default_rng(b) for b in range(batch)], cfg)
        total = time.perf_counter() - t0
    return {"step_s": total / steps, "engine_s": timed.seconds / steps, "overhead_s": (total - timed.seconds) / steps}


def construction_times(pkg: Package, tile: np.ndarray, task_names=("ipbox", "sr2", "jtqr"), dps_steps: int = 50,
                       threads: int = 0, sigma: float = tasks.DEFAULT_SIGMA) -> list[dict]:
    """Seconds per map of a whole construction, per task, same tile and engine: the paper's DPS
    (dps_steps steps, M = 1, one sample) against the default construction (the package's
    recommendation: sampler, steps and samples)."""
    from runtime.construct import ConstructConfig, construct
    from runtime.recommend import resolve

    rows = []
    shape = tile.shape
    with open_engine(pkg, EngineConfig(threads=threads)) as engine:
        engine.score(tile[None], np.ones(1, np.float32))  # warm-up
        for task in task_names:
            rng = np.random.default_rng(0)
            op = tasks.make_operator(task, rng, tile[None])
            y = tasks.observe(op, tile[None], rng, sigma)
            sampler, steps, samples = resolve(pkg.manifest, op)
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

    from runtime.schedule import Schedule
    from training.reference_dps import DPSConfig, dps_sample

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
