"""The sampler seam: every posterior sampler is a sequence of steps, registered by name, run by one loop.

    run = start(engine, schedule, observations, rngs, cfg)      # nothing computed yet
    for info in run:                                             # one step per iteration
        ...                                                      # progress, deadlines, cancellation
    x = run.result                                               # (B, C, H, W)
    x = sample(engine, schedule, observations, rngs, cfg)        # the same, all steps at once

- `engine`       the network (`Engine`): `score`, and `forward`/`backward` for samplers that
                 differentiate through it (only DPS does).
- `schedule`     the (respaced) noise schedule; it owns all noise math.
- `observations` what each of the B rows conditions on (runtime.observations). A site-aware prior
                 is also told each row's site (`conditioned`), so samplers need not know whether
                 the network is conditional.
- `rngs`         one numpy Generator per row: a batch equals its rows run one by one.
- `cfg`          the sampler's own frozen config (`DPSConfig`, `DiffPIRConfig`, `DAPSConfig`); its
                 type selects the sampler.

A sampler is a generator function `steps(engine, schedule, observations, rngs, cfg)`: it holds its
state between steps, yields a `StepInfo` after each step and returns the final maps, as diffusers'
schedulers keep theirs between `step` calls. Whoever drives the run (runtime.executor: progress,
deadlines, cancellation) decides between steps whether to go on; a run that is not driven to the
end simply stops, with nothing to unwind. Samplers register with `register` (runtime.dps,
runtime.diffpir, runtime.daps); everything else finds them by name (`spec`, `config_from_params`),
so a new sampler is one module and one import at the end of this file. `SamplerSpec.evaluations`
says what a construction costs in network calls, and `needs_vjp` whether the forward-with-saves and
backward graphs (and their saved activations) are needed at all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ckm_edge.runtime.observations import Observation, Observations, noise  # noqa: F401  (re-exported)
from ckm_edge.runtime.schedule import Schedule, ScheduleError


class SamplerError(ValueError):
    """An unknown sampler, or parameters it does not take or cannot use."""


class Engine(Protocol):
    """The network as samplers see it (runtime.engine.EngineBase implements it). `cond` is the
    site condition of a site-aware prior (None: zeros, the paper's setting)."""

    condition_channels: int

    def score(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray: ...
    def forward(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> tuple[np.ndarray, object]: ...
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


Steps = Generator[StepInfo, None, np.ndarray]


class Run:
    """One sampler run over a batch: iterating takes one step per item (a `StepInfo`); once every
    step is taken, `result` holds the maps (B, C, H, W). `total` is the number of steps."""

    def __init__(self, steps: Steps, total: int):
        self._steps, self.total, self.taken = steps, total, 0
        self._result: np.ndarray | None = None

    def __iter__(self):
        return self

    def __next__(self) -> StepInfo:
        try:
            info = next(self._steps)
        except StopIteration as end:
            self._result = end.value
            raise
        self.taken += 1
        return info

    @property
    def result(self) -> np.ndarray:
        if self._result is None:
            raise RuntimeError(f"the run has taken {self.taken} of its {self.total} steps; it has no result yet")
        return self._result


def prior_start(schedule: Schedule, rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """x_K for every row, drawn first from each row's generator (as the PyTorch references do)."""
    return np.stack([schedule.prior_sample(shape, r) for r in rngs])


def warm_start(schedule: Schedule, obs: Observations, rngs: Sequence[np.random.Generator],
               init: np.ndarray | None = None) -> np.ndarray:
    """x_K = scale_K x_init + std_K z, x_init the observation's smoothest consistent map (`init`
    when the caller already has `obs.initial_estimate()`): the start of a sampler whose schedule
    begins part-way (`Schedule.respace(start=...)`)."""
    z = noise(rngs, obs.shape)
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

StepsFn = Callable[[Engine, Schedule, Observations, Sequence[np.random.Generator], object], Steps]


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
    steps: StepsFn  # the generator function of its steps (module doc)
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
    """Decorator: make the generator function `fn` the sampler `name`, configured by `config`."""
    def wrap(fn: StepsFn) -> StepsFn:
        if name in SAMPLERS or any(s.config is config for s in SAMPLERS.values()):
            raise SamplerError(f"sampler {name!r} or its config {config.__name__} is registered twice")
        SAMPLERS[name] = SamplerSpec(name, config, fn, summary, default_steps, evaluations,
                                     steps_run or (lambda cfg, steps: steps))
        return fn
    return wrap


def network_evaluations(cfg, steps: int, samples: int = 1) -> int:
    """Network calls of a construction: `samples` posterior samples of `steps` steps of `cfg`'s sampler
    (score, forward-with-saves and backward graphs together)."""
    return samples * sum(spec_for(cfg).evaluations(cfg, steps).values())


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


def start(engine: Engine, schedule: Schedule, observations: Observations, rngs: Sequence[np.random.Generator],
          cfg) -> Run:
    """A run of the sampler that `cfg` configures over B = len(rngs) rows; no step is taken yet."""
    if len(rngs) != observations.rows:
        raise ValueError(f"{len(rngs)} generators for {observations.rows} rows")
    s = spec_for(cfg)
    steps = s.steps(conditioned(engine, observations), schedule, observations, rngs, cfg)
    return Run(steps, s.steps_run(cfg, len(schedule)))


def sample(engine: Engine, schedule: Schedule, observations: Observations, rngs: Sequence[np.random.Generator], cfg,
           callback: Callable[[StepInfo], None] | None = None) -> np.ndarray:
    """Every step of `start(...)` at once (`callback` sees each step's StepInfo); returns x_0 (B, C, H, W)."""
    run = start(engine, schedule, observations, rngs, cfg)
    for info in run:
        if callback is not None:
            callback(info)
    return run.result


# The built-in samplers register themselves on import.
from ckm_edge.runtime import daps, diffpir, dps  # noqa: E402,F401
