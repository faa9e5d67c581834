import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ckm_edge.benchmarks import procedural as bench_procedural
from ckm_edge.benchmarks import render, report

CKM_DATA = Path(sys.executable).with_name("ckm-data")


def _run(*args):
    return subprocess.run([str(CKM_DATA), *args], capture_output=True, text=True, timeout=300)


def test_generate_then_inspect_with_preview(tmp_path):
    out = _run("generate", "--out", str(tmp_path / "ds"), "--train-regions", "2", "--eval-regions", "1",
               "--tiles-per-region", "3", "--workers", "2")
    assert out.returncode == 0, out.stderr
    out = _run("inspect", str(tmp_path / "ds"), "--verify", "--preview", str(tmp_path / "p.png"), "--count", "3")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert summary["splits"]["train"]["count"] == 6 and summary["splits"]["eval"]["count"] == 3
    lo, hi = summary["splits"]["eval"]["outdoor_gain_db"]
    assert -250 <= lo < hi <= -50
    with Image.open(tmp_path / "p.png") as image:
        assert image.width > 500 and image.height > 250
        assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 100


def test_bad_input_exits_2_with_a_message(tmp_path):
    out = _run("inspect", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "manifest.json is missing" in out.stderr
    out = _run("generate", "--out", str(tmp_path / "x"), "--tiles-per-region", "0")
    assert out.returncode == 2 and "must be >= 1" in out.stderr


def test_demo_command(tmp_path):
    out = _run("demo", "--out", str(tmp_path), "--tiles", "2")
    assert out.returncode == 0, out.stderr
    assert "codec round trip" in out.stdout
    assert (tmp_path / "procedural_preview.png").is_file()


def test_benchmark_writes_json_and_regenerates_results(tmp_path):
    results = bench_procedural.run(tiles=4, workers=1)
    assert results["tiles"] == 4 and results["seconds"] > 0
    assert results["target_met"] == (results["seconds_per_1000"] < results["target_seconds_per_1000"])
    path = report.write_result("procedural-generator", "procedural", "ckm-bench procedural --tiles 4", results,
                               results_dir=tmp_path / "results")
    record = json.loads(path.read_text())
    assert record["machine"]["cores"] >= 1 and "numpy" in record["machine"]["libraries"] and record["results"] == results
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## procedural-generator" in text and render.section(record) in text and "Machine:" in text


def test_tile_from_a_dataset_split(tmp_path):
    """`ckm-data tile --from`: a tile of a dataset (here the shipped ray-traced held-out cities) as
    the npz `ckm-edge construct --truth` reads, with its base station."""
    from ckm_edge.training.dataset import Dataset

    out = _run("tile", "--from", "datasets/sionna-rt-small", "--index", "3", "--out", str(tmp_path / "t.npz"))
    assert out.returncode == 0 and "eval tile 3" in out.stdout, out.stderr
    split = Dataset("datasets/sionna-rt-small").split("eval")
    with np.load(tmp_path / "t.npz") as z:
        np.testing.assert_array_equal(z["pixels"], split[3])
        np.testing.assert_array_equal(z["tx"], split.transmitters()[3])
    bad = _run("tile", "--from", "datasets/sionna-rt-small", "--index", "8", "--out", str(tmp_path / "u.npz"))
    assert bad.returncode == 2 and "has 8 tile(s); --index 8" in bad.stderr and not (tmp_path / "u.npz").exists()


def test_results_notes_are_shown_under_their_record_and_marked_when_it_is_measured_again(tmp_path):
    """A record's hand-written notes (why a target was missed) appear under it in RESULTS.md; measured
    again, the record's notes are marked as written for the earlier one; the committed notes parse."""
    from ckm_edge.benchmarks import cli as bench_cli

    results = tmp_path / "results"
    results_md = tmp_path / "RESULTS.md"
    assert bench_cli.main(["--results", str(results), "report", "--notes", "procedural-generator"]) == 2  # no record
    measured = {"tiles": 1, "tile_size": 128, "workers": 1, "seconds": 0.1, "tiles_per_minute": 600,
                "target_seconds_per_1000": 60.0, "seconds_per_1000": 100.0, "target_met": False}
    report.write_result("procedural-generator", "procedural", "ckm-bench procedural", measured, results_dir=results)
    assert bench_cli.main(["--results", str(results), "report", "--notes", "procedural-generator"]) == 0
    notes = results / "procedural-generator.notes.md"
    assert "Notes" not in results_md.read_text()  # started, nothing written yet
    assert bench_cli.main(["--results", str(results), "report", "--notes", "procedural-generator"]) == 2  # never overwritten
    notes.write_text(notes.read_text().splitlines()[0] + "\nThe target was missed because of X.\n")
    assert bench_cli.main(["--results", str(results), "report"]) == 0
    text = results_md.read_text()
    assert "written by hand on this record" in text and "missed because of X" in text
    record = json.loads((results / "procedural-generator.json").read_text())
    record["date"] = "2099-01-01T00:00:00+00:00"  # measured again
    (results / "procedural-generator.json").write_text(json.dumps(record))
    report.regenerate(results, results_md)
    assert "on an earlier record of" in results_md.read_text() and "missed because of X" in results_md.read_text()
    notes.write_text("no header\n")
    assert bench_cli.main(["--results", str(results), "report"]) == 2  # a clear error, RESULTS.md left as it was
    assert "missed because of X" in results_md.read_text()
    for committed in Path("benchmarks/results").glob("*.notes.md"):  # the repository's own parse
        stem = committed.name.removesuffix(".notes.md")
        report.notes_markdown(committed.parent, json.loads((committed.parent / f"{stem}.json").read_text()))
