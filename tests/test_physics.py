"""The physics channels of ckm-site/2 (runtime.physics) against geometry they can be checked on,
against a brute-force ray march, and against ray-traced tiles."""

import math
from pathlib import Path

import numpy as np
import pytest

from ckm_edge.runtime import codec, condition, physics
from ckm_edge.training.dataset import Dataset

ROOT = Path(__file__).resolve().parents[1]


def ray_march(building: np.ndarray, bs: np.ndarray, heights: np.ndarray | None = None, rx_height_m: float = 1.5,
              cell_size_m: float = 2.0, step: float = 0.05) -> np.ndarray:
    """The reference: every cell's straight line to the station sampled every `step` cells; blocked by a
    building cell (of unknown height) on the way, or by a roof above the ray when heights are given."""
    h, w = building.shape
    out = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            if building[i, j]:
                continue
            p = np.array([i + 0.5, j + 0.5])
            d = math.hypot(*(p - bs[:2]))
            t = np.arange(0.0, 1.0, step / max(d, 1e-9))[1:]
            pts = p[None] + t[:, None] * (bs[:2] - p)[None]
            inside = (pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)
            r, c = pts[inside, 0].astype(int), pts[inside, 1].astype(int)
            if heights is None:
                out[i, j] = not building[r, c].any()
            else:
                ray = rx_height_m + t[inside] * (bs[2] - rx_height_m)
                out[i, j] = not (building[r, c] & (heights[r, c] > ray)).any()
    return out


def test_open_square_sees_everything_with_free_space_gain_and_direct_aoa():
    bs = np.array([10.3, 20.7, 25.0])
    vis = physics.los_visibility(np.zeros((32, 48), bool), bs)
    assert vis.shape == (32, 48) and np.all(vis == 1.0)
    sine = physics.direct_aoa_sine(bs, (32, 48))
    gain = physics.free_space_gain_db(bs, (32, 48), cell_size_m=2.0, carrier_hz=3.5e9)
    # cell (30, 5): the station is north-east of it, 20.2 rows up and 15.2 columns right
    dr, dc = 30.5 - bs[0], 5.5 - bs[1]
    azimuth = math.atan2(dr, -dc)  # towards the station: east -dc, north +dr (row 0 is north)
    assert sine[30, 5] == pytest.approx(math.sin(azimuth), abs=1e-6) and sine[30, 5] > 0
    d = math.sqrt((dr**2 + dc**2) * 4.0 + (25.0 - 1.5) ** 2)
    assert gain[30, 5] == pytest.approx(-20 * math.log10(4 * math.pi * d * 3.5e9 / 299_792_458.0), abs=1e-3)
    assert np.abs(sine).max() <= 1.0 and gain.max() == gain[10, 20]  # the closest cell is the strongest


def test_a_wall_casts_a_shadow_and_a_higher_station_sees_over_it():
    building = np.zeros((40, 40), bool)
    building[10:30, 20] = True  # a north-south wall, one cell thick
    bs = np.array([20.5, 10.5, 20.0])
    vis = physics.los_visibility(building, bs)
    assert np.all(vis[:, :20] == 1.0)  # the station's side
    assert np.all(vis[18:23, 21:] == 0.0)  # straight behind the wall
    assert vis[0, 25] == 1.0 and vis[39, 25] == 1.0  # past the wall's ends
    assert np.all(vis[building] == 0.0)
    # with heights: a 10 m wall, the station 20 m up; a receiver 1.5 m up at distance d behind the
    # wall (wall at 10 cells) is seen when the ray clears the roof: 20 - 18.5 * 10 / d > 10, d > 18.5 cells
    heights = np.where(building, 10.0, 0.0)
    vis_h = physics.los_visibility(building, bs, heights=heights)
    assert np.all(vis_h[20, 21:28] == 0.0)  # d = 11 .. 17 cells: still shadowed
    assert np.all(vis_h[20, 30:] == 1.0)  # d >= 20 cells: over the roof
    tall = physics.los_visibility(building, np.array([20.5, 10.5, 9.0]), heights=heights)
    assert np.all(tall[18:23, 21:] == 0.0)  # a station below the roof sees nothing behind it


