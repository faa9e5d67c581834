"""Measured reconstruction quality of a package's precision variants (recorded in its manifest)."""

from __future__ import annotations

import numpy as np

from ckm_edge.runtime import codec, defaults, tasks
from ckm_edge.runtime.dps import DPSConfig
from ckm_edge.runtime.engine import EngineConfig, open_engine
from ckm_edge.runtime.package import Package
from ckm_edge.runtime.sampler import Observations, sample


def evaluate(package: Package, precision: str, tiles: np.ndarray, task_names=tasks.PAPER_TASKS,
             steps: int = defaults.RECORD_DPS_STEPS, zeta: float = defaults.ZETA, seed: int = 0, threads: int = 0) -> dict:
    """Mean gain RMSE (dB) and AoA-sine RMSE per task over `tiles`, same draws for every precision."""
    schedule = package.schedule().respace(steps)
    results = {}
    with open_engine(package, EngineConfig(precision=precision, threads=threads)) as engine:
        for ti, task in enumerate(task_names):
            rng = np.random.default_rng([seed, ti])
            op = tasks.make_operator(task, rng, tiles)
            y = tasks.observe(op, tiles, rng)
            rngs = [np.random.default_rng([seed, ti, b]) for b in range(len(tiles))]
            x = sample(engine, schedule, Observations.of(op, y, tiles.shape[1:], len(tiles)), rngs, DPSConfig(zeta=zeta))
            x = np.clip(x, 0.0, 1.0)
            results[task] = {
                "gain_rmse_db": round(float(codec.gain_rmse_db(x, tiles).mean()), 3),
                "aoa_sine_rmse": round(float(codec.aoa_sine_rmse(x, tiles).mean()), 4),
            }
    return {"steps": steps, "zeta": zeta, "tiles": int(len(tiles)), "tasks": results}
