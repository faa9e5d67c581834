"""Calibrated uncertainty (runtime/uncertainty.py, `ckm-bench uncertainty`): the fit holds its
coverage on fresh draws, the section is checked like every manifest section, and a calibrated
package's std and interval reach every output — construct(), the CLI's npz, and the gRPC response
as an outside client reads it from the proto (raw messages and stub, no Python client)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from ckm_edge.runtime import api, codec, operators, tasks, uncertainty
from ckm_edge.runtime.api import pb
from ckm_edge.runtime.manifest import Manifest, PackageError
from ckm_edge.runtime.uncertainty import ChannelFit, Uncertainty, UncertaintyError

BIN = Path(sys.executable).parent


TRUTH = ChannelFit(2.0, 0.02, 0.05, 8.0)  # how the synthetic errors spread


def _draw(rng, n, spread_scale):
    """n cells: spread, distance, and |error| drawn from N(0, TRUTH.std(spread, distance)^2)."""
    spread = rng.uniform(0.0, spread_scale, n)
    distance = rng.integers(0, 32, n).astype(np.float64)
    error = np.abs(rng.standard_normal(n) * TRUTH.std(spread, distance))
    return error, spread, distance


def test_the_conformal_fit_holds_its_coverage_per_task_on_fresh_draws():
    rng = np.random.default_rng(0)
    parts = [_draw(rng, 20000, s) for s in (0.0, 0.02, 0.1)]  # one task has no spread at all (one sample)
    group = np.concatenate([np.full(20000, k) for k in range(3)])
    fit, info = uncertainty.fit_channel(*(np.concatenate(a) for a in zip(*parts)), group, 0.9)
    assert fit.floor > 0 and fit.scale > 0 and set(info["coverage"]) == {"0", "1", "2"}
    z = uncertainty.z_of(0.9)
    for s in (0.0, 0.02, 0.1):  # fresh cells, per task
        error, spread, distance = _draw(rng, 20000, s)
        held = np.mean(error <= z * fit.std(spread, distance))
        assert held == pytest.approx(0.9, abs=0.03), (s, held)


def test_a_fit_over_two_validation_sets_holds_on_each():
    """Generated cities and a real city's tiles whose errors run twice as large for the same
    spread: a fit over their pool holds ~90 % on the pool and under-covers the real one; given
    each cell's set, it holds at least 90 % on each, on fresh draws, and reports both."""
    rng = np.random.default_rng(5)

    def draw(n, factor):
        error, spread, distance = _draw(rng, n, 0.05)
        return error * factor, spread, distance

    gen, real = draw(30000, 1.0), draw(30000, 2.0)
    cells = [np.concatenate(a) for a in zip(gen, real)]
    group, source = np.zeros(60000, int), np.repeat([0, 1], 30000)
    pooled, _ = uncertainty.fit_channel(*cells, group, 0.9)
    each, info = uncertainty.fit_channel(*cells, group, 0.9, source=source)
    assert set(info["by_source"]) == {0, 1} and info["by_source"][1]["0"] == pytest.approx(0.9, abs=0.01)
    assert info["by_source"][0]["0"] > 0.95  # the milder set is over-covered: the price of holding on both
    z = uncertainty.z_of(0.9)
    error, spread, distance = draw(30000, 2.0)  # fresh cells of the harder set
    assert np.mean(error <= z * pooled.std(spread, distance)) < 0.85
    assert np.mean(error <= z * each.std(spread, distance)) == pytest.approx(0.9, abs=0.02)
    one, _ = uncertainty.fit_channel(*cells, group, 0.9, source=np.zeros(60000, int))
    assert one == pooled  # one set is the pool


def test_a_scale_per_distance_bin_holds_near_and_far_cells_alike():
    """Errors that jump with the distance (a box's interior, not a ramp): one scale for all cells
    over-covers the near ones and under-covers the far ones; a scale per distance bin (Mondrian)
    holds both, on fresh draws."""
    rng = np.random.default_rng(3)

    def draw(n):
        distance = rng.integers(1, 24, n).astype(np.float64)
        spread = rng.uniform(0.0, 0.05, n)
        error = np.abs(rng.standard_normal(n)) * np.where(distance < 8, 0.02, 0.2)
        return error, spread, distance

    error, spread, distance = draw(40000)
    fit, _ = uncertainty.fit_channel(error, spread, distance, np.zeros(40000, int), 0.9, ramps=(0.0,))
    pooled, _ = uncertainty.fit_channel(error, spread, distance, np.zeros(40000, int), 0.9, ramps=(0.0,),
                                        edges=(uncertainty.MAX_RANGE + 1.0,))
    assert len(fit.bins) >= 3 and not pooled.bins and fit.scale_at(20.0) > 3 * fit.scale_at(2.0)
    z = uncertainty.z_of(0.9)
    error, spread, distance = draw(40000)
    for near in (True, False):
        part = (distance < 8) == near
        held = np.mean(error[part] <= z * fit.std(spread[part], distance[part]))
        assert held == pytest.approx(0.9, abs=0.03), (near, held)
    near = distance < 8  # what one scale does: the near cells' intervals far too wide, all intervals wider
    assert np.mean(error[near] <= z * pooled.std(spread[near], distance[near])) > 0.97
    assert pooled.std(spread, distance).mean() > 1.2 * fit.std(spread, distance).mean()


def test_distance_bins_merge_the_thin_ones_outward():
    d = np.concatenate([np.full(5000, 1.0), np.full(100, 3.0), np.full(3000, 6.0), np.full(50, 32.0)])
    assert uncertainty.distance_bins(d, min_cells=2000) == (2.0, 33.0)  # [2, 8) made a bin; the 50 far cells joined it
    assert uncertainty.distance_bins(d[:10], min_cells=2000) == (33.0,)  # too few for any split: one bin
    f = ChannelFit(1.0, 0.0, bins=((2.0, 0.5), (8.0, 1.0), (33.0, 3.0)))
    np.testing.assert_allclose(f.scale_at(np.array([0.0, 1.0, 2.0, 7.0, 8.0, 32.0, 40.0])), [0.5, 0.5, 1.0, 1.0, 3.0, 3.0, 3.0])


