import json
import shutil

import numpy as np
import pytest
import torch

from ckm_edge.training import procedural

SMALL_TILE = procedural.ProceduralConfig(tile_size=32, block_pitch=(10.0, 16.0), street_width=(2.0, 3.0))


def small_dataset(path, counts: dict, region: int, seed: int):
    """A dataset of SMALL_TILE procedural tiles with their transmitters, `counts` tiles per split
    (split -> n) from procedural region `region`; returns it opened."""
    from ckm_edge.training.dataset import Dataset, DatasetWriter

    with DatasetWriter(path, "procedural", 32, 2.0, 3.5e9) as w:
        for split, n in counts.items():
            pixels, tx = procedural.generate_region(SMALL_TILE, split, region, n, seed=seed)
            w.add(split, f"tiny-{split}", pixels, tx)
    return Dataset(path)


@pytest.fixture(scope="session")
def proc_tiles() -> tuple[np.ndarray, np.ndarray]:
    """Eight procedural tiles (pixels, transmitters), shared by tests that only read them."""
    return procedural.generate_region(procedural.ProceduralConfig(), "train", 0, 8, seed=123)


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory):
    """A tiny score model trained briefly on 32 x 32 procedural tiles: (model, meta, train, eval tiles).

    Trained, not random: a random network's scores are huge and chaotic, which tells nothing
    about parity between engines.
    """
    from ckm_edge.runtime.schedule import Schedule
    from ckm_edge.training import objectives
    from ckm_edge.training.trainer import TrainConfig, Trainer
    from ckm_edge.training.unet import PRESETS, ScoreModel

    root = tmp_path_factory.mktemp("tiny-prior")
    data = small_dataset(root / "data", {"train": 96, "eval": 8}, region=0, seed=11)
    schedule = Schedule.vp(1000)
    torch.manual_seed(0)
    model = ScoreModel(PRESETS["tiny"], schedule)
    meta = {"kind": "prior", "unet": PRESETS["tiny"].to_dict(), "schedule": schedule.to_dict()}
    cfg = TrainConfig(steps=300, batch_size=16, lr=2e-3, warmup=20, ema_decay=0.95, eval_every=10_000,
                      checkpoint_every=10_000)
    trainer = Trainer(model, objectives.ScoreMatching(schedule), data.split("train"), data.split("eval"), cfg,
                      root / "run", meta, progress=False)
    trainer.fit()
    ema = trainer.ema.model.eval()
    return ema, meta, data.split("train").take(np.arange(32)), data.split("eval").take(np.arange(8))


@pytest.fixture(scope="session")
def tiny_package(tiny_prior, tmp_path_factory):
    """The tiny prior exported as a full package (fp32, fp16, int8)."""
    from ckm_edge.export.builder import BuildConfig, build_package

    model, meta, train, _ = tiny_prior
    out = tmp_path_factory.mktemp("pkg") / "tiny-1.0.0"
    return build_package(model, meta, out, BuildConfig(name="tiny", version="1.0.0", tile_size=32), train,
                         provenance={"test": True})


