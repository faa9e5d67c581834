"""The sampler seam and the data-consistent samplers: oracle parity, batching, data consistency,
the site map, the smooth fill, the registry, and what each sampler costs in engine calls."""

import dataclasses

import numpy as np
import pytest

from ckm_edge.runtime import codec, operators, tasks
from ckm_edge.runtime import sampler as seam
from ckm_edge.runtime.construct import ConstructConfig, construct
from ckm_edge.runtime.daps import DAPSConfig
from ckm_edge.runtime.diffpir import DiffPIRConfig
from ckm_edge.runtime.dps import DPSConfig
from ckm_edge.runtime.engine import EngineConfig, open_engine
from ckm_edge.runtime.sampler import Observation, Observations, SamplerError, config_from_params, respaced, sample
from ckm_edge.runtime.schedule import ScheduleError
from ckm_edge.runtime.site import Site, SiteError
from ckm_edge.runtime.smooth import smooth_fill
from ckm_edge.training import reference_samplers

SIGMA = 0.01


def _problem(tiles, task, seed=0, n=1):
    x = tiles[:n]
    rng = np.random.default_rng(seed)
    op = tasks.make_operator(task, rng, x)
    return x, op, tasks.observe(op, x, rng, SIGMA)


@pytest.mark.parametrize("task", ["ipbox", "iprandom", "sr2", "jtqr", "trajectory"])
@pytest.mark.parametrize("name,cfg", [("diffpir", DiffPIRConfig()), ("diffpir-warm", DiffPIRConfig(lam=30.0, start=0.3)),
                                      ("diffpir-restart", DiffPIRConfig(lam=1000.0, restart=0.3, restart_steps=3)),
                                      ("daps", DAPSConfig())])
def test_runtime_matches_the_pytorch_oracle_at_fixed_draws(tiny_prior, tiny_package, task, name, cfg):
    model, _, _, evl = tiny_prior
    x, op, y = _problem(evl, task, seed=3)
    site = Site.from_pixels(x) if task == "trajectory" else None
    schedule = respaced(tiny_package.schedule(), 8, cfg)
    oracle = reference_samplers.daps_sample if isinstance(cfg, DAPSConfig) else reference_samplers.diffpir_sample
    ref = oracle(model, schedule, op, y, shape=x.shape, rng=np.random.default_rng(11), cfg=cfg, sigma=SIGMA,
                 site=site).numpy()
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        out = sample(eng, schedule, Observations.of(op, y, x.shape[1:], 1, SIGMA, site), [np.random.default_rng(11)], cfg)
        assert eng.calls == {"score": 8 + getattr(cfg, "restart_steps", 0) * (getattr(cfg, "restart", 0) > 0)}  # no backward
    rmse = float(np.sqrt(((out - ref) ** 2).mean()))
    assert rmse < 1e-3, rmse


@pytest.mark.parametrize("cfg", [DiffPIRConfig(start=0.5), DiffPIRConfig(restart=0.5, restart_steps=2), DAPSConfig(),
                                 DPSConfig()], ids=["diffpir", "diffpir-restart", "daps", "dps"])
def test_a_batch_of_different_requests_equals_them_run_one_by_one(tiny_package, tiny_prior, cfg):
    *_, evl = tiny_prior
    ops, ys, sites = [], [], []
    for i, task in enumerate(["iprandom", "sr2", "jtqr"]):
        x, op, y = _problem(evl[i:], task, seed=i)
        ops.append(op)
        ys.append(y)
        sites.append(Site.from_pixels(x) if i == 0 else None)
    groups = [(slice(0, 2), Observation(ops[0], ys[0], SIGMA, sites[0])),  # two posterior samples of one request
              (slice(2, 3), Observation(ops[1], ys[1], 0.0)), (slice(3, 4), Observation(ops[2], ys[2], SIGMA))]
    schedule = respaced(tiny_package.schedule(), 4, cfg)
    seeds = (5, 6, 7, 8)
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        both = sample(eng, schedule, Observations((2, 32, 32), 4, groups), [np.random.default_rng(s) for s in seeds], cfg)
        for sl, obs in groups:
            rows = range(sl.start, sl.stop)
            one = sample(eng, schedule, Observations.same(obs, (2, 32, 32), len(rows)),
                         [np.random.default_rng(seeds[r]) for r in rows], cfg)
            np.testing.assert_allclose(both[sl], one, atol=2e-5)