def test_without_any_spread_only_candidates_with_a_floor_can_cover():
    error = np.abs(np.random.default_rng(1).standard_normal(5000)) * 0.05
    zero = np.zeros_like(error)
    fit, _ = uncertainty.fit_channel(error, zero, zero, np.zeros(5000, int), 0.9, floors=(0.0, 0.01), ramps=(0.0,))
    assert fit.floor == 0.01 and float(fit.std(np.zeros(3))[0]) > 0  # one posterior sample still gets a std
    with pytest.raises(ValueError, match="no candidate"):
        uncertainty.fit_channel(error, zero, zero, np.zeros(5000, int), 0.9, floors=(0.0,), ramps=(0.0,))


def test_distance_to_pinned_cells_is_chebyshev_and_capped():
    mask = np.zeros((16, 16), bool)
    mask[5, 5] = True
    y = tasks.observe(operators.Mask(mask), np.full((1, 2, 16, 16), 0.5, np.float32), np.random.default_rng(0))
    d = uncertainty.distance_to_pinned(operators.Mask(mask).bounds(y, 0.01), (2, 16, 16))
    assert d[0, 5, 5] == 0 and d[1, 5, 9] == 4 and d[0, 0, 0] == 5 and d[0, 15, 15] == 10
    wide = uncertainty.distance_to_pinned(operators.Mask(mask).bounds(y, 0.1), (2, 16, 16))  # 4 sigma = 0.4: nothing pinned
    assert (wide == uncertainty.MAX_RANGE).all()
    big = np.zeros((80, 80), bool)
    big[0, 0] = True
    y = tasks.observe(operators.Mask(big), np.full((1, 2, 80, 80), 0.5, np.float32), np.random.default_rng(0))
    assert uncertainty.distance_to_pinned(operators.Mask(big).bounds(y, 0.0), (2, 80, 80)).max() == uncertainty.MAX_RANGE
    sr = operators.Downsample(2)  # block means pin no single cell
    assert (uncertainty.distance_to_pinned(sr.bounds(np.zeros((1, 2, 8, 8), np.float32), 0.01), (2, 16, 16)) == uncertainty.MAX_RANGE).all()


SECTION = {"coverage": 0.9, "validation": "v", "kinds": {
    "mask": {"gain": {"scale": 1.5, "floor": 0.01, "ramp": 0.02, "range": 8.0}, "aoa_sine": {"scale": 2.0, "floor": 0.0}},
    "jtqr": {"gain": {"scale": 1.0, "floor": 0.01, "bins": [{"below": 4, "scale": 0.5}, {"below": 33, "scale": 2.0}]},
             "aoa_sine": {"scale": 1.0, "floor": 0.01}},
    "*": {"gain": {"scale": 1.0, "floor": 0.02}, "aoa_sine": {"scale": 1.0, "floor": 0.02}}}}
AT_100 = {"sampler": "diffpir", "steps": 8, "samples": 12, "parameters": {"lam": 3.0, "start": 0.2}}
SECTION["kinds"]["mask"]["constructions"] = [  # the mask's fit measured at another construction
    {"gain": {"scale": 0.7, "floor": 0.01}, "aoa_sine": {"scale": 1.1, "floor": 0.0}, "fitted": {"construction": AT_100}}]


def test_the_section_round_trips_and_falls_back_per_setting():
    u = Uncertainty.from_dict(SECTION)
    assert Uncertainty.from_dict(u.to_dict()) == u
    assert u.fit_for("mask", site=False) is u.kinds["mask"] and u.fit_for("downsample", site=False) is u.kinds["*"]
    binned = u.kinds["jtqr"].std(np.zeros((2, 1, 2), np.float32), np.array([[[1.0, 9.0]]] * 2, np.float32))
    np.testing.assert_allclose(binned[0, 0], [0.005, 0.02], rtol=1e-6)  # the bin's scale, not `scale`
    assert u.fit_for("mask", site=True) is None  # no "+site" entry and no "*+site": uncalibrated
    assert u.kinds["mask"].channels[1] == ChannelFit(2.0, 0.0, 0.0, 1.0)
    std = u.kinds["mask"].std(np.zeros((2, 4, 4), np.float32), np.full((2, 4, 4), 16.0, np.float32))
    np.testing.assert_allclose(std[0], 1.5 * np.sqrt(0.01**2 + 0.02**2), rtol=1e-6)
    np.testing.assert_allclose(std[1], 0.0)


