"""Construction accuracy on region-held-out tiles, in the layout of the paper's Tables II and III.

Per task (IPbox, IPrandom, SR x2, JTQR, and our zero-shot drive-test trajectories) and per method:

- the foundation prior with the edge runtime's DPS (ONNX Runtime, one package, one zeta);
- the single-configuration end-to-end model of that task (`models/checkpoints/baseline-<task>.pt`);
- the multi-configuration end-to-end model (`baseline-multi.pt`, trained on the four paper tasks);
- classical interpolation: nearest neighbour and inverse-distance weighting for masks, bicubic
  for super-resolution, the clipping-aware fill for JTQR.

y = A(x) + n with sigma = 0.01 in pixels, as in the paper; every method sees the same y. The
metric is the paper's: RMSE over all cells of a map, gain in dB (200 x pixel RMSE) and AoA sine
(20/7 x pixel RMSE), averaged over maps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.runtime import codec, defaults, tasks

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
METHOD_LABELS = {
    "foundation": "Foundation prior + runtime DPS (ours)",
    "single": "Single-configuration end-to-end (ours)",
    "multi": "Multi-configuration end-to-end (ours)",
    "nearest": "Classical: nearest neighbour / bicubic / clipping-aware fill",
    "idw": "Classical: inverse-distance weighting (masks)",
}


@dataclass(frozen=True)
class AccuracyConfig:
    steps: int = defaults.DPS_STEPS
    zeta: float = defaults.ZETA
    corrector_steps: int = defaults.CORRECTOR_STEPS
    precision: str = "fp32"
    sigma: float = tasks.DEFAULT_SIGMA
    seed: int = 0


def load_tiles(source: str, count: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Held-out tiles: a dataset directory's eval split, or 'procedural' (held-out v1 regions)."""
    if source == "procedural":
        from ckm_edge.training import procedural

        cfg = procedural.ProceduralConfig()
        per = max(1, -(-count // 4))
        parts = [procedural.generate_region(cfg, "eval", r, per, seed=seed)[0] for r in range(4)]
        return np.concatenate(parts)[:count], "procedural v1, held-out eval regions 0-3"
    from ckm_edge.training.dataset import Dataset

    ds = Dataset(source)
    split = ds.split("eval")
    n = min(count, len(split))
    return split.take(np.arange(n)), f"{ds.manifest['source']} `{source}` eval split ({', '.join(split.regions)})"


def _baseline(path: Path):
    import torch

    from ckm_edge.training.checkpoint import load_model

    model, meta = load_model(path)
    model = model.float().eval()

    def run(inputs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.clip(model(torch.from_numpy(inputs)).numpy(), 0.0, 1.0)

    return run, tuple(meta["tasks"])


def run(package_dir: str | Path, checkpoints: str | Path, tiles: np.ndarray, task_names: tuple[str, ...],
        cfg: AccuracyConfig, progress=print) -> dict:
    """Per task and method: per-map gain and AoA-sine RMSE lists, and seconds per map."""
    from ckm_edge.benchmarks import classical
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.dps import DPSConfig
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.package import load_package
    from ckm_edge.training.objectives import observation_inputs

    pkg = load_package(package_dir)
    if tiles.shape[-1] != pkg.tile_size:
        raise ValueError(f"tiles are {tiles.shape[-1]} wide, package {pkg.name} takes {pkg.tile_size}")
    checkpoints = Path(checkpoints)
    multi = _baseline(checkpoints / "baseline-multi.pt") if (checkpoints / "baseline-multi.pt").exists() else None
    shape = (2, pkg.tile_size, pkg.tile_size)
    ccfg = ConstructConfig(steps=cfg.steps, seed=cfg.seed,
                           sampler=DPSConfig(zeta=cfg.zeta, corrector_steps=cfg.corrector_steps))
    results: dict = {}
    with open_engine(pkg, EngineConfig(precision=cfg.precision)) as engine:
        for task in task_names:
            single_path = checkpoints / f"baseline-{task}.pt"
            single = _baseline(single_path) if single_path.exists() else None
            rows: dict = {}

            def add(method, pred, truth, seconds):
                r = rows.setdefault(method, {"gain_db": [], "aoa_sine": [], "seconds": []})  # noqa: B023
                r["gain_db"].append(float(codec.gain_rmse_db(pred[None], truth[None])[0]))
                r["aoa_sine"].append(float(codec.aoa_sine_rmse(pred[None], truth[None])[0]))
                r["seconds"].append(seconds)

            for i, x in enumerate(tiles):
                rng = np.random.default_rng([cfg.seed, i])
                op = tasks.make_operator(task, rng, x[None])
                y = tasks.observe(op, x[None], rng, cfg.sigma)
                t = time.perf_counter()
                result = construct(engine, pkg.schedule(), op, y, shape, ccfg)
                add("foundation", result.mean, x, time.perf_counter() - t)
                inputs = observation_inputs(op, y, (1,) + shape, with_mask=True)
                for name, net in (("single", single), ("multi", multi)):
                    if net is not None and task in net[1]:
                        t = time.perf_counter()
                        add(name, net[0](inputs)[0], x, time.perf_counter() - t)
                for name, method in (("nearest", "nearest"), ("idw", "idw")):
                    if name == "idw" and not hasattr(op, "mask"):
                        continue
                    t = time.perf_counter()
                    add(name, classical.reconstruct(op, y, (1,) + shape, method=method)[0], x, time.perf_counter() - t)
                progress(f"{task} tile {i + 1}/{len(tiles)}: foundation {rows['foundation']['gain_db'][-1]:.2f} dB")
            results[task] = rows
    return results


def target_verdict(results: dict) -> str:
    """The issue's accuracy target, per paper task: the foundation within 10% of the single-configuration
    model's gain RMSE and below the multi-configuration model's and every classical method's."""
    met, missed = [], []
    for task in (t for t in results if t in ("ipbox", "iprandom", "sr2", "jtqr")):
        rows = {m: _mean(r["gain_db"]) for m, r in results[task].items()}
        ours = rows.get("foundation")
        if ours is None:
            continue
        why = []
        if rows.get("single") is not None and ours > 1.1 * rows["single"]:
            why.append(f"{(ours / rows['single'] - 1) * 100:.0f}% above single-configuration ({rows['single']:.2f})")
        for other, label in (("multi", "multi-configuration"), ("nearest", "nearest/bicubic/clipping-aware"), ("idw", "IDW")):
            if rows.get(other) is not None and rows[other] <= ours:
                why.append(f"{label} {rows[other]:.2f}")
        (missed if why else met).append(f"{task} ({ours:.2f} dB" + (": " + "; ".join(why) if why else "") + ")")
    text = "Target (foundation within 10% of single-configuration, better than multi-configuration and every " \
           "classical method, gain RMSE): " + (f"met on {', '.join(met)}" if met else "met on no task")
    if not missed:
        return text + "."
    return (text + f"; missed on {', '.join(missed)}. Why: the shipped prior is small and briefly trained on a CPU "
            "(see its model card); on masks with gaps of a few to 50 cells, interpolating the observed neighbours "
            "(IDW) is hard to beat and an underfit prior's samples add variance; on ray-traced tiles every learned "
            "model here also meets a distribution shift (all were trained on procedural v1 tiles, which have no "
            "unreached cells).")


def _mean(values):
    return float(np.mean(values)) if values else None


def markdown(results: dict, description: str, cfg: AccuracyConfig) -> str:
    task_names = list(results)
    head = "| method | " + " | ".join(task_names) + " |\n|---|" + "---:|" * len(task_names) + "\n"
    out = [description, ""]
    for metric, title, fmt in (("gain_db", "Gain RMSE (dB)", "{:.2f}"), ("aoa_sine", "AoA-sine RMSE", "{:.3f}")):
        lines = [f"**{title}** (mean over maps; lower is better)", "", head.rstrip("\n")]
        methods = [m for m in METHOD_LABELS if any(m in results[t] for t in task_names)]
        for m in methods:
            cells = []
            for t in task_names:
                v = _mean(results[t].get(m, {}).get(metric, []))
                best = min((_mean(results[t][k][metric]) for k in results[t]), default=None)
                cells.append("—" if v is None else (f"**{fmt.format(v)}**" if v == best else fmt.format(v)))
            lines.append(f"| {METHOD_LABELS[m]} | " + " | ".join(cells) + " |")
        for m, label in (("foundation", "Paper: foundation model (CKMImageNet)"),
                         ("single", "Paper: single-configuration (CKMImageNet)"),
                         ("multi", "Paper: multi-configuration (CKMImageNet)")):
            cells = [fmt.format(PAPER[metric][m][t]) if t in PAPER[metric][m] else "—" for t in task_names]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        out += lines + [""]
    out += [target_verdict(results), ""]
    secs = {t: _mean(results[t]["foundation"]["seconds"]) for t in task_names}
    out.append(
        f"Foundation: runtime DPS, {cfg.steps} steps, {cfg.corrector_steps} corrector step(s), zeta {cfg.zeta:g}, "
        f"{cfg.precision}, noise sigma {cfg.sigma:g}; seconds per map: "
        + ", ".join(f"{t} {s:.1f}" for t, s in secs.items())
        + ". Bold: best of our rows. The paper's rows are on CKMImageNet with a fully trained prior and "
        "baselines; ours are on different data with the small CPU-trained models shipped here, so only "
        "the ordering of methods is comparable, not the values."
    )
    return "\n".join(out)
