"""Data consistency: what a batch of maps conditions on, and the steps that pull maps towards it.

    obs = Observations.same(Observation(op, y, sigma, site), (2, H, W), rows)    one construction
    obs = Observations((2, H, W), rows, [(slice(0, 4), o1), (slice(4, 6), o2)])  requests batched
    obs.residuals(x0) / obs.norm_grad(...)      DPS: ||y - A(x0)|| per row and its gradient
    obs.prox(z, rho) / obs.fit_to_noise(z)      data-consistent samplers: the proximal data step
    obs.finish(x)                               what every construction ends with

Every reduction and step is per row group (one Observation), never across groups, so requests
batched together never see each other's data. `noise` is the samplers' only source of randomness:
one generator per row, so a batch equals its rows run one by one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime import codec
from ckm_edge.runtime.operators import Operator, OperatorError
from ckm_edge.runtime.site import Site


@dataclass(frozen=True, eq=False)
class Observation:
    """One construction's evidence: y = A(x) + n with n ~ N(0, sigma^2 I), and the site map."""

    op: Operator | None
    y: np.ndarray | None  # (1, C', H', W') or (rows, ...) shaped like op's output
    sigma: float = 0.0  # noise standard deviation in pixels; 0 = noiseless (exact data consistency)
    site: Site | None = None
    init: np.ndarray | None = None  # (C, H, W): the map a warm start begins from instead of the smooth fill

    def __post_init__(self):
        if (self.op is None) != (self.y is None):
            raise OperatorError("give both the operator and the observation, or neither")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise OperatorError(f"noise sigma must be finite and >= 0, got {self.sigma}")
        if self.y is not None:
            y = np.asarray(self.y, np.float32)
            object.__setattr__(self, "y", y[None] if y.ndim == 3 else y)


def row_norm(v: np.ndarray) -> np.ndarray:
    """Per-sample L2 norm, shaped (B, 1, 1, 1) for broadcasting."""
    return np.sqrt((v.astype(np.float64) ** 2).reshape(len(v), -1).sum(axis=1)).reshape(-1, 1, 1, 1)


class Observations:
    """The observations of a batch of `rows` maps of `shape` (C, H, W), as row groups: one
    Observation for all rows, one per row (requests batched together), or none (the prior).
    Every reduction and step is per group, never across groups."""

    def __init__(self, shape: tuple[int, int, int], rows: int, groups: Sequence[tuple[slice, Observation]] = (),
                 check_sites: bool = True):
        self.shape, self.rows, self.groups = tuple(shape), rows, list(groups)
        covered = sorted((sl.start, sl.stop) for sl, _ in self.groups)
        if covered and (covered[0][0] != 0 or covered[-1][1] != rows
                        or any(a[1] != b[0] for a, b in zip(covered, covered[1:]))):
            raise ValueError(f"observation groups must cover rows 0..{rows} without gaps, got {covered}")
        for sl, obs in self.groups:
            if obs.y is not None and len(obs.y) not in (1, sl.stop - sl.start):
                raise ValueError(f"an observation for {sl.stop - sl.start} row(s) has {len(obs.y)}")
            if obs.site is not None and check_sites:  # runtime.executor.plan checked its sites already
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
            norms[sl] = row_norm(r).reshape(-1)
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
                    zs = zs + spread * noise(rngs[sl], zs.shape[1:])
                    y = y + obs.sigma * noise(rngs[sl], y.shape[1:])
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
        warm start of samplers that begin part-way down the schedule; 0.5 where nothing is observed.
        A group whose Observation has an `init` (a living map's previous version, runtime.sites)
        begins from that instead, corrected towards the observation: the smoothest field through
        the residuals y - A(init) (nothing carried through buildings) is added, so a new reading
        moves its neighbourhood and a reading the old map already fits leaves it alone; then the
        observed values are written in (the operator's data step)."""
        from ckm_edge.runtime.smooth import smooth_fill

        x = np.full((self.rows,) + self.shape, 0.5, np.float32)
        for sl, obs in self.groups:
            n = sl.stop - sl.start
            if obs.init is not None:
                init = np.asarray(obs.init, np.float32)[None]
                if obs.op is not None:
                    # the residuals (in [-1, 1]) halved and shifted into the fill's [0, 1]; the fill is
                    # linear in its data, so twice its offset is the residuals' fill, none clipped
                    shift = 0.5 + 0.5 * (obs.y - obs.op.forward(init))
                    fill = smooth_fill(obs.op, np.clip(shift, 0.0, 1.0), (len(obs.y),) + self.shape, obs.site, iters=150,
                                       site_values=False)
                    init = obs.op.prox(init + 2.0 * (fill - 0.5), obs.y, 1e-6)
                x[sl] = np.broadcast_to(np.clip(init, 0.0, 1.0), (n,) + self.shape)
                if obs.site is not None:
                    x[sl] = obs.site.project(x[sl])
            elif obs.op is not None:  # one fill per observation, shared by its rows
                fill = smooth_fill(obs.op, obs.y, (len(obs.y),) + self.shape, obs.site, iters=150)
                x[sl] = np.broadcast_to(fill, (n,) + self.shape)
            elif obs.site is not None:
                x[sl] = obs.site.project(x[sl])
        return x

    def finish(self, x: np.ndarray) -> np.ndarray:
        """Maps (rows, C, H, W) -> what every construction ends with (runtime.executor.execute):
        clipped to the codec's [0, 1]; per group, moved into what its observation proves
        (`Operator.enforce`: observed cells within the noise, saturated gains beyond their bound,
        AoA within its sector(s), block averages within the noise); the cells it proves to have
        no path (a gain saturated below the weakest real path: `Operator.known_no_path`) set to the
        codec's no-path value, which a network's samples only approach; the site's buildings 0."""
        out = np.clip(x, 0.0, 1.0)
        for sl, obs in self.groups:
            if obs.op is not None:
                out[sl] = obs.op.enforce(out[sl], obs.y, obs.sigma)
                no_path = obs.op.known_no_path(obs.y, obs.sigma)
                if no_path is not None:
                    out[sl] = codec.set_no_path(out[sl], no_path)
            if obs.site is not None:
                out[sl] = obs.site.project(out[sl])
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


def noise(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """(B, *shape) standard normal noise, row b drawn from rngs[b] (samplers' only source of randomness)."""
    return np.stack([r.standard_normal(shape).astype(np.float32) for r in rngs])
