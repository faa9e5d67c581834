import numpy as np
import pytest

from ckm_edge.runtime.schedule import Schedule, ScheduleError


def test_vp_is_the_ddpm_discretization():
    s = Schedule.vp(1000, 0.1, 20.0)
    betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
    np.testing.assert_allclose(s.alpha_bars, np.cumprod(1 - betas), rtol=1e-12)
    np.testing.assert_allclose(s.times, np.arange(1, 1001) / 1000)
    assert s.alpha_bars[-1] < 1e-4  # x_N is (almost) pure noise


def test_perturbation_kernel_and_tweedie():
    s = Schedule.vp(100)
    rng = np.random.default_rng(0)
    x0, z = rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((3, 2, 4, 4))
    i = np.array([0, 50, 99])
    xi = s.perturb(x0, z, i)
    score = s.score_target(z, i)
    for k, idx in enumerate(i):
        np.testing.assert_allclose(xi[k], np.sqrt(s.alpha_bars[idx]) * x0[k] + np.sqrt(1 - s.alpha_bars[idx]) * z[k])
        # Tweedie: the progressive estimate with the true score recovers x0 exactly.
        np.testing.assert_allclose(s.x0_hat(xi[k], score[k], idx), x0[k], atol=1e-9)


def test_ancestral_coefficients_match_eq_13():
    s = Schedule.vp(1000)
    betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
    ab = np.cumprod(1 - betas)
    for i in (1, 500, 999):
        a, b, c = s.ancestral_coefficients(i)
        assert a == pytest.approx(1 / np.sqrt(1 - betas[i]))
        assert b == pytest.approx(betas[i] / np.sqrt(1 - betas[i]))
        assert c == pytest.approx(np.sqrt(betas[i] * (1 - ab[i - 1]) / (1 - ab[i])))
    assert s.ancestral_coefficients(0)[2] == 0.0  # the last step adds no noise


@pytest.mark.parametrize("schedule", [Schedule.vp(1000).respace(30), Schedule.vp(1000).respace(30, "ddim"),
                                      Schedule.ve(100, 0.01, 50.0)], ids=["vp-ddpm", "vp-ddim", "ve"])
def test_predictor_over_x0_hat_is_the_same_step(schedule):
    rng = np.random.default_rng(0)
    x, score = rng.standard_normal((2, 64))
    for i in range(len(schedule)):
        a, b, c = schedule.ancestral_coefficients(i)
        d, e, c2 = schedule.x0_predictor_coefficients(i)
        np.testing.assert_allclose(d * x + e * schedule.x0_hat(x, score, i), a * x + b * score, rtol=1e-9, atol=1e-9)
        assert c2 == c
    if schedule.kind == "vp" and schedule.params.get("respacing") != "ddim":
        ab, abp = schedule.alpha_bars[5], schedule.alpha_bars[4]
        d, e, _ = schedule.x0_predictor_coefficients(5)  # DDPM's posterior-mean coefficients
        assert e == pytest.approx(np.sqrt(abp) * (1 - ab / abp) / (1 - ab))
        assert d == pytest.approx(np.sqrt(ab / abp) * (1 - abp) / (1 - ab))
        assert schedule.x0_predictor_coefficients(0)[0] == pytest.approx(0, abs=1e-12)  # x_0 = x0_hat


def test_respacing_keeps_alpha_bars_and_rederives_betas():
    s = Schedule.vp(1000)
    r = s.respace(50)
    assert len(r) == 50 and r.times[-1] == 1.0 and r.times[0] == pytest.approx(0.001)
    kept = np.round(r.times * 1000).astype(int) - 1
    np.testing.assert_allclose(r.alpha_bars, s.alpha_bars[kept])
    a, b, c = r.ancestral_coefficients(10)
    alpha = r.alpha_bars[10] / r.alpha_bars[9]
    assert a == pytest.approx(1 / np.sqrt(alpha)) and b == pytest.approx((1 - alpha) / np.sqrt(alpha))
    again = Schedule.from_dict(r.to_dict())
    np.testing.assert_array_equal(again.noise_std, r.noise_std)


def test_ve_schedule_uses_the_same_interface():
    s = Schedule.ve(100, 0.01, 50.0)
    assert np.all(s.scale == 1) and s.noise_std[0] == pytest.approx(0.01) and s.noise_std[-1] == pytest.approx(50)
    a, b, c = s.ancestral_coefficients(50)
    assert a == 1.0 and b == pytest.approx(s.noise_std[50] ** 2 - s.noise_std[49] ** 2)
    rng = np.random.default_rng(1)
    assert s.prior_sample((1000,), rng).std() == pytest.approx(50, rel=0.1)


def test_bad_parameters_are_refused():
    with pytest.raises(ScheduleError, match="beta_min < beta_max"):
        Schedule.vp(100, 1.0, 0.5)
    with pytest.raises(ScheduleError, match=r"steps must be in \[1, 100\]"):
        Schedule.vp(100).respace(0)
    with pytest.raises(ScheduleError, match="unknown schedule kind 'cosine'"):
        Schedule.from_dict({"kind": "cosine", "n": 10})
    with pytest.raises(ScheduleError, match="bad parameters for a vp schedule"):
        Schedule.from_dict({"kind": "vp", "n": 10, "gamma": 1})


def test_ddim_respacing_is_deterministic_and_exact_for_a_point_mass():
    # Data = a single point x0: the true score is known at every step, and DDIM must land on x0.
    s = Schedule.vp(1000).respace(20, "ddim")
    x0 = 0.7
    x = 1.3  # any starting point
    for i in reversed(range(len(s))):
        score = -(x - s.scale[i] * x0) / s.noise_std[i] ** 2
        a, b, c = s.ancestral_coefficients(i)
        assert c == 0.0
        x = a * x + b * score
    assert x == pytest.approx(x0, abs=1e-9)
