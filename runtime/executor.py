"""One construction path, without a transport: jobs in, results out.

    job = plan(model, op, y, ConstructConfig(samples=4), sigma=0.01, site=site)   # every check, once
    [result] = execute([job])              # Result: mean, std, samples, residual, steps, timings

`plan` validates one construction — the observation against the operator, the site against the
tile, the sampler's steps against the package's schedule (respacing included) — and fixes its
schedule; `execute` runs a batch of planned jobs that share a `Job.key` (same network, precision,
schedule and sampler config) as one sampler run: it composes the engine with the job's site
adapter, seeds each job's posterior samples from its seed (`default_rng([seed, s])`, so a job
gives the same maps alone or batched with others), drives the sampler's steps (runtime.sampler),
reporting progress to each job between steps and stopping when no job of the batch is still
wanted, and finishes and summarizes each job's samples. `runtime.construct.construct` (the CLI,
the benchmarks), the server's batcher (runtime.batcher) and the memory probe all run through here,
so a construction setting means the same everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ckm_edge.runtime import codec, defaults, operators, uncertainty
from ckm_edge.runtime.diffpir import DiffPIRConfig
from ckm_edge.runtime.observations import Observation, Observations
from ckm_edge.runtime.operators.base import censored
from ckm_edge.runtime.sampler import respaced, spec_for, start
from ckm_edge.runtime.schedule import Schedule
from ckm_edge.runtime.site import Site

RESPACINGS = ("ddpm", "ddim")  # runtime.schedule.Schedule.respace's methods


@dataclass(frozen=True)
class ConstructConfig:
    """What one construction chooses: the sampler and its config, steps, posterior samples, seed."""

    steps: int | None = None  # respaced sampling steps (<= the package's N); None: the sampler's default
    samples: int = 1  # posterior samples; > 1 gives a per-cell standard deviation
    seed: int = 0
    respacing: str = "ddpm"  # which of the package's N steps are kept (RESPACINGS)
    sampler: object = field(default_factory=DiffPIRConfig)  # a registered sampler's config

    def __post_init__(self):
        spec_for(self.sampler)  # refuses a config that is not a registered sampler's
        if self.steps is None:
            object.__setattr__(self, "steps", spec_for(self.sampler).default_steps)
        if not 1 <= self.steps <= defaults.MAX_STEPS:
            raise ValueError(f"steps must be in [1, {defaults.MAX_STEPS}], got {self.steps}")
        if not 1 <= self.samples <= defaults.MAX_SAMPLES:
            raise ValueError(f"samples must be in [1, {defaults.MAX_SAMPLES}], got {self.samples}")
        if self.respacing not in RESPACINGS:
            raise ValueError(f"respacing must be one of {', '.join(RESPACINGS)}, got {self.respacing!r}")


class Model(Protocol):
    """A network a job runs on: runtime.repository.LoadedModel, or `Opened` (an engine in hand).
    `uncertainty`: its package's calibration (runtime.uncertainty), None when it has none."""

    uncertainty: uncertainty.Uncertainty | None

    def engine(self, precision: str): ...
    def schedule(self) -> Schedule: ...


@dataclass(frozen=True, eq=False)
class Opened:
    """An engine already open, with the schedule it was trained with (one precision: its own)."""

    opened: object
    full_schedule: Schedule
    uncertainty: uncertainty.Uncertainty | None = None

    def engine(self, precision: str):
        return self.opened

    def schedule(self) -> Schedule:
        return self.full_schedule


def _always() -> bool:
    return True