@pytest.mark.parametrize("task", ["ipbox", "iprandom", "sr2"])
@pytest.mark.parametrize("cfg", [DiffPIRConfig(), DiffPIRConfig(lam=30.0, start=0.3), DAPSConfig()],
                         ids=["diffpir", "diffpir-warm", "daps"])
def test_observed_cells_of_linear_tasks_end_within_the_noise(tiny_package, tiny_prior, task, cfg):
    *_, evl = tiny_prior
    x, op, y = _problem(evl, task, seed=4)
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        noisy = construct(eng, tiny_package.schedule(), op, y, (2, 32, 32), ConstructConfig(6, 2, sampler=cfg), sigma=SIGMA)
        clean = op.forward(x)  # a noiseless observation, said to be noiseless: the map must fit it exactly
        exact = construct(eng, tiny_package.schedule(), op, clean, (2, 32, 32), ConstructConfig(6, 2, sampler=cfg), sigma=0)
    for result, obs, bound in ((noisy, y, 2 * SIGMA), (exact, clean, 1e-5)):
        for xs in result.samples:  # every posterior sample, not only their mean
            r = op.forward(xs[None]) - obs
            observed = np.broadcast_to(op.mask[:, None], r.shape) if task != "sr2" else np.ones(r.shape, bool)
            rms = float(np.sqrt((r[observed] ** 2).mean()))
            assert rms <= bound, (rms, bound)  # y carries noise sigma: the map fits it to within that


def test_the_site_map_is_a_hard_constraint_for_every_sampler(tiny_package, tiny_prior):
    *_, evl = tiny_prior
    x, op, y = _problem(evl, "trajectory", seed=2)
    site = Site.from_pixels(x)
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        for cfg in (DiffPIRConfig(start=0.3), DAPSConfig(), DPSConfig(corrector_steps=0)):
            r = construct(eng, tiny_package.schedule(), op, y, (2, 32, 32), ConstructConfig(4, 2, sampler=cfg), sigma=SIGMA,
                          site=site)
            b = site.building[0]
            assert (r.samples[:, :, b] == 0).all()
            assert (r.samples[:, 1][:, ~b] >= codec.AOA_PIXEL_MIN - 1e-6).all()
    with pytest.raises(SiteError, match="site building map has shape"):
        site_bad = Site(np.zeros((16, 16), bool))
        construct(None, tiny_package.schedule(), op, y, (2, 32, 32), site=site_bad)
    with pytest.raises(SiteError, match="boolean"):
        Site(np.zeros((32, 32), np.uint8))


def test_engine_calls_per_sampler_and_no_vjp_graphs_unless_needed(tiny_package, tiny_prior):
    *_, evl = tiny_prior
    x, op, y = _problem(evl, "sr2")
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        for cfg in (DiffPIRConfig(), DAPSConfig()):
            construct(eng, tiny_package.schedule(), op, y, (2, 32, 32), ConstructConfig(5, 3, sampler=cfg))
        assert set(eng._sessions) == {"score"}  # the forward-with-saves and backward graphs were never loaded
        assert eng.calls == {"score": 10}  # one batched evaluation per step, whatever the sample count
        construct(eng, tiny_package.schedule(), op, y, (2, 32, 32), ConstructConfig(5, 1, sampler=DPSConfig()))
        assert set(eng._sessions) == {"score", "forward", "backward"}
    for name, cfg, calls in [("diffpir", DiffPIRConfig(), {"score": 20}), ("daps", DAPSConfig(), {"score": 20}),
                             ("diffpir", DiffPIRConfig(restart=0.1, restart_steps=4), {"score": 24}),
                             ("dps", DPSConfig(), {"score": 19, "forward": 20, "backward": 20}),
                             ("dps", DPSConfig(jacobian_free=True, corrector_steps=0), {"score": 20})]:
        spec = seam.spec(name)
        assert spec.evaluations(cfg, 20) == calls and spec.needs_vjp(cfg) == ("forward" in calls)
        assert spec.steps_run(cfg, 20) == (24 if getattr(cfg, "restart", 0) else 20)  # what progress counts to
    n = len(tiny_package.schedule())  # a restart whose steps the levels under it cannot hold: refused before any work
    with pytest.raises(ScheduleError, match=r"restart_steps: steps must be in \[1, 1\]"):
        respaced(tiny_package.schedule(), 5, DiffPIRConfig(restart=1.0 / n, restart_steps=2))