def test_mirrored_scene_gives_mirrored_channels():
    rng = np.random.default_rng(4)
    building = rng.random((48, 48)) < 0.12
    bs = np.array([13.2, 30.6, 18.0])
    building[13, 30] = False
    vis = physics.los_visibility(building, bs)
    sine = physics.direct_aoa_sine(bs, building.shape)
    gain = physics.free_space_gain_db(bs, building.shape, cell_size_m=2.0, carrier_hz=3.5e9)
    # an up-down mirror: row r -> 48 - r for the station, rows reversed for the maps; the sine changes sign
    flipped_bs = np.array([48 - bs[0], bs[1], bs[2]])
    assert np.array_equal(physics.los_visibility(building[::-1], flipped_bs), vis[::-1])
    np.testing.assert_allclose(physics.direct_aoa_sine(flipped_bs, building.shape), -sine[::-1], atol=1e-6)
    np.testing.assert_allclose(physics.free_space_gain_db(flipped_bs, building.shape, cell_size_m=2.0,
                                                          carrier_hz=3.5e9), gain[::-1], atol=1e-4)
    # a left-right mirror keeps the sine
    flipped_bs = np.array([bs[0], 48 - bs[1], bs[2]])
    assert np.array_equal(physics.los_visibility(building[:, ::-1], flipped_bs), vis[:, ::-1])
    np.testing.assert_allclose(physics.direct_aoa_sine(flipped_bs, building.shape), sine[:, ::-1], atol=1e-6)


@pytest.mark.parametrize("bs", [[20.4, 17.9, 25.0], [-15.0, 60.3, 30.0], [33.3, -8.2, 12.0]],
                         ids=["inside", "north-east outside", "west outside"])
def test_visibility_agrees_with_a_brute_force_ray_march(bs):
    """Random blocks of buildings; shadow edges are soft (three rays per cell), so a cell counts as seen above 1/2."""
    rng = np.random.default_rng(int(abs(bs[0]) * 10))
    building = np.zeros((40, 40), bool)
    for _ in range(14):
        r, c = rng.integers(0, 36, 2)
        building[r : r + rng.integers(1, 5), c : c + rng.integers(1, 5)] = True
    bs = np.array(bs)
    if 0 <= bs[0] < 40 and 0 <= bs[1] < 40:
        building[int(bs[0]), int(bs[1])] = False
    ref = ray_march(building, bs)
    vis = physics.los_visibility(building, bs)
    outdoor = ~building
    assert ((vis > 0.5) == ref)[outdoor].mean() > 0.985
    # away from shadow edges (cells whose 3x3 neighbourhood agrees in the reference) it is exact
    pad = np.pad(ref, 1, mode="edge")
    interior = np.all([pad[1 + a : 41 + a, 1 + b : 41 + b] == ref for a in (-1, 0, 1) for b in (-1, 0, 1)], axis=0)
    assert ((vis > 0.5) == ref)[outdoor & interior].mean() > 0.995
    # with heights (a station above some roofs), against the ray march over the roofs
    heights = np.where(building, rng.uniform(5.0, 40.0, building.shape), 0.0)
    ref_h = ray_march(building, bs, heights)
    vis_h = physics.los_visibility(building, bs, heights=heights)
    assert ((vis_h > 0.5) == ref_h)[outdoor].mean() > 0.985
    assert ref_h[outdoor].mean() >= ref[outdoor].mean()  # roofs below the ray let more through


def test_bad_geometry_is_refused_by_name():
    with pytest.raises(physics.GeometryError, match="base station"):
        physics.los_visibility(np.zeros((8, 8), bool), np.array([1.0, np.nan, 20.0]))
    with pytest.raises(physics.GeometryError, match="building layout"):
        physics.los_visibility(np.zeros((2, 8, 8), bool), np.array([1.0, 1.0, 20.0]))
    with pytest.raises(physics.GeometryError, match="heights"):
        physics.los_visibility(np.zeros((8, 8), bool), np.array([1.0, 1.0, 20.0]), heights=np.zeros((4, 4)))
    with pytest.raises(physics.GeometryError, match="cell_size_m"):
        physics.free_space_gain_db(np.array([1.0, 1.0, 20.0]), (8, 8), cell_size_m=0.0, carrier_hz=3.5e9)


