"""Site conditioning of the prior: condition maps, the conditional U-Net, training with dropout."""

import numpy as np
import pytest
import torch
from conftest import small_dataset

from ckm_edge.runtime import codec, condition
from ckm_edge.runtime.schedule import Schedule
from ckm_edge.training import objectives, procedural
from ckm_edge.training.trainer import TrainConfig, Trainer, augment
from ckm_edge.training.unet import PRESETS, ScoreModel


def test_condition_maps_describe_the_site_and_say_what_is_known():
    building = np.zeros((16, 16), bool)
    building[4:8, 4:8] = True
    cond = condition.site_condition(building, np.array([[2.4, 3.4, 25.0], [np.nan] * 3]), (16, 16))
    assert cond.shape == (2, condition.CHANNELS, 16, 16)
    np.testing.assert_array_equal(cond[:, 0], np.broadcast_to(building, (2, 16, 16)))
    assert (cond[:, 1] == 1).all()
    prox = cond[0, 2]
    assert np.unravel_index(prox.argmax(), prox.shape) == (2, 3) and prox.max() < 1 and prox.min() > 0
    assert (cond[0, 3] == 1).all() and np.allclose(cond[0, 4], 25 / condition.HEIGHT_SCALE_M)
    assert not cond[1, 2:].any()  # the second map's base station is unknown
    # a base station outside the tile still gives a field that grows towards it
    out = condition.site_condition(None, np.array([-20.0, 8.0, 30.0]), (16, 16))[0]
    assert not out[:2].any() and out[2, 0].mean() > out[2, -1].mean() and out[2].max() < 0.7
    with pytest.raises(condition.ConditionError, match="building map has shape"):
        condition.site_condition(np.zeros((8, 8), bool), None, (16, 16))


def test_dropout_forgets_each_part_independently():
    cond = condition.site_condition(np.ones((64, 8, 8), bool), np.tile([1.0, 1.0, 20.0], (64, 1)), (8, 8))
    out = condition.dropout(cond, np.random.default_rng(0), 0.5, 0.5)
    building_kept, bs_kept = out[:, 1, 0, 0] == 1, out[:, 3, 0, 0] == 1
    assert 10 < building_kept.sum() < 54 and 10 < bs_kept.sum() < 54
    assert (building_kept != bs_kept).any()  # independent
    assert not out[~building_kept, :2].any() and not out[~bs_kept, 2:].any()


def test_conditional_score_model_is_unconditional_with_zero_condition():
    schedule = Schedule.vp(100)
    torch.manual_seed(0)
    model = ScoreModel(PRESETS["tiny"].__class__(**{**PRESETS["tiny"].to_dict(), "cond_channels": condition.CHANNELS}),
                       schedule).eval()
    x, t = torch.randn(2, 2, 16, 16), torch.full((2,), 0.5)
    zeros = torch.zeros(2, condition.CHANNELS, 16, 16)
    torch.testing.assert_close(model(x, t), model(x, t, zeros))
    cond = torch.from_numpy(condition.site_condition(np.eye(16, dtype=bool), np.array([3.0, 3.0, 20.0]), (16, 16), 2))
    assert not torch.allclose(model(x, t), model(x, t, cond))
    with pytest.raises(ValueError, match="no condition channels"):
        ScoreModel(PRESETS["tiny"], schedule)(x, t, cond)


def test_crops_and_flips_move_the_transmitters_with_the_map():
    """After a crop and mirrors, line-of-sight cells still point at the moved transmitter."""
    tile = procedural.generate_tile(np.random.default_rng(3), procedural.ProceduralConfig(tile_size=64))
    x, tx = np.repeat(tile.pixels[None], 8, 0), np.repeat(tile.tx[None], 8, 0)
    out, tx2, _ = augment(x, np.random.default_rng(1), crop=40, flips=True, tx=tx)

    def los(p, t):
        rows, cols = np.mgrid[0 : p.shape[1], 0 : p.shape[2]] + 0.5
        dn, de = rows - t[0], t[1] - cols
        sine = (p[1] - codec.AOA_OFFSET) / codec.AOA_SCALE
        return (~codec.building_mask(p)) & (np.abs(sine - dn / np.maximum(np.hypot(dn, de), 1e-9)) < 1e-4)

    before = los(tile.pixels, tile.tx).sum() / tile.pixels[0].size
    for p, t in zip(out, tx2):
        assert los(p, t).sum() / p[0].size > 0.5 * before


def test_training_a_site_aware_prior_uses_the_tiles_own_site(tmp_path):
    data = small_dataset(tmp_path / "d", {"train": 16, "eval": 8}, region=0, seed=3)
    schedule = Schedule.vp(100)
    ucfg = PRESETS["tiny"].__class__(**{**PRESETS["tiny"].to_dict(), "cond_channels": condition.CHANNELS})
    torch.manual_seed(0)
    model = ScoreModel(ucfg, schedule)
    seen = []
    objective = objectives.ScoreMatching(schedule)
    original = objective.condition

    def spy(m, x0, tx, rng, **site):
        cond = original(m, x0, tx, rng, **site)
        seen.append((tx is not None, cond))
        return cond

    object.__setattr__(objective, "condition", spy)
    trainer = Trainer(model, objective, data.split("train"), data.split("eval"),
                      TrainConfig(steps=6, batch_size=8, lr=1e-3, warmup=1, eval_every=100, checkpoint_every=100),
                      tmp_path / "run", {"kind": "prior", "unet": ucfg.to_dict(), "schedule": schedule.to_dict()},
                      progress=False)
    trainer.fit()
    assert len(seen) >= 6 and all(has_tx for has_tx, _ in seen)
    conds = torch.cat([c for _, c in seen])
    known_bs = conds[:, 3, 0, 0] == 1
    assert 0 < known_bs.float().mean() < 1  # dropout at work, and the transmitters reached the condition
    assert (conds[known_bs, 2].amax(dim=(1, 2)) > 0.5).float().mean() > 0.5  # most BSs lie in or near the tile
