"""Reader for the public CKMImageNet dataset, laid out as the paper's reference code expects.

    <root>/CKM_gain_128/{train,eval}/<region>/<name>.png
    <root>/CKM_AoA_128/{train,eval}/<region>_AoA/<name>_AoA.png

Both are 8-bit grey PNGs. The gain PNG is already the codec's gain pixel (dB over [-250, -50]
mapped to [0, 1], buildings 0). The AoA PNG stores the angle theta in degrees over [-180, 180] as
(theta + 200) / 380 with 0 for buildings (paper IV-A); we convert it to the sine encoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ckm_edge.runtime import codec

GAIN_DIR = "CKM_gain_128"
AOA_DIR = "CKM_AoA_128"
AOA_BUILDING_DEG = -200.0
AOA_SPAN_DEG = 380.0


class CKMImageNetError(ValueError):
    """A CKMImageNet tree that does not match the expected layout or pixel format."""


@dataclass(frozen=True)
class Pair:
    split: str
    region: str
    gain_png: Path
    aoa_png: Path


def _read_gray(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode != "L":
                raise CKMImageNetError(f"{path}: expected an 8-bit grey PNG (mode 'L'), got mode {image.mode!r}")
            return np.asarray(image, dtype=np.float64) / 255.0
    except OSError as e:
        raise CKMImageNetError(f"{path}: cannot read PNG: {e}") from e


def find_pairs(root: str | Path, split: str) -> list[Pair]:
    """All (gain, AoA) PNG pairs of a split, sorted; an unmatched file is an error naming it."""
    root = Path(root)
    gain_root, aoa_root = root / GAIN_DIR / split, root / AOA_DIR / split
    for d in (gain_root, aoa_root):
        if not d.is_dir():
            raise CKMImageNetError(f"{d} is missing: not a CKMImageNet tree with split {split!r}")
    pairs = []
    for region_dir in sorted(p for p in gain_root.iterdir() if p.is_dir()):
        aoa_region = aoa_root / f"{region_dir.name}_AoA"
        if not aoa_region.is_dir():
            raise CKMImageNetError(f"region {region_dir} has no AoA directory {aoa_region}")
        gains = {p.stem: p for p in region_dir.glob("*.png")}
        aoas = {p.stem[: -len("_AoA")]: p for p in aoa_region.glob("*_AoA.png")}
        for stem in sorted(gains.keys() - aoas.keys()):
            raise CKMImageNetError(f"{gains[stem]} has no AoA partner {aoa_region / (stem + '_AoA.png')}")
        for stem in sorted(aoas.keys() - gains.keys()):
            raise CKMImageNetError(f"{aoas[stem]} has no gain partner {region_dir / (stem + '.png')}")
        pairs += [Pair(split, region_dir.name, gains[s], aoas[s]) for s in sorted(gains)]
    for aoa_region in sorted(p for p in aoa_root.iterdir() if p.is_dir()):
        if not (gain_root / aoa_region.name.removesuffix("_AoA")).is_dir():
            raise CKMImageNetError(f"AoA directory {aoa_region} has no gain region directory")
    return pairs


def load_pair(pair: Pair) -> np.ndarray:
    """One pair -> codec pixels (2, H, W). Buildings are the AoA PNG's zeros."""
    gain_px = _read_gray(pair.gain_png)
    aoa_px = _read_gray(pair.aoa_png)
    if gain_px.shape != aoa_px.shape:
        raise CKMImageNetError(f"{pair.gain_png} is {gain_px.shape} but {pair.aoa_png} is {aoa_px.shape}")
    building = aoa_px == 0.0
    theta = np.deg2rad(aoa_px * AOA_SPAN_DEG + AOA_BUILDING_DEG)
    gain_db = gain_px * codec.GAIN_DB_SPAN + codec.GAIN_DB_MIN
    return codec.encode(gain_db, np.sin(theta), building)


def iter_tiles(root: str | Path, split: str) -> Iterator[tuple[Pair, np.ndarray]]:
    for pair in find_pairs(root, split):
        yield pair, load_pair(pair)