def test_a_fit_measured_at_another_construction_is_the_one_applied_there():
    """A request running exactly the construction a fit was measured at (sampler, its parameters,
    steps, samples) is read by that fit; any other construction by the kind's own."""
    from ckm_edge.runtime.sampler import config_from_params

    u = Uncertainty.from_dict(SECTION)
    at_100 = config_from_params("diffpir", AT_100["parameters"])
    there = u.fit_for("mask", False, (at_100, 8, 12))
    assert there is u.kinds["mask"].variants[0] and there.channels[0] == ChannelFit(0.7, 0.01)
    for other in [(at_100, 8, 6), (at_100, 5, 12), (config_from_params("diffpir", {"lam": 3.0, "start": 0.3}), 8, 12),
                  (config_from_params("diffpir", {"lam": 3.0}), 8, 12)]:
        assert u.fit_for("mask", False, other) is u.kinds["mask"], other
    assert u.fit_for("downsample", False, (at_100, 8, 12)) is u.kinds["*"]
    assert u.fit_for("mask", True, (at_100, 8, 12)) is None


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["kinds"]["mask"].update(constructions={}), "uncertainty.kinds['mask'].constructions"),
    (lambda d: d["kinds"]["mask"]["constructions"][0].pop("fitted"),
     "uncertainty.kinds['mask'].constructions[0].fitted.construction"),
    (lambda d: d["kinds"]["mask"]["constructions"][0]["fitted"]["construction"].update(steps=0),
     "uncertainty.kinds['mask'].constructions[0].fitted.construction"),
    (lambda d: d["kinds"]["mask"]["constructions"][0]["fitted"]["construction"].update(parameters={"lam": -1}),
     "uncertainty.kinds['mask'].constructions[0].fitted.construction"),
    (lambda d: d["kinds"]["mask"]["constructions"][0]["gain"].update(scale=-1), "uncertainty.kinds['mask'].constructions[0].gain"),
    (lambda d: d.update(coverage=1.2), "uncertainty.coverage"),
    (lambda d: d.update(coverage=True), "uncertainty.coverage"),
    (lambda d: d.update(kinds={}), "uncertainty.kinds"),
    (lambda d: d["kinds"]["mask"]["gain"].update(scale=0), "uncertainty.kinds['mask'].gain"),
    (lambda d: d["kinds"]["mask"]["gain"].update(floor="x"), "uncertainty.kinds['mask'].gain"),
    (lambda d: d["kinds"]["mask"]["aoa_sine"].update(range=float("nan")), "uncertainty.kinds['mask'].aoa_sine"),
    (lambda d: d["kinds"].update(mask=[1]), "uncertainty.kinds['mask']"),
    (lambda d: d["kinds"]["jtqr"]["gain"].update(bins={"below": 4}), "uncertainty.kinds['jtqr'].gain.bins"),
    (lambda d: d["kinds"]["jtqr"]["gain"]["bins"][1].update(below=4), "uncertainty.kinds['jtqr'].gain.bins[1]"),
    (lambda d: d["kinds"]["jtqr"]["gain"]["bins"][0].update(scale=-1), "uncertainty.kinds['jtqr'].gain.bins[0]"),
])
def test_a_bad_section_is_refused_naming_the_field(tiny_package, mutate, field):
    bad = json.loads(json.dumps(SECTION))
    mutate(bad)
    with pytest.raises(UncertaintyError, match=field.replace("[", r"\[").replace("]", r"\]")):
        Uncertainty.from_dict(bad)
    doc = json.loads((Path(tiny_package.root) / "manifest.json").read_text())
    with pytest.raises(PackageError, match="uncertainty"):
        Manifest.from_dict({**doc, "uncertainty": bad})


@pytest.fixture(scope="module")
def calibrated(tiny_package, tmp_path_factory):
    """A copy of the tiny package calibrated the way a release does it: `ckm-bench uncertainty
    --write` on validation tiles (a procedural dataset of another region). Returns (root, record)."""
    from conftest import small_dataset

    from ckm_edge.benchmarks import cli as bench_cli

    root = tmp_path_factory.mktemp("calibrated")
    pkg = root / "tiny-1.0.0"
    shutil.copytree(tiny_package.root, pkg)
    small_dataset(root / "val", {"train": 3}, region=5, seed=21)
    assert bench_cli.main(["--results", str(root / "results"), "uncertainty", "--package", str(pkg), "--data",
                           str(root / "val"), "--tiles", "3", "--write", "--cache", str(root / "cells.npz")]) == 0
    record = json.loads(next((root / "results").glob("uncertainty-*.json")).read_text())
    return pkg, record


def test_ckm_bench_uncertainty_writes_a_section_the_runtime_loads(calibrated, tmp_path):
    from ckm_edge.benchmarks import render
    from ckm_edge.runtime.package import load_package

    root, record = calibrated
    u = load_package(root).manifest.uncertainty
    assert u is not None and u.coverage == 0.9
    assert {"mask", "downsample", "jtqr", "*", "mask+site", "downsample+site", "jtqr+site", "*+site"} <= set(u.kinds)
    for name, kind in record["results"]["kinds"].items():  # on the tiles it was fitted on, it holds about 90 %
        for task, cov in kind["coverage"].items():
            assert all(c is None or 0.75 <= c <= 1.0 for c in cov["after"]), (name, task, cov)
    text = render.section(record)
    assert "| mask | ipbox |" in text and "| jtqr+site | jtqr |" in text
    # the cache: a second run fits from the stored constructions, to the same section
    from ckm_edge.benchmarks import cli as bench_cli
    assert bench_cli.main(["--results", str(tmp_path), "uncertainty", "--package", str(root), "--data",
                           str(root.parent / "val"), "--tiles", "3", "--cache", str(root.parent / "cells.npz")]) == 0
    again = json.loads(next(tmp_path.glob("uncertainty-*.json")).read_text())
    assert again["results"]["uncertainty"] == record["results"]["uncertainty"]


