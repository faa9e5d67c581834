"""`ckm-bench sites` end to end on the tiny package: a real server process with a SQLite store,
drive tests over gRPC, fresh constructions beside the incremental ones, QueryPoints load, and the
record rendered into RESULTS.md."""

import shutil

import numpy as np
import pytest

from ckm_edge.benchmarks import render, report, sites
from ckm_edge.benchmarks.accuracy import HeldOut
from ckm_edge.runtime import codec, tasks


@pytest.mark.slow  # server processes, 6 versions, fresh constructions beside them, load runs: ~2 min
def test_the_sites_benchmark_measures_a_stream_and_renders(tiny_package, tiny_prior, tmp_path):
    *_, evl = tiny_prior
    repo = tmp_path / "repository"
    shutil.copytree(tiny_package.root, repo / "tiny" / "1.0.0")
    held = HeldOut(evl[:2], None, "tiny eval tiles")
    cfg = sites.SitesConfig(batch=24, batches=3, query_clients=(1, 2), query_seconds=1.0, threads=1, query_repeats=2)
    out = sites.run(repo, held, cfg, progress=lambda s: None, workdir=tmp_path / "work")
    assert len(out["tiles"]) == 2 and all(len(t["versions"]) == 3 for t in out["tiles"])
    first, later = out["tiles"][0]["versions"][0], out["tiles"][0]["versions"][1:]
    assert not first["map"]["incremental"] and all(v["map"]["incremental"] for v in later)
    assert all(v["map"]["evaluations"] <= v["fresh"]["evaluations"] / 2 for v in later)
    assert np.isfinite([v["map"]["gain_db"] for t in out["tiles"] for v in t["versions"]]).all()
    versions = [v for t in out["tiles"] for v in t["versions"]]
    assert all(len(v["fresh"]["draws"]) == 2 and len({d["seed"] for d in v["fresh"]["draws"]}) == 2 for v in versions)
    assert np.isfinite([x["gain_db_undriven"] for v in versions for x in [v["map"], *v["fresh"]["draws"]]]).all()
    assert all(0 < t["undriven_cells"] < t["outdoor"] for t in out["tiles"])
    s = out["summary"]
    assert s["rebuilds"] == 4 and 0 <= s["rebuilds_worse_than_fresh"] <= 4 and s["evaluation_share"] <= 0.5
    q = out["query"]
    assert [(x["workers"], x["clients"]) for x in q] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(x["calls"] > 0 and x["p99_ms"] >= x["p50_ms"] and len(x["runs"]) == 2
               and x["p99_ms_min"] <= x["p99_ms"] <= x["p99_ms_max"] for x in q)
    if q[0]["generator"] == "h2load":  # every call it timed was an OK QueryPoints by the server's own count
        assert all(r["grpc_not_ok"] == 0 and r["http_not_200"] == 0 and r["grpc_ok"] >= r["calls"] for x in q for r in x["runs"])
    assert out["store"]["sites"] == 2 and out["store"]["file_bytes"] > 0
    path = report.write_result("sites-test", "sites", "ckm-bench sites (test)",
                               {"config": vars(cfg), "tiles_count": 2, "data": held.description, **out},
                               results_dir=tmp_path / "results")
    text = render.section(report.read_record(path))
    assert "| 3 |" in text and "QueryPoints" in text and "incremental rebuilds" in text and "never reaches" in text


def _version(m: float, *fresh: float) -> dict:
    return {"map": {"measurements": 10, "gain_db": m, "gain_db_undriven": m, "aoa_sine": 0.1, "evaluations": 12, "seconds": 1.0},
            "fresh": {"gain_db": fresh[0], "aoa_sine": 0.1, "evaluations": 24, "seconds": 2.0,
                      "draws": [{"gain_db": f, "gain_db_undriven": f, "aoa_sine": 0.1} for f in fresh]}}


def test_rebuilds_are_compared_with_each_fresh_draw_and_their_mean():
    tiles = [{"versions": [_version(9.0, 9.0, 9.0), _version(8.5, 8.4, 8.8), _version(8.0, 7.0, 7.5), _version(8.2, 8.3, 8.4)]}]
    s = sites.summarize(tiles, [])
    assert s["rebuilds"] == 3 and s["fresh_draws"] == 2
    assert s["rebuilds_worse_than_fresh"] == 2  # 8.5 > 8.4 and 8.0 > 7.0 (first draws)
    assert s["rebuilds_worse_than_fresh_mean"] == 1  # only 8.0 > 7.25
    assert s["rebuilds_worse_than_every_fresh"] == 1  # 8.0 > 7.5
    assert s["fresh_draw_spread_db"] == pytest.approx((0.4 + 0.5 + 0.1) / 3)
    assert s["falls_undriven"] is False and s["falls"] is False  # 8.0 -> 8.2
    assert s["curve"][1]["fresh_gain_db"] == pytest.approx(8.6)


def test_the_sites_config_refuses_nonsense():
    with pytest.raises(ValueError, match="fresh_draws"):
        sites.SitesConfig(fresh_draws=0)


def test_a_drive_keeps_to_outdoor_cells(tiny_prior):
    *_, evl = tiny_prior
    cells = tasks.drive_route(np.random.default_rng(0), ~codec.building_mask(evl[0]), 200)
    outdoor = ~codec.building_mask(evl[0])
    assert len(cells) == 200 and all(outdoor[r, c] for r, c in cells)
    steps = [abs(a[0] - b[0]) + abs(a[1] - b[1]) for a, b in zip(cells, cells[1:])]
    assert np.mean(np.array(steps) == 1) > 0.9  # a route, not scattered points
