"""The shipped default prior: it loads, its samples are CKM-like, and DPS beats classical filling."""

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import classical
from runtime import codec, operators, tasks
from runtime.schedule import Schedule
from training import procedural
from training.checkpoint import load_model
from training.reference_dps import DPSConfig, dps_sample

MODEL = Path(__file__).resolve().parents[1] / "models" / "checkpoints" / "prior-small.pt"


@pytest.fixture(scope="module")
def prior():
    if not MODEL.is_file():
        pytest.fail(f"the default model {MODEL} is missing from the repository")
    model, meta = load_model(MODEL)
    return model, meta


def test_default_model_rebuilds_from_its_own_file(prior):
    model, meta = prior
    assert meta["kind"] == "prior" and meta["schedule"]["kind"] == "vp"
    assert MODEL.stat().st_size < 25 * 2**20
    x = torch.rand(1, 2, 128, 128)
    with torch.no_grad():
        s = model(x, torch.tensor([0.5]))
    assert s.shape == x.shape and torch.isfinite(s).all()


def test_reference_dps_beats_nearest_neighbour_fill_on_a_box_mask(prior):
    model, meta = prior
    cfg = procedural.ProceduralConfig()
    x, _ = procedural.generate_region(cfg, "eval", 0, 1, seed=2024)  # a held-out procedural region
    mask = np.ones((128, 128), bool)
    mask[40:80, 50:90] = False  # a 40 x 40 box, inside the paper's [5, 50] range
    op = operators.Mask(mask)
    rng = np.random.default_rng(0)
    y = tasks.observe(op, x, rng, sigma=tasks.DEFAULT_SIGMA)
    schedule = Schedule.from_dict(meta["schedule"]).respace(100)
    recon = dps_sample(model, schedule, op, torch.from_numpy(y), shape=x.shape, rng=rng,
                       cfg=DPSConfig(zeta=13.0, corrector_steps=1)).numpy()
    recon = np.clip(recon, 0, 1)
    nn_fill = classical.nearest_fill(y, mask)
    dps_rmse = codec.gain_rmse_db(recon, x)[0]
    nn_rmse = codec.gain_rmse_db(nn_fill, x)[0]
    print(f"gain RMSE: DPS {dps_rmse:.2f} dB, nearest-neighbour fill {nn_rmse:.2f} dB")
    assert dps_rmse < nn_rmse
