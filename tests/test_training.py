import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ckm_edge.runtime import codec, operators, tasks
from ckm_edge.runtime.schedule import Schedule
from ckm_edge.training import objectives, procedural
from ckm_edge.training.dataset import Dataset, DatasetWriter
from ckm_edge.training.reference_dps import DPSConfig, apply_operator, dps_sample
from ckm_edge.training.trainer import TrainConfig, Trainer, augment
from ckm_edge.training.unet import PRESETS, EndToEndModel, ScoreModel

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    cfg = procedural.ProceduralConfig(tile_size=64, block_pitch=(12.0, 24.0), street_width=(2.0, 4.0))
    root = tmp_path_factory.mktemp("data") / "ds"
    with DatasetWriter(root, "procedural", 64, 2.0, 3.5e9) as w:
        for split, region, n in (("train", 0, 48), ("eval", 0, 16)):
            pixels, tx = procedural.generate_region(cfg, split, region, n, seed=5)
            w.add(split, f"r-{split}", pixels, tx)
    return Dataset(root)


def _prior_trainer(ds, out, steps, seed=0, precision="auto"):
    schedule = Schedule.vp(1000)
    torch.manual_seed(seed)
    model = ScoreModel(TINY, schedule)
    cfg = TrainConfig(steps=steps, batch_size=8, lr=2e-3, warmup=10, seed=seed, eval_every=10_000,
                      checkpoint_every=10_000, eval_batches=2, log_every=10, precision=precision)
    meta = {"kind": "prior", "unet": TINY.to_dict(), "schedule": schedule.to_dict()}
    return Trainer(model, objectives.ScoreMatching(schedule), ds.split("train"), ds.split("eval"), cfg, out, meta,
                   progress=False)


def test_smoke_training_decreases_the_held_out_loss(small_dataset, tmp_path):
    trainer = _prior_trainer(small_dataset, tmp_path / "run", steps=150)
    before = trainer.evaluate()
    trainer.fit()
    after = trainer.evaluate()
    assert after < 0.8 * before, (before, after)
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "run" / "log.jsonl").is_file()


