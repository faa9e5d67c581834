"""RESULTS.md is rendered from the stored records' data alone (benchmarks/render.py): the committed
report is what the renderer makes of the committed records, and a section's tables follow its data."""

import json
import shutil
from pathlib import Path

import pytest

from ckm_edge.benchmarks import render, report

RESULTS = Path("benchmarks/results")


def test_the_committed_report_is_the_renderer_over_the_committed_records(tmp_path):
    shutil.copytree(RESULTS, tmp_path / "results")  # the records and their hand-written notes
    out = report.regenerate(tmp_path / "results", tmp_path / "RESULTS.md")
    assert out.read_text() == Path("benchmarks/RESULTS.md").read_text()
    for path in RESULTS.glob("*.json"):
        record = json.loads(path.read_text())
        assert record["kind"] in render.SECTIONS
        # only the first accuracy records (before their data held what the section says) keep stored text
        assert ("markdown" in record) == (record["kind"] == "accuracy" and "results" not in record["results"]), path


def _rows(text: str, first_cell: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]


def test_a_section_has_a_table_row_per_measured_entry():
    row = lambda g, a: [{"gain_all": g, "aoa_all": a, "gain_unobs": 2 * g, "aoa_unobs": 2 * a, "seconds": 1.0}]
    by_task = {"ipbox": {"foundation": row(5.0, 0.1), "single": row(6.0, 0.2), "idw": row(5.5, 0.05)},
               "sr2": {"foundation": row(4.0, 0.1), "bicubic": row(9.0, 0.3)}}
    from ckm_edge.benchmarks import accuracy

    results = {"results": {"paper": by_task, "site": by_task}, "verdicts": accuracy.verdicts({"paper": by_task, "site": by_task}),
               "constructions": {}, "config": {"samplers": None, "precision": "fp32", "sigma": 0.01}, "tiles": 1,
               "data": "one tile", "validation": False, "package": "tiny 1.0.0", "checkpoints": "none"}
    text = render.section({"benchmark": "accuracy-x", "kind": "accuracy", "results": results})
    assert len(_rows(text, "ipbox")) == 2 * 3 and len(_rows(text, "sr2")) == 2 * 2  # per setting, a row per method
    assert len(_rows(text, "paper: foundation prior (ours)")) == 1  # the paper's rows for orientation

    levels = [{"clients": c, "requests": 10, "errors": 0, "retries": 0, "throughput_rps": 1.0, "p50_s": 0.1, "p95_s": 0.2,
               "p99_s": 0.3, "mean_batch_rows": None, "peak_rss_mib": None} for c in (1, 2, 4)]
    setup = {"server": "host:1", "task": "ipbox", "settings": None, "steps": 3, "precision": "fp32", "duration_s": 1.0,
             "retry": False}
    text = render.section({"benchmark": "grpc-load", "kind": "load",
                           "results": {"levels": levels, "max_batch": 8, "mix": "uniform", "setup": setup}})
    assert [len(_rows(text, c)) for c in (1, 2, 4)] == [1, 1, 1]


def test_a_record_of_an_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="kind 'teleport'"):
        render.section({"benchmark": "x", "kind": "teleport", "results": {}})
    with pytest.raises(ValueError, match="unknown record kind"):
        report.write_result("x", "teleport", "ckm-bench x", {}, results_dir=tmp_path)