def test_ckm_bench_uncertainty_at_other_constructions_adds_fits_the_runtime_applies_there(calibrated, tiny_prior, tmp_path):
    """`ckm-bench uncertainty --samplers TABLE --write`: the kinds' fits at the table's constructions
    join the package's section (its own fits kept; run again, replaced, not repeated), and a
    construction run at one of them reports that fit's std, any other the kind's own."""
    from ckm_edge.benchmarks import cli as bench_cli
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.package import load_package
    from ckm_edge.runtime.sampler import config_from_params

    root = tmp_path / "pkg"
    shutil.copytree(calibrated[0], root)
    before = load_package(root).manifest.uncertainty
    at = {"sampler": "diffpir", "steps": 3, "samples": 3, "parameters": {"lam": 3.0, "start": 0.5}}
    (tmp_path / "table.json").write_text(json.dumps({"samplers": {"downsample": at}}))
    args = ["--results", str(tmp_path / "results"), "uncertainty", "--package", str(root), "--data",
            str(calibrated[0].parent / "val"), "--tiles", "2", "--tasks", "sr2", "--settings", "paper",
            "--samplers", str(tmp_path / "table.json"), "--write"]
    for _ in range(2):
        assert bench_cli.main(args) == 0
    record = json.loads(next((tmp_path / "results").glob("uncertainty-*-table-sr2.json")).read_text())
    assert "--samplers " + str(tmp_path / "table.json") in record["command"]
    own = record["results"]["kinds"]["downsample"]["coverage"]["sr2"]["own_fit"]  # the defaults' fit read over them
    assert len(own) == 2 and all(0.0 <= c <= 1.0 for c in own)
    from ckm_edge.benchmarks import render
    assert "package's fit" in render.section(record) and "--samplers" in render.section(record)
    u = load_package(root).manifest.uncertainty
    assert {k: (v.channels, v.fitted) for k, v in u.kinds.items()} == {k: (v.channels, v.fitted) for k, v in before.kinds.items()}
    (fit,) = u.kinds["downsample"].variants  # once, though written twice
    assert fit.fitted["construction"] == at and fit.fitted["tasks"] == ["sr2"]
    assert fit.channels == tuple(uncertainty.ChannelFit(**{**c, "bins": tuple((b["below"], b["scale"]) for b in c.get("bins", []))})
                                 for c in (record["results"]["uncertainty"]["kinds"]["downsample"][n] for n in uncertainty.CHANNELS))
    x, op, y = _observation(tiny_prior, "sr2")
    pkg = load_package(root)
    with open_engine(pkg, EngineConfig()) as engine:
        for cfg, expect in [(ConstructConfig(3, 3, 0, sampler=config_from_params("diffpir", at["parameters"])), fit),
                            (ConstructConfig(4, 3, 0, sampler=config_from_params("diffpir", at["parameters"])),
                             u.kinds["downsample"])]:
            r = construct(engine, pkg.schedule(), op, y, x.shape, cfg, sigma=0.01, uncertainty=pkg.manifest.uncertainty)
            d = uncertainty.distance_to_pinned(op.bounds(np.asarray(y, np.float32)[None], 0.01), x.shape)
            np.testing.assert_allclose(r.std, expect.std(uncertainty.spread(r.samples), d), rtol=1e-5)
            if expect is fit:
                r_at = r
    assert fit.channels != u.kinds["downsample"].channels  # the two reads differ: the test can tell them apart

    # as an outside client sees it: the metadata names the construction, and a request running it is read by its fit
    shutil.copytree(root, tmp_path / "repo" / "tiny" / "1.0.0")
    server = _serve(tmp_path / "repo")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = api.services.EdgeServiceStub(channel)
            meta = stub.GetModelMetadata(pb.GetModelMetadataRequest(model_name="tiny"), timeout=30)
            (c,) = meta.calibrated_constructions
            assert (c.operator_kind, c.sampler, c.steps, c.samples, dict(c.parameters)) == (
                "downsample", "diffpir", 3, 3, at["parameters"])
            request = pb.ConstructRequest(model_name="tiny", observation=_tensor(y), operator=pb.Operator(
                downsample=pb.DownsampleOperator(factor=2)), noise_sigma=0.01, steps=c.steps, samples=c.samples, seed=0,
                sampler=c.sampler, sampler_parameters=c.parameters, output_units=pb.OUTPUT_UNITS_PIXELS)
            served = stub.Construct(request, timeout=60)
            assert served.calibrated  # the same construction as the local one read by `fit`, the same std
            np.testing.assert_allclose(_array(served.std), r_at.std, rtol=1e-3, atol=1e-5)
    finally:
        server.stop(0)


def test_fits_at_other_constructions_join_the_section_once_and_never_shadow_the_defaults():
    from ckm_edge.benchmarks.uncertainty import merge_constructions, not_added
    from ckm_edge.runtime.sampler import config_from_params

    current = json.loads(json.dumps(SECTION))
    current["kinds"]["jtqr"]["fitted"] = {"construction": {"sampler": "diffpir", "steps": 20, "samples": 4}}  # no parameters
    fit = {"gain": {"scale": 0.9, "floor": 0.0}, "aoa_sine": {"scale": 0.8, "floor": 0.0}}
    fitted = {"coverage": 0.9, "kinds": {
        "jtqr": {**fit, "fitted": {"construction": {"sampler": "diffpir", "steps": 20, "samples": 4, "parameters": {"lam": 100.0}}}},
        "mask": {**fit, "fitted": {"construction": AT_100}},  # replaces the one there
        "*": fit, "downsample": {**fit, "fitted": {"construction": AT_100}}}}  # no construction; a kind the section lacks
    out = merge_constructions(current, fitted)
    assert "constructions" not in out["kinds"]["jtqr"]  # the default's own construction: its fit is the section's
    assert out["kinds"]["mask"]["constructions"] == [fitted["kinds"]["mask"]]
    assert out["kinds"]["*"] == SECTION["kinds"]["*"] and "downsample" not in out["kinds"]
    assert not_added(current, fitted) == ["downsample"]  # what the CLI says it left out
    at_100 = config_from_params("diffpir", AT_100["parameters"])
    assert Uncertainty.from_dict(out).fit_for("mask", False, (at_100, 8, 12)).channels[0].scale == 0.9
    with pytest.raises(ValueError, match="no uncertainty section"):
        merge_constructions(None, fitted)
    with pytest.raises(ValueError, match="0.9 intervals; these fits 0.8"):
        merge_constructions(current, {**fitted, "coverage": 0.8})


