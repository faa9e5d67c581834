"""The solvers benchmark (benchmarks/solvers.py) on the tiny package: real constructions, real classical methods."""

import numpy as np
import pytest

from ckm_edge.benchmarks import solvers
from ckm_edge.runtime import codec, operators, tasks
from ckm_edge.runtime.diffpir import DiffPIRConfig
from ckm_edge.runtime.dps import DPSConfig


def test_solver_tables_curves_and_verdicts(tiny_package, tiny_prior, tmp_path):
    *_, held = tiny_prior
    tiles = held[:2]
    cfg = solvers.SolverBenchConfig(nfe=(2, 4), samplers=("diffpir", "dps"), curve_tasks=("ipbox", "sr2"),
                                    tasks=("ipbox", "sr2", "jtqr", "trajectory"), other_precisions=("int8",))
    lines = []
    results = solvers.run(tiny_package.root, tiles, cfg, progress=lines.append)
    default = results["default"]
    assert set(default) == {"paper", "site"} and set(default["paper"]) == set(cfg.tasks)
    assert set(default["paper"]["ipbox"]) == {"default", "smooth", "nearest", "idw"}
    assert set(default["paper"]["sr2"]) == {"default", "smooth", "bicubic"}
    assert set(default["paper"]["jtqr"]) == {"default", "smooth", "clipping-aware"}
    for setting in default.values():
        for rows in setting.values():
            for maps in rows.values():
                assert len(maps) == 2 and all(np.isfinite(m["gain_all"]) and m["gain_all"] >= 0 for m in maps)
    assert all(m["seconds"] > 0 for m in default["paper"]["sr2"]["default"])
    # SR: every cell is unobserved, so both RMSEs agree; a classical row is that method on the same y
    m = default["paper"]["sr2"]["bicubic"][1]
    assert m["gain_all"] == pytest.approx(m["gain_unobs"])
    from ckm_edge.benchmarks import classical
    x = tiles[1]
    rng = np.random.default_rng([cfg.seed, 1])
    op = tasks.make_operator("sr2", rng, x[None])
    y = tasks.observe(op, x[None], rng, cfg.sigma)
    expect = codec.gain_rmse_db(np.clip(classical.bicubic_up(y, 2), 0, 1), x[None])[0]
    assert m["gain_all"] == pytest.approx(float(expect), rel=1e-6)
    # the site setting gives the layout to the classical methods too: buildings come out 0
    assert np.mean([r["gain_all"] for r in default["site"]["trajectory"]["idw"]]) < \
        np.mean([r["gain_all"] for r in default["paper"]["trajectory"]["idw"]])
    curve = results["curve"]
    assert [(r["sampler"], r["task"], r["nfe"]) for r in curve] == [
        (s, t, n) for s in ("diffpir", "dps") for t in ("ipbox", "sr2") for n in (2, 4)]
    assert {r["steps"] for r in curve if r["sampler"] == "diffpir"} == {2, 4}
    assert {r["steps"] for r in curve if r["sampler"] == "dps"} == {1}  # forward + backward (+ corrector) per step
    # a verdict per setting and task; trajectory is judged against IDW, the drive-test baseline
    for setting, verdict in results["verdicts"].items():
        assert [(v["task"], v["against"]) for v in verdict] == [("ipbox", None), ("sr2", None), ("jtqr", None),
                                                                ("trajectory", "idw")]
        for v in verdict:
            rows = default[setting][v["task"]]
            assert all(x["method"] in rows and x["method"] != "default" and x["theirs"] <= x["ours"] for x in v["lost"])
    assert set(results["precision"]) == {"fp32", "int8"} and all(len(v) == 2 for v in results["precision"]["int8"].values())
    assert solvers.plot(curve, default, tmp_path / "curve.png").stat().st_size > 1000


def test_steps_for_counts_engine_calls_per_posterior_sample():
    assert solvers.steps_for("diffpir", DiffPIRConfig(), 20) == 20
    assert solvers.steps_for("dps", DPSConfig(), 20) == 7  # 7 forward + 7 backward + 6 corrector = 20
    assert solvers.steps_for("dps", DPSConfig(corrector_steps=0, jacobian_free=True), 20) == 20
    assert solvers.steps_for("dps", DPSConfig(), 1) == 1


def test_unobserved_cells_per_task(proc_tiles):
    pixels, _ = proc_tiles
    x = pixels[:1]
    rng = np.random.default_rng(0)
    box = tasks.make_operator("ipbox", rng, x)
    assert np.array_equal(tasks.unobserved("ipbox", box, x)[0, 0], ~box.mask[0])
    assert tasks.unobserved("sr2", operators.Downsample(2), x).all()
    jt = tasks.make_operator("jtqr", rng, x)
    u = tasks.unobserved("jtqr", jt, x)[0]
    outdoor = ~codec.building_mask(x[0])
    gain = x[0, 0]
    assert np.array_equal(u[0], outdoor & ((gain <= 0.2) | (gain >= 0.7))) and np.array_equal(u[1], outdoor)


def test_construction_times_compare_the_papers_dps_with_the_default(tiny_package, tiny_prior):
    from ckm_edge.benchmarks import latency

    *_, held = tiny_prior
    rows = latency.construction_times(tiny_package, held[0], ("ipbox", "jtqr"), dps_steps=6, threads=1)
    assert [r["task"] for r in rows] == ["ipbox", "jtqr"]
    assert all(r["dps_s"] > 0 and r["default_s"] > 0 for r in rows)
    assert rows[0]["default"] == "5 steps x 5 samples"  # the built-in recommendation for masks
