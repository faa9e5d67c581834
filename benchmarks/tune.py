"""Tune a package's default constructions on validation tiles: per operator kind and setting, the
sampler parameters and the split of a fixed budget of network evaluations between steps and
posterior samples, by a coordinate search from the package's current recommendation.

What `construct` runs when a request names no sampler (runtime.recommend) was chosen for one prior;
a retrained prior wants its own. This measures it, the way a model analyzer sizes a server's
configuration under a latency budget:

- Tiles: *validation* tiles only — a dataset's training split minus every tile of the datasets
  the prior was trained on (`exclude`, matched by region and tile index from the manifests'
  provenance: e.g. a ray-traced build's later snapshot minus the snapshot training read), or
  procedural validation regions (benchmarks.sweep). An eval split (held-out regions) is refused.
- Problems: for each task of the kind (IPbox and IPrandom are both masks) and tile, y = A(x) + n
  with sigma = 0.01 pixels; in the site setting also the building layout and, where the dataset
  records it, the base station.
- Score of a point: the mean over problems and the four metrics (gain and AoA-sine RMSE, all and
  unobserved cells) of its RMSE divided by the smooth fill's on the same problem (the classical
  fill the warm start begins from); lower is better, 1 = no better than the smooth fill. The same
  seed for every point, so points are compared on the same noise.
- Search: `rounds` passes over the coordinates (the warm start's level `start`, the prior weight
  `lam`, DiffPIR's `restart` level (a second pass, its AoA from the smooth fill) and, with a
  restart, its prior weight `restart_lam`, the steps x samples split of the budget); each pass
  tries every value of one coordinate with the others held, keeps the best. Each point is
  measured once.

The result is a manifest "samplers" section (`ckm-export package --samplers FILE` ships it) and a
table of the package's recommendation against the tuned one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ckm_edge.benchmarks import solvers
from ckm_edge.benchmarks.journal import Journal, package_identity
from ckm_edge.benchmarks.solvers import METRICS
from ckm_edge.runtime import codec, defaults, tasks
from ckm_edge.runtime.recommend import SITE, Recommendation, operator_kind
from ckm_edge.runtime.tasks import DEFAULT_SIGMA, PAPER_TASKS

SETTINGS = ("paper", "site")
COORDINATES = ("start", "lam", "restart", "restart_lam", "split")  # what the search varies, in this order
RESTART_KEYS = ("restart", "restart_steps", "restart_lam")  # DiffPIR's restart and what only it reads


@dataclass(frozen=True)
class TuneConfig:
    budget: int = 25  # network evaluations per construction (posterior samples x evaluations per sample)
    tasks: tuple[str, ...] = PAPER_TASKS
    settings: tuple[str, ...] = SETTINGS
    # starts up to 1 (pure noise) and prior weights up to 3000: JTQR wants its gain generated from
    # noise under a strong prior (docs/solvers.md, "Recommendations per operator kind")
    starts: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
    lams: tuple[float, ...] = (3.0, 7.0, 15.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
    # DiffPIR's restart levels (0 = none; its default restart_steps each) and, searched once a restart
    # is chosen, the restart's own prior weight (docs/solvers.md: what a restart does for JTQR)
    restarts: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    restart_lams: tuple[float, ...] = (15.0, 30.0, 100.0, 300.0, 1000.0)
    samples: tuple[int, ...] = (1, 2, 3, 4, 5, 8)  # the splits tried: budget // samples evaluations each
    rounds: int = 2
    sigma: float = DEFAULT_SIGMA
    seed: int = 1
    # a subset searches only those (e.g. ("split",): how a larger budget is best spent, the rest held)
    coordinates: tuple[str, ...] = COORDINATES

    def __post_init__(self):
        if self.budget < 2:
            raise ValueError(f"the budget must allow at least 2 network evaluations, got {self.budget}")
        unknown = [t for t in self.tasks if t not in tasks.TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(tasks.TASKS)}")
        bad = [s for s in self.settings if s not in SETTINGS]
        if bad:
            raise ValueError(f"unknown setting(s) {bad}; known: {', '.join(SETTINGS)}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        bad = [c for c in self.coordinates if c not in COORDINATES]
        if bad or not self.coordinates:
            raise ValueError(f"coordinates must be among {', '.join(COORDINATES)}, got {list(self.coordinates)}")
        if not self.samples or min(self.samples) < 1:
            raise ValueError(f"samples (the splits tried) must be positive counts, got {list(self.samples)}")


@dataclass(frozen=True)
class Validation:
    tiles: np.ndarray  # (N, 2, H, W)
    transmitters: np.ndarray | None  # (N, 3) or None
    description: str
    keys: list = field(default_factory=list)  # (region, index) per tile, where known
    heights: np.ndarray | None = None  # (N, H, W) building heights (m), NaN maps where not recorded
    sources: tuple[str, ...] = ()  # the dataset each tile came from, where drawn from several (`combine`)


def combine(parts: list[Validation]) -> Validation:
    """Validation tiles drawn from several datasets (e.g. generated cities and a real city's
    validation tiles) as one set, each tile labelled with its dataset (`sources`: the fits that
    must hold on every kind of city read it)."""
    if len(parts) == 1:
        return parts[0]
    tiles = np.concatenate([v.tiles for v in parts])
    tx = None if any(v.transmitters is None for v in parts) else np.concatenate([v.transmitters for v in parts])
    heights = None
    if any(v.heights is not None for v in parts):
        heights = np.concatenate([v.heights if v.heights is not None else np.full((len(v.tiles),) + v.tiles.shape[-2:], np.nan,
                                                                                  np.float32) for v in parts])
    sources = tuple(s for i, v in enumerate(parts) for s in (v.sources or (f"set {i}",) * len(v.tiles)))
    return Validation(tiles, tx, "; ".join(v.description for v in parts), [k for v in parts for k in v.keys], heights, sources)


def tile_keys(data) -> list[tuple[str, int]]:
    """(region, tile index) of each row of a dataset's training split, from its provenance (a
    ray-traced dataset lists every tile in plan order, its split groups them by region in that
    order); without per-tile provenance, the row's position within its region."""
    split = data.split("train")
    meta = [t for t in (data.manifest.get("provenance") or {}).get("tiles") or [] if t.get("split", "train") == "train"]
    keys: list = [None] * len(split)
    for region in split.regions:
        rows = split.region_indices(region)
        listed = [(t["region"], int(t["index"])) for t in meta if t.get("region") == region and "index" in t]
        if len(listed) != len(rows):
            listed = [(region, k) for k in range(len(rows))]
        for row, key in zip(rows, listed):
            keys[int(row)] = key
    return keys


