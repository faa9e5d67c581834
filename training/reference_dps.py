"""Reference diffusion posterior sampling in PyTorch with autograd (paper Algorithm 2).

This is the oracle that the torch-free edge runtime must match and the baseline the benchmarks
compare against; it is not the product's inference path. Per step i = K..1 (array index k):

    1  s      = s_theta(x_i, t_i)                                   (network forward, with grad)
    2  x0_hat = (x_i + std_i^2 s) / scale_i                         progressive estimate
    3  x'     = a_i x_i + b_i s + c_i z                             ancestral predictor (eq. 13);
              by default written d_i x_i + e_i clip(x0_hat) + c_i z     (DDPM's clip_denoised)
    4  M x    x' <- x' + eps s_theta(x', t_{i-1}) + sqrt(2 eps) z  Langevin corrector,
              eps = 2 alpha (snr ||z|| / ||s||)^2 per sample        (score_sde's target-SNR rule)
    5  x_{i-1} = x' - zeta grad_{x_i} ||y - A(x0_hat)||             normalized observation step
                                                                    (gradient of the norm, autograd
                                                                    through the network: 1 backward)

Every norm and step size is per sample, so a batch equals its samples run one by one. The
operator is the runtime's numpy operator (forward and analytic VJP) wrapped as an autograd
Function, so there is one implementation of each operator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ckm_edge.runtime import defaults
from ckm_edge.runtime.operators import Operator
from ckm_edge.runtime.schedule import Schedule


class _NumpyOperator(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, op: Operator) -> torch.Tensor:
        ctx.op = op
        ctx.save_for_backward(x)
        y = op.forward(x.detach().cpu().numpy())
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(x.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        v = ctx.op.vjp(x.detach().cpu().numpy(), grad.detach().cpu().numpy())
        return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(grad.device), None


def apply_operator(op: Operator, x: torch.Tensor) -> torch.Tensor:
    """A(x) for a torch tensor, differentiable through the operator's analytic VJP."""
    return _NumpyOperator.apply(x, op)


@dataclass(frozen=True)
class DPSConfig:
    zeta: float = defaults.ZETA  # observation constraint strength (paper: 10-13)
    corrector_steps: int = defaults.CORRECTOR_STEPS  # M
    snr: float = 0.16  # Langevin target signal-to-noise ratio
    clip_denoised: tuple[float, float] | None = (0.0, 1.0)  # x0_hat clipped where it enters the predictor

    def __post_init__(self):
        if self.zeta < 0 or self.corrector_steps < 0 or self.snr <= 0:
            raise ValueError(f"need zeta >= 0, corrector_steps >= 0, snr > 0; got {self}")


def _randn(rng: np.random.Generator, shape, device) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(device)


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # (B, 1, 1, 1)


def dps_sample(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: Schedule,
    op: Operator | None,
    y: torch.Tensor | None,
    *,
    shape: tuple[int, ...],
    rng: np.random.Generator,
    cfg: DPSConfig = DPSConfig(),
    device: torch.device | str = "cpu",
    callback: Callable[[int, torch.Tensor, torch.Tensor | None], None] | None = None,
) -> torch.Tensor:
    """Algorithm 2 over `schedule` (respace it for fewer steps). op=None samples the prior.

    Returns x_0 (B, C, H, W). `callback(k, x0_hat, residual_norm)` sees every step.
    """
    if (op is None) != (y is None):
        raise ValueError("give both the operator and the observation, or neither (prior sampling)")
    x = torch.from_numpy(schedule.prior_sample(shape, rng)).to(device)
    b = shape[0]
    for k in reversed(range(len(schedule))):
        t = torch.full((b,), float(schedule.times[k]), device=device)
        guided = op is not None and cfg.zeta > 0
        x = x.detach().requires_grad_(guided)
        with torch.enable_grad() if guided else torch.no_grad():
            s = score(x, t)  # (1)
            ax, bs = schedule.x0_hat_coefficients(k)
            x0_hat = float(ax) * x + float(bs) * s  # (2)
            residual = None
            if op is not None:
                residual = _per_sample_norm(y - apply_operator(op, x0_hat))
        with torch.no_grad():
            if cfg.clip_denoised is None:
                a, b_coef, c = schedule.ancestral_coefficients(k)
                x_next = float(a) * x + float(b_coef) * s + float(c) * _randn(rng, shape, device)  # (3)
            else:  # (3) over the clipped progressive estimate, as DDPM's clip_denoised
                d, e, c = schedule.x0_predictor_coefficients(k)
                x_next = d * x + e * x0_hat.clamp(*cfg.clip_denoised) + c * _randn(rng, shape, device)
            if k > 0:
                t_prev = torch.full((b,), float(schedule.times[k - 1]), device=device)
                alpha = schedule.langevin_alpha(k - 1)
                for _ in range(cfg.corrector_steps):  # (4)
                    s_c = score(x_next, t_prev)
                    z = _randn(rng, shape, device)
                    eps = 2 * alpha * (cfg.snr * _per_sample_norm(z) / _per_sample_norm(s_c).clamp_min(1e-12)) ** 2
                    x_next = x_next + eps * s_c + torch.sqrt(2 * eps) * z
        if guided:
            (grad,) = torch.autograd.grad(residual.sum(), x)  # (5) d||y - A(x0_hat)|| / d x_i
            x_next = x_next - cfg.zeta * grad
        if callback is not None:
            callback(k, x0_hat.detach(), None if residual is None else residual.detach().view(-1))
        x = x_next.detach()
    return x
