"""PyTorch oracles of the runtime's data-consistent samplers (runtime.diffpir, runtime.daps).

What the runtime computes with ONNX Runtime graphs and numpy, computed here with the PyTorch
network and torch arithmetic, drawing the same noise in the same order from one numpy Generator
(batch 1), so that the two agree to float rounding at fixed draws. The proximal data step is the
runtime operator's own `prox` (numpy), as the DPS reference uses the runtime operators' VJPs:
there is one implementation of each operator, tested against brute-force optimisation on its
own (tests/test_operators.py). Per step k (i = k + 1):

    s      = s_theta(x_i, t_i)                                      the network, no grad
    x0     = clamp((x_i + std_i^2 s) / scale_i, 0, 1)               Tweedie
    DiffPIR: x0 <- prox_A(x0; y, sigma^2 lambda / sigma_bar_i^2)    closed-form data step
    DAPS:    x0 <- prox_A(x0 + r_i e1; y + sigma e2, sigma^2 / r_i^2), r_i = min(ratio sigma_bar_i, r_max)
    last step (both): the runtime's discrepancy-principle fit (`Observations.fit_to_noise`)
    DiffPIR's restart: the chain again over `restart_schedule`, from its map (AoA: the smooth fill's) noised
    x_{i-1} = scale_{i-1} x0 + std_{i-1} (sqrt(1 - eta) (x_i - scale_i x0) / std_i + sqrt(eta) z)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ckm_edge.runtime.daps import DAPSConfig
from ckm_edge.runtime.diffpir import DiffPIRConfig
from ckm_edge.runtime.operators import Operator
from ckm_edge.runtime.sampler import Observation, Observations, restart_schedule
from ckm_edge.runtime.schedule import Schedule
from ckm_edge.runtime.site import Site
from ckm_edge.runtime.smooth import smooth_fill


def _randn(rng: np.random.Generator, shape, device) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(device)


def _data_step(x0: torch.Tensor, op: Operator, y: np.ndarray, lam: float | None, site: Site | None,
               sigma: float = 0.0) -> torch.Tensor:
    """The proximal step with weight lam; lam None: the last step, fitted to the noise level."""
    if lam is None:
        obs = Observations.same(Observation(op, y, sigma, site), tuple(x0.shape[1:]), len(x0))
        out = obs.fit_to_noise(x0.cpu().numpy())
    else:
        out = op.prox(x0.cpu().numpy(), y, lam)
        if site is not None:
            out = site.project(out)
    return torch.from_numpy(np.ascontiguousarray(out, np.float32)).to(x0.device)


def _start(schedule: Schedule, op, y, shape, rng, site, warm: bool, device) -> torch.Tensor:
    if not warm:
        return torch.from_numpy(schedule.prior_sample(shape[1:], rng)[None]).to(device)
    z = _randn(rng, shape[1:], device)[None]
    x_init = torch.from_numpy(smooth_fill(op, y, shape, site, iters=150)).to(device)
    k = len(schedule) - 1
    return float(schedule.scale[k]) * x_init + float(schedule.noise_std[k]) * z


def _renoise(schedule: Schedule, k: int, x, x0, z, eta: float) -> torch.Tensor:
    if k == 0:
        return x0
    eps = (x - float(schedule.scale[k]) * x0) / float(schedule.noise_std[k])
    return float(schedule.scale[k - 1]) * x0 + float(schedule.noise_std[k - 1]) * (
        float(np.sqrt(1.0 - eta)) * eps + float(np.sqrt(eta)) * z)


@torch.no_grad()
def diffpir_sample(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: Schedule, op: Operator,
                   y: np.ndarray, *, shape: tuple[int, ...], rng: np.random.Generator, cfg: DiffPIRConfig = DiffPIRConfig(),
                   sigma: float = 0.0, site: Site | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """DiffPIR over `schedule` (already respaced, with `start` if cfg.start < 1); batch 1."""
    x = _start(schedule, op, y, shape, rng, site, cfg.start < 1.0, device)
    x = _diffpir_chain(score, schedule, op, y, x, shape, rng, cfg.lam, cfg.stochasticity, sigma, site, device)
    if cfg.restart > 0:  # again from the restart level: the chain's map, its AoA channel the smooth fill's
        again = restart_schedule(schedule, cfg)
        fill = torch.from_numpy(smooth_fill(op, y, shape, site, iters=150)).to(device)
        done = Observations.same(Observation(op, y, sigma, site), tuple(shape[1:]), 1).finish(x.cpu().numpy())
        x = torch.cat([torch.from_numpy(done[:, :1]).to(device), fill[:, 1:]], dim=1)
        k = len(again) - 1
        x = float(again.scale[k]) * x + float(again.noise_std[k]) * _randn(rng, shape[1:], device)[None]
        x = _diffpir_chain(score, again, op, y, x, shape, rng, cfg.restart_lam, cfg.stochasticity, sigma, site, device)
    return x


def _diffpir_chain(score, schedule, op, y, x, shape, rng, lam, eta, sigma, site, device) -> torch.Tensor:
    for k in reversed(range(len(schedule))):
        s = score(x, torch.full((1,), float(schedule.times[k]), device=device))
        x0 = ((x + float(schedule.noise_std[k]) ** 2 * s) / float(schedule.scale[k])).clamp(0.0, 1.0)
        sbar = float(schedule.noise_std[k] / schedule.scale[k])
        x0 = _data_step(x0, op, y, sigma**2 * lam / sbar**2 if k > 0 else None, site, sigma)
        z = _randn(rng, shape[1:], device)[None] if k > 0 else None
        x = _renoise(schedule, k, x, x0, z, eta)
    return x


@torch.no_grad()
def daps_sample(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: Schedule, op: Operator,
                y: np.ndarray, *, shape: tuple[int, ...], rng: np.random.Generator, cfg: DAPSConfig = DAPSConfig(),
                sigma: float = 0.0, site: Site | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """DAPS with the perturb-and-MAP inner draw over `schedule`; batch 1."""
    x = _start(schedule, op, y, shape, rng, site, False, device)
    for k in reversed(range(len(schedule))):
        s = score(x, torch.full((1,), float(schedule.times[k]), device=device))
        x0 = ((x + float(schedule.noise_std[k]) ** 2 * s) / float(schedule.scale[k])).clamp(0.0, 1.0)
        r = min(cfg.ratio * float(schedule.noise_std[k] / schedule.scale[k]), cfg.r_max)
        yk = y
        if k > 0:
            x0 = x0 + r * _randn(rng, shape[1:], device)[None]
            yk = y + sigma * rng.standard_normal(y.shape[1:]).astype(np.float32)[None]
        x0 = _data_step(x0, op, yk, sigma**2 / r**2 if k > 0 else None, site, sigma)
        z = _randn(rng, shape[1:], device)[None] if k > 0 else None
        x = _renoise(schedule, k, x, x0, z, 1.0)
    return x
