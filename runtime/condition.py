"""Site condition maps: what a base station knows of its site, as input channels of the prior.

    cond = site_condition(building, bs, (128, 128))                  # ckm-site/1: (B, 5, H, W)
    cond = site_condition(building, bs, (128, 128), encoding=SITE_V2)  # ckm-site/2: (B, 10, H, W)

A site-aware prior (issue 16) takes these channels next to the noisy map; the same network serves
the paper's unconditional setting when they are all zero (it is trained with condition dropout).
Torch-free: the edge runtime builds the same maps from a request's Site as training does from a
tile. A package names its encoding in its manifest ("condition": {"encoding", "channels", ...});
a runtime serves the encodings it implements (`ENCODINGS`). Channels of `ckm-site/1`:

0. building: 1 on building cells (0 when unknown)
1. building known: 1 everywhere when channel 0 is given, else 0
2. BS proximity: 1 - log10(1 + d) / log10(1 + 4 H), clipped to [0, 1], with d the distance in
   cells from each cell centre (i + .5, j + .5) to the base station at continuous (row, col)
   (training.dataset's convention). It is defined for a base station outside the tile too: the
   whole field then stays below 1 and its gradient points at the station.
3. BS known: 1 everywhere when channel 2 is given, else 0
4. BS height: its height above ground in metres / 50, everywhere (0 when unknown)

`ckm-site/2` (issue 33) adds what the geometry alone says of the map (runtime.physics), computed
at the package's cell size and carrier (its manifest records both), and the buildings' heights:

5. line of sight: the visibility of each cell from the base station over the building layout
   (soft at shadow edges; 0 on buildings), over the roofs when the heights are known (a station
   above a roof sees past it), when the layout and the station are known, else 0
6. direct-path AoA: the sine of the azimuth from each cell towards the base station, in the AoA
   channel's pixel encoding (codec: 0.65 + 0.35 sine, so in [0.3, 1]), when the BS is known, else 0
7. free-space gain: the line-of-sight path's gain over the 3D distance to a receiver 1.5 m above
   each cell, in the gain channel's pixel encoding (codec: (dB + 250) / 200, clipped to [0, 1]),
   when the BS is known, else 0
8. building heights: metres above ground / 50 on building cells, when known (0 elsewhere)
9. heights known: 1 everywhere when channel 8 is given, else 0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime import codec, physics

HEIGHT_SCALE_M = 50.0


class ConditionError(ValueError):
    pass


@dataclass(frozen=True)
class Encoding:
    """A condition encoding as a package's manifest names it. A change of channels or scales must
    come with a new name: a runtime builds the condition only for encodings it implements."""

    name: str
    channels: int
    cell_size_m: float = 2.0  # the tiles' geometry, for the physics channels (ckm-site/2)
    carrier_hz: float = 3.5e9

    def section(self) -> dict:
        """The manifest's "condition" section."""
        out = {"input": "cond", "channels": self.channels, "encoding": self.name}
        if self.name != SITE_V1.name:
            out.update(cell_size_m=self.cell_size_m, carrier_hz=self.carrier_hz)
        return out

    @classmethod
    def from_section(cls, section) -> Encoding:
        """The encoding of a manifest's "condition" section; ConditionError names what is wrong."""
        if not isinstance(section, dict):
            raise ConditionError("manifest condition must be an object with input, channels and encoding")
        name = section.get("encoding")
        if name not in ENCODINGS:
            raise ConditionError(f"manifest condition encoding is {name!r}; this runtime builds "
                                 f"{', '.join(map(repr, ENCODINGS))} (upgrade ckm-edge to serve this package)")
        channels = ENCODINGS[name].channels
        if section.get("channels") != channels or section.get("input") != "cond":
            raise ConditionError(f"manifest condition must name the input 'cond' with {channels} channels for "
                                 f"{name}, got {section.get('input')!r} with {section.get('channels')!r}")
        if name == SITE_V1.name:
            return ENCODINGS[name]
        try:
            cell, carrier = float(section["cell_size_m"]), float(section["carrier_hz"])
        except (KeyError, TypeError, ValueError):
            raise ConditionError(f"manifest condition {name} must give cell_size_m and carrier_hz as numbers") from None
        if not (cell > 0 and carrier > 0):
            raise ConditionError(f"manifest condition cell_size_m and carrier_hz must be positive, got {cell}, {carrier}")
        return cls(name, channels, cell, carrier)

    @classmethod
    def for_channels(cls, channels: int) -> Encoding:
        """The encoding (at the default tile geometry) of a network taking `channels` condition maps."""
        for enc in ENCODINGS.values():
            if enc.channels == channels:
                return enc
        raise ConditionError(f"no condition encoding takes {channels} condition channels (known: "
                             + ", ".join(f"{e.name}: {e.channels}" for e in ENCODINGS.values()) + ")")


SITE_V1 = Encoding("ckm-site/1", 5)
SITE_V2 = Encoding("ckm-site/2", 10)
ENCODINGS = {e.name: e for e in (SITE_V1, SITE_V2)}
# ckm-site/1's names, kept for the code that knows only it
CHANNELS = SITE_V1.channels
ENCODING = SITE_V1.name


