"""Evidence for a model card: prior samples next to real held-out tiles (PNG), and the statistics
of the prior's samples against the held-out split's (`--stats-samples N`).

    python -m ckm_edge.training.model_card --checkpoint prior.pt --data DIR --out docs/model-card [--stats-samples 64]

The statistics are those of `ckm-data stats` (training.statistics): the outdoor gain histogram
(10 dB bins, cells no path reaches included), the no-path and building fractions; the distances
are calibration's (training.calibrate.mismatch): histogram L1, absolute fraction differences.
The samples are unconditional (the paper's setting; a site-aware prior with its condition
channels zero) and are kept as a dataset (`DIR/prior-samples`, eval split), so `ckm-data stats`
and `ckm-data inspect` read them like any other.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ckm_edge.runtime.schedule import Schedule
from ckm_edge.training import preview
from ckm_edge.training.checkpoint import load_model
from ckm_edge.training.dataset import Dataset, DatasetWriter
from ckm_edge.training.reference_dps import DPSConfig, dps_sample

# The prior issue's targets for samples against the held-out split.
TARGETS = {"gain_histogram_l1": 0.15, "no_path_fraction": 0.03, "building_fraction": 0.03}


def prior_samples(model, schedule: Schedule, count: int, size: int, steps: int, seed: int, batch: int = 16) -> np.ndarray:
    """`count` unconditional samples (PC sampler, one corrector step, `steps` respaced steps)."""
    short = schedule.respace(steps)
    out = []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        with torch.no_grad():
            x = dps_sample(model, short, None, None, shape=(n, 2, size, size), rng=np.random.default_rng([seed, start]),
                           cfg=DPSConfig(zeta=0.0, corrector_steps=1))
        out.append(np.clip(x.numpy(), 0.0, 1.0).astype(np.float32))
    return np.concatenate(out)


def sample_statistics(samples: np.ndarray, data: Dataset, split: str = "eval") -> dict:
    """Statistics of the samples and of the held-out split, their distances and the verdicts."""
    from ckm_edge.training import calibrate, statistics

    held = statistics.dataset_statistics(data.root, split)
    mine = statistics.tile_statistics(samples, None, float(data.manifest.get("cell_size_m") or 1.0))
    distance = calibrate.mismatch(mine, held)
    distance.pop("falloff_mean_abs_db", None)  # samples have no known transmitter
    distance.pop("total", None)
    verdicts = {k: {"value": round(distance[k], 4), "target": t, "met": distance[k] <= t} for k, t in TARGETS.items()}
    return {"samples": mine, "held_out": held, "distance": distance, "verdicts": verdicts}


def markdown(result: dict, label: str) -> str:
    from ckm_edge.training import statistics

    lines = [statistics.markdown([(label, result["samples"]), ("held-out split", result["held_out"])]),
             "| distance | value | target | met |", "|---|---:|---:|---|"]
    for k, v in result["verdicts"].items():
        lines.append(f"| {k.replace('_', ' ')} | {v['value']:.3f} | {v['target']:.2f} | {'yes' if v['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="the held-out dataset (its eval split)")
    parser.add_argument("--out", required=True, type=Path, help="directory for the figures and statistics")
    parser.add_argument("--count", type=int, default=4, help="samples and real tiles in the figures")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--stats-samples", type=int, default=0, help="samples for the statistics (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, meta = load_model(args.checkpoint)
    model = model.float().eval()
    data = Dataset(args.data)
    n = data.tile_size
    schedule = Schedule.from_dict(meta["schedule"])
    x = prior_samples(model, schedule, args.count, n, args.steps, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    preview.save_grid(args.out / "prior-samples.png", x)
    evl = data.split("eval")
    idx = np.linspace(0, len(evl) - 1, args.count).astype(int)
    tx = evl.transmitters()
    preview.save_grid(args.out / "real-tiles.png", evl.take(idx), None if tx is None else tx[idx])
    print(f"wrote {args.out / 'prior-samples.png'} and {args.out / 'real-tiles.png'}")
    if args.stats_samples:
        samples = prior_samples(model, schedule, args.stats_samples, n, args.steps, args.seed + 1)
        with DatasetWriter(args.out / "prior-samples", "prior-samples", n, data.manifest.get("cell_size_m"),
                           data.manifest.get("carrier_hz"), {"checkpoint": str(args.checkpoint), "steps": args.steps,
                                                             "seed": args.seed + 1}) as w:
            w.add("eval", "prior-samples", samples)
        result = sample_statistics(samples, data)
        (args.out / "sample-stats.json").write_text(json.dumps(result, indent=1) + "\n")
        text = markdown(result, f"prior samples ({len(samples)})")
        (args.out / "sample-stats.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
