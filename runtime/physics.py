"""What the geometry of a site alone says about its radio map (numpy only; the edge and training
compute the same maps).

    vis = los_visibility(building, bs)                 # (H, W) in [0, 1]
    sine = direct_aoa_sine(bs, (H, W))                 # (H, W), the AoA channel's convention
    gain = free_space_gain_db(bs, (H, W), cell_size_m=2.0, carrier_hz=3.5e9)

Positions are the tiles' convention (training.dataset): cell (i, j) spans rows [i, i + 1) and
columns [j, j + 1), so its centre is (i + .5, j + .5); a base station `bs` is (row, col, height
above ground in metres) and may stand outside the tile. Row 0 is north (+y), columns run east (+x).

**Line of sight** (`los_visibility`) is computed from a shadow map around the station: every
building cell on the edge of a building (only those can be a ray's first obstacle) covers an
interval of azimuths (its square, its outer sides 0.05 cells in so that rays grazing a building pass),
binned at ANGLE_BINS per turn, with its distance and the steepest elevation of its roof seen from
the antenna; within a bin the steepest roof closer than a cell decides whether the ray to that
cell is blocked. Over a 2D layout (buildings of unknown height) every roof stops the ray; given
building heights (metres, 0 outdoors), a receiver `rx_height_m` above ground is seen when the ray
passes above every roof on the way (a station above the roofs sees over them). Each cell is
looked at along three rays across its width, so shadow edges are soft (0, 1/3, 2/3, 1). Outside
the tile nothing is known, so a ray is taken to be clear there. It agrees with a brute-force ray
march on > 98.5 % of cells (tests/test_physics.py) and costs a few milliseconds per 128 x 128 map
on a CPU core (`ckm-bench physics`).

**Direct-path angle of arrival** (`direct_aoa_sine`): the sine of the azimuth, counter-clockwise
from east, of the direction from each cell towards the base station: the arrival direction of the
line-of-sight path, in the AoA channel's convention (codec.CHANNELS: the sine is the direction's
north component).

**Free-space gain** (`free_space_gain_db`): -20 log10(4 pi d / lambda) over the 3D distance from
the antenna to a receiver `rx_height_m` above each cell centre (at least 1 m): the line-of-sight
path's gain, which the traced gain approaches in line-of-sight cells.
"""

from __future__ import annotations

import math

import numpy as np

SPEED_OF_LIGHT = 299_792_458.0
RX_HEIGHT_M = 1.5


class GeometryError(ValueError):
    pass


def _check_bs(bs: np.ndarray) -> np.ndarray:
    bs = np.asarray(bs, np.float64).reshape(-1)
    if bs.shape != (3,) or not np.isfinite(bs).all():
        raise GeometryError(f"base station must be finite (row, col, height_m), got {bs.tolist()}")
    return bs


