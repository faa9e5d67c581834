"""Construction accuracy on region-held-out tiles: the foundation prior against the end-to-end
baselines and classical interpolation, in the paper's setting and the site setting.

For every task (IPbox, IPrandom, SR x2, JTQR, and our zero-shot drive-test trajectories) and
held-out tile, y = A(x) + n with sigma = 0.01 pixels (as in the paper); every method sees the
same y.

- **Paper setting** (the observation only): the foundation prior with the package's default
  construction (runtime.recommend: the sampler, steps and posterior samples measured best for the
  operator kind; at most `max_nfe` network evaluations per sample), the single-configuration
  end-to-end model of the task (`<checkpoints>/baseline-<task>.pt`), the multi-configuration one
  (`baseline-multi.pt`), and classical interpolation (benchmarks.solvers.classical_methods:
  nearest, inverse-distance weighting and the smoothest consistent map for masks; bicubic and the
  smooth fill for super-resolution; the clipping-aware and smooth fills for JTQR).
- **Site setting** (plus what the base station knows of its site: the building layout, and its
  own position and height when the dataset records them): the foundation prior given the site (a
  site-aware prior conditions on it; every prior uses the layout as an exact observation), the
  site-aware end-to-end models (`baseline-<task>-site.pt`, `baseline-multi-site.pt`, trained with
  `ckm-train baseline --site-aware`) given the same site, and the classical methods given the
  layout (buildings 0, interpolation over outdoor cells only).

Metrics per map (benchmarks.solvers.metrics): gain (dB) and AoA-sine RMSE over all cells and
over the unobserved cells; means over maps. The paper's Tables II and III (CKMImageNet, all
cells) are reported beside ours for the ordering of methods only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.benchmarks import solvers
from ckm_edge.benchmarks.journal import Journal, package_identity
from ckm_edge.runtime import condition, tasks, uncertainty
from ckm_edge.runtime.tasks import PAPER_TASKS

# The paper's Tables II and III (CKMImageNet; not our data).
PAPER = {
    "gain_db": {
        "foundation": {"ipbox": 10.082, "iprandom": 8.772, "sr2": 7.921, "jtqr": 3.483},
        "single": {"ipbox": 9.797, "iprandom": 10.029, "sr2": 5.44, "jtqr": 3.189},
        "multi": {"ipbox": 14.868, "iprandom": 13.201, "sr2": 6.176, "jtqr": 3.550},
    },
    "aoa_sine": {
        "foundation": {"ipbox": 0.378, "iprandom": 0.381, "sr2": 0.208, "jtqr": 0.052},
        "single": {"ipbox": 0.401, "iprandom": 0.370, "sr2": 0.158, "jtqr": 0.050},
        "multi": {"ipbox": 0.519, "iprandom": 0.413, "sr2": 0.180, "jtqr": 0.053},
    },
}
SETTINGS = ("paper", "site")


@dataclass(frozen=True)
class AccuracyConfig:
    precision: str = "fp32"
    sigma: float = tasks.DEFAULT_SIGMA
    seed: int = 0
    max_nfe: int = 100  # network evaluations per posterior sample the default construction may use
    # a manifest "samplers" section that replaces the package's (the constructions tuned under
    # another budget: `ckm-bench tune --budget 100`); None = the package's own defaults
    samplers: dict | None = None


@dataclass(frozen=True)
class HeldOut:
    tiles: np.ndarray  # (N, 2, H, W)
    transmitters: np.ndarray | None  # (N, 3) row, col (cells), height (m); None when not recorded
    description: str
    heights: np.ndarray | None = None  # (N, H, W) building heights (m), NaN maps where not recorded

    def site(self, i: int, layout: np.ndarray):
        """What a base station knows of tile i's site: `layout`, and its station and building
        heights where the data records them (runtime.site.Site, one map)."""
        return solvers.site_of(layout, self.transmitters, self.heights, i)


def load_held_out(source: str, count: int, seed: int = 0) -> HeldOut:
    """Held-out tiles and their transmitters: a dataset directory's eval split, or 'procedural'
    (held-out v1 regions)."""
    if source == "procedural":
        from ckm_edge.training import procedural

        cfg = procedural.ProceduralConfig()
        per = max(1, -(-count // 4))
        parts = [procedural.generate_region(cfg, "eval", r, per, seed=seed) for r in range(4)]
        return HeldOut(np.concatenate([p for p, _ in parts])[:count], np.concatenate([t for _, t in parts])[:count],
                       "procedural v1, held-out eval regions 0-3")
    from ckm_edge.training.dataset import Dataset

    ds = Dataset(source)
    split = ds.split("eval")
    n = min(count, len(split))
    tx = split.transmitters()
    heights = split.heights(np.arange(n)) if split.has_heights else None
    return HeldOut(split.take(np.arange(n)), None if tx is None else tx[:n],
                   f"{ds.manifest['source']} `{source}` eval split ({', '.join(split.regions)})", heights)


def load_tiles(source: str, count: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Held-out tiles only (see `load_held_out`)."""
    held = load_held_out(source, count, seed)
    return held.tiles, held.description


