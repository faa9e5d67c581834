import numpy as np
import pytest
from PIL import Image

from ckm_edge.runtime import codec
from ckm_edge.training import ckmimagenet
from ckm_edge.training.data_cli import main as data_main
from ckm_edge.training.dataset import Dataset


def _png(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L").save(path)


def _aoa_png_value(theta_deg):
    return np.round((np.asarray(theta_deg) + 200.0) / 380.0 * 255.0)


def _make_tree(root, region="Beijing", split="train", names=("1", "2")):
    for name in names:
        gain = np.full((128, 128), 128, np.uint8)
        gain[:10, :10] = 0
        theta = np.linspace(-180, 180, 128)[None, :].repeat(128, 0)
        aoa = _aoa_png_value(theta)
        aoa[:10, :10] = 0
        _png(root / "CKM_gain_128" / split / region / f"{name}.png", gain)
        _png(root / "CKM_AoA_128" / split / f"{region}_AoA" / f"{name}_AoA.png", aoa)


def test_conversion_to_the_sine_encoding(tmp_path):
    _make_tree(tmp_path)
    _make_tree(tmp_path, region="Shanghai", split="eval", names=("7",))
    pairs = ckmimagenet.find_pairs(tmp_path, "train")
    assert [(p.region, p.gain_png.name, p.aoa_png.name) for p in pairs] == [
        ("Beijing", "1.png", "1_AoA.png"),
        ("Beijing", "2.png", "2_AoA.png"),
    ]
    px = ckmimagenet.load_pair(pairs[0])
    building = codec.building_mask(px)
    assert building[:10, :10].all() and building.sum() == 100
    np.testing.assert_allclose(px[0][~building], 128 / 255, atol=1e-6)
    # Expected: the 8-bit AoA value decoded to an angle, then its sine in the codec's encoding.
    stored = _aoa_png_value(np.linspace(-180, 180, 128)) / 255.0
    expected = 0.35 * np.sin(np.deg2rad(stored * 380 - 200)) + 0.65
    np.testing.assert_allclose(px[1, 20], expected, atol=1e-6)
    # theta = 90 deg -> sine 1 -> pixel 1; theta = 0 -> pixel 0.65 (up to 8-bit rounding).
    assert px[1, 20].max() == pytest.approx(1.0, abs=1e-3)


def test_unmatched_files_are_named(tmp_path):
    _make_tree(tmp_path)
    (tmp_path / "CKM_AoA_128" / "train" / "Beijing_AoA" / "2_AoA.png").unlink()
    with pytest.raises(ckmimagenet.CKMImageNetError, match=r"2\.png has no AoA partner"):
        ckmimagenet.find_pairs(tmp_path, "train")


def test_wrong_pixel_format_is_named(tmp_path):
    _make_tree(tmp_path, names=("1",))
    rgb = tmp_path / "CKM_gain_128" / "train" / "Beijing" / "1.png"
    Image.new("RGB", (128, 128)).save(rgb)
    pair = ckmimagenet.find_pairs(tmp_path, "train")[0]
    with pytest.raises(ckmimagenet.CKMImageNetError, match=r"1\.png: expected an 8-bit grey PNG"):
        ckmimagenet.load_pair(pair)


def test_convert_command_keeps_regions_apart(tmp_path):
    _make_tree(tmp_path / "src")
    _make_tree(tmp_path / "src", region="Shanghai", split="eval", names=("7",))
    assert data_main(["convert-ckmimagenet", "--root", str(tmp_path / "src"), "--out", str(tmp_path / "ds")]) == 0
    ds = Dataset(tmp_path / "ds")
    ds.verify()
    assert ds.split("train").regions == ["Beijing"] and len(ds.split("train")) == 2
    assert ds.split("eval").regions == ["Shanghai"] and len(ds.split("eval")) == 1
    assert ds.manifest["source"] == "ckmimagenet"
