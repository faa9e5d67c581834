"""The smoothest map consistent with an observation: a classical estimate from any operator.

    x = smooth_fill(op, y, shape, site=None)

solves, per sample and channel,

    min_x  sum over neighbouring cells (i, j) of (x_i - x_j)^2     subject to  x in C(y)

where C(y) is what the observation allows (`op.prox(., y, 0)`: observed cells fixed, block means
kept, a saturated gain at or beyond its bound, an AoA inside its sector; a gain saturated below
the weakest real path is no path: the codec's no-path value) and, with a site map,
building cells are 0 and take no part in the neighbourhood (gain is not interpolated through a
building). For a mask this is harmonic (membrane) interpolation — linear across a box —, for
super-resolution the smoothest map with the observed block means. It is the warm start of the
data-consistent samplers (CCDF: start the reverse diffusion part-way from a noised estimate) and a
classical baseline in its own right. Solved by accelerated projected gradient (FISTA) on the
graph Laplacian, started from a pull-push fill of the cells the observation pins down (for
sparse observations, such as drive tests, plain iteration from a constant needs thousands of
steps to carry values across the gaps); numpy only.
"""

from __future__ import annotations

import numpy as np

from ckm_edge.runtime import codec
from ckm_edge.runtime.operators import Operator
from ckm_edge.runtime.site import Site

ITERATIVE_PROX_ITERS = 20  # FISTA iterations for an operator whose projection is an iterative solve


def _laplacian(x: np.ndarray, wr: np.ndarray, wc: np.ndarray) -> np.ndarray:
    """L x on the 4-neighbour grid with edge weights wr (rows i, i+1) and wc (cols j, j+1), each
    (B, 1, H-1, W) / (B, 1, H, W-1) in {0, 1}: the gradient of 1/2 sum w (x_i - x_j)^2."""
    out = np.zeros_like(x)
    dr = wr * (x[..., 1:, :] - x[..., :-1, :])
    dc = wc * (x[..., :, 1:] - x[..., :, :-1])
    out[..., :-1, :] -= dr
    out[..., 1:, :] += dr
    out[..., :, :-1] -= dc
    out[..., :, 1:] += dc
    return out


def _pull_push(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Scattered-data fill (Gortler et al.'s pull-push): average the known cells (weights 1) down
    a pyramid of 2 x 2 blocks, then fill each level's unknown cells from the coarser one."""
    if min(values.shape[-2:]) < 2 or values.shape[-1] % 2 or values.shape[-2] % 2:
        return values
    b, c, h, w = values.shape
    wsum = weights.reshape(b, c, h // 2, 2, w // 2, 2).sum(axis=(3, 5))
    vsum = (values * weights).reshape(b, c, h // 2, 2, w // 2, 2).sum(axis=(3, 5))
    coarse_w = np.minimum(wsum, 1.0)
    coarse = _pull_push(np.where(wsum > 0, vsum / np.maximum(wsum, 1e-12), 0.0), coarse_w)
    up = np.repeat(np.repeat(coarse, 2, axis=2), 2, axis=3)
    return weights * values + (1.0 - weights) * up


def smooth_fill(op: Operator, y: np.ndarray, shape: tuple[int, ...], site: Site | None = None,
                iters: int = 300, tol: float = 1e-5, site_values: bool = True) -> np.ndarray:
    """The estimate above for maps of `shape` (B, C, H, W); stops when no cell moves more than tol.
    With `site_values` False the site shapes the neighbourhood only (nothing interpolated through a
    building) and the values are not moved into what it allows: a fill of something other than a
    map, e.g. residuals shifted into [0, 1]."""
    b = shape[0]
    if (site is None or site.building is None) and op.known_buildings() is not None:  # JTQR's quantizer knows the layout (eq. 31)
        site = Site(op.known_buildings())
    if site is not None:
        outdoor = site.outdoor(shape)[:, None].astype(np.float32)  # (B, 1, H, W)
    else:
        outdoor = np.ones((b, 1) + tuple(shape[-2:]), np.float32)
    wr = outdoor[..., 1:, :] * outdoor[..., :-1, :]
    wc = outdoor[..., :, 1:] * outdoor[..., :, :-1]

    no_path = op.known_no_path(y)  # cells proven to have no path: pinned to the codec's no-path value

    def project(v):
        v = op.prox(v, y, 0.0)
        v = v if site is None or not site_values else site.project(v)
        # the layout is `outdoor`'s: the projections of the all-zero map code every cell as a building
        return v if no_path is None else codec.set_no_path(v, no_path, outdoor[:, 0] > 0)

    lo, hi = project(np.zeros(shape, np.float32)), project(np.ones(shape, np.float32))
    if op.box_feasible:  # per cell an interval (the site's too): the projection is a clip, ~10x cheaper
        def project(v):
            return np.clip(v, lo, hi)

    pinned = (np.abs(hi - lo) < 1e-6) & (outdoor > 0)  # cells the observation fixes, whatever the map
    if pinned.any():
        x = project(_pull_push(np.where(pinned, lo, 0.0), pinned.astype(np.float64)).astype(np.float32))
    else:
        x = project(np.full(shape, 0.5, np.float32))
    if op.iterative_prox:  # each projection is itself a solve: 300 of them took 243 s on SR x2 of a masked map
        iters = min(iters, ITERATIVE_PROX_ITERS)
    v, t = x, 1.0
    step = 1.0 / 8.0  # 1 / the Laplacian's largest eigenvalue on a 4-neighbour grid
    for _ in range(iters):
        x_new = project(v - step * _laplacian(v, wr, wc))
        t_new = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        v = x_new + ((t - 1.0) / t_new) * (x_new - x)
        moved = float(np.abs(x_new - x).max())
        x, t = x_new, t_new
        if moved < tol:
            break
    return x.astype(np.float32)