def test_a_write_over_some_tasks_refits_their_kinds_and_keeps_the_rest():
    """`--write` after `--tasks drive`: the drive's kind joins the section, every other kind and the
    fits at other constructions are kept, and a "*" fitted on fewer tasks never replaces one."""
    from ckm_edge.benchmarks.uncertainty import merge_kinds

    current = json.loads(json.dumps(SECTION))
    current["kinds"]["*"]["fitted"] = {"tasks": ["ipbox", "iprandom", "trajectory"]}
    fit = {"gain": {"scale": 0.9, "floor": 0.0}, "aoa_sine": {"scale": 0.8, "floor": 0.0}}
    drive_only = {"coverage": 0.9, "validation": "w", "kinds": {
        "mask-scarce": {**fit, "fitted": {"tasks": ["drive"]}}, "*": {**fit, "fitted": {"tasks": ["drive"]}}}}
    out = merge_kinds(current, drive_only)
    assert out["kinds"]["mask-scarce"] == {**fit, "fitted": {"tasks": ["drive"], "validation": "w"}}
    assert {k: v for k, v in out["kinds"].items() if k != "mask-scarce"} == current["kinds"] and out["validation"] == "v"
    Uncertainty.from_dict(out)
    with pytest.raises(ValueError, match="0.9 intervals; these fits 0.8"):
        merge_kinds(current, {**drive_only, "coverage": 0.8})
    every = {"coverage": 0.9, "validation": "w", "kinds": {
        "mask": {**fit, "fitted": {"tasks": ["ipbox", "iprandom"]}},
        "*": {**fit, "fitted": {"tasks": ["ipbox", "iprandom", "trajectory", "drive"]}}}}
    out = merge_kinds(current, every)
    assert out["kinds"]["*"] == every["kinds"]["*"] and out["validation"] == "w"
    assert out["kinds"]["mask"] == {**every["kinds"]["mask"], "constructions": SECTION["kinds"]["mask"]["constructions"]}
    assert merge_kinds(None, every) == every


def test_ckm_bench_uncertainty_at_other_constructions_needs_a_calibrated_package(tiny_package, tmp_path, capsys):
    from ckm_edge.benchmarks import cli as bench_cli

    (tmp_path / "table.json").write_text(json.dumps({"samplers": {"downsample": {"sampler": "diffpir", "steps": 3,
                                                                                  "samples": 3}}}))
    with pytest.raises(SystemExit, match="no uncertainty section.*calibrate its default constructions first"):
        bench_cli.main(["--results", str(tmp_path / "results"), "uncertainty", "--package", str(tiny_package.root),
                        "--data", "procedural", "--tiles", "1", "--samplers", str(tmp_path / "table.json"), "--write"])
    assert not (tmp_path / "results").exists()  # refused before constructing anything


def test_ckm_bench_uncertainty_over_two_validation_sets_reports_each(tiny_package, tmp_path):
    """`--data A B`: tiles from both, the fit made to hold on each, coverage per set in the record
    and in its RESULTS.md section."""
    from conftest import small_dataset

    from ckm_edge.benchmarks import cli as bench_cli
    from ckm_edge.benchmarks import render

    small_dataset(tmp_path / "generated", {"train": 2}, region=5, seed=21)
    small_dataset(tmp_path / "real", {"train": 2}, region=6, seed=22)
    assert bench_cli.main(["--results", str(tmp_path / "results"), "uncertainty", "--package", str(tiny_package.root), "--data",
                           str(tmp_path / "generated"), str(tmp_path / "real"), "--tiles", "2", "--tasks", "ipbox",
                           "--settings", "paper", "--out", str(tmp_path / "section.json")]) == 0
    record = json.loads(next((tmp_path / "results").glob("uncertainty-*.json")).read_text())
    r = record["results"]
    assert r["tiles"] == 4 and "generated" in r["validation"] and "real" in r["validation"]
    each = r["kinds"]["mask"]["coverage"]["ipbox"]["by_source"]
    assert set(each) == {str(tmp_path / "generated"), str(tmp_path / "real")}
    assert all(0.0 <= c <= 1.0 for v in each.values() for c in v)
    assert "<br>generated: " in render.section(record) and "<br>real: " in render.section(record)
    assert "--data " + str(tmp_path / "generated") + " " + str(tmp_path / "real") in record["command"]


def _observation(tiny_prior, task, seed=0):
    *_, evl = tiny_prior
    x = evl[:1]
    rng = np.random.default_rng(seed)
    op = tasks.make_operator(task, rng, x)
    return x[0], op, tasks.observe(op, x, rng)[0]


@pytest.mark.parametrize("task", ["ipbox", "sr2", "jtqr"])
def test_a_calibrated_construction_reports_a_std_and_interval_for_one_sample(calibrated, tiny_prior, task):
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.package import load_package

    pkg = load_package(calibrated[0])
    x, op, y = _observation(tiny_prior, task)
    with open_engine(pkg, EngineConfig()) as engine:
        plain = construct(engine, pkg.schedule(), op, y, x.shape, ConstructConfig(4, 1, 0), sigma=0.01)
        r = construct(engine, pkg.schedule(), op, y, x.shape, ConstructConfig(4, 1, 0), sigma=0.01,
                      uncertainty=pkg.manifest.uncertainty)
    assert plain.std is None and not plain.calibrated and plain.interval() is None
    # calibration changes what is said of the map, and the map only where the observation bounds a
    # cell (there: the calibrated predictive's truncated mean, inside the bounds)
    bounds = op.bounds(np.asarray(y)[None] if np.ndim(y) == 3 else y, 0.01)
    bounded = np.zeros(x.shape, bool) if bounds is None else (bounds[0][0] > 0) | (bounds[1][0] < 1)
    np.testing.assert_array_equal(r.mean[~bounded], plain.mean[~bounded])
    if bounds is not None:
        assert ((r.mean >= bounds[0][0] - 1e-6) & (r.mean <= bounds[1][0] + 1e-6)).all()
    assert r.calibrated and r.coverage == 0.9 and r.std.shape == x.shape
    open_cells = tasks.get(task).unobserved(op, x[None])[0]
    assert (r.std[open_cells] > 0).all()
    low, high = r.interval()
    assert (low <= r.mean + 1e-7).all() and (r.mean <= high + 1e-7).all() and low.min() >= 0 and high.max() <= 1


