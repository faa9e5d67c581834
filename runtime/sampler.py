"""The sampler seam: every posterior sampler is one function of one signature, registered by name.

    x = sample(engine, schedule, observations, rngs, cfg, callback=None)     # (B, C, H, W)

- `engine`       the network (runtime.engine): `score`, and `forward`/`backward` for samplers
                 that differentiate through it (only DPS does).
- `schedule`     the (respaced) noise schedule; it owns all noise math.
- `observations` what each of the B rows conditions on: an `Observation` (operator A, y = A(x) + n,
                 noise sigma, optional site map) per row group, or none (prior sampling). A
                 site-aware prior is also told each row's site (`conditioned`), so samplers
                 need not know whether the network is conditional.
- `rngs`         one numpy Generator per row: a batch equals its rows run one by one.
- `cfg`          the sampler's own frozen config (`DPSConfig`, `DiffPIRConfig`, `DAPSConfig`); its
                 type selects the sampler.
- `callback`     sees a `StepInfo` after every step (progress, tracing, figures).

Samplers register themselves with `register` (runtime.dps, runtime.diffpir, runtime.daps); the
server, `construct` and both CLIs find them by name (`spec`, `config_from_params`), so a new
sampler is one module and one import at the end of this file. `SamplerSpec.evaluations` says
what a construction costs in network calls, and `needs_vjp` whether the forward-with-saves and
backward graphs (and their saved activations) are needed at all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ckm_edge.runtime import codec
from ckm_edge.runtime.operators import Operator, OperatorError
from ckm_edge.runtime.schedule import Schedule, ScheduleError
from ckm_edge.runtime.site import Site


class SamplerError(ValueError):
    """An unknown sampler, or parameters it does not take or cannot use."""


class Engine(Protocol):
    def score(self, x: np.ndarray, t: np.ndarray) -> np.ndarray: ...
    def forward(self, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, object]: ...
    def backward(self, saved: object, v: np.ndarray) -> np.ndarray: ...


class _Conditioned:
    """An engine bound to the site condition of a batch's rows (samplers call score(x, t) as ever)."""

    def __init__(self, engine, cond: np.ndarray):
        self.engine, self.cond = engine, cond

    def _cond(self, x: np.ndarray) -> np.ndarray:
        if len(x) != len(self.cond):
            raise ValueError(f"a sampler called the network on {len(x)} rows of a {len(self.cond)}-row batch")
        return self.cond

    def score(self, x, t):
        return self.engine.score(x, t, self._cond(x))

    def forward(self, x, t):
        return self.engine.forward(x, t, self._cond(x))

    def backward(self, saved, v):
        return self.engine.backward(saved, v)

    def __getattr__(self, name):  # calls, config, ... of the engine itself
        return getattr(self.engine, name)


def conditioned(engine, observations: Observations):
    """`engine` told each row's site when it is a site-aware prior (runtime.condition) and some row
    has one; rows without a site get the unconditional zeros. Otherwise `engine` itself."""
    from ckm_edge.runtime.condition import Encoding

    channels = getattr(engine, "condition_channels", 0)
    sites = [(sl, obs.site) for sl, obs in observations.groups if obs.site is not None]
    if not channels or not sites:
        return engine
    encoding = getattr(engine, "condition_encoding", None) or Encoding.for_channels(channels)
    cond = np.zeros((observations.rows, channels) + observations.shape[1:], np.float32)
    for sl, site in sites:
        cond[sl] = site.condition(observations.shape, sl.stop - sl.start, encoding)
    return _Conditioned(engine, cond)


@dataclass(frozen=True)
class StepInfo:
    k: int  # steps still to run after this one, counting down to 0 (the schedule index, but for a restart)
    x0_hat: np.ndarray  # (B, 2, H, W) the network's estimate of the clean map at this step
    residual: np.ndarray | None  # (B,) ||y - A(x0_hat)||, None without an observation


