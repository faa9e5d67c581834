"""Sensitivity and speed/quality of the foundation prior's DPS: RMSE vs zeta (paper Fig. 11), vs the
number of sampling steps, vs engine precision, and guided vs Jacobian-free guidance.

Tiles come from *validation* regions: procedural training-style regions the shipped prior never
saw (indices far above the training regions), so choosing zeta here tunes on neither the
training data nor the held-out evaluation regions.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.runtime import codec, tasks

VALIDATION_REGION_BASE = 1000  # procedural "train" regions >= this index are never used for training


@dataclass(frozen=True)
class Point:
    zeta: float
    steps: int
    precision: str
    jacobian_free: bool

    def label(self) -> str:
        return f"zeta={self.zeta:g} steps={self.steps} {self.precision}" + (" Jacobian-free" if self.jacobian_free else "")


def validation_tiles(count: int, tile_size: int, seed: int = 0) -> np.ndarray:
    from ckm_edge.training import procedural

    cfg = procedural.ProceduralConfig(tile_size=tile_size)
    return np.concatenate([procedural.generate_region(cfg, "train", VALIDATION_REGION_BASE + i, 1, seed=seed)[0]
                           for i in range(count)])


def run(package_dir: str | Path, points: list[Point], task_names: tuple[str, ...], tiles: np.ndarray,
        seed: int = 0, progress=print) -> dict:
    """Mean RMSEs and seconds per map of every point and task over `tiles`, and the best zeta per task."""
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.dps import DPSConfig
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.package import load_package

    pkg = load_package(package_dir)
    shape = (2, pkg.tile_size, pkg.tile_size)
    problems = {}
    for task, (i, x) in itertools.product(task_names, enumerate(tiles)):
        rng = np.random.default_rng([seed, i])
        op = tasks.make_operator(task, rng, x[None])
        problems[task, i] = (op, tasks.observe(op, x[None], rng))
    rows = []
    for precision in sorted({p.precision for p in points}):
        with open_engine(pkg, EngineConfig(precision=precision)) as engine:
            for p in (q for q in points if q.precision == precision):
                cfg = ConstructConfig(steps=p.steps, seed=seed,
                                      sampler=DPSConfig(zeta=p.zeta, jacobian_free=p.jacobian_free))
                for task in task_names:
                    gains, sines, secs = [], [], []
                    for i, x in enumerate(tiles):
                        op, y = problems[task, i]
                        t0 = time.perf_counter()
                        result = construct(engine, pkg.schedule(), op, y, shape, cfg)
                        secs.append(time.perf_counter() - t0)
                        gains.append(float(codec.gain_rmse_db(result.mean[None], x[None])[0]))
                        sines.append(float(codec.aoa_sine_rmse(result.mean[None], x[None])[0]))
                    rows.append({"point": vars(p), "task": task, "gain_db": float(np.mean(gains)),
                                 "aoa_sine": float(np.mean(sines)), "seconds_per_map": float(np.mean(secs))})
                    progress(f"{p.label()} {task}: {rows[-1]['gain_db']:.2f} dB")
    return {"package": f"{pkg.name} {pkg.version}", "tiles": len(tiles), "rows": rows, "best_zeta": best_zeta(rows)}


def best_zeta(rows: list[dict]) -> dict:
    """{task: the zeta of the lowest gain RMSE} over the fp32 guided points; {} when they hold one zeta."""
    guided = [r for r in rows if r["point"]["precision"] == "fp32" and not r["point"]["jacobian_free"]]
    if len({r["point"]["zeta"] for r in guided}) < 2:
        return {}
    task_names = dict.fromkeys(r["task"] for r in rows)
    return {t: min((r for r in guided if r["task"] == t), key=lambda r: r["gain_db"])["point"]["zeta"] for t in task_names}


def plot(rows: list[dict], path: str | Path) -> Path | None:
    """RMSE vs zeta per task (fp32, guided) as a PNG; None without matplotlib."""
    from ckm_edge.training import plots

    try:
        plt = plots.pyplot()
    except ImportError:
        return None
    task_names = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for t in task_names:
        pts = sorted((r["point"]["zeta"], r["gain_db"], r["aoa_sine"]) for r in rows
                     if r["task"] == t and r["point"]["precision"] == "fp32" and not r["point"]["jacobian_free"])
        if len(pts) > 1:
            z, g, a = zip(*pts)
            axes[0].plot(z, g, marker="o", label=t)
            axes[1].plot(z, a, marker="o", label=t)
    axes[0].set(xlabel="zeta", ylabel="gain RMSE (dB)", title="RMSE vs observation strength zeta")
    axes[1].set(xlabel="zeta", ylabel="AoA-sine RMSE", title="AoA-sine RMSE vs zeta")
    return plots.save(fig, axes, path)
