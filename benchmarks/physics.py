"""The physics channels of ckm-site/2 (runtime.physics): what they cost per map on this CPU, and how
well they describe ray-traced tiles.

Per tile of a ray-traced dataset: the time of each channel (line of sight, direct-path AoA, free-space
gain) and of the whole ckm-site/2 condition for one map, the median over `repeats` runs; and, in the
cells the line of sight calls visible (> 0.99) that a traced path reaches, the RMSE between the
direct path's AoA sine and the traced one (the strongest path's) and the traced gain minus the
free-space gain; in the cells it calls hidden (< 0.01), that gain difference too (how far below
free space the reflections and diffraction leave them). Tiles whose base station stands outside the
tile are reported apart: beyond the tile the layout is unknown and taken to be clear.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ckm_edge.runtime import codec, condition, physics
from ckm_edge.training.dataset import Dataset

TARGET_MS = 20.0  # issue 33: the channels cost at most this per map on this project's CPU


def _timed(repeats: int, fn, *args, **kwargs) -> float:
    """Median milliseconds of fn(*args, **kwargs) over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def run(data: Path, splits: tuple[str, ...] = ("train", "eval"), repeats: int = 5, limit: int | None = None) -> dict:
    dataset = Dataset(data)
    cell, carrier = float(dataset.manifest["cell_size_m"]), float(dataset.manifest["carrier_hz"])
    encoding = condition.Encoding("ckm-site/2", condition.SITE_V2.channels, cell, carrier)
    tiles_out = []
    for split in splits:
        sp = dataset.split(split)
        tx = sp.transmitters()
        if tx is None:
            raise ValueError(f"{data} split {split!r} records no transmitters; the physics channels need them")
        n = len(sp) if limit is None else min(limit, len(sp))
        for k in range(n):
            px, bs = sp[k], tx[k].astype(np.float64)
            building = codec.building_mask(px)
            shape = building.shape
            maps = codec.decode(px)
            heights = sp.heights(np.array([k]))[0] if sp.has_heights else None
            heights = None if heights is None or np.isnan(heights).all() else heights
            vis = physics.los_visibility(building, bs, heights=heights, cell_size_m=cell)
            sine = physics.direct_aoa_sine(bs, shape)
            free = physics.free_space_gain_db(bs, shape, cell_size_m=cell, carrier_hz=carrier)
            reached = ~building & (maps.gain_db > codec.PATH_GAIN_DB_MIN)
            los, hidden = reached & (vis > 0.99), reached & (vis < 0.01)
            tiles_out.append({
                "split": split,
                "index": k,
                "bs_in_tile": bool(0 <= bs[0] < shape[0] and 0 <= bs[1] < shape[1]),
                "heights": heights is not None,
                "ms": {
                    "line_of_sight": _timed(repeats, physics.los_visibility, building, bs, heights=heights,
                                            cell_size_m=cell),
                    "direct_aoa": _timed(repeats, physics.direct_aoa_sine, bs, shape),
                    "free_space": _timed(repeats, physics.free_space_gain_db, bs, shape, cell_size_m=cell,
                                         carrier_hz=carrier),
                    "condition": _timed(repeats, condition.site_condition, building, bs, shape, encoding=encoding,
                                        heights=heights),
                },
                "los_cells": int(los.sum()),
                "outdoor_cells": int((~building).sum()),
                "aoa_sq": float(((sine - maps.aoa_sine)[los] ** 2).sum()),
                "gain_diff": float((maps.gain_db - free)[los].sum()),
                "gain_sq": float(((maps.gain_db - free)[los] ** 2).sum()),
                "hidden_cells": int(hidden.sum()),
                "hidden_gain_diff": float((maps.gain_db - free)[hidden].sum()),
                "traced_aoa_sq": float((maps.aoa_sine[reached] ** 2).sum()),
                "traced_aoa_sum": float(maps.aoa_sine[reached].sum()),
                "reached_cells": int(reached.sum()),
            })
    groups = {"station in the tile": [t for t in tiles_out if t["bs_in_tile"]],
              "station outside the tile": [t for t in tiles_out if not t["bs_in_tile"]]}
    summary = {}
    for name, rows in groups.items():
        if not rows:
            continue
        los = sum(t["los_cells"] for t in rows)
        hidden = sum(t["hidden_cells"] for t in rows)
        reached = sum(t["reached_cells"] for t in rows)
        mean_aoa = sum(t["traced_aoa_sum"] for t in rows) / max(reached, 1)
        summary[name] = {
            "tiles": len(rows),
            "los_fraction": los / max(sum(t["outdoor_cells"] for t in rows), 1),
            "aoa_rmse_los": float(np.sqrt(sum(t["aoa_sq"] for t in rows) / los)) if los else None,
            "traced_aoa_spread": float(np.sqrt(sum(t["traced_aoa_sq"] for t in rows) / max(reached, 1) - mean_aoa**2)),
            "gain_minus_free_space_los_db": sum(t["gain_diff"] for t in rows) / los if los else None,
            "gain_rms_vs_free_space_los_db": float(np.sqrt(sum(t["gain_sq"] for t in rows) / los)) if los else None,
            "gain_minus_free_space_hidden_db": sum(t["hidden_gain_diff"] for t in rows) / hidden if hidden else None,
        }
    ms = {key: [t["ms"][key] for t in tiles_out] for key in tiles_out[0]["ms"]}
    timing = {key: {"median": float(np.median(v)), "p95": float(np.percentile(v, 95)), "max": float(np.max(v))}
              for key, v in ms.items()}
    return {"data": str(data), "splits": list(splits), "tiles": len(tiles_out), "repeats": repeats,
            "cell_size_m": cell, "carrier_hz": carrier, "condition_channels": encoding.channels, "timing_ms": timing,
            "summary": summary, "per_tile": tiles_out, "target_ms": TARGET_MS,
            "target_met": timing["condition"]["max"] <= TARGET_MS}