def bs_proximity(bs_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(B, 2) continuous (row, col) -> (B, H, W) proximity field in [0, 1] (channel 2)."""
    h, w = shape
    bs_rc = np.asarray(bs_rc, np.float64).reshape(-1, 2)
    rows = np.arange(h)[None, :, None] + 0.5
    cols = np.arange(w)[None, None, :] + 0.5
    d = np.hypot(rows - bs_rc[:, 0, None, None], cols - bs_rc[:, 1, None, None])
    return np.clip(1.0 - np.log10(1.0 + d) / np.log10(1.0 + 4.0 * max(h, w)), 0.0, 1.0).astype(np.float32)


def site_condition(building: np.ndarray | None, bs: np.ndarray | None, shape: tuple[int, int],
                   batch: int | None = None, *, encoding: Encoding = SITE_V1,
                   visibility: np.ndarray | None = None, heights: np.ndarray | None = None) -> np.ndarray:
    """Condition channels for a batch. `building`: (B, H, W) or (H, W) bool, or None (unknown);
    `bs`: (B, 3) or (3,) row, col (cells), height (m), or None (unknown); rows of `bs` that hold
    NaN are unknown too (mixed batches). ckm-site/2 only: `heights` (B, H, W) or (H, W) building
    heights in metres (0 outdoors; maps holding NaN are unknown), used with the layout;
    `visibility` (B, H, W): the line of sight computed beforehand (training computes it on the
    whole tile before cropping), by default computed here from the layout (and heights)."""
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
    cond = np.zeros((b, encoding.channels, h, w), np.float32)
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
    if encoding.name != SITE_V2.name:
        return cond
    rows_heights = [None] * b
    if heights is not None and building is not None:
        heights = np.asarray(heights, np.float64)
        if heights.shape[-2:] != (h, w) or heights.ndim not in (2, 3) or len(heights.reshape(-1, h, w)) not in (1, b):
            raise ConditionError(f"building heights have shape {heights.shape}, the maps are {(b, h, w)}")
        heights = heights.reshape(-1, h, w)
        for k in range(b):
            hk = heights[k if len(heights) > 1 else 0]
            if np.isnan(hk).all():
                continue
            if not np.isfinite(hk).all() or (hk < 0).any():
                raise ConditionError("building heights must be finite and >= 0 (NaN maps for unknown)")
            rows_heights[k] = hk
            bk = building[k if len(building) > 1 else 0]
            cond[k, 8] = np.where(bk, hk, 0.0) / HEIGHT_SCALE_M
            cond[k, 9] = 1.0
    if bs is not None:
        _physics_channels(cond, building, bs, known, encoding, visibility, rows_heights)
    return cond


def _physics_channels(cond: np.ndarray, building: np.ndarray | None, bs: np.ndarray, known: np.ndarray,
                      encoding: Encoding, visibility: np.ndarray | None, heights: list) -> None:
    """Channels 5-7 of ckm-site/2, in place, for the rows whose base station is known."""
    h, w = cond.shape[-2:]
    if visibility is not None:
        visibility = np.asarray(visibility, np.float32)
        if visibility.shape[-2:] != (h, w) or len(visibility.reshape(-1, h, w)) not in (1, len(cond)):
            raise ConditionError(f"visibility has shape {visibility.shape}, the maps are {(len(cond), h, w)}")
        visibility = visibility.reshape(-1, h, w)
    for k in np.flatnonzero(known):
        if building is not None:
            if visibility is not None:
                cond[k, 5] = visibility[k if len(visibility) > 1 else 0]
            else:
                cond[k, 5] = physics.los_visibility(building[k if len(building) > 1 else 0], bs[k],
                                                    heights=heights[k], cell_size_m=encoding.cell_size_m)
        cond[k, 6] = codec.AOA_OFFSET + codec.AOA_SCALE * physics.direct_aoa_sine(bs[k], (h, w))
        gain = physics.free_space_gain_db(bs[k], (h, w), cell_size_m=encoding.cell_size_m, carrier_hz=encoding.carrier_hz)
        cond[k, 7] = np.clip((gain - codec.GAIN_DB_MIN) / codec.GAIN_DB_SPAN, 0.0, 1.0)


def dropout(cond: np.ndarray, rng: np.random.Generator, p_building: float, p_bs: float, p_heights: float = 0.0,
            flat_visibility: np.ndarray | None = None) -> np.ndarray:
    """Condition dropout for training: each map forgets its building layout with probability
    p_building and its base station with probability p_bs, independently (so one network learns
    the unconditional, building-only, BS-only and full settings). ckm-site/2: the physics channels
    go with the station, the line of sight also with the layout, the heights with the layout or,
    with probability p_heights, alone; a map that keeps its layout but forgets its heights then
    sees the line of sight over the bare layout, `flat_visibility` (B, H, W), when given."""
    out = cond.copy()
    b = len(cond)
    no_building = rng.random(b) < p_building
    no_bs = rng.random(b) < p_bs
    if cond.shape[1] == SITE_V1.channels:
        out[no_building, 0:2] = 0.0
        out[no_bs, 2:5] = 0.0
        return out
    no_heights = (rng.random(b) < p_heights) & (cond[:, 9, 0, 0] > 0)
    if flat_visibility is not None:
        flat = np.asarray(flat_visibility, np.float32).reshape(b, *cond.shape[-2:])
        swap = no_heights & ~no_building & ~no_bs
        out[swap, 5] = flat[swap]
    out[no_heights | no_building, 8:10] = 0.0
    out[no_building, 0:2] = 0.0
    out[no_building, 5] = 0.0
    out[no_bs, 2:8] = 0.0
    return out
