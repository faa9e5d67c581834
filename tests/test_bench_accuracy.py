"""The accuracy benchmark (benchmarks/accuracy.py) on the tiny packages: real constructions, real
baselines (checkpoint files, loaded as ckm-bench loads them), real classical methods."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from ckm_edge.benchmarks import accuracy, solvers
from ckm_edge.runtime import condition, tasks
from ckm_edge.runtime.observations import Observation, Observations
from ckm_edge.runtime.recommend import BUILTIN, read_section
from ckm_edge.runtime.site import Site
from ckm_edge.training.objectives import observation_inputs
from ckm_edge.training.unet import PRESETS, EndToEndModel


def _baseline_file(path, task_names, site_aware: bool, seed: int):
    """An end-to-end checkpoint as `ckm-train baseline` saves it (untrained: the table must show it)."""
    torch.manual_seed(seed)
    unet = dataclasses.replace(PRESETS["tiny"], in_channels=3, time_conditional=False,
                               cond_channels=condition.SITE_V2.channels if site_aware else 0)
    net = EndToEndModel(unet)
    torch.save({"format": "ckm-model", "meta": {"kind": "baseline", "unet": unet.to_dict(), "tasks": list(task_names)},
                "weights": net.state_dict()}, path)
    return net


def test_accuracy_compares_every_method_in_both_settings(tiny_site_package, tmp_path):
    pkg, _, tiles, tx = tiny_site_package
    held = accuracy.HeldOut(tiles[:2], tx[:2], "test tiles")
    _baseline_file(tmp_path / "baseline-ipbox.pt", ["ipbox"], False, 0)
    _baseline_file(tmp_path / "baseline-multi.pt", list(tasks.PAPER_TASKS), False, 1)
    site_net = _baseline_file(tmp_path / "baseline-ipbox-site.pt", ["ipbox"], True, 2)
    cfg = accuracy.AccuracyConfig()
    lines = []
    out = accuracy.run(pkg.root, tmp_path, held, ("ipbox", "sr2", "trajectory"), cfg, progress=lines.append)
    res = out["results"]
    assert len(lines) == 6 and out["site_aware_prior"] and out["base_station_known"]
    assert set(res["paper"]["ipbox"]) == {"foundation", "single", "multi", "smooth", "nearest", "idw"}
    assert set(res["paper"]["sr2"]) == {"foundation", "multi", "smooth", "bicubic"}
    assert set(res["site"]["ipbox"]) == {"foundation", "single", "smooth", "nearest", "idw"}  # no multi-site file
    assert set(res["paper"]["trajectory"]) == {"foundation", "smooth", "nearest", "idw"}
    for setting in res.values():
        for rows in setting.values():
            for per_map in rows.values():
                assert len(per_map) == 2 and all(np.isfinite(m["gain_all"]) and m["gain_all"] >= 0 for m in per_map)
    for key, used in out["constructions"].items():  # the package's defaults, within the evaluation budget
        assert used["nfe"] <= cfg.max_nfe and used["site_conditioned"] == key.startswith("site/")

    # The rows are exactly the methods on the same observation: a classical one, and the site-aware
    # baseline given the layout and the base station (then buildings set to 0).
    op, y, unobs, building = solvers.problems(held.tiles, ("ipbox",), cfg.sigma, cfg.seed)["ipbox", 1]
    shape = held.tiles.shape[1:]
    idw = solvers.classical_methods("ipbox", op, y, shape, building)["idw"]
    assert res["site"]["ipbox"]["idw"][1] == solvers.metrics(idw, held.tiles[1], unobs)
    cond = condition.site_condition(building[None], tx[1][None], shape[1:], batch=1,
                                    encoding=condition.SITE_V2)
    with torch.no_grad():
        pred = site_net(torch.from_numpy(observation_inputs(op, y, (1,) + shape, with_mask=True)), torch.from_numpy(cond))
    pred = Site(building[None]).project(np.clip(pred.numpy(), 0, 1))
    pred = Observations.same(Observation(op, y, cfg.sigma), shape, 1).finish(pred)[0]  # the construction's own finish
    expect = solvers.metrics(pred, held.tiles[1], unobs)
    assert res["site"]["ipbox"]["single"][1] == pytest.approx(expect, rel=1e-5)

    # the verdicts compare the foundation with every method it met, and name the missing checkpoints
    paper, site = out["verdicts"]["paper"], out["verdicts"]["site"]
    assert [v["task"] for v in paper["tasks"]] == ["ipbox", "sr2"]  # trajectory is not a paper task
    assert (paper["learned"], paper["absent"], site["learned"], site["absent"]) == (["single", "multi"], [], ["single"], ["multi"])
    for setting in ("paper", "site"):
        for v in out["verdicts"][setting]["tasks"]:
            assert all(x["method"] in res[setting][v["task"]] and x["theirs"] <= x["ours"] for x in v["lost"])


def _without_seconds(out: dict) -> dict:
    return {s: {t: {m: [{k: v for k, v in r.items() if k != "seconds"} for r in rows] for m, rows in by_task.items()}
                for t, by_task in by_setting.items()} for s, by_setting in out["results"].items()}


def test_a_stopped_accuracy_run_resumes_from_its_journal(tiny_site_package, tmp_path):
    pkg, _, tiles, tx = tiny_site_package
    held = accuracy.HeldOut(tiles[:2], tx[:2], "test tiles")
    _baseline_file(tmp_path / "baseline-multi.pt", list(tasks.PAPER_TASKS), False, 1)
    cfg, journal, task_names = accuracy.AccuracyConfig(), tmp_path / "accuracy.jsonl", ("ipbox", "sr2")
    full = accuracy.run(pkg.root, tmp_path, held, task_names, cfg, progress=lambda _: None, journal=journal)
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 4 and json.loads(lines[0])["header"]["package"].startswith(f"{pkg.name} {pkg.version} sha256:")

    # stopped after two maps, the third cut short: the rerun measures the rest and gets the same table
    journal.write_text("\n".join(lines[:3] + [lines[3][:40]]) + "\n")
    progress = []
    again = accuracy.run(pkg.root, tmp_path, held, task_names, cfg, progress=progress.append, journal=journal)
    assert _without_seconds(again) == _without_seconds(full) and again["constructions"] == full["constructions"]
    assert len(progress) == 4  # every map reported, measured or read back
    assert len([json.loads(x) for x in journal.read_text().splitlines()[4:]]) == 2  # the two measured again
    # ... and all of it read back: nothing measured, the same per-map seconds
    assert accuracy.run(pkg.root, tmp_path, held, task_names, cfg, progress=lambda _: None, journal=journal) == again

    # a journal of another run is refused, naming what differs
    with pytest.raises(ValueError, match="another accuracy run .*differs in: config"):
        accuracy.run(pkg.root, tmp_path, held, task_names, dataclasses.replace(cfg, seed=1), journal=journal)
    _baseline_file(tmp_path / "baseline-multi.pt", list(tasks.PAPER_TASKS), False, 2)  # retrained
    with pytest.raises(ValueError, match="differs in: baselines"):
        accuracy.run(pkg.root, tmp_path, held, task_names, cfg, journal=journal)


def test_the_cli_measures_validation_tiles_when_given_what_training_read(tiny_site_package, tmp_path):
    from conftest import SMALL_TILE

    from ckm_edge.benchmarks import cli
    from ckm_edge.training import procedural
    from ckm_edge.training.dataset import Dataset, DatasetWriter

    pkg, checkpoint, _, _ = tiny_site_package
    trained = checkpoint.parent.parent / "data"  # the tiny prior's training data
    with DatasetWriter(tmp_path / "later", "procedural", 32, 2.0, 3.5e9) as w:  # tiles of a training city it never read
        w.add("train", "later-city", *procedural.generate_region(SMALL_TILE, "train", 3, 3, seed=21))
    later = Dataset(tmp_path / "later")
    args = ["--results", str(tmp_path / "results"), "accuracy", "--data", str(later.root), "--tiles", "2", "--package",
            str(pkg.root), "--checkpoints", str(tmp_path / "none"), "--tasks", "ipbox"]
    assert cli.main(args + ["--exclude", str(trained)]) == 0
    record = json.loads((tmp_path / "results" / "accuracy-later-validation.json").read_text())
    assert record["results"]["tiles"] == 2 and "--exclude" in record["command"]
    assert record["results"]["validation"] and record["results"]["data"].startswith("2 tiles of")
    with pytest.raises(SystemExit, match="no validation tiles left"):  # every tile was trained on
        cli.main(args + ["--exclude", str(later.root)])


def test_accuracy_refuses_what_it_cannot_compare(tiny_package, tmp_path):
    tiles = np.zeros((1, 2, 64, 64), np.float32)
    with pytest.raises(ValueError, match="wide"):
        accuracy.run(tiny_package.root, tmp_path, accuracy.HeldOut(tiles, None, "x"), ("ipbox",), accuracy.AccuracyConfig())
    ok = accuracy.HeldOut(np.full((1, 2, 32, 32), 0.5, np.float32), None, "x")
    with pytest.raises(ValueError, match="network evaluations per sample"):
        accuracy.run(tiny_package.root, tmp_path, ok, ("ipbox",), accuracy.AccuracyConfig(max_nfe=2))
    # A site-aware model under an unconditional baseline's name (and the reverse) is refused.
    _baseline_file(tmp_path / "baseline-ipbox.pt", ["ipbox"], True, 0)
    with pytest.raises(ValueError, match="is a site-aware baseline"):
        accuracy.run(tiny_package.root, tmp_path, ok, ("ipbox",), accuracy.AccuracyConfig())
    _baseline_file(tmp_path / "baseline-ipbox.pt", ["ipbox"], False, 0)
    _baseline_file(tmp_path / "baseline-ipbox-site.pt", ["ipbox"], False, 0)
    with pytest.raises(ValueError, match="is an unconditional baseline"):
        accuracy.run(tiny_package.root, tmp_path, ok, ("ipbox",), accuracy.AccuracyConfig())


def test_a_samplers_table_replaces_the_package_defaults(tiny_package, tmp_path):
    table = tmp_path / "budget-100.json"  # what `ckm-bench tune --budget 100 --out` writes
    table.write_text(json.dumps({"samplers": {"mask": {"sampler": "diffpir", "steps": 3, "samples": 1, "parameters": {
        "lam": 1000.0, "start": 1.0, "restart": 0.1, "restart_steps": 2}}}}))
    cfg = accuracy.AccuracyConfig(samplers=read_section(table)[0])
    held = accuracy.HeldOut(np.full((1, 2, 32, 32), 0.5, np.float32), None, "x")
    (tmp_path / "none").mkdir()
    out = accuracy.run(tiny_package.root, tmp_path / "none", held, ("ipbox", "sr2"), cfg, progress=lambda _: None)
    used = out["constructions"]
    assert used["paper/ipbox"] == {**used["paper/ipbox"], "sampler": "diffpir", "steps": 3, "samples": 1, "nfe": 5}  # + restart
    assert used["paper/sr2"]["steps"] == BUILTIN["downsample"].steps  # kinds the table leaves out: the built-in ones


def test_verdicts_name_every_metric_a_method_wins():
    row = lambda g, a: [{"gain_all": g, "aoa_all": a, "gain_unobs": 2 * g, "aoa_unobs": 2 * a}]
    results = {"paper": {"ipbox": {"foundation": row(5.0, 0.1), "single": row(6.0, 0.2), "idw": row(5.5, 0.05)},
                         "sr2": {"foundation": row(4.0, 0.1), "single": row(4.5, 0.2), "bicubic": row(9.0, 0.3)},
                         "trajectory": {"foundation": row(50.0, 1.0), "idw": row(40.0, 0.5)}},
               "site": {"ipbox": {"foundation": row(3.0, 0.1), "single": row(2.0, 0.1)}}}
    v = accuracy.verdicts(results)
    lost = lambda task: [(x["method"], x["metric"], x["theirs"], x["ours"]) for x in task["lost"]]
    paper, site = v["paper"], v["site"]
    assert [t["task"] for t in paper["tasks"]] == ["ipbox", "sr2"]  # trajectory is not a paper task
    assert lost(paper["tasks"][0]) == [("idw", "aoa_all", 0.05, 0.1), ("idw", "aoa_unobs", 0.1, 0.2)]
    assert lost(paper["tasks"][1]) == []  # sr2: the foundation beats every method on every metric
    assert (paper["learned"], paper["absent"]) == (["single"], ["multi"])
    assert lost(site["tasks"][0]) == [("single", "gain_all", 2.0, 3.0), ("single", "aoa_all", 0.1, 0.1),
                                      ("single", "gain_unobs", 4.0, 6.0), ("single", "aoa_unobs", 0.2, 0.2)]  # ties count


def test_held_out_tiles_come_with_their_transmitters():
    held = accuracy.load_held_out("procedural", 5)
    assert held.tiles.shape == (5, 2, 128, 128) and held.transmitters.shape == (5, 3)
    assert "held-out" in held.description


def test_sweep_rows_and_best_zeta(tiny_package):
    from ckm_edge.benchmarks import sweep

    tiles = sweep.validation_tiles(1, tiny_package.tile_size)
    points = [sweep.Point(z, 3, "fp32", False) for z in (0.0, 13.0)] + [sweep.Point(13.0, 3, "fp32", True)]
    out = sweep.run(tiny_package.root, points, ("iprandom",), tiles, progress=lambda line: None)
    rows = out["rows"]
    assert len(rows) == 3 and all(np.isfinite(r["gain_db"]) for r in rows) and out["tiles"] == 1
    best = min(rows[:2], key=lambda r: r["gain_db"])["point"]["zeta"]  # the Jacobian-free point is not a candidate
    assert out["best_zeta"] == {"iprandom": best}
    assert sweep.best_zeta(rows[1:]) == {}  # one guided zeta: nothing to choose
    # zeta = 0 is the unconditional prior: guidance must change the map. (Which is nearer the truth
    # after 3 steps of a tiny prior is not a property: every construction ends moved into what its
    # observation proves, zeta = 0 included, so the observed cells agree either way.)
    unguided, guided = rows[0]["gain_db"], rows[1]["gain_db"]
    assert abs(guided - unguided) > 1e-3


def test_held_out_sites_carry_the_recorded_heights():
    """The site setting gives every method what the data records of the site: the layout, the station
    and the building heights (where known); a site-aware baseline is told them in its own encoding."""
    tiles = np.zeros((2, 2, 16, 16), np.float32)
    tiles[:, 0] = 0.5
    tiles[:, 1] = 0.65
    tiles[:, :, 4:8, 4:8] = 0.0  # a building
    layout = tiles[0, 0] == 0
    heights = np.stack([np.where(layout, 20.0, 0.0), np.full((16, 16), np.nan)])
    held = accuracy.HeldOut(tiles, np.array([[2.5, 2.5, 25.0], [2.5, 2.5, 25.0]]), "two tiles", heights)
    with_h, without = held.site(0, layout), held.site(1, layout)
    assert with_h.building_height is not None and without.building_height is None
    net = accuracy.Baseline(None, ("ipbox",), True, condition.SITE_V2)
    cond = net.condition(with_h, (16, 16))
    assert cond.shape == (1, 10, 16, 16) and (cond[0, 9] == 1).all() and cond[0, 8].max() == 20.0 / 50.0
    assert (net.condition(without, (16, 16))[0, 8:] == 0).all()


def test_an_update_measures_some_tasks_again_and_keeps_the_rest(tiny_site_package, tmp_path):
    """`ckm-bench accuracy --update`: the tasks given are measured again (with what the package says
    now) and replace their rows in the record; the others stay as they were measured; the record
    says which run measured which; another measurement is refused, naming what differs."""
    import shutil

    from ckm_edge.benchmarks import cli, render

    pkg, checkpoint, _, _ = tiny_site_package
    held_out = checkpoint.parent.parent / "data"  # its 4 eval tiles
    copy = tmp_path / "pkg"
    shutil.copytree(pkg.root, copy)
    (tmp_path / "ckpt").mkdir()
    _baseline_file(tmp_path / "ckpt" / "baseline-ipbox.pt", ["ipbox"], False, 0)
    results = tmp_path / "results"
    args = ["--results", str(results), "accuracy", "--data", str(held_out), "--tiles", "1", "--package", str(copy),
            "--checkpoints", str(tmp_path / "ckpt")]
    assert cli.main(args + ["--tasks", "ipbox", "trajectory"]) == 0
    path = results / f"accuracy-{held_out.name}.json"
    before = json.loads(path.read_text())

    # the package's construction for masks changes (as a new fit or table would change a task's map)
    manifest = json.loads((copy / "manifest.json").read_text())
    steps = {k: v["steps"] for k, v in manifest["samplers"].items()}
    for kind in manifest["samplers"]:
        manifest["samplers"][kind]["steps"] = 2 if steps[kind] != 2 else 3
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    assert cli.main(args + ["--tasks", "trajectory", "--update"]) == 0
    after = json.loads(path.read_text())
    r0, r1 = before["results"], after["results"]
    assert after["command"] == before["command"] and "ipbox trajectory" in after["command"]
    for setting in ("paper", "site"):
        assert r1["results"][setting]["ipbox"] == r0["results"][setting]["ipbox"]  # kept as measured, baselines too
        assert r1["constructions"][f"{setting}/ipbox"] == r0["constructions"][f"{setting}/ipbox"]
        assert r1["constructions"][f"{setting}/trajectory"]["steps"] != r0["constructions"][f"{setting}/trajectory"]["steps"]
        assert r1["results"][setting]["trajectory"]["foundation"] != r0["results"][setting]["trajectory"]["foundation"]
    assert [(r["tasks"], r["manifest"] is None) for r in r1["runs"]] == [(["ipbox"], True), (["trajectory"], False)]
    assert r1["runs"][0]["date"] == before["date"] and r1["tiles_digest"] == r0["tiles_digest"]
    assert "Measured in 2 runs" in render.section(after) and "trajectory on " in render.section(after)
    # measured again: the later run's tasks move to it, the earlier run keeps the rest
    assert cli.main(args + ["--tasks", "ipbox", "--update"]) == 0
    assert [r["tasks"] for r in json.loads(path.read_text())["results"]["runs"]] == [["trajectory"], ["ipbox"]]

    # refused, and the record left as it was: another configuration, other tiles, baselines it would drop, no record
    kept = path.read_text()
    for extra, match in ((["--tasks", "trajectory", "--seed", "1"], "differs in: config"),
                         (["--tasks", "trajectory", "--tiles", "2"], "differs in: tiles"),
                         (["--tasks", "ipbox", "--checkpoints", str(tmp_path / "none")], "end-to-end rows .*single")):
        with pytest.raises(SystemExit, match=match):
            cli.main(args + extra + ["--update"])
        assert path.read_text() == kept
    with pytest.raises(SystemExit, match="no record"):
        cli.main(["--results", str(tmp_path / "empty")] + args[2:] + ["--tasks", "ipbox", "--update"])
