"""Dataset statistics for calibrating one CKM source against another (procedural vs ray-traced).

Per dataset split: the fraction of building cells, the outdoor gain histogram (with the share
of cells no path reaches: at the codec's floor, or below the weakest real path), the gain
fall-off with distance from the base station (median per distance ring and a fitted path-loss
exponent), and the AoA-sine histogram. Everything is computed from the stored pixels and transmitter rows alone, so any two
datasets in the project's format can be compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ckm_edge.runtime import codec
from ckm_edge.training.dataset import Dataset, DatasetError

GAIN_BINS = np.arange(codec.GAIN_DB_MIN, codec.GAIN_DB_MAX + 1e-9, 10.0)
DIST_BINS_M = np.array([0, 10, 20, 40, 60, 80, 100, 130, 160, 200, 250, 300, 400], dtype=float)
SINE_BINS = np.linspace(-1.0, 1.0, 11)
# Below: no path. The codec's floor holds the cells no path reaches, and no real path is weaker
# than codec.PATH_GAIN_DB_MIN, so a generated cell between the two (a network's samples sit a few
# dB above the floor rather than on it) is no path too.
NO_PATH_DB = codec.PATH_GAIN_DB_MIN


def tile_statistics(pixels: np.ndarray, tx: np.ndarray | None, cell_size_m: float) -> dict:
    """Statistics of tiles (B, 2, H, W) with transmitter rows (B, 3) (row, col, height) or None."""
    pixels = codec.check_pixels(pixels)
    if pixels.ndim != 4 or len(pixels) == 0:
        raise ValueError(f"need a batch (B, 2, H, W) with B >= 1, got {pixels.shape}")
    phys = codec.decode(pixels)
    building = phys.building
    outdoor = ~building
    gain = phys.gain_db[outdoor].astype(np.float64)
    sine = phys.aoa_sine[outdoor].astype(np.float64)
    reached = gain >= NO_PATH_DB
    hist, _ = np.histogram(gain, GAIN_BINS)
    stats = {
        "tiles": int(len(pixels)),
        "building_fraction": {
            "mean": float(building.mean()),
            "per_tile_quantiles_5_50_95": np.quantile(building.mean((1, 2)), [0.05, 0.5, 0.95]).round(4).tolist(),
        },
        "floor_fraction": float(1.0 - reached.mean()) if gain.size else None,
        "gain_db_quantiles_5_25_50_75_95": np.quantile(gain[reached], [0.05, 0.25, 0.5, 0.75, 0.95]).round(2).tolist()
        if reached.any()
        else None,
        "gain_histogram": {"edges_db": GAIN_BINS.tolist(), "density": (hist / max(gain.size, 1)).round(5).tolist()},
        "aoa_sine_histogram": {
            "edges": SINE_BINS.round(2).tolist(),
            "density": (np.histogram(sine[reached], SINE_BINS)[0] / max(reached.sum(), 1)).round(5).tolist(),
        },
        "falloff": None,
    }
    if tx is not None:
        tx = np.asarray(tx, dtype=np.float64).reshape(-1, 3)
        n = pixels.shape[-1]
        rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        dist = np.hypot(rows[None] - tx[:, 0, None, None], cols[None] - tx[:, 1, None, None]) * cell_size_m
        d = dist[outdoor]
        ring = np.digitize(d, DIST_BINS_M) - 1
        medians, floors, counts = [], [], []
        for k in range(len(DIST_BINS_M) - 1):
            sel = ring == k
            counts.append(int(sel.sum()))
            hit = sel & reached
            medians.append(round(float(np.median(gain[hit])), 2) if hit.sum() >= 20 else None)
            floors.append(round(float(1.0 - reached[sel].mean()), 4) if sel.sum() >= 20 else None)
        fit = reached & (d >= 10.0)
        exponent = intercept = None
        if fit.sum() >= 50:
            # gain = intercept - 10 n log10(d): least squares over reached outdoor cells >= 10 m away.
            A = np.column_stack([np.ones(fit.sum()), -10.0 * np.log10(d[fit])])
            intercept, exponent = np.linalg.lstsq(A, gain[fit], rcond=None)[0]
        stats["falloff"] = {
            "edges_m": DIST_BINS_M.tolist(),
            "median_gain_db": medians,
            "floor_fraction": floors,
            "cells": counts,
            "path_loss_exponent": None if exponent is None else round(float(exponent), 3),
            "gain_at_1m_db": None if intercept is None else round(float(intercept), 2),
        }
    return stats


def dataset_statistics(root: str | Path, split: str, limit: int | None = None) -> dict:
    """`tile_statistics` of one split of a dataset (the first `limit` tiles if given)."""
    ds = Dataset(root)
    part = ds.split(split)
    if len(part) == 0:
        raise DatasetError(f"split {split!r} of {root} is empty")
    count = len(part) if limit is None else min(limit, len(part))
    pixels = part.take(np.arange(count))
    tx = part.transmitters()
    cell = ds.manifest.get("cell_size_m") or 1.0
    out = tile_statistics(pixels, None if tx is None else tx[:count], float(cell))
    out.update(dataset=str(root), source=ds.manifest["source"], split=split, regions=part.regions, cell_size_m=cell)
    return out


def markdown(rows: list[tuple[str, dict]]) -> str:
    """A comparison table (one column per labelled statistics dict)."""
    def fmt(v, spec="{:.3f}"):
        return "—" if v is None else spec.format(v)

    head = "| statistic | " + " | ".join(label for label, _ in rows) + " |"
    lines = [head, "|---|" + "---|" * len(rows)]

    def line(name, values):
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    line("tiles", [str(s["tiles"]) for _, s in rows])
    line("building fraction (mean)", [fmt(s["building_fraction"]["mean"]) for _, s in rows])
    line(f"outdoor cells with no path (below {NO_PATH_DB:g} dB)", [fmt(s["floor_fraction"]) for _, s in rows])
    for q, name in enumerate(("5%", "median", "95%")):
        idx = (0, 2, 4)[q]
        line(f"reached gain {name} (dB)", [
            fmt(None if s["gain_db_quantiles_5_25_50_75_95"] is None else s["gain_db_quantiles_5_25_50_75_95"][idx], "{:.1f}")
            for _, s in rows
        ])
    line("path-loss exponent (fit, d >= 10 m)", [fmt((s["falloff"] or {}).get("path_loss_exponent"), "{:.2f}") for _, s in rows])
    line("fit gain at 1 m (dB)", [fmt((s["falloff"] or {}).get("gain_at_1m_db"), "{:.1f}") for _, s in rows])
    edges = DIST_BINS_M
    for k in range(len(edges) - 1):
        vals = [(s["falloff"] or {}).get("median_gain_db", [None] * (len(edges) - 1))[k] for _, s in rows]
        if any(v is not None for v in vals):
            line(f"median gain {edges[k]:g}-{edges[k + 1]:g} m (dB)", [fmt(v, "{:.1f}") for v in vals])
    return "\n".join(lines) + "\n"


def plot(rows: list[tuple[str, dict]], path: str | Path) -> Path:
    """Gain histogram, fall-off with distance and building fraction, one line per dataset (PNG)."""
    from ckm_edge.training import plots

    fig, axes = plots.pyplot().subplots(1, 3, figsize=(15, 4.2))
    for label, s in rows:
        h = s["gain_histogram"]
        centres = (np.array(h["edges_db"][:-1]) + np.array(h["edges_db"][1:])) / 2
        axes[0].plot(centres, h["density"], marker="o", ms=3, label=label)
        if s["falloff"]:
            f = s["falloff"]
            mid = (np.array(f["edges_m"][:-1]) + np.array(f["edges_m"][1:])) / 2
            med = np.array([np.nan if v is None else v for v in f["median_gain_db"]])
            axes[1].plot(mid, med, marker="o", ms=3, label=label)
            fl = np.array([np.nan if v is None else v for v in f["floor_fraction"]])
            axes[2].plot(mid, fl, marker="o", ms=3, label=f"{label} (building {s['building_fraction']['mean']:.2f})")
    axes[0].set(xlabel="outdoor gain (dB)", ylabel="fraction of outdoor cells", title="gain histogram (10 dB bins)")
    axes[1].set(xlabel="distance from BS (m)", ylabel="median gain of reached cells (dB)", title="fall-off with distance")
    axes[2].set(xlabel="distance from BS (m)", ylabel="fraction of outdoor cells", title="cells no path reaches")
    return plots.save(fig, axes, path, legend_fontsize=8)


def write_report(rows: list[tuple[str, dict]], out: str | Path) -> dict:
    """stats.json, stats.md and stats.png into directory `out`; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.json").write_text(json.dumps({label: s for label, s in rows}, indent=1) + "\n")
    (out / "stats.md").write_text(markdown(rows))
    paths = {"json": out / "stats.json", "markdown": out / "stats.md"}
    try:
        paths["png"] = plot(rows, out / "stats.png")
    except ImportError:
        paths["png"] = None  # matplotlib is optional (comes with the raytrace extra)
    return paths
