"""Ray-traced tile throughput: seconds per 128 x 128 tile by device (Sionna RT path solver)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from ckm_edge.training import raytrace


def run(scene: str = "munich", tiles: int = 2, device: str = "auto", seed: int = 100,
        cfg: raytrace.RaytraceConfig | None = None) -> dict:
    """Build `tiles` tiles of a training scene in a scratch directory and time them."""
    cfg = cfg or raytrace.RaytraceConfig()
    plan = raytrace.BuildPlan(((scene, "train"),), tiles, seed, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = raytrace.build(Path(tmp) / "ds", plan, device=device, progress=lambda line: None)
        wall = time.perf_counter() - start
        manifest = json.loads((Path(tmp) / "ds" / "manifest.json").read_text())
    per_tile = [t["seconds"] for t in manifest["provenance"]["tiles"]]
    receivers = [round((1 - t["building_fraction"]) * cfg.tile_size**2) for t in manifest["provenance"]["tiles"]]
    return {
        "scene": scene,
        "device": summary["device"],
        "tiles": tiles,
        "tile_seconds": per_tile,
        "receivers": receivers,
        "wall_seconds": round(wall, 2),
        "config": manifest["provenance"]["config"],
        "versions": manifest["provenance"]["versions"],
    }
