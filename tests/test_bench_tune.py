"""`ckm-bench tune` (benchmarks/tune.py): the coordinate search, validation tiles that never
include what the prior trained on, a real tuning run on the tiny package, and shipping the result
with `ckm-export package --samplers`."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import SMALL_TILE, TUNED_SAMPLERS, small_dataset

from ckm_edge.benchmarks import tune
from ckm_edge.runtime import operators
from ckm_edge.runtime.recommend import BUILTIN, Recommendation, recommend
from ckm_edge.training import procedural


def test_search_finds_the_grid_optimum_within_the_budget_measuring_each_point_once():
    cfg = tune.TuneConfig(budget=12, rounds=3, starts=(0.1, 0.2, 0.4), lams=(3.0, 7.0, 15.0), samples=(1, 2, 3, 4))
    calls = []

    def evaluate(rec):  # a separable bowl: best at start 0.2, lam 15, 3 samples
        calls.append(tune._key(rec))
        s = (rec.parameters["start"] - 0.2) ** 2 + (rec.parameters["lam"] - 15.0) ** 2 / 100 + (rec.samples - 3) ** 2
        return {"score": s}

    start = Recommendation("diffpir", 5, 5, {"lam": 7.0, "start": 0.4})  # 25 evaluations: over the budget
    best, measured = tune.search(start, evaluate, cfg)
    assert (best.parameters, best.samples, best.steps) == ({"lam": 15.0, "start": 0.2}, 3, 4)
    assert best.steps * best.samples <= cfg.budget
    assert tune._key(start) in measured  # the package's own point is measured, for the record
    assert len(calls) == len(set(calls)) == len(measured)


def test_a_warm_start_caps_the_steps_at_the_noise_levels_it_spans():
    cfg = tune.TuneConfig(budget=25, rounds=1, starts=(0.05,), lams=(7.0,), samples=(1, 5))
    seen = []

    def evaluate(rec):  # fewer samples and less noise are better here: the search walks to 1 sample at start 0.05
        seen.append(rec)
        return {"score": rec.samples + rec.parameters["start"]}

    best, _ = tune.search(Recommendation("diffpir", 5, 5, {"lam": 7.0, "start": 0.2}), evaluate, cfg, levels=100)
    assert (best.parameters["start"], best.samples, best.steps) == (0.05, 1, 5)  # 25 steps asked, 5 levels spanned
    assert all(r.steps <= max(1, round(r.parameters["start"] * 100)) for r in seen)


def test_a_restart_is_searched_within_the_budget_it_spends():
    cfg = tune.TuneConfig(budget=25, rounds=2, starts=(0.2, 1.0), lams=(7.0,), restarts=(0.0, 0.1), samples=(1, 4))
    seen = []

    def evaluate(rec):  # best: from pure noise, restarted at 0.1
        seen.append(rec)
        return {"score": abs(rec.parameters["start"] - 1.0) + abs(rec.parameters.get("restart", 0.0) - 0.1)}

    best, measured = tune.search(Recommendation("diffpir", 5, 4, {"lam": 7.0, "start": 0.2}), evaluate, cfg, levels=100)
    # a restart of 5 steps on 4 samples leaves 1 step each within 25 evaluations
    assert (best.parameters, best.steps, best.samples) == ({"lam": 7.0, "start": 1.0, "restart": 0.1, "restart_steps": 5}, 1, 4)
    assert all(r.samples * (r.steps + r.parameters.get("restart_steps", 0)) <= cfg.budget for r in seen)
    assert not any(r.parameters.get("restart") == 0.0 for r in seen)  # no restart is the construction without the key
    assert len(seen) == len(measured)


def test_the_restarts_prior_weight_is_searched_only_with_a_restart():
    cfg = tune.TuneConfig(budget=25, rounds=2, starts=(1.0,), lams=(7.0,), restarts=(0.0, 0.1), restart_lams=(15.0, 100.0, 1000.0),
                          samples=(1,))
    seen = []

    def evaluate(rec):  # best: restarted at 0.1 with weight 1000
        seen.append(rec)
        p = rec.parameters
        return {"score": abs(p.get("restart", 0.0) - 0.1) + abs(p.get("restart_lam", 100.0) - 1000.0) / 1000}

    best, _ = tune.search(Recommendation("diffpir", 20, 1, {"lam": 7.0, "start": 1.0}), evaluate, cfg, levels=100)
    assert best.parameters == {"lam": 7.0, "start": 1.0, "restart": 0.1, "restart_steps": 5, "restart_lam": 1000.0}
    assert (best.steps, best.samples) == (20, 1)
    # the default weight (100) is the construction without the key: measured once, whichever way it is asked
    assert {r.parameters.get("restart_lam") for r in seen if "restart" in r.parameters} == {15.0, None, 1000.0}
    assert all("restart" in r.parameters for r in seen if "restart_lam" in r.parameters)

    # where no restart wins, its weight is never tried
    seen.clear()
    best, _ = tune.search(Recommendation("diffpir", 20, 1, {"lam": 7.0, "start": 1.0}),
                          lambda rec: (seen.append(rec), {"score": rec.parameters.get("restart", 0.0)})[1], cfg, levels=100)
    assert "restart" not in best.parameters and not any("restart_lam" in r.parameters for r in seen)


def test_a_search_of_some_coordinates_holds_the_others():
    cfg = tune.TuneConfig(budget=12, rounds=2, starts=(0.1, 0.4), lams=(3.0, 15.0), samples=(1, 2, 3), coordinates=("lam",))
    seen = []

    def evaluate(rec):
        seen.append(rec)
        return {"score": rec.parameters["start"] + abs(rec.parameters["lam"] - 15.0) + rec.samples}

    best, _ = tune.search(Recommendation("diffpir", 4, 3, {"lam": 7.0, "start": 0.4}), evaluate, cfg)
    assert (best.parameters, best.steps, best.samples) == ({"lam": 15.0, "start": 0.4}, 4, 3)
    assert {r.parameters["start"] for r in seen} == {0.4} and {(r.steps, r.samples) for r in seen} == {(4, 3)}


def test_splits_spend_at_most_the_budget():
    assert tune.splits(25, 1, (1, 2, 3, 4, 5, 8)) == [(25, 1), (12, 2), (8, 3), (6, 4), (5, 5), (3, 8)]
    assert tune.splits(10, 3, (1, 2, 4)) == [(3, 1), (1, 2)]  # 3 evaluations per step: 4 samples do not fit
    assert tune.splits(25, 1, (1, 4, 5), per_sample=5) == [(20, 1), (1, 4)]  # a 5-step restart per sample
    assert tune.kinds_of(("ipbox", "iprandom", "sr2", "jtqr")) == {"mask": ["ipbox", "iprandom"], "downsample": ["sr2"],
                                                                    "jtqr": ["jtqr"]}


def _traced_like(path, regions_indices, seed):
    """A dataset whose provenance lists each tile (region, index), as a ray-traced build's does,
    written region by region in plan order."""
    from ckm_edge.training.dataset import DatasetWriter

    meta = [{"region": r, "split": "train", "index": i} for r, idx in regions_indices.items() for i in idx]
    with DatasetWriter(path, "sionna-rt", 32, 2.0, 3.5e9, {"tiles": meta}) as w:
        for k, (region, idx) in enumerate(regions_indices.items()):
            pixels, tx = procedural.generate_region(SMALL_TILE, "train", k, len(idx), seed=seed)
            w.add("train", region, pixels, tx)


def test_validation_tiles_leave_out_every_tile_training_read(tmp_path):
    _traced_like(tmp_path / "later", {"munich": [0, 1, 2, 3], "etoile": [0, 1, 2]}, seed=1)
    _traced_like(tmp_path / "trained", {"munich": [0, 1, 2], "etoile": [0]}, seed=1)
    val = tune.validation_tiles(str(tmp_path / "later"), 10, exclude=[str(tmp_path / "trained")])
    assert val.keys == [("munich", 3), ("etoile", 1), ("etoile", 2)]
    from ckm_edge.training.dataset import Dataset

    split = Dataset(tmp_path / "later").split("train")
    np.testing.assert_array_equal(val.tiles, split.take(np.array([3, 5, 6])))
    np.testing.assert_array_equal(val.transmitters, split.transmitters()[[3, 5, 6]])
    assert "munich" in val.description and "trained" in val.description
    with pytest.raises(ValueError, match="held-out"):
        tune.validation_tiles(str(tmp_path / "later"), 4, split="eval")
    with pytest.raises(ValueError, match="no validation tiles left"):
        tune.validation_tiles(str(tmp_path / "trained"), 4, exclude=[str(tmp_path / "later")])
    # a dataset without per-tile provenance: a tile is its region and place in it
    small_dataset(tmp_path / "plain", {"train": 3}, region=0, seed=2)
    assert tune.validation_tiles(str(tmp_path / "plain"), 4).keys == [("tiny-train", 0), ("tiny-train", 1), ("tiny-train", 2)]


def test_validation_tiles_from_two_datasets_are_labelled_with_their_set(tmp_path):
    _traced_like(tmp_path / "gen", {"gencity-000": [0, 1], "gencity-001": [0, 1]}, seed=1)
    _traced_like(tmp_path / "real", {"munich": [24, 25]}, seed=2)
    val = tune.validation_tiles([str(tmp_path / "gen"), str(tmp_path / "real")], 2)
    assert len(val.tiles) == 4 and val.transmitters.shape == (4, 3)
    assert val.sources == (str(tmp_path / "gen"),) * 2 + (str(tmp_path / "real"),) * 2
    assert val.keys[-2:] == [("munich", 24), ("munich", 25)] and "gen" in val.description and "real" in val.description
    assert tune.validation_tiles([str(tmp_path / "real")], 4).sources == ()  # one set: no labels
    with pytest.raises(ValueError, match="no validation dataset"):
        tune.validation_tiles([], 4)


def test_tune_on_the_tiny_package_then_ship_the_section(tiny_package, tiny_prior, tmp_path):
    *_, held = tiny_prior
    val = tune.Validation(held[:1], None, "one tiny tile")
    cfg = tune.TuneConfig(budget=4, tasks=("ipbox", "sr2"), rounds=1, starts=(0.3,), lams=(15.0,), samples=(1, 2))
    lines, journal = [], tmp_path / "tune.jsonl"
    out = tune.run(tiny_package.root, val, cfg, progress=lines.append, journal=journal)
    assert set(out["samplers"]) == {"mask", "mask+site", "downsample", "downsample+site"}
    for name, k in out["kinds"].items():
        rec = Recommendation(**out["samplers"][name])  # a valid recommendation
        assert rec.steps * rec.samples <= cfg.budget
        assert k["after"]["score"] == min(p["score"] for p in k["points"] if p["steps"] * p["samples"] <= cfg.budget)
        assert all(np.isfinite(p["gain_all"]) and p["seconds"] > 0 for p in k["points"])
        assert k["before"]["steps"] == BUILTIN[name].steps  # the package's own point, measured
    assert len(lines) == sum(len(k["points"]) for k in out["kinds"].values())
    assert out["start"] == "package" and out["kinds"]["mask"]["tasks"] == ["ipbox"]

    # stopped and run again with its journal (the last line cut short): nothing measured twice
    with open(journal, "a") as f:
        f.write('{"key": "[\\"mask\\", {')
    again = []
    assert tune.run(tiny_package.root, val, cfg, progress=again.append, journal=journal) == out and again == []
    with pytest.raises(ValueError, match="another tune run .*differs in: config"):
        tune.run(tiny_package.root, val, dataclasses.replace(cfg, rounds=2), journal=journal)

    section = tmp_path / "samplers.json"
    section.write_text(json.dumps({"samplers": out["samplers"]}))
    from ckm_edge.runtime.recommend import read_section

    merged, tuned = read_section(section)  # what `ckm-export package --samplers` writes into the manifest
    assert tuned == sorted(out["samplers"])
    assert {k: merged[k] for k in out["samplers"]} == out["samplers"]
    assert merged["jtqr"] == BUILTIN["jtqr"].to_dict()  # not tuned: the built-in one stays


def test_a_larger_budget_is_spent_from_a_tuned_table_searching_the_split_only(tiny_package, tmp_path):
    """`ckm-bench tune --budget N --samplers TABLE --coordinates split`: how the release finds its
    constructions at four times the shipped budget, the tuned parameters held."""
    from ckm_edge.benchmarks import cli as bench_cli

    small_dataset(tmp_path / "val", {"train": 2}, region=5, seed=3)
    table = tmp_path / "tuned.json"
    given = {"sampler": "diffpir", "steps": 2, "samples": 1, "parameters": {"lam": 15.0, "start": 0.3}}
    table.write_text(json.dumps({"samplers": {"downsample": given}}))
    rc = bench_cli.main(["--results", str(tmp_path / "res"), "tune", "--package", str(tiny_package.root),
                         "--data", str(tmp_path / "val"), "--tiles", "1", "--budget", "8", "--tasks", "sr2",
                         "--settings", "paper", "--rounds", "1", "--coordinates", "split", "--samples", "1", "2", "4",
                         "--samplers", str(table), "--out", str(tmp_path / "tuned-8.json")])
    assert rc == 0
    record = json.loads((tmp_path / "res" / "tune-tiny-1-0-0-budget-8.json").read_text())  # its own record
    assert "--coordinates split --samples 1 2 4 --samplers" in record["command"]
    k = record["results"]["kinds"]["downsample"]
    assert k["before"]["steps"] == 2 and k["before"]["samples"] == 1  # the search began at the given table
    assert {(p["steps"], p["samples"]) for p in k["points"]} == {(2, 1), (8, 1), (4, 2), (2, 4)}
    assert all(p["parameters"] == given["parameters"] for p in k["points"])  # only the split varied
    best = json.loads((tmp_path / "tuned-8.json").read_text())["samplers"]["downsample"]
    assert best["steps"] * best["samples"] <= 8 and record["results"]["start"] == "given table"

    with pytest.raises(ValueError, match="coordinates must be among"):
        tune.TuneConfig(coordinates=("steps",))


def test_an_exported_package_ships_its_tuned_constructions(tiny_site_package):
    pkg = tiny_site_package[0]  # exported with `ckm-export package --samplers` (conftest.TUNED_SAMPLERS)
    samplers = pkg.manifest.samplers
    assert samplers["mask+site"].to_dict() == TUNED_SAMPLERS["mask+site"]
    assert {k: v for k, v in samplers.items() if k != "mask+site"} == {k: r for k, r in BUILTIN.items() if k != "mask+site"}
    assert pkg.manifest.provenance.samplers["tuned_kinds"] == ["mask+site"]
    mask = operators.Mask(np.ones((1, 32, 32), bool))
    assert recommend(samplers, mask, site=True).to_dict() == TUNED_SAMPLERS["mask+site"]
    assert recommend(samplers, mask).to_dict() == BUILTIN["mask"].to_dict()


@pytest.mark.parametrize("doc, why", [("not json", "JSON"), ('{"mask": {}}', "ckm-bench tune --out"),
                                      ('{"samplers": {"mask": {"sampler": "diffpir", "steps": 0, "samples": 1}}}', "mask"),
                                      ('{"samplers": {"blur": {"sampler": "diffpir", "steps": 2, "samples": 1}}}', "blur")])
def test_a_bad_samplers_file_is_refused_before_anything_is_written(doc, why, tmp_path, capsys):
    from ckm_edge.export import cli as export_cli

    bad = tmp_path / "samplers.json"
    bad.write_text(doc)
    rc = export_cli.main(["package", "--checkpoint", str(tmp_path / "never-read.pt"), "--data", str(tmp_path),
                          "--out", str(tmp_path / "pkg"), "--samplers", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "--samplers" in err and why in err
    assert not (tmp_path / "pkg").exists()