def test_a_site_given_per_sample_finishes_the_calibrated_mean_per_sample(calibrated, tiny_prior):
    """JTQR bounds cells, so the calibrated mean is finished again; with one building layout per
    sample it is finished with each sample's own and averaged, as the samples' mean would be."""
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.package import load_package
    from ckm_edge.runtime.site import Site

    pkg = load_package(calibrated[0])
    x, op, y = _observation(tiny_prior, "jtqr")
    building = np.zeros((2,) + x.shape[1:], bool)
    building[0, :4], building[1, :4], building[1, -4:] = True, True, True  # shared rows, and rows only one has
    with open_engine(pkg, EngineConfig()) as engine:
        r = construct(engine, pkg.schedule(), op, y, x.shape, ConstructConfig(4, 2, 0), sigma=0.01,
                      site=Site(building), uncertainty=pkg.manifest.uncertainty)
    assert r.calibrated and r.samples.shape == (2,) + x.shape
    np.testing.assert_array_equal(r.mean[:, :4], 0.0)  # a building in every sample
    np.testing.assert_array_equal(r.samples[1][:, -4:], 0.0)
    # a building in one of two samples: half of what the other says (its samples' value where the
    # observation leaves the cell open, the truncated mean inside the bounds where it bounds it)
    low, high = (b[0][:, -4:] for b in op.bounds(np.asarray(y)[None] if np.ndim(y) == 3 else y, 0.01))
    bounded = (low > 0) | (high < 1)
    half = 2 * r.mean[:, -4:]
    other = r.samples[0][:, -4:]
    np.testing.assert_allclose(half[~bounded], other[~bounded], atol=1e-6)
    inside = lambda v: (v >= low - 1e-5) & (v <= high + 1e-5)  # noqa: E731
    # (the layout given here is not the tile's: where y proves a building the site's outdoor cell wins)
    assert bounded.any() and inside(half)[bounded & inside(other)].all()


def _serve(root):
    from ckm_edge.runtime.server import ServerConfig, create_server

    return create_server(ServerConfig(repository=root, port=0, metrics_port=0, poll_seconds=0.2, engine_threads=1,
                                      max_batch=4, max_queue_delay_ms=10)).start()


def _tensor(a: np.ndarray):
    a = np.ascontiguousarray(a, np.float32)
    return pb.Tensor(shape=list(a.shape), dtype=pb.DATA_TYPE_FLOAT32, data=a.tobytes())


def _array(t) -> np.ndarray:
    assert t.dtype == pb.DATA_TYPE_FLOAT32
    return np.frombuffer(t.data, np.float32).reshape(tuple(t.shape))


def test_served_responses_carry_the_calibrated_interval_as_the_proto_says(calibrated, tiny_package, tiny_prior, tmp_path):
    """As a client in another language would: messages built from the proto, the generated stub."""
    for name, pkg in (("calibrated", calibrated[0]), ("plain", tiny_package.root)):
        shutil.copytree(pkg, tmp_path / name / "tiny" / "1.0.0")
    server = _serve(tmp_path / "calibrated")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = api.services.EdgeServiceStub(channel)
            meta = stub.GetModelMetadata(pb.GetModelMetadataRequest(model_name="tiny"), timeout=30)
            assert meta.calibrated and meta.interval_coverage == pytest.approx(0.9)
            assert "mask" in meta.calibrated_kinds and "jtqr+site" in meta.calibrated_kinds

            x, op, y = _observation(tiny_prior, "ipbox")
            mask = op.mask[0] if op.mask.ndim == 3 else op.mask
            request = pb.ConstructRequest(model_name="tiny", observation=_tensor(y),
                                          operator=pb.Operator(mask=pb.MaskOperator(mask=_tensor(mask.astype(np.float32)))),
                                          noise_sigma=0.01, steps=4, samples=1, seed=3,
                                          output_units=pb.OUTPUT_UNITS_PIXELS)
            resp = stub.Construct(request, timeout=60)
            assert resp.calibrated and resp.interval_coverage == pytest.approx(0.9)
            m, std, low, high = (_array(t) for t in (resp.map, resp.std, resp.interval_low, resp.interval_high))
            assert std.shape == low.shape == high.shape == m.shape == x.shape
            assert (low <= m + 1e-6).all() and (m <= high + 1e-6).all() and (std[:, ~mask] > 0).all()
            np.testing.assert_allclose(high - m, np.minimum(uncertainty.z_of(0.9) * std, 1 - m), atol=1e-5)

            request.output_units = pb.OUTPUT_UNITS_PHYSICAL
            phys = stub.Construct(request, timeout=60)
            g, g_low, g_high = (_array(t)[0] for t in (phys.map, phys.interval_low, phys.interval_high))
            outdoor = ~np.isnan(g)
            assert outdoor.any() and (np.isnan(g_low) == ~outdoor).all()
            assert (g_low[outdoor] <= g[outdoor] + 1e-3).all() and (g[outdoor] <= g_high[outdoor] + 1e-3).all()
            assert g_high[outdoor].max() <= codec.GAIN_DB_MAX + 1e-3
    finally:
        server.stop(0)
    server = _serve(tmp_path / "plain")  # the same package without the section
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = api.services.EdgeServiceStub(channel)
            plain = stub.GetModelMetadata(pb.GetModelMetadataRequest(model_name="tiny"), timeout=30)
            assert not plain.calibrated and plain.interval_coverage == 0 and not plain.calibrated_kinds
            request.output_units = pb.OUTPUT_UNITS_PIXELS
            bare = stub.Construct(request, timeout=60)
            assert not bare.calibrated and not bare.HasField("interval_low") and not bare.HasField("std")
    finally:
        server.stop(0)


