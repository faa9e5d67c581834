"""Training objectives: denoising score matching for the prior (Algorithm 1), MSE for baselines.

Both take (model, x0 batch as a torch tensor, numpy generator) and return the batch-mean loss.
All randomness comes from the generator passed in, so a resumed run draws the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from runtime import tasks
from runtime.schedule import Schedule


@dataclass(frozen=True)
class ScoreMatching:
    """Algorithm 1: i ~ U{1..N}, x_i = scale_i x0 + std_i z (eq. 11), target -z / std_i (eq. 12).

    The loss is ||s_theta(x_i, i) - target||^2 weighted by lambda_i = std_i^2 (Song et al.'s
    standard weighting), i.e. ||std_i s_theta + z||^2 = ||z - eps_theta||^2: the same minimiser
    as the unweighted loss, without its 1/std^2 blow-up at small noise.
    """

    schedule: Schedule

    def __call__(self, model, x0: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        b = x0.shape[0]
        i = rng.integers(0, len(self.schedule), size=b)
        z = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32)).to(x0.device)
        scale = torch.from_numpy(self.schedule.scale[i].astype(np.float32)).to(x0.device)[:, None, None, None]
        std = torch.from_numpy(self.schedule.noise_std[i].astype(np.float32)).to(x0.device)[:, None, None, None]
        t = torch.from_numpy(self.schedule.times[i].astype(np.float32)).to(x0.device)
        x_i = scale * x0 + std * z  # perturbation kernel, eq. (11)
        s = model(x_i, t)  # the score; std * s = -eps_theta
        return ((std * s + z) ** 2).mean(dim=(1, 2, 3)).mean()


def observation_inputs(op, y: np.ndarray, shape: tuple[int, ...], with_mask: bool) -> np.ndarray:
    """The end-to-end network input: y brought to the map's grid (nearest), plus a mask channel.

    The mask channel is the operator's observed cells for masking tasks and all ones otherwise,
    so one multi-configuration network can take every task (paper Fig. 6).
    """
    b, c, h, w = shape
    if y.shape[-2:] != (h, w):
        fh, fw = h // y.shape[-2], w // y.shape[-1]
        y = np.repeat(np.repeat(y, fh, axis=2), fw, axis=3)
    if not with_mask:
        return y.astype(np.float32)
    mask = np.ones((b, 1, h, w), np.float32)
    if hasattr(op, "mask"):
        m = op.mask if op.mask.ndim == 3 else np.broadcast_to(op.mask, (b, h, w))
        mask = m[:, None].astype(np.float32)
    return np.concatenate([y, mask], axis=1).astype(np.float32)


@dataclass(frozen=True)
class EndToEnd:
    """Supervised baseline: random task instance, y = A(x) + n, loss = MSE(f(y, mask), x)."""

    task_names: tuple[str, ...]
    sigma: float = tasks.DEFAULT_SIGMA

    def __call__(self, model, x0: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        x_np = x0.detach().cpu().numpy()
        task = self.task_names[int(rng.integers(len(self.task_names)))]
        op = tasks.make_operator(task, rng, x_np)
        y = tasks.observe(op, x_np, rng, self.sigma)
        inputs = torch.from_numpy(observation_inputs(op, y, x_np.shape, with_mask=True)).to(x0.device)
        return F.mse_loss(model(inputs), x0)
