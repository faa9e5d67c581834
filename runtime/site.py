"""The site map: what a base station knows about its surroundings without measuring anything.

A base station has its site's building layout (planning data) and knows where it stands.
Building cells carry no signal, so they are 0 in both channels of the CKM (codec), and every
outdoor cell's AoA pixel lies in the codec's range [0.3, 1]. Any construction can take the site
as an extra, exact observation:

    site = Site(building)              (H, W) or (B, H, W) bool, True = building
    site = Site(building, base_station=(row, col, height_m))   the BS too (may lie outside the tile)
    site = Site(building, bs, building_height=heights)          and the buildings' heights (metres)
    site.check(shape)                  refuses a site that does not fit maps of `shape`: once, before use
    x = site.project(x)                buildings -> 0; outdoor AoA clipped into [0.3, 1]
    cond = site.condition(shape, rows) the condition maps of a site-aware prior (runtime.condition)

Samplers apply `project` after their data step (and DPS to its final sample), so the site acts
as a hard constraint, not a penalty; a site-aware prior also sees the site as its condition
input. Without a site (the paper's setting) nothing is assumed. Either part may be unknown: a
site with only a base station constrains nothing and only conditions the prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime import codec


class SiteError(ValueError):
    """A site map of the wrong type or shape; `part` names what is wrong ("building" or
    "base_station"; None for the site as a whole)."""

    def __init__(self, message: str, part: str | None = None):
        super().__init__(message)
        self.part = part


# A base station's height above ground, metres, and how far (in tiles) from the tile it may stand.
BS_HEIGHT_RANGE_M = (0.0, 500.0)
BS_MAX_TILES_AWAY = 8


@dataclass(frozen=True, eq=False)
class Site:
    building: np.ndarray | None = None  # (H, W) or (B, H, W) bool, True = building; None = unknown
    # (3,) or (B, 3): row, col (cells, continuous, cell (i, j) spans [i, i+1) x [j, j+1)) and
    # height above ground (m) of the serving base station; None = unknown
    base_station: np.ndarray | None = None
    # shaped like `building`: building heights above ground (m), finite and >= 0; None = unknown.
    # A ckm-site/2 prior sees them (and the line of sight over the roofs); nothing else uses them.
    building_height: np.ndarray | None = None

    def __post_init__(self):
        if self.building is None and self.base_station is None:
            raise SiteError("a site needs a building map, a base station, or both")
        if self.building is not None:
            b = np.asarray(self.building)
            if b.dtype != np.bool_ or b.ndim not in (2, 3):
                raise SiteError(f"a site's building map must be a boolean (H, W) or (B, H, W) array, got {b.dtype} {b.shape}",
                                "building")
            object.__setattr__(self, "building", b)
        if self.base_station is not None:
            bs = np.asarray(self.base_station, np.float64)
            if bs.ndim not in (1, 2) or bs.shape[-1] != 3:
                raise SiteError(f"a site's base station must be (row, col, height_m) or one per map (B, 3), got shape {bs.shape}",
                                "base_station")
            if not np.isfinite(bs).all():
                raise SiteError("a site's base station position and height must be finite", "base_station")
            lo, hi = BS_HEIGHT_RANGE_M
            if ((bs[..., 2] <= lo) | (bs[..., 2] > hi)).any():
                raise SiteError(f"a base station's height must be in ({lo:g}, {hi:g}] m, got {bs[..., 2].tolist()}",
                                "base_station")
            object.__setattr__(self, "base_station", bs)
        if self.building_height is not None:
            if self.building is None:
                raise SiteError("a site's building heights need its building map", "building_height")
            hgt = np.asarray(self.building_height, np.float64)
            if hgt.shape != self.building.shape:
                raise SiteError(f"a site's building heights must be shaped like its building map {self.building.shape}, "
                                f"got {hgt.shape}", "building_height")
            if not np.isfinite(hgt).all() or (hgt < 0).any():
                raise SiteError("a site's building heights must be finite and >= 0 metres", "building_height")
            object.__setattr__(self, "building_height", np.where(self.building, hgt, 0.0))

    @classmethod
    def from_pixels(cls, pixels: np.ndarray) -> Site:
        """The site of known maps (..., 2, H, W): their building cells (for tests and benchmarks)."""
        return cls(codec.building_mask(pixels))

    @property
    def per_sample(self) -> bool:
        """Whether the site is given per sample (a stack of layouts or of base stations)."""
        return np.ndim(self.building) == 3 or np.ndim(self.base_station) == 2

    def check(self, shape: tuple[int, ...]) -> None:
        """Refuse a site that does not fit maps of `shape` (B, C, H, W) or (C, H, W)."""
        b = self.building
        rows = shape[0] if len(shape) == 4 else 1
        if b is not None and (b.shape[-2:] != tuple(shape[-2:]) or (b.ndim == 3 and b.shape[0] not in (1, rows))):
            raise SiteError(f"site building map has shape {b.shape}, the maps are {tuple(shape)}", "building")
        bs = self.base_station
        if bs is not None:
            if bs.ndim == 2 and len(bs) not in (1, rows):
                raise SiteError(f"site has {len(bs)} base stations for {rows} map(s)", "base_station")
            reach = BS_MAX_TILES_AWAY * max(shape[-2:])
            if (np.abs(bs[..., :2] - np.asarray(shape[-2:]) / 2) > reach).any():
                raise SiteError(f"a base station must stand within {BS_MAX_TILES_AWAY} tiles of the map "
                                f"(|row|, |col| <= {reach} cells from its centre), got {bs[..., :2].tolist()}", "base_station")

    def _building(self, x: np.ndarray) -> np.ndarray:
        b = self.building if self.building.ndim == 3 else self.building[None]
        return b[:, None]  # (B or 1, 1, H, W)

    def project(self, x: np.ndarray) -> np.ndarray:
        """x (B, 2, H, W) -> the nearest map this site allows (Euclidean, per cell); x itself
        when the building layout is unknown (a base station's position constrains no cell)."""
        if self.building is None:
            return x
        building = self._building(x)
        lo = np.array([0.0, codec.AOA_PIXEL_MIN], x.dtype).reshape(1, 2, 1, 1)
        return np.where(building, 0.0, np.clip(x, lo, 1.0)).astype(x.dtype)

    def outdoor(self, shape: tuple[int, ...]) -> np.ndarray:
        """(B, H, W) bool: outdoor cells for maps of `shape` (B, C, H, W) (all, when unknown); the
        site was checked against the maps before (`check`)."""
        if self.building is None:
            return np.ones((shape[0],) + tuple(shape[-2:]), bool)
        return np.broadcast_to(~(self.building if self.building.ndim == 3 else self.building[None]),
                               (shape[0],) + tuple(shape[-2:]))

    def condition(self, shape: tuple[int, ...], rows: int, encoding=None) -> np.ndarray:
        """(rows, encoding.channels, H, W): what a site-aware prior is told of this site, in the
        prior's encoding (runtime.condition.Encoding; ckm-site/1 by default)."""
        from ckm_edge.runtime.condition import SITE_V1, site_condition

        return site_condition(self.building, self.base_station, tuple(shape[-2:]), batch=rows,
                              encoding=encoding or SITE_V1, heights=self.building_height)
