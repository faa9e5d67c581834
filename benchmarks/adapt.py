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
    steps: int = defaults.RECORD_DPS_STEPS
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
    """Train, fit and score every method; returns JSON-able results with their `summary`.
    `on_result(results)` is called after every method, so a run stopped early still leaves what it
    measured."""
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
        results["summary"] = summary(results)
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


def summary(results: dict) -> dict:
    """Adapter against foundation against fine-tuning, on the mean gain RMSE over the tasks: per N
    where all three were measured ("by_n"), the Ns at which an adapter row beats the foundation
    ("improved_at"), and per task the foundation, the best adapter row and the best fine-tune."""
    names = results["config"]["tasks"]
    mean = lambda m: float(np.mean([m["rmse"][t]["gain_db"] for t in names]))
    methods = results["methods"]
    base = next(m for m in methods if m["method"] == "foundation")
    by_n = []
    for n in results["config"]["counts"]:
        rows = {m["method"]: m for m in methods if m["n"] == n}
        if {"lasco", "elastic", "finetune"} <= set(rows):
            best = min(("lasco", "elastic"), key=lambda k: mean(rows[k]))
            by_n.append({"n": n, "foundation_db": mean(base), "best_adapter": best, "best_adapter_db": mean(rows[best]),
                         "finetune_db": mean(rows["finetune"])})
    adapters = [m for m in methods if m["method"] in ("lasco", "elastic")]
    per_task = {}
    for t in names:
        tuned = [m["rmse"][t]["gain_db"] for m in methods if m["method"] == "finetune"]
        if adapters:
            per_task[t] = {"foundation_db": base["rmse"][t]["gain_db"],
                           "best_adapter_db": min(m["rmse"][t]["gain_db"] for m in adapters),
                           "finetune_db": min(tuned) if tuned else None}
    return {"by_n": by_n, "improved_at": [n for n in results["config"]["counts"]
                                          if any(mean(m) < mean(base) for m in adapters if m["n"] == n)],
            "per_task": per_task}
