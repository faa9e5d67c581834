"""Calibrate the procedural generator against a reference dataset (ray-traced training regions).

The statistics of `training/statistics.py` — outdoor gain histogram (with the share of cells no
path reaches), building fraction and the median gain per distance ring — are computed for the
reference's *training* split and for procedural tiles drawn with candidate parameters: the
block density is fitted to the building fraction first, then a seeded random search over the
propagation parameters keeps the candidate with the smallest gain mismatch. Held-out regions never
enter: only a train split is accepted, and a split holding a
held-out ray-tracing scene is refused.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.training import procedural, statistics
from ckm_edge.training.dataset import Dataset, DatasetError
from ckm_edge.training.raytrace import HELD_OUT_SCENES

# Parameter -> (low, high) of the search; tuples of a range are searched as (centre, half-width).
SEARCH_SPACE: dict[str, tuple[float, float]] = {
    "density_centre": (0.25, 0.9),
    "building_height_median_m": (8.0, 30.0),
    "penetration_db_per_m": (0.4, 3.0),
    "penetration_cap_db": (40.0, 120.0),
    "wall_loss_db": (5.0, 25.0),
    "shadowing_sigma_db": (2.0, 8.0),
    "no_path_below_db": (-190.0, -120.0),
}


def mismatch(candidate: dict, reference: dict) -> dict:
    """Per-statistic distances between two statistics dicts, and their weighted total."""
    h_c = np.array(candidate["gain_histogram"]["density"])
    h_r = np.array(reference["gain_histogram"]["density"])
    parts = {
        "gain_histogram_l1": float(np.abs(h_c - h_r).sum()),
        "building_fraction": float(abs(candidate["building_fraction"]["mean"] - reference["building_fraction"]["mean"])),
        "no_path_fraction": float(abs((candidate["floor_fraction"] or 0) - (reference["floor_fraction"] or 0))),
    }
    diffs = []
    fc, fr = candidate.get("falloff"), reference.get("falloff")
    if fc and fr:
        for a, b in zip(fc["median_gain_db"], fr["median_gain_db"]):
            if a is not None and b is not None:
                diffs.append(abs(a - b))
    parts["falloff_mean_abs_db"] = float(np.mean(diffs)) if diffs else 0.0
    parts["total"] = (
        parts["gain_histogram_l1"]
        + 2.0 * parts["building_fraction"]
        + parts["no_path_fraction"]
        + parts["falloff_mean_abs_db"] / 20.0
    )
    return parts


def apply(base: procedural.ProceduralConfig, params: dict) -> procedural.ProceduralConfig:
    """Candidate parameters -> a ProceduralConfig (density as a +-0.1 range around its centre)."""
    values = {k: v for k, v in params.items() if k != "density_centre"}
    if "density_centre" in params:
        c = params["density_centre"]
        values["block_density"] = (round(max(0.0, c - 0.1), 4), round(min(1.0, c + 0.1), 4))
    return dataclasses.replace(base, **values)


def procedural_statistics(cfg: procedural.ProceduralConfig, tiles: int, seed: int, regions: int = 4) -> dict:
    per = max(1, tiles // regions)
    pixels, tx = zip(*(procedural.generate_region(cfg, "train", r, per, seed=seed) for r in range(regions)))
    return statistics.tile_statistics(np.concatenate(pixels), np.concatenate(tx), cfg.cell_size_m)


@dataclass
class CalibrationResult:
    params: dict
    config: procedural.ProceduralConfig
    mismatch: dict
    baseline_mismatch: dict
    reference: dict
    calibrated: dict
    baseline: dict
    trials: int


def reference_statistics(root: str | Path, split: str = "train") -> dict:
    if split != "train":
        raise DatasetError("calibration uses a training split only; evaluation regions are never tuned on")
    ds = Dataset(root)
    regions = ds.split(split).regions
    held = sorted(set(regions) & set(HELD_OUT_SCENES))
    if held:
        raise DatasetError(f"split {split!r} of {root} holds held-out region(s) {held}; refusing to calibrate on them")
    return statistics.dataset_statistics(root, split)


LAYOUT_PARAMS = ("density_centre",)


def calibrate(
    reference: dict,
    *,
    trials: int = 48,
    tiles: int = 48,
    seed: int = 0,
    base: procedural.ProceduralConfig | None = None,
) -> CalibrationResult:
    """Two stages, both seeded: the layout first, then the propagation.

    1. Layout: the block density is chosen on a grid to match the reference's building fraction
       (a structural statistic the propagation cannot change).
    2. Propagation: with that layout, a random search (the first half of `trials` uniform over
       SEARCH_SPACE, the second half perturbing the best so far) over the remaining parameters
       minimises the gain-histogram, no-path and fall-off mismatch.
    """
    base = base or procedural.ProceduralConfig(cell_size_m=float(reference.get("cell_size_m") or 2.0))
    rng = np.random.default_rng(seed)
    baseline = procedural_statistics(base, tiles, seed)
    target_building = reference["building_fraction"]["mean"]
    lo, hi = SEARCH_SPACE["density_centre"]
    layout = min(
        (abs(procedural_statistics(apply(base, {"density_centre": c}), tiles, seed)["building_fraction"]["mean"]
             - target_building), round(float(c), 3))
        for c in np.linspace(lo, hi, 14)
    )[1]
    names = [k for k in SEARCH_SPACE if k not in LAYOUT_PARAMS]
    best = None
    for trial in range(trials):
        if trial < trials // 2 or best is None:
            params = {k: float(rng.uniform(*SEARCH_SPACE[k])) for k in names}
        else:  # refine: perturb the best by 10% of each range
            params = {
                k: float(np.clip(best[1][k] + 0.1 * (SEARCH_SPACE[k][1] - SEARCH_SPACE[k][0]) * rng.standard_normal(),
                                 *SEARCH_SPACE[k]))
                for k in names
            }
        params = {"density_centre": layout, **{k: round(v, 3) for k, v in params.items()}}
        stats = procedural_statistics(apply(base, params), tiles, seed)
        score = mismatch(stats, reference)
        if best is None or score["total"] < best[0]["total"]:
            best = (score, params, stats)
    score, params, stats = best
    return CalibrationResult(params, apply(base, params), score, mismatch(baseline, reference), reference, stats,
                             baseline, trials)


def save_preset(result: CalibrationResult, name: str, source: str, path: Path | None = None) -> Path:
    """Record the calibrated parameters as a named preset (only fields that differ from the defaults)
    in `path`, by default the user's presets file (procedural.user_presets_file), never the package."""
    path = Path(path or procedural.user_presets_file())
    path.parent.mkdir(parents=True, exist_ok=True)
    if name == "v1":
        raise ValueError("preset name 'v1' is reserved for the defaults")
    defaults = dataclasses.asdict(procedural.ProceduralConfig())
    values = {k: v for k, v in dataclasses.asdict(result.config).items() if defaults.get(k) != v}
    presets = json.loads(path.read_text()) if path.exists() else {}
    presets[name] = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()},
        "note": f"calibrated against {source} (training split) by `ckm-data calibrate`: "
        f"mismatch {result.baseline_mismatch['total']:.3f} -> {result.mismatch['total']:.3f}",
    }
    path.write_text(json.dumps(presets, indent=2) + "\n")
    return path