def test_resume_continues_from_the_exact_step(small_dataset, tmp_path):
    straight = _prior_trainer(small_dataset, tmp_path / "a", steps=6)
    straight.fit()
    first = _prior_trainer(small_dataset, tmp_path / "b", steps=3)
    first.fit()
    second = dataclasses.replace(first.cfg, steps=6)
    resumed = _prior_trainer(small_dataset, tmp_path / "b", steps=6)
    assert resumed.cfg == second
    resumed.resume()
    assert resumed.step == 3
    resumed.fit()
    for p, q in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for p, q in zip(straight.ema.model.state_dict().values(), resumed.ema.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_bf16_autocast_on_a_cpu_trains_and_keeps_float32_weights(small_dataset, tmp_path):
    """--precision bf16 on a CPU: the forward runs in bfloat16 (its loss differs from float32's at
    the same draws), the weights, optimizer and EMA stay float32, and training still learns."""
    with pytest.raises(ValueError, match="precision must be"):
        TrainConfig(precision="fp8")
    fp32 = _prior_trainer(small_dataset, tmp_path / "fp32", steps=1)
    bf16 = _prior_trainer(small_dataset, tmp_path / "bf16", steps=1, precision="bf16")
    assert bf16.bf16 and not fp32.bf16  # auto: float32 on a CPU
    assert fp32._train_step() != bf16._train_step()
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert all(p.dtype == torch.float32 for p in bf16.ema.model.parameters())
    trainer = _prior_trainer(small_dataset, tmp_path / "learn", steps=150, precision="bf16")
    before = trainer.evaluate()
    trainer.fit()
    assert trainer.evaluate() < 0.8 * before


def test_training_history_counts_sittings_machines_and_wall_time(small_dataset, tmp_path):
    """Each fit() is a sitting of the log (start: machine, device, precision; stop: elapsed); the
    model card's history reads them back, and reads older logs (no events) by their elapsed time."""
    from ckm_edge.benchmarks import machine
    from ckm_edge.training import model_card

    _prior_trainer(small_dataset, tmp_path / "run", steps=3).fit()
    resumed = _prior_trainer(small_dataset, tmp_path / "run", steps=6)
    resumed.resume()
    resumed.fit()
    rows = model_card.sittings(tmp_path / "run" / "log.jsonl")
    assert [(r["from_step"], r["to_step"]) for r in rows] == [(0, 3), (3, 6)]
    assert all(r["machine"] == machine.label(machine.describe()) and r["device"] == "cpu" and r["precision"] == "fp32"
               for r in rows)
    assert all(r["wall_s"] >= 0 and np.isfinite(r["loss"]) for r in rows)
    old = tmp_path / "old"
    old.mkdir()
    records = [{"step": 25, "loss": 0.5, "elapsed_s": 10.0}, {"step": 50, "loss": 0.4, "elapsed_s": 20.0},
               {"step": 125, "loss": 0.3, "elapsed_s": 5.0}, {"step": 150, "loss": 0.2, "elapsed_s": 9.0, "eval_loss": 0.1}]
    (old / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    history = model_card.training_history([old, tmp_path / "run"])
    first, second = history["runs"][0]["sittings"]
    assert (first["from_step"], first["to_step"], first["wall_s"]) == (0, 50, 20.0)
    assert (second["from_step"], second["to_step"], second["eval_loss"], second["machine"]) == (100, 150, 0.1, "not recorded")
    assert sum(m["steps"] for m in history["per_machine"].values()) == 50 + 50 + 6
    assert "not recorded" in model_card.history_markdown(history)
    with pytest.raises(FileNotFoundError, match="no log.jsonl"):
        model_card.training_history([tmp_path])


def test_resume_refuses_a_different_model(small_dataset, tmp_path):
    _prior_trainer(small_dataset, tmp_path / "a", steps=1).fit()
    other = _prior_trainer(small_dataset, tmp_path / "a", steps=2)
    other.meta = dict(other.meta, unet=PRESETS["small"].to_dict())
    with pytest.raises(ValueError, match="different U-Net config"):
        other.resume()


def test_baseline_objective_learns(small_dataset, tmp_path):
    torch.manual_seed(0)
    unet = dataclasses.replace(TINY, in_channels=3, time_conditional=False)
    model = EndToEndModel(unet)
    cfg = TrainConfig(steps=60, batch_size=8, lr=3e-3, warmup=5, eval_every=10_000, checkpoint_every=10_000,
                      eval_batches=2)
    trainer = Trainer(model, objectives.EndToEnd(("sr2",)), small_dataset.split("train"), small_dataset.split("eval"),
                      cfg, tmp_path / "e2e", {"kind": "baseline", "unet": unet.to_dict()}, progress=False)
    before = trainer.evaluate()
    trainer.fit()
    assert trainer.evaluate() < 0.5 * before


def test_flip_augmentation_respects_the_aoa_encoding(small_dataset):
    x = small_dataset.split("train").take(np.arange(4))
    rng = np.random.default_rng(0)
    out, tx, _ = augment(x, rng, crop=32, flips=True)
    assert out.shape == (4, 2, 32, 32) and tx is None
    codec.check_pixels(out)
    outdoor = out[:, 1] >= codec.BUILDING_THRESHOLD
    assert (out[:, 1][outdoor] >= codec.AOA_PIXEL_MIN - 1e-6).all() and (out[:, 0][~outdoor] == 0).all()


def test_torchrun_ddp_on_two_cpu_processes(small_dataset, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ckm_edge.training.cli", "prior", "--data", str(small_dataset.root), "--out", str(tmp_path / "ddp"),
           "--preset", "tiny", "--steps", "4", "--batch-size", "4", "--checkpoint-every", "2", "--log-every", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "world size 2" in out.stderr
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 4


class GaussianScore:
    """Exact score of x_t when x_0 ~ N(mean, s0^2 I): -(x - scale mean) / (scale^2 s0^2 + std^2)."""

    def __init__(self, schedule, mean, s0):
        self.schedule, self.mean, self.s0 = schedule, mean, s0

    def __call__(self, x, t):
        i = int(round(float(t[0]) * self.schedule.params["n"])) - 1
        full = Schedule.from_dict({k: v for k, v in self.schedule.params.items() if k not in ("steps", "respacing")})
        scale, std = full.scale[i], full.noise_std[i]
        return -(x - scale * self.mean) / (scale**2 * self.s0**2 + std**2)


def test_reference_pc_sampler_draws_the_prior():
    schedule = Schedule.vp(1000)
    score = GaussianScore(schedule, 0.5, 0.1)
    x = dps_sample(score, schedule, None, None, shape=(2, 2, 32, 32), rng=np.random.default_rng(0),
                   cfg=DPSConfig(zeta=0.0, corrector_steps=1))
    assert float(x.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(x.std()) == pytest.approx(0.1, rel=0.05)


def test_reference_dps_pulls_observed_cells_to_the_observation():
    schedule = Schedule.vp(1000).respace(100)
    score = GaussianScore(schedule, 0.5, 0.1)
    rng = np.random.default_rng(1)
    mask = tasks.random_mask(rng, (32, 32), (0.5, 0.5))
    op = operators.Mask(mask)
    truth = np.full((2, 2, 32, 32), 0.8, np.float32)
    y = torch.from_numpy(op.forward(truth).astype(np.float32))
    x = dps_sample(score, schedule, op, y, shape=truth.shape, rng=rng, cfg=DPSConfig(zeta=5.0)).numpy()
    observed = np.broadcast_to(mask, x.shape)
    # Independent pixels: observed cells move to y, unobserved ones keep the prior mean.
    assert x[observed].mean() == pytest.approx(0.8, abs=0.1)
    assert x[~observed].mean() == pytest.approx(0.5, abs=0.01)


def test_operator_bridge_uses_the_numpy_vjp():
    op = operators.Downsample(2)
    x = torch.rand(2, 2, 8, 8, dtype=torch.float32, requires_grad=True)
    y = apply_operator(op, x)
    v = torch.rand_like(y)
    (g,) = torch.autograd.grad((y * v).sum(), x)
    np.testing.assert_allclose(g.numpy(), op.vjp(x.detach().numpy(), v.numpy()), rtol=1e-6)
    torch.testing.assert_close(y, torch.nn.functional.avg_pool2d(x, 2))


def test_warm_start_from_a_slim_model_file(small_dataset, tmp_path):
    from ckm_edge.training import cli
    from ckm_edge.training.checkpoint import slim

    first = _prior_trainer(small_dataset, tmp_path / "a", steps=3)
    first.fit()
    slim(tmp_path / "a" / "checkpoint.pt", tmp_path / "m.pt")
    rc = cli.main(["prior", "--data", str(small_dataset.root), "--out", str(tmp_path / "b"), "--preset", "tiny",
                   "--steps", "1", "--batch-size", "4", "--init", str(tmp_path / "m.pt")])
    assert rc == 0
    warm = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert warm["step"] == 1
    for name, value in first.ema.model.state_dict().items():  # one step at a warm-up learning rate
        torch.testing.assert_close(warm["model"][name], value, rtol=0, atol=1e-4)


def test_data_mixture_repeats_each_source_and_trains_from_the_cli(small_dataset, tmp_path):
    from ckm_edge.training import cli
    from ckm_edge.training.dataset import DatasetError, Mixture

    # A second, train-only dataset (like a ray-traced training build): 8 tiles, repeated 3 times.
    cfg = procedural.ProceduralConfig(tile_size=64, block_pitch=(12.0, 24.0), street_width=(2.0, 4.0))
    rare_pixels, rare_tx = procedural.generate_region(cfg, "train", 1, 8, seed=9)
    with DatasetWriter(tmp_path / "rare", "sionna-rt", 64, 2.0, 3.5e9) as w:
        w.add("train", "munich", rare_pixels, rare_tx)
    rare = Dataset(tmp_path / "rare")
    bulk = small_dataset.split("train")
    mix = Mixture([(bulk, 1), (rare.split("train"), 3)])
    assert len(mix) == 48 + 3 * 8 and mix.regions == ["munich", "r-train"]
    np.testing.assert_array_equal(mix.take(np.array([0, 47])), bulk.take(np.array([0, 47])))
    for copy in range(3):  # each repeat reads the same rare tiles, transmitters aligned
        np.testing.assert_array_equal(mix.take(np.arange(48 + 8 * copy, 56 + 8 * copy)), rare_pixels)
        np.testing.assert_array_equal(mix.transmitters()[48 + 8 * copy: 56 + 8 * copy], rare_tx)
    with pytest.raises(IndexError):
        mix[len(mix)]
    with pytest.raises(DatasetError, match="empty"):
        Mixture([(bulk, 1), (rare.split("eval"), 2)])
    with pytest.raises(DatasetError, match="repeat"):
        Mixture([(bulk, 0)])

    # The CLI: DIR:REPEAT; the held-out loss comes from the first dataset with an eval split.
    rc = cli.main(["prior", "--data", str(tmp_path / "rare") + ":3", str(small_dataset.root), "--out", str(tmp_path / "run"),
                   "--preset", "tiny", "--steps", "2", "--batch-size", "4", "--eval-every", "1", "--log-every", "1",
                   "--site-aware"])
    assert rc == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert [(d["repeat"], d["train_tiles"]) for d in ckpt["meta"]["data"]] == [(3, 8), (1, 48)]
    assert ckpt["meta"]["data"][0]["checksum"] == rare.manifest["checksum"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r for r in log if "loss" in r]
    assert losses[-1]["eval_loss"] is not None and np.isfinite(losses[-1]["eval_loss"])
    with pytest.raises(SystemExit):  # argparse: repeat 0
        cli.main(["prior", "--data", str(tmp_path / "rare") + ":0", "--out", str(tmp_path / "bad")])


def test_model_card_sample_statistics_against_the_held_out_split(tiny_prior, tmp_path):
    from ckm_edge.training import model_card, statistics

    model, meta, _, evl = tiny_prior
    torch.save({"format": "ckm-model", "meta": meta, "weights": model.state_dict()}, tmp_path / "prior.pt")
    with DatasetWriter(tmp_path / "held", "procedural", 32, 2.0, 3.5e9) as w:
        w.add("eval", "held", evl)
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"step": 25, "loss": 0.5, "elapsed_s": 10.0}) + "\n")
    rc = model_card.main(["--checkpoint", str(tmp_path / "prior.pt"), "--data", str(tmp_path / "held"), "--out",
                          str(tmp_path / "card"), "--count", "2", "--steps", "5", "--stats-samples", "3",
                          "--runs", str(run)])
    assert rc == 0 and (tmp_path / "card" / "prior-samples.png").is_file()
    assert "| run | not recorded | —, — | 0 → 25 | 0.2 min | 0.5000 | — |" in (tmp_path / "card" / "training-history.md").read_text()
    assert json.loads((tmp_path / "card" / "training-history.json").read_text())["runs"][0]["sittings"][0]["to_step"] == 25
    result = json.loads((tmp_path / "card" / "sample-stats.json").read_text())
    samples = Dataset(tmp_path / "card" / "prior-samples").split("eval")
    assert len(samples) == 3  # the samples are a dataset `ckm-data stats` reads
    # The distances are the statistics' own: recompute them from the stored samples.
    mine = statistics.tile_statistics(samples.take(np.arange(3)), None, 2.0)
    held = statistics.dataset_statistics(tmp_path / "held", "eval")
    l1 = np.abs(np.array(mine["gain_histogram"]["density"]) - np.array(held["gain_histogram"]["density"])).sum()
    assert result["distance"]["gain_histogram_l1"] == pytest.approx(l1)
    assert result["distance"]["building_fraction"] == pytest.approx(abs(mine["building_fraction"]["mean"]
                                                                        - held["building_fraction"]["mean"]))
    v = result["verdicts"]["gain_histogram_l1"]
    assert v["target"] == 0.15 and v["met"] == (l1 <= 0.15)
    text = (tmp_path / "card" / "sample-stats.md").read_text()
    assert "| gain histogram l1 |" in text and "held-out split" in text
    # --site-stats: one sample per held-out tile given its site; the layout is exact, so the
    # building fractions agree by construction and the radio statistics are the test
    # --reference: a training dataset's own distance to the held-out split, beside the samples'
    # the held-out tiles' base stations: the site-conditioned samples are given them, so their gain's
    # fall-off with distance is compared too (unconditional samples have no base station)
    assert "falloff_mean_abs_db" not in result["distance"] and "fall-off" not in text
    tx = np.column_stack([np.linspace(4, 28, len(evl)), np.full(len(evl), 16.0), np.full(len(evl), 12.0)])
    with DatasetWriter(tmp_path / "held-tx", "procedural", 32, 2.0, 3.5e9) as w:
        w.add("eval", "held", evl, tx)
    with DatasetWriter(tmp_path / "ref", "procedural", 32, 2.0, 3.5e9) as w:
        w.add("train", "ref", evl[:3])
    rc = model_card.main(["--checkpoint", str(tmp_path / "prior.pt"), "--data", str(tmp_path / "held-tx"), "--out",
                          str(tmp_path / "card2"), "--count", "2", "--steps", "5", "--stats-samples", "8", "--site-stats",
                          "--reference", str(tmp_path / "ref")])
    site = json.loads((tmp_path / "card2" / "sample-stats-site.json").read_text())
    assert site["distance"]["building_fraction"] == pytest.approx(0.0, abs=1e-9)
    given = Dataset(tmp_path / "card2" / "prior-samples-site").split("eval")
    np.testing.assert_allclose(given.transmitters(), tx[: len(given)])  # stored with the samples they were given to
    mine = statistics.tile_statistics(given.take(np.arange(len(given))), given.transmitters(), 2.0)
    held_tx = statistics.dataset_statistics(tmp_path / "held-tx", "eval")
    bands = [abs(a - b) for a, b in zip(mine["falloff"]["median_gain_db"], held_tx["falloff"]["median_gain_db"])
             if a is not None and b is not None]
    assert site["distance"]["falloff_mean_abs_db"] == pytest.approx(np.mean(bands))
    assert "falloff_mean_abs_db" not in site["references"][0]["distance"]  # the reference has no transmitters
    assert "| gain fall-off with distance (mean abs. difference of band medians, dB) |" in (
        tmp_path / "card2" / "sample-stats-site.md").read_text()
    ref = statistics.dataset_statistics(tmp_path / "ref", "train")
    assert site["references"][0]["distance"]["building_fraction"] == pytest.approx(
        abs(ref["building_fraction"]["mean"] - held["building_fraction"]["mean"]))
    assert "training data `ref`" in (tmp_path / "card2" / "sample-stats-site.md").read_text()
    cond = Dataset(tmp_path / "card2" / "prior-samples-site").split("eval").take(np.arange(8))
    np.testing.assert_array_equal(codec.building_mask(cond), codec.building_mask(evl))
    assert "site-conditioned samples (8" in (tmp_path / "card2" / "sample-stats-site.md").read_text()


def test_site_conditioned_prior_samples_follow_the_site(tiny_site_package):
    from ckm_edge.runtime.schedule import Schedule
    from ckm_edge.training import model_card
    from ckm_edge.training.checkpoint import load_model

    _, ckpt, tiles, tx = tiny_site_package
    model, meta = load_model(ckpt)
    model = model.float().eval()
    schedule = Schedule.from_dict(meta["schedule"])
    building = codec.building_mask(tiles[:2])
    free = model_card.prior_samples(model, schedule, 2, 32, 4, seed=0)
    given = model_card.prior_samples(model, schedule, 2, 32, 4, seed=0, site=(building, tx[:2]))
    np.testing.assert_array_equal(codec.building_mask(given), building)
    assert (given[:, 1][~building] >= codec.AOA_PIXEL_MIN).all()
    assert (given[np.broadcast_to(building[:, None], given.shape)] == 0).all()
    from ckm_edge.runtime.site import Site

    # the same noise without the condition, projected the same way: the condition reached the network
    assert np.abs(given - Site(building).project(free)).max() > 1e-3


def test_recipes_are_valid_shell_and_name_real_commands():
    """The prepared recipes (GPU sessions, the release) parse as shell, every ckm_edge subcommand
    they call exists with the options they give, and each training job's arguments parse with
    ckm-train's own parser."""
    import re

    from ckm_edge.benchmarks import cli as bench_cli
    from ckm_edge.export import cli as export_cli
    from ckm_edge.training import cli as train_cli
    from ckm_edge.training import data_cli

    parsers = {"ckm_edge.training.cli": train_cli.build_parser(), "ckm_edge.training.data_cli": data_cli.build_parser()}
    tools = {"ckm-train": parsers["ckm_edge.training.cli"], "ckm-data": parsers["ckm_edge.training.data_cli"],
             "ckm-export": export_cli.build_parser(), "ckm-bench": bench_cli.build_parser()}
    recipes = sorted(Path("recipes").glob("*.sh"))
    assert {r.name for r in recipes} >= {"gpu-train.sh", "gpu-raytrace.sh", "sionna-bundle.sh", "release-prior.sh",
                                         "cpu-pipeline.sh"}
    for recipe in recipes:
        text = recipe.read_text()
        assert subprocess.run(["bash", "-n", str(recipe)], capture_output=True).returncode == 0, recipe
        for module, sub in re.findall(r"-m (ckm_edge\.training\.(?:cli|data_cli)) ([a-z-]+)", text):
            choices = parsers[module]._subparsers._group_actions[0].choices
            assert sub in choices, f"{recipe}: {module} has no subcommand {sub!r}"
        joined = text.replace("\\\n", " ")  # continuation lines joined
        for tool, command in re.findall(r'"\$BIN/(ckm-[a-z]+)" ([^\n]+)', joined):  # "$BIN/ckm-x" sub --opt ...
            argv = re.sub(r'"?\$\{?[A-Z_]+(?::-[^}]*)?\}?"?', "X", command).split()
            while argv and argv[0].startswith("--"):  # the tool's own options before the subcommand
                argv = argv[1 + bool(tools[tool]._option_string_actions[argv[0]].nargs != 0):]
            sub = argv[0]
            if sub.startswith("$"):  # arguments made at run time: its jobs' `echo`ed arguments are checked below
                continue
            choices = tools[tool]._subparsers._group_actions[0].choices
            assert sub in choices, f"{recipe}: {tool} has no subcommand {sub!r}"
            known = {o for a in choices[sub]._actions for o in a.option_strings}
            assert {a for a in argv if a.startswith("--")} <= known, f"{recipe}: {tool} {sub}: unknown option"
        for job in re.findall(r'echo "((?:prior|baseline) [^"]*)"', text):
            argv = job.replace("${1#curve-}", "small").replace("${1#baseline-}", "ipbox").replace("${task%-site}", "ipbox").split()
            args = parsers["ckm_edge.training.cli"].parse_args(argv + ["--data", "d", "--out", "o"])
            assert args.command in ("prior", "baseline"), job
