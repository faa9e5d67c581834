"""Fit a package's uncertainty calibration on validation tiles: the manifest's "uncertainty" section.

A construction reports the spread of its posterior samples as its std; measured, that spread is
far narrower than the errors (runtime.uncertainty). This fits what the runtime applies instead,
per operator kind and setting (and a "*" fallback per setting), per channel, the way `ckm-bench
tune` fits the default constructions (`ckm-bench uncertainty`) — and on the same kind of tiles:

- Tiles: validation tiles only (benchmarks.tune.validation_tiles: a training-city dataset minus
  every tile training read; an eval split is refused).
- Problems: each task of the kind on each tile, y = A(x) + n (sigma 0.01 pixels), in the paper
  setting and given the site (building layout and, where recorded, the base station).
- Constructions: the package's default for the operator (its recommendation: sampler, steps,
  posterior samples), as a request naming nothing runs it, with the package's current section:
  the errors are those of the map the runtime reports, whose cells the observation bounds are the
  calibrated predictive's truncated mean (runtime.uncertainty.conditional_mean), so a fit made
  after that estimator changed is run again until the section stops moving (each run fits the
  errors of the map made with the previous section).
- Fit: runtime.uncertainty.fit_channel over the unobserved cells (tasks.unobserved) of every
  problem of the kind, each task weighted equally; "*" pools every task of the setting. Tiles from
  several validation sets (`--data A B`: generated cities and a real city's validation tiles) are
  fitted so the interval holds on each set (each bin's quantile the largest of the sets'), their
  coverage reported per set too.

The result: the section (`--write` puts it into the package's manifest.json, atomically; every
other key kept) and, per kind and task, the interval's coverage on these tiles before (the raw
spread, ddof 0, as an uncalibrated package reports it) and after.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.benchmarks.journal import package_identity
from ckm_edge.benchmarks.tune import SETTINGS, Validation, validation_problems
from ckm_edge.runtime import codec, uncertainty
from ckm_edge.runtime.recommend import SITE
from ckm_edge.runtime.tasks import DEFAULT_SIGMA


@dataclass(frozen=True)
class UncertaintyConfig:
    tasks: tuple[str, ...] = ("ipbox", "iprandom", "sr2", "jtqr", "trajectory", "drive")
    settings: tuple[str, ...] = SETTINGS
    coverage: float = uncertainty.DEFAULT_COVERAGE
    sigma: float = DEFAULT_SIGMA
    seed: int = 2  # not tune's: the problems differ from the ones the defaults were tuned on
    cells_per_task: int = 40000  # the unobserved cells each task gives the fit (drawn at random): equal weights
    # a manifest "samplers" section run instead of the package's (`--samplers`: e.g. the constructions
    # tuned under an evaluation budget, `ckm-bench tune --budget`); None: the package's defaults
    samplers: dict | None = None
    # (readings per batch, batches): fit a living map's incremental rebuilds instead (`--rebuilds`;
    # task "drive" only): `rebuild_cells`
    rebuilds: tuple[int, int] | None = None
    gain_noise_db: float = 2.0  # a drive test's reading noise (ckm-bench sites' defaults)
    aoa_noise: float = 0.02


@dataclass
class _Cells:
    """One problem's unobserved cells, per channel: |error|, spread (ddof 1), distance to the
    pinned cells, raw std (ddof 0)."""

    error: list[np.ndarray]
    spread: list[np.ndarray]
    distance: list[np.ndarray]
    raw: list[np.ndarray]


def run(package_dir: str | Path, val: Validation, cfg: UncertaintyConfig, progress=print,
        cache: str | Path | None = None) -> dict:
    """{"uncertainty": the manifest section, "kinds": {kind[+site]: {"tasks", "construction",
    "coverage": {task: {"before": [gain, aoa], "after": [gain, aoa]}}, "fit", "width"}}, "seconds"};
    where the package is calibrated, each task's coverage also "own_fit": the package's current fit
    for the kind (runtime.uncertainty.Uncertainty.fit_for; with `cfg.samplers`, the one made at its
    defaults) read over these constructions.
    With `cache` (an .npz file), the constructions' cells are kept there and a run given the same
    file, package, tiles and configuration fits from them instead of constructing again."""
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.recommend import from_section, recommend, resolve

    if cfg.rebuilds is not None and (cfg.tasks != ("drive",) or cfg.samplers is not None):
        raise ValueError("rebuilds are fitted on drive tests (tasks: drive) at the package's own constructions (no samplers)")
    p = validation_problems(package_dir, val, cfg.tasks, cfg.sigma, cfg.seed)
    pkg, shape, probs, sites, tiles = p.pkg, p.shape, p.probs, p.sites, val.tiles
    kinds = calibration_kinds(probs, cfg.tasks, len(tiles))
    table = pkg.manifest.samplers if cfg.samplers is None else from_section(cfg.samplers)
    cells: dict[tuple[str, str], list[_Cells]] = {}  # (setting, task) -> per tile
    used: dict[str, dict] = {}
    t_start = time.perf_counter()
    header = json.dumps({"package": package_identity(pkg, EngineConfig().precision), "tiles": [list(k) for k in val.keys],
                         "config": {k: v for k, v in vars(cfg).items() if k != "cells_per_task"}}, sort_keys=True)
    if cache is not None and Path(cache).exists():
        with np.load(cache) as z:
            if str(z["header"]) == header:
                cells, used = _from_arrays(z), json.loads(str(z["used"]))
                progress(f"constructions from {cache}")
    if cfg.rebuilds is not None:
        for setting in cfg.settings:
            if (setting, "drive") not in cells:
                cells[setting, "drive"], rebuild_used = rebuild_cells(package_dir, val, sites, cfg, setting, progress)
                used.update(rebuild_used)
                if cache is not None:
                    _save(cache, header, cells, used)
        kinds = {}
        for name in used:
            kinds.setdefault(name.removesuffix(SITE), ["drive"])
        if len(kinds) != 1:
            raise ValueError(f"the rebuilds' operators fall in calibration kinds {sorted(kinds)}: calibrate them apart")
    with open_engine(pkg, EngineConfig()) as engine:
        for setting in cfg.settings if cfg.rebuilds is None else ():
            for kind, kind_tasks in kinds.items():
                name = kind + (SITE if setting == "site" else "")
                rec = recommend(table, probs[kind_tasks[0], 0][0], setting == "site")
                used[name] = rec.to_dict()
                for task in kind_tasks:
                    if (setting, task) in cells:
                        continue
                    per_tile = cells.setdefault((setting, task), [])
                    for i, x in enumerate(tiles):
                        op, y, unobs, _ = probs[task, i]
                        site = sites[i] if setting == "site" else None
                        sampler, steps, samples = resolve(table, op, site=site is not None)
                        # the map the runtime reports: with the package's current section, its bounded
                        # cells are the calibrated predictive's truncated mean (executor.summarize)
                        r = construct(engine, pkg.schedule(), op, y, shape, ConstructConfig(steps, samples, cfg.seed, sampler=sampler),
                                      sigma=cfg.sigma, site=site, uncertainty=pkg.manifest.uncertainty)
                        spread, raw = uncertainty.spread(r.samples), r.samples.std(axis=0)
                        dist = uncertainty.distance_to_pinned(op.bounds(np.asarray(y, np.float32), cfg.sigma), shape)
                        err = np.abs(r.mean - x)
                        per_tile.append(_Cells(*([a[c][unobs[c]] for c in range(2)] for a in (err, spread, dist, raw))))
                    progress(f"{name} {task}: {len(tiles)} tiles constructed ({time.perf_counter() - t_start:.0f} s)")
                    if cache is not None:
                        _save(cache, header, cells, used)
    by_source: dict[str, list[int]] = {}  # validation set -> its tiles (one set: every tile)
    for i, src in enumerate(val.sources or ("",) * len(tiles)):
        by_source.setdefault(src, []).append(i)
    groups = {kind + (SITE if s == "site" else ""): (s, ts) for s in cfg.settings for kind, ts in kinds.items()}
    if cfg.rebuilds is None:  # (a rebuild's fit is a kind's at one construction: no fallback of its own)
        groups.update({"*" + (SITE if s == "site" else ""): (s, list(cfg.tasks)) for s in cfg.settings})
    fits: dict[str, uncertainty.KindFit] = {}
    report: dict = {}
    current = pkg.manifest.uncertainty
    z = uncertainty.z_of(cfg.coverage)
    pick = np.random.default_rng(cfg.seed)
    for name, (setting, group_tasks) in groups.items():
        chans, widths = [], []
        for c in range(2):
            arrays = []
            for k, task in enumerate(group_tasks):  # the same number of cells from every task (of every source)
                for j, rows in enumerate(by_source.values()):
                    e, s, d = (np.concatenate([getattr(cells[setting, task][i], a)[c] for i in rows])
                               for a in ("error", "spread", "distance"))
                    take = pick.choice(len(e), cfg.cells_per_task, replace=len(e) < cfg.cells_per_task)
                    arrays.append((e[take], s[take], d[take], np.full(len(take), k), np.full(len(take), j)))
            *fit_cells, source = (np.concatenate(a) for a in zip(*arrays))
            fit, info = uncertainty.fit_channel(*fit_cells, cfg.coverage, source=source if len(by_source) > 1 else None)
            chans.append(fit)
            widths.append(info["width"])
            progress(f"{name} {uncertainty.CHANNELS[c]}: {fit}")
        coverage = {}
        for task in group_tasks:
            parts = cells[setting, task]
            coverage[task] = {
                "before": [_share([np.abs(p.error[c]) <= z * p.raw[c] for p in parts]) for c in range(2)],
                "after": [_share([np.abs(p.error[c]) <= z * chans[c].std(p.spread[c], p.distance[c]) for p in parts])
                          for c in range(2)]}
            rec = used.get(name) if cfg.rebuilds is not None else None
            warm = () if rec is None else (_config_of(rec), rec["steps"], rec["samples"], True)
            # (rebuilds: the fit the runtime reads them by, its warm one where it has one, else the kind's own)
            before = current.fit_for(name.removesuffix(SITE), setting == "site", warm or None) if current is not None else None
            if before is not None:
                # what the package's fit (before this one; with --samplers, the one made at its defaults) says
                own = before.channels
                coverage[task]["own_fit"] = [_share([np.abs(p.error[c]) <= z * own[c].std(p.spread[c], p.distance[c])
                                                     for p in parts]) for c in range(2)]
            if len(by_source) > 1:  # the fit must hold on each
                coverage[task]["by_source"] = {
                    src: [_share([np.abs(parts[i].error[c]) <= z * chans[c].std(parts[i].spread[c], parts[i].distance[c])
                                  for i in rows]) for c in range(2)] for src, rows in by_source.items()}
        fitted = {"tasks": list(group_tasks), "cells": int(sum(len(p.error[0]) for t in group_tasks for p in cells[setting, t])),
                  "coverage": {t: v["after"] for t, v in coverage.items()}}
        if not name.startswith("*"):
            fitted["construction"] = used[name]
        fits[name] = uncertainty.KindFit((chans[0], chans[1]), fitted)
        report[name] = {"tasks": list(group_tasks), "construction": used.get(name), "coverage": coverage,
                        "fit": fits[name].to_dict(), "width": {"gain_db": widths[0] * codec.GAIN_RMSE_FACTOR,
                                                               "aoa_sine": widths[1] * codec.AOA_RMSE_FACTOR}}
    section = uncertainty.Uncertainty(cfg.coverage, fits, validation=val.description)
    return {"uncertainty": section.to_dict(), "kinds": report, "seconds": time.perf_counter() - t_start}


def rebuild_cells(package_dir: str | Path, val: Validation, sites: dict, cfg: UncertaintyConfig, setting: str,
                  progress=print) -> tuple[list[_Cells], dict[str, dict]]:
    """A living map's incremental rebuilds on each validation tile, as an edge server builds them:
    a drive test (tasks.drive_route; `cfg.rebuilds` = readings per batch, batches) with the reading
    noise of `cfg`, added batch by batch to a site of runtime.sites.SiteManager (in process, a
    temporary SQLite store; the site setting gives it the tile's site), each batch followed by the
    map the server would build (`SiteManager.plan` with the previous map: the first fresh, every
    later one incremental, warm-started). Returns the incremental maps' unobserved cells (outdoor,
    never measured) per tile, and {kind[+site]: the rebuild's construction, "warm": true}."""
    import tempfile

    from ckm_edge.benchmarks.sites import drive_readings
    from ckm_edge.protos.ckm.edge.v1 import site_pb2 as spb
    from ckm_edge.runtime import api, executor, tasks
    from ckm_edge.runtime.package import load_package
    from ckm_edge.runtime.repository import ModelRepository
    from ckm_edge.runtime.sites import SiteLimits, SiteManager
    from ckm_edge.runtime.sitestore import MapRow, now_ms, open_store

    batch, batches = cfg.rebuilds
    if batch < 1 or batches < 2:
        raise ValueError(f"rebuilds: readings per batch >= 1 and batches >= 2 (one fresh map, then rebuilds), got {batch}, {batches}")
    pkg = load_package(package_dir)
    rng = np.random.default_rng(cfg.seed + (1 if setting == "site" else 0))
    out, used = [], {}
    with tempfile.TemporaryDirectory(prefix="ckm-rebuilds-") as work:
        repo_dir = Path(work) / "repository" / pkg.name
        repo_dir.mkdir(parents=True)
        (repo_dir / pkg.version).symlink_to(Path(package_dir).resolve(), target_is_directory=True)
        mgr = SiteManager(open_store(f"sqlite:{Path(work) / 'sites.db'}"), ModelRepository(repo_dir.parent), None,
                          limits=SiteLimits(add_rate_per_site=1e9), row_bytes=False)
        for i, truth in enumerate(val.tiles):
            layout = codec.building_mask(truth)
            d = spb.SiteDefinition(site_id=f"tile-{i}", default_gain_noise_db=cfg.gain_noise_db,
                                   default_aoa_noise=cfg.aoa_noise, geometry=spb.TileGeometry(cell_size_m=1.0),
                                   model_name=pkg.name, model_version=pkg.version)
            if setting == "site":
                d.site.CopyFrom(api.site_to_proto(sites[i]))
            mgr.create(d)
            route = tasks.drive_route(rng, ~layout, batch * batches)
            phys = codec.decode(truth)
            measured = np.zeros(layout.shape, bool)
            previous, parts = None, []
            for k in range(batches):
                part = route[k * batch:(k + 1) * batch]
                mgr.add(d.site_id, drive_readings(part, phys, rng, cfg.gain_noise_db, cfg.aoa_noise), f"b{k}")
                measured[tuple(np.array(part).T)] = True
                job, fused, incremental, evaluations = mgr.plan(mgr.get(d.site_id), previous)
                [res] = executor.execute([job])
                # (what the next plan reads of it: the mean and the model that made it)
                previous = MapRow(d.site_id, k + 1, res.mean, np.zeros_like(res.mean), False, 0.0, fused.measurement_count, 0,
                                  now_ms(), incremental, evaluations, 0.0, pkg.name, pkg.version)
                if not incremental:
                    continue
                name = uncertainty.calibration_kind(job.op) + (SITE if setting == "site" else "")
                rec = {**_record_of(job.config), "warm": True}
                if used.setdefault(name, rec) != rec:
                    raise ValueError(f"the rebuilds of {name} ran two constructions ({used[name]}, {rec}); calibrate one at a time")
                unobs = np.stack([~layout & ~measured] * 2)
                spread, raw = uncertainty.spread(res.samples), res.samples.std(axis=0)
                dist = uncertainty.distance_to_pinned(job.op.bounds(np.asarray(job.y, np.float32), job.sigma), job.shape)
                err = np.abs(res.mean - truth)
                parts.append([[a[c][unobs[c]] for c in range(2)] for a in (err, spread, dist, raw)])
            out.append(_Cells(*([np.concatenate([p[f][c] for p in parts]) for c in range(2)] for f in range(4))))
            progress(f"rebuilds ({setting}) tile {i + 1}/{len(val.tiles)}: {len(parts)} rebuilds")
    return out, used


def _record_of(config) -> dict:
    """A job's construction as a fit records it: {"sampler", "steps", "samples", "parameters": those
    not at the sampler's defaults}."""
    import dataclasses

    from ckm_edge.runtime.sampler import spec_for

    cfg, default = config.sampler, type(config.sampler)()
    params = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)}
    return {"sampler": spec_for(cfg).name, "steps": config.steps, "samples": config.samples, "parameters": params}