def test_the_registry_finds_configures_and_refuses(tiny_package, tiny_prior):
    assert set(seam.SAMPLERS) == {"dps", "diffpir", "daps"}
    cfg = config_from_params("dps", {"zeta": 5, "corrector_steps": 2.0, "jacobian_free": 1.0})
    assert cfg == DPSConfig(zeta=5.0, corrector_steps=2, jacobian_free=True)
    assert config_from_params("diffpir", {}) == DiffPIRConfig()
    for name, params, message in [("ddrm", {}, "unknown sampler 'ddrm'; known: daps, diffpir, dps"),
                                  ("diffpir", {"zeta": 1}, "sampler 'diffpir' has no parameter 'zeta'; it takes: lam, "),
                                  ("dps", {"corrector_steps": 2.5}, "corrector_steps must be an integer, got 2.5"),
                                  ("dps", {"jacobian_free": 0.5}, "jacobian_free is a switch: 0 or 1"),
                                  ("daps", {"r_max": -1.0}, "r_max must be in"),
                                  ("diffpir", {"lam": float("inf")}, "lam must be a finite number")]:
        with pytest.raises(SamplerError, match=message.replace("(", r"\(")):
            config_from_params(name, params)
    with pytest.raises(SamplerError, match="not the config of a registered sampler"):
        ConstructConfig(sampler=object())

    # A new sampler is one function and one registration; construct finds it by its config.
    @dataclasses.dataclass(frozen=True)
    class MeanConfig:
        level: float = seam.param(0.5, "the constant it returns", 0.0, 1.0)

    @seam.register("constant-test", MeanConfig, summary="test", default_steps=3,
                   evaluations=lambda cfg, steps: {"score": steps})
    def constant(engine, schedule, obs, rngs, cfg):  # a sampler is a generator of its steps
        x = np.full((obs.rows,) + obs.shape, cfg.level, np.float32)
        for k in reversed(range(len(schedule))):
            engine.score(np.zeros((obs.rows,) + obs.shape, np.float32), np.full(obs.rows, schedule.times[k], np.float32))
            yield seam.StepInfo(k, x, None)
        return obs.project_site(x)

    try:
        *_, evl = tiny_prior
        x, op, y = _problem(evl, "sr2")
        with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
            r = construct(eng, tiny_package.schedule(), op, y, (2, 32, 32),
                          ConstructConfig(sampler=config_from_params("constant-test", {"level": 0.25})))
            assert r.steps == 3 and eng.calls == {"score": 3}
            # its constant map, finished as every construction is: moved block by block onto the
            # averages the noiseless observation proves (the detail inside a block stays constant)
            proven = np.clip(np.asarray(y).reshape(2, 16, 16), 0.0, 1.0)  # (the codec's range bounds a block)
            assert np.allclose(op.forward(r.mean[None])[0], proven, atol=1e-5)
            assert np.allclose(r.mean, np.repeat(np.repeat(proven, 2, axis=-2), 2, axis=-1), atol=1e-5)
    finally:
        del seam.SAMPLERS["constant-test"]


def test_recommendations_follow_the_operator_kind_and_the_site():
    from ckm_edge.runtime.recommend import BUILTIN, from_section, operator_kind, recommend

    mask = operators.Mask(np.ones((8, 8), bool))
    assert operator_kind(mask) == "mask" and operator_kind(operators.Compose((mask,))) == "mask"
    assert operator_kind(operators.jtqr()) == "jtqr" and operator_kind(operators.Identity()) == "*"
    assert recommend(None, mask) is BUILTIN["mask"] and recommend(None, mask, site=True) is BUILTIN["mask+site"]
    # a kind without a "+site" entry keeps its own recommendation; an unknown kind falls back to "*"
    assert recommend(None, operators.jtqr(), site=True) is BUILTIN["jtqr"]
    assert recommend(None, operators.Identity(), site=True) is BUILTIN["*+site"]
    samplers = from_section({"mask": {"sampler": "daps", "steps": 3, "samples": 2, "parameters": {"ratio": 0.5}}})
    assert recommend(samplers, mask).sampler == "daps" and recommend(samplers, operators.Downsample(2)) is BUILTIN["downsample"]


