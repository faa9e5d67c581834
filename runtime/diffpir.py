"""DiffPIR (Zhu et al., CVPR 2023): denoise, a closed-form data step, re-noise. No network VJP.

Half-quadratic splitting of the posterior: the prior's denoiser and the observation alternate.
Per step k of the (respaced) schedule, i = k + 1:

    1  s       = s_theta(x_i, t_i)                                   one network evaluation
    2  x0      = (x_i + std_i^2 s) / scale_i, clipped to [0, 1]      Tweedie's denoiser
    3  rho_i   = lambda / sigma_bar_i^2,  sigma_bar_i = std_i / scale_i
       x0_dc   = argmin_x ||y - A(x)||^2 / (2 sigma_n^2) + rho_i/2 ||x - x0||^2
                 (the operator's exact proximal step, `Operator.prox`; then the site map)
    4  x_{i-1} = scale_{i-1} x0_dc + std_{i-1} (sqrt(1 - eta) eps_hat + sqrt(eta) z),
                 eps_hat = (x_i - scale_i x0_dc) / std_i                 (`Schedule.renoise`)

lambda weighs the prior against the data (DiffPIR's lambda; larger trusts the denoiser more),
sigma_n is the request's observation noise (0: the data step is an exact projection, as DDNM's
range/null-space step), eta the stochasticity (DiffPIR's zeta; 1 = fresh noise every step). The
last step returns the denoised map fitted to y within its noise (`Observations.fit_to_noise`: the
discrepancy principle picks the data step's weight), so observed values are kept to within sigma.
With `start` < 1 the steps span only the lowest noise levels and begin from the smoothest map the
observation allows (runtime.smooth), noised to that level (CCDF's warm start): few steps suffice.

With `restart` > 0 each chain, once done, starts again (Restart sampling, Xu et al. 2023): its map
(proven no-path cells pinned, the AoA-sine channel taken from the smooth fill) is noised to the
level `restart` and refined in `restart_steps` more steps with their own prior weight
`restart_lam`. A quantized AoA reading (JTQR) allows a whole sector; a chain from pure noise lands
anywhere in it, while the fill follows what the neighbouring sectors allow, and the refinement
fits both channels together (measured on validation tiles: docs/solvers.md).
Cost: one score evaluation per step (the restart's included), no saved activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime.codec import CHANNELS
from ckm_edge.runtime.observations import noise
from ckm_edge.runtime.sampler import StepInfo, Steps, check_params, param, prior_start, register, restart_schedule, warm_start

AOA = CHANNELS.index("aoa_sine")


@dataclass(frozen=True)
class DiffPIRConfig:
    lam: float = param(7.0, "prior weight lambda in rho_t = lambda sigma_n^2 / sigma_bar_t^2 (larger: trust the "
                            "denoiser more than the observation)", 1e-6, 1e6)
    stochasticity: float = param(1.0, "share of fresh noise when re-noising (0: deterministic DDIM step, 1: fresh)",
                                 0.0, 1.0)
    start: float = param(1.0, "where the steps begin, as a fraction of the noise levels: 1 = from pure noise; "
                              "below 1, from the smoothest map the observation allows, noised to that level (CCDF)",
                         1e-3, 1.0)
    restart: float = param(0.0, "level (a fraction of the noise levels) a finished chain restarts from, its AoA "
                                "channel taken from the smooth fill; 0 = no restart", 0.0, 1.0)
    restart_steps: int = param(5, "steps of the restart (extra network evaluations per sample)", 1, 1000)
    restart_lam: float = param(100.0, "the prior weight lambda of the restart's steps (refining a whole map wants "
                                      "the observation closer than generating it from noise did)", 1e-6, 1e6)

    def __post_init__(self):
        check_params(self)


def _restarts(cfg: DiffPIRConfig) -> int:
    return cfg.restart_steps if cfg.restart > 0 else 0


@register("diffpir", DiffPIRConfig, default_steps=20, evaluations=lambda cfg, steps: {"score": steps + _restarts(cfg)},
          steps_run=lambda cfg, steps: steps + _restarts(cfg),
          summary="DiffPIR: Tweedie denoiser, the operator's closed-form/exact proximal data step (noise-aware), "
                  "re-noising; one score evaluation per step, no network Jacobian")
def diffpir(engine, schedule, obs, rngs, cfg: DiffPIRConfig) -> Steps:
    # the smooth fill, once: the warm start's and the restart's
    fill = obs.initial_estimate() if cfg.start < 1.0 or cfg.restart > 0 else None
    x = prior_start(schedule, rngs, obs.shape) if cfg.start >= 1.0 else warm_start(schedule, obs, rngs, fill)
    if cfg.restart <= 0:
        return (yield from _chain(engine, schedule, obs, rngs, cfg, x))
    again = restart_schedule(schedule, cfg)
    x = obs.finish((yield from _chain(engine, schedule, obs, rngs, cfg, x, offset=len(again))))  # no-path cells pinned
    x[:, AOA] = fill[:, AOA]
    z = noise(rngs, obs.shape)
    x = again.perturb(x, z, np.full(obs.rows, len(again) - 1)).astype(np.float32)
    return (yield from _chain(engine, again, obs, rngs, cfg, x, lam=cfg.restart_lam))


def _chain(engine, schedule, obs, rngs, cfg: DiffPIRConfig, x, offset: int = 0, lam: float | None = None) -> Steps:
    """Steps (1)-(4) from x over `schedule` with prior weight `lam` (default cfg.lam); the
    steps' indices count down to `offset`."""
    lam = cfg.lam if lam is None else lam
    b, shape = obs.rows, obs.shape
    for k in reversed(range(len(schedule))):
        s = engine.score(x, np.full(b, schedule.times[k], np.float32))  # (1)
        x0 = np.clip(schedule.x0_hat(x, s, k), 0.0, 1.0).astype(np.float32)  # (2)
        residual = obs.residuals(x0)[1] if obs.guided else None
        if k > 0:  # (3)
            x0 = obs.prox(x0, lam / schedule.noise_to_signal(k) ** 2)
        else:  # the last step: fit y to within its noise (the discrepancy principle)
            x0 = obs.fit_to_noise(x0)
        yield StepInfo(k + offset, x0, residual)
        x = schedule.renoise(k, x, x0, noise(rngs, shape) if k > 0 else 0.0, cfg.stochasticity)  # (4)
    return x
