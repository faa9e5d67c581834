"""Site adaptation benchmark (issue: large/small model collaboration): on a site the foundation never
saw, with N of the site's unlabeled maps (N = 16, 64, 256), construction RMSE of

    foundation alone | foundation + adapter, LASCO (lambda = 1) | foundation + adapter, elastic
    LASCO (fitted lambda(t)) | full fine-tuning of the foundation on the same N maps

with each method's training cost (seconds, parameters trained, device). The adapter's reference
model is trained once on the shared data (its cost is reported once: every site reuses it).

The site: procedural tiles of the `calibrated` preset (the statistics fitted to Sionna RT: unreached
cells, another path-loss fall-off, low roofs) from an evaluation region; the foundation prior was
trained on `v1` tiles of training regions, so the site differs in layout and in propagation. Its
first max(N) tiles are the site's unlabeled maps, the next `test_tiles` are held out for scoring.
Constructions run the runtime's sampler over `TorchEngine`s (GPU where there is one) composed by
the runtime's `ComposedEngine`, i.e. the product's composition with the package's weights.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.benchmarks.gpu import TorchEngine, batched_rmse, task_problems
from ckm_edge.runtime import defaults


@dataclass(frozen=True)
class AdaptBenchConfig:
    site_preset: str = "calibrated"
    site_region: int = 100
    counts: tuple[int, ...] = (16, 64, 256)
    test_tiles: int = 8
    tasks: tuple[str, ...] = ("ipbox", "iprandom", "sr2", "jtqr")
    steps: int = defaults.DPS_STEPS
    zeta: float = defaults.ZETA
    generic_tiles: int = 1024
    reference_steps: int = 2000
    proxy_steps: int = 500
    finetune_steps: int = 500
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if not self.counts or min(self.counts) < self.batch_size:
            raise ValueError(f"every N must be >= the batch size {self.batch_size}, got {self.counts}")


def site_tiles(cfg: AdaptBenchConfig, tile_size: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(the site's unlabeled maps, held-out test maps) from one evaluation region of the site preset."""
    from ckm_edge.training import procedural

    pcfg = dataclasses.replace(procedural.ProceduralConfig.preset(cfg.site_preset), tile_size=tile_size)
    pixels, _ = procedural.generate_region(pcfg, "eval", cfg.site_region, max(cfg.counts) + cfg.test_tiles,
                                           seed=cfg.seed, workers=workers)
    return pixels[: max(cfg.counts)], pixels[max(cfg.counts):]


