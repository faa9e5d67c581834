"""Classical interpolation baselines (no learning), the floor every learned method must beat.

    nearest_fill   nearest observed cell (masks, trajectories)
    idw_fill       inverse-distance weighting over the k nearest observed cells
    bicubic_up     bicubic upsampling (super-resolution)
    jtqr_fill      clipping-aware fill: saturated gain cells are re-estimated from unsaturated
                   neighbours but kept beyond the bound they hit (no path below a bound under
                   the weakest real path); quantized AoA passes through
All act on pixel maps (B, 2, H, W) and return pixel maps clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ckm_edge.runtime import codec, operators


def nearest_fill(y: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """y (B, C, H, W) known where observed (B, H, W) or (H, W); others take the nearest known value."""
    observed = np.broadcast_to(observed, (y.shape[0],) + y.shape[-2:])
    out = np.empty_like(y)
    for b in range(len(y)):
        if not observed[b].any():
            raise ValueError(f"sample {b} has no observed cell to interpolate from")
        _, (ri, ci) = ndimage.distance_transform_edt(~observed[b], return_indices=True)
        out[b] = y[b][:, ri, ci]
    return np.clip(out, 0.0, 1.0)


def idw_fill(y: np.ndarray, observed: np.ndarray, k: int = 8, power: float = 2.0) -> np.ndarray:
    """Inverse-distance weighting of the k nearest observed cells for every unobserved cell."""
    observed = np.broadcast_to(observed, (y.shape[0],) + y.shape[-2:])
    out = y.copy()
    for b in range(len(y)):
        known = np.argwhere(observed[b])
        unknown = np.argwhere(~observed[b])
        if len(known) == 0:
            raise ValueError(f"sample {b} has no observed cell to interpolate from")
        if len(unknown) == 0:
            continue
        dist, idx = cKDTree(known).query(unknown, k=min(k, len(known)))
        dist, idx = dist.reshape(len(unknown), -1), idx.reshape(len(unknown), -1)
        w = 1.0 / np.maximum(dist, 1e-6) ** power
        w /= w.sum(axis=1, keepdims=True)
        values = y[b][:, known[:, 0], known[:, 1]]  # (C, K)
        out[b][:, unknown[:, 0], unknown[:, 1]] = (values[:, idx] * w[None]).sum(axis=2)
    return np.clip(out, 0.0, 1.0)


def bicubic_up(y: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic upsampling of cell averages (B, C, h, w) -> (B, C, h*factor, w*factor)."""
    out = ndimage.zoom(y, (1, 1, factor, factor), order=3, mode="nearest", grid_mode=True)
    return np.clip(out, 0.0, 1.0)


def jtqr_fill(y: np.ndarray, low: float = 0.2, high: float = 0.7, k: int = 8) -> np.ndarray:
    """Gain cells at a bound are unknown beyond it: IDW from unsaturated cells, kept past the bound."""
    gain = y[:, :1]
    tol = 1e-3
    at_low, at_high = gain[:, 0] <= low + tol, gain[:, 0] >= high - tol
    building = y[:, 1] < 0.15
    known = ~(at_low | at_high) | building
    filled = idw_fill(gain, known, k=k) if (~known).any() else gain
    fixed = np.where(at_low[:, None], np.minimum(filled, low), np.where(at_high[:, None], np.maximum(filled, high), gain))
    fixed = np.where(building[:, None], 0.0, fixed)
    out = np.clip(np.concatenate([fixed, y[:, 1:]], axis=1), 0.0, 1.0)
    no_path = operators.Truncate(low, high).known_no_path(gain)  # saturated below any real path: the floor
    return out if no_path is None else codec.set_no_path(out, no_path)  # buildings (AoA gap) stay buildings


def reconstruct(op: operators.Operator, y: np.ndarray, shape: tuple[int, ...], method: str = "nearest") -> np.ndarray:
    """The classical reconstruction for an operator: fill masks, upsample, or undo JTQR."""
    if isinstance(op, operators.Mask):
        fill = nearest_fill if method == "nearest" else idw_fill
        return fill(y, op.mask)
    if isinstance(op, operators.Downsample):
        return bicubic_up(y, op.factor)
    if isinstance(op, operators.PerChannel):
        return jtqr_fill(y)
    raise operators.OperatorError(f"no classical reconstruction for operator {op.name!r}")
