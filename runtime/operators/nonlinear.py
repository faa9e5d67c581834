"""The nonlinear operators, straight-through backward and exact per-cell proximal steps: gain
truncation (eq. 26) and AoA quantization (eqs. 28-31)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime import codec
from ckm_edge.runtime.operators.base import PROVEN_SIGMAS, Operator, OperatorError, check_lam, check_x
from ckm_edge.runtime.operators.registry import register_operator


@register_operator
@dataclass(frozen=True)
class Truncate(Operator):
    """Dynamic-range truncation (eq. 2 / 26): y = min(max(x, a), b), straight-through backward.

    The clamp's own gradient is 0 outside [a, b], so a cell whose estimate has left the window
    while its observation lies inside gets no pull back and the guidance loses it for good (on
    JTQR this made the construction diverge). The VJP is therefore the identity, as the paper
    does for the quantizer (eq. 36). It only differs from the clamp's gradient where the
    estimate is saturated, and there it points the right way: toward y when y is inside the
    window, and nowhere when y is saturated on the same side (the residual is then ~0).
    """

    low: float = 0.2
    high: float = 0.7
    name = "truncate"
    exact_prox = box_feasible = True

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and 0.0 <= self.low < self.high <= 1.0):
            raise OperatorError(f"truncation needs 0 <= low < high <= 1, got low={self.low}, high={self.high}")

    def forward(self, x):
        return np.clip(check_x(x), self.low, self.high)

    def vjp(self, x, v):
        return np.asarray(v).copy()

    def known_no_path(self, y, sigma=0.0):
        """A gain saturated at a low bound below the weakest real path lies at the floor. A cell
        counts as saturated when y is nearer the bound than the weakest path and at least 2.5
        sigma below it (with the paper's bound, -210 dB, and sigma 0.01 pixels the two agree)."""
        if self.low >= codec.PATH_GAIN_PIXEL_MIN:
            return None
        cut = min((self.low + codec.PATH_GAIN_PIXEL_MIN) / 2.0, codec.PATH_GAIN_PIXEL_MIN - 2.5 * sigma)
        return np.asarray(y)[:, 0] < cut

    def bounds(self, y, sigma):
        """A reading within the noise of a bound may be saturated: the value lies at or beyond
        that bound (up to the reading plus the noise); any other reading is the value, within the noise."""
        y, d = np.asarray(y, np.float32), PROVEN_SIGMAS * sigma
        low = np.where(y <= self.low + d, 0.0, np.clip(y - d, 0.0, 1.0))
        high = np.where(y >= self.high - d, 1.0, np.clip(y + d, 0.0, 1.0))
        return low, high

    def prox(self, z, y, lam):
        """Per cell, the best of three pieces: x <= low (then clip(x) = low, x = min(z, low)),
        low <= x <= high (a quadratic), x >= high (x = max(z, high)). lam = 0: a gain observed
        at a bound lies at or beyond it (nearest z), one inside the window is y."""
        z, lam = check_x(z), check_lam(lam)
        a, b = self.low, self.high
        low, high, mid = np.minimum(z, a), np.maximum(z, b), np.clip((y + lam * z) / (1.0 + lam), a, b)
        c_low = (y - a) ** 2 + lam * (low - z) ** 2
        c_high = (y - b) ** 2 + lam * (high - z) ** 2
        c_mid = (y - mid) ** 2 + lam * (mid - z) ** 2
        # ties (lam = 0, a saturated y: a bound piece and the middle one fit equally) go to the bound
        # piece, the one nearest z among the best fits
        return np.where(c_low <= np.minimum(c_high, c_mid), low, np.where(c_high <= c_mid, high, mid)).astype(z.dtype)


@register_operator
@dataclass(frozen=True, eq=False)
class QuantizeAoA(Operator):
    """AoA quantization into K equal sectors (eqs. 28-31) on AoA-sine pixels, STE backward (eq. 36).

    Reported angles are sector centres; building cells stay 0. Which cells are buildings is a
    property of the map (eq. 31), known at the base station from its building layout; pass it as
    `building` ((H, W) or (B, H, W)).
    Without it, cells whose current value lies in the codec's building gap count as buildings.
    Only the sine is stored, and theta and 180 - theta share it; the quantizer is the same for
    both when K is even (sector boundaries are symmetric about +-90 degrees), so K must be even.
    Backward: the identity on outdoor cells (straight-through), 0 on buildings.
    """

    sectors: int = 24
    building: np.ndarray | None = None
    name = "quantize_aoa"
    exact_prox = box_feasible = True

    def __post_init__(self):
        if not isinstance(self.sectors, (int, np.integer)) or self.sectors < 2 or self.sectors % 2:
            raise OperatorError(f"AoA quantization needs an even number of sectors >= 2, got {self.sectors!r}")
        if self.building is not None:
            b = np.asarray(self.building)
            if b.dtype != np.bool_ or b.ndim not in (2, 3):
                raise OperatorError(f"building must be a boolean (H, W) or (B, H, W) array, got {b.dtype} {b.shape}")
            object.__setattr__(self, "building", b)

    def _building(self, x: np.ndarray) -> np.ndarray:
        if self.building is None:
            return x < codec.BUILDING_THRESHOLD
        b = self.building if self.building.ndim == 3 else self.building[None]
        if b.shape[-2:] != x.shape[-2:] or b.shape[0] not in (1, x.shape[0]):
            raise OperatorError(f"building mask shape {self.building.shape} does not fit input {x.shape}")
        return np.broadcast_to(b[:, None], x.shape)

    def forward(self, x):
        x = check_x(x)
        sine = np.clip((x - codec.AOA_OFFSET) / codec.AOA_SCALE, -1.0, 1.0)
        theta = np.degrees(np.arcsin(sine))
        delta = 360.0 / self.sectors
        k = np.minimum(np.floor((theta + 180.0) / delta), self.sectors - 1)
        hard = codec.AOA_SCALE * np.sin(np.radians(-180.0 + (k + 0.5) * delta)) + codec.AOA_OFFSET
        return np.where(self._building(x), 0.0, hard).astype(x.dtype)

    def vjp(self, x, v):
        return v * ~self._building(x)

    def known_buildings(self):
        return self.building

    def sector_intervals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(centre, low, high) pixels of every sector the sine can report: the sector's angles
        clipped to [-90, 90] degrees (arcsin's range), where the sine is increasing."""
        delta = 360.0 / self.sectors
        edges = -180.0 + delta * np.arange(self.sectors + 1)
        keep = (edges[1:] > -90.0) & (edges[:-1] < 90.0)
        lo, hi = np.maximum(edges[:-1][keep], -90.0), np.minimum(edges[1:][keep], 90.0)
        centre = (edges[:-1][keep] + edges[1:][keep]) / 2

        def px(deg):
            return codec.AOA_SCALE * np.sin(np.radians(deg)) + codec.AOA_OFFSET

        # 1e-6 pixel inside each edge, so that a value clipped into a sector stays in it after
        # float32 rounding (the forward's floor() puts an edge into one sector or the other)
        return px(centre), px(lo) + 1e-6, px(hi) - 1e-6

    def bounds(self, y, sigma):
        """What a reading allows: the sectors whose reported centre lies within the noise of it,
        from the lowest one's edge to the highest one's, and, without a building layout, a
        building (0) where 0 lies within the noise too; a reading near none of them is the nearest
        (a sector, or a building in the building gap). Buildings of the given layout: 0."""
        y, d = np.asarray(y, np.float32), PROVEN_SIGMAS * sigma
        centre, lo, hi = self.sector_intervals()
        nearest = np.clip(np.searchsorted((centre[1:] + centre[:-1]) / 2, y), 0, len(centre) - 1)
        first = np.searchsorted(centre, y - d, side="left")
        last = np.searchsorted(centre, y + d, side="right") - 1
        sector = first <= last
        first, last = np.where(sector, first, nearest), np.where(sector, last, nearest)
        low, high = lo[np.clip(first, 0, len(lo) - 1)], hi[np.clip(last, 0, len(hi) - 1)]
        if self.building is not None:
            building = self._building(np.zeros(y.shape, np.float32))
            return np.where(building, 0.0, low), np.where(building, 0.0, high)
        maybe = y - d <= 0.0  # a building (0) within the noise
        only = (maybe & ~sector) | (~maybe & ~sector & (y < codec.BUILDING_THRESHOLD))
        return np.where(maybe | only, 0.0, low), np.where(only, 0.0, high)

    def prox(self, z, y, lam):
        """Per outdoor cell: the sector j minimising (y - centre_j)^2 + lam dist(z, sector_j)^2,
        then z clipped into that sector (lam = 0: the nearest centre's sector). Buildings: 0
        (the given layout; without one, cells whose observation is in the building gap)."""
        z, lam = check_x(z), check_lam(lam)
        y = np.broadcast_to(np.asarray(y), z.shape)
        centre, lo, hi = self.sector_intervals()  # increasing in the sector index
        j_y = np.clip(np.searchsorted((centre[1:] + centre[:-1]) / 2, y), 0, len(centre) - 1)  # nearest centre
        x = np.clip(z, lo[j_y], hi[j_y])
        # Where z lies outside the nearest centre's sector and lam > 0, the best sector lies between
        # that one and z's own (farther ones fit y worse and lie farther from z): compare them all there.
        lam_cells = np.broadcast_to(lam, z.shape)
        todo = (x != z) & (lam_cells > 0)
        if todo.any():
            zt, yt, lt = z[todo][None], y[todo][None], lam_cells[todo][None]
            inside = np.clip(zt, lo[:, None], hi[:, None])  # (J, n): z clipped into each sector
            cost = (yt - centre[:, None]) ** 2 + lt * (inside - zt) ** 2
            x[todo] = np.take_along_axis(inside, np.argmin(cost, axis=0)[None], axis=0)[0]
        building = self._building(z) if self.building is not None else y < codec.BUILDING_THRESHOLD
        return np.where(building, 0.0, x).astype(z.dtype)