def test_line_of_sight_cells_of_ray_traced_tiles_agree_with_the_direct_path():
    """In the cells the channels call line of sight, the traced AoA is the direct path's and the traced
    gain is near free space (tiles whose station stands in the tile: outside it, buildings the layout
    does not show may block the way)."""
    data = Dataset(ROOT / "datasets" / "sionna-rt-small")
    aoa_err, gain_err, nlos_gap = [], [], []
    for split in ("train", "eval"):
        tiles, tx = data.split(split).take(np.arange(len(data.split(split)))), data.split(split).transmitters()
        for px, bs in zip(tiles, tx):
            if not (0 <= bs[0] < 128 and 0 <= bs[1] < 128):
                continue
            building = codec.building_mask(px)
            maps = codec.decode(px)
            reached = ~building & (maps.gain_db > codec.PATH_GAIN_DB_MIN)
            vis = physics.los_visibility(building, bs)
            los, nlos = reached & (vis > 0.99), reached & (vis < 0.01)
            sine = physics.direct_aoa_sine(bs, building.shape)
            gain = physics.free_space_gain_db(bs, building.shape, cell_size_m=2.0, carrier_hz=3.5e9)
            aoa_err.append((sine - maps.aoa_sine)[los])
            gain_err.append((maps.gain_db - gain)[los])
            nlos_gap.append((maps.gain_db - gain)[nlos])
    aoa_err, gain_err, nlos_gap = (np.concatenate(e) for e in (aoa_err, gain_err, nlos_gap))
    assert aoa_err.size > 5000
    assert np.sqrt(np.mean(aoa_err**2)) < 0.05  # the traced values spread ~0.6
    assert abs(np.median(gain_err)) < 1.0 and np.sqrt(np.mean(gain_err**2)) < 5.0
    assert np.median(nlos_gap) < -20.0  # out of sight, the traced gain is far below free space


def test_ckm_site_2_channels():
    building = np.zeros((32, 32), bool)
    building[8:24, 16] = True
    bs = np.array([16.5, 6.5, 20.0])
    cond = condition.site_condition(building, bs, (32, 32), encoding=condition.SITE_V2)
    assert cond.shape == (1, 10, 32, 32)
    np.testing.assert_array_equal(cond[0, :5], condition.site_condition(building, bs, (32, 32))[0])  # ckm-site/1's
    np.testing.assert_array_equal(cond[0, 5], physics.los_visibility(building, bs))
    sine = physics.direct_aoa_sine(bs, (32, 32))
    np.testing.assert_allclose(cond[0, 6], codec.AOA_OFFSET + codec.AOA_SCALE * sine, atol=1e-6)
    gain = physics.free_space_gain_db(bs, (32, 32), cell_size_m=2.0, carrier_hz=3.5e9)
    np.testing.assert_allclose(cond[0, 7] * codec.GAIN_DB_SPAN + codec.GAIN_DB_MIN, gain, atol=1e-3)
    # the station unknown: no physics; the layout unknown: no line of sight, the rest stays
    assert not condition.site_condition(building, None, (32, 32), encoding=condition.SITE_V2)[0, 2:].any()
    only_bs = condition.site_condition(None, bs, (32, 32), encoding=condition.SITE_V2)[0]
    assert not only_bs[5].any() and only_bs[6].min() >= codec.AOA_PIXEL_MIN - 1e-6 and only_bs[7].max() > 0
    # the package's geometry enters: a 4 m cell puts every cell twice as far
    coarse = condition.Encoding("ckm-site/2", 10, cell_size_m=4.0)
    far = condition.site_condition(None, bs, (32, 32), encoding=coarse)[0, 7]
    assert (far <= only_bs[7] + 1e-6).all() and far[0, 31] < only_bs[7, 0, 31]
    # dropout forgets the physics with the station, and the line of sight with the layout
    many = np.repeat(cond, 64, axis=0)
    dropped = condition.dropout(many, np.random.default_rng(0), 0.5, 0.5)
    no_bs = dropped[:, 3, 0, 0] == 0
    no_layout = dropped[:, 1, 0, 0] == 0
    assert no_bs.any() and no_layout.any() and not dropped[no_bs, 2:].any() and not dropped[no_layout, 5].any()
    assert (dropped[~no_bs & ~no_layout] == cond).all()


