"""Calibration of the procedural generator against a reference dataset."""

import dataclasses
import json

import pytest

from ckm_edge.training import calibrate, procedural
from ckm_edge.training.data_cli import main as data_main
from ckm_edge.training.dataset import DatasetError, DatasetWriter


def _reference(root, cfg, regions=("ref-a", "ref-b"), split="train"):
    with DatasetWriter(root, "procedural", cfg.tile_size, cfg.cell_size_m, cfg.carrier_hz) as w:
        for i, region in enumerate(regions):
            pixels, tx = procedural.generate_region(cfg, "train", 10 + i, 12, seed=5)
            w.add(split, region, pixels, tx)
    return root


def test_calibration_moves_the_generator_towards_the_reference(tmp_path, monkeypatch):
    # A reference whose statistics differ from the defaults: denser, lossier, with no-path cells.
    target = dataclasses.replace(procedural.ProceduralConfig(), block_density=(0.8, 0.95),
                                 penetration_db_per_m=2.5, no_path_below_db=-150.0)
    ref = _reference(tmp_path / "ref", target)
    presets = tmp_path / "user" / "presets.json"
    monkeypatch.setenv("CKM_EDGE_PRESETS", str(presets))  # the user's presets file, not the package's
    shipped = procedural.PRESETS_FILE.read_bytes()
    code = data_main(["calibrate", str(ref), "--out", str(tmp_path / "rep"), "--trials", "8", "--tiles", "16",
                      "--save-preset", "fitted", "--preview", "2"])
    assert code == 0
    assert procedural.PRESETS_FILE.read_bytes() == shipped  # nothing written into the installed package
    assert "calibrated" in procedural.load_presets()  # shipped presets still read next to the user's
    report = json.loads((tmp_path / "rep" / "calibration.json").read_text())
    assert report["mismatch"]["total"] < report["baseline_mismatch"]["total"]
    assert (tmp_path / "rep" / "preview.png").stat().st_size > 0
    saved = json.loads(presets.read_text())["fitted"]
    cfg = procedural.ProceduralConfig.preset("fitted")
    assert cfg.no_path_below_db == saved["config"]["no_path_below_db"]
    assert "mismatch" in saved["note"]
    with pytest.raises(ValueError, match="unknown procedural preset"):
        procedural.ProceduralConfig.preset("nope")


def test_calibration_never_uses_held_out_or_eval_data(tmp_path):
    ref = _reference(tmp_path / "held", procedural.ProceduralConfig(), regions=("munich", "florence"))
    with pytest.raises(DatasetError, match="held-out"):
        calibrate.reference_statistics(ref)
    with pytest.raises(DatasetError, match="training split only"):
        calibrate.reference_statistics(ref, "eval")
