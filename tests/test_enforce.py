"""What an observation proves, every construction respects (Operator.bounds / enforce, Observations.finish).

Per operator kind, on random truths and adversarial constructions (all 0, all 1, the truth
inverted, uniform noise, the truth pushed far off): noiseless observations are reproduced exactly
(A(finish(x)) = y), noisy ones within the noise, saturated gains stay beyond their bound, AoA within
the sector(s) its reading allows, known buildings 0; and the truth itself always satisfies what is
enforced (so enforcing never moves a cell away from it).
"""

from __future__ import annotations

import numpy as np
import pytest

from ckm_edge.runtime import codec, operators
from ckm_edge.runtime.observations import Observation, Observations
from ckm_edge.runtime.operators.base import PROVEN_SIGMAS, censored
from ckm_edge.runtime.site import Site

H = 32


def truth_maps(rng: np.random.Generator, n: int = 2) -> np.ndarray:
    """Maps with buildings (0), a no-path region (the floor, sine 0), gains over the range real paths
    have (codec.PATH_GAIN_PIXEL_MIN up), AoA over [-1, 1]."""
    x = np.empty((n, 2, H, H), np.float32)
    x[:, 0] = rng.uniform(codec.PATH_GAIN_PIXEL_MIN, 1.0, (n, H, H))
    x[:, 1] = rng.uniform(codec.AOA_PIXEL_MIN, codec.AOA_PIXEL_MAX, (n, H, H))
    x[:, :, :4, :4] = 0.0  # a building
    x[:, 0, -4:, -4:], x[:, 1, -4:, -4:] = codec.NO_PATH_PIXELS  # no path
    return x


def adversaries(x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"zeros": np.zeros_like(x), "ones": np.ones_like(x), "inverted": 1.0 - x,
            "uniform": rng.uniform(0, 1, x.shape).astype(np.float32),
            "far": np.clip(x + rng.choice([-0.4, 0.4], x.shape), 0, 1).astype(np.float32)}


