"""`ckm-train`: cloud training of the score prior and the end-to-end baselines.

    ckm-train prior    --data data/proc --out runs/prior --preset small --steps 20000
    ckm-train baseline --data data/proc --out runs/e2e-ipbox --task ipbox
    ckm-train baseline --data data/proc --out runs/e2e-multi --task multi
    ckm-train slim --checkpoint runs/prior/checkpoint.pt --out models/prior.pt
    ckm-train adapter --base-package models/repository/ckm-prior/1.0.0 --site-data data/site --generic-data data/proc \
                      --out runs/adapter-site          (a site adapter: reference + proxy small models, lambda(t))
    torchrun --nproc_per_node 8 -m ckm_edge.training.cli prior --data ... --preset base   # multi-GPU

An existing checkpoint in --out is resumed from its exact step; --steps is the total.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from ckm_edge.runtime import tasks
from ckm_edge.runtime.schedule import Schedule
from ckm_edge.training import objectives, preview
from ckm_edge.training.dataset import Dataset, Mixture
from ckm_edge.training.reference_dps import DPSConfig, dps_sample
from ckm_edge.training.trainer import TrainConfig, Trainer, count_parameters
from ckm_edge.training.unet import PRESETS, EndToEndModel, ScoreModel


def _schedule(args) -> Schedule:
    if args.sde == "vp":
        return Schedule.vp(args.num_steps, args.beta_min, args.beta_max)
    return Schedule.ve(args.num_steps, args.sigma_min, args.sigma_max)


def _train_config(args) -> TrainConfig:
    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, grad_clip=args.grad_clip,
        ema_decay=args.ema_decay, seed=args.seed, crop=args.crop, eval_every=args.eval_every,
        sample_every=args.sample_every, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        precision=args.precision,
    )


def prior_sample_hook(schedule: Schedule, count: int = 4, steps: int = 50, size: int = 128):
    """Writes a grid of `count` prior samples (PC sampler over a respaced schedule) as PNG."""
    short = schedule.respace(min(steps, len(schedule)))

    def hook(model, path: Path, step: int) -> None:
        model.eval()
        x = dps_sample(model, short, None, None, shape=(count, 2, size, size), rng=np.random.default_rng(step),
                       cfg=DPSConfig(zeta=0.0, corrector_steps=0), device=next(model.parameters()).device)
        preview.save_grid(path, np.clip(x.cpu().numpy(), 0, 1))

    return hook


def baseline_sample_hook(eval_split, task_names, count: int = 4):
    """Writes truth | prediction pairs of the baseline on held-out tiles as PNG."""

    def hook(model, path: Path, step: int) -> None:
        rng = np.random.default_rng(step)
        x = eval_split.take(np.arange(min(count, len(eval_split))))
        op = tasks.make_operator(task_names[0], rng, x)
        y = tasks.observe(op, x, rng)
        inputs = objectives.observation_inputs(op, y, x.shape, with_mask=True)
        with torch.no_grad():
            pred = model(torch.from_numpy(inputs).to(next(model.parameters()).device)).cpu().numpy()
        pairs = np.stack([x, np.clip(pred, 0, 1)], axis=1).reshape(-1, *x.shape[1:])
        preview.save_grid(path, pairs, columns=2)

    return hook


def parse_data(text: str) -> tuple[Path, int]:
    """`DIR` or `DIR:REPEAT` (how many times per epoch the dataset's training split is seen)."""
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit():
        if int(tail) < 1:
            raise argparse.ArgumentTypeError(f"repeat must be >= 1 in {text!r}")
        return Path(head), int(tail)
    return Path(text), 1


def open_data(sources: list[tuple[Path, int]]):
    """The training split (a Mixture of several datasets' training splits, each repeated), the
    held-out split for the evaluation loss (the first non-empty eval split, in the order given),
    the tile size, and what the checkpoint records about the data."""
    datasets = [(Dataset(path), repeat) for path, repeat in sources]
    sizes = {ds.tile_size for ds, _ in datasets}
    if len(sizes) > 1:
        raise ValueError(f"the datasets have different tile sizes {sorted(sizes)}")
    if len(datasets) == 1 and datasets[0][1] == 1:
        ds = datasets[0][0]
        return ds.split("train"), ds.split("eval"), ds.tile_size, {"data": str(sources[0][0]), "data_checksum": ds.manifest.get("checksum")}
    train = Mixture([(ds.split("train"), repeat) for ds, repeat in datasets])
    held_out = next((ds.split("eval") for ds, _ in datasets if len(ds.split("eval"))), None)
    record = {"data": [{"path": str(path), "repeat": repeat, "checksum": ds.manifest.get("checksum"),
                        "train_tiles": len(ds.split("train"))} for (path, repeat), (ds, _) in zip(sources, datasets)]}
    return train, held_out, sizes.pop(), record


def cmd_prior(args) -> int:
    train, held_out, size, record = open_data(args.data)
    schedule = _schedule(args)
    unet = dataclasses.replace(PRESETS[args.preset], in_channels=2, out_channels=2, time_conditional=True,
                               cond_channels=_cond_channels(args))
    model = ScoreModel(unet, schedule)
    meta = {"kind": "prior", "unet": unet.to_dict(), "schedule": schedule.to_dict(), **record, "preset": args.preset}
    trainer = Trainer(model, objectives.ScoreMatching(schedule), train, held_out,
                      _train_config(args), args.out, meta, prior_sample_hook(schedule, size=size))
    return _run(trainer, args)


def cmd_baseline(args) -> int:
    train, held_out, _, record = open_data(args.data)
    if held_out is None:
        raise ValueError("a baseline needs an eval split for its sample previews; none of the datasets has one")
    names = tasks.PAPER_TASKS if args.task == "multi" else (args.task,)
    unet = dataclasses.replace(PRESETS[args.preset], in_channels=3, out_channels=2, time_conditional=False,
                               cond_channels=_cond_channels(args))
    model = EndToEndModel(unet)
    meta = {"kind": "baseline", "unet": unet.to_dict(), "tasks": list(names), **record, "preset": args.preset}
    trainer = Trainer(model, objectives.EndToEnd(names), train, held_out,
                      _train_config(args), args.out, meta, baseline_sample_hook(held_out, names))
    return _run(trainer, args)


def _cond_channels(args) -> int:
    from ckm_edge.runtime import condition

    return condition.ENCODINGS[args.condition].channels if args.site_aware else 0


def _run(trainer: Trainer, args) -> int:
    if trainer.path.exists():
        trainer.resume()
        print(f"resumed {trainer.path} at step {trainer.step}", file=sys.stderr)
    elif args.init:
        from ckm_edge.training.checkpoint import load_model
        from ckm_edge.training.unet import warm_start

        model, meta = load_model(args.init)
        source, target = dict(meta.get("unet") or {}), dict(trainer.meta.get("unet") or {})
        if {k: v for k, v in source.items() if k != "cond_channels"} != {k: v for k, v in target.items() if k != "cond_channels"} \
                or source.get("cond_channels", 0) > target.get("cond_channels", 0):
            raise ValueError(f"{args.init} has a different U-Net config than --preset {args.preset}"
                             + (" --site-aware" if args.site_aware else ""))
        widened = warm_start(trainer.model, model.state_dict())
        trainer.ema.model.load_state_dict(trainer.model.state_dict())
        trainer.meta["init"] = {"from": str(args.init), "trained_steps": meta.get("trained_steps"), "widened": widened}
        print(f"initialised from {args.init} ({meta.get('trained_steps')} steps"
              + (f"; zero-initialised condition inputs of {', '.join(widened)}" if widened else "")
              + "); optimizer starts fresh", file=sys.stderr)
    print(f"{trainer.meta['kind']}: {count_parameters(trainer.model):,} parameters on {trainer.device}, "
          f"world size {trainer.world}", file=sys.stderr)
    last = trainer.fit(max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    print(f"stopped at step {trainer.step}: {last}")
    return 0


def cmd_slim(args) -> int:
    from ckm_edge.training.checkpoint import slim

    path = slim(args.checkpoint, args.out, half=args.half)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_adapter(args) -> int:
    import json

    from ckm_edge.runtime.adapter import LambdaTable, manifest_sha256
    from ckm_edge.runtime.package import load_package
    from ckm_edge.training import adapter as adapt
    from ckm_edge.training.checkpoint import load_model

    base_pkg = load_package(args.base_package)
    provenance = base_pkg.manifest.provenance
    checkpoint = args.base_checkpoint or Path((provenance and provenance.checkpoint) or "")
    if not Path(checkpoint).is_file():
        raise ValueError(f"the base package's PyTorch weights were not found at {checkpoint!s}; give --base-checkpoint")
    large, large_meta = load_model(checkpoint)
    same = lambda a, b: json.loads(json.dumps(a)) == json.loads(json.dumps(b))  # tuples vs JSON lists
    network = base_pkg.manifest.network
    if not (same(large_meta.get("schedule"), base_pkg.manifest.schedule)
            and same(large_meta.get("unet"), network and network.unet)):
        raise ValueError(f"{checkpoint} is not the network of {base_pkg.name} {base_pkg.version} (schedule or U-Net differ)")
    site = Dataset(args.site_data)
    if site.tile_size != base_pkg.tile_size:
        raise ValueError(f"site tiles are {site.tile_size} cells, the base package's {base_pkg.tile_size}")
    split = site.split(args.site_split)
    maps = split.take(np.arange(len(split)))
    schedule = base_pkg.schedule()
    cfg = adapt.AdapterConfig.sized(args.reference_steps, args.steps, args.batch_size, args.seed, proxy_lr=args.lr)
    out = Path(args.out)
    if args.reference:
        reference, ref_meta = load_model(args.reference)
        if not (same(ref_meta.get("unet"), cfg.unet.to_dict()) and same(ref_meta.get("schedule"), schedule.to_dict())):
            raise ValueError(f"{args.reference} is not a reference model for this adapter (U-Net or schedule differ)")
        ref_cost = ref_meta.get("training", {})
    else:
        if not args.generic_data:
            raise ValueError("give --generic-data (the shared data the prior saw) or a trained --reference")
        generic = Dataset(args.generic_data).split("train")
        rng = np.random.default_rng(args.seed)
        pick = np.sort(rng.choice(len(generic), min(args.generic_tiles, len(generic)), replace=False))
        reference, ref_cost = adapt.train_reference(generic.take(pick), schedule, cfg, out, progress=True)
        ref_path = out / "reference.pt"
        torch.save({"format": "ckm-model", "meta": {"kind": "prior", "unet": cfg.unet.to_dict(), "schedule": schedule.to_dict(),
                                                    "training": ref_cost, "data": str(args.generic_data)},
                    "weights": reference.state_dict()}, ref_path)
        print(f"reference model: {ref_path} ({ref_cost['seconds']:.0f} s); reuse it for other sites with --reference",
              file=sys.stderr)
    proxy, proxy_cost = adapt.train_proxy(reference, maps, schedule, cfg, out, progress=True)
    delta = adapt.ScoreDifference(proxy, reference)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lam = (LambdaTable.constant(1.0) if args.fixed_lambda else
           adapt.fit_elastic(large, delta, maps, schedule, np.random.default_rng([args.seed, len(maps)]), bins=cfg.bins,
                             lam_max=cfg.lam_max, device=device))
    meta = {"base": {"name": base_pkg.name, "version": base_pkg.version, "manifest_sha256": manifest_sha256(base_pkg)},
            "unet": cfg.unet.to_dict(), "schedule": schedule.to_dict(),
            "site": {"data": str(args.site_data), "split": args.site_split, "maps": int(len(maps)),
                     "data_checksum": site.manifest.get("checksum")},
            "training": {"proxy": proxy_cost, "reference": ref_cost}}
    path = adapt.save_adapter(out / "adapter.pt", proxy.cpu(), reference.cpu(), lam, meta)
    print(json.dumps({"adapter": str(path), "lambda": lam.to_dict(), "proxy": proxy_cost}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckm-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", required=True, nargs="+", type=parse_data, metavar="DIR[:REPEAT]",
                        help="dataset directory (ckm-data format); several make a mixture of their training "
                             "splits, each seen REPEAT times per epoch (default 1)")
    common.add_argument("--out", required=True, type=Path, help="run directory: checkpoint, log, samples")
    common.add_argument("--preset", choices=sorted(PRESETS), default="small")
    common.add_argument("--steps", type=int, default=20_000, help="total optimizer steps")
    common.add_argument("--batch-size", type=int, default=16)
    common.add_argument("--lr", type=float, default=2e-4)
    common.add_argument("--warmup", type=int, default=500)
    common.add_argument("--grad-clip", type=float, default=1.0)
    common.add_argument("--ema-decay", type=float, default=0.999)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--crop", type=int, default=None, help="train on random square crops of this size")
    common.add_argument("--eval-every", type=int, default=500)
    common.add_argument("--sample-every", type=int, default=2000)
    common.add_argument("--checkpoint-every", type=int, default=250)
    common.add_argument("--log-every", type=int, default=25)
    common.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="forward-pass autocast: auto = bf16 on a GPU, float32 on a CPU; bf16 also on a CPU "
                             "with AMX / AVX512-BF16 (about 1.5-2x faster steps there)")
    common.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    common.add_argument("--init", type=Path, default=None,
                        help="warm start from a slim model file (weights only) when --out has no checkpoint; an "
                             "unconditional model may start a --site-aware one (its condition inputs start at zero)")
    common.add_argument("--site-aware", action="store_true",
                        help="condition on the site (building layout, base station; runtime.condition), with "
                             "condition dropout for a prior so it also serves the unconditional setting")
    common.add_argument("--condition", choices=("ckm-site/1", "ckm-site/2"), default="ckm-site/2",
                        help="with --site-aware: the condition's encoding (runtime.condition); ckm-site/2 adds the "
                             "physics channels (line of sight, direct-path AoA, free-space gain)")

    prior = sub.add_parser("prior", parents=[common], help="the foundation score prior (Algorithm 1)")
    prior.add_argument("--sde", choices=("vp", "ve"), default="vp")
    prior.add_argument("--num-steps", type=int, default=1000, help="N, the discretization of the SDE")
    prior.add_argument("--beta-min", type=float, default=0.1)
    prior.add_argument("--beta-max", type=float, default=20.0)
    prior.add_argument("--sigma-min", type=float, default=0.01)
    prior.add_argument("--sigma-max", type=float, default=50.0)
    prior.set_defaults(func=cmd_prior)

    base = sub.add_parser("baseline", parents=[common], help="end-to-end supervised baseline (paper Fig. 6)")
    base.add_argument("--task", choices=tasks.PAPER_TASKS + tasks.TASKS[4:] + ("multi",), required=True)
    base.set_defaults(func=cmd_baseline)

    ad = sub.add_parser("adapter", help="a site adapter: small reference + proxy score models and lambda(t) (LASCO)")
    ad.add_argument("--base-package", required=True, type=Path, help="the foundation package the adapter shifts")
    ad.add_argument("--base-checkpoint", type=Path, default=None,
                    help="its PyTorch weights (default: the checkpoint named in the package's provenance)")
    ad.add_argument("--site-data", required=True, type=Path, help="dataset of the site's unlabeled maps")
    ad.add_argument("--site-split", default="train")
    ad.add_argument("--generic-data", type=Path, default=None, help="the shared data, for training the reference model")
    ad.add_argument("--generic-tiles", type=int, default=1024)
    ad.add_argument("--reference", type=Path, default=None, help="a reference model trained before (reference.pt)")
    ad.add_argument("--out", required=True, type=Path)
    ad.add_argument("--steps", type=int, default=500, help="proxy fine-tuning steps")
    ad.add_argument("--reference-steps", type=int, default=2000)
    ad.add_argument("--batch-size", type=int, default=16)
    ad.add_argument("--lr", type=float, default=2e-4, help="proxy learning rate")
    ad.add_argument("--fixed-lambda", action="store_true", help="lambda = 1 (LASCO) instead of the fitted lambda(t)")
    ad.add_argument("--seed", type=int, default=0)
    ad.set_defaults(func=cmd_adapter)

    sl = sub.add_parser("slim", help="keep only a checkpoint's EMA weights, for shipping")
    sl.add_argument("--checkpoint", required=True, type=Path)
    sl.add_argument("--out", required=True, type=Path)
    sl.add_argument("--half", action="store_true", help="store float16 weights")
    sl.set_defaults(func=cmd_slim)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"ckm-train {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
