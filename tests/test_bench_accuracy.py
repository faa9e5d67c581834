"""The accuracy benchmark (benchmarks/accuracy.py) on the tiny package: real constructions, real baselines."""

import numpy as np
import pytest
import torch

from ckm_edge.benchmarks import accuracy, classical
from ckm_edge.runtime import codec, tasks


def test_accuracy_tables_cover_every_task_and_method(tiny_package, tiny_prior, tmp_path):
    import dataclasses

    from ckm_edge.training.unet import PRESETS, EndToEndModel

    _, _, _, held = tiny_prior
    tiles = held[:2]
    # A single-configuration baseline for ipbox only (untrained is fine: the table must show it).
    torch.manual_seed(0)
    unet = dataclasses.replace(PRESETS["tiny"], in_channels=3, time_conditional=False)
    net = EndToEndModel(unet)
    torch.save({"format": "ckm-model", "meta": {"kind": "baseline", "unet": unet.to_dict(), "tasks": ["ipbox"]},
                "weights": net.state_dict()}, tmp_path / "baseline-ipbox.pt")
    cfg = accuracy.AccuracyConfig(steps=4)
    lines = []
    results = accuracy.run(tiny_package.root, tmp_path, tiles, ("ipbox", "sr2", "jtqr", "trajectory"), cfg,
                           progress=lines.append)
    assert set(results) == {"ipbox", "sr2", "jtqr", "trajectory"} and len(lines) == 8
    assert set(results["ipbox"]) == {"foundation", "single", "nearest", "idw"}
    assert set(results["sr2"]) == {"foundation", "nearest"}  # bicubic; no IDW without a mask, no baseline
    for rows in results.values():
        for r in rows.values():
            assert len(r["gain_db"]) == 2 and all(np.isfinite(r["gain_db"])) and min(r["gain_db"]) >= 0
    # The classical row is exactly the classical method on the same observation.
    x = tiles[1]
    rng = np.random.default_rng([cfg.seed, 1])
    op = tasks.make_operator("sr2", rng, x[None])
    y = tasks.observe(op, x[None], rng, cfg.sigma)
    expect = codec.gain_rmse_db(classical.reconstruct(op, y, (1,) + x.shape), x[None])[0]
    assert results["sr2"]["nearest"]["gain_db"][1] == pytest.approx(float(expect), rel=1e-6)
    text = accuracy.markdown(results, "test", cfg)
    assert "| Paper: foundation model (CKMImageNet) | 10.08 | 7.92 | 3.48 | — |" in text
    assert "Single-configuration end-to-end (ours)" in text and "AoA-sine RMSE" in text


def test_accuracy_refuses_tiles_of_the_wrong_size(tiny_package, tmp_path):
    with pytest.raises(ValueError, match="wide"):
        accuracy.run(tiny_package.root, tmp_path, np.zeros((1, 2, 64, 64), np.float32), ("ipbox",),
                     accuracy.AccuracyConfig(steps=2))


def test_sweep_rows_and_best_zeta(tiny_package):
    from ckm_edge.benchmarks import sweep

    tiles = sweep.validation_tiles(1, tiny_package.tile_size)
    points = [sweep.Point(z, 3, "fp32", False) for z in (0.0, 13.0)] + [sweep.Point(13.0, 3, "fp32", True)]
    rows = sweep.run(tiny_package.root, points, ("iprandom",), tiles, progress=lambda line: None)
    assert len(rows) == 3 and all(np.isfinite(r["gain_db"]) for r in rows)
    text = sweep.markdown(rows, "sweep")
    assert "Best zeta by gain RMSE: iprandom" in text and "Jacobian-free" in text
    # zeta = 0 is the unconditional prior: it must not match the observation better than guidance.
    unguided, guided = rows[0]["gain_db"], rows[1]["gain_db"]
    assert guided <= unguided + 1e-6
