"""DAPS (Zhang et al., 2024: decoupled annealing posterior sampling), with an exact inner sampler.

DAPS decouples consecutive steps: from x_i it estimates the clean map, draws a clean map from
the posterior given that estimate and the observation, and noises that draw afresh to the next
level. Per step k of the (respaced) schedule, i = k + 1:

    1  s       = s_theta(x_i, t_i)                                   one network evaluation
    2  x0      = Tweedie's estimate, clipped to [0, 1]
    3  r_i     = min(ratio sigma_bar_i, r_max)                       width of p(x0 | x_i) ~ N(x0, r_i^2 I)
       x0_y    ~ N(x0, r_i^2 I) p(y | x)                             perturb-and-MAP (`Observations.prox`
                 with spread r_i): exact for linear A, the operator's exact proximal step otherwise
    4  x_{i-1} = scale_{i-1} x0_y + std_{i-1} z                      (`Schedule.renoise`, eta = 1)

The paper runs Langevin dynamics through A for step 3; for the linear-Gaussian steps here the
perturb-and-MAP draw is exact and costs one proximal step (no operator or network gradients).
The last step fits y to within its noise (the discrepancy principle, as DiffPIR's). One score
evaluation per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime.observations import noise
from ckm_edge.runtime.sampler import StepInfo, Steps, check_params, param, prior_start, register


@dataclass(frozen=True)
class DAPSConfig:
    ratio: float = param(1.0, "r_t = min(ratio sigma_bar_t, r_max): width of the Gaussian around the denoised "
                              "estimate the observation is combined with", 1e-6, 1e3)
    r_max: float = param(0.5, "upper bound of r_t, in pixels", 1e-6, 10.0)

    def __post_init__(self):
        check_params(self)


@register("daps", DAPSConfig, default_steps=20, evaluations=lambda cfg, steps: {"score": steps},
          summary="DAPS: decoupled annealing; each step draws a clean map from N(denoised, r_t^2) x p(y|x) by "
                  "perturb-and-MAP over the operator's proximal step, then noises it afresh; no network Jacobian")
def daps(engine, schedule, obs, rngs, cfg: DAPSConfig) -> Steps:
    b, shape = obs.rows, obs.shape
    x = prior_start(schedule, rngs, shape)
    for k in reversed(range(len(schedule))):
        s = engine.score(x, np.full(b, schedule.times[k], np.float32))  # (1)
        x0 = np.clip(schedule.x0_hat(x, s, k), 0.0, 1.0).astype(np.float32)  # (2)
        residual = obs.residuals(x0)[1] if obs.guided else None
        r = min(cfg.ratio * schedule.noise_to_signal(k), cfg.r_max)
        if k > 0:  # (3) a posterior draw around x0
            x0 = obs.prox(x0, 1.0 / r**2, rngs, spread=r)
        else:  # the last step: fit y to within its noise (the discrepancy principle)
            x0 = obs.fit_to_noise(x0)
        yield StepInfo(k, x0, residual)
        x = schedule.renoise(k, x, x0, noise(rngs, shape) if k > 0 else 0.0, 1.0)  # (4)
    return x