def test_a_scarce_mask_has_recommendations_of_its_own():
    from ckm_edge.runtime.recommend import BUILTIN, SCARCE, from_section, recommend, sampler_kinds

    route = np.zeros((32, 32), bool)
    route[5, :] = True  # 32 of 1,024 cells: a drive test's share
    scarce, dense = operators.Mask(route), operators.Mask(~route)
    assert np.mean(route) < SCARCE
    assert sampler_kinds(scarce) == ("mask-scarce", "mask") and sampler_kinds(operators.Compose((scarce,)))[0] == "mask-scarce"
    assert sampler_kinds(dense) == ("mask",) and sampler_kinds(operators.jtqr()) == ("jtqr",)
    aoa_only = route.copy()
    aoa_only[9, :] = True  # a living map with readings of one channel only at some cells: a mask per channel
    per_channel = operators.PerChannel((scarce, operators.Mask(aoa_only)))
    assert sampler_kinds(per_channel) == ("mask-scarce", "*") and recommend(None, per_channel, site=True) is BUILTIN["mask-scarce+site"]
    assert sampler_kinds(operators.PerChannel((dense, scarce))) == ("*",)  # the gain's mask decides
    assert recommend(None, scarce, site=True) is BUILTIN["mask-scarce+site"] and recommend(None, scarce) is BUILTIN["mask"]
    assert recommend(None, dense, site=True) is BUILTIN["mask+site"]
    assert BUILTIN["mask-scarce+site"].parameters["start"] > BUILTIN["mask+site"].parameters["start"]
    # a package's scarce entry wins; a package with a mask entry only: the built-in scarce one still
    # comes first (the mask's was tuned on masks observing most of the map)
    own = from_section({"mask-scarce+site": {"sampler": "diffpir", "steps": 2, "samples": 3, "parameters": {"start": 0.9}}})
    assert recommend(own, scarce, site=True).steps == 2 and recommend(own, dense, site=True) is BUILTIN["mask+site"]
    mask_only = from_section({"mask+site": {"sampler": "diffpir", "steps": 2, "samples": 3, "parameters": {"start": 0.05}}})
    assert recommend(mask_only, scarce, site=True) is BUILTIN["mask-scarce+site"]
    with pytest.raises(seam.SamplerError, match="operator kind must be one of"):
        from_section({"scarce": {"sampler": "diffpir", "steps": 2, "samples": 3}})


