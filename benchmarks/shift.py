"""One prior for any observation: constructions from observations no method was tuned for.

The end-to-end networks were trained on four configurations (paper Fig. 6: IPbox with sides 5-50
cells, IPrandom with 0.15-15 % of cells missing, SR x2, JTQR with bounds [0.2, 0.7] and 24
sectors, all at noise sigma 0.01), and the foundation's default constructions were tuned on the
same ones. This benchmark moves every one of them off that range — larger boxes, far sparser and
far denser random masks, SR x4, other noise levels, other JTQR bounds and sector counts, drive-test
trajectories, and two degradations composed — and compares on held-out tiles:

- the foundation's default construction for the operator (the package's recommendation for its
  kind, runtime.recommend), as a request naming nothing gets it;
- the single-configuration network of the nearest trained task (named per row) and the
  multi-configuration network, given the observation as they take it (benchmarks.accuracy:
  y on the map's grid plus a mask channel; a composed operator's mask is not theirs to see);
- the classical fills that fit the operator (benchmarks.solvers.classical_methods).

Per row and setting: the four RMSEs of each method (mean over maps), the foundation's calibrated
interval coverage where the package has a calibration, and a verdict — does the foundation beat
the multi-configuration network, and every classical fill, on every metric. A network missing for
a setting (no site-aware single-configuration checkpoint) is said to be missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.benchmarks import solvers
from ckm_edge.benchmarks.accuracy import SETTINGS, HeldOut, baselines
from ckm_edge.benchmarks.journal import Journal, package_identity
from ckm_edge.benchmarks.solvers import METRICS
from ckm_edge.runtime import codec, operators, tasks, uncertainty
from ckm_edge.runtime.tasks import DEFAULT_SIGMA


@dataclass(frozen=True)
class Shift:
    """One shifted observation: how to draw its operator for a tile, the cells it leaves open, its
    noise, and the trained task whose single-configuration network is the nearest."""

    name: str
    description: str
    draw: Callable[[np.random.Generator, np.ndarray], operators.Operator]  # (rng, x (1, 2, H, W))
    unobserved: Callable[[operators.Operator, np.ndarray], np.ndarray]
    nearest: str
    sigma: float = DEFAULT_SIGMA


def _box(lo: int, hi: int):
    return lambda rng, x: operators.Mask(tasks.box_mask(rng, x.shape[-2:], (lo, hi))[None])


def _random(observed: float):
    missing = 1.0 - observed
    return lambda rng, x: operators.Mask(tasks.random_mask(rng, x.shape[-2:], (missing, missing))[None])


def _jtqr(low: float, high: float, sectors: int):
    return lambda rng, x: operators.jtqr(low, high, sectors, building=codec.building_mask(x))


def _composed(rng: np.random.Generator, x: np.ndarray) -> operators.Operator:
    sides = (5, min(50, *x.shape[-2:]))  # IPbox's training range (a smaller tile caps it)
    return operators.Compose((operators.Mask(tasks.box_mask(rng, x.shape[-2:], sides)[None]), operators.Downsample(2)))


def _missing(op, x):
    return tasks.get("ipbox").unobserved(op, x)


def _every(op, x):
    return tasks.get("sr2").unobserved(op, x)


def _jtqr_open(op, x):
    return tasks.get("jtqr").unobserved(op, x)


SHIFTS: tuple[Shift, ...] = (
    Shift("box-50-90", "IPbox, one missing box with sides 50-90 cells (trained: 5-50)", _box(50, 90), _missing, "ipbox"),
    Shift("random-0.05%", "random mask, 0.05 % of cells observed (trained: 85-99.85 %)", _random(0.0005), _missing, "iprandom"),
    Shift("random-40%", "random mask, 40 % of cells observed", _random(0.40), _missing, "iprandom"),
    Shift("sr4", "super-resolution x4 (trained: x2)", lambda rng, x: operators.Downsample(4), _every, "sr2"),
    Shift("noise-0.003", "IPrandom at noise sigma 0.003 pixels (trained: 0.01)", tasks.get("iprandom").draw, _missing,
          "iprandom", 0.003),
    Shift("noise-0.03", "IPrandom at noise sigma 0.03", tasks.get("iprandom").draw, _missing, "iprandom", 0.03),
    Shift("noise-0.1", "IPrandom at noise sigma 0.1", tasks.get("iprandom").draw, _missing, "iprandom", 0.1),
    Shift("jtqr-0.3-0.8", "JTQR with gain bounds [0.3, 0.8] (-190 / -90 dB; trained: [0.2, 0.7])", _jtqr(0.3, 0.8, 24),
          _jtqr_open, "jtqr"),
    Shift("jtqr-0.1-0.6", "JTQR with gain bounds [0.1, 0.6] (-230 / -130 dB)", _jtqr(0.1, 0.6, 24), _jtqr_open, "jtqr"),
    Shift("jtqr-12", "JTQR with 12 AoA sectors (trained: 24)", _jtqr(0.2, 0.7, 12), _jtqr_open, "jtqr"),
    Shift("jtqr-48", "JTQR with 48 AoA sectors", _jtqr(0.2, 0.7, 48), _jtqr_open, "jtqr"),
    Shift("trajectory", "drive-test routes through the streets (no method trained on them)", tasks.get("trajectory").draw,
          _missing, "iprandom"),
    Shift("box-then-sr2", "SR x2 of a box-masked map (two degradations composed)", _composed, _every, "sr2"),
)
ROWS = {s.name: s for s in SHIFTS}


@dataclass(frozen=True)
class ShiftConfig:
    rows: tuple[str, ...] = tuple(ROWS)
    settings: tuple[str, ...] = SETTINGS
    seed: int = 5
    precision: str = "fp32"


def run(package_dir: str | Path, checkpoints: str | Path, held: HeldOut, cfg: ShiftConfig, progress=print,
        journal: str | Path | None = None) -> dict:
    """{"rows": {row: {setting: {method: [per-map metrics]}}}, "meta": {row: {...}}, "verdicts": {...},
    "summary": {...}}. With `journal`, every finished (row, tile) is kept and a rerun resumes."""
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.package import load_package

    unknown = [r for r in cfg.rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown shift row(s) {unknown}; known: {', '.join(ROWS)}")
    pkg = load_package(package_dir)
    if held.tiles.shape[-1] != pkg.tile_size:
        raise ValueError(f"tiles are {held.tiles.shape[-1]} wide, package {pkg.name} takes {pkg.tile_size}")
    nets = baselines(Path(checkpoints), tasks.PAPER_TASKS)
    header = {"package": package_identity(pkg, cfg.precision), "data": held.description, "tiles": len(held.tiles),
              "config": vars(cfg), "checkpoints": sorted(p.name for p in Path(checkpoints).glob("baseline-*.pt"))}
    done = Journal(journal, header, "shift")
    out: dict = {"rows": {}, "meta": {}}
    t0 = time.perf_counter()
    with open_engine(pkg, EngineConfig(precision=cfg.precision)) as engine:
        for name in cfg.rows:
            shift = ROWS[name]
            out["meta"][name] = {"description": shift.description, "nearest": shift.nearest, "sigma": shift.sigma}
            rows = out["rows"][name] = {s: {} for s in cfg.settings}
            for i in range(len(held.tiles)):
                key = f"{name}/{i}"
                if key not in done:
                    done.add(key, _one(engine, pkg, nets, held, shift, i, cfg))
                for setting, methods in done[key].items():
                    if setting in rows:
                        for method, m in methods.items():
                            rows[setting].setdefault(method, []).append(m)
            progress(f"{name}: {len(held.tiles)} tiles ({time.perf_counter() - t0:.0f} s)")
    out["verdicts"] = verdicts(out["rows"])
    out["summary"] = summary(out["verdicts"])
    out["calibrated"] = pkg.manifest.uncertainty is not None
    return out


def _one(engine, pkg, nets: dict, held: HeldOut, shift: Shift, i: int, cfg: ShiftConfig) -> dict:
    """Every method on tile i under one shift, per setting: {setting: {method: metrics | {"cannot": why}}}."""
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.observations import Observation, Observations
    from ckm_edge.runtime.recommend import resolve
    from ckm_edge.runtime.site import Site
    from ckm_edge.training.objectives import observation_inputs

    x = held.tiles[i]
    shape = x.shape
    rng = np.random.default_rng([cfg.seed, i])
    op = shift.draw(rng, x[None])
    y = tasks.observe(op, x[None], rng, shift.sigma)
    unobs = shift.unobserved(op, x[None])[0]
    building = codec.building_mask(x)
    inputs = observation_inputs(op, y, (1,) + shape, with_mask=True)
    out: dict = {}
    for setting in cfg.settings:
        rows = out[setting] = {}
        layout = building if setting == "site" else None
        site = None if layout is None else held.site(i, layout)
        sampler, steps, samples = resolve(pkg.manifest.samplers, op, site=site is not None)
        r = construct(engine, pkg.schedule(), op, y, shape, ConstructConfig(steps, samples, cfg.seed, sampler=sampler),
                      sigma=shift.sigma, site=site, uncertainty=pkg.manifest.uncertainty)
        rows["foundation"] = solvers.metrics(r.mean, x, unobs)
        if r.calibrated:
            cover = uncertainty.covered(r.mean, r.std, x, unobs, uncertainty.z_of(r.coverage))
            rows["foundation"].update(gain_cover=cover[0], aoa_cover=cover[1])
        for kind, task in (("single", shift.nearest), ("multi", shift.nearest)):
            net = nets.get((setting, kind, task))
            if net is None:
                rows[kind] = {"cannot": f"no {'site-aware ' if site else ''}{kind}-configuration checkpoint"
                                        + (f" for {task}" if kind == "single" else "")}
                continue
            pred = net(inputs, None if site is None else net.condition(site, shape[1:]))[0]
            if site is not None:
                pred = Site(layout[None]).project(pred[None])[0]
            pred = Observations.same(Observation(op, y, shift.sigma), shape, 1).finish(pred[None])[0]
            rows[kind] = solvers.metrics(pred, x, unobs)
        for method, pred in solvers.classical_methods(shift.name, op, y, shape, layout).items():
            rows[method] = solvers.metrics(pred, x, unobs)
    return out


def _mean(maps: list[dict]) -> dict | None:
    if not maps or "cannot" in maps[0]:
        return None
    return solvers.mean_metrics(maps)


def verdicts(rows: dict) -> dict:
    """{setting: {row: {"multi": "beats" | "loses: <metrics>" | None (cannot run), "classical": [methods
    that match or beat it on some metric], "single": ...}}}: the foundation against each on every metric."""
    out: dict = {}
    for row, by_setting in rows.items():
        for setting, methods in by_setting.items():
            ours = _mean(methods["foundation"])
            v: dict = {}
            for kind in ("single", "multi"):
                theirs = _mean(methods.get(kind, []))
                v[kind] = None if theirs is None else [k for k in METRICS if ours.get(k) is not None
                                                         and theirs.get(k) is not None and theirs[k] <= ours[k]]
            v["classical"] = {m: [k for k in METRICS if ours.get(k) is not None and _mean(maps).get(k) is not None
                                  and _mean(maps)[k] <= ours[k]]
                              for m, maps in methods.items() if m not in ("foundation", "single", "multi")}
            out.setdefault(setting, {})[row] = v
    return out


def summary(verdicts_: dict) -> dict:
    """Per setting: the rows the multi-configuration network ran, those the foundation beat it on
    (every metric), and the share; the same against the best of the classical fills."""
    out = {}
    for setting, by_row in verdicts_.items():
        ran = [r for r, v in by_row.items() if v["multi"] is not None]
        beat = [r for r in ran if not by_row[r]["multi"]]
        classical = [r for r, v in by_row.items() if not any(v["classical"].values())]
        out[setting] = {"rows": len(by_row), "multi_ran": len(ran), "beats_multi": beat,
                        "share_beats_multi": len(beat) / len(ran) if ran else None, "beats_classical": classical}
    return out
