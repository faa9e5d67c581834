"""Contract tests shared by every operator: VJP against central finite differences, shapes, specs."""

import numpy as np
import pytest

from runtime import codec, operators, tasks

RNG = np.random.default_rng(0)
SHAPE = (2, 2, 16, 16)


def _x(rng, low=0.35, high=0.95):
    return rng.uniform(low, high, SHAPE)


def _smooth_cases():
    rng = np.random.default_rng(1)
    masks = np.stack([operators.box_mask(rng, (16, 16), (3, 8)) for _ in range(2)])
    return {
        "identity": operators.Identity(),
        "mask": operators.Mask(masks),
        "shared-mask": operators.Mask(operators.random_mask(rng, (16, 16), (0.2, 0.3))),
        "downsample2": operators.Downsample(2),
        "downsample4": operators.Downsample(4),
        "truncate": operators.Truncate(0.2, 0.7),
        "compose": operators.Compose((operators.Truncate(0.3, 0.8), operators.Mask(masks), operators.Downsample(2))),
        "per_channel": operators.PerChannel((operators.Truncate(0.2, 0.7), operators.Downsample(1))),
    }


@pytest.mark.parametrize("name", list(_smooth_cases()))
def test_vjp_matches_finite_differences(name):
    op = _smooth_cases()[name]
    rng = np.random.default_rng(2)
    x = _x(rng)
    if "truncate" in name or name in ("compose", "per_channel"):
        x = 0.31 + 0.38 * x  # inside the windows, where the straight-through VJP is the derivative
    y = op.forward(x)
    assert y.shape == op.output_shape(x.shape)
    v = rng.standard_normal(y.shape)
    u = rng.standard_normal(x.shape)
    eps = 1e-6
    jvp = (op.forward(x + eps * u) - op.forward(x - eps * u)) / (2 * eps)
    lhs = float((v * jvp).sum())
    rhs = float((op.vjp(x, v) * u).sum())
    assert rhs == pytest.approx(lhs, rel=1e-6, abs=1e-9)


def test_truncation_is_straight_through_outside_the_window():
    x = np.array([[[[0.05, 0.2, 0.45, 0.7, 0.95]]]])
    op = operators.Truncate(0.2, 0.7)
    np.testing.assert_allclose(op.forward(x), [[[[0.2, 0.2, 0.45, 0.7, 0.7]]]])
    v = np.array([[[[1.0, -2.0, 3.0, -4.0, 5.0]]]])
    np.testing.assert_array_equal(op.vjp(x, v), v)  # the identity, as for the quantizer's STE
    # A saturated estimate whose observation lies inside the window is pulled back toward it.
    y = np.array([[[[0.5]]]])
    est = np.array([[[[0.9]]]])
    r = y - op.forward(est)
    assert float(op.vjp(est, -r)[0, 0, 0, 0]) > 0  # the gradient of ||r||^2 / 2 points up: step goes down


def test_vjp_is_per_sample():
    op = _smooth_cases()["mask"]
    x = _x(np.random.default_rng(3))
    v = np.random.default_rng(4).standard_normal(x.shape)
    both = op.vjp(x, v)
    m0 = operators.Mask(op.mask[:1])
    np.testing.assert_array_equal(both[:1], m0.vjp(x[:1], v[:1]))


def test_aoa_quantizer_reports_sector_centres():
    # theta in degrees -> sine -> pixel; K = 12: [0, 30) -> 15, [60, 90) -> 75, [-30, 0) -> -15
    theta = np.array([1.0, 29.0, 61.0, 89.0, -1.0, -29.0, 100.0])
    expect = np.array([15.0, 15.0, 75.0, 75.0, -15.0, -15.0, 105.0])
    px = (0.35 * np.sin(np.radians(theta)) + 0.65).reshape(1, 1, 1, -1)
    out = operators.QuantizeAoA(12).forward(px)
    np.testing.assert_allclose(out.ravel(), 0.35 * np.sin(np.radians(expect)) + 0.65, atol=1e-12)