def test_training_crops_keep_the_whole_tiles_line_of_sight():
    """The line of sight a ckm-site/2 prior is trained on is the whole tile's, cropped and mirrored
    with the map: what the edge computes for the crop's cells given the whole tile."""
    from ckm_edge.training.trainer import augment, site_maps

    data = Dataset(ROOT / "datasets" / "sionna-rt-small")
    split = data.split("train")
    x, tx = split.take(np.arange(4)), split.transmitters()[:4]
    heights = np.where(codec.building_mask(x), 15.0, 0.0)
    heights[1] = np.nan  # a tile whose heights are unknown
    maps = np.stack([site_maps(t, b, h) for t, b, h in zip(x, tx, heights)])
    assert maps.shape == (4, 3, 128, 128) and np.isnan(maps[1, 1:]).all() and not np.isnan(maps[[0, 2, 3]]).any()
    assert (maps[0, 1] >= maps[0, 0] - 1e-6).mean() > 0.99  # over 15 m roofs a station sees more
    out, tx2, maps2 = augment(x, np.random.default_rng(3), crop=64, flips=True, tx=tx, maps=maps)
    for k in range(4):
        # find where the crop came from (with its mirror) by matching the gain channel
        found = False
        for rows in (1, -1):
            for cols in (1, -1):
                full = x[k, 0][::rows, ::cols]
                m = maps[k][:, ::rows, ::cols]
                for r in range(0, 65):
                    for c in range(0, 65):
                        if np.array_equal(full[r : r + 64, c : c + 64], out[k, 0]):
                            np.testing.assert_array_equal(m[:, r : r + 64, c : c + 64], maps2[k])
                            found = True
        assert found
    cond = tile_condition_of(out, tx2, maps2)
    np.testing.assert_array_equal(cond[[0, 2, 3], 5], maps2[[0, 2, 3], 1])  # over the roofs where known
    np.testing.assert_array_equal(cond[1, 5], maps2[1, 0])  # else over the layout
    assert (cond[[0, 2, 3], 9] == 1).all() and (cond[1, 8:] == 0).all()


def tile_condition_of(pixels, tx, maps):
    import torch

    from ckm_edge.training.objectives import tile_condition

    class Model:
        cond_channels = condition.SITE_V2.channels

    return tile_condition(Model(), torch.from_numpy(pixels), tx, visibility=maps[:, 0], visibility_heights=maps[:, 1],
                          heights=maps[:, 2])


def test_heights_channels_and_their_dropout():
    building = np.zeros((32, 32), bool)
    building[8:24, 16] = True
    bs = np.array([16.5, 6.5, 20.0])
    heights = np.where(building, 10.0, 0.0)
    cond = condition.site_condition(building, bs, (32, 32), encoding=condition.SITE_V2, heights=heights)[0]
    np.testing.assert_allclose(cond[8], heights / 50.0)
    assert (cond[9] == 1).all()
    np.testing.assert_array_equal(cond[5], physics.los_visibility(building, bs, heights=heights))
    flat = condition.site_condition(building, bs, (32, 32), encoding=condition.SITE_V2)[0]
    assert cond[5].sum() > flat[5].sum() and not flat[8:].any()  # a 20 m station sees over a 10 m wall
    with pytest.raises(condition.ConditionError, match="heights"):
        condition.site_condition(building, bs, (32, 32), encoding=condition.SITE_V2, heights=-heights - 1)
    many = np.repeat(cond[None], 200, axis=0)
    flat_vis = np.repeat(flat[None, 5], 200, axis=0)
    out = condition.dropout(many, np.random.default_rng(1), 0.3, 0.3, 0.5, flat_visibility=flat_vis)
    kept_layout = out[:, 1, 0, 0] == 1
    kept_bs = out[:, 3, 0, 0] == 1
    kept_heights = out[:, 9, 0, 0] == 1
    assert not (kept_heights & ~kept_layout).any()  # heights go with the layout
    assert 0.2 < kept_heights[kept_layout].mean() < 0.8
    swapped = kept_layout & kept_bs & ~kept_heights
    assert swapped.any() and (out[swapped, 5] == flat[5]).all() and not out[swapped, 8:].any()
    assert (out[kept_layout & kept_bs & kept_heights, 5] == cond[5]).all()


def test_physics_benchmark_writes_its_record(tmp_path):
    import json

    from ckm_edge.benchmarks.cli import main as bench_main

    data = ROOT / "datasets" / "sionna-rt-small"
    assert bench_main(["--results", str(tmp_path / "results"), "physics", "--data", str(data), "--limit", "2", "--repeats", "1"]) == 0
    record = json.loads((tmp_path / "results" / "physics-cpu.json").read_text())
    res = record["results"]
    assert res["tiles"] == 4 and len(res["per_tile"]) == 4
    assert all(0 < res["timing_ms"][k]["median"] <= res["timing_ms"][k]["max"] for k in res["timing_ms"])
    inside = res["summary"].get("station in the tile")
    assert inside is not None and inside["aoa_rmse_los"] < 0.05 < inside["traced_aoa_spread"]
    assert "physics-cpu" in (tmp_path / "RESULTS.md").read_text()
