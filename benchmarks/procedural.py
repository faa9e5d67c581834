"""Throughput of the procedural CKM generator (target: 1,000 tiles in under 60 s on 2 cores)."""

from __future__ import annotations

import time

from ckm_edge.runtime.engine import available_cpus
from ckm_edge.training import procedural

TARGET_S = 60.0


def run(tiles: int = 1000, workers: int | None = None, seed: int = 0) -> dict:
    workers = workers or available_cpus()
    cfg = procedural.ProceduralConfig()
    start = time.perf_counter()
    pixels, _ = procedural.generate_region(cfg, "train", 0, tiles, seed=seed, workers=workers)
    elapsed = time.perf_counter() - start
    per_1000 = round(elapsed * 1000 / len(pixels), 2)
    return {
        "tiles": int(len(pixels)),
        "tile_size": cfg.tile_size,
        "workers": workers,
        "seconds": round(elapsed, 2),
        "tiles_per_minute": round(60 * len(pixels) / elapsed),
        "target_seconds_per_1000": TARGET_S,
        "seconds_per_1000": per_1000,
        "target_met": per_1000 < TARGET_S,
    }
