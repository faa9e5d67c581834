"""Noise schedules: all of the diffusion noise math lives here (numpy; shared by cloud and edge).

Paper section III-C, eqs. (9)-(13). Symbols, with step index i in 1..N (array index i-1):

    beta_i       betas[i-1]        VP: linear from beta_min/N to beta_max/N (DDPM discretization)
    alpha_i      alphas[i-1]       1 - beta_i
    alpha_bar_i  alpha_bars[i-1]   prod_{j<=i} alpha_j                       (eq. 11)
    t_i          times[i-1]        the network's time input, i/N in (0, 1]

Perturbation kernel (eq. 11):  x_i = sqrt(alpha_bar_i) x_0 + sqrt(1 - alpha_bar_i) z
Tweedie (eq. 12):              score = -z / sqrt(1 - alpha_bar_i)
Progressive estimate:          x0_hat = (x_i + (1 - alpha_bar_i) s) / sqrt(alpha_bar_i)
Ancestral step (eq. 13):       x_{i-1} = (x_i + beta_i s) / sqrt(alpha_i) + sigma_i z,
                               sigma_i^2 = beta_i (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i)

The VE SDE (sigma_i geometric from sigma_min to sigma_max) is written in the same terms with
its own `scale` (1 for VE) and `noise_std`, so samplers never branch on the SDE type:

    x_i = scale_i x_0 + noise_std_i z,    x0_hat = (x_i + noise_std_i^2 s) / scale_i

Respacing (`respace`) keeps a subsequence of the N steps and re-derives the per-step betas from
the kept alpha_bars (DDPM respacing), so a construction can run 20-100 steps of an N-step model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ScheduleError(ValueError):
    """Bad schedule parameters or an unknown schedule description."""


@dataclass(frozen=True)
class Schedule:
    """A discrete noise schedule over K steps (K = N unless respaced). Arrays are float64 (K,)."""

    kind: str  # "vp" or "ve"
    scale: np.ndarray  # sqrt(alpha_bar_i) for VP, 1 for VE
    noise_std: np.ndarray  # sqrt(1 - alpha_bar_i) for VP, sigma_i for VE
    times: np.ndarray  # the network's time input for each step
    params: dict  # what rebuilds it: {"kind", "n", ...}; see `to_dict`

    def __post_init__(self) -> None:
        k = len(self.times)
        if not (self.scale.shape == self.noise_std.shape == self.times.shape == (k,)) or k < 1:
            raise ScheduleError("scale, noise_std and times must be 1-D arrays of one length >= 1")
        if np.any(np.diff(self.noise_std) <= 0):
            raise ScheduleError("noise_std must increase strictly with the step index")

    # -- construction ---------------------------------------------------------------------------
    @staticmethod
    def vp(n: int = 1000, beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
        """VP SDE with the DDPM discretization: beta_i linear in [beta_min/N, beta_max/N]."""
        if n < 2 or not 0 < beta_min < beta_max:
            raise ScheduleError(f"VP schedule needs n >= 2 and 0 < beta_min < beta_max, got {n}, {beta_min}, {beta_max}")
        betas = np.linspace(beta_min / n, beta_max / n, n, dtype=np.float64)
        if betas[-1] >= 1:
            raise ScheduleError(f"beta_max/n = {betas[-1]} must stay below 1")
        alpha_bars = np.cumprod(1.0 - betas)
        params = {"kind": "vp", "n": n, "beta_min": beta_min, "beta_max": beta_max}
        return Schedule("vp", np.sqrt(alpha_bars), np.sqrt(1.0 - alpha_bars), np.arange(1, n + 1) / n, params)

    @staticmethod
    def ve(n: int = 1000, sigma_min: float = 0.01, sigma_max: float = 50.0) -> Schedule:
        """VE SDE (SMLD): sigma_i geometric from sigma_min to sigma_max over N steps."""
        if n < 2 or not 0 < sigma_min < sigma_max:
            raise ScheduleError(f"VE schedule needs n >= 2 and 0 < sigma_min < sigma_max, got {n}, {sigma_min}, {sigma_max}")
        sigmas = np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), n))
        params = {"kind": "ve", "n": n, "sigma_min": sigma_min, "sigma_max": sigma_max}
        return Schedule("ve", np.ones(n), sigmas, np.arange(1, n + 1) / n, params)

    @staticmethod
    def from_dict(d: dict) -> Schedule:
        """Rebuild a schedule from `to_dict` output (e.g. a model package manifest)."""
        d = dict(d)
        kind = d.pop("kind", None)
        steps = d.pop("steps", None)
        respacing = d.pop("respacing", "ddpm")
        start = d.pop("start", 1.0)
        try:
            base = {"vp": Schedule.vp, "ve": Schedule.ve}[kind](**d)
        except KeyError:
            raise ScheduleError(f"unknown schedule kind {kind!r}; expected 'vp' or 've'") from None
        except TypeError as e:
            raise ScheduleError(f"bad parameters for a {kind} schedule: {e}") from None
        return base if steps is None else base.respace(steps, respacing, start)

    def to_dict(self) -> dict:
        return dict(self.params)

    def full(self) -> Schedule:
        """The N-step schedule this one was respaced from (itself when not respaced)."""
        return Schedule.from_dict({k: v for k, v in self.params.items() if k not in ("steps", "respacing", "start")})

    # -- sizes and per-step coefficients ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self.times)

    @property
    def alpha_bars(self) -> np.ndarray:
        """VP: alpha_bar_i. VE: the signal fraction 1 / (1 + sigma_i^2) (for reporting only)."""
        if self.kind == "vp":
            return self.scale**2
        return 1.0 / (1.0 + self.noise_std**2)

    def _prev(self, values: np.ndarray, first: float) -> np.ndarray:
        return np.concatenate([[first], values[:-1]])

    @property
    def prev_scale(self) -> np.ndarray:
        return self._prev(self.scale, 1.0)

    @property
    def prev_noise_std(self) -> np.ndarray:
        return self._prev(self.noise_std, 0.0)

    # -- the noise math ---------------------------------------------------------------------------
    def perturb(self, x0: np.ndarray, z: np.ndarray, i: np.ndarray) -> np.ndarray:
        """x_i = scale_i x0 + noise_std_i z, per sample; i is an array index (B,) in [0, K)."""
        return _bcast(self.scale[i], x0) * x0 + _bcast(self.noise_std[i], x0) * z

    def score_target(self, z: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Tweedie (eq. 12): the score of the perturbation kernel, -z / noise_std_i."""
        return -z / _bcast(self.noise_std[i], z)

    def x0_hat(self, x: np.ndarray, score: np.ndarray, i: int) -> np.ndarray:
        """Progressive estimate: (x_i + noise_std_i^2 s) / scale_i. Linear in (x, s)."""
        return (x + self.noise_std[i] ** 2 * score) / self.scale[i]

    def x0_hat_coefficients(self, i: int) -> tuple[float, float]:
        """(a, b) with x0_hat = a x + b s, so the chain rule can be applied without autograd."""
        return 1.0 / self.scale[i], self.noise_std[i] ** 2 / self.scale[i]

    def ancestral_coefficients(self, i: int) -> tuple[float, float, float]:
        """(a, b, c) of the step x_{i-1} = a x_i + b s + c z.

        DDPM respacing (default): the ancestral step, eq. (13) (VE: the SMLD reverse step).
        DDIM respacing: the deterministic DDIM update (eta = 0), x_{i-1} = scale_{i-1} x0_hat +
        std_{i-1} eps_hat with eps_hat = -std_i s, so c = 0.
        """
        if self.params.get("respacing") == "ddim":
            scale, prev_scale = self.scale[i], self.prev_scale[i]
            std, prev_std = self.noise_std[i], self.prev_noise_std[i]
            return prev_scale / scale, prev_scale * std**2 / scale - prev_std * std, 0.0
        if self.kind == "vp":
            alpha = (self.scale[i] / self.prev_scale[i]) ** 2
            beta = 1.0 - alpha
            var = beta * self.prev_noise_std[i] ** 2 / self.noise_std[i] ** 2
            return 1.0 / np.sqrt(alpha), beta / np.sqrt(alpha), float(np.sqrt(var))
        var_step = self.noise_std[i] ** 2 - self.prev_noise_std[i] ** 2
        var = var_step * self.prev_noise_std[i] ** 2 / self.noise_std[i] ** 2
        return 1.0, var_step, float(np.sqrt(var))

    def x0_predictor_coefficients(self, i: int) -> tuple[float, float, float]:
        """(d, e, c) of the same predictor written over the progressive estimate:

            x_{i-1} = d x_i + e x0_hat + c z      (= a x_i + b s + c z when x0_hat = ax x_i + bs s)

        so that a sampler can clip x0_hat to the data range before it enters the step (the
        ``clip_denoised`` of DDPM/guided-diffusion, ``clip_sample`` in diffusers). VP/DDPM:
        e = sqrt(abar_{i-1}) beta_i / (1 - abar_i), d = sqrt(alpha_i) (1 - abar_{i-1}) / (1 - abar_i).
        """
        a, b, c = self.ancestral_coefficients(i)
        ax, bs = self.x0_hat_coefficients(i)
        e = b / bs
        return float(a - e * ax), float(e), float(c)

    def noise_to_signal(self, i: int) -> float:
        """sigma_bar_i = noise_std_i / scale_i: the noise level of x_i / scale_i around x0. It is
        what DiffPIR's rho_t = lambda sigma_n^2 / sigma_bar_t^2 and DAPS's r_t scale with."""
        return float(self.noise_std[i] / self.scale[i])

    def renoise(self, i: int, x: np.ndarray, x0: np.ndarray, z: np.ndarray, stochasticity: float = 1.0) -> np.ndarray:
        """x_{i-1} from x_i and an estimate x0 of the clean map (DDIM's form, DiffPIR's step):

            eps_hat = (x_i - scale_i x0) / noise_std_i
            x_{i-1} = scale_{i-1} x0 + noise_std_{i-1} (sqrt(1 - eta) eps_hat + sqrt(eta) z)

        eta = `stochasticity` in [0, 1]: 0 is the deterministic DDIM step, 1 draws fresh noise
        (x_{i-1} ~ the perturbation kernel around x0). At i = 0, x_{-1} = x0."""
        if not 0.0 <= stochasticity <= 1.0:
            raise ScheduleError(f"stochasticity must be in [0, 1], got {stochasticity}")
        prev_scale, prev_std = float(self.prev_scale[i]), float(self.prev_noise_std[i])
        if prev_std == 0.0:
            return x0.astype(np.float32)
        eps = (x - float(self.scale[i]) * x0) / float(self.noise_std[i])
        noise = np.sqrt(1.0 - stochasticity) * eps + np.sqrt(stochasticity) * z
        return (prev_scale * x0 + prev_std * noise).astype(np.float32)

    def langevin_alpha(self, i: int) -> float:
        """The alpha that scales the Langevin corrector step size (score_sde): alpha_i (VP), 1 (VE)."""
        if self.kind == "vp":
            return float((self.scale[i] / self.prev_scale[i]) ** 2)
        return 1.0

    def prior_sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """x_K ~ N(0, noise_std_K^2 I) (VE) or N(0, I) (VP: scale_K x0 is ~0)."""
        std = self.noise_std[-1] if self.kind == "ve" else 1.0
        return (std * rng.standard_normal(shape)).astype(np.float32)

    # -- respacing --------------------------------------------------------------------------------
    def respace(self, steps: int, method: str = "ddpm", start: float = 1.0) -> Schedule:
        """Keep `steps` of the N steps, evenly spaced and always including the first (least noise).

        "ddpm": the kept alpha_bars define new betas (beta'_k = 1 - alpha_bar_k / alpha_bar_{k-1}),
        so the ancestral step stays exact for the coarser chain. "ddim": same kept steps, for
        samplers that use the deterministic DDIM update (eta = 0). `start` in (0, 1]: the steps
        span the lowest fraction `start` of the noise levels only (a sampler that starts from a
        noised estimate instead of pure noise, as CCDF); 1 = all of them, up to the last.
        """
        n = len(self)
        if not 0.0 < start <= 1.0:
            raise ScheduleError(f"start must be in (0, 1], got {start}")
        top = max(1, int(round(start * n)))
        if not 1 <= steps <= top:
            raise ScheduleError(f"steps must be in [1, {top}]" + (f" (start {start:g} of {n})" if top < n else "")
                                + f", got {steps}")
        if method not in ("ddpm", "ddim"):
            raise ScheduleError(f"respacing method must be 'ddpm' or 'ddim', got {method!r}")
        keep = np.unique(np.round(np.linspace(0, top - 1, steps)).astype(int))
        params = dict(self.params, steps=steps, respacing=method, **({"start": start} if top < n else {}))
        return Schedule(self.kind, self.scale[keep], self.noise_std[keep], self.times[keep], params)


def _bcast(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))
