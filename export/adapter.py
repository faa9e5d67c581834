"""A trained site adapter (training/adapter.py) as an add-on package that names its foundation.

The package's graphs compute d = s_proxy - s_reference (exported, checked against PyTorch and
turned into precision variants exactly like a prior's), and its manifest carries the "adapter"
section: the base package by name, version and manifest SHA-256, and the lambda(t) table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ckm_edge.export.builder import BuildConfig, build_package
from ckm_edge.runtime.adapter import check_base, manifest_sha256
from ckm_edge.runtime.package import Package, PackageError


def build_adapter_package(delta, lam, meta: dict, base: Package, out: Path, cfg: BuildConfig,
                          calibration: np.ndarray | None = None) -> Package:
    """Export the adapter `delta` (a ScoreDifference) for the foundation package `base`."""
    ref = meta.get("base", {})
    if (ref.get("name"), ref.get("version")) != (base.name, base.version):
        raise PackageError(f"the adapter was trained for {ref.get('name')} {ref.get('version')}, "
                           f"not {base.name} {base.version}")
    if ref.get("manifest_sha256") not in (None, manifest_sha256(base)):
        raise PackageError(f"the adapter was trained for another build of {base.name} {base.version} "
                           "(manifest SHA-256 differs)")
    if json.loads(json.dumps(meta["schedule"])) != base.manifest.schedule:
        raise PackageError("the adapter's noise schedule differs from its base package's")
    if cfg.tile_size != base.tile_size:
        raise PackageError(f"tile size {cfg.tile_size} differs from the base package's {base.tile_size}")
    section = {"adapter": {
        "base": {"name": base.name, "version": base.version, "manifest_sha256": manifest_sha256(base)},
        "lambda": lam.to_dict(),
        "site": meta.get("site", {}),
        "training": meta.get("training", {}),
        "proxy_unet": meta["unet"], "reference_unet": meta["unet"],
    }}
    provenance = {"adapter_file": str(meta.get("file", "")), "training": meta.get("training", {})}
    pkg = build_package(delta, meta, out, cfg, calibration, provenance, sections=section)
    check_base(pkg, base)  # what the edge will check, checked once here
    return pkg