def _config_of(rec: dict):
    from ckm_edge.runtime.sampler import config_from_params

    return config_from_params(rec["sampler"], rec.get("parameters") or {})


def merge_kinds(current: dict | None, fitted: dict) -> dict:
    """The section `--write` puts into a package: `fitted`'s kinds over the package's `current`
    ones (each replaced whole but for the fits it holds at other constructions, which are kept), the
    package's other kinds kept (a run over some tasks, e.g. `--tasks drive`, adds or refits theirs
    only, each noting the tiles it was fitted on); a "*" fallback is replaced only by one fitted on
    at least the tasks it was. A section holding another coverage is refused (ValueError)."""
    if not current:
        return fitted
    _same_coverage(current, fitted)
    out = json.loads(json.dumps(current))
    merged = {}
    for name, entry in fitted["kinds"].items():
        old = out["kinds"].get(name)
        if name.startswith("*") and old and not set(old.get("fitted", {}).get("tasks", [])) <= set(entry["fitted"]["tasks"]):
            continue
        merged[name] = {**entry, **({"constructions": old["constructions"]} if old and "constructions" in old else {})}
    if {"*", "*+site"} & set(merged) == {"*", "*+site"} & set(out["kinds"]):  # every fallback refitted: the whole section
        out.update({k: v for k, v in fitted.items() if k != "kinds"})
    else:  # some kinds only: the section's validation stays its own, each of these says where it was fitted
        merged = {k: {**v, "fitted": {**v.get("fitted", {}), "validation": fitted.get("validation", "")}} for k, v in merged.items()}
    out["kinds"].update(merged)
    return out


