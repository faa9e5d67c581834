"""Calibrated uncertainty: the std a construction reports, and the central interval it implies.

A construction's posterior samples spread less than its errors (measured on ckm-prior 1.0.0: a
nominal 90 % interval held 39-88 % of unobserved cells), and one sample has no spread at all. A
package's manifest section "uncertainty" maps that spread to a standard deviation whose central
interval holds the truth at the stated rate, per operator kind and setting (runtime.recommend's
kinds "mask", "downsample", "jtqr", "*", sparse and scarce masks apart as "mask-sparse" and
"mask-scarce" (`calibration_kind`), each also "+site") and per channel:

    spread = std over the posterior samples, ddof 1 (0 for one sample)          (pixels)
    d      = distance in cells (Chebyshev, capped at MAX_RANGE) from the cell to the nearest cell
             whose value the observation pins (`Operator.bounds` narrower than PINNED_WIDTH)
    std    = scale(d) * sqrt(spread^2 + floor^2 + ramp^2 min(d / range, 1))    (pixels)
    interval = mean -/+ z * std, clipped to the codec's [0, 1];  z = Phi^-1((1 + coverage) / 2)

scale(d) is one number, or one per distance bin ("bins": the first bin whose `below` exceeds d;
beyond the last, the last's): Mondrian conformal prediction over the distance, so that the cells
deep inside a box hold their share as well as the cells next to a reading. Measured on ckm-prior
1.0.0's validation tiles (two folds of 8 tiles, fitted on one, counted on the other), one scale for
every mask held 82-88 % on IPbox and 90-97 % on IPrandom; per distance bin, 85-92 % and 88-94 %.

The distance term is a capped linear variogram: the farther a cell lies from what was measured,
the less a map can know of it (the posterior's own spread grows too, but too little: measured on
ckm-prior 1.0.0, a trajectory's far cells held 19 % where 90 % was claimed). The parameters are
fitted by split conformal prediction on validation tiles of the training cities
(benchmarks.uncertainty, `ckm-bench uncertainty`): for each candidate (floor, ramp, range) the
normalized score |error| / sqrt(spread^2 + floor^2 + ramp^2 min(d / range, 1)) over the unobserved
cells of every validation problem (each task weighted equally) has, in each distance bin, its
`coverage` quantile q, and scale = q / z makes the interval hold exactly `coverage` of that bin's
cells; kept is the candidate whose coverage per task strays least from `coverage`, then the narrowest. Validation tiles
from several sets (generated cities, a real city's tiles) give each bin the largest of the sets'
quantiles: the interval holds on every kind of city it was validated on. A package without the section
reports the raw spread (ddof 0, as before) and says it is not calibrated (GetModelMetadata.calibrated).

A kind's fit describes the construction it was measured at (the package's default for the kind,
`fitted.construction`). A construction that averages more samples over more steps has a better mean
and a steadier spread than that fit assumed (measured on 1.0.0's held-out split: SR x2 at 12 steps x
8 samples held 95 % under the fit made at 6 x 4). So a kind's entry may carry fits measured at other
constructions ("constructions": [{gain, aoa_sine, fitted: {construction: {sampler, steps, samples,
parameters}, ...}}, ...]; `ckm-bench uncertainty --samplers TABLE --write`): a job running exactly
one of them is read by that fit (`Uncertainty.fit_for`'s `construction`), any other by the kind's own.
A living map's incremental rebuild starts from its previous map (runtime.sites) and spreads less
than a construction from the smooth fill with the same steps: its fit is recorded with "warm": true
(`ckm-bench uncertainty --rebuilds --write`) and read only by warm-started jobs.

The calibrated predictive also gives the map where the observation bounds a cell: the mean of
N(unmoved samples' mean, std^2) truncated to the bounds (`conditional_mean`; runtime.executor.summarize),
not the mean of samples moved onto them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

CHANNELS = ("gain", "aoa_sine")
DEFAULT_COVERAGE = 0.9
METHOD = ("split conformal, score |error| / sqrt(spread^2 + floor^2 + ramp^2 min(d / range, 1)), unobserved cells, "
          "tasks weighted equally, a scale per distance bin (Mondrian); the candidate whose per-task coverage strays "
          "least, then the narrowest")
SPARSE = 0.75  # a mask observing less than this share of the cells is its own calibration kind, "mask-sparse"
PINNED_WIDTH = 0.1  # pixels (20 dB, 0.29 sine): a cell proven within this is measured, for the distance term
MAX_RANGE = 32  # cells: distances are capped here
BIN_EDGES = (2.0, 4.0, 8.0, 16.0, 32.0, MAX_RANGE + 1.0)  # the distance bins' upper ends (cells, exclusive)
MIN_BIN_CELLS = 2000  # a bin with fewer validation cells is merged with the next one out
FALLBACK = {"mask-scarce": "mask-sparse"}  # a calibration kind without a fit of its own is read by this one's


class UncertaintyError(ValueError):
    """A malformed "uncertainty" section."""


def z_of(coverage: float) -> float:
    """The half-width in stds of a central normal interval holding `coverage` (0.9 -> 1.645)."""
    return NormalDist().inv_cdf((1.0 + coverage) / 2.0)


def calibration_kind(op) -> str:
    """The key a calibration is stored under: the operator's kind (runtime.recommend.operator_kind),
    and for masks that leave most cells open (drive-test routes, a few scattered readings) a kind
    of their own, "mask-sparse" (Mondrian conformal prediction: bins by a feature of the input).
    Measured on 1.0.0's validation tiles, one fit for every mask held 99-100 % on IPbox and
    IPrandom and 71 % on trajectories: their errors differ in kind, not only in distance. A mask
    observing less than runtime.recommend.SCARCE of the cells (a living map's drive test) is
    "mask-scarce", as its construction is (a high start from the prior, not the fill between the
    readings); a package without that fit reads it by "mask-sparse"'s (`FALLBACK`)."""
    from ckm_edge.runtime.recommend import SCARCE, mask_share, operator_kind

    kind = operator_kind(op)
    if kind != "mask":
        return kind
    share = mask_share(op)
    return "mask-scarce" if share < SCARCE else "mask-sparse" if share < SPARSE else kind


def spread(samples: np.ndarray) -> np.ndarray:
    """(S, C, H, W) posterior samples -> (C, H, W) their std with ddof 1 (zeros for one sample)."""
    if len(samples) < 2:
        return np.zeros(samples.shape[1:], np.float32)
    return samples.std(axis=0, ddof=1).astype(np.float32)


def distance_to_pinned(bounds: tuple[np.ndarray, np.ndarray] | None, shape: tuple[int, int, int]) -> np.ndarray:
    """(C, H, W) float32: per channel, the Chebyshev distance in cells from each cell to the nearest
    one whose value an observation pins within PINNED_WIDTH (`bounds`: its `Operator.bounds(y,
    sigma)`), capped at MAX_RANGE (also where it pins none, or proves no per-cell interval (None):
    e.g. block averages)."""
    out = np.full(shape, float(MAX_RANGE), np.float32)
    if bounds is None:
        return out
    low, high = (np.broadcast_to(b, (1,) + tuple(shape))[0] for b in bounds)
    pinned = (high - low) <= PINNED_WIDTH
    for c in range(shape[0]):
        reach = pinned[c].copy()
        if not reach.any():
            continue
        dist = np.where(reach, 0.0, float(MAX_RANGE)).astype(np.float32)
        for step in range(1, MAX_RANGE):  # grow the pinned set by one cell (8 neighbours) per step
            grown = reach.copy()
            grown[1:] |= reach[:-1]
            grown[:-1] |= reach[1:]
            grown[:, 1:] |= grown[:, :-1].copy()
            grown[:, :-1] |= grown[:, 1:].copy()
            new = grown & ~reach
            if not new.any():
                break
            dist[new] = step
            reach = grown
        out[c] = dist
    return out


@dataclass(frozen=True)
class ChannelFit:
    """std = scale(d) * sqrt(spread^2 + floor^2 + ramp^2 min(d / range, 1)) for one channel, pixels;
    scale(d) is `scale`, or with `bins` ((below, scale), ...; `below` increasing) the scale of the
    first bin with d < below, beyond the last bin the last one's."""

    scale: float
    floor: float
    ramp: float = 0.0
    range: float = 1.0  # cells
    bins: tuple[tuple[float, float], ...] = ()

    def std(self, spread: np.ndarray, distance: np.ndarray | float = 0.0) -> np.ndarray:
        return (self.scale_at(distance) * np.sqrt(self.variance(spread, distance))).astype(np.float32)

    def scale_at(self, distance: np.ndarray | float) -> np.ndarray | float:
        """The scale a cell `distance` cells from the nearest pinned one takes."""
        if not self.bins:
            return self.scale
        below = np.array([b for b, _ in self.bins[:-1]])
        scales = np.array([s for _, s in self.bins])
        return scales[np.searchsorted(below, np.asarray(distance, np.float64), side="right")]

    def variance(self, spread: np.ndarray, distance: np.ndarray | float = 0.0) -> np.ndarray:
        """What `scale` multiplies, squared: spread^2 + floor^2 + ramp^2 min(d / range, 1)."""
        far = np.minimum(np.asarray(distance, np.float64) / self.range, 1.0)
        return spread.astype(np.float64) ** 2 + self.floor ** 2 + self.ramp ** 2 * far

    def to_dict(self) -> dict:
        out = {"scale": self.scale, "floor": self.floor, "ramp": self.ramp, "range": self.range}
        if self.bins:
            out["bins"] = [{"below": b, "scale": s} for b, s in self.bins]
        return out


@dataclass(frozen=True)
class KindFit:
    """One operator kind and setting: a fit per channel, and what it was fitted on; `variants`: fits
    of the same kind measured at other constructions (`construction` picks one)."""

    channels: tuple[ChannelFit, ChannelFit]  # gain, aoa_sine
    fitted: dict = field(default_factory=dict)  # cells, tasks, the construction measured, coverage per task
    variants: tuple[KindFit, ...] = ()

    def std(self, spread: np.ndarray, distance: np.ndarray | None = None) -> np.ndarray:
        """(C, H, W) spread and distance to the pinned cells (`distance_to_pinned`; None: 0) -> the
        calibrated std, same shape."""
        d = np.zeros_like(spread) if distance is None else distance
        return np.stack([self.channels[c].std(spread[c], d[c]) for c in range(2)])

    def construction(self, sampler_config, steps: int, samples: int, warm: bool = False) -> KindFit:
        """The fit measured at this construction (a sampler's config, steps, posterior samples; `warm`:
        started from a previous map, as a living map's incremental rebuilds are): the variant fitted
        at exactly it, else this fit (measured at the package's default)."""
        for v in self.variants:
            if _same_construction(v.fitted.get("construction"), sampler_config, steps, samples, warm):
                return v
        return self

    def to_dict(self) -> dict:
        return {**{n: f.to_dict() for n, f in zip(CHANNELS, self.channels)}, **({"fitted": self.fitted} if self.fitted else {}),
                **({"constructions": [v.to_dict() for v in self.variants]} if self.variants else {})}


def _same_construction(rec: dict | None, sampler_config, steps: int, samples: int, warm: bool = False) -> bool:
    """Whether a fit's recorded construction ({"sampler", "steps", "samples", "parameters", "warm"})
    is the one a job runs (its sampler's config compared whole: parameters left out of the record
    are the sampler's defaults; "warm" left out: started from the smooth fill)."""
    from ckm_edge.runtime.sampler import config_from_params, spec_for

    if not rec or bool(rec.get("warm", False)) != bool(warm):
        return False
    return (rec["sampler"] == spec_for(sampler_config).name and rec["steps"] == steps and rec["samples"] == samples
            and config_from_params(rec["sampler"], rec.get("parameters") or {}) == sampler_config)


@dataclass(frozen=True)
class Uncertainty:
    """A package's "uncertainty" section (see the module's docstring)."""

    coverage: float
    kinds: dict[str, KindFit]
    method: str = METHOD
    validation: str = ""  # which tiles it was fitted on
    extra: dict = field(default_factory=dict)

    @property
    def z(self) -> float:
        return z_of(self.coverage)

    def fit_for(self, kind: str, site: bool, construction: tuple | None = None) -> KindFit | None:
        """The fit for a calibration kind (`calibration_kind`) and setting: its own, else its
        `FALLBACK`'s, else the setting's "*" entry, else None (then the raw spread is reported, uncalibrated); with
        `construction` ((sampler config, steps, samples[, warm])), the kind's fit measured at it where it
        has one (`KindFit.construction`)."""
        suffix = "+site" if site else ""
        fit = self.kinds.get(kind + suffix)
        while fit is None and kind in FALLBACK:
            kind = FALLBACK[kind]
            fit = self.kinds.get(kind + suffix)
        fit = fit or self.kinds.get("*" + suffix)
        return fit.construction(*construction) if fit is not None and construction is not None else fit

    def to_dict(self) -> dict:
        return {"coverage": self.coverage, "method": self.method, "validation": self.validation,
                "kinds": {k: v.to_dict() for k, v in sorted(self.kinds.items())}, **self.extra}

    @classmethod
    def from_dict(cls, d: Any) -> Uncertainty:
        if not isinstance(d, dict):
            raise UncertaintyError(f"uncertainty must be an object, got {type(d).__name__}")
        cov = d.get("coverage")
        if not (isinstance(cov, int | float) and not isinstance(cov, bool) and 0.5 <= cov < 1.0):
            raise UncertaintyError(f"uncertainty.coverage must be a number in [0.5, 1), got {cov!r}")
        kinds = d.get("kinds")
        if not isinstance(kinds, dict) or not kinds:
            raise UncertaintyError("uncertainty.kinds must map operator kinds to fits")
        out = {kind: _kind_fit(f"uncertainty.kinds[{kind!r}]", entry) for kind, entry in kinds.items()}
        known = ("coverage", "kinds", "method", "validation")
        return cls(float(cov), out, str(d.get("method", METHOD)), str(d.get("validation", "")),
                   {k: v for k, v in d.items() if k not in known})


def _kind_fit(where: str, entry: Any, variant: bool = False) -> KindFit:
    """One entry of the section's "kinds", checked: a fit per channel, "fitted", and "constructions"
    (fits of the kind at other constructions; each must name its construction in "fitted")."""
    if not isinstance(entry, dict):
        raise UncertaintyError(f"{where} must be an object")
    chans = []
    for name in CHANNELS:
        c = entry.get(name)
        c = {"ramp": 0.0, "range": 1.0, **c} if isinstance(c, dict) else c
        ok = isinstance(c, dict) and all(isinstance(c.get(k), int | float) and not isinstance(c.get(k), bool)
                                         and np.isfinite(c[k]) for k in ("scale", "floor", "ramp", "range"))
        if not ok or c["scale"] <= 0 or c["floor"] < 0 or c["ramp"] < 0 or c["range"] <= 0:
            raise UncertaintyError(f"{where}.{name} must have finite numbers scale > 0, "
                                   "floor >= 0, ramp >= 0 and range > 0")
        chans.append(ChannelFit(float(c["scale"]), float(c["floor"]), float(c["ramp"]), float(c["range"]),
                                _bins(c.get("bins", []), f"{where}.{name}.bins")))
    fitted = entry.get("fitted") or {}
    if variant:
        from ckm_edge.runtime.recommend import Recommendation
        from ckm_edge.runtime.sampler import SamplerError

        rec = fitted.get("construction") if isinstance(fitted, dict) else None
        try:
            Recommendation(rec["sampler"], rec["steps"], rec["samples"], rec.get("parameters") or {})
        except (TypeError, KeyError, SamplerError) as e:
            raise UncertaintyError(f"{where}.fitted.construction must name the construction the fit was measured at "
                                   f"({{sampler, steps, samples, parameters}}): {e}") from None
    raw = entry.get("constructions", [])
    if variant and raw:
        raise UncertaintyError(f"{where}: a construction's fit cannot hold constructions of its own")
    if not isinstance(raw, list):
        raise UncertaintyError(f"{where}.constructions must be a list of fits")
    return KindFit((chans[0], chans[1]), fitted, tuple(_kind_fit(f"{where}.constructions[{i}]", v, variant=True)
                                                       for i, v in enumerate(raw)))


def _bins(raw: Any, where: str) -> tuple[tuple[float, float], ...]:
    """A manifest's distance bins, checked: a list of {"below": d, "scale": s}, d increasing."""
    if not isinstance(raw, list):
        raise UncertaintyError(f"{where} must be a list of {{below, scale}} objects")
    out: list[tuple[float, float]] = []
    for i, b in enumerate(raw):
        ok = isinstance(b, dict) and all(isinstance(b.get(k), int | float) and not isinstance(b.get(k), bool)
                                         and np.isfinite(b[k]) for k in ("below", "scale"))
        if not ok or b["scale"] <= 0 or b["below"] <= 0 or (out and b["below"] <= out[-1][0]):
            raise UncertaintyError(f"{where}[{i}] must have finite numbers below > 0 (increasing) and scale > 0")
        out.append((float(b["below"]), float(b["scale"])))
    return tuple(out)


def conditional_mean(mu: np.ndarray, std: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """E[x | low <= x <= high] for x ~ N(mu, std^2), per cell: the mean of a normal truncated to
    what the observation proves (the estimate a construction reports where `Operator.bounds` is
    narrower than the codec's [0, 1]).

    A construction's samples are moved into those bounds (`Observations.finish`), which puts every
    sample the prior placed outside onto the nearest bound: their mean then hugs the bound, while
    the truth lies anywhere inside. Measured on ckm-prior 1.0.0's validation tiles, JTQR's gains
    saturated at the upper bound came out 7.1 dB low on average (3.6 given the site); conditioning
    the calibrated predictive N(mean of the unmoved samples, calibrated std) on the bounds instead
    took their RMSE from 11.4 to 7.8 dB (9.6 to 7.5 given the site)."""
    mu = np.asarray(mu, np.float64)
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    s = np.maximum(np.asarray(std, np.float64), 1e-9)
    a, b = (lo - mu) / s, (hi - mu) / s
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        above = mu + s * _tail_ratio(np.where(a > 0, a, 0.0), np.where(a > 0, b, 1.0))  # the window above the mean
        below = mu - s * _tail_ratio(np.where(b < 0, -b, 0.0), np.where(b < 0, -a, 1.0))  # ... below it
        pdf = lambda t: np.exp(-0.5 * t * t)  # noqa: E731 (1/sqrt(2 pi) cancels)
        mass = np.sqrt(2.0 * np.pi) - _mills_q(b) - _mills_q(-a)  # around it (sqrt(2 pi) (Phi(b) - Phi(a)))
        inside = mu + s * (pdf(a) - pdf(b)) / mass
    out = np.where(a > 0, above, np.where(b < 0, below, inside))
    out = np.where(np.isfinite(out), out, np.clip(mu, lo, hi))
    return np.where(hi - lo > 1e-9, np.clip(out, lo, hi), lo).astype(np.float32)


_ERFCC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
          -0.82215223, 0.17087277)  # Numerical Recipes' erfcc: relative error below 1.2e-7 (numpy has no erfc)


def _mills(t: np.ndarray) -> np.ndarray:
    """Q(t) / phi(t) for t >= 0 (Q the normal upper tail, phi its density; inf -> 0), without
    under- or overflow: erfcc's exp(-t^2 / 2) cancels phi's."""
    u = 1.0 / (1.0 + 0.5 * np.asarray(t, np.float64) / np.sqrt(2.0))
    poly = np.zeros_like(u)
    for c in reversed(_ERFCC[1:]):
        poly = c + u * poly
    return u * np.exp(_ERFCC[0] + u * poly) * np.sqrt(2.0 * np.pi) / 2.0


def _mills_q(t: np.ndarray) -> np.ndarray:
    """Q(t) * sqrt(2 pi) for any t (the scale `conditional_mean` works in)."""
    t = np.asarray(t, np.float64)
    q = _mills(np.abs(t)) * np.exp(-0.5 * t * t)
    return np.where(t >= 0, q, np.sqrt(2.0 * np.pi) - q)


def _tail_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(phi(a) - phi(b)) / (Q(a) - Q(b)) for 0 <= a < b <= inf: the mean of a standard normal
    truncated to [a, b], far into its tail too."""
    e = np.exp(-0.5 * (b - a) * (b + a))
    return (1.0 - e) / (_mills(a) - _mills(b) * e)


def interval(mean: np.ndarray, std: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """The central interval mean -/+ z std, clipped to the codec's [0, 1] (pixels)."""
    return np.clip(mean - z * std, 0.0, 1.0), np.clip(mean + z * std, 0.0, 1.0)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest value v with weighted share of values <= v at least q (conformal's 'higher')."""
    if np.all(weights == weights[0]):  # equal weights: a partition, not a sort
        k = min(int(np.ceil(q * len(values) - 1e-9)) - 1, len(values) - 1)
        return float(np.partition(values, max(k, 0))[max(k, 0)])
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w) / w.sum()
    return float(v[min(int(np.searchsorted(cum, q - 1e-12)), len(v) - 1)])


FLOORS = (0.0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1)
RAMPS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
RANGES = (2.0, 4.0, 8.0, 16.0, 32.0)


def distance_bins(distance: np.ndarray, edges: tuple[float, ...] = BIN_EDGES, min_cells: int = MIN_BIN_CELLS
                  ) -> tuple[float, ...]:
    """The bins' upper ends for these cells' distances: BIN_EDGES, a bin with fewer than
    `min_cells` cells merged with the next one out (the last such with the one before it)."""
    counts = np.bincount(np.searchsorted(np.asarray(edges), distance, side="right"), minlength=len(edges) + 1)
    counts[len(edges) - 1] += counts[len(edges)]  # beyond the last edge: the last bin
    out: list[float] = []
    held = 0
    for edge, n in zip(edges, counts[:len(edges)]):
        held += int(n)
        if held >= min_cells:
            out.append(edge)
            held = 0
    if not out:
        return (edges[-1],)
    if held:  # the last cells too few for a bin of their own
        out[-1] = edges[-1]
    return tuple(out)


def fit_channel(error: np.ndarray, spread: np.ndarray, distance: np.ndarray, group: np.ndarray, coverage: float,
                floors: tuple[float, ...] = FLOORS, ramps: tuple[float, ...] = RAMPS, ranges: tuple[float, ...] = RANGES,
                edges: tuple[float, ...] = BIN_EDGES, min_cells: int = MIN_BIN_CELLS,
                source: np.ndarray | None = None) -> tuple[ChannelFit, dict]:
    """Split-conformal fit over cells (1-D arrays: |error|, spread, distance, the task index of
    each cell), each task weighted equally, a scale per distance bin (`distance_bins`): (fit,
    {"width": its mean interval width in pixels, "coverage": per task, "by_source": per source and
    task}). Candidates that leave a zero denominator on error cells are skipped.

    With `source` (the validation set of each cell: generated cities, a real city's tiles), each
    bin's quantile is the largest of the sources' (tasks weighted equally within each): the
    interval holds its rate on every kind of city it was validated on, not only on their pool
    (measured on ckm-prior 1.0.0: fitted on generated cities alone, trajectories given the site
    held 90 % there and 76 % on the held-out real cities). The candidate kept strays least over
    (source, task)."""
    z = z_of(coverage)
    src = np.zeros(len(error), np.int64) if source is None else np.unique(source, return_inverse=True)[1].ravel()
    tasks = np.unique(group)
    task_of = np.searchsorted(tasks, group)
    cell_group = src * len(tasks) + task_of  # (source, task)
    groups, inverse = np.unique(cell_group, return_inverse=True)
    weight = 1.0 / np.bincount(inverse)[inverse]
    below = distance_bins(distance, edges, min_cells)
    which = np.minimum(np.searchsorted(np.asarray(below), distance, side="right"), len(below) - 1)
    members = [which == b for b in range(len(below))]
    mine = [src == k for k in range(int(src.max()) + 1)]

    def quantile(score: np.ndarray, where: np.ndarray) -> float:
        qs = [weighted_quantile(score[where & m], weight[where & m], coverage) for m in mine if (where & m).any()]
        return max(qs) if qs else float("nan")

    best = None
    for floor in floors:
        for ramp in ramps:
            for rng in (ranges if ramp > 0 else (1.0,)):
                cand = ChannelFit(1.0, floor, ramp, rng)
                den = np.sqrt(cand.variance(spread, distance))
                with np.errstate(divide="ignore", invalid="ignore"):
                    score = np.where(den > 0, error / np.where(den > 0, den, 1.0), np.where(error > 0, np.inf, 0.0))
                qs = [quantile(score, m) for m in members]
                if not all(np.isfinite(q) and q > 0 for q in qs):
                    continue
                q_cell = np.asarray(qs)[which]
                inside = score <= q_cell
                per_group = np.bincount(inverse, weights=inside * weight) / np.bincount(inverse, weights=weight)
                stray = round(float(np.abs(per_group - coverage).max()), 2)
                width = float(np.average(2 * q_cell * den, weights=weight))  # mean of 2 z scale den
                if best is None or (stray, width) < best[0]:
                    pooled = quantile(score, np.ones(len(score), bool))
                    bins = tuple((b, float(q / z)) for b, q in zip(below, qs)) if len(below) > 1 else ()
                    best = ((stray, width), ChannelFit(float((qs[0] if len(qs) == 1 else pooled) / z), floor, ramp, rng, bins),
                            inside, per_group)
    if best is None:
        raise ValueError("no candidate gives a finite interval: every one leaves cells with error and no spread")
    (_, width), fit, inside, per_group = best
    per_task = np.bincount(task_of, weights=inside * weight) / np.bincount(task_of, weights=weight)
    by_source: dict[int, dict[str, float]] = {}
    for g, c in zip(groups, per_group):  # g = source * len(tasks) + task index
        by_source.setdefault(int(g // len(tasks)), {})[str(tasks[g % len(tasks)])] = float(c)
    return fit, {"width": width, "coverage": {str(t): float(c) for t, c in zip(tasks, per_task)}, "by_source": by_source}


def covered(mean: np.ndarray, std: np.ndarray, truth: np.ndarray, where: np.ndarray, z: float) -> list[float | None]:
    """Per channel, the share of `where` cells (C, H, W) whose truth lies in mean -/+ z std (the
    interval as reported: clipped to [0, 1]); None where no cell is selected."""
    lo, hi = interval(mean, std, z)
    inside = (truth >= lo - 1e-7) & (truth <= hi + 1e-7)
    return [float(inside[c][where[c]].mean()) if where[c].any() else None for c in range(len(mean))]