def bounded_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Noise an adversary picks within what the proof tolerates (|n| < PROVEN_SIGMAS sigma)."""
    return (sigma * np.clip(rng.standard_normal(shape) * 2.0, -PROVEN_SIGMAS + 0.05, PROVEN_SIGMAS - 0.05)).astype(np.float32)


def operator_of(kind: str, rng: np.random.Generator, x: np.ndarray) -> operators.Operator:
    building = codec.building_mask(x[0])
    return {
        "identity": lambda: operators.Identity(),
        "mask": lambda: operators.Mask(rng.random((H, H)) < 0.3),
        "downsample": lambda: operators.Downsample(4),
        "truncate": lambda: operators.PerChannel((operators.Truncate(0.2, 0.7), operators.Identity())),
        "quantize": lambda: operators.PerChannel((operators.Identity(), operators.QuantizeAoA(24, building))),
        "jtqr": lambda: operators.jtqr(0.2, 0.7, 24, building),
        "jtqr-12": lambda: operators.jtqr(0.3, 0.8, 12, building),
        "jtqr-48-no-layout": lambda: operators.jtqr(0.2, 0.7, 48),
        "compose-of-one": lambda: operators.Compose((operators.Mask(rng.random((H, H)) < 0.1),)),
    }[kind]()


KINDS = ("identity", "mask", "downsample", "truncate", "quantize", "jtqr", "jtqr-12", "jtqr-48-no-layout", "compose-of-one")


def finish(op, y, sigma, x, site=None) -> np.ndarray:
    return Observations.same(Observation(op, y, sigma, site), x.shape[1:], len(x)).finish(x)


@pytest.mark.parametrize("kind", KINDS)
def test_noiseless_observations_are_reproduced_exactly(kind):
    rng = np.random.default_rng(1)
    x = truth_maps(rng, 1)
    op = operator_of(kind, rng, x)
    y = op.forward(x)
    for name, adv in adversaries(np.repeat(x, 2, axis=0), rng).items():
        out = finish(op, y, 0.0, adv)
        assert np.abs(op.forward(out) - y).max() <= 2e-6, (kind, name)
        assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sigma", [0.003, 0.01, 0.1])
def test_noisy_observations_hold_within_the_noise_and_never_exclude_the_truth(kind, sigma):
    rng = np.random.default_rng(2)
    x = truth_maps(rng, 2)
    op = operator_of(kind, rng, x)
    y = (op.forward(x) + bounded_noise(rng, op.forward(x).shape, sigma)).astype(np.float32)
    bounds = op.bounds(y, sigma)
    if bounds is not None:  # the truth lies in what is proven: enforcing it changes nothing
        low, high = np.broadcast_arrays(*bounds, x)[:2]
        assert (x >= low - 3e-6).all() and (x <= high + 3e-6).all(), kind  # sector edges: 1e-6 inside
    enforced_truth = op.enforce(x.copy(), y, sigma)
    assert np.abs(enforced_truth - x).max() <= 1e-5, kind
    for name, adv in adversaries(x, rng).items():
        out = finish(op, y, sigma, adv)
        if bounds is not None:
            # cells decided to have no path (a 2.5 sigma test, test_no_path_and_known_buildings_win) aside
            no_path = op.known_no_path(y, sigma)
            keep = np.ones(x.shape, bool) if no_path is None else np.broadcast_to(~no_path[:, None], x.shape)
            assert ((out >= low - 1e-6) & (out <= high + 1e-6))[keep].all(), (kind, name)
            # clipping into an interval that holds the truth never moves a cell away from it
            assert (np.abs(out - x) <= np.abs(np.clip(adv, 0, 1) - x) + 1e-6)[keep].all(), (kind, name)
        if isinstance(op, operators.Downsample):  # block averages within the noise
            assert np.abs(op.forward(out) - y).max() <= PROVEN_SIGMAS * sigma + 1e-5, name


def test_each_proof_in_detail():
    """Mask: observed cells within the noise, others free. Truncation: a reading at a bound leaves
    everything beyond it. Quantization: the sectors whose centre is within the noise."""
    y = np.array([0.5, 0.0, 0.9], np.float32).reshape(1, 1, 1, 3)
    low, high = operators.Mask(np.array([[True, False, True]])).bounds(y, 0.01)
    assert np.allclose(low.ravel(), [0.46, 0.0, 0.86]) and np.allclose(high.ravel(), [0.54, 1.0, 0.94])
    t = operators.Truncate(0.2, 0.7)
    low, high = t.bounds(np.array([0.2, 0.45, 0.7, 0.71], np.float32).reshape(1, 1, 1, 4), 0.01)
    assert np.allclose(low.ravel(), [0.0, 0.41, 0.66, 0.67]) and np.allclose(high.ravel(), [0.24, 0.49, 1.0, 1.0])
    q = operators.QuantizeAoA(24)
    centre, lo, hi = q.sector_intervals()
    j = len(centre) // 2  # a sector near sine 0, where centres lie far apart
    low, high = q.bounds(np.full((1, 1, 1, 1), centre[j], np.float32), 0.001)
    assert np.isclose(low, lo[j]) and np.isclose(high, hi[j])
    low, high = q.bounds(np.full((1, 1, 1, 1), centre[-1], np.float32), 0.01)  # near +90 deg: neighbours too
    assert low.item() < lo[-1] and np.isclose(high, hi[-1])


def test_censored_cells_are_bounds_wider_than_a_readings_noise():
    """A mask's readings are measured (bounds -/+ the noise), a truncated gain at its bound and an
    AoA sector are censored, an unobserved cell is neither."""
    y = np.array([0.5, 0.0, 0.9], np.float32).reshape(1, 1, 1, 3)
    assert not censored(*operators.Mask(np.array([[True, False, True]])).bounds(y, 0.01), 0.01).any()
    t = operators.Truncate(0.2, 0.7)
    flags = censored(*t.bounds(np.array([0.2, 0.45, 0.7, 0.71], np.float32).reshape(1, 1, 1, 4), 0.01), 0.01)
    assert flags.ravel().tolist() == [True, False, True, True]
    q = operators.QuantizeAoA(24)
    centre, _, _ = q.sector_intervals()
    assert censored(*q.bounds(np.full((1, 1, 1, 1), centre[len(centre) // 2], np.float32), 0.001), 0.001).all()


def test_no_path_and_known_buildings_win():
    """A gain saturated far below the weakest path is no path (floor, sine 0) even where the AoA
    sector says otherwise; the site's buildings are 0 whatever the observation allowed."""
    rng = np.random.default_rng(3)
    x = truth_maps(rng, 1)
    op = operators.jtqr(0.2, 0.7, 24)
    y = op.forward(x)
    building = codec.building_mask(x[0])
    out = finish(op, y, 0.0, np.full((2,) + x.shape[1:], 0.5, np.float32), Site(building[None]))
    no_path = op.known_no_path(y)[0] & ~building  # buildings read as saturated too, and stay buildings
    assert no_path[-4:, -4:].all()
    assert np.allclose(out[:, 0][:, no_path], codec.NO_PATH_PIXELS[0])
    assert np.allclose(out[:, 1][:, no_path], codec.NO_PATH_PIXELS[1])
    assert (out[:, :, building] == 0).all()