@dataclass(frozen=True)
class Baseline:
    """An end-to-end model: observation inputs (B, 3, H, W) [and the site condition] -> maps."""

    model: object
    tasks: tuple[str, ...]
    site_aware: bool
    encoding: object = None  # runtime.condition.Encoding of a site-aware one

    def condition(self, site, shape: tuple[int, int]) -> np.ndarray:
        """The (1, channels, H, W) condition of one site (runtime.site.Site) in this model's encoding."""
        return site.condition((1, 2) + tuple(shape), 1, self.encoding)

    def __call__(self, inputs: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        import torch

        with torch.no_grad():
            args = (torch.from_numpy(inputs),) + ((torch.from_numpy(cond),) if self.site_aware else ())
            return np.clip(self.model(*args).numpy(), 0.0, 1.0)


def load_baseline(path: Path, site_aware: bool) -> Baseline | None:
    """The baseline at `path` (None when absent); refuses one whose conditioning is not `site_aware`."""
    if not Path(path).exists():
        return None
    from ckm_edge.training.checkpoint import load_model

    model, meta = load_model(path)
    channels = int((meta.get("unet") or {}).get("cond_channels", 0))
    has_site = bool(channels)
    if has_site != site_aware:
        raise ValueError(f"{path} is {'a site-aware' if has_site else 'an unconditional'} baseline; "
                         f"expected {'a site-aware' if site_aware else 'an unconditional'} one under that name")
    return Baseline(model.float().eval(), tuple(meta["tasks"]), has_site,
                    condition.Encoding.for_channels(channels) if has_site else None)


def baselines(checkpoints: Path, task_names) -> dict:
    """{(setting, "single" | "multi", task): Baseline} for the checkpoints that exist."""
    checkpoints = Path(checkpoints)
    out = {}
    for setting, suffix in (("paper", ""), ("site", "-site")):
        multi = load_baseline(checkpoints / f"baseline-multi{suffix}.pt", setting == "site")
        for task in task_names:
            single = load_baseline(checkpoints / f"baseline-{task}{suffix}.pt", setting == "site")
            for kind, net in (("single", single), ("multi", multi)):
                if net is not None and task in net.tasks:
                    out[setting, kind, task] = net
    return out


def _files_digest(directory: Path, pattern: str) -> dict:
    """{file name: SHA-256} of the files matching `pattern` in `directory` (what a journal's header pins)."""
    from ckm_edge.runtime.package import sha256_file

    return {p.name: sha256_file(p) for p in sorted(Path(directory).glob(pattern))}


def run(package_dir: str | Path, checkpoints: str | Path, held: HeldOut, task_names: tuple[str, ...],
        cfg: AccuracyConfig, progress=print, journal: str | Path | None = None) -> dict:
    """{"results": {setting: {task: {method: [per-map metrics (+ seconds)]}}}, "constructions": {...},
    "verdicts": verdicts(results), ...}.

    With `journal` (benchmarks.journal), every finished (task, tile) is appended to that JSONL file
    and a run given it again (same package, tiles, baselines and configuration) takes them from it:
    a run stopped part way resumes where it stopped, with the same result."""
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.package import load_package
    from ckm_edge.runtime.recommend import from_section

    pkg = load_package(package_dir)
    samplers = pkg.manifest.samplers if cfg.samplers is None else from_section(cfg.samplers)
    tiles = held.tiles
    if tiles.shape[-1] != pkg.tile_size:
        raise ValueError(f"tiles are {tiles.shape[-1]} wide, package {pkg.name} takes {pkg.tile_size}")
    shape = (2, pkg.tile_size, pkg.tile_size)
    nets = baselines(Path(checkpoints), task_names)
    probs = solvers.problems(tiles, task_names, cfg.sigma, cfg.seed)
    results: dict = {s: {t: {} for t in task_names} for s in SETTINGS}
    used: dict = {}
    header = {"package": package_identity(pkg, cfg.precision), "data": held.description, "tiles": len(tiles),
              "tasks": list(task_names), "config": vars(cfg), "baselines": _files_digest(checkpoints, "baseline-*.pt")}
    done = Journal(journal, header, "accuracy")
    with open_engine(pkg, EngineConfig(precision=cfg.precision)) as engine:
        for (task, i), (op, y, unobs, building) in probs.items():
            key = f"{task}/{i}"
            if key not in done:
                done.add(key, _one_map(engine, pkg, samplers, nets, cfg, shape, held, task, i, op, y, unobs, building))
            for setting in SETTINGS:
                for method, m in done[key]["rows"][setting].items():
                    results[setting][task].setdefault(method, []).append(m)
                used[setting, task] = done[key]["used"][setting]
            progress(f"{task} tile {i + 1}/{len(tiles)}: foundation {results['paper'][task]['foundation'][-1]['gain_all']:.2f} dB "
                     f"(paper), {results['site'][task]['foundation'][-1]['gain_all']:.2f} dB (site)")
    constructions = {f"{s}/{t}": v for (s, t), v in used.items()}
    u = pkg.manifest.uncertainty
    return {"results": results, "constructions": constructions, "site_aware_prior": bool(pkg.condition_channels),
            "base_station_known": held.transmitters is not None, "verdicts": verdicts(results),
            "coverage": coverage(results, u.coverage) if u is not None else None}


def _one_map(engine, pkg, samplers: dict | None, nets: dict, cfg: AccuracyConfig, shape, held: HeldOut, task: str, i: int,
             op, y, unobs, building) -> dict:
    """Every method on one held-out map in both settings: {"rows": {setting: {method: metrics}},
    "used": {setting: the foundation's construction}}."""
    from ckm_edge.runtime.construct import ConstructConfig, check_observation, construct
    from ckm_edge.runtime.observations import Observation, Observations
    from ckm_edge.runtime.recommend import resolve
    from ckm_edge.runtime.sampler import network_evaluations, spec_for
    from ckm_edge.runtime.site import Site
    from ckm_edge.training.objectives import observation_inputs

    x = held.tiles[i]
    inputs = observation_inputs(op, y, (1,) + shape, with_mask=True)
    out: dict = {"rows": {}, "used": {}}
    for setting in SETTINGS:
        rows = out["rows"][setting] = {}
        layout = building if setting == "site" else None
        site = None if layout is None else held.site(i, layout)
        sampler, steps, samples = resolve(samplers, op, site=site is not None)
        name = spec_for(sampler).name
        nfe = network_evaluations(sampler, steps)
        if nfe > cfg.max_nfe:
            raise ValueError(f"{pkg.name} {pkg.version} recommends {name} with {nfe} network evaluations "
                             f"per sample for {task}; the benchmark allows {cfg.max_nfe}")
        out["used"][setting] = {"sampler": name, "steps": steps, "samples": samples, "nfe": nfe,
                                "site_conditioned": bool(site is not None and pkg.condition_channels)}
        t0 = time.perf_counter()
        result = construct(engine, pkg.schedule(), op, y, shape, ConstructConfig(steps, samples, cfg.seed, sampler=sampler),
                           sigma=cfg.sigma, site=site, uncertainty=pkg.manifest.uncertainty)
        rows["foundation"] = {**solvers.metrics(result.mean, x, unobs), "seconds": time.perf_counter() - t0}
        if result.calibrated:  # the share of unobserved cells its interval holds, per channel
            cover = uncertainty.covered(result.mean, result.std, x, unobs, uncertainty.z_of(result.coverage))
            rows["foundation"].update(gain_cover=cover[0], aoa_cover=cover[1])
        for kind in ("single", "multi"):
            net = nets.get((setting, kind, task))
            if net is not None:
                pred = net(inputs, None if site is None else net.condition(site, shape[1:]))[0]
                if site is not None:
                    pred = Site(layout[None]).project(pred[None])[0]
                # the construction's own finish (what the observation proves, within the same noise), for a fair comparison
                pred = Observations.same(Observation(op, check_observation(op, y, shape), cfg.sigma), shape, 1).finish(pred[None])[0]
                rows[kind] = solvers.metrics(pred, x, unobs)
        for name, pred in solvers.classical_methods(task, op, y, shape, layout).items():
            rows[name] = solvers.metrics(pred, x, unobs)
    return out


COVERAGE_BAND = 0.05  # a calibrated interval must hold its coverage within this, per task and channel


def coverage(results: dict, nominal: float) -> dict:
    """Per setting and task: the share of unobserved cells the foundation's calibrated interval
    held (mean over maps), per channel, and whether both lie within COVERAGE_BAND of `nominal`.
    {"nominal", "band", setting: {task: {"gain", "aoa", "within"}}}."""
    out: dict = {"nominal": nominal, "band": COVERAGE_BAND}
    for setting in SETTINGS:
        out[setting] = {}
        for task, rows in results[setting].items():
            maps = rows.get("foundation", [])
            g = [m["gain_cover"] for m in maps if m.get("gain_cover") is not None]
            a = [m["aoa_cover"] for m in maps if m.get("aoa_cover") is not None]
            if not g and not a:
                continue
            mg, ma = (float(np.mean(v)) if v else None for v in (g, a))
            out[setting][task] = {"gain": mg, "aoa": ma, "within": all(abs(v - nominal) <= COVERAGE_BAND + 1e-9
                                                                      for v in (mg, ma) if v is not None)}
    return out


def verdicts(results: dict) -> dict:
    """Per setting and paper task: does the foundation beat every other method (end-to-end and
    classical) on every metric (gain and AoA sine, all and unobserved cells)? The issue's target.
    {setting: {"tasks": [{"task", "lost": solvers.beaten_by(...)}], "learned": the end-to-end kinds
    compared, "absent": those no checkpoint was given for}}."""
    out = {}
    for setting in SETTINGS:
        by_task = results[setting]
        learned = [m for m in ("single", "multi") if any(m in rows for rows in by_task.values())]
        out[setting] = {"tasks": [{"task": task, "lost": solvers.beaten_by(rows["foundation"], {
                                       m: v for m, v in rows.items() if m != "foundation"})}
                                  for task, rows in by_task.items() if task in PAPER_TASKS and "foundation" in rows],
                        "learned": learned, "absent": [m for m in ("single", "multi") if m not in learned]}
    return out


def tiles_digest(tiles: np.ndarray) -> str:
    """SHA-256 of the held-out tiles as measured (what a later partial run must measure again)."""
    import hashlib

    return "sha256:" + hashlib.sha256(np.ascontiguousarray(tiles, np.float32).tobytes()).hexdigest()


# what two runs must share for their rows to stand in one record
_SAME = ("config", "tiles", "data", "validation", "package", "site_aware_prior", "base_station_known", "tiles_digest")


def update(previous: dict, new: dict, run: dict, previous_run: dict) -> dict:
    """The record `previous` (an accuracy record's results) with the tasks `new` measured replaced by
    new's rows, the other tasks' rows kept as they were measured, and verdicts and coverage taken
    again over the whole. "runs" says which run measured which tasks: `run` ({"date", "machine",
    "manifest", ...}) is appended, and `previous_run` stands for a record that had none (one whole
    run). Refused (ValueError naming what differs) where the two are not the same measurement:
    another configuration, tiles, package or baselines, or a task whose end-to-end rows the new run
    would drop."""
    if "results" not in previous or "config" not in previous:
        raise ValueError("the record holds no per-map rows to update; run the benchmark whole")
    differ = [k for k in _SAME if k in previous and k in new and previous[k] != new[k]]
    if differ:
        raise ValueError(f"the record measured another run; differs in: {', '.join(differ)}")
    measured = list(new["results"]["paper"])
    for setting in SETTINGS:
        for task in measured:
            old, rows = previous["results"][setting].get(task, {}), new["results"][setting][task]
            dropped = [m for m in ("single", "multi") if m in old and m not in rows]
            if dropped:
                raise ValueError(f"{setting}/{task}: the record has end-to-end rows ({', '.join(dropped)}) this run lacks; "
                                 f"give the baselines it was measured with ({previous.get('checkpoints')})")
            if any(m in rows for m in ("single", "multi")) and new.get("checkpoints") != previous.get("checkpoints"):
                raise ValueError(f"{setting}/{task}: end-to-end rows from {new.get('checkpoints')}, the record's from "
                                 f"{previous.get('checkpoints')}")
    out = {**previous, "results": {s: {**previous["results"][s], **{t: new["results"][s][t] for t in measured}}
                                   for s in SETTINGS},
           "constructions": {**previous["constructions"],
                             **{f"{s}/{t}": new["constructions"][f"{s}/{t}"] for s in SETTINGS for t in measured}}}
    out["verdicts"] = verdicts(out["results"])
    nominal = (new.get("coverage") or previous.get("coverage") or {}).get("nominal")
    out["coverage"] = coverage(out["results"], nominal) if nominal is not None else None
    out["tiles_digest"] = new.get("tiles_digest") or previous.get("tiles_digest")
    runs = [{**r, "tasks": [t for t in r["tasks"] if t not in measured]} for r in previous.get("runs") or [previous_run]]
    out["runs"] = [r for r in runs if r["tasks"]] + [{**run, "tasks": measured}]
    return out
