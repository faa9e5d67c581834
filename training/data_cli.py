"""`ckm-data`: make, convert and inspect CKM datasets.

    ckm-data generate --out data/proc --train-regions 8 --eval-regions 2 --tiles-per-region 128
    ckm-data convert-ckmimagenet --root /path/to/CKMImageNet --out data/ckmimagenet
    ckm-data inspect data/proc --verify --preview preview.png
    ckm-data demo --out demo-out
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from runtime import codec
from training import ckmimagenet, preview, procedural
from training.dataset import Dataset, DatasetError, DatasetWriter


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _procedural_config(args: argparse.Namespace) -> procedural.ProceduralConfig:
    return procedural.ProceduralConfig(
        tile_size=args.tile_size, cell_size_m=args.cell_size, carrier_hz=args.carrier_hz
    )


def cmd_generate(args: argparse.Namespace) -> int:
    cfg = _procedural_config(args)
    provenance = {"generator": "training.procedural", "seed": args.seed, "config": dataclasses.asdict(cfg)}
    start = time.perf_counter()
    with DatasetWriter(
        args.out, "procedural", cfg.tile_size, cfg.cell_size_m, cfg.carrier_hz, provenance
    ) as writer:
        for split, regions in (("train", args.train_regions), ("eval", args.eval_regions)):
            for r in range(regions):
                pixels, tx = procedural.generate_region(
                    cfg, split, r, args.tiles_per_region, seed=args.seed, workers=args.workers
                )
                writer.add(split, procedural.region_name(split, r), pixels, tx)
                print(f"{split} region {r + 1}/{regions}: {len(pixels)} tiles", file=sys.stderr)
    total = (args.train_regions + args.eval_regions) * args.tiles_per_region
    print(f"wrote {total} tiles to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    provenance = {"source_root": str(Path(args.root).resolve()), "converter": "training.ckmimagenet"}
    count = 0
    with DatasetWriter(args.out, "ckmimagenet", 128, None, None, provenance) as writer:
        for split in ("train", "eval"):
            for pair, pixels in ckmimagenet.iter_tiles(args.root, split):
                writer.add(split, pair.region, pixels)
                count += 1
    print(f"converted {count} CKMImageNet tiles into {args.out}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    dataset = Dataset(args.dataset)
    if args.verify:
        dataset.verify()
    print(json.dumps(dataset.summary(), indent=2))
    if args.preview:
        split = dataset.split(args.split)
        n = min(args.count, len(split))
        if n == 0:
            raise DatasetError(f"split {args.split!r} is empty: nothing to preview")
        tx = split.transmitters()
        path = preview.save_grid(args.preview, split.take(np.arange(n)), None if tx is None else tx[:n])
        print(f"preview written to {path}")
    return 0


def cmd_tile(args: argparse.Namespace) -> int:
    """One procedural tile from a held-out (eval) region, as an npz the edge CLI reads."""
    cfg = procedural.ProceduralConfig(tile_size=args.tile_size)
    pixels, tx = procedural.generate_region(cfg, "eval", args.region, args.index + 1, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, pixels=pixels[args.index], tx=tx[args.index])
    print(f"wrote {args.out}: eval region {args.region}, tile {args.index}, base station at {tx[args.index].round(1).tolist()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate a few tiles, round-trip them through the codec, write a preview."""
    out = Path(args.out)
    cfg = procedural.ProceduralConfig()
    start = time.perf_counter()
    pixels, tx = procedural.generate_region(cfg, "eval", 0, args.tiles, seed=args.seed)
    elapsed = time.perf_counter() - start
    physical = codec.decode(pixels)
    again = codec.encode(physical.gain_db, physical.aoa_sine, physical.building)
    err_db = codec.gain_rmse_db(again, pixels)
    err_sine = codec.aoa_sine_rmse(again, pixels)
    path = preview.save_grid(out / "procedural_preview.png", pixels, tx)
    outdoor = ~physical.building
    print(f"generated {len(pixels)} procedural tiles in {elapsed:.2f} s")
    print(f"outdoor gain {np.nanmin(physical.gain_db):.1f} .. {np.nanmax(physical.gain_db):.1f} dB, "
          f"buildings {100 * (1 - outdoor.mean()):.1f}% of cells")
    print(f"codec round trip: max gain error {err_db.max():.2e} dB, max AoA-sine error {err_sine.max():.2e}")
    print(f"preview: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckm-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="procedural dataset with region-disjoint splits")
    gen.add_argument("--out", required=True, type=Path)
    gen.add_argument("--train-regions", type=_positive_int, default=8)
    gen.add_argument("--eval-regions", type=_positive_int, default=2)
    gen.add_argument("--tiles-per-region", type=_positive_int, default=128)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--workers", type=_positive_int, default=2)
    gen.add_argument("--tile-size", type=_positive_int, default=128)
    gen.add_argument("--cell-size", type=float, default=2.0, help="metres per cell")
    gen.add_argument("--carrier-hz", type=float, default=3.5e9)
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert-ckmimagenet", help="convert a CKMImageNet tree")
    conv.add_argument("--root", required=True, type=Path)
    conv.add_argument("--out", required=True, type=Path)
    conv.set_defaults(func=cmd_convert)

    ins = sub.add_parser("inspect", help="counts, value ranges and a PNG preview grid")
    ins.add_argument("dataset", type=Path)
    ins.add_argument("--verify", action="store_true", help="recompute shard checksums")
    ins.add_argument("--preview", type=Path)
    ins.add_argument("--split", default="eval")
    ins.add_argument("--count", type=_positive_int, default=8)
    ins.set_defaults(func=cmd_inspect)

    tile = sub.add_parser("tile", help="one held-out procedural tile as npz (for ckm-edge construct --truth)")
    tile.add_argument("--out", required=True, type=Path)
    tile.add_argument("--region", type=int, default=0)
    tile.add_argument("--index", type=int, default=0)
    tile.add_argument("--seed", type=int, default=0)
    tile.add_argument("--tile-size", type=_positive_int, default=128)
    tile.set_defaults(func=cmd_tile)

    demo = sub.add_parser("demo", help="generate, round-trip and preview a few tiles")
    demo.add_argument("--out", type=Path, default=Path("demo-out"))
    demo.add_argument("--tiles", type=_positive_int, default=6)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, ckmimagenet.CKMImageNetError, codec.CodecError, ValueError) as e:
        print(f"ckm-data {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
