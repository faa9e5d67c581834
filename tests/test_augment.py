"""Augmentation against geometry: line-of-sight cells keep pointing at the (moved) base station."""

import numpy as np
import pytest

from ckm_edge.runtime import codec
from ckm_edge.training import augment, procedural


def _los_sine(tx, shape):
    """sin(theta) of the direction from every cell centre (i + 0.5, j + 0.5) to the BS at tx (row, col)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    dn, de = -(tx[0] - rows), tx[1] - cols  # north is -row
    return dn / np.maximum(np.hypot(dn, de), 1e-9)


@pytest.mark.parametrize("name", augment.TRANSFORMS)
def test_line_of_sight_cells_still_point_at_the_moved_base_station(name):
    tile = procedural.generate_tile(np.random.default_rng(3), procedural.ProceduralConfig(tile_size=64))
    pixels, tx = tile.pixels, tile.tx
    outdoor = ~codec.building_mask(pixels)
    sine = (pixels[1] - codec.AOA_OFFSET) / codec.AOA_SCALE
    los = outdoor & (np.abs(sine - _los_sine(tx, sine.shape)) < 1e-4)  # cells whose strongest path is direct
    assert los.sum() > 100
    out, tx2 = augment.apply(pixels, name, tx)
    moved = {"identity": los, "flip_cols": los[:, ::-1], "flip_rows": los[::-1], "rot180": los[::-1, ::-1]}[name]
    sine2 = (out[1] - codec.AOA_OFFSET) / codec.AOA_SCALE
    np.testing.assert_allclose(sine2[moved], _los_sine(tx2, sine.shape)[moved], atol=2e-4)
    np.testing.assert_array_equal(codec.building_mask(out), {"identity": lambda b: b, "flip_cols": lambda b: b[:, ::-1],
                                                             "flip_rows": lambda b: b[::-1],
                                                             "rot180": lambda b: b[::-1, ::-1]}[name](~outdoor))
    assert sorted(out[0].ravel()) == pytest.approx(sorted(pixels[0].ravel()))  # the gain only moves
    assert out.min() >= 0 and out.max() <= 1


def test_quarter_turns_are_refused_with_the_reason():
    pixels = np.zeros((2, 8, 8), np.float32)
    for name in augment.NOT_REPRESENTABLE:
        with pytest.raises(ValueError, match="cos\\(theta\\)"):
            augment.apply(pixels, name)
    # and why: a quarter turn maps sin to +-cos, so two directions with one sine come out different
    theta = np.radians([30.0, 150.0])
    assert np.sin(theta[0]) == pytest.approx(np.sin(theta[1])) and np.cos(theta[0]) != pytest.approx(np.cos(theta[1]))
    with pytest.raises(ValueError, match="unknown transform"):
        augment.apply(pixels, "shear")


def test_a_batch_and_random_draws():
    tiles, tx = procedural.generate_region(procedural.ProceduralConfig(tile_size=32), "train", 0, 3, seed=1)
    out, tx2 = augment.apply(tiles, "flip_rows", tx)
    assert out.shape == tiles.shape and np.allclose(tx2[:, 0], 32 - tx[:, 0]) and np.allclose(tx2[:, 1:], tx[:, 1:])
    again, tx3 = augment.apply(out, "flip_rows", tx2)
    np.testing.assert_allclose(again, tiles, atol=1e-6)  # an involution
    np.testing.assert_allclose(tx3, tx, atol=1e-5)
    seen = {augment.random_transform(np.random.default_rng(s), tiles[0])[0].tobytes() for s in range(40)}
    assert len(seen) == 4


def test_ray_traced_transmitters_share_the_procedural_cell_convention():
    """The shipped ray-traced tiles (written with cell centres at whole numbers) read back in the
    cell-corner convention: near the base station, cells whose AoA sine is geometric line of sight
    from (i + .5, j + .5) are many more than with the old half-cell offset."""
    from pathlib import Path

    from ckm_edge.training.dataset import Dataset

    split = Dataset(Path(__file__).parents[1] / "datasets" / "sionna-rt-small").split("eval")
    pixels, tx = split.take(np.arange(len(split))), split.transmitters()
    hits = {0.0: 0, -0.5: 0}
    for p, t in zip(pixels, tx):
        if not (0 <= t[0] < p.shape[1] and 0 <= t[1] < p.shape[2]):
            continue
        outdoor = ~codec.building_mask(p)
        sine = (p[1] - codec.AOA_OFFSET) / codec.AOA_SCALE
        rows, cols = np.mgrid[0 : p.shape[1], 0 : p.shape[2]] + 0.5
        near = outdoor & (np.hypot(rows - t[0], cols - t[1]) > 3)
        for shift in hits:
            hits[shift] += int((near & (np.abs(sine - _los_sine(t[:2] + shift, sine.shape)) < 2e-3)).sum())
    assert hits[0.0] > 100 and hits[0.0] > 2 * hits[-0.5], hits
