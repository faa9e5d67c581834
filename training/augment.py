"""Physically valid augmentation of CKM tiles: the symmetries of the square that keep a map a map.

A tile stores the gain (a scalar field) and sin(theta), theta the azimuth of the strongest path's
arrival direction, counter-clockwise from east (+column) with row 0 = north (runtime.codec,
training.raytrace). With d = (east, north) the unit vector from a cell toward where that path
comes from, sin(theta) is d's north component. Each symmetry of the square moves the cells and
turns d with them:

    transform      cells                    d = (e, n) becomes     sin(theta) becomes
    identity       -                        (e, n)                 sin          kept
    flip_cols      column j -> W-1-j        (-e, n)                sin          kept
    flip_rows      row i -> H-1-i           (e, -n)                -sin         negated
    rot180         both                     (-e, -n)               -sin         negated
    rot90, rot270, transpose, anti-transpose: the north component of the turned d is +-e = +-cos(theta),
                   whose sign sin(theta) does not carry: not representable, refused.

The gain is unchanged by every one. Buildings stay 0 in both channels: the negation acts on the
sine of outdoor cells (pixel p -> 2 * 0.65 - p). The BS position moves with the cells; it may lie
outside the tile (fractional row/column, possibly negative), so it is mapped as a coordinate:
row r -> H - r and column c -> W - c in cell units (cell centres at i + 0.5).
tests/test_augment.py checks the table against geometry: line-of-sight cells, whose AoA points at
the BS, still point at the moved BS after each transform.
"""

from __future__ import annotations

import numpy as np

from ckm_edge.runtime import codec

TRANSFORMS = ("identity", "flip_cols", "flip_rows", "rot180")
NOT_REPRESENTABLE = ("rot90", "rot270", "transpose", "anti_transpose")
_FLIPS = {"identity": (False, False), "flip_cols": (False, True), "flip_rows": (True, False), "rot180": (True, True)}


def apply(pixels: np.ndarray, name: str, tx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """pixels (..., 2, H, W) and optionally tx (..., 3) = (row, column, height) -> both transformed."""
    if name in NOT_REPRESENTABLE:
        raise ValueError(f"{name} turns the arrival direction by 90 degrees: the new sine is +-cos(theta), whose sign "
                         f"a sine map does not carry; valid transforms: {', '.join(TRANSFORMS)}")
    if name not in _FLIPS:
        raise ValueError(f"unknown transform {name!r}; valid: {', '.join(TRANSFORMS)}")
    pixels = np.asarray(pixels)
    if pixels.ndim < 3 or pixels.shape[-3] != 2:
        raise ValueError(f"pixels must be (..., 2, H, W), got {pixels.shape}")
    rows, cols = _FLIPS[name]
    out = pixels
    if rows:
        out = out[..., ::-1, :]
    if cols:
        out = out[..., :, ::-1]
    out = np.array(out, copy=True)
    if rows:  # the north component changes sign: sin(theta) -> -sin(theta) outdoors
        aoa = out[..., 1, :, :]
        outdoor = aoa >= codec.BUILDING_THRESHOLD
        aoa[outdoor] = 2 * codec.AOA_OFFSET - aoa[outdoor]
    if tx is None:
        return out, None
    h, w = pixels.shape[-2:]
    tx = np.array(tx, dtype=np.float32, copy=True)
    if rows:
        tx[..., 0] = h - tx[..., 0]
    if cols:
        tx[..., 1] = w - tx[..., 1]
    return out, tx


def random_transform(rng: np.random.Generator, pixels: np.ndarray, tx: np.ndarray | None = None):
    """One of TRANSFORMS, drawn uniformly, applied to the tile (and its BS position)."""
    return apply(pixels, TRANSFORMS[int(rng.integers(len(TRANSFORMS)))], tx)
