"""Site condition maps: what a base station knows of its site, as input channels of the prior.

    cond = site_condition(building, bs, (128, 128))   # (B, CHANNELS, H, W) float32

A site-aware prior (issue 16) takes these channels next to the noisy map; the same network serves
the paper's unconditional setting when they are all zero (it is trained with condition dropout).
Torch-free: the edge runtime builds the same maps from a request's Site as training does from a
tile. Channels:

0. building: 1 on building cells (0 when unknown)
1. building known: 1 everywhere when channel 0 is given, else 0
2. BS proximity: 1 - log10(1 + d) / log10(1 + 4 H), clipped to [0, 1], with d the distance in
   cells from each cell centre (i + .5, j + .5) to the base station at continuous (row, col)
   (training.dataset's convention). It is defined for a base station outside the tile too: the
   whole field then stays below 1 and its gradient points at the station.
3. BS known: 1 everywhere when channel 2 is given, else 0
4. BS height: its height above ground in metres / 50, everywhere (0 when unknown)
"""

from __future__ import annotations

import numpy as np

CHANNELS = 5
# Named in a site-aware package's manifest ("condition": {"encoding": ...}): a runtime builds the
# condition only for packages whose encoding it implements, so a change of channels or scales
# must come with a new name.
ENCODING = "ckm-site/1"
HEIGHT_SCALE_M = 50.0


class ConditionError(ValueError):
    pass


def bs_proximity(bs_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(B, 2) continuous (row, col) -> (B, H, W) proximity field in [0, 1] (channel 2)."""
    h, w = shape
    bs_rc = np.asarray(bs_rc, np.float64).reshape(-1, 2)
    rows = np.arange(h)[None, :, None] + 0.5
    cols = np.arange(w)[None, None, :] + 0.5
    d = np.hypot(rows - bs_rc[:, 0, None, None], cols - bs_rc[:, 1, None, None])
    return np.clip(1.0 - np.log10(1.0 + d) / np.log10(1.0 + 4.0 * max(h, w)), 0.0, 1.0).astype(np.float32)


def site_condition(building: np.ndarray | None, bs: np.ndarray | None, shape: tuple[int, int],
                   batch: int | None = None) -> np.ndarray:
    """Condition channels for a batch. `building`: (B, H, W) or (H, W) bool, or None (unknown);
    `bs`: (B, 3) or (3,) row, col (cells), height (m), or None (unknown); rows of `bs` that hold
    NaN are unknown too (mixed batches)."""
    h, w = shape
    if building is not None:
        building = np.asarray(building, bool)
        if building.shape[-2:] != (h, w) or building.ndim not in (2, 3):
            raise ConditionError(f"building map has shape {building.shape}, the maps are {shape}")
        building = building.reshape(-1, h, w)
    if bs is not None:
        bs = np.asarray(bs, np.float64)
        if bs.shape[-1] != 3 or bs.ndim not in (1, 2):
            raise ConditionError(f"base station must be (row, col, height) per map, got shape {bs.shape}")
        bs = bs.reshape(-1, 3)
    b = batch or max(1, 0 if building is None else len(building), 0 if bs is None else len(bs))
    cond = np.zeros((b, CHANNELS, h, w), np.float32)
    if building is not None:
        if len(building) not in (1, b):
            raise ConditionError(f"{len(building)} building maps for a batch of {b}")
        cond[:, 0] = building
        cond[:, 1] = 1.0
    if bs is not None:
        if len(bs) not in (1, b):
            raise ConditionError(f"{len(bs)} base stations for a batch of {b}")
        bs = np.broadcast_to(bs, (b, 3))
        known = np.isfinite(bs).all(axis=1)
        if known.any():
            cond[known, 2] = bs_proximity(bs[known, :2], shape)
            cond[known, 3] = 1.0
            cond[known, 4] = (bs[known, 2] / HEIGHT_SCALE_M)[:, None, None]
    return cond


def dropout(cond: np.ndarray, rng: np.random.Generator, p_building: float, p_bs: float) -> np.ndarray:
    """Condition dropout for training: each map forgets its building layout with probability
    p_building and its base station with probability p_bs, independently (so one network learns
    the unconditional, building-only, BS-only and full settings)."""
    out = cond.copy()
    b = len(cond)
    out[rng.random(b) < p_building, 0:2] = 0.0
    out[rng.random(b) < p_bs, 2:5] = 0.0
    return out
