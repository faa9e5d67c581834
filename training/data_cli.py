"""`ckm-data`: make, convert and inspect CKM datasets.

    ckm-data generate --out data/proc --train-regions 8 --eval-regions 2 --tiles-per-region 128
    ckm-data convert-ckmimagenet --root /path/to/CKMImageNet --out data/ckmimagenet
    ckm-data inspect data/proc --verify --preview preview.png
    ckm-data demo --out demo-out
    ckm-data stats data/proc data/rt --labels procedural ray-traced --out docs/calibration
    ckm-data calibrate datasets/sionna-rt-small --out docs/calibration --save-preset calibrated --preview 4
    ckm-data raytrace --out data/rt --train munich etoile --eval florence --tiles-per-scene 64 [--shard 0/8]
    ckm-data raytrace --out data/rt --snapshot data/rt-so-far [--exclude held-back.txt]   (tiles kept for validation)
    ckm-data raytrace --out data/rt --merge gpu-build   (tiles a GPU traced: ... --exclude tiles.txt --device cuda)
    ckm-data cities --out data/cities --count 24 --seed 33   (generated 3D city scenes to ray-trace)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from ckm_edge.runtime import codec
from ckm_edge.training import cityscene, ckmimagenet, preview, procedural, raytrace
from ckm_edge.training.dataset import Dataset, DatasetError, DatasetWriter


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _shard(text: str) -> tuple[int, int]:
    try:
        return raytrace.parse_shard(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _procedural_config(args: argparse.Namespace) -> procedural.ProceduralConfig:
    return procedural.ProceduralConfig.preset(
        args.preset, tile_size=args.tile_size, cell_size_m=args.cell_size, carrier_hz=args.carrier_hz
    )


def cmd_generate(args: argparse.Namespace) -> int:
    cfg = _procedural_config(args)
    provenance = {"generator": "training.procedural", "preset": args.preset, "seed": args.seed,
                  "config": dataclasses.asdict(cfg)}
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
    """One tile as an npz the edge CLI reads: a procedural tile of a held-out (eval) region, or
    (--from) a tile of a dataset's split, e.g. a ray-traced held-out city's."""
    if args.source is not None:
        split = Dataset(args.source).split(args.split)
        if not 0 <= args.index < len(split):
            raise DatasetError(f"{args.source} split {args.split!r} has {len(split)} tile(s); --index {args.index} is not one")
        tx = split.transmitters()
        extra = {} if tx is None else {"tx": tx[args.index]}
        if split.has_heights:
            heights = split.heights(np.array([args.index]))[0]
            if not np.isnan(heights).all():
                extra["building_height"] = heights
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.out, pixels=split[args.index], **extra)
        where = "" if tx is None else f", base station at {[round(float(v), 1) for v in tx[args.index]]}"
        print(f"wrote {args.out}: {args.source} {args.split} tile {args.index}{where}")
        return 0
    cfg = procedural.ProceduralConfig.preset(args.preset, tile_size=args.tile_size)
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


def _height_range(text: str) -> tuple[float, float]:
    parts = text.split(":")
    try:
        lo, hi = (float(parts[0]), float(parts[-1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected metres as H or LO:HI, got {text!r}") from None
    if len(parts) > 2 or not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"expected H or LO:HI with 0 < LO <= HI, got {text!r}")
    return lo, hi


def _tile_names(path: Path | None) -> frozenset[str]:
    """Tile names, one per line (`ls BUILD/.raytrace/tiles` output: a .npz suffix is dropped, and
    the partial writes such a listing may catch, NAME.tmpPID.npz, are left out)."""
    if path is None:
        return frozenset()
    try:
        lines = path.read_text().split()
    except OSError as e:
        raise DatasetError(f"cannot read the tile list {path}: {e.strerror}") from None
    return frozenset(line.removesuffix(".npz") for line in lines if ".tmp" not in line)


def cmd_raytrace(args: argparse.Namespace) -> int:
    """Ray-traced tiles from city scenes (Sionna RT); resumable and shardable."""
    if args.check:
        problem = raytrace.backend_problem("cuda" if args.device == "cuda" else "cpu")
        print(problem or f"ray-tracing backend ready ({raytrace.find_llvm()[1]})")
        return 0 if problem is None else 1
    if args.out is None:
        raise DatasetError("--out is required")
    if args.snapshot:
        summary = raytrace.snapshot(args.out, args.snapshot, exclude=_tile_names(args.exclude))
        print(f"wrote {summary['tiles']} of {summary['planned']} planned tile(s) to {summary['manifest']}")
        return 0
    if args.backfill_surface:
        summary = raytrace.backfill_surface(args.out, device=args.device)
        print(f"gave {summary['filled']} finished tile(s) their surface heights ({summary['kept']} had them)")
        return 0
    if args.merge:
        summary = raytrace.merge(args.out, args.merge)
        print(f"merged {summary['copied']} tile(s) from {args.merge} ({summary['kept']} already here); "
              + (f"dataset assembled: {summary['manifest']}" if summary["manifest"]
                 else f"{summary['remaining']} tile(s) of the plan still to build"))
        return 0
    if not args.train and not args.eval:
        raise DatasetError("name at least one scene with --train and/or --eval")
    cfg = raytrace.RaytraceConfig(
        tile_size=args.tile_size,
        cell_size_m=args.cell_size,
        carrier_hz=args.carrier_hz,
        rx_height_m=args.rx_height,
        bs_height_m=args.bs_height,
        bs_offset=args.bs_offset,
        max_depth=args.max_depth,
        diffraction=args.diffraction,
        edge_diffraction=args.edge_diffraction,
        samples_per_src=args.samples_per_src,
    )
    scenes = tuple((s, "train") for s in args.train) + tuple((s, "eval") for s in args.eval)
    plan = raytrace.BuildPlan(scenes, args.tiles_per_scene, args.seed, cfg)
    summary = raytrace.build(args.out, plan, shard=args.shard, device=args.device, limit=args.limit,
                             exclude=_tile_names(args.exclude), assemble_when_done=not args.no_assemble)
    done = "dataset assembled: " + summary["manifest"] if summary["manifest"] else (
        f"{summary['remaining']} tile(s) of the plan still to build (other shards, or rerun to resume)"
    )
    elsewhere = f", {summary['excluded']} built elsewhere (--exclude)" if summary["excluded"] else ""
    print(f"built {summary['built']} tile(s), {summary['skipped']} already there{elsewhere}; {done}")
    return 0


def cmd_cities(args: argparse.Namespace) -> int:
    """Generated 3D city scenes (Mitsuba XML + PLY meshes) for `ckm-data raytrace --train`."""
    paths = cityscene.build_cities(args.out, args.count, seed=args.seed, start=args.start, extent_m=args.extent)
    for path in paths:
        city = cityscene.load_city(path.parent)
        print(f"{path}  {city.style.family}, {len(city.boxes)} building boxes")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Statistics of datasets side by side (calibration of one source against another)."""
    from ckm_edge.training import statistics

    labels = args.labels or [Path(d).name for d in args.datasets]
    if len(labels) != len(args.datasets):
        raise DatasetError(f"{len(labels)} label(s) for {len(args.datasets)} dataset(s)")
    rows = [
        (label, statistics.dataset_statistics(d, args.split, args.limit)) for label, d in zip(labels, args.datasets)
    ]
    paths = statistics.write_report(rows, args.out)
    if args.preview:
        strips = []
        for label, d in zip(labels, args.datasets):
            part = Dataset(d).split(args.split)
            k = min(args.preview, len(part))
            tx = part.transmitters()
            strips.append((f"{label} ({args.split})", part.take(np.arange(k)), None if tx is None else tx[:k]))
        paths["preview"] = preview.save_rows(Path(args.out) / "preview.png", strips)
    print(statistics.markdown(rows))
    print("written: " + ", ".join(str(p) for p in paths.values() if p))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit the procedural generator's parameters to a reference dataset's training statistics."""
    from ckm_edge.training import calibrate, statistics

    reference = calibrate.reference_statistics(args.reference, "train")
    start = time.perf_counter()
    result = calibrate.calibrate(reference, trials=args.trials, tiles=args.tiles, seed=args.seed)
    rows = [("ray-traced (train)", result.reference), ("procedural v1", result.baseline),
            ("procedural calibrated", result.calibrated)]
    out = Path(args.out)
    paths = statistics.write_report(rows, out)
    table = statistics.markdown(rows)
    keys = ("gain_histogram_l1", "building_fraction", "no_path_fraction", "falloff_mean_abs_db", "total")
    table += "\n| mismatch to the reference | v1 | calibrated |\n|---|---|---|\n" + "".join(
        f"| {k} | {result.baseline_mismatch[k]:.3f} | {result.mismatch[k]:.3f} |\n" for k in keys
    )
    table += "\nCalibrated parameters: " + ", ".join(f"`{k}={v}`" for k, v in result.params.items()) + "\n"
    (out / "stats.md").write_text(table)
    (out / "calibration.json").write_text(json.dumps({
        "reference": str(args.reference), "params": result.params, "mismatch": result.mismatch,
        "baseline_mismatch": result.baseline_mismatch, "trials": result.trials, "tiles_per_trial": args.tiles,
        "seed": args.seed, "seconds": round(time.perf_counter() - start, 1),
    }, indent=2) + "\n")
    if args.save_preset:
        preset_path = calibrate.save_preset(result, args.save_preset, str(args.reference), args.presets)
        print(f"preset {args.save_preset!r} written to {preset_path}")
    if args.preview:
        ref = Dataset(args.reference).split("train")
        k = min(args.preview, len(ref))
        pix_v1, tx_v1 = procedural.generate_region(procedural.ProceduralConfig(), "eval", 0, k, seed=args.seed)
        pix_c, tx_c = procedural.generate_region(result.config, "eval", 0, k, seed=args.seed)
        paths["preview"] = preview.save_rows(out / "preview.png", [
            ("ray-traced (Sionna RT, training scenes)", ref.take(np.arange(k)), ref.transmitters()[:k]),
            ("procedural v1 (defaults)", pix_v1, tx_v1),
            ("procedural, calibrated preset", pix_c, tx_c),
        ])
    print(table)
    print("written: " + ", ".join(str(p) for p in paths.values() if p))
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
    gen.add_argument("--preset", default="v1", help="procedural parameter set (v1 = defaults; see `ckm-data calibrate`)")
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

    tile = sub.add_parser("tile", help="one held-out tile as npz (for ckm-edge construct --truth): procedural, or "
                                       "from a dataset (--from)")
    tile.add_argument("--out", required=True, type=Path)
    tile.add_argument("--from", dest="source", type=Path, metavar="DATASET",
                      help="take the tile from this dataset (e.g. datasets/sionna-rt-small: ray-traced held-out cities)")
    tile.add_argument("--split", default="eval", choices=["train", "eval"], help="with --from: the split")
    tile.add_argument("--region", type=int, default=0)
    tile.add_argument("--index", type=int, default=0)
    tile.add_argument("--seed", type=int, default=0)
    tile.add_argument("--tile-size", type=_positive_int, default=128)
    tile.add_argument("--preset", default="v1", help="procedural parameter set")
    tile.set_defaults(func=cmd_tile)

    rt = sub.add_parser(
        "raytrace",
        help="ray-traced dataset from Sionna RT scenes (extra `raytrace`); resumable, --shard i/n",
        description="Ray-trace CKM tiles from city scenes. Scenes are Sionna built-ins (munich, etoile; "
        "florence and san_francisco are held out: eval only) or Mitsuba XML files. Every finished "
        "tile is kept under OUT/.raytrace; rerun the same command to resume; the job that finds the "
        "plan complete writes the dataset.",
    )
    rt.add_argument("--out", type=Path, help="dataset directory (required unless --check)")
    rt.add_argument("--train", nargs="*", default=[], metavar="SCENE", help="scenes for the train split")
    rt.add_argument("--eval", nargs="*", default=[], metavar="SCENE", help="scenes for the eval split")
    rt.add_argument("--tiles-per-scene", type=_positive_int, default=8)
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: build tiles i, i+n, ...")
    rt.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    rt.add_argument("--limit", type=_positive_int, help="stop after this many new tiles")
    rt.add_argument("--tile-size", type=_positive_int, default=128)
    rt.add_argument("--cell-size", type=float, default=2.0, help="metres per cell")
    rt.add_argument("--carrier-hz", type=float, default=3.5e9)
    rt.add_argument("--rx-height", type=float, default=1.5, help="receiver height above ground, m")
    rt.add_argument("--bs-height", type=_height_range, default=(10.0, 30.0), help="BS height above ground, m: H or LO:HI")
    rt.add_argument("--bs-offset", type=float, default=1.25, help="max BS offset from the tile centre, in tile half-widths")
    rt.add_argument("--max-depth", type=int, default=3, help="interactions per path")
    rt.add_argument("--samples-per-src", type=_positive_int, default=100_000, help="rays shot per transmitter")
    rt.add_argument("--diffraction", action=argparse.BooleanOptionalAction, default=True)
    rt.add_argument("--edge-diffraction", action=argparse.BooleanOptionalAction, default=False)
    rt.add_argument("--backfill-surface", action="store_true",
                    help="give the build's finished tiles that lack them their surface heights (roofs and ground; "
                         "no paths are solved)")
    rt.add_argument("--no-assemble", action="store_true",
                    help="keep the finished tiles as parts when the plan completes (snapshot subsets of them)")
    rt.add_argument("--check", action="store_true", help="only check that the backend (sionna-rt, LLVM) is usable")
    rt.add_argument("--snapshot", type=Path, metavar="DEST",
                    help="write the tiles OUT's build has finished so far as a dataset in DEST (a new directory) "
                         "and stop; the build is left as it is")
    rt.add_argument("--exclude", type=Path, metavar="FILE",
                    help="tiles another machine's build of the same plan has finished, one name per line "
                         "(`ls BUILD/.raytrace/tiles`): not traced here; with --snapshot, tiles left out of the snapshot "
                         "(held back for validation)")
    rt.add_argument("--merge", type=Path, metavar="OTHER",
                    help="add the finished tiles of OTHER (another machine's build of the same plan) to OUT's "
                         "build and stop; assembles the dataset when the plan is then complete")
    rt.set_defaults(func=cmd_raytrace)

    st = sub.add_parser("stats", help="gain histogram, building fraction and fall-off of datasets side by side")
    st.add_argument("datasets", nargs="+", type=Path)
    st.add_argument("--labels", nargs="*", help="one label per dataset (default: directory names)")
    st.add_argument("--split", default="train")
    st.add_argument("--limit", type=_positive_int, help="use the first N tiles of each")
    st.add_argument("--out", type=Path, required=True, help="directory for stats.json / stats.md / stats.png")
    st.add_argument("--preview", type=int, default=0, metavar="N", help="also preview.png: the first N tiles of each, one row per dataset")
    st.set_defaults(func=cmd_stats)

    cal = sub.add_parser("calibrate", help="fit the procedural generator to a reference dataset's training split")
    cal.add_argument("reference", type=Path, help="dataset whose train split is the reference (e.g. ray-traced)")
    cal.add_argument("--out", type=Path, required=True, help="report directory (stats.md/json/png, calibration.json)")
    cal.add_argument("--trials", type=_positive_int, default=48)
    cal.add_argument("--tiles", type=_positive_int, default=48, help="procedural tiles per trial")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--save-preset", metavar="NAME", help="record the result as a procedural preset")
    cal.add_argument("--presets", type=Path, default=None, metavar="FILE",
                     help="the presets file --save-preset writes (default: $CKM_EDGE_PRESETS, else "
                          "~/.local/share/ckm-edge/procedural_presets.json; read by every command)")
    cal.add_argument("--preview", type=int, default=0, metavar="N", help="preview.png with N tiles per source")
    cal.set_defaults(func=cmd_calibrate)

    cit = sub.add_parser("cities", help="generated 3D city scenes (Mitsuba XML) to ray-trace as training regions")
    cit.add_argument("--out", type=Path, required=True, help="one folder per city: <name>/<name>.xml, meshes/, city.json")
    cit.add_argument("--count", type=_positive_int, default=24)
    cit.add_argument("--start", type=int, default=0, help="index of the first city (cities are a function of seed and index)")
    cit.add_argument("--seed", type=int, default=0)
    cit.add_argument("--extent", type=float, default=640.0, help="side of each city's square, metres")
    cit.set_defaults(func=cmd_cities)

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
    except (DatasetError, ckmimagenet.CKMImageNetError, codec.CodecError, ValueError, raytrace.RaytraceError) as e:
        print(f"ckm-data {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
