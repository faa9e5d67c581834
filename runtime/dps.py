"""Diffusion posterior sampling (paper Algorithm 2), autograd-free, over an engine, in numpy.

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
A site map, where given, projects the clipped estimate entering the predictor and the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime import defaults
from ckm_edge.runtime.observations import noise, row_norm
from ckm_edge.runtime.sampler import StepInfo, Steps, check_params, param, prior_start, register


@dataclass(frozen=True)
class DPSConfig:
    zeta: float = param(defaults.ZETA, "observation constraint strength (paper IV-C: 10-13)", 0.0, 1e4)
    corrector_steps: int = param(defaults.CORRECTOR_STEPS, "Langevin corrector steps per predictor step (M)", 0, 20)
    snr: float = param(0.16, "target signal-to-noise ratio of the Langevin step size", 1e-6, 10.0)
    jacobian_free: bool = param(False, "skip the network Jacobian in the guidance (about half the cost, less accurate)")
    # Clip x0_hat to the data range [0, 1] where it enters the predictor (DDPM's clip_denoised). The
    # paper's Algorithm 2 does not; without it an early guided step can throw x far out of the
    # data's range (x0_hat carries 1/scale ~ 150 at t = 1) and the prior takes many steps to
    # recover. The observation step always uses the unclipped x0_hat, as in Algorithm 2.
    clip_denoised: bool = param(True, "clip the estimate to [0, 1] where it enters the predictor (DDPM's clip_denoised)")

    def __post_init__(self):
        check_params(self)


def _evaluations(cfg: DPSConfig, steps: int) -> dict:
    guided = cfg.zeta > 0
    calls = {"score": (steps - 1) * cfg.corrector_steps}
    if guided and not cfg.jacobian_free:
        calls.update(forward=steps, backward=steps)
    else:
        calls["score"] += steps
    return calls


@register("dps", DPSConfig, default_steps=defaults.DPS_STEPS, evaluations=_evaluations,
          summary="diffusion posterior sampling (paper Algorithm 2): predictor-corrector with a normalized gradient "
                  "step through the network's Jacobian; any differentiable operator")
def dps(engine, schedule, obs, rngs, cfg: DPSConfig) -> Steps:
    b, shape = obs.rows, obs.shape
    x = prior_start(schedule, rngs, shape)  # x_N, (B, C, H, W)
    guided = obs.guided and cfg.zeta > 0
    for k in reversed(range(len(schedule))):
        t = np.full(b, schedule.times[k], np.float32)
        if guided and not cfg.jacobian_free:
            s, saved = engine.forward(x, t)
        else:
            s = engine.score(x, t)
        ax, bs = (float(c) for c in schedule.x0_hat_coefficients(k))
        x0_hat = ax * x + bs * s  # progressive estimate
        rs, residual = obs.residuals(x0_hat) if obs.guided else (None, None)
        if not cfg.clip_denoised:
            a, bc, c = (float(v) for v in schedule.ancestral_coefficients(k))
            x_next = a * x + bc * s + c * noise(rngs, shape)  # ancestral predictor, eq. (13)
        else:  # the same predictor over the clipped progressive estimate
            d, e, c = schedule.x0_predictor_coefficients(k)
            x_next = d * x + e * obs.project_site(np.clip(x0_hat, 0.0, 1.0)) + c * noise(rngs, shape)
        if k > 0:
            t_prev = np.full(b, schedule.times[k - 1], np.float32)
            alpha = schedule.langevin_alpha(k - 1)
            for _ in range(cfg.corrector_steps):  # Langevin corrector
                s_c = engine.score(x_next, t_prev)
                z = noise(rngs, shape)
                eps = 2 * alpha * (cfg.snr * row_norm(z) / np.maximum(row_norm(s_c), 1e-12)) ** 2
                x_next = x_next + eps.astype(np.float32) * s_c + np.sqrt(2 * eps).astype(np.float32) * z
        if guided:
            g0 = obs.norm_grad(x0_hat, rs, residual)  # d||r|| / d x0_hat
            g = ax * g0
            if not cfg.jacobian_free:
                g = g + bs * engine.backward(saved, g0.astype(np.float32))  # J_s^T through the network
            x_next = x_next - cfg.zeta * g.astype(np.float32)  # normalized observation step
        yield StepInfo(k, x0_hat, residual)
        x = x_next.astype(np.float32)
    return obs.project_site(x)
