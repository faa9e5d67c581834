"""`ckm-bench shift` (benchmarks/shift.py) on the tiny site-aware package: real constructions,
real end-to-end checkpoint files, real classical fills, on observations none was tuned for."""

import numpy as np
import pytest
from test_bench_accuracy import _baseline_file

from ckm_edge.benchmarks import accuracy, render, shift, solvers
from ckm_edge.runtime import tasks

ROWS = ("jtqr-12", "trajectory", "box-then-sr2")  # rows a 32-cell tile takes: single present (sr2) and absent


@pytest.mark.slow  # ~3 min on 2 cores: three rows, both settings, twice (the journal's resume)
def test_every_row_has_a_verdict_and_says_what_a_network_cannot_take(tiny_site_package, tmp_path):
    pkg, _, tiles, tx = tiny_site_package
    held = accuracy.HeldOut(tiles[:1], tx[:1], "test tiles")
    _baseline_file(tmp_path / "baseline-multi.pt", list(tasks.PAPER_TASKS), False, 1)
    _baseline_file(tmp_path / "baseline-sr2.pt", ["sr2"], False, 2)
    cfg = shift.ShiftConfig(rows=ROWS)
    out = shift.run(pkg.root, tmp_path, held, cfg, progress=lambda *_: None, journal=tmp_path / "j.jsonl")
    assert set(out["rows"]) == set(ROWS) and set(out["verdicts"]) == {"paper", "site"}
    for row in ROWS:
        paper, site = out["rows"][row]["paper"], out["rows"][row]["site"]
        assert np.isfinite(paper["foundation"][0]["gain_all"]) and np.isfinite(site["foundation"][0]["gain_all"])
        assert "gain_all" in paper["multi"][0] and "cannot" in site["multi"][0]  # no site-aware multi checkpoint
        assert ("gain_all" in paper["single"][0]) == (shift.ROWS[row].nearest == "sr2")
        assert any(m not in ("foundation", "single", "multi") for m in paper)  # a classical fill that fits
        assert out["verdicts"]["paper"][row]["multi"] is not None and out["verdicts"]["site"][row]["multi"] is None
    assert out["summary"]["paper"]["multi_ran"] == len(ROWS) and out["summary"]["site"]["multi_ran"] == 0

    # the composed row: the foundation's construction is the default for the composed operator, and
    # the best classical fill is scored on the very observation the foundation saw
    op, y, unobs = _problem(held, "box-then-sr2", cfg)
    fills = solvers.classical_methods("box-then-sr2", op, y, held.tiles[0].shape, None)
    for name, fill in fills.items():
        assert out["rows"]["box-then-sr2"]["paper"][name][0] == solvers.metrics(fill, held.tiles[0], unobs)

    again = shift.run(pkg.root, tmp_path, held, cfg, progress=lambda *_: None, journal=tmp_path / "j.jsonl")
    assert again["rows"] == out["rows"]  # resumed from the journal, nothing constructed twice

    record = {"benchmark": "shift-test", "kind": "shift",
              "results": {"config": vars(cfg), "tiles": 1, "data": "test tiles", "package": "tiny-site 1.0.0",
                          "checkpoints": str(tmp_path), **out}}
    text = render.section(record)
    for row in ROWS:
        assert sum(line.startswith(f"| {row}: ") for line in text.splitlines()) == 2  # one per setting
    assert "cannot run: no site-aware multi-configuration checkpoint" in text


def _problem(held, row, cfg):
    x = held.tiles[0]
    rng = np.random.default_rng([cfg.seed, 0])
    s = shift.ROWS[row]
    op = s.draw(rng, x[None])
    y = tasks.observe(op, x[None], rng, s.sigma)
    return op, y, s.unobserved(op, x[None])[0]


def test_unknown_rows_and_mismatched_tiles_are_refused(tiny_site_package, tmp_path):
    pkg, _, tiles, tx = tiny_site_package
    with pytest.raises(ValueError, match="unknown shift row"):
        shift.run(pkg.root, tmp_path, accuracy.HeldOut(tiles[:1], tx[:1], "t"), shift.ShiftConfig(rows=("teleport",)))
    wide = np.zeros((1, 2, 64, 64), np.float32)
    with pytest.raises(ValueError, match="64 wide"):
        shift.run(pkg.root, tmp_path, accuracy.HeldOut(wide, None, "t"), shift.ShiftConfig(rows=("sr4",)))