# --- what a batch conditions on ----------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Observation:
    """One construction's evidence: y = A(x) + n with n ~ N(0, sigma^2 I), and the site map."""

    op: Operator | None
    y: np.ndarray | None  # (1, C', H', W') or (rows, ...) shaped like op's output
    sigma: float = 0.0  # noise standard deviation in pixels; 0 = noiseless (exact data consistency)
    site: Site | None = None

    def __post_init__(self):
        if (self.op is None) != (self.y is None):
            raise OperatorError("give both the operator and the observation, or neither")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise OperatorError(f"noise sigma must be finite and >= 0, got {self.sigma}")
        if self.y is not None:
            y = np.asarray(self.y, np.float32)
            object.__setattr__(self, "y", y[None] if y.ndim == 3 else y)


def _norm(v: np.ndarray) -> np.ndarray:
    """Per-sample L2 norm, shaped (B, 1, 1, 1) for broadcasting."""
    return np.sqrt((v.astype(np.float64) ** 2).reshape(len(v), -1).sum(axis=1)).reshape(-1, 1, 1, 1)


class Observations:
    """The observations of a batch of `rows` maps of `shape` (C, H, W), as row groups: one
    Observation for all rows, one per row (requests batched together), or none (the prior).
    Every reduction and step is per group, never across groups."""

    def __init__(self, shape: tuple[int, int, int], rows: int, groups: Sequence[tuple[slice, Observation]] = ()):
        self.shape, self.rows, self.groups = tuple(shape), rows, list(groups)
        covered = sorted((sl.start, sl.stop) for sl, _ in self.groups)
        if covered and (covered[0][0] != 0 or covered[-1][1] != rows
                        or any(a[1] != b[0] for a, b in zip(covered, covered[1:]))):
            raise ValueError(f"observation groups must cover rows 0..{rows} without gaps, got {covered}")
        for sl, obs in self.groups:
            if obs.y is not None and len(obs.y) not in (1, sl.stop - sl.start):
                raise ValueError(f"an observation for {sl.stop - sl.start} row(s) has {len(obs.y)}")
            if obs.site is not None:
                obs.site.check((sl.stop - sl.start,) + self.shape)

    @classmethod
    def prior(cls, shape, rows: int) -> Observations:
        return cls(shape, rows)

    @classmethod
    def same(cls, obs: Observation, shape, rows: int) -> Observations:
        """All rows share one observation (posterior samples of one construction)."""
        return cls(shape, rows, [(slice(0, rows), obs)])

    @classmethod
    def per_row(cls, observations: Sequence[Observation], shape) -> Observations:
        return cls(shape, len(observations), [(slice(i, i + 1), o) for i, o in enumerate(observations)])

    @classmethod
    def of(cls, op, y, shape, rows: int, sigma: float = 0.0, site: Site | None = None) -> Observations:
        """From an operator and its (rows or 1, ...) observation, a list of per-row operators and
        observations, or None and None (the prior)."""
        if op is None and y is None:
            return cls.prior(shape, rows)
        if isinstance(op, Operator) or op is None:
            return cls.same(Observation(op, y, sigma, site), shape, rows)
        if len(op) != rows or len(y) != rows:
            raise ValueError(f"per-row operators and observations must number {rows}, got {len(op)} and {len(y)}")
        return cls.per_row([Observation(o, yi, sigma, site) for o, yi in zip(op, y)], shape)

    @property
    def guided(self) -> bool:
        """Whether any row has an operator (else: prior sampling, up to the site map)."""
        return any(obs.op is not None for _, obs in self.groups)

    def _measured(self):
        return [(sl, obs) for sl, obs in self.groups if obs.op is not None]

    # -- DPS: residual norms and their gradient ---------------------------------------------------
    def residuals(self, x0_hat: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Per measured group y - A(x0_hat), and ||.|| per row (B,); rows without an operator: 0."""
        rs, norms = [], np.zeros(self.rows)
        for sl, obs in self._measured():
            r = obs.y - obs.op.forward(x0_hat[sl])
            rs.append(r)
            norms[sl] = _norm(r).reshape(-1)
        return rs, norms

    def norm_grad(self, x0_hat: np.ndarray, rs: list[np.ndarray], norms: np.ndarray) -> np.ndarray:
        """d||y - A(x0_hat)|| / d x0_hat = -A'(x0_hat)^T r / ||r||, per row (0 where unobserved)."""
        g = np.zeros_like(x0_hat)
        for (sl, obs), r in zip(self._measured(), rs):
            g[sl] = -obs.op.vjp(x0_hat[sl], r) / np.maximum(norms[sl], 1e-12).reshape(-1, 1, 1, 1)
        return g

    # -- data-consistent samplers: the proximal data step -----------------------------------------
    def prox(self, z: np.ndarray, rho: float, rngs: Sequence[np.random.Generator] | None = None,
             spread: float = 0.0) -> np.ndarray:
        """Per group argmin ||y - A(x)||^2 / (2 sigma^2) + rho/2 ||x - z||^2, then the site map.

        With `spread` > 0 and `rngs`: perturb-and-MAP, the same step on z + spread e1 and
        y + sigma e2 (e1, e2 ~ N(0, I) drawn per row) with rho = 1 / spread^2 — an exact draw from
        N(z, spread^2 I) x p(y | x) when A is linear, and a draw near it otherwise."""
        out = z.copy()
        for sl, obs in self.groups:
            zs = z[sl]
            if obs.op is not None:
                y = np.broadcast_to(obs.y, (zs.shape[0],) + obs.y.shape[1:])
                if spread > 0:
                    zs = zs + spread * _draw(rngs[sl], zs.shape[1:])
                    y = y + obs.sigma * _draw(rngs[sl], y.shape[1:])
                zs = obs.op.prox(zs, y, obs.sigma**2 * rho)
            out[sl] = zs if obs.site is None else obs.site.project(zs)
        return out

    def fit_to_noise(self, z: np.ndarray, iters: int = 8) -> np.ndarray:
        """The last data step: per row, the proximal step with the largest weight on z whose
        residual RMS over the measured entries is at most sigma (Morozov's discrepancy principle):
        z itself where it already fits y within the noise, the exact projection where sigma = 0.
        A bisection over log10(lam) in [-6, 6]; then the site map."""
        out = z.copy()
        for sl, obs in self.groups:
            zs = z[sl]
            if obs.op is not None:
                y = np.broadcast_to(obs.y, (zs.shape[0],) + obs.y.shape[1:])
                zs = obs.op.prox(zs, y, 0.0) if obs.sigma == 0 else _discrepancy(obs.op, zs, y, obs.sigma, iters)
            out[sl] = zs if obs.site is None else obs.site.project(zs)
        return out

    def initial_estimate(self) -> np.ndarray:
        """(B, C, H, W): per group the smoothest map its observation allows (runtime.smooth), the
        warm start of samplers that begin part-way down the schedule; 0.5 where nothing is observed."""
        from ckm_edge.runtime.smooth import smooth_fill

        x = np.full((self.rows,) + self.shape, 0.5, np.float32)
        for sl, obs in self.groups:
            n = sl.stop - sl.start
            if obs.op is not None:  # one fill per observation, shared by its rows
                fill = smooth_fill(obs.op, obs.y, (len(obs.y),) + self.shape, obs.site, iters=150)
                x[sl] = np.broadcast_to(fill, (n,) + self.shape)
            elif obs.site is not None:
                x[sl] = obs.site.project(x[sl])
        return x

    def finish(self, x: np.ndarray) -> np.ndarray:
        """Maps (rows, C, H, W) -> clipped to the codec's [0, 1], and per group the cells its
        observation proves to have no path (a gain saturated below the weakest real path:
        `Operator.known_no_path`) set to the codec's no-path value, which a network's samples only
        approach. What every construction ends with (runtime.construct.finish)."""
        out = np.clip(x, 0.0, 1.0)
        for sl, obs in self._measured():
            no_path = obs.op.known_no_path(obs.y)
            if no_path is not None:
                out[sl] = codec.set_no_path(out[sl], no_path)
        return out

    def project_site(self, x: np.ndarray) -> np.ndarray:
        out = x
        for sl, obs in self.groups:
            if obs.site is not None:
                out = out.copy() if out is x else out
                out[sl] = obs.site.project(x[sl])
        return out


def _discrepancy(op: Operator, z: np.ndarray, y: np.ndarray, sigma: float, iters: int) -> np.ndarray:
    measured = op.measured(y)
    count = np.maximum(measured.reshape(len(y), -1).sum(axis=1), 1)

    def rms(x):
        r = np.where(measured, y - op.forward(x), 0.0)
        return np.sqrt((r.astype(np.float64) ** 2).reshape(len(y), -1).sum(axis=1) / count)

    lo, hi = np.full(len(y), -6.0), np.full(len(y), 6.0)  # log10 lam: lo fits the data, hi keeps z
    fits_hi = rms(op.prox(z, y, 10.0**hi)) <= sigma
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = rms(op.prox(z, y, 10.0**mid)) <= sigma
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    lam = np.where(fits_hi, 10.0**6, 10.0**lo)
    return op.prox(z, y, lam).astype(z.dtype)


def _draw(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """One standard normal draw of `shape` per row, each from that row's generator."""
    return np.stack([r.standard_normal(shape).astype(np.float32) for r in rngs])


def noise(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """(B, *shape) standard normal noise, row b drawn from rngs[b] (samplers' only source of randomness)."""
    return _draw(rngs, shape)


def prior_start(schedule: Schedule, rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """x_K for every row, drawn first from each row's generator (as the PyTorch references do)."""
    return np.stack([schedule.prior_sample(shape, r) for r in rngs])


def warm_start(schedule: Schedule, obs: Observations, rngs: Sequence[np.random.Generator],
               init: np.ndarray | None = None) -> np.ndarray:
    """x_K = scale_K x_init + std_K z, x_init the observation's smoothest consistent map (`init`
    when the caller already has `obs.initial_estimate()`): the start of a sampler whose schedule
    begins part-way (`Schedule.respace(start=...)`)."""
    z = _draw(rngs, obs.shape)
    init = obs.initial_estimate() if init is None else init
    return schedule.perturb(init, z, np.full(obs.rows, len(schedule) - 1)).astype(np.float32)


def respaced(schedule: Schedule, steps: int, cfg, method: str = "ddpm") -> Schedule:
    """The schedule a sampler runs: `steps` of the package's N, over the noise levels the
    config's `start` (if it has one) says it begins from. A config with a `restart` is checked
    here too (its steps must fit the levels below it), before any work."""
    short = schedule.respace(min(steps, len(schedule)), method, getattr(cfg, "start", 1.0))
    if getattr(cfg, "restart", 0.0) > 0:
        restart_schedule(short, cfg)
    return short


def restart_schedule(schedule: Schedule, cfg) -> Schedule:
    """The steps of a restart (`cfg.restart_steps` of the package's levels up to `cfg.restart`):
    after its chain, a sampler re-noises the map to that level and runs these (Restart sampling,
    Xu et al. 2023: the second pass contracts the errors the first accumulated)."""
    try:
        return schedule.full().respace(cfg.restart_steps, "ddpm", cfg.restart)
    except ScheduleError as e:
        raise ScheduleError(f"restart_steps: {e}") from None


# --- the registry --------------------------------------------------------------------------------

SamplerFn = Callable[[Engine, Schedule, Observations, Sequence[np.random.Generator], object,
                      Callable[[StepInfo], None] | None], np.ndarray]


def param(default, doc: str, low: float | None = None, high: float | None = None):
    """A sampler config field a request may set: its default, one line of doc, its bounds."""
    return dataclasses.field(default=default, metadata={"doc": doc, "low": low, "high": high})


def check_params(cfg) -> None:
    """Validate a sampler config's fields against their declared types and bounds."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = _field_type(f)
        if kind is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise SamplerError(f"{f.name} must be true or false, got {value!r}")
            continue
        if kind is int and not (isinstance(value, (int, np.integer)) and not isinstance(value, bool)):
            raise SamplerError(f"{f.name} must be an integer, got {value!r}")
        if not (isinstance(value, (int, float, np.number)) and math.isfinite(value)):
            raise SamplerError(f"{f.name} must be a finite number, got {value!r}")
        low, high = f.metadata.get("low"), f.metadata.get("high")
        if (low is not None and value < low) or (high is not None and value > high):
            raise SamplerError(f"{f.name} must be in [{low}, {high}], got {value}")


def _field_type(f: dataclasses.Field) -> type:
    return {"bool": bool, "int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, float)


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    config: type  # the frozen config dataclass (validates itself)
    run: SamplerFn
    summary: str
    default_steps: int
    evaluations: Callable[[object, int], dict]  # (cfg, steps) -> network calls per posterior sample
    # (cfg, steps) -> the steps its callback reports (a restart's included): progress runs to this
    steps_run: Callable[[object, int], int] = lambda cfg, steps: steps

    def needs_vjp(self, cfg) -> bool:
        """Whether the sampler runs the forward-with-saves and backward graphs."""
        return self.evaluations(cfg, 2).get("backward", 0) > 0

    def parameters(self) -> list[dict]:
        """Name, type, default, bounds and doc of every parameter (for metadata and --help)."""
        return [{"name": f.name, "type": _field_type(f).__name__, "default": f.default, "low": f.metadata.get("low"),
                 "high": f.metadata.get("high"), "doc": f.metadata.get("doc", "")} for f in dataclasses.fields(self.config)]


SAMPLERS: dict[str, SamplerSpec] = {}


def register(name: str, config: type, *, summary: str, default_steps: int, evaluations: Callable[[object, int], dict],
             steps_run: Callable[[object, int], int] | None = None):
    """Decorator: make `fn` the sampler `name`, configured by `config`."""
    def wrap(fn: SamplerFn) -> SamplerFn:
        if name in SAMPLERS or any(s.config is config for s in SAMPLERS.values()):
            raise SamplerError(f"sampler {name!r} or its config {config.__name__} is registered twice")
        SAMPLERS[name] = SamplerSpec(name, config, fn, summary, default_steps, evaluations,
                                     steps_run or (lambda cfg, steps: steps))
        return fn
    return wrap


def spec(name: str) -> SamplerSpec:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise SamplerError(f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}") from None


def spec_for(cfg) -> SamplerSpec:
    for s in SAMPLERS.values():
        if type(cfg) is s.config:
            return s
    raise SamplerError(f"{type(cfg).__name__} is not the config of a registered sampler")


def config_from_params(name: str, params: Mapping[str, object] | None = None):
    """The config of sampler `name` with `params` (name -> value) over its defaults. Numbers from
    a request arrive as floats: an integral float is taken for an int, 0/1 for a bool."""
    s = spec(name)
    fields = {f.name: f for f in dataclasses.fields(s.config)}
    values = {}
    for key, value in (params or {}).items():
        if key not in fields:
            raise SamplerError(f"sampler {name!r} has no parameter {key!r}; it takes: {', '.join(fields) or 'none'}")
        kind = _field_type(fields[key])
        if kind is bool and isinstance(value, (int, float)) and not isinstance(value, bool):
            if value not in (0, 1):
                raise SamplerError(f"{key} is a switch: 0 or 1, got {value}")
            value = bool(value)
        elif kind is int and isinstance(value, float):
            if not value.is_integer():
                raise SamplerError(f"{key} must be an integer, got {value}")
            value = int(value)
        values[key] = value
    try:
        return s.config(**values)
    except (TypeError, ValueError) as e:
        raise SamplerError(f"sampler {name!r}: {e}") from None


def sample(engine: Engine, schedule: Schedule, observations: Observations, rngs: Sequence[np.random.Generator], cfg,
           callback: Callable[[StepInfo], None] | None = None) -> np.ndarray:
    """Run the sampler that `cfg` configures; returns x_0 (B, C, H, W) for B = len(rngs)."""
    if len(rngs) != observations.rows:
        raise ValueError(f"{len(rngs)} generators for {observations.rows} rows")
    return spec_for(cfg).run(conditioned(engine, observations), schedule, observations, rngs, cfg, callback)


# The built-in samplers register themselves on import.
from ckm_edge.runtime import daps, diffpir, dps  # noqa: E402,F401