@dataclass(eq=False)
class Job:
    """One planned construction (`plan`): everything a batch needs, nothing of the transport."""

    model: Model
    op: operators.Operator
    y: np.ndarray  # (1, C', H', W'), checked against op
    shape: tuple[int, int, int]  # (C, H, W) of one map
    config: ConstructConfig
    schedule: Schedule  # the respaced schedule the sampler runs
    sigma: float = 0.0  # observation noise, pixels
    site: Site | None = None  # checked against shape
    precision: str = defaults.PRECISION
    adapter: Model | None = None  # a site adapter composed with the model
    adapter_lambda: object = None  # its lambda(t) (runtime.adapter.LambdaTable)
    alive: Callable[[], bool] = _always  # False once nobody waits for the result (cancelled, deadline)
    on_step: Callable[[int, int, float], None] | None = None  # (steps done, total, mean residual of its rows)
    progress_interval: int = 1
    calibration: uncertainty.KindFit | None = None  # the model's fit for this operator kind and setting
    coverage: float = uncertainty.DEFAULT_COVERAGE  # of the interval the fit's std implies
    init: np.ndarray | None = None  # (C, H, W): a warm start's map (Observation.init), e.g. a living map's last version

    @property
    def samples(self) -> int:
        return self.config.samples

    @property
    def sampler(self):
        return self.config.sampler

    @property
    def steps(self) -> int:
        return len(self.schedule)

    @property
    def key(self) -> tuple:
        """Jobs of one key can share one sampler run."""
        c = self.config
        return (id(self.model), id(self.adapter), self.precision, c.steps, c.respacing, c.sampler, self.shape)

    def row_bytes(self) -> int:
        """Engine memory per posterior sample (runtime.memory, measured once per package): the
        model's graphs this sampler runs, and its site adapter's score graph."""
        total = self.model.row_bytes(self.precision, spec_for(self.sampler).needs_vjp(self.sampler))
        if self.adapter is not None:
            total += self.adapter.row_bytes(self.precision, False)
        return total

    def observation(self) -> Observation:
        return Observation(self.op, self.y, self.sigma, self.site, self.init)