def validation_tiles(source: str | list[str] | tuple[str, ...], count: int, exclude: list[str] | tuple[str, ...] = (),
                     split: str = "train", seed: int = 0) -> Validation:
    """Up to `count` validation tiles: 'procedural' (validation regions), or a dataset's `split`
    minus every tile of the `exclude` datasets (those the prior was trained on); several sources:
    up to `count` from each, `combine`d (each tile labelled with its source)."""
    if not isinstance(source, str):
        if not source:
            raise ValueError("no validation dataset given")
        return combine([replace(v, sources=(str(s),) * len(v.tiles)) if len(source) > 1 else v
                        for s in source for v in [validation_tiles(s, count, exclude, split, seed)]])
    if split == "eval":
        raise ValueError("an eval split holds the held-out regions: tuning on it would tune on the test; "
                         "tune on validation tiles (a training-city split minus the tiles training read)")
    if source == "procedural":
        from ckm_edge.benchmarks.sweep import VALIDATION_REGION_BASE
        from ckm_edge.benchmarks.sweep import validation_tiles as procedural_tiles

        return Validation(procedural_tiles(count, defaults.TILE_SIZE, seed), None,
                          f"procedural validation regions {VALIDATION_REGION_BASE}-{VALIDATION_REGION_BASE + count - 1}")
    from ckm_edge.training.dataset import Dataset

    data = Dataset(source)
    if split != "train":
        raise ValueError(f"split must be 'train' (a training city's tiles the prior never read), got {split!r}")
    keys = tile_keys(data)
    seen: set = set()
    for other in exclude:
        seen |= set(tile_keys(Dataset(other)))
    rows = [i for i, k in enumerate(keys) if k not in seen]
    if not rows:
        raise ValueError(f"every tile of {source} is in {', '.join(map(str, exclude))}: no validation tiles left")
    rows = rows[:: max(1, len(rows) // count)][:count] if len(rows) > count else rows
    tr = data.split("train")
    tx = tr.transmitters()
    picked = [keys[i] for i in rows]
    regions = sorted({k[0] for k in picked})
    return Validation(tr.take(np.array(rows)), None if tx is None else tx[rows],
                      f"{len(rows)} tiles of `{source}` ({', '.join(regions)}) not in "
                      + (", ".join(f"`{e}`" for e in exclude) if exclude else "any excluded dataset"), picked,
                      tr.heights(np.array(rows)) if tr.has_heights else None)


def kinds_of(task_names) -> dict[str, list[str]]:
    """Operator kind -> the tasks that produce it (IPbox, IPrandom and trajectories are masks)."""
    probe = np.zeros((1, 2, 16, 16), np.float32)
    probe[:, 0], probe[:, 1] = 0.5, codec.AOA_OFFSET  # outdoor everywhere (a trajectory needs outdoor cells)
    out: dict[str, list[str]] = {}
    for t in task_names:
        out.setdefault(operator_kind(tasks.make_operator(t, np.random.default_rng(0), probe)), []).append(t)
    return out


def splits(budget: int, evaluations_per_step: int, samples: tuple[int, ...], per_sample: int = 0) -> list[tuple[int, int]]:
    """(steps, samples) pairs that spend at most `budget` evaluations per construction, each
    sample `per_sample` evaluations beyond its steps (a restart's)."""
    out = []
    for s in samples:
        steps = (budget // s - per_sample) // evaluations_per_step
        if steps >= 1 and (steps, s) not in out:
            out.append((steps, s))
    return out


def evaluations(rec: Recommendation) -> tuple[int, int]:
    """(network evaluations per step, per sample beyond its steps) of a recommendation."""
    from ckm_edge.runtime.sampler import config_from_params, spec

    count = spec(rec.sampler).evaluations
    cfg = config_from_params(rec.sampler, rec.parameters)
    fixed = sum(count(cfg, 0).values())
    return max(1, sum(count(cfg, 1).values()) - fixed), fixed


def _key(rec: Recommendation) -> tuple:
    return rec.sampler, rec.steps, rec.samples, tuple(sorted(rec.parameters.items()))


def search(start: Recommendation, evaluate, cfg: TuneConfig,
           levels: int | None = None) -> tuple[Recommendation, dict]:
    """Coordinate search from `start` (over the budget: from its best split within it):
    `evaluate(rec)` -> {"score", ...} (lower is better), each point once. Returns the best
    recommendation within the budget and every point measured (by _key). `levels`: the schedule's
    noise levels; a warm start at `start` spans round(start x levels) of them, which caps its steps
    (and a restart at `restart` its restart_steps). Costs come from the sampler's registry entry."""
    from ckm_edge.runtime.sampler import config_from_params, spec

    measured: dict = {}

    def fit(rec: Recommendation) -> Recommendation:
        p = rec.parameters
        if "restart" in p and not p["restart"] > 0:  # no restart: the same construction as without the keys
            rec = replace(rec, parameters={k: v for k, v in p.items() if k not in RESTART_KEYS})
        elif "restart" in p:  # the sampler's restart steps, within the levels under the restart
            if p.get("restart_lam") == config_from_params(rec.sampler).restart_lam:  # its default: one key per construction
                p = {k: v for k, v in p.items() if k != "restart_lam"}
            steps = config_from_params(rec.sampler, p).restart_steps
            if levels is not None:
                steps = min(steps, max(1, int(round(p["restart"] * levels))))
            rec = replace(rec, parameters={**p, "restart_steps": steps})
        if levels is not None and "start" in rec.parameters:
            return replace(rec, steps=min(rec.steps, max(1, int(round(rec.parameters["start"] * levels)))))
        return rec

    def within(rec: Recommendation) -> bool:
        per_step, per_sample = evaluations(rec)
        return rec.samples * (rec.steps * per_step + per_sample) <= cfg.budget

    def split(rec: Recommendation) -> list[Recommendation]:
        per_step, per_sample = evaluations(rec)
        return [replace(rec, steps=st, samples=sa) for st, sa in splits(cfg.budget, per_step, cfg.samples, per_sample)]

    def score(rec: Recommendation) -> float:
        if _key(rec) not in measured:
            measured[_key(rec)] = evaluate(rec)
        return measured[_key(rec)]["score"]

    score(start)
    best = start
    if not within(start):  # measured for reference; the search stays within budget
        best = min(map(fit, split(start)), key=score)
    for _ in range(cfg.rounds):
        changed = False
        for coord in (c for c in COORDINATES if c in cfg.coordinates):
            if coord == "split":
                cands = split(best)
            elif coord == "restart_lam" and not best.parameters.get("restart", 0.0) > 0:
                continue  # the restart's weight means nothing without a restart
            elif coord in spec(best.sampler).config.__dataclass_fields__:
                values = {"start": cfg.starts, "lam": cfg.lams, "restart": cfg.restarts, "restart_lam": cfg.restart_lams}[coord]
                cands = [replace(best, parameters={**best.parameters, coord: float(v)}) for v in values]
                if coord == "restart":  # a restart costs evaluations: as many samples, fewer steps
                    cands = [c if within(fit(c)) else next((r for r in split(fit(c)) if r.samples == c.samples), c)
                             for c in cands]
            else:
                continue
            for c in filter(within, map(fit, cands)):
                if score(c) < score(best) - 1e-9:
                    best, changed = c, True
        if not changed:
            break
    return best, measured


@dataclass(frozen=True)
class Problems:
    """What tuning and calibration both start from: the package, the map shape, every task's
    problem on every validation tile (solvers.problems) and what a site request carries per tile
    (the layout and, where recorded, the base station and building heights)."""

    pkg: object
    shape: tuple[int, int, int]
    probs: dict
    sites: dict


def validation_problems(package_dir: str | Path, val: Validation, tasks: tuple[str, ...], sigma: float,
                        seed: int) -> Problems:
    from ckm_edge.runtime.package import load_package

    pkg = load_package(package_dir)
    if val.tiles.shape[-1] != pkg.tile_size:
        raise ValueError(f"tiles are {val.tiles.shape[-1]} wide, package {pkg.name} takes {pkg.tile_size}")
    sites = {i: solvers.site_of(codec.building_mask(x), val.transmitters, val.heights, i) for i, x in enumerate(val.tiles)}
    return Problems(pkg, (2, pkg.tile_size, pkg.tile_size), solvers.problems(val.tiles, tasks, sigma, seed), sites)


def run(package_dir: str | Path, val: Validation, cfg: TuneConfig, progress=print,
        journal: str | Path | None = None, start_from: dict | None = None) -> dict:
    """{"samplers": {kind[+site]: recommendation}, "kinds": {kind[+site]: {"tasks", "before", "after", "points"}}}.
    With `journal`, every point measured is appended to that JSONL file and a run given the same
    file again (same package, tiles and search) takes the points it holds instead of measuring
    them: a stopped tuning resumes where it stopped. `start_from`: a samplers section (kind ->
    recommendation, e.g. an earlier tuning's at a smaller budget) the search starts from instead of
    the package's own, for the kinds it names."""
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.recommend import from_section, recommend
    from ckm_edge.runtime.sampler import config_from_params

    p = validation_problems(package_dir, val, cfg.tasks, cfg.sigma, cfg.seed)
    pkg, shape, probs, sites, tiles = p.pkg, p.shape, p.probs, p.sites, val.tiles
    base = {}  # the smooth fill's RMSEs: the yardstick of every point
    for setting in cfg.settings:
        for (task, i), (op, y, unobs, building) in probs.items():
            fill = solvers.classical_methods(task, op, y, shape, building if setting == "site" else None)["smooth"]
            base[setting, task, i] = solvers.metrics(fill, tiles[i], unobs)
    out: dict = {"samplers": {}, "kinds": {}, "start": "given table" if start_from else "package"}
    header = {"package": package_identity(pkg, EngineConfig().precision), "tile_size": pkg.tile_size, "validation": val.description,
              "tiles": [list(k) for k in val.keys], "config": vars(cfg), **({"from": start_from} if start_from else {})}
    table = {**(pkg.manifest.samplers or {}), **from_section(start_from)}
    done = Journal(journal, header, "tune")
    with open_engine(pkg, EngineConfig()) as engine:

        def evaluate(rec: Recommendation, name: str, setting: str, kind_tasks: list[str]) -> dict:
            key = json.dumps([name, rec.to_dict()], sort_keys=True)
            if key not in done:
                done.add(key, measure(rec, name, setting, kind_tasks))
            return done[key]

        def measure(rec: Recommendation, name: str, setting: str, kind_tasks: list[str]) -> dict:
            sampler = config_from_params(rec.sampler, rec.parameters)
            ratios, rows, secs = [], [], []
            for task in kind_tasks:
                for i in range(len(tiles)):
                    op, y, unobs, _ = probs[task, i]
                    t0 = time.perf_counter()
                    r = construct(engine, pkg.schedule(), op, y, shape, ConstructConfig(rec.steps, rec.samples, cfg.seed, sampler=sampler),
                                  sigma=cfg.sigma, site=sites[i] if setting == "site" else None)
                    secs.append(time.perf_counter() - t0)
                    m = solvers.metrics(r.mean, tiles[i], unobs)
                    rows.append(m)
                    b = base[setting, task, i]
                    ratios += [m[q] / b[q] for q in METRICS if m[q] is not None and b[q]]
            point = {**rec.to_dict(), "score": float(np.mean(ratios)), **solvers.mean_metrics(rows), "seconds": float(np.mean(secs))}
            progress(f"{name}: {rec.steps} steps x {rec.samples} samples "
                     + ", ".join(f"{p}={v:g}" for p, v in sorted(rec.parameters.items()))
                     + f": score {point['score']:.4f}, gain {point['gain_all']:.2f} dB, {point['seconds']:.2f} s/map")
            return point

        for kind, kind_tasks in kinds_of(cfg.tasks).items():
            for setting in cfg.settings:
                name = kind + (SITE if setting == "site" else "")
                start = recommend(table, probs[kind_tasks[0], 0][0], site=setting == "site")
                best, measured = search(start, lambda rec, n=name, s=setting, t=kind_tasks: evaluate(rec, n, s, t), cfg,
                                        levels=len(pkg.schedule()))
                out["samplers"][name] = best.to_dict()
                out["kinds"][name] = {"tasks": kind_tasks, "before": measured[_key(start)], "after": measured[_key(best)],
                                      "points": list(measured.values())}
    return out

