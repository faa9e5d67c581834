"""Procedural CKM tiles: random city blocks and a simple multi-path propagation model (numpy only).

This is the embedded data source for tests, the demo and quick training runs: thousands of
128x128 tiles a minute on two cores, deterministic by seed. Realism beyond it comes from the
ray-traced builder. Per tile:

1. Layout (`_layout`): a street grid at a random orientation; each block is split into 1-3 x 1-3
   lots, each lot holds a building with some probability (the block density), with a setback
   and a height drawn from a log-normal law. Some blocks are open squares or parks.
2. A base station (BS) at a random outdoor cell, at a random height above ground.
3. Paths, each with a gain in dB and an arrival direction at the receiver (height 1.5 m):
   - direct path: free-space loss over the 3D distance, plus a penetration loss for each metre
     of building the ray passes below the roof line (2.5D: rays from a high BS clear low roofs);
     for an unobstructed ray this is the line-of-sight path;
   - corner diffraction: points on the edge of the lit region next to a building act as
     secondary sources, loss = free space over the unfolded path + knife-edge loss J(v) with
     v = 2 sqrt(excess path / wavelength), the ITU-R P.526 approximation;
   - single specular reflection: lit wall facets mirror the BS (image source), loss = free space
     over the image distance + a reflection loss; valid where the image ray crosses the facet.
4. Channel gain = power sum of the paths + spatially correlated log-normal shadowing;
   AoA = azimuth of the strongest path's arrival direction, counter-clockwise from +x (east,
   the column axis) with +y north (towards row 0), stored as its sine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.runtime import codec
from ckm_edge.runtime.physics import SPEED_OF_LIGHT


@dataclass(frozen=True)
class ProceduralConfig:
    """Settings of the procedural CKM generator. Lengths in cells unless the name says metres."""

    tile_size: int = 128
    cell_size_m: float = 2.0
    carrier_hz: float = 3.5e9
    rx_height_m: float = 1.5
    bs_height_m: tuple[float, float] = (8.0, 40.0)
    block_pitch: tuple[float, float] = (18.0, 46.0)
    street_width: tuple[float, float] = (3.0, 8.0)
    block_density: tuple[float, float] = (0.45, 0.95)  # probability that a lot is built
    open_block_prob: float = 0.08
    building_height_median_m: float = 18.0
    building_height_sigma: float = 0.5  # log-normal shape
    penetration_db_per_m: float = 1.2
    wall_loss_db: float = 12.0
    penetration_cap_db: float = 110.0
    diffraction_points: int = 6
    reflection_facets: int = 4
    reflection_facet_half_length: float = 10.0
    reflection_loss_db: tuple[float, float] = (5.0, 10.0)
    shadowing_sigma_db: float = 3.0
    shadowing_correlation: float = 12.0
    # Cells whose total gain falls below this get the codec's floor, like the cells a ray tracer's
    # paths (bounded depth, no transmission) never reach. None: every cell keeps its gain.
    no_path_below_db: float | None = None

    def __post_init__(self) -> None:
        if self.tile_size < 16 or self.tile_size % 2:
            raise ValueError(f"tile_size must be an even integer >= 16, got {self.tile_size}")
        for name in ("cell_size_m", "carrier_hz", "rx_height_m", "shadowing_correlation"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("bs_height_m", "block_pitch", "street_width", "block_density", "reflection_loss_db"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")
        if self.street_width[1] >= self.block_pitch[0]:
            raise ValueError("street_width must stay below block_pitch")

    @classmethod
    def preset(cls, name: str, **overrides) -> ProceduralConfig:
        """A named parameter set: shipped (`procedural_presets.json`) or the user's own (`ckm-data
        calibrate --save-preset`, see `user_presets_file`)."""
        presets = load_presets()
        if name not in presets:
            raise ValueError(f"unknown procedural preset {name!r}; known: {', '.join(sorted(presets))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in presets[name]["config"].items()}
        return cls(**{**values, **overrides})

    @property
    def wavelength_m(self) -> float:
        return SPEED_OF_LIGHT / self.carrier_hz


PRESETS_FILE = Path(__file__).with_name("procedural_presets.json")  # shipped with the package, read-only


def user_presets_file() -> Path:
    """Where `ckm-data calibrate --save-preset` records presets by default, and where they are read
    from: $CKM_EDGE_PRESETS, else $XDG_DATA_HOME/ckm-edge/procedural_presets.json (~/.local/share)."""
    if os.environ.get("CKM_EDGE_PRESETS"):
        return Path(os.environ["CKM_EDGE_PRESETS"])
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "ckm-edge" / "procedural_presets.json"


def load_presets() -> dict:
    """{name: {"config": {...overrides of the defaults...}, "note": ...}}; `v1` is the defaults, then
    the shipped presets, then the user's (which may replace a shipped one of the same name)."""
    presets = {"v1": {"config": {}, "note": "the defaults (ckm-prior 0.1.0 and 0.2.0 were trained on these)"}}
    for path in (PRESETS_FILE, user_presets_file()):
        if path.is_file():
            presets.update(json.loads(path.read_text()))
    return presets


@dataclass(frozen=True)
class Tile:
    pixels: np.ndarray  # (2, H, W) float32, codec encoding
    tx: np.ndarray  # (3,) float32: BS row, column (cells, fractional) and height (m)


@dataclass(frozen=True)
class _Scene:
    building: np.ndarray  # (H, W) bool
    height: np.ndarray  # (H, W) float32, metres, 0 outdoors
    normals: np.ndarray  # (4, 2) wall normals (row, col) of the street grid


@functools.lru_cache(maxsize=4)
def _grids(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (row, col) at full (N, 2) and half resolution (N/4, 2), read-only."""
    rows, cols = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    full = np.stack([rows.ravel(), cols.ravel()], axis=1)
    hr, hc = np.mgrid[0:n:2, 0:n:2].astype(np.float32) + 1.0
    half = np.stack([hr.ravel(), hc.ravel()], axis=1)
    full.flags.writeable = False
    half.flags.writeable = False
    return full, half


def _layout(rng: np.random.Generator, cfg: ProceduralConfig) -> _Scene:
    n = cfg.tile_size
    alpha = rng.uniform(0.0, math.pi / 2)
    pitch = rng.uniform(*cfg.block_pitch, size=2)
    street = rng.uniform(*cfg.street_width)
    density = rng.uniform(*cfg.block_density)
    rows, cols = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    ca, sa = math.cos(alpha), math.sin(alpha)
    u = cols * ca + rows * sa + rng.uniform(0, pitch[0])
    v = -cols * sa + rows * ca + rng.uniform(0, pitch[1])
    bu, bv = np.floor(u / pitch[0]).astype(np.int64), np.floor(v / pitch[1]).astype(np.int64)
    fu, fv = u - bu * pitch[0], v - bv * pitch[1]
    half = street / 2
    in_block = (fu > half) & (fu < pitch[0] - half) & (fv > half) & (fv < pitch[1] - half)
    # Per-block and per-lot random tables, indexed by the block coordinates (shifted >= 0).
    side = 2 * int(np.ceil(1.5 * n / min(pitch))) + 4
    bu_i, bv_i = bu + side // 2, bv + side // 2
    lots = rng.integers(1, 4, size=(side, side, 2))
    open_block = rng.random((side, side)) < cfg.open_block_prob
    built = rng.random((side, side, 3, 3)) < density
    lot_height = np.clip(
        cfg.building_height_median_m * np.exp(cfg.building_height_sigma * rng.standard_normal((side, side, 3, 3))),
        4.0,
        120.0,
    )
    setback = rng.uniform(0.0, 0.18, size=(side, side, 3, 3))
    nu, nv = lots[bu_i, bv_i, 0], lots[bu_i, bv_i, 1]
    ru = np.clip((fu - half) / (pitch[0] - street), 0.0, 0.999) * nu
    rv = np.clip((fv - half) / (pitch[1] - street), 0.0, 0.999) * nv
    lu, lv = ru.astype(np.int64), rv.astype(np.int64)
    sb = setback[bu_i, bv_i, lu, lv]
    inside_lot = (ru - lu > sb) & (ru - lu < 1 - sb) & (rv - lv > sb) & (rv - lv < 1 - sb)
    building = in_block & inside_lot & built[bu_i, bv_i, lu, lv] & ~open_block[bu_i, bv_i]
    height = np.where(building, lot_height[bu_i, bv_i, lu, lv], 0.0).astype(np.float32)
    # Wall normals of the grid in (row, col): +-u and +-v directions.
    nu_vec, nv_vec = np.array([sa, ca]), np.array([ca, -sa])
    normals = np.stack([nu_vec, -nu_vec, nv_vec, -nv_vec])
    return _Scene(building, height, normals)


def _through_building(
    scene: _Scene,
    src: np.ndarray,
    src_h: float,
    dst: np.ndarray,
    dst_h: float,
    spacing: float = 1.5,
) -> np.ndarray:
    """Cells of building each ray src -> dst[k] passes below the roofs (0 = clear). (K,).

    Rays are sampled every `spacing` cells; src and dst must lie inside the tile.
    """
    n = scene.height.shape[0]
    delta = (dst - src).astype(np.float32)  # (K, 2)
    dist = np.sqrt((delta**2).sum(axis=1))
    steps = max(2, int(np.ceil(dist.max() / spacing)))
    t = (np.arange(steps, dtype=np.float32) + 0.5) / steps  # (S,)
    r = (np.float32(src[0]) + delta[:, :1] * t).astype(np.int32)  # (K, S)
    c = (np.float32(src[1]) + delta[:, 1:] * t).astype(np.int32)
    r *= n
    r += c
    roof = np.take(scene.height.ravel(), r)  # (K, S)
    ray_h = (src_h + t * (dst_h - src_h)).astype(np.float32)  # (S,)
    blocked = np.count_nonzero(roof > ray_h, axis=1)
    return blocked * (dist / steps)


def _fspl_db(dist_m: np.ndarray, cfg: ProceduralConfig) -> np.ndarray:
    dist_m = np.maximum(dist_m, 1.0)
    return 20.0 * np.log10(4.0 * math.pi * dist_m / cfg.wavelength_m)


def _penetration_db(metres: np.ndarray, cfg: ProceduralConfig) -> np.ndarray:
    loss = np.where(metres > 0, cfg.wall_loss_db + cfg.penetration_db_per_m * metres, 0.0)
    return np.minimum(loss, cfg.penetration_cap_db)


def _knife_edge_db(excess_m: np.ndarray, cfg: ProceduralConfig) -> np.ndarray:
    v = 2.0 * np.sqrt(np.maximum(excess_m, 0.0) / cfg.wavelength_m)
    return np.where(v > -0.78, 6.9 + 20.0 * np.log10(np.sqrt((v - 0.1) ** 2 + 1) + v - 0.1), 0.0)


def _shadowing(rng: np.random.Generator, cfg: ProceduralConfig) -> np.ndarray:
    n = cfg.tile_size
    coarse = max(2, int(np.ceil(n / cfg.shadowing_correlation)) + 1)
    field_ = rng.standard_normal((coarse, coarse))
    pos = np.linspace(0, coarse - 1, n)
    i0 = np.minimum(pos.astype(int), coarse - 2)
    w = (pos - i0)[:, None]
    rows = field_[i0] * (1 - w) + field_[i0 + 1] * w  # (n, coarse)
    w = (pos - i0)[None, :]
    out = rows[:, i0] * (1 - w) + rows[:, i0 + 1] * w
    return cfg.shadowing_sigma_db * out / max(out.std(), 1e-6)


def _pick_spread(candidates: np.ndarray, score: np.ndarray, k: int, min_sep: float) -> np.ndarray:
    """Up to k candidate points, best score first, at least min_sep apart. (<=k, 2)."""
    chosen: list[np.ndarray] = []
    for i in np.argsort(-score):
        p = candidates[i]
        if all(np.hypot(*(p - q)) >= min_sep for q in chosen):
            chosen.append(p)
            if len(chosen) == k:
                break
    return np.array(chosen, dtype=np.float32).reshape(-1, 2)


def _half_res_visibility(scene: _Scene, src: np.ndarray, cfg: ProceduralConfig) -> np.ndarray:
    """Building metres along ground-level rays src -> every cell, on a half-resolution grid."""
    n = cfg.tile_size
    coarse = _grids(n)[1]
    metres = _through_building(scene, src, cfg.rx_height_m, coarse, cfg.rx_height_m, spacing=2.0)
    metres = metres.reshape(n // 2, n // 2) * cfg.cell_size_m
    return np.repeat(np.repeat(metres, 2, axis=0), 2, axis=1).reshape(-1)


def generate_tile(rng: np.random.Generator, cfg: ProceduralConfig = ProceduralConfig()) -> Tile:
    """One procedural CKM tile, a pure function of the generator state."""
    n, cell = cfg.tile_size, cfg.cell_size_m
    scene = _layout(rng, cfg)
    grid = _grids(n)[0]  # (N, 2) cell centres (row, col)
    outdoor_idx = np.flatnonzero(~scene.building.ravel())
    if outdoor_idx.size == 0:  # a fully built tile cannot host a BS: draw again
        return generate_tile(rng, cfg)
    bs = grid[rng.choice(outdoor_idx)]
    bs_h = float(rng.uniform(*cfg.bs_height_m))
    dh = bs_h - cfg.rx_height_m

    # Direct path (LoS when nothing is in the way). Gains in dB, arrival vectors cell -> source.
    to_bs = bs[None, :] - grid  # (N, 2) in cells
    d2 = np.sqrt((to_bs**2).sum(1)) * cell
    d3 = np.sqrt(d2**2 + dh**2)
    wall_m = _through_building(scene, bs, bs_h, grid, cfg.rx_height_m) * cell
    gains = [-(_fspl_db(d3, cfg) + _penetration_db(wall_m, cfg))]
    arrivals = [to_bs]
    lit = wall_m == 0
    bldg = scene.building.ravel()

    # Corner diffraction: lit outdoor cells next to both a building and a shadowed cell.
    lit2 = lit.reshape(n, n)
    b2 = scene.building
    shadow2 = ~lit2 & ~b2
    near_b = _dilate(b2)
    near_shadow = _dilate(shadow2)
    cand = lit2 & ~b2 & near_b & near_shadow
    ci = np.flatnonzero(cand.ravel())
    if ci.size:
        pts = _pick_spread(grid[ci], gains[0][ci], cfg.diffraction_points, 8.0)
        for p in pts:
            d1 = np.hypot(*(p - bs)) * cell
            d1_3 = math.hypot(d1, dh)
            to_p = p[None, :] - grid
            dd2 = np.sqrt((to_p**2).sum(1)) * cell
            leg2 = _half_res_visibility(scene, p, cfg)
            excess = d1_3 + dd2 - d3
            g = -(_fspl_db(d1_3 + dd2, cfg) + _knife_edge_db(excess, cfg) + _penetration_db(leg2, cfg))
            gains.append(g)
            arrivals.append(to_p)

    # Single specular reflection on lit wall facets (image source method).
    cand = lit2 & ~b2 & near_b
    ci = np.flatnonzero(cand.ravel())
    if ci.size:
        pts = _pick_spread(grid[ci], gains[0][ci] + rng.uniform(0, 6, ci.size), cfg.reflection_facets, 10.0)
        grad = _building_gradient(b2)
        for p in pts:
            gvec = grad[:, int(p[0]), int(p[1])]
            normal = scene.normals[np.argmax(scene.normals @ -gvec)]  # points away from the wall
            if (bs - p) @ normal <= 0:
                continue  # the BS is behind this wall
            image = bs - 2.0 * ((bs - p) @ normal) * normal
            to_img = image[None, :] - grid
            den = -(to_img @ normal)  # (c - image) . n
            with np.errstate(divide="ignore", invalid="ignore"):
                lam = ((p - image) @ normal) / den
            hit = image[None, :] + lam[:, None] * (-to_img)  # reflection point per cell
            tangent = np.array([-normal[1], normal[0]])
            on_facet = np.abs((hit - p) @ tangent) <= cfg.reflection_facet_half_length
            front = (grid - p) @ normal > 0
            valid = on_facet & front & np.isfinite(lam)
            leg2 = _half_res_visibility(scene, p, cfg)
            di = np.sqrt((to_img**2).sum(1)) * cell
            loss = _fspl_db(np.sqrt(di**2 + dh**2), cfg) + rng.uniform(*cfg.reflection_loss_db)
            g = np.where(valid, -(loss + _penetration_db(leg2, cfg)), -np.inf)
            gains.append(g)
            arrivals.append(hit - grid)

    g = np.stack(gains)  # (P, N) dB
    best = np.argmax(g, axis=0)
    total_db = 10.0 * np.log10(np.power(10.0, g / 10.0).sum(0))
    total_db = total_db + _shadowing(rng, cfg).ravel()
    if cfg.no_path_below_db is not None:
        total_db = np.where(total_db < cfg.no_path_below_db, codec.GAIN_DB_MIN, total_db)
    arr = np.stack(arrivals)[best, np.arange(grid.shape[0])]  # (N, 2)
    norm = np.sqrt((arr**2).sum(1))
    sine = np.where(norm > 1e-6, -arr[:, 0] / np.maximum(norm, 1e-6), 0.0)
    total_db[bldg] = np.nan
    pixels = codec.encode(
        total_db.reshape(n, n), np.clip(sine, -1, 1).reshape(n, n), scene.building, clip_gain=True
    )
    return Tile(pixels, np.array([bs[0], bs[1], bs_h], dtype=np.float32))


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _building_gradient(building: np.ndarray) -> np.ndarray:
    """Direction towards nearby building mass, (2, H, W) in (row, col)."""
    b = np.pad(building.astype(np.float32), 2, mode="edge")
    gr = b[4:, 2:-2] + b[3:-1, 2:-2] - b[1:-3, 2:-2] - b[:-4, 2:-2]
    gc = b[2:-2, 4:] + b[2:-2, 3:-1] - b[2:-2, 1:-3] - b[2:-2, :-4]
    return np.stack([gr, gc])


# --- Regions and batch generation -------------------------------------------------------------
#
# A procedural "region" is a city with its own style: its own density, block size and building
# heights, drawn from the region's seed. Tiles of one region share that style; different
# regions differ, which is what a region-held-out evaluation needs.

_SPLIT_CODES = {"train": 0, "eval": 1}


def region_name(split: str, index: int) -> str:
    return f"proc-{split}-{index:03d}"


def region_config(cfg: ProceduralConfig, split: str, index: int, seed: int) -> ProceduralConfig:
    """The style of one procedural region: narrowed ranges inside the base config's."""
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index, 0xC17])
    d_lo, d_hi = cfg.block_density
    density = rng.uniform(d_lo, d_hi)
    p_lo, p_hi = cfg.block_pitch
    pitch = rng.uniform(p_lo, p_hi)
    width = (p_hi - p_lo) / 4
    return dataclasses.replace(
        cfg,
        block_density=(max(d_lo, density - 0.1), min(d_hi, density + 0.1)),
        block_pitch=(max(p_lo, pitch - width), min(p_hi, pitch + width)),
        building_height_median_m=cfg.building_height_median_m * float(np.exp(0.35 * rng.standard_normal())),
    )


def tile_rng(seed: int, split: str, region: int, tile: int) -> np.random.Generator:
    """The generator of one tile: independent of worker count, sharding and order."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], region, tile + 1])


def _generate_chunk(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    cfg, split, region, seed, start, count = args
    rcfg = region_config(cfg, split, region, seed)
    tiles = [generate_tile(tile_rng(seed, split, region, i), rcfg) for i in range(start, start + count)]
    return np.stack([t.pixels for t in tiles]), np.stack([t.tx for t in tiles])


def generate_region(
    cfg: ProceduralConfig,
    split: str,
    region: int,
    count: int,
    *,
    seed: int = 0,
    workers: int = 1,
    chunk: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """`count` tiles of one region: pixels (count, 2, H, W) and transmitters (count, 3).

    With workers > 1 the chunks run in a process pool; the result is identical to workers = 1.
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
    if count < 1 or workers < 1:
        raise ValueError(f"count and workers must be >= 1, got count={count}, workers={workers}")
    jobs = [(cfg, split, region, seed, s, min(chunk, count - s)) for s in range(0, count, chunk)]
    if workers == 1 or len(jobs) == 1:
        parts = [_generate_chunk(j) for j in jobs]
    else:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            parts = list(pool.map(_generate_chunk, jobs))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