def _offsets(bs: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (row, col) offsets (H, W) of each cell centre from the base station."""
    h, w = shape
    dr = (np.arange(h, dtype=np.float64) + 0.5 - bs[0])[:, None] * np.ones((1, w))
    dc = (np.arange(w, dtype=np.float64) + 0.5 - bs[1])[None, :] * np.ones((h, 1))
    return dr, dc


def direct_aoa_sine(bs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32: sin of the azimuth from each cell towards the base station (0 at the station)."""
    bs = _check_bs(bs)
    dr, dc = _offsets(bs, shape)
    dist = np.hypot(dr, dc)
    # towards the station: (-dr, -dc) in (row, col); north is -row, so the sine is dr / dist
    return np.where(dist > 1e-9, dr / np.maximum(dist, 1e-9), 0.0).astype(np.float32)


def free_space_gain_db(bs: np.ndarray, shape: tuple[int, int], *, cell_size_m: float, carrier_hz: float,
                       rx_height_m: float = RX_HEIGHT_M) -> np.ndarray:
    """(H, W) float32: free-space gain in dB over the 3D distance from the antenna to each receiver."""
    bs = _check_bs(bs)
    if not (cell_size_m > 0 and carrier_hz > 0):
        raise GeometryError(f"cell_size_m and carrier_hz must be positive, got {cell_size_m}, {carrier_hz}")
    dr, dc = _offsets(bs, shape)
    d = np.sqrt((dr**2 + dc**2) * cell_size_m**2 + (bs[2] - rx_height_m) ** 2)
    wavelength = SPEED_OF_LIGHT / carrier_hz
    return (-20.0 * np.log10(4.0 * math.pi * np.maximum(d, 1.0) / wavelength)).astype(np.float32)


ANGLE_BINS = 2048  # angular resolution of the shadow map: 3.1 mrad, 0.4 cells at 128 cells' distance
_SHRINK = 0.45  # a building's outer sides sit 0.05 cells in: rays grazing a building's edge pass
_FAR_SLOPE = 1e3  # the slope of a building of unknown height: above every ray


def los_visibility(building: np.ndarray, bs: np.ndarray, *, heights: np.ndarray | None = None,
                   cell_size_m: float = 2.0, rx_height_m: float = RX_HEIGHT_M) -> np.ndarray:
    """(H, W) float32 line-of-sight visibility from the base station over the building layout.

    `building`: (H, W) bool. `heights`: optional (H, W) building heights in metres (0 outdoors);
    without them buildings stop every ray. Each cell is looked at along three rays across its
    width, so the value is 0, 1/3, 2/3 or 1 (soft at shadow edges). Building cells are 0.
    """
    building = np.asarray(building, bool)
    if building.ndim != 2:
        raise GeometryError(f"building layout must be (H, W), got shape {building.shape}")
    bs = _check_bs(bs)
    h, w = building.shape
    if heights is not None:
        heights = np.asarray(heights, np.float64)
        if heights.shape != building.shape or not np.isfinite(heights).all():
            raise GeometryError(f"building heights must be finite and shaped like the layout {building.shape}")
    occluders = _occluders(building, heights, bs, cell_size_m)
    dr, dc = _offsets(bs, (h, w))
    dist = np.hypot(dr, dc).ravel()
    angle = np.arctan2(dr, dc).ravel()
    target = (rx_height_m - bs[2]) / np.maximum(dist * cell_size_m, 1e-3)  # slope to each receiver
    spread = 0.35 / np.maximum(dist, 0.5)  # a third of the cell's angular width either side
    seen = np.zeros(h * w)
    for offset in (-spread, 0.0, spread):
        seen += target >= _horizon(occluders, angle + offset, dist)
    seen *= ~building.ravel()
    return (seen / 3.0).reshape(h, w).astype(np.float32)


def _occluders(building: np.ndarray, heights: np.ndarray | None, bs: np.ndarray, cell_size_m: float):
    """The building cells that can stop a ray, as angular intervals: per angle bin they cover, its
    distance from the station (cells) and elevation slope seen from the antenna, sorted by (bin,
    distance), with the running maximum of the slope within each bin."""
    h, w = building.shape
    # only cells on the edge of a building (or of a height step) can be a ray's first obstacle
    if heights is None:
        level = np.where(building, 1.0, 0.0)
    else:
        level = np.where(building, np.maximum(heights, 1e-3), 0.0)
    pad = np.pad(level, 1, mode="constant", constant_values=-1.0)
    edge = building & ((pad[:-2, 1:-1] != level) | (pad[2:, 1:-1] != level) | (pad[1:-1, :-2] != level)
                       | (pad[1:-1, 2:] != level))
    i, j = np.nonzero(edge)
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    if i.size == 0:
        return empty
    cr, cc = i + 0.5 - bs[0], j + 0.5 - bs[1]
    # a side shared with another building cell is not shrunk: a wall of cells has no gaps
    bpad = np.pad(building, 1)
    side = lambda di, dj: np.where(bpad[i + 1 + di, j + 1 + dj], 0.5, _SHRINK)  # noqa: E731
    up, down, left, right = side(-1, 0), side(1, 0), side(0, -1), side(0, 1)
    corners_r = cr[:, None] + np.stack([-up, -up, down, down], 1)
    corners_c = cc[:, None] + np.stack([-left, right, -left, right], 1)
    centre = np.arctan2(cr, cc)
    rel = np.angle(np.exp(1j * (np.arctan2(corners_r, corners_c) - centre[:, None])))  # in (-pi, pi]
    lo, hi = centre + rel.min(1), centre + rel.max(1)
    reach = np.hypot(corners_r, corners_c)
    near, far = reach.min(1), reach.max(1)
    inside = (np.abs(cr) < _SHRINK) & (np.abs(cc) < _SHRINK)  # the station on a building cell: ignore it
    lo, hi, near, far = lo[~inside], hi[~inside], near[~inside], far[~inside]
    if heights is None:
        slope = np.full(near.shape, _FAR_SLOPE)
    else:
        # the roof's steepest elevation: at its near edge when above the antenna, at its far edge below it
        rise = heights[i, j][~inside] - bs[2]
        slope = np.maximum(rise / np.maximum(near * cell_size_m, 1e-3), rise / np.maximum(far * cell_size_m, 1e-3))
        slope = np.minimum(slope, _FAR_SLOPE)
    width = 2 * np.pi / ANGLE_BINS
    b_lo = np.floor((lo + np.pi) / width).astype(np.int64)
    b_hi = np.floor((hi + np.pi) / width).astype(np.int64)
    count = b_hi - b_lo + 1
    owner = np.repeat(np.arange(len(count)), count)
    bins = (b_lo[owner] + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)) % ANGLE_BINS
    dist, slope = near[owner], slope[owner]
    order = np.lexsort((dist, bins))
    bins, dist, slope = bins[order], dist[order], slope[order]
    # running maximum of the slope within each bin: shift each bin's slopes above the previous bins'
    shift = bins * (4 * _FAR_SLOPE)
    running = np.maximum.accumulate(slope + shift) - shift
    return bins, dist, running


def _horizon(occluders, angle: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """The steepest slope of the occluders closer than `dist` in the angle bin of `angle` (-inf: none)."""
    bins, odist, running = occluders
    if bins.size == 0:
        return np.full(angle.shape, -np.inf)
    width = 2 * np.pi / ANGLE_BINS
    b = np.floor((angle + np.pi) / width).astype(np.int64) % ANGLE_BINS
    span = float(odist.max() + dist.max() + 2.0)
    key = bins * span + odist
    k = np.searchsorted(key, b * span + dist, side="left") - 1
    valid = (k >= 0) & (bins[np.maximum(k, 0)] == b)
    return np.where(valid, running[np.maximum(k, 0)], -np.inf)
