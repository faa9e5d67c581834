"""Figures for a model card: prior samples next to real held-out tiles (PNG)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ckm_edge.runtime.schedule import Schedule
from ckm_edge.training import preview
from ckm_edge.training.checkpoint import load_model
from ckm_edge.training.dataset import Dataset
from ckm_edge.training.reference_dps import DPSConfig, dps_sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="directory for prior-samples.png and real-tiles.png")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, meta = load_model(args.checkpoint)
    data = Dataset(args.data)
    n = data.tile_size
    schedule = Schedule.from_dict(meta["schedule"]).respace(args.steps)
    with torch.no_grad():
        x = dps_sample(model, schedule, None, None, shape=(args.count, 2, n, n), rng=np.random.default_rng(args.seed),
                       cfg=DPSConfig(zeta=0.0, corrector_steps=1))
    preview.save_grid(args.out / "prior-samples.png", np.clip(x.numpy(), 0, 1))
    evl = data.split("eval")
    idx = np.linspace(0, len(evl) - 1, args.count).astype(int)
    tx = evl.transmitters()
    preview.save_grid(args.out / "real-tiles.png", evl.take(idx), None if tx is None else tx[idx])
    print(f"wrote {args.out / 'prior-samples.png'} and {args.out / 'real-tiles.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