def generic_tiles(cfg: AdaptBenchConfig, tile_size: int, workers: int = 1) -> np.ndarray:
    """Shared data for the reference model: v1 tiles of training regions (the prior's generator)."""
    from ckm_edge.training import procedural

    pcfg = procedural.ProceduralConfig(tile_size=tile_size)
    per_region = 128
    regions = max(1, -(-cfg.generic_tiles // per_region))
    parts = [procedural.generate_region(pcfg, "train", r, per_region, seed=cfg.seed, workers=workers)[0]
             for r in range(regions)]
    return np.concatenate(parts)[: cfg.generic_tiles]


def run(large, meta: dict, cfg: AdaptBenchConfig, work: Path, device: str = "cpu", workers: int = 1,
        progress=print, on_result=None) -> dict:
    """Train, fit and score every method; returns JSON-able results. `on_result(results)` is called
    after every method, so a run stopped early still leaves what it measured."""
    import torch

    from ckm_edge.runtime.adapter import ComposedEngine, LambdaTable
    from ckm_edge.runtime.schedule import Schedule
    from ckm_edge.training import adapter as adapt
    from ckm_edge.training.trainer import count_parameters
    from ckm_edge.training.unet import UNetConfig

    schedule = Schedule.from_dict(meta["schedule"])
    tile_size = int(meta.get("tile_size", 128))
    t0 = time.perf_counter()
    site, test = site_tiles(cfg, tile_size, workers)
    generic = generic_tiles(cfg, tile_size, workers)
    progress(f"data: {len(site)} site maps, {len(test)} test maps, {len(generic)} generic maps "
             f"({time.perf_counter() - t0:.1f} s)")
    problems = {task: task_problems(test, task, cfg.seed) for task in cfg.tasks}

    def score(engine, label: str) -> dict:
        out = {}
        for task in cfg.tasks:
            out[task] = batched_rmse(engine, schedule, test, problems[task], cfg.steps, cfg.zeta, cfg.seed)
        progress(f"{label}: " + ", ".join(f"{t} {r['gain_db']:.2f} dB" for t, r in out.items()))
        return out

    acfg = adapt.AdapterConfig.sized(cfg.reference_steps, cfg.proxy_steps, cfg.batch_size, cfg.seed)
    finetune_cfg = dataclasses.replace(acfg.proxy, steps=cfg.finetune_steps, lr=1e-4)  # the proxy's schedule, a lower rate
    large_engine = TorchEngine(large, device)
    results: dict = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items()},
                     "device": device, "large_parameters": count_parameters(large), "methods": [], "complete": False}

    def add(row: dict) -> None:
        results["methods"].append(row)
        if on_result is not None:
            on_result(results)

    add({"method": "foundation", "n": 0, "rmse": score(large_engine, "foundation alone"),
         "cost": {"seconds": 0.0, "parameters_trained": 0}})

    reference, ref_cost = adapt.train_reference(generic, schedule, acfg, work)
    results["reference_cost"] = ref_cost
    progress(f"reference small model: {ref_cost['parameters_trained']:,} parameters, {ref_cost['seconds']:.0f} s")
    for n in cfg.counts:
        maps = site[:n]
        proxy, proxy_cost = adapt.train_proxy(reference, maps, schedule, acfg, work / f"n{n}")
        delta = adapt.ScoreDifference(proxy, reference)
        delta_engine = TorchEngine(delta, device)
        lasco = ComposedEngine(large_engine, delta_engine, LambdaTable.constant(1.0))
        add({"method": "lasco", "n": n, "rmse": score(lasco, f"N={n} LASCO"), "cost": proxy_cost})
        t1 = time.perf_counter()
        lam = adapt.fit_elastic(large, delta, maps, schedule, np.random.default_rng([cfg.seed, n]), bins=acfg.bins,
                                lam_max=acfg.lam_max, device=device)
        elastic_cost = dict(proxy_cost, seconds=proxy_cost["seconds"] + time.perf_counter() - t1,
                            lambda_fit_seconds=time.perf_counter() - t1)
        elastic = ComposedEngine(large_engine, delta_engine, lam)
        add({"method": "elastic", "n": n, "rmse": score(elastic, f"N={n} elastic LASCO"), "cost": elastic_cost,
             "lambda": lam.to_dict()})
        tuned, tune_cost = adapt.train_score_model(
            adapt.ArraySplit("site", maps), schedule, UNetConfig.from_dict(meta["unet"]), finetune_cfg,
            work / f"n{n}" / "finetune", init=copy.deepcopy(large).cpu())
        add({"method": "finetune", "n": n, "rmse": score(TorchEngine(tuned, device), f"N={n} fine-tune"), "cost": tune_cost})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    results["seconds"] = time.perf_counter() - t0
    results["complete"] = True
    if on_result is not None:
        on_result(results)
    return results


LABELS = {"foundation": "Foundation alone", "lasco": "+ adapter, LASCO (lambda = 1)",
          "elastic": "+ adapter, elastic LASCO (fitted lambda(t))", "finetune": "Full fine-tuning of the foundation"}