def check_observation(op: operators.Operator, y: np.ndarray, shape: tuple[int, int, int],
                      output_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """y must be finite, within OBSERVATION_RANGE and shaped like A(x) for one map of `shape`
    ((C', H', W'), or with a leading 1); returns (1, ...) float32. `output_shape`: A's output for
    one map (C', H', W') where the caller's own probe found it already (runtime.api)."""
    y = np.asarray(y, dtype=np.float32)
    if output_shape is not None:
        expect = (1,) + tuple(output_shape)
    else:
        try:  # a probe run catches masks and building layouts that do not fit the tile
            expect = op.forward(np.zeros((1,) + tuple(shape), np.float32)).shape
        except (operators.OperatorError, ValueError) as e:
            raise operators.OperatorError(f"the operator does not fit a {tuple(shape)} map: {e}") from None
    if y.shape not in (expect, expect[1:]):
        raise operators.OperatorError(f"observation has shape {list(y.shape)}; the operator produces "
                                      f"{list(expect[1:])} for one map (a leading 1 is allowed)")
    y = y.reshape(expect)
    if not np.isfinite(y).all():
        raise operators.OperatorError(f"observation has {int((~np.isfinite(y)).sum())} non-finite value(s)")
    lo, hi = defaults.OBSERVATION_RANGE
    if y.min() < lo or y.max() > hi:
        raise operators.OperatorError(f"observation values must lie in [{lo:g}, {hi:g}] pixels (the codec's [0, 1] "
                                      f"plus noise), got min {y.min():g}, max {y.max():g}")
    return y


def plan(model: Model, op: operators.Operator, y: np.ndarray, shape: tuple[int, int, int],
         config: ConstructConfig = ConstructConfig(), *, sigma: float = 0.0, site: Site | None = None,
         precision: str = defaults.PRECISION, adapter: Model | None = None, adapter_lambda=None,
         output_shape: tuple[int, ...] | None = None, init: np.ndarray | None = None) -> Job:
    """A checked job: raises OperatorError (the operator or observation), SiteError (the site) or
    ScheduleError (steps and respacing against the package's schedule) naming what is wrong.
    `output_shape`: the operator's output for one map, where the caller has probed it already.
    `init`: the (C, H, W) map a warm start (a sampler's `start` < 1) begins from instead of the
    smooth fill."""
    shape = tuple(shape)
    y = check_observation(op, y, shape, output_shape)
    if init is not None:
        init = np.asarray(init, np.float32)
        if init.shape != shape or not np.isfinite(init).all():
            raise operators.OperatorError(f"init must be a finite {list(shape)} map, got shape {list(init.shape)}")
    if site is not None:  # one site for every sample, or one per sample
        site.check((config.samples,) + shape if site.per_sample else shape)
    schedule = respaced(model.schedule(), config.steps, config.sampler, config.respacing)
    job = Job(model, op, y, shape, config, schedule, float(sigma), site, precision, adapter, adapter_lambda, init=init)
    calibrated = getattr(model, "uncertainty", None)
    if calibrated is not None:
        fit = calibrated.fit_for(uncertainty.calibration_kind(op), site is not None,
                                 (config.sampler, config.steps, config.samples, init is not None))
        job.calibration, job.coverage = fit, calibrated.coverage
    return job


@dataclass
class Result:
    mean: np.ndarray  # (C, H, W) pixels, clipped to [0, 1]
    std: np.ndarray | None  # (C, H, W) calibrated std, else the samples' spread (None for one sample)
    samples: np.ndarray  # (S, C, H, W)
    residual: float  # ||y - A(mean)||, pixels
    steps: int
    timings: dict  # seconds per stage of the batch it ran in
    calibrated: bool = False  # std is the package's calibrated one: mean -/+ z std holds `coverage`
    coverage: float = uncertainty.DEFAULT_COVERAGE

    def interval(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The central `coverage` interval (pixels, clipped to [0, 1]); None when not calibrated."""
        return uncertainty.interval(self.mean, self.std, uncertainty.z_of(self.coverage)) if self.calibrated else None


class Stopped(Exception):
    """No job of the batch was still wanted (cancelled, past its deadline); the run stopped between steps."""


def engine_of(job: Job):
    """The job's network: its model's engine, plus its site adapter's (s = s_model + lambda(t) d)."""
    engine = job.model.engine(job.precision)
    if job.adapter is not None:
        from ckm_edge.runtime.adapter import ComposedEngine

        engine = ComposedEngine(engine, job.adapter.engine(job.precision), job.adapter_lambda)
    return engine


def execute(jobs: Sequence[Job]) -> list[Result]:
    """Run jobs of one key as one batch (module doc). Raises Stopped when, between two steps, no job
    is alive any more; any other error is the batch's."""
    first = jobs[0]
    if any(job.key != first.key for job in jobs):
        raise ValueError("a batch runs jobs of one key only (model, adapter, precision, steps, respacing, sampler)")
    t0 = time.perf_counter()
    groups, rngs = [], []
    for job in jobs:
        groups.append((slice(len(rngs), len(rngs) + job.samples), job.observation()))
        rngs.extend(np.random.default_rng([job.config.seed, s]) for s in range(job.samples))
    obs = Observations(first.shape, len(rngs), groups, check_sites=False)  # plan checked them
    run = start(engine_of(first), first.schedule, obs, rngs, first.sampler)
    t1 = time.perf_counter()
    for info in run:
        done = run.taken
        for job, (rows, _) in zip(jobs, groups):
            if job.on_step is not None and (done % job.progress_interval == 0 or info.k == 0):
                job.on_step(done, run.total, float(info.residual[rows].mean()) if info.residual is not None else 0.0)
        if info.k > 0 and not any(job.alive() for job in jobs):
            raise Stopped("every request of the batch was cancelled or ran past its deadline")
    t2 = time.perf_counter()
    x = obs.finish(run.result)
    out = []
    for job, (rows, o) in zip(jobs, groups):
        mean, std, residual = summarize(x[rows], job.op, job.y, job.calibration, job.sigma, raw=run.result[rows],
                                        finish=_finisher(o, first.shape, job.samples))
        out.append(Result(mean, std, x[rows], residual, job.steps, {}, job.calibration is not None, job.coverage))
    timings = {"prepare_s": t1 - t0, "sampling_s": t2 - t1, "finish_s": time.perf_counter() - t2}
    for r in out:
        r.timings = dict(timings)
    return out


def _finisher(obs, shape, samples: int):
    """One construction's mean (1, C, H, W) -> finished as its samples were: the mean of its
    `samples` rows finished (a site given per sample projects each row with its own)."""
    rows = samples if obs.site is not None and obs.site.per_sample else 1
    group = Observations(shape, rows, [(slice(0, rows), obs)], check_sites=False)  # plan checked it
    return lambda mean: group.finish(np.repeat(mean, rows, axis=0)).mean(axis=0, keepdims=True)


def summarize(x: np.ndarray, op: operators.Operator, y: np.ndarray, calibration: uncertainty.KindFit | None = None,
              sigma: float = 0.0, raw: np.ndarray | None = None, finish=None) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Posterior samples (S, C, H, W) of one observation, finished -> their mean, per-cell standard
    deviation and the residual ||y - A(mean)|| in pixels. With a `calibration` the std is the
    calibrated one (runtime.uncertainty; one sample too: y with noise `sigma` gives its distance
    term); without, the samples' spread (ddof 0; None for one sample).

    With a calibration and the samples as the sampler left them (`raw`), a cell the observation
    censors (`Operator.bounds` narrower than [0, 1] and wider than a reading's noise: a saturated
    gain, an AoA sector) reports the mean of the calibrated predictive N(raw mean, std) truncated
    to those bounds (uncertainty.conditional_mean), not the mean of samples moved onto them, then
    goes through `finish` (one map: no-path cells, the site's buildings) again."""
    mean = x.mean(axis=0)
    if calibration is not None:
        bounds = op.bounds(np.asarray(y, np.float32), sigma)
        std = calibration.std(uncertainty.spread(x), uncertainty.distance_to_pinned(bounds, mean.shape))
        if bounds is not None and raw is not None:
            low, high = (np.broadcast_to(b, (1,) + mean.shape)[0] for b in bounds)
            # only where censored: a reading within its noise keeps its samples' mean, which weighs it
            # against the prior (its predictive truncated to y -/+ the noise would return the reading)
            mean = np.where(censored(low, high, sigma), uncertainty.conditional_mean(raw.mean(axis=0), std, low, high), mean)
            mean = (finish(mean[None])[0] if finish is not None else mean).astype(x.dtype)
    else:
        std = x.std(axis=0) if len(x) > 1 else None
    residual = float(np.sqrt(((y[0] - op.forward(mean[None])[0]) ** 2).sum()))
    return mean, std, residual


def in_physical_units(mean: np.ndarray, std: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A map in pixels -> (2, H, W) gain dB and AoA sine (building cells NaN); std scaled to match."""
    phys = codec.decode(mean, clip=True)
    out = np.stack([phys.gain_db, phys.aoa_sine])
    if std is not None:
        std = std * np.array([codec.GAIN_RMSE_FACTOR, codec.AOA_RMSE_FACTOR], np.float32)[:, None, None]
    return out, std


def interval_in_physical_units(mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An interval in pixels (`Result.interval`) -> (2, H, W) bounds in gain dB and AoA sine, NaN in
    the building cells of `mean` (as `in_physical_units` marks them)."""
    building = codec.building_mask(np.clip(mean, 0.0, 1.0))

    def physical(px: np.ndarray) -> np.ndarray:
        gain = px[0].astype(np.float64) * codec.GAIN_DB_SPAN + codec.GAIN_DB_MIN
        sine = (np.clip(px[1], codec.AOA_PIXEL_MIN, codec.AOA_PIXEL_MAX) - codec.AOA_OFFSET) / codec.AOA_SCALE
        out = np.stack([gain, sine]).astype(np.float32)
        out[:, building] = np.nan
        return out

    return physical(low), physical(high)
