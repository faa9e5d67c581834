"""Contract tests shared by every operator: VJP against central finite differences, shapes, specs."""

import numpy as np
import pytest

from ckm_edge.runtime import codec, operators, tasks

RNG = np.random.default_rng(0)
SHAPE = (2, 2, 16, 16)


def _x(rng, low=0.35, high=0.95):
    return rng.uniform(low, high, SHAPE)


def _smooth_cases():
    rng = np.random.default_rng(1)
    masks = np.stack([tasks.box_mask(rng, (16, 16), (3, 8)) for _ in range(2)])
    return {
        "identity": operators.Identity(),
        "mask": operators.Mask(masks),
        "shared-mask": operators.Mask(tasks.random_mask(rng, (16, 16), (0.2, 0.3))),
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


def test_a_gain_saturated_below_the_weakest_real_path_is_no_path():
    y = np.array([[[[0.19, 0.2, 0.224, 0.226, 0.4]]]], np.float32)  # noisy readings at and near the -210 dB bound
    trunc = operators.Truncate(0.2, 0.7)
    np.testing.assert_array_equal(trunc.known_no_path(y), [[[True, True, True, False, False]]])
    assert operators.Truncate(0.3, 0.8).known_no_path(y) is None  # a bound above the weakest path (-190 dB) proves nothing
    jt = operators.jtqr()
    y2 = np.concatenate([y, np.full_like(y, 0.2)], axis=1)  # the AoA channel never decides
    np.testing.assert_array_equal(jt.known_no_path(y2), trunc.known_no_path(y))
    np.testing.assert_array_equal(operators.Compose((jt,)).known_no_path(y2), trunc.known_no_path(y))
    for op in (operators.Mask(np.ones((1, 5), bool)), operators.Downsample(1), operators.Identity(),
               operators.PerChannel((operators.Identity(), trunc))):
        assert op.known_no_path(y2) is None
    x = np.array([[[[0.1, 0.5, 0.0]], [[0.8, 0.4, 0.0]]]], np.float32)  # outdoor, outdoor, building
    got = codec.set_no_path(x, np.array([[[True, False, True]]]))  # the building stays one
    np.testing.assert_array_equal(got, np.array([[[[0.0, 0.5, 0.0]], [[codec.AOA_OFFSET, 0.4, 0.0]]]], np.float32))
    assert x[0, 0, 0, 0] == np.float32(0.1)  # a new array
    zeros = np.zeros_like(x)  # an intermediate map that codes every cell as a building: the caller's layout decides
    got = codec.set_no_path(zeros, np.array([[[True, False, True]]]), outdoor=np.array([[[True, True, False]]]))
    np.testing.assert_array_equal(got, np.array([[[[0.0, 0.0, 0.0]], [[codec.AOA_OFFSET, 0.0, 0.0]]]], np.float32))


def test_specs_round_trip_and_errors_name_the_problem():
    rng = np.random.default_rng(6)
    op = operators.Compose((operators.Mask(tasks.box_mask(rng, (8, 8), (2, 4))), operators.jtqr()))
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
    with pytest.raises(operators.OperatorError, match=r"operator 'truncate' has no parameter\(s\) 'colour' \(has: high, low\)"):
        operators.from_spec({"op": "truncate", "colour": 1})
    with pytest.raises(operators.OperatorError, match="not divisible by factor 3"):
        operators.Downsample(3).forward(np.zeros((1, 2, 8, 8)))
    with pytest.raises(operators.OperatorError, match="does not fit input"):
        operators.Mask(np.ones((4, 4), bool)).forward(np.zeros((1, 2, 8, 8)))


def test_mask_generators_follow_the_paper_ranges():
    rng = np.random.default_rng(7)
    for _ in range(50):
        m = tasks.box_mask(rng, (128, 128))
        rows, cols = np.where(~m)
        assert 5 <= np.ptp(rows) + 1 <= 50 and 5 <= np.ptp(cols) + 1 <= 50
        r = tasks.random_mask(rng, (128, 128))
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
    drive = tasks.make_operator("drive", rng, pixels[:1])
    assert not (drive.mask[0] & building).any(), "a drive reads the streets; the buildings come from the site"
    scale = pixels[0, 0].size / 128 ** 2
    assert 1 <= drive.mask[0].sum() <= round(tasks.DRIVE_READINGS[1] * scale)
    open_cells = tasks.unobserved("drive", drive, pixels[:1])[0]
    np.testing.assert_array_equal(open_cells[0], ~drive.mask[0] & ~building)  # the outdoor cells not driven
    with pytest.raises(operators.OperatorError, match="unknown task"):
        tasks.make_operator("denoise", rng, pixels)


def test_a_drive_test_on_a_full_tile_is_a_scarce_mask():
    """On a 128 x 128 tile a drive observes a few per cent of the cells: the scarce masks whose
    construction and calibration are their own (runtime.recommend, runtime.uncertainty)."""
    from ckm_edge.runtime import recommend, uncertainty

    rng = np.random.default_rng(3)
    building = np.zeros((128, 128), bool)
    building[::8, :] = building[:, ::8] = True  # a street grid's blocks' edges
    x = np.where(building, 0.0, 0.5)[None, None].repeat(2, axis=1).astype(np.float32)
    for _ in range(5):
        op = operators.Mask(tasks.drive_mask(rng, building)[None])
        assert recommend.mask_share(op) < recommend.SCARCE
        assert recommend.sampler_kinds(op)[0] == "mask-scarce" and uncertainty.calibration_kind(op) == "mask-scarce"
    assert tasks.make_operator("drive", rng, x).mask.shape == (1, 128, 128)


# --- data consistency: proximal steps against brute-force optimisation ------------------------

def _objective(op, z, y, lam):
    lam = np.asarray(lam, np.float64).reshape(-1, 1, 1, 1) if np.ndim(lam) else lam
    return lambda x: float(((y - op.forward(x)) ** 2).sum() + (lam * (x - z) ** 2).sum())


def _lbfgs(op, z, y, lam, linear=True):
    """The bound-constrained minimiser of ||y - A(x)||^2 + lam ||x - z||^2 over [0, 1], by L-BFGS-B
    with the operator's own VJP for the gradient (exact for these linear operators)."""
    from scipy.optimize import minimize

    lam_b = np.asarray(lam, np.float64).reshape(-1, 1, 1, 1) if np.ndim(lam) else lam

    def fg(flat):
        x = flat.reshape(z.shape)
        r = y - op.forward(x)
        return float((r**2).sum() + (lam_b * (x - z) ** 2).sum()), (-2 * op.vjp(x, r) + 2 * lam_b * (x - z)).ravel()

    res = minimize(fg, z.ravel(), jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * z.size,
                   options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
    return res.x.reshape(z.shape)


def _linear_cases():
    rng = np.random.default_rng(11)
    masks = np.stack([tasks.box_mask(rng, (8, 8), (2, 5)) for _ in range(2)])
    return {
        "identity": operators.Identity(),
        "mask": operators.Mask(masks),
        "downsample2": operators.Downsample(2),
        "downsample4": operators.Downsample(4),
        "compose-cg": operators.Compose((operators.Mask(masks[0]), operators.Downsample(2))),
        "per_channel": operators.PerChannel((operators.Mask(masks[1]), operators.Identity())),
    }


@pytest.mark.parametrize("name", list(_linear_cases()))
@pytest.mark.parametrize("lam", [0.3, np.array([0.05, 2.0])], ids=["scalar", "per-sample"])
def test_linear_prox_is_the_constrained_minimiser(name, lam):
    op = _linear_cases()[name]
    rng = np.random.default_rng(12)
    x = rng.uniform(0.0, 1.0, (2, 2, 8, 8))
    x[:, :, :2] = 0.0  # cells at the range's edge, where the bound matters
    y = op.forward(x) + 0.05 * rng.standard_normal(op.output_shape(x.shape))
    z = np.clip(x + 0.3 * rng.standard_normal(x.shape), 0.0, 1.0)
    got = op.prox(z, y, lam)
    assert op.linear and got.shape == z.shape and got.min() >= 0 and got.max() <= 1
    ref = _lbfgs(op, z, y, lam)
    f = _objective(op, z, y, lam)
    assert f(got) <= f(ref) + 1e-7
    np.testing.assert_allclose(got, ref, atol=2e-4)


@pytest.mark.parametrize("name", ["mask", "downsample2", "compose-cg", "per_channel"])
def test_noiseless_prox_is_the_projection_onto_the_observation(name):
    from scipy.optimize import minimize

    op = _linear_cases()[name]
    rng = np.random.default_rng(13)
    x = rng.uniform(0.2, 0.8, (2, 2, 8, 8))
    y = op.forward(x)
    z = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0.0, 1.0)
    got = op.prox(z, y, 0.0)
    np.testing.assert_allclose(op.forward(got), y, atol=1e-6 if name != "compose-cg" else 1e-4)  # A x = y
    # and no x with A x = y in [0, 1] lies closer to z (SLSQP with the equality constraints)
    res = minimize(lambda v: float(((v - z.ravel()) ** 2).sum()), x.ravel(), jac=lambda v: 2 * (v - z.ravel()),
                   constraints=[{"type": "eq", "fun": lambda v: (op.forward(v.reshape(z.shape)) - y).ravel()}],
                   bounds=[(0.0, 1.0)] * z.size, method="SLSQP", options={"maxiter": 500, "ftol": 1e-14})
    # exact in closed form; a composition (CG, then projected gradient where [0, 1] binds) to within 1 %
    assert ((got - z) ** 2).sum() <= res.fun * (1.01 if name == "compose-cg" else 1.0) + 1e-6
    if op.name == "downsample":
        np.testing.assert_allclose(op.pinv(y, x.shape), np.repeat(np.repeat(y, 2, axis=2), 2, axis=3))


@pytest.mark.parametrize("op", [operators.Truncate(0.3, 0.7), operators.QuantizeAoA(24), operators.QuantizeAoA(8)],
                         ids=["truncate", "quantize24", "quantize8"])
@pytest.mark.parametrize("lam", [0.0, 0.05, 1.0])
def test_per_cell_prox_is_the_minimiser_over_a_fine_grid(op, lam):
    """Truncation and quantization are per cell: brute force over 20,001 values of each cell."""
    rng = np.random.default_rng(14)
    x = rng.uniform(0.3, 1.0, (1, 1, 6, 6))
    y = op.forward(x) + 0.01 * rng.standard_normal(x.shape)
    z = rng.uniform(0.3, 1.0, x.shape)
    got = op.prox(z, y, lam)
    grid = np.linspace(0.0, 1.0, 20001)
    cost = (y[..., None] - op.forward(np.broadcast_to(grid, x.shape + grid.shape).reshape(1, 1, 6, -1)).reshape(
        x.shape + grid.shape)) ** 2 + lam * (grid - z[..., None]) ** 2
    got_cost = (y - op.forward(got)) ** 2 + lam * (got - z) ** 2
    best = cost.min(axis=-1)
    # (the quantizer keeps values 1e-6 inside a sector edge, so that float32 rounding cannot move them out)
    assert (got_cost <= best + 1e-5).all(), float((got_cost - best).max())
    if lam == 0:  # among the best fits, the one nearest z
        ties = cost <= best[..., None] + 1e-12
        nearest = np.where(ties, np.abs(grid - z[..., None]), np.inf).min(axis=-1)
        assert (np.abs(got - z) <= nearest + 1e-4).all()


def test_saturated_and_quantized_cells_stay_in_the_set_their_observation_allows():
    x = np.array([[[[0.1, 0.25, 0.5, 0.8, 0.95]]]])
    trunc = operators.Truncate(0.2, 0.7)
    y = trunc.forward(x)
    z = np.full_like(x, 0.5)
    got = trunc.prox(z, y, 0.0)
    np.testing.assert_allclose(got, [[[[0.2, 0.25, 0.5, 0.7, 0.7]]]])  # saturated: at or beyond the bound hit
    q = operators.QuantizeAoA(24, building=np.array([[True, False, False, False, False]]))
    yq = q.forward(x)
    got = q.prox(np.full_like(x, 0.65), yq, 0.0)
    assert got[0, 0, 0, 0] == 0.0 and np.array_equal(q.forward(got), yq)  # a building is 0; the rest in its sector
    jt = operators.jtqr(building=np.array([[True, False, False, False, False]]))
    both = jt.prox(np.full((1, 2, 1, 5), 0.5), jt.forward(np.concatenate([x, x], axis=1)), 0.0)
    assert both[0, 0, 0, 0] == 0.0  # the quantizer's layout zeroes the building's gain too (codec: 0 in every channel)


def test_box_feasible_observations_project_by_a_clip():
    """Where an operator says what its observation allows is a box, the exact projection
    (prox with lam = 0) of any map in [0, 1] is the clip between the projections of 0 and 1 —
    what runtime.smooth relies on; operators whose set is not a box say so."""
    rng = np.random.default_rng(16)
    x = rng.uniform(0.0, 1.0, (2, 2, 16, 16))
    building = x[:, 0] < 0.15
    boxes = {"identity": operators.Identity(), "mask": _smooth_cases()["mask"], "truncate": operators.Truncate(0.3, 0.7),
             "quantize": operators.QuantizeAoA(24), "quantize-layout": operators.QuantizeAoA(8, building=building),
             "jtqr": operators.jtqr(building=building), "compose-1": operators.Compose((operators.Truncate(0.2, 0.6),))}
    for name, op in boxes.items():
        assert op.box_feasible, name
        y = op.forward(x)
        lo, hi = op.prox(np.zeros_like(x), y, 0.0), op.prox(np.ones_like(x), y, 0.0)
        assert (lo <= hi).all(), name
        for z in (rng.uniform(0.0, 1.0, x.shape), x, np.full_like(x, 0.5)):
            np.testing.assert_allclose(np.clip(z, lo, hi), op.prox(z, y, 0.0), atol=1e-7, err_msg=name)
    for op in (operators.Downsample(2), _smooth_cases()["compose"], operators.PerChannel((operators.Truncate(),
                                                                                           operators.Downsample(1)))):
        assert not op.box_feasible, op.name


class _Square(operators.Operator):
    """A differentiable nonlinear toy operator (no exact prox): the fallback's test case."""

    name = "square"

    def forward(self, x):
        return np.asarray(x) ** 2

    def vjp(self, x, v):
        return 2 * np.asarray(x) * v


def test_the_fallback_prox_descends_through_the_operators_vjp():
    from scipy.optimize import minimize

    op = _Square()
    rng = np.random.default_rng(15)
    x = rng.uniform(0.2, 0.9, (2, 1, 4, 4))
    y = op.forward(x) + 0.01 * rng.standard_normal(x.shape)
    z = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0.05, 1.0)
    assert not op.exact_prox
    got = op.prox(z, y, 0.5)
    f = _objective(op, z, y, 0.5)
    res = minimize(lambda v: f(v.reshape(z.shape)), z.ravel(), method="L-BFGS-B")
    assert f(got) <= res.fun * 1.001 + 1e-9
    mixed = operators.Compose((operators.Downsample(2), operators.Truncate(0.2, 0.6)))  # linear then saturating
    assert not mixed.exact_prox
    xm = rng.uniform(0.0, 1.0, (1, 2, 8, 8))
    ym = mixed.forward(xm)
    zm = rng.uniform(0.0, 1.0, xm.shape)
    fm = _objective(mixed, zm, ym, 0.1)
    assert fm(mixed.prox(zm, ym, 0.1)) < 0.5 * fm(zm)
