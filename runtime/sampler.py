"""The autograd-free DPS loop (paper Algorithm 2) over an engine, in numpy.

Symbols (per step k of the schedule, i = k + 1):

    x        x_i             current sample (B, 2, H, W)
    s        s_theta(x_i,i)  score from the engine
    x0_hat   (x + std^2 s) / scale = ax x + bs s          progressive estimate
    r        y - A(x0_hat)   residual, ||r|| per sample
    g        d||r|| / d x_i  = ax g0 + bs J_s^T g0,  g0 = -A'(x0_hat)^T r / ||r||

One guided step = one `engine.forward` (score + saved tensors) + one `engine.backward` (J_s^T g0);
each Langevin corrector step = one `engine.score`. The operator's VJP and the x0_hat chain rule
are numpy. The Jacobian-free variant treats x0_hat as locally linear in x (drops the J_s term):
it skips the backward graph, about half the cost of a guided step.

Randomness: one numpy Generator per sample, each drawing that sample's noise in the same order as
the PyTorch reference (prior noise, then per step the predictor noise and each corrector's), so a
batch equals its samples run one by one, and batch 1 reproduces the reference draw for draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from runtime.operators import Operator
from runtime.schedule import Schedule


class Engine(Protocol):
    def score(self, x: np.ndarray, t: np.ndarray) -> np.ndarray: ...
    def forward(self, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, object]: ...
    def backward(self, saved: object, v: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SamplerConfig:
    zeta: float = 13.0  # observation constraint strength (paper IV-C: 10-13)
    corrector_steps: int = 1  # M Langevin steps per predictor step
    snr: float = 0.16  # target signal-to-noise ratio of the Langevin step size
    jacobian_free: bool = False
    # Clip x0_hat to the data range where it enters the predictor (DDPM's clip_denoised). The
    # paper's Algorithm 2 does not; without it an early guided step can throw x far out of the
    # data's range (x0_hat carries 1/scale ~ 150 at t = 1) and the prior takes many steps to
    # recover. The observation step always uses the unclipped x0_hat, as in Algorithm 2.
    clip_denoised: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self):
        if not (np.isfinite(self.zeta) and self.zeta >= 0):
            raise ValueError(f"zeta must be finite and >= 0, got {self.zeta}")
        if not 0 <= self.corrector_steps <= 20:
            raise ValueError(f"corrector_steps must be in [0, 20], got {self.corrector_steps}")
        if not (np.isfinite(self.snr) and self.snr > 0):
            raise ValueError(f"snr must be finite and > 0, got {self.snr}")
        if self.clip_denoised is not None:
            lo, hi = self.clip_denoised
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ValueError(f"clip_denoised must be a finite (low, high) with low < high, got {self.clip_denoised}")


@dataclass(frozen=True)
class StepInfo:
    k: int  # schedule index, counting down to 0
    x0_hat: np.ndarray  # (B, 2, H, W)
    residual: np.ndarray | None  # (B,) ||y - A(x0_hat)||


def _norm(v: np.ndarray) -> np.ndarray:
    """Per-sample L2 norm, shaped (B, 1, 1, 1) for broadcasting."""
    return np.sqrt((v.astype(np.float64) ** 2).reshape(len(v), -1).sum(axis=1)).reshape(-1, 1, 1, 1)


class _Observations:
    """The observations of a batch: one operator for all samples, or one (operator, y) per sample
    (different requests batched together). Residuals and norms are always per sample."""

    def __init__(self, op, y, b: int):
        if isinstance(op, Operator):
            self.groups = [(slice(0, b), op, np.asarray(y, np.float32))]
        else:
            if len(op) != b or len(y) != b:
                raise ValueError(f"per-sample operators and observations must number {b}, got {len(op)} and {len(y)}")
            self.groups = [(slice(i, i + 1), o, np.asarray(yi, np.float32).reshape((1,) + np.shape(yi)[-3:]))
                           for i, (o, yi) in enumerate(zip(op, y))]

    def residuals(self, x0_hat: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        rs = [y - op.forward(x0_hat[sl]) for sl, op, y in self.groups]
        return rs, np.concatenate([_norm(r) for r in rs])

    def grad(self, x0_hat: np.ndarray, rs: list[np.ndarray], norms: np.ndarray) -> np.ndarray:
        """d||r|| / d x0_hat = -A'(x0_hat)^T r / ||r||, per sample."""
        g = np.concatenate([op.vjp(x0_hat[sl], r) for (sl, op, _), r in zip(self.groups, rs)])
        return -g / np.maximum(norms, 1e-12)


def _noise(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([r.standard_normal(shape).astype(np.float32) for r in rngs])


def sample(
    engine: Engine,
    schedule: Schedule,
    op: Operator | Sequence[Operator] | None,
    y: np.ndarray | Sequence[np.ndarray] | None,
    *,
    shape: tuple[int, int, int],
    rngs: Sequence[np.random.Generator],
    cfg: SamplerConfig = SamplerConfig(),
    callback: Callable[[StepInfo], None] | None = None,
) -> np.ndarray:
    """Algorithm 2: returns x_0 (B, C, H, W) for B = len(rngs). op = None samples the prior.

    `op`/`y`: one operator and a (B, ...) observation, or B operators and B observations.
    """
    if (op is None) != (y is None):
        raise ValueError("give both the operator and the observation, or neither (prior sampling)")
    b = len(rngs)
    obs = None if op is None else _Observations(op, y, b)
    x = np.stack([schedule.prior_sample(shape, r) for r in rngs])  # x_N, (B, C, H, W)
    guided = op is not None and cfg.zeta > 0
    for k in reversed(range(len(schedule))):
        t = np.full(b, schedule.times[k], np.float32)
        if guided and not cfg.jacobian_free:
            s, saved = engine.forward(x, t)
        else:
            s = engine.score(x, t)
        ax, bs = (float(c) for c in schedule.x0_hat_coefficients(k))
        x0_hat = ax * x + bs * s  # progressive estimate
        residual = None
        if obs is not None:
            rs, residual = obs.residuals(x0_hat)
        if cfg.clip_denoised is None:
            a, bc, c = (float(v) for v in schedule.ancestral_coefficients(k))
            x_next = a * x + bc * s + c * _noise(rngs, shape)  # ancestral predictor, eq. (13)
        else:  # the same predictor over the clipped progressive estimate
            d, e, c = schedule.x0_predictor_coefficients(k)
            x_next = d * x + e * np.clip(x0_hat, *cfg.clip_denoised) + c * _noise(rngs, shape)
        if k > 0:
            t_prev = np.full(b, schedule.times[k - 1], np.float32)
            alpha = schedule.langevin_alpha(k - 1)
            for _ in range(cfg.corrector_steps):  # Langevin corrector
                s_c = engine.score(x_next, t_prev)
                z = _noise(rngs, shape)
                eps = 2 * alpha * (cfg.snr * _norm(z) / np.maximum(_norm(s_c), 1e-12)) ** 2
                x_next = x_next + eps.astype(np.float32) * s_c + np.sqrt(2 * eps).astype(np.float32) * z
        if guided:
            g0 = obs.grad(x0_hat, rs, residual)  # d||r|| / d x0_hat
            g = ax * g0
            if not cfg.jacobian_free:
                g = g + bs * engine.backward(saved, g0.astype(np.float32))  # J_s^T through the network
            x_next = x_next - cfg.zeta * g.astype(np.float32)  # normalized observation step
        if callback is not None:
            callback(StepInfo(k, x0_hat, None if residual is None else residual.reshape(-1)))
        x = x_next.astype(np.float32)
    return x