def merge_constructions(current: dict | None, fitted: dict) -> dict:
    """A package's section (`current`) with the kinds' fits of `fitted` (a section fitted at other
    constructions: `--samplers`) added as fits of those constructions ("constructions" of each
    kind's entry; one already there for the same construction is replaced). The "*" entries (no
    construction of their own) and fits at a kind's default construction are not added: the
    section's own fits are those. Raises ValueError when the package has no section to add to, or
    one holding another coverage."""
    if not current:
        raise ValueError("the package has no uncertainty section to add fits at other constructions to: "
                         "calibrate its default constructions first (ckm-bench uncertainty --write, no --samplers)")
    _same_coverage(current, fitted)
    out = json.loads(json.dumps(current))
    for name, entry in fitted["kinds"].items():
        rec = entry.get("fitted", {}).get("construction")
        own = out["kinds"].get(name)
        if rec is None or own is None or _same_record(own.get("fitted", {}).get("construction"), rec):
            continue
        variant = {k: v for k, v in entry.items() if k != "constructions"}
        keep = [v for v in own.get("constructions", []) if not _same_record(v["fitted"]["construction"], rec)]
        own["constructions"] = keep + [variant]
    return out


def not_added(current: dict | None, fitted: dict) -> list[str]:
    """The kinds of `fitted` (fits at other constructions) that `merge_constructions` leaves out
    because the package's section has no fit of its own for them to sit beside."""
    kinds = (current or {}).get("kinds", {})
    return sorted(k for k, v in fitted["kinds"].items()
                  if not k.startswith("*") and v.get("fitted", {}).get("construction") and k not in kinds)