def test_the_cli_npz_holds_the_interval_in_pixels_and_physical_units(calibrated, tmp_path):
    assert subprocess.run([str(BIN / "ckm-data"), "tile", "--out", tmp_path / "t.npz", "--tile-size", "32"],
                          capture_output=True).returncode == 0
    out = subprocess.run([str(BIN / "ckm-edge"), "construct", "--package", str(calibrated[0]), "--truth", tmp_path / "t.npz",
                          "--task", "ipbox", "--steps", "4", "--samples", "1", "--out", tmp_path / "o", "--json",
                          "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["calibrated"] is True and all(0 <= v <= 1 for v in report["interval_holds_unobserved"])
    saved = np.load(tmp_path / "o" / "construction.npz")
    assert bool(saved["calibrated"]) and float(saved["coverage"]) == pytest.approx(0.9)
    assert saved["interval_low"].shape == saved["interval_high"].shape == (2, 32, 32)
    assert (saved["interval_low"] <= saved["pixels"] + 1e-7).all()
    outdoor = ~saved["building"]
    assert (saved["gain_db_low"][outdoor] <= saved["gain_db"][outdoor] + 1e-3).all()
    assert (saved["aoa_sine_high"][outdoor] >= saved["aoa_sine"][outdoor] - 1e-4).all()
    assert (saved["gain_db_std"][outdoor] > 0).any()


def test_sparse_masks_are_calibrated_apart():
    dense, sparse = np.ones((16, 16), bool), np.zeros((16, 16), bool)
    dense[:4, :4] = False
    sparse[:, :5] = True
    assert uncertainty.calibration_kind(operators.Mask(dense)) == "mask"
    assert uncertainty.calibration_kind(operators.Mask(sparse)) == "mask-sparse"
    assert uncertainty.calibration_kind(operators.Compose((operators.Mask(sparse),))) == "mask-sparse"
    assert uncertainty.calibration_kind(operators.Downsample(2)) == "downsample"
    u = Uncertainty.from_dict(SECTION)
    assert u.fit_for(uncertainty.calibration_kind(operators.Mask(sparse)), site=False) is u.kinds["*"]  # none of its own
    scarce = np.zeros((16, 16), bool)
    scarce[3, :12] = True  # a drive of 12 readings: 4.7 % of the cells
    assert uncertainty.calibration_kind(operators.Mask(scarce)) == "mask-scarce"
    fits = json.loads(json.dumps(SECTION))
    fits["kinds"]["mask-sparse"] = fits["kinds"]["jtqr"]
    u = Uncertainty.from_dict(fits)
    assert u.fit_for("mask-scarce", site=False) is u.kinds["mask-sparse"]  # a package fitted before scarce masks had a kind
    fits["kinds"]["mask-scarce"] = fits["kinds"]["mask"]
    u = Uncertainty.from_dict(fits)
    assert u.fit_for("mask-scarce", site=False) is u.kinds["mask-scarce"] and u.fit_for("mask-scarce", site=True) is None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's own moments of extreme truncations
def test_the_conditional_mean_is_the_truncated_normals_far_into_its_tails_too():
    from scipy.stats import truncnorm

    rng = np.random.default_rng(3)
    n = 20000
    mu, s = rng.uniform(-1.5, 2.5, n), rng.uniform(0.002, 0.3, n)
    lo = rng.uniform(0.0, 0.8, n)
    hi = lo + rng.uniform(0.001, 0.5, n)
    hi[:3000], lo[3000:6000] = 1.0, 0.0  # one-sided: saturated gains
    got = uncertainty.conditional_mean(mu, s, lo, hi)
    want = truncnorm.mean((lo - mu) / s, (hi - mu) / s, loc=mu, scale=s)
    assert np.all(np.abs(got - want) <= 1e-4 * s + 1e-6)  # mu up to 1700 std outside the window
    assert np.all((got >= lo) & (got <= hi))
    assert uncertainty.conditional_mean(np.array([0.3]), np.array([0.1]), np.array([0.5]), np.array([0.5]))[0] == 0.5


def test_a_saturated_cell_reports_the_truncated_mean_not_the_bound():
    """The samples a sampler left below a saturated gain's bound are all moved onto it by the
    finish; the reported mean is the calibrated predictive's mean beyond the bound instead, and
    every other cell keeps what its samples say (unbounded) or stays in what it is proven to be."""
    from ckm_edge.runtime.executor import summarize
    from ckm_edge.runtime.observations import Observation, Observations

    rng = np.random.default_rng(0)
    truth = rng.uniform(0.3, 0.9, (1, 2, 16, 16)).astype(np.float32)
    op = operators.jtqr(0.2, 0.7, 24)
    y = op.forward(truth)
    raw = np.clip(truth + rng.normal(0.0, 0.05, (4, 2, 16, 16)), 0, 1).astype(np.float32)
    raw[:, 0][:, truth[0, 0] > 0.7] = 0.66  # the prior thought every strong cell weaker than the bound
    finished = Observations.same(Observation(op, y, 0.01), truth.shape[1:], 1).finish(raw.copy())
    cal = uncertainty.KindFit((ChannelFit(scale=1.5, floor=0.03), ChannelFit(scale=1.5, floor=0.01)))
    mean, std, _ = summarize(finished, op, y, cal, 0.01, raw=raw,
                             finish=Observations.same(Observation(op, y, 0.01), truth.shape[1:], 1).finish)
    strong = truth[0, 0] > 0.7
    low, high = op.bounds(y, 0.01)  # saturated: at least the bound less the noise (0.67), up to 1
    assert np.allclose(finished.mean(axis=0)[0][strong], low[0, 0][strong])  # what the samples' mean would say
    assert np.all(mean[0][strong] > low[0, 0][strong] + 0.2 * std[0][strong])  # the truncated mean lies inside
    assert np.all((mean >= low[0] - 1e-6) & (mean <= high[0] + 1e-6))  # never outside what y proves


def test_a_noisy_reading_keeps_its_samples_mean_not_the_reading():
    """A mask's reading bounds its cell only by its noise: the samples' mean, which weighs the
    reading against the prior, is reported there, not the predictive truncated to y -/+ the noise
    (with a wide std that returns the noisy reading itself); a saturated gain is still censored."""
    from ckm_edge.runtime.executor import summarize
    from ckm_edge.runtime.observations import Observation, Observations

    rng = np.random.default_rng(1)
    truth = rng.uniform(0.3, 0.9, (1, 2, 16, 16)).astype(np.float32)
    sigma = 0.1
    mask = rng.random((16, 16)) < 0.9
    op = operators.Mask(mask)
    y = op.forward(truth) + rng.normal(0.0, sigma, truth.shape).astype(np.float32) * mask
    raw = np.clip(truth + rng.normal(0.0, 0.02, (4, 2, 16, 16)), 0, 1).astype(np.float32)  # a prior that knows better
    finish = Observations.same(Observation(op, y, sigma), truth.shape[1:], 1).finish
    finished = finish(raw.copy())
    wide = uncertainty.KindFit((ChannelFit(scale=5.0, floor=0.2), ChannelFit(scale=5.0, floor=0.2)))
    mean, _, _ = summarize(finished, op, y, wide, sigma, raw=raw, finish=finish)
    np.testing.assert_array_equal(mean, finished.mean(axis=0))
    assert np.sqrt(((mean - truth[0]) ** 2).mean()) < 0.5 * np.sqrt(((np.where(mask, y[0], mean) - truth[0]) ** 2).mean())


def test_rebuild_fits_are_made_on_streamed_drive_tests_and_read_only_by_rebuilds(calibrated, tmp_path):
    """`ckm-bench uncertainty --rebuilds BATCH BATCHES --write`: drive tests streamed into a site
    (runtime.sites, in process) on validation tiles; the incremental rebuilds' cells fit the kind's
    fit at the rebuild's construction ("warm"), which joins the section; the site manager's
    rebuilds are read by it, its fresh maps by the kind's own fit, and the metadata does not offer it
    to requests (none can run a warm start)."""
    from ckm_edge.benchmarks import cli as bench_cli
    from ckm_edge.benchmarks import render
    from ckm_edge.protos.ckm.edge.v1 import site_pb2 as spb
    from ckm_edge.runtime import executor
    from ckm_edge.runtime.package import load_package
    from ckm_edge.runtime.repository import ModelRepository
    from ckm_edge.runtime.servicer import _calibrated_constructions
    from ckm_edge.runtime.site import Site
    from ckm_edge.runtime.sites import SiteManager
    from ckm_edge.runtime.sitestore import MapRow, now_ms, open_store
    from ckm_edge.training.dataset import Dataset

    root = tmp_path / "repo" / "tiny" / "1.0.0"
    shutil.copytree(calibrated[0], root)
    before = load_package(root).manifest.uncertainty
    args = ["--results", str(tmp_path / "results"), "uncertainty", "--package", str(root), "--data",
            str(calibrated[0].parent / "val"), "--tiles", "3", "--tasks", "drive", "--settings", "site",
            "--rebuilds", "16", "3", "--write"]
    with pytest.raises(SystemExit, match="--tasks drive"):
        bench_cli.main(args[:10] + ["ipbox"] + args[11:])
    for _ in range(2):
        assert bench_cli.main(args) == 0
    record = json.loads((tmp_path / "results" / "uncertainty-tiny-1-0-0-rebuilds.json").read_text())
    (name,) = [k for k in record["results"]["kinds"] if not k.startswith("*")]
    kind = record["results"]["kinds"][name]
    assert name == "mask-scarce+site" and kind["construction"]["warm"] is True and "own_fit" in kind["coverage"]["drive"]
    assert "--rebuilds 16 3" in record["command"] and "| mask-scarce+site | drive |" in render.section(record)
    u = load_package(root).manifest.uncertainty
    assert {k: v.channels for k, v in u.kinds.items()} == {k: v.channels for k, v in before.kinds.items()}
    (warm,) = [v for v in u.kinds[name].variants if v.fitted["construction"].get("warm")]  # once, though written twice
    assert warm.fitted["construction"] == kind["construction"] and warm.channels != u.kinds[name].channels
    assert not any(c.operator_kind == name for c in _calibrated_constructions(u))

    # the runtime: a site's first map is read by the kind's own fit, its incremental rebuilds by the warm one
    tile = Dataset(calibrated[0].parent / "val").split("train").take(np.arange(1))[0]
    layout = codec.building_mask(tile)
    mgr = SiteManager(open_store(f"sqlite:{tmp_path / 'sites.db'}"), ModelRepository(tmp_path / "repo"), None, row_bytes=False)
    d = spb.SiteDefinition(site_id="s", model_name="tiny", geometry=spb.TileGeometry(cell_size_m=1.0))
    d.site.CopyFrom(api.site_to_proto(Site(layout)))
    mgr.create(d)
    route = tasks.drive_route(np.random.default_rng(0), ~layout, 32)
    phys = codec.decode(tile)
    previous = None
    for k in range(2):
        mgr.add("s", [spb.Measurement(position=spb.Position(cell=spb.CellPosition(row=r + 0.5, col=c + 0.5)),
                                      gain_db=float(np.clip(phys.gain_db[r, c], -250, -50)), aoa_sine=float(phys.aoa_sine[r, c]))
                      for r, c in route[16 * k:16 * (k + 1)]], f"b{k}")
        job, _, incremental, _ = mgr.plan(mgr.get("s"), previous)
        assert incremental == (k == 1)
        assert job.calibration == (warm if incremental else u.kinds[name])
        [res] = executor.execute([job])
        previous = MapRow("s", k + 1, res.mean, res.std, True, 0.9, 16 * (k + 1), 0, now_ms(), incremental, 0, 0.0,
                          "tiny", "1.0.0")