@pytest.fixture()
def package_copy(tiny_package, tmp_path):
    """A private copy of the tiny package that a test may damage."""
    dst = tmp_path / "pkg"
    shutil.copytree(tiny_package.root, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_adapter(tiny_prior, tiny_package, tmp_path_factory):
    """A site adapter for the tiny package, made the way an operator makes one: `ckm-train adapter`
    on a site dataset (procedural `calibrated` tiles, another region) and `ckm-export adapter`
    into a repository that also serves the base package. Returns (repository, adapter package,
    work directory: tiny-prior.pt, run/adapter.pt)."""
    import dataclasses

    from ckm_edge.export import cli as export_cli
    from ckm_edge.runtime.package import load_package
    from ckm_edge.training import cli as train_cli
    from ckm_edge.training.dataset import DatasetWriter

    model, meta, train, _ = tiny_prior
    root = tmp_path_factory.mktemp("adapter")
    base_file = root / "tiny-prior.pt"
    torch.save({"format": "ckm-model", "meta": meta, "weights": model.state_dict()}, base_file)
    site_cfg = dataclasses.replace(procedural.ProceduralConfig.preset("calibrated"), tile_size=32,
                                   block_pitch=(10.0, 16.0), street_width=(2.0, 3.0))
    with DatasetWriter(root / "site", "procedural", 32, 2.0, 3.5e9) as w:
        w.add("train", "site-a", procedural.generate_region(site_cfg, "eval", 7, 16, seed=5)[0])
    with DatasetWriter(root / "generic", "procedural", 32, 2.0, 3.5e9) as w:
        w.add("train", "generic", train)
    repo = root / "repository"
    shutil.copytree(tiny_package.root, repo / "tiny" / "1.0.0")
    assert train_cli.main(["adapter", "--base-package", str(repo / "tiny" / "1.0.0"), "--base-checkpoint", str(base_file),
                           "--site-data", str(root / "site"), "--generic-data", str(root / "generic"),
                           "--out", str(root / "run"), "--steps", "20", "--reference-steps", "40"]) == 0
    assert export_cli.main(["adapter", "--adapter", str(root / "run" / "adapter.pt"), "--base-package",
                            str(repo / "tiny" / "1.0.0"), "--out", str(repo / "site-a" / "1.0.0"),
                            "--precisions", "fp32"]) == 0
    return repo, load_package(repo / "site-a" / "1.0.0"), root


# The default constructions tiny_site_package ships for site requests on masks (`ckm-export package
# --samplers`, the way a tuned prior ships `ckm-bench tune`'s table); every other kind keeps the built-in one.
TUNED_SAMPLERS = {"mask+site": {"sampler": "diffpir", "steps": 4, "samples": 2, "parameters": {"lam": 3.0, "start": 0.1}}}


@pytest.fixture(scope="session")
def tiny_site_package(tiny_prior, tmp_path_factory):
    """A site-aware tiny prior made the way issue 16's is: `ckm-train prior --site-aware`
    warm-started (--init) from the unconditional tiny prior on tiles that record their transmitter,
    then `ckm-export package` (fp32 and INT8, calibrated with condition maps; TUNED_SAMPLERS as its
    default constructions for site requests on masks; the accuracy record on another dataset's eval
    split, as a ray-traced held-out set). Returns
    (package, checkpoint path, eval tiles, eval transmitters)."""
    from ckm_edge.export import cli as export_cli
    from ckm_edge.runtime.package import load_package
    from ckm_edge.training import cli as train_cli

    model, meta, _, _ = tiny_prior
    root = tmp_path_factory.mktemp("site-aware")
    init = root / "tiny-prior.pt"
    torch.save({"format": "ckm-model", "meta": meta, "weights": model.state_dict()}, init)
    evl = small_dataset(root / "data", {"train": 48, "eval": 4}, region=1, seed=13).split("eval")
    assert train_cli.main(["prior", "--data", str(root / "data"), "--out", str(root / "run"), "--preset", "tiny",
                           "--site-aware", "--init", str(init), "--steps", "40", "--batch-size", "8", "--lr", "1e-3",
                           "--warmup", "5", "--ema-decay", "0.9", "--eval-every", "1000", "--sample-every", "1000",
                           "--checkpoint-every", "1000", "--log-every", "1000"]) == 0
    out = root / "tiny-site-1.0.0"
    (root / "samplers.json").write_text(json.dumps({"samplers": TUNED_SAMPLERS}))  # as `ckm-bench tune --out` writes it
    assert export_cli.main(["package", "--checkpoint", str(root / "run" / "checkpoint.pt"), "--data", str(root / "data"),
                            "--out", str(out), "--name", "tiny-site", "--version", "1.0.0", "--precisions", "fp32",
                            "int8", "--calibration-tiles", "8", "--accuracy-tiles", "1", "--accuracy-steps", "2",
                            "--eval-data", str(small_dataset(root / "held-out", {"eval": 1}, region=2, seed=17).root),
                            "--samplers", str(root / "samplers.json")]) == 0
    return load_package(out), root / "run" / "checkpoint.pt", evl.take(np.arange(4)), evl.transmitters()[:4]