def test_aoa_quantizer_keeps_buildings_and_uses_the_straight_through_estimator():
    x = np.array([[[[0.0, 0.1, 0.5, 0.9]]]])
    op = operators.QuantizeAoA(24)
    y = op.forward(x)
    assert y[0, 0, 0, 0] == 0 and y[0, 0, 0, 1] == 0 and y[0, 0, 0, 2] > 0.3
    v = np.array([[[[1.0, 2.0, 3.0, 4.0]]]])
    # STE (eq. 36): d v_STE / d v = 1 on outdoor cells; buildings are fixed to 0.
    np.testing.assert_array_equal(op.vjp(x, v), [[[[0.0, 0.0, 3.0, 4.0]]]])


def test_jtqr_is_the_papers_operator():
    rng = np.random.default_rng(5)
    x = codec.encode(rng.uniform(-250, -50, (1, 8, 8)), rng.uniform(-1, 1, (1, 8, 8)), rng.random((1, 8, 8)) < 0.2)
    y = operators.jtqr().forward(x)
    assert y[:, 0].min() >= 0.2 and y[:, 0].max() <= 0.7
    levels = 0.35 * np.sin(np.radians(-180 + (np.arange(24) + 0.5) * 15)) + 0.65
    aoa = y[:, 1][~codec.building_mask(x)]
    assert np.abs(aoa[:, None] - levels[None]).min(axis=1).max() < 1e-6


def test_specs_round_trip_and_errors_name_the_problem():
    rng = np.random.default_rng(6)
    op = operators.Compose((operators.Mask(operators.box_mask(rng, (8, 8), (2, 4))), operators.jtqr()))
    again = operators.from_spec(op.to_spec())
    x = rng.uniform(0.3, 1.0, (1, 2, 8, 8))
    np.testing.assert_array_equal(again.forward(x), op.forward(x))
    with pytest.raises(operators.OperatorError, match="unknown operator 'blur'"):
        operators.from_spec({"op": "blur"})
    with pytest.raises(operators.OperatorError, match="factor must be an integer >= 1"):
        operators.from_spec({"op": "downsample", "factor": 0})
    with pytest.raises(operators.OperatorError, match="low < high"):
        operators.Truncate(0.8, 0.2)
    with pytest.raises(operators.OperatorError, match="even number of sectors"):
        operators.QuantizeAoA(7)
    with pytest.raises(operators.OperatorError, match="bad parameters for operator 'truncate'"):
        operators.from_spec({"op": "truncate", "colour": 1})
    with pytest.raises(operators.OperatorError, match="not divisible by factor 3"):
        operators.Downsample(3).forward(np.zeros((1, 2, 8, 8)))
    with pytest.raises(operators.OperatorError, match="does not fit input"):
        operators.Mask(np.ones((4, 4), bool)).forward(np.zeros((1, 2, 8, 8)))


def test_mask_generators_follow_the_paper_ranges():
    rng = np.random.default_rng(7)
    for _ in range(50):
        m = operators.box_mask(rng, (128, 128))
        rows, cols = np.where(~m)
        assert 5 <= np.ptp(rows) + 1 <= 50 and 5 <= np.ptp(cols) + 1 <= 50
        r = operators.random_mask(rng, (128, 128))
        assert 0.0015 - 1e-4 <= (~r).mean() <= 0.1526 + 1e-4


def test_tasks_and_trajectories(proc_tiles):
    pixels, _ = proc_tiles
    rng = np.random.default_rng(8)
    for task in tasks.TASKS:
        op = tasks.make_operator(task, rng, pixels[:2])
        y = tasks.observe(op, pixels[:2], rng)
        assert y.shape == op.output_shape(pixels[:2].shape) and np.isfinite(y).all()
    traj = tasks.make_operator("trajectory", rng, pixels[:1]).mask[0]
    building = codec.building_mask(pixels[0])
    assert (traj[building]).all(), "building footprints are known map data"
    assert 0.01 < (traj & ~building).mean() < 0.5
    with pytest.raises(operators.OperatorError, match="unknown task"):
        tasks.make_operator("denoise", rng, pixels)
