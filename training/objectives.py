"""Training objectives: denoising score matching for the prior (Algorithm 1), MSE for baselines.

Both take (model, x0 batch as a torch tensor, numpy generator) and return the batch-mean loss.
All randomness comes from the generator passed in, so a resumed run draws the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ckm_edge.runtime import codec, condition, tasks
from ckm_edge.runtime.schedule import Schedule


@dataclass(frozen=True)
class ScoreMatching:
    """Algorithm 1: i ~ U{1..N}, x_i = scale_i x0 + std_i z (eq. 11), target -z / std_i (eq. 12).

    The loss is ||s_theta(x_i, i) - target||^2 weighted by lambda_i = std_i^2 (Song et al.'s
    standard weighting), i.e. ||std_i s_theta + z||^2 = ||z - eps_theta||^2: the same minimiser
    as the unweighted loss, without its 1/std^2 blow-up at small noise.
    """

    schedule: Schedule
    # Site-aware priors (model.cond_channels > 0): the condition comes from each tile itself (its
    # building cells and, when the data records it, its transmitter), each part dropped with
    # these probabilities so that one network also serves the unconditional setting.
    p_drop_building: float = 0.3
    p_drop_bs: float = 0.3
    p_drop_heights: float = 0.5  # ckm-site/2: of the maps that keep their layout, those that forget its heights

    def condition(self, model, x0: torch.Tensor, tx: np.ndarray | None, rng: np.random.Generator,
                  **site: np.ndarray) -> torch.Tensor | None:
        if not getattr(model, "cond_channels", 0):
            return None
        cond = tile_condition(model, x0, tx, **site)
        cond = condition.dropout(cond, rng, self.p_drop_building, self.p_drop_bs, self.p_drop_heights,
                                 flat_visibility=site.get("visibility"))
        return torch.from_numpy(cond).to(x0.device)

    def __call__(self, model, x0: torch.Tensor, rng: np.random.Generator, tx: np.ndarray | None = None,
                 **site: np.ndarray) -> torch.Tensor:
        cond = self.condition(_unwrap(model), x0, tx, rng, **site)
        b = x0.shape[0]
        i = rng.integers(0, len(self.schedule), size=b)
        z = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32)).to(x0.device)
        scale = torch.from_numpy(self.schedule.scale[i].astype(np.float32)).to(x0.device)[:, None, None, None]
        std = torch.from_numpy(self.schedule.noise_std[i].astype(np.float32)).to(x0.device)[:, None, None, None]
        t = torch.from_numpy(self.schedule.times[i].astype(np.float32)).to(x0.device)
        x_i = scale * x0 + std * z  # perturbation kernel, eq. (11)
        s = model(x_i, t) if cond is None else model(x_i, t, cond)  # the score; std * s = -eps_theta
        return ((std * s + z) ** 2).mean(dim=(1, 2, 3)).mean()


def _unwrap(model):
    """The module behind DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


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
    """Supervised baseline: random task instance, y = A(x) + n, loss = MSE(f(y, mask), x).

    A site-aware baseline (model.cond_channels > 0) is always given the whole site (the tile's
    building cells and, where the data records it, its transmitter): it is the task-specific
    model a site-aware prior must beat in the setting where both know the site."""

    task_names: tuple[str, ...]
    sigma: float = tasks.DEFAULT_SIGMA

    def __call__(self, model, x0: torch.Tensor, rng: np.random.Generator, tx: np.ndarray | None = None,
                 **site: np.ndarray) -> torch.Tensor:
        x_np = x0.detach().cpu().numpy()
        task = self.task_names[int(rng.integers(len(self.task_names)))]
        op = tasks.make_operator(task, rng, x_np)
        y = tasks.observe(op, x_np, rng, self.sigma)
        inputs = torch.from_numpy(observation_inputs(op, y, x_np.shape, with_mask=True)).to(x0.device)
        if not getattr(_unwrap(model), "cond_channels", 0):
            return F.mse_loss(model(inputs), x0)
        cond = tile_condition(_unwrap(model), x0, tx, **site)
        return F.mse_loss(model(inputs, torch.from_numpy(cond).to(x0.device)), x0)


def tile_condition(model, x0: torch.Tensor, tx: np.ndarray | None, visibility: np.ndarray | None = None,
                   visibility_heights: np.ndarray | None = None, heights: np.ndarray | None = None) -> np.ndarray:
    """The condition a site-aware `model` is told of training tiles: their own building cells and,
    where the data records them, their transmitter and building heights, in the encoding of the
    model's channel count. ckm-site/2's line of sight is the whole tile's when given (trainer.site_maps:
    over the roofs where the heights are known, else over the layout)."""
    pixels = x0.detach().float().cpu().numpy()
    encoding = condition.Encoding.for_channels(int(model.cond_channels))
    if visibility is not None and visibility_heights is not None:
        unknown = np.isnan(visibility_heights).all(axis=(-2, -1), keepdims=True)
        visibility = np.where(unknown, visibility, visibility_heights)
    return condition.site_condition(codec.building_mask(pixels), tx, pixels.shape[-2:], len(pixels),
                                    encoding=encoding, visibility=visibility, heights=heights)