def _same_coverage(current: dict, fitted: dict) -> None:
    """One section holds one coverage: fits made for another are refused (ValueError)."""
    if current["coverage"] != fitted["coverage"]:
        raise ValueError(f"the package's section holds {current['coverage']:g} intervals; these fits {fitted['coverage']:g}")


def _same_record(a: dict | None, b: dict) -> bool:
    """Whether two recorded constructions are one (a record without "parameters", as fits made
    before they were recorded, matches on sampler, steps and samples)."""
    if not a:
        return False
    same_params = "parameters" not in a or "parameters" not in b or (a["parameters"] or {}) == (b["parameters"] or {})
    return (all(a.get(k) == b.get(k) for k in ("sampler", "steps", "samples")) and same_params
            and bool(a.get("warm", False)) == bool(b.get("warm", False)))


def calibration_kinds(probs: dict, task_names, count: int) -> dict[str, list[str]]:
    """Calibration kind (runtime.uncertainty.calibration_kind) -> the tasks whose problems have it;
    a task whose operators fall in several kinds is refused (its cells could not be split by task)."""
    out: dict[str, list[str]] = {}
    for task in task_names:
        names = {uncertainty.calibration_kind(probs[task, i][0]) for i in range(count)}
        if len(names) != 1:
            raise ValueError(f"task {task}'s operators fall in calibration kinds {sorted(names)}: calibrate it alone")
        out.setdefault(names.pop(), []).append(task)
    return out


