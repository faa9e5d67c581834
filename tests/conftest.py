import shutil

import numpy as np
import pytest
import torch

from training import procedural

SMALL_TILE = procedural.ProceduralConfig(tile_size=32, block_pitch=(10.0, 16.0), street_width=(2.0, 3.0))


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
    from runtime.schedule import Schedule
    from training import objectives
    from training.dataset import Dataset, DatasetWriter
    from training.trainer import TrainConfig, Trainer
    from training.unet import PRESETS, ScoreModel

    root = tmp_path_factory.mktemp("tiny-prior")
    with DatasetWriter(root / "data", "procedural", 32, 2.0, 3.5e9) as w:
        for split, n in (("train", 96), ("eval", 8)):
            pixels, tx = procedural.generate_region(SMALL_TILE, split, 0, n, seed=11)
            w.add(split, f"tiny-{split}", pixels, tx)
    data = Dataset(root / "data")
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
    from export.builder import BuildConfig, build_package

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
