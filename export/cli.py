"""`ckm-export`: from a training checkpoint to a verified model package, and package tools.

    ckm-export package --checkpoint models/prior-small.pt --data data/proc --out packages/ckm-prior/0.1.0
    ckm-export package ... --samplers samplers.json    (default constructions tuned for it: ckm-bench tune --out)
    ckm-export adapter --adapter runs/adapter-site/adapter.pt --base-package models/repository/ckm-prior/1.0.0 \
                       --out models/repository/site-a/1.0.0          (a site adapter as an add-on package)
    ckm-export inspect packages/ckm-prior/0.1.0
    ckm-export verify  packages/ckm-prior/0.1.0 [--trusted-key key.pub]     (exit 1 if bad)
    ckm-export keygen  --out keys/release                                   (writes .key and .pub)
    ckm-export sign    packages/ckm-prior/0.1.0 --key keys/release.key
    ckm-export engines packages/ckm-prior/0.1.0                              (TensorRT, where present)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ckm_edge.runtime import defaults
from ckm_edge.runtime.package import PackageError, load_package, read_public_key


def cmd_package(args) -> int:
    from dataclasses import replace

    from ckm_edge.export import accuracy, builder
    from ckm_edge.runtime.manifest import Accuracy
    from ckm_edge.runtime.recommend import read_section
    from ckm_edge.training.checkpoint import load_model
    from ckm_edge.training.dataset import Dataset

    samplers, tuned = read_section(args.samplers) if args.samplers else (None, None)  # refused before any export
    model, meta = load_model(args.checkpoint)
    if meta["kind"] != "prior":
        raise ValueError(f"{args.checkpoint} holds a {meta['kind']} model; only score priors are packaged")
    data = Dataset(args.data)
    evl_data = Dataset(args.eval_data) if args.eval_data else data
    train, evl = data.split("train"), evl_data.split("eval")
    if not len(train):
        raise ValueError(f"{args.data} has no training tiles to calibrate with (its train split is empty)")
    if evl_data.tile_size != data.tile_size:
        raise ValueError(f"{evl_data.root} holds {evl_data.tile_size}-cell tiles, {args.data} {data.tile_size}-cell ones")
    if args.accuracy_tiles and not len(evl):
        raise ValueError(f"{evl_data.root} has no eval tiles for the accuracy record (give --eval-data, or --accuracy-tiles 0)")
    rng = np.random.default_rng(args.seed)
    calibration = train.take(np.sort(rng.choice(len(train), min(args.calibration_tiles, len(train)), replace=False)))
    cfg = builder.BuildConfig(name=args.name, version=args.version, tile_size=data.tile_size,
                              precisions=tuple(args.precisions), calibration_tiles=args.calibration_tiles, seed=args.seed)
    provenance = {"checkpoint": str(args.checkpoint),
                  "training": {k: meta.get(k) for k in ("data", "data_checksum", "trained_steps", "preset")},
                  "calibration": {"dataset": str(args.data), "split": "train", "tiles": int(len(calibration))}}
    if args.samplers:
        provenance["samplers"] = {"file": str(args.samplers), "tuned_kinds": tuned}
    pkg = builder.build_package(model, meta, args.out, cfg, calibration, provenance,
                                None if samplers is None else {"samplers": samplers})
    if args.accuracy_tiles:
        tiles = evl.take(np.arange(min(args.accuracy_tiles, len(evl))))
        records = {p: accuracy.evaluate(pkg, p, tiles, steps=args.accuracy_steps) for p in pkg.precisions}
        eval_data = {"dataset": str(args.eval_data or args.data), "split": "eval", "regions": evl.regions}
        builder.write_manifest(pkg.root, replace(pkg.manifest, accuracy=Accuracy.from_dict({**records, "eval_data": eval_data})))
    if args.key:
        builder.sign_package(pkg.root, bytes.fromhex(Path(args.key).read_text().strip()))
    pkg = load_package(args.out)
    print(json.dumps({"package": str(pkg.root), "name": pkg.name, "version": pkg.version,
                      "precisions": pkg.precisions, "accuracy": pkg.accuracy().to_dict()}, indent=2))
    return 0


def cmd_adapter(args) -> int:
    from ckm_edge.export import builder
    from ckm_edge.export.adapter import build_adapter_package
    from ckm_edge.training.adapter import load_adapter

    delta, lam, meta = load_adapter(args.adapter)
    base = load_package(args.base_package)
    calibration = None
    if "int8" in args.precisions:
        if not args.data:
            raise ValueError("INT8 needs calibration maps: give --data (the site's dataset)")
        from ckm_edge.training.dataset import Dataset

        split = Dataset(args.data).split("train")
        rng = np.random.default_rng(args.seed)
        calibration = split.take(np.sort(rng.choice(len(split), min(args.calibration_tiles, len(split)), replace=False)))
    cfg = builder.BuildConfig(name=args.name or args.out.parent.name, version=args.version or args.out.name,
                              tile_size=base.tile_size, precisions=tuple(args.precisions),
                              calibration_tiles=args.calibration_tiles, seed=args.seed)
    pkg = build_adapter_package(delta, lam, dict(meta, file=str(args.adapter)), base, args.out, cfg, calibration)
    if args.key:
        builder.sign_package(pkg.root, bytes.fromhex(Path(args.key).read_text().strip()))
    print(json.dumps({"package": str(pkg.root), "name": pkg.name, "version": pkg.version, "precisions": pkg.precisions,
                      "adapts": pkg.manifest.adapter.base.to_dict(), "lambda": pkg.manifest.adapter.lam.to_dict()}, indent=2))
    return 0


def _trusted(args) -> list[bytes] | None:
    return [read_public_key(k) for k in args.trusted_key] if args.trusted_key else None


def cmd_inspect(args) -> int:
    pkg = load_package(args.package, _trusted(args), verify_files=False)
    m = pkg.manifest
    sizes = {p: sum(m.files[f].bytes for f in m.graphs[p].values()) for p in pkg.precisions}
    section = lambda s: None if s is None else s.to_dict()
    print(json.dumps({
        "name": pkg.name, "version": pkg.version, "tile_size": pkg.tile_size, "channels": list(m.channels),
        "schedule": m.schedule, "precisions": pkg.precisions, "bytes_per_precision": sizes,
        "saved_tensors": None if m.network is None else m.network.saved_tensors, "exporter": section(m.exporter),
        "accuracy": pkg.accuracy().to_dict(), "provenance": section(m.provenance), "signed": (pkg.root / "manifest.sig").is_file(),
    }, indent=2))
    return 0


def cmd_verify(args) -> int:
    try:
        pkg = load_package(args.package, _trusted(args))
    except PackageError as e:
        print(f"INVALID: {e}", file=sys.stderr)
        return 1
    signed = f", signature verified with key {pkg.signed_by[:16]}..." if pkg.signed_by else ""
    print(f"OK: {pkg.name} {pkg.version}, {len(pkg.manifest.files)} files verified{signed}")
    return 0


def cmd_keygen(args) -> int:
    from ckm_edge.export.builder import generate_keypair

    private, public = generate_keypair()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = out.with_suffix(".key")
    key.write_text(private.hex() + "\n")
    key.chmod(0o600)
    out.with_suffix(".pub").write_text(public.hex() + "\n")
    print(f"wrote {key} (keep it secret) and {out.with_suffix('.pub')}")
    return 0


def cmd_sign(args) -> int:
    from ckm_edge.export.builder import sign_package

    load_package(args.package)  # never sign a package whose files do not verify
    sign_package(Path(args.package), bytes.fromhex(Path(args.key).read_text().strip()))
    print(f"signed {args.package}")
    return 0


def cmd_engines(args) -> int:
    from ckm_edge.runtime import tensorrt as tensorrt_build

    pkg = load_package(args.package)
    reason = tensorrt_build.unavailable_reason()
    if reason:
        print(f"TensorRT engines not built: {reason}", file=sys.stderr)
        return 3
    for precision in pkg.precisions:
        for path in tensorrt_build.build_engines(pkg, precision, max_batch=args.max_batch):
            print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckm-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("package", help="checkpoint -> verified model package")
    p.add_argument("--checkpoint", required=True, type=Path, help="slim model file or training checkpoint")
    p.add_argument("--data", required=True, type=Path, help="dataset: train split calibrates INT8, eval split measures accuracy")
    p.add_argument("--eval-data", type=Path, help="take the accuracy record's eval split from this dataset instead "
                                                  "(e.g. ray-traced held-out cities; --data then only calibrates)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--name", default="ckm-prior")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--precisions", nargs="+", default=list(defaults.PRECISIONS), choices=defaults.PRECISIONS)
    p.add_argument("--calibration-tiles", type=int, default=32)
    p.add_argument("--accuracy-tiles", type=int, default=4, help="eval tiles for the accuracy record (0 = skip)")
    p.add_argument("--accuracy-steps", type=int, default=50)
    p.add_argument("--key", type=Path, help="sign with this Ed25519 private key (hex file from keygen)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samplers", type=Path, help="default constructions measured for this prior (`ckm-bench tune --out`); "
                                                 "kinds it leaves out keep the runtime's built-in ones")
    p.set_defaults(func=cmd_package)
    a = sub.add_parser("adapter", help="site adapter file -> add-on package naming its foundation package")
    a.add_argument("--adapter", required=True, type=Path, help="adapter.pt from `ckm-train adapter`")
    a.add_argument("--base-package", required=True, type=Path)
    a.add_argument("--out", required=True, type=Path, help="<repository>/<name>/<version>")
    a.add_argument("--name", default=None, help="default: the --out parent directory's name")
    a.add_argument("--version", default=None, help="default: the --out directory's name")
    a.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=defaults.PRECISIONS)
    a.add_argument("--data", type=Path, default=None, help="site dataset (train split calibrates INT8)")
    a.add_argument("--calibration-tiles", type=int, default=32)
    a.add_argument("--key", type=Path, help="sign with this Ed25519 private key (hex file from keygen)")
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=cmd_adapter)
    for name, func, helptext in (("inspect", cmd_inspect, "print a package's manifest summary"),
                                 ("verify", cmd_verify, "check checksums (and signature); exit 1 if bad")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("package", type=Path)
        q.add_argument("--trusted-key", action="append", type=Path, help="public key file (hex); repeatable")
        q.set_defaults(func=func)
    k = sub.add_parser("keygen", help="make an Ed25519 key pair for signing packages")
    k.add_argument("--out", required=True, type=Path)
    k.set_defaults(func=cmd_keygen)
    s = sub.add_parser("sign", help="sign a package's manifest")
    s.add_argument("package", type=Path)
    s.add_argument("--key", required=True, type=Path)
    s.set_defaults(func=cmd_sign)
    e = sub.add_parser("engines", help="build TensorRT engines next to the package (needs TensorRT)")
    e.add_argument("package", type=Path)
    e.add_argument("--max-batch", type=int, default=8)
    e.set_defaults(func=cmd_engines)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PackageError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"ckm-export {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