FIELDS = ("error", "spread", "distance", "raw")


def _save(path, header: str, cells: dict, used: dict) -> None:
    arrays = {f"{s}|{t}|{i}|{f}|{c}": getattr(p, f)[c] for (s, t), parts in cells.items() for i, p in enumerate(parts)
              for f in FIELDS for c in range(2)}
    tmp = Path(path).with_name(Path(path).name + ".tmp.npz")
    np.savez(tmp, header=header, used=json.dumps(used), **arrays)
    tmp.replace(path)


def _from_arrays(z) -> dict:
    out: dict = {}
    for key in z.files:
        if "|" not in key:
            continue
        s, t, i, f, c = key.split("|")
        parts = out.setdefault((s, t), {})
        p = parts.setdefault(int(i), _Cells([None, None], [None, None], [None, None], [None, None]))
        getattr(p, f)[int(c)] = z[key]
    return {k: [v[i] for i in sorted(v)] for k, v in out.items()}


def _share(flags: list[np.ndarray]) -> float | None:
    n = sum(len(f) for f in flags)
    return None if n == 0 else float(sum(int(f.sum()) for f in flags) / n)


def write_section(package_dir: str | Path, section: dict, key: str = "uncertainty") -> Path:
    """Put a section (the "uncertainty" one, or e.g. "samplers") into the package's manifest.json
    (keys sorted, 2-space indent, as the exporter writes it): checked as a manifest first, then
    written atomically (a crash leaves the old file or the new one, never half of either)."""
    import json
    import os

    from ckm_edge.runtime.manifest import Manifest

    path = Path(package_dir) / "manifest.json"
    doc = json.loads(path.read_text())
    doc[key] = section
    Manifest.from_dict(doc)  # PackageError names a bad field; nothing is written
    tmp = path.with_name(f".manifest.json.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
