import dataclasses

import numpy as np
import pytest

from ckm_edge.runtime import codec
from ckm_edge.training import procedural


def test_tiles_are_valid_codec_maps(proc_tiles):
    pixels, tx = proc_tiles
    assert pixels.shape == (8, 2, 128, 128) and pixels.dtype == np.float32
    codec.check_pixels(pixels)
    building = codec.building_mask(pixels)
    # Buildings are 0 in both channels; outdoor AoA pixels are in [0.3, 1].
    assert (pixels[:, 0][building] == 0).all() and (pixels[:, 1][building] == 0).all()
    assert (pixels[:, 1][~building] >= 0.3).all()
    frac = building.mean(axis=(1, 2))
    assert ((frac > 0.02) & (frac < 0.7)).all(), frac
    assert tx.shape == (8, 3)
    for (r, c, h), b in zip(tx, building):
        assert not b[int(r), int(c)], "the base station must stand outdoors"
        assert 8.0 <= h <= 40.0


def test_deterministic_by_seed_and_independent_of_workers():
    cfg = procedural.ProceduralConfig()
    a, ta = procedural.generate_region(cfg, "eval", 1, 6, seed=7, workers=1, chunk=2)
    b, tb = procedural.generate_region(cfg, "eval", 1, 6, seed=7, workers=2, chunk=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta, tb)
    c, _ = procedural.generate_region(cfg, "eval", 1, 6, seed=8)
    assert not np.array_equal(a, c)


def test_regions_and_splits_differ():
    cfg = procedural.ProceduralConfig()
    assert procedural.region_config(cfg, "train", 0, 0) != procedural.region_config(cfg, "train", 1, 0)
    a, _ = procedural.generate_region(cfg, "train", 0, 2, seed=0)
    b, _ = procedural.generate_region(cfg, "eval", 0, 2, seed=0)
    assert not np.array_equal(a, b)


def test_gain_falls_off_with_distance_in_line_of_sight(proc_tiles):
    pixels, tx = proc_tiles
    rows, cols = np.mgrid[0:128, 0:128] + 0.5
    for px, (r, c, _) in zip(pixels, tx):
        dist = np.hypot(rows - r, cols - c)
        outdoor = px[1] > 0.15
        near = outdoor & (dist < 6)
        far = outdoor & (dist > 60)
        if near.any() and far.any():
            assert px[0][near].mean() > px[0][far].mean() + 0.05  # > 10 dB stronger near the BS


def test_aoa_sine_converges_on_the_base_station(proc_tiles):
    pixels, tx = proc_tiles
    for px, (r, c, _) in zip(pixels, tx):
        sine = (px[1] - codec.AOA_OFFSET) / codec.AOA_SCALE
        r, c = int(r), int(c)
        north = sine[max(r - 4, 0) : r - 1, c]  # cells above the BS see it to the south
        south = sine[r + 2 : r + 5, c]
        if north.size and (px[1, max(r - 4, 0) : r - 1, c] > 0.15).all():
            assert north.mean() < -0.8
        if south.size and (px[1, r + 2 : r + 5, c] > 0.15).all():
            assert south.mean() > 0.8


def test_shadows_exist_behind_buildings(proc_tiles):
    pixels, _ = proc_tiles
    gain_db = codec.decode(pixels).gain_db
    spread = np.nanpercentile(gain_db, 95, axis=(1, 2)) - np.nanpercentile(gain_db, 5, axis=(1, 2))
    assert (spread > 30).all(), spread


def test_config_validation():
    with pytest.raises(ValueError, match="tile_size"):
        procedural.ProceduralConfig(tile_size=15)
    with pytest.raises(ValueError, match="street_width"):
        procedural.ProceduralConfig(street_width=(3, 30), block_pitch=(18, 40))
    with pytest.raises(ValueError, match="carrier_hz"):
        procedural.ProceduralConfig(carrier_hz=0)
    with pytest.raises(ValueError, match="split"):
        procedural.generate_region(procedural.ProceduralConfig(), "test", 0, 1)


def test_other_tile_sizes():
    cfg = dataclasses.replace(procedural.ProceduralConfig(), tile_size=64, block_pitch=(12, 20), street_width=(2, 4))
    pixels, _ = procedural.generate_region(cfg, "train", 0, 2)
    assert pixels.shape == (2, 2, 64, 64)