def test_schedule_start_and_renoise(tiny_package):
    base = tiny_package.schedule()
    full, part = base.respace(10), base.respace(10, start=0.3)
    assert full.times[-1] == 1.0 and part.times[-1] == pytest.approx(0.3) and part.times[0] == full.times[0]
    with pytest.raises(ValueError, match=r"steps must be in \[1, 300\] \(start 0.3 of 1000\)"):
        base.respace(400, start=0.3)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    x0 = np.random.default_rng(1).uniform(size=x.shape).astype(np.float32)
    # eta = 0 is DDIM's deterministic step: x_{i-1} = scale' x0 + std' eps_hat
    ddim = full.renoise(5, x, x0, np.zeros_like(x), 0.0)
    eps = (x - full.scale[5] * x0) / full.noise_std[5]
    np.testing.assert_allclose(ddim, full.scale[4] * x0 + full.noise_std[4] * eps, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(full.renoise(0, x, x0, x, 1.0), x0)  # the last step returns the estimate
    assert full.noise_to_signal(9) == pytest.approx(full.noise_std[9] / full.scale[9])


def test_smooth_fill_is_the_harmonic_and_block_consistent_estimate(tiny_prior):
    *_, evl = tiny_prior
    x = evl[:1]
    mask = np.ones((32, 32), bool)
    mask[8:20, 10:22] = False
    op = operators.Mask(mask)
    y = op.forward(x)
    f = smooth_fill(op, y, x.shape, iters=3000, tol=1e-7)
    np.testing.assert_allclose(f[:, :, mask], y[:, :, mask])
    # inside the hole every cell is the mean of its four neighbours (the discrete Laplace equation)
    inner = f[0, :, 9:19, 11:21]
    nb = (f[0, :, 8:18, 11:21] + f[0, :, 10:20, 11:21] + f[0, :, 9:19, 10:20] + f[0, :, 9:19, 12:22]) / 4
    np.testing.assert_allclose(inner, nb, atol=1e-4)
    sr = operators.Downsample(2)
    f = smooth_fill(sr, sr.forward(x), x.shape)
    np.testing.assert_allclose(sr.forward(f), sr.forward(x), atol=1e-5)
    # with a site map buildings are 0 and take no part: a street cell in the hole is the mean of
    # its outdoor neighbours only, so buildings do not pull the streets' gain down
    site = Site.from_pixels(x)
    f_site = smooth_fill(op, y, x.shape, site, iters=3000, tol=1e-7)
    building = site.building[0]
    assert (f_site[:, :, building] == 0).all()
    checked = 0
    for r, c in zip(*np.nonzero(~mask & ~building)):
        nbs = [(r + dr, c + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
               if 0 <= r + dr < 32 and 0 <= c + dc < 32 and not building[r + dr, c + dc]]
        if nbs:
            mean = np.mean([f_site[0, :, a, b] for a, b in nbs], axis=0)
            np.testing.assert_allclose(f_site[0, :, r, c], np.clip(mean, [0, codec.AOA_PIXEL_MIN], 1), atol=2e-4)
            checked += 1
    assert checked > 10


def test_cells_saturated_below_any_real_path_come_out_as_no_path(tiny_package, tiny_prior):
    """JTQR's low bound (-210 dB) lies under the weakest real path (-200 dB): a cell saturated there
    has no path, and every estimate (the samplers', the smooth fill, the classical clipping-aware
    fill) gives it exactly the codec's no-path value."""
    from ckm_edge.benchmarks import classical

    *_, evl = tiny_prior
    x = evl[:1].copy()
    outdoor = ~codec.building_mask(x)[0]
    gone = np.zeros((32, 32), bool)
    gone[:12, :12] = True
    gone &= outdoor
    x[0, 0][gone], x[0, 1][gone] = 0.0, codec.AOA_OFFSET
    rng = np.random.default_rng(3)
    op = tasks.make_operator("jtqr", rng, x)
    y = tasks.observe(op, x, rng, 0.005)  # within 5 sigma of the bound: every saturated cell is proven
    proven = op.known_no_path(y)[0] & outdoor  # buildings read as saturated too, and stay buildings
    assert proven[gone].all() and gone.sum() > 10
    expect = np.array(codec.NO_PATH_PIXELS, np.float32)[:, None]
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        r = construct(eng, tiny_package.schedule(), op, y, (2, 32, 32), ConstructConfig(3, 2, sampler=DiffPIRConfig(start=1.0)),
                      sigma=SIGMA)
    assert (r.samples[:, :, proven] == expect).all() and (r.mean[:, proven] == expect).all()
    assert (r.samples[:, :, ~outdoor] == 0).all()  # buildings stay buildings
    assert (smooth_fill(op, y, x.shape)[0][:, proven] == expect).all()
    assert (classical.jtqr_fill(y)[0][:, proven] == expect).all()


def test_observations_refuse_what_does_not_fit():
    op = operators.Downsample(2)
    y = np.zeros((1, 2, 16, 16), np.float32)
    with pytest.raises(ValueError, match="cover rows 0..3 without gaps"):
        Observations((2, 32, 32), 3, [(slice(0, 2), Observation(op, y))])
    with pytest.raises(operators.OperatorError, match="noise sigma must be finite and >= 0"):
        Observation(op, y, sigma=-1.0)
    with pytest.raises(operators.OperatorError, match="give both the operator and the observation"):
        Observation(op, None)
    with pytest.raises(ValueError, match="per-row operators and observations must number 2"):
        Observations.of([op], [y[0]], (2, 32, 32), 2)
