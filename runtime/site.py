"""The site map: what a base station knows about its surroundings without measuring anything.

A base station has its site's building layout (planning data). Building cells carry no signal,
so they are 0 in both channels of the CKM (codec), and every outdoor cell's AoA pixel lies in
the codec's range [0.3, 1]. Any construction can take the site as an extra, exact observation:

    site = Site(building)              (H, W) or (B, H, W) bool, True = building
    x = site.project(x)                buildings -> 0; outdoor AoA clipped into [0.3, 1]

Samplers apply `project` after their data step (and DPS to its final sample), so the site acts
as a hard constraint, not a penalty. Without a site (the paper's setting) nothing is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import codec


class SiteError(ValueError):
    """A site map of the wrong type or shape."""


@dataclass(frozen=True, eq=False)
class Site:
    building: np.ndarray  # (H, W) or (B, H, W) bool, True = building

    def __post_init__(self):
        b = np.asarray(self.building)
        if b.dtype != np.bool_ or b.ndim not in (2, 3):
            raise SiteError(f"a site's building map must be a boolean (H, W) or (B, H, W) array, got {b.dtype} {b.shape}")
        object.__setattr__(self, "building", b)

    @classmethod
    def from_pixels(cls, pixels: np.ndarray) -> "Site":
        """The site of known maps (..., 2, H, W): their building cells (for tests and benchmarks)."""
        return cls(codec.building_mask(pixels))

    def check(self, shape: tuple[int, ...]) -> None:
        """Refuse a site that does not fit maps of `shape` (B, C, H, W) or (C, H, W)."""
        b = self.building
        if b.shape[-2:] != tuple(shape[-2:]) or (b.ndim == 3 and len(shape) == 4 and b.shape[0] not in (1, shape[0])):
            raise SiteError(f"site building map has shape {b.shape}, the maps are {tuple(shape)}")

    def _building(self, x: np.ndarray) -> np.ndarray:
        self.check(x.shape)
        b = self.building if self.building.ndim == 3 else self.building[None]
        return b[:, None]  # (B or 1, 1, H, W)

    def project(self, x: np.ndarray) -> np.ndarray:
        """x (B, 2, H, W) -> the nearest map this site allows (Euclidean, per cell)."""
        building = self._building(x)
        lo = np.array([0.0, codec.AOA_PIXEL_MIN], x.dtype).reshape(1, 2, 1, 1)
        return np.where(building, 0.0, np.clip(x, lo, 1.0)).astype(x.dtype)

    def outdoor(self, shape: tuple[int, ...]) -> np.ndarray:
        """(B, H, W) bool: outdoor cells for maps of `shape` (B, C, H, W)."""
        self.check(shape)
        return np.broadcast_to(~(self.building if self.building.ndim == 3 else self.building[None]),
                               (shape[0],) + tuple(shape[-2:]))
