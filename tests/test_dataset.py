import json

import numpy as np
import pytest

from ckm_edge.training.dataset import Dataset, DatasetError, DatasetWriter


def _write(root, pixels, tx, shard_size=3):
    with DatasetWriter(root, "procedural", 128, 2.0, 3.5e9, {"seed": 123}, shard_size=shard_size) as w:
        w.add("train", "city-a", pixels[:5], tx[:5])
        w.add("train", "city-b", pixels[5:6], tx[5:6])
        w.add("eval", "city-c", pixels[6:], tx[6:])
    return Dataset(root)


def test_round_trip_with_shards(tmp_path, proc_tiles):
    pixels, tx = proc_tiles
    ds = _write(tmp_path / "ds", pixels, tx)
    ds.verify()
    train, evl = ds.split("train"), ds.split("eval")
    assert len(train) == 6 and len(evl) == 2
    assert train.regions == ["city-a", "city-b"] and evl.regions == ["city-c"]
    np.testing.assert_array_equal(train.take(np.arange(6)), pixels[:6])
    np.testing.assert_array_equal(train[-1], pixels[5])
    np.testing.assert_array_equal(train.take(train.region_indices("city-b")), pixels[5:6])
    np.testing.assert_array_equal(train.transmitters(), tx[:6])
    m = ds.manifest
    assert m["count"] == 8 and m["source"] == "procedural" and m["carrier_hz"] == 3.5e9
    assert [s["count"] for s in m["splits"]["train"]["shards"]] == [3, 2, 1]
    batches = list(train.batches(4, rng=np.random.default_rng(0)))
    assert [len(b) for b in batches] == [4, 2]
    seen = np.concatenate(batches)
    assert sorted(seen[:, 0].sum(axis=(1, 2))) == pytest.approx(sorted(pixels[:6, 0].sum(axis=(1, 2))))


def test_splits_must_be_region_disjoint(tmp_path, proc_tiles):
    pixels, _ = proc_tiles
    w = DatasetWriter(tmp_path / "ds", "procedural")
    w.add("train", "city-a", pixels[:1])
    with pytest.raises(DatasetError, match="already in split 'train'"):
        w.add("eval", "city-a", pixels[1:2])


def test_reader_rejects_overlapping_regions(tmp_path, proc_tiles):
    pixels, tx = proc_tiles
    ds = _write(tmp_path / "ds", pixels, tx)
    manifest = ds.manifest
    manifest["splits"]["eval"]["regions"].append("city-a")
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="region 'city-a' is in splits"):
        Dataset(tmp_path / "ds")


def test_verify_detects_corruption(tmp_path, proc_tiles):
    pixels, tx = proc_tiles
    ds = _write(tmp_path / "ds", pixels, tx)
    shard = tmp_path / "ds" / ds.manifest["splits"]["eval"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="does not match its checksum"):
        ds.verify()


def test_bad_input_is_refused_and_nothing_is_overwritten(tmp_path, proc_tiles):
    pixels, tx = proc_tiles
    _write(tmp_path / "ds", pixels, tx)
    with pytest.raises(DatasetError, match="already holds a dataset"):
        DatasetWriter(tmp_path / "ds", "procedural")
    w = DatasetWriter(tmp_path / "other", "procedural")
    with pytest.raises(DatasetError, match="split must be one of"):
        w.add("test", "x", pixels[:1])
    with pytest.raises(DatasetError, match="region name"):
        w.add("train", "../escape", pixels[:1])
    with pytest.raises(DatasetError, match=r"tiles must be \(B, 2, 128, 128\)"):
        w.add("train", "x", pixels[:1, :, :64, :64])
    bad = pixels[:1].copy()
    bad[0, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        w.add("train", "x", bad)
    with pytest.raises(DatasetError, match="manifest.json is missing"):
        Dataset(tmp_path / "other")
    with pytest.raises(DatasetError, match="split 'test' not in"):
        Dataset(tmp_path / "ds").split("test")


def test_building_heights_round_trip_where_known(tmp_path, proc_tiles):
    from ckm_edge.runtime import codec
    from ckm_edge.training.dataset import Mixture

    pixels, tx = proc_tiles
    heights = np.where(codec.building_mask(pixels), np.linspace(3, 60, len(pixels))[:, None, None], 0.0)
    with DatasetWriter(tmp_path / "ds", "sionna-rt", 128, 2.0, 3.5e9, shard_size=3) as w:
        w.add("train", "city-a", pixels[:5], tx[:5], heights[:5])
        w.add("train", "city-b", pixels[5:6], tx[5:6])  # a source that records none
        with pytest.raises(DatasetError, match="heights"):
            w.add("eval", "city-c", pixels[6:], tx[6:], -heights[6:] - 1)
    train = Dataset(tmp_path / "ds").split("train")
    assert train.has_heights
    got = train.heights(np.array([4, 0, 5]))
    np.testing.assert_allclose(got[:2], heights[[4, 0]], rtol=1e-3)  # float16 on disk
    assert np.isnan(got[2]).all()
    shards = Dataset(tmp_path / "ds").manifest["splits"]["train"]["shards"]
    assert [bool(s.get("height_file")) for s in shards] == [True, True, False]
    mix = Mixture([(train, 2)])
    np.testing.assert_array_equal(mix.heights(np.array([6, 0])), train.heights(np.array([0, 0])))


def test_heights_from_a_ray_traced_surface():
    from ckm_edge.runtime import codec
    from ckm_edge.training.raytrace import building_heights

    gain = np.full((16, 16), -100.0)
    building = np.zeros((16, 16), bool)
    building[4:8, 4:10] = True
    pixels = codec.encode(np.where(building, np.nan, gain), np.where(building, np.nan, 0.0), building)
    slope = np.arange(16)[None, :] * 0.5 * np.ones((16, 1))  # terrain rising to the east
    surface = slope + np.where(building, 12.0, 0.0)
    h = building_heights(surface, pixels)
    assert (h[~building] == 0).all()
    np.testing.assert_allclose(h[building], 12.0, atol=1.6)  # the ground beside it, within the slope of a few cells
    assert abs(h[building].mean() - 12.0) < 0.3