def markdown(results: dict, package: str, device_name: str) -> str:
    cfg = results["config"]
    task_names = cfg["tasks"]
    lines = [
        f"Site adaptation of `{package}` on **{device_name}**. Site: procedural `{cfg['site_preset']}` preset, evaluation "
        f"region {cfg['site_region']} (unseen layout and propagation statistics; the prior was trained on `v1` training "
        f"regions); N of its unlabeled maps for adaptation, {cfg['test_tiles']} other maps of the site held out for scoring. "
        f"Runtime sampler, {cfg['steps']} steps, zeta {cfg['zeta']:g}, M = 1, fp32; gain RMSE dB / AoA-sine RMSE, mean "
        "over the held-out maps (lower is better).",
        "",
        "| method | N | " + " | ".join(task_names) + " | training s | parameters trained |",
        "|---|---:|" + "---:|" * len(task_names) + "---:|---:|",
    ]
    base = next(m for m in results["methods"] if m["method"] == "foundation")
    for m in results["methods"]:
        cells = []
        for t in task_names:
            r = m["rmse"][t]
            aoa = r.get("aoa_sine")
            cells.append(f"{r['gain_db']:.2f} / " + (f"{aoa:.3f}" if aoa is not None and np.isfinite(aoa) else "—"))
        n = m["n"] or "-"
        secs = m["cost"].get("seconds")
        lines.append(f"| {LABELS[m['method']]} | {n} | " + " | ".join(cells) + " | "
                     + (f"{secs:.0f}" if secs is not None else "not recorded") + f" | {m['cost']['parameters_trained']:,} |")
    if not results.get("complete", True):
        last = results["methods"][-1]
        lines += ["", f"Incomplete run: {len(results['methods'])} of {1 + 3 * len(cfg['counts'])} rows; it stopped after "
                      f"{LABELS[last['method']].lower()}" + (f" at N = {last['n']}" if last["n"] else "")
                  + (f", {results['stopped']}" if results.get("stopped") else "") + "."]
    ref = results.get("reference_cost", {})
    lines += ["", f"The adapter's reference model ({ref.get('parameters_trained', 0):,} parameters, "
                  f"{ref.get('steps', 0)} steps on {cfg['generic_tiles']} shared maps) took {ref.get('seconds', 0):.0f} s once; "
                  f"every site reuses it. The foundation has {results['large_parameters']:,} parameters. Proxy and "
                  f"fine-tuning both ran {cfg['proxy_steps']} / {cfg['finetune_steps']} optimizer steps of batch "
                  f"{cfg['batch_size']}."]
    # Verdict per N: mean gain RMSE over tasks, adapter vs foundation vs fine-tune.
    mean = lambda m: float(np.mean([m["rmse"][t]["gain_db"] for t in task_names]))
    verdicts = []
    for n in cfg["counts"]:
        rows = {m["method"]: m for m in results["methods"] if m["n"] == n}
        if {"lasco", "elastic", "finetune"} <= set(rows):
            best_adapter = min(("lasco", "elastic"), key=lambda k: mean(rows[k]))
            verdicts.append(f"N = {n}: foundation {mean(base):.2f} dB, best adapter ({best_adapter}) "
                            f"{mean(rows[best_adapter]):.2f} dB, fine-tune {mean(rows['finetune']):.2f} dB")
    if verdicts:
        lines += ["", "Mean gain RMSE over the tasks: " + "; ".join(verdicts) + "."]
        helped = [n for n in cfg["counts"] if any(mean(m) < mean(base) for m in results["methods"]
                                                  if m["n"] == n and m["method"] in ("lasco", "elastic"))]
        lines.append("On the mean, the adapter " + (f"improves on the foundation alone at N = {', '.join(map(str, helped))}."
                                                    if helped else "does not improve on the foundation alone at any N here."))
        per_task = []
        for t in task_names:
            best = min((m["rmse"][t]["gain_db"] for m in results["methods"] if m["method"] in ("lasco", "elastic")),
                       default=None)
            tuned = min((m["rmse"][t]["gain_db"] for m in results["methods"] if m["method"] == "finetune"), default=None)
            if best is not None:
                per_task.append(f"{t} {base['rmse'][t]['gain_db']:.2f} -> {best:.2f}"
                                + (f" (fine-tune {tuned:.2f})" if tuned is not None else ""))
        lines.append("Per task, foundation -> best adapter row: " + "; ".join(per_task) + " dB.")
    return "\n".join(lines)
