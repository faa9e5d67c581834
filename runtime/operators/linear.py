"""The linear operators with closed-form proximal steps: identity, inpainting masks (paper II-1a)
and block-average downsampling (paper II-1b)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime.operators.base import PROVEN_SIGMAS, Operator, OperatorError, check_lam, check_x
from ckm_edge.runtime.operators.registry import register_operator
from ckm_edge.runtime.operators.solvers import block_offset


@register_operator
@dataclass(frozen=True)
class Identity(Operator):
    name = "identity"
    linear = exact_prox = box_feasible = True

    def forward(self, x):
        return check_x(x).copy()

    def vjp(self, x, v):
        return np.asarray(v).copy()

    def prox(self, z, y, lam):
        lam = check_lam(lam)
        return np.clip((y + lam * check_x(z)) / (1.0 + lam), 0.0, 1.0).astype(z.dtype)

    def bounds(self, y, sigma):
        d = PROVEN_SIGMAS * sigma
        return np.clip(y - d, 0.0, 1.0), np.clip(y + d, 0.0, 1.0)


@register_operator
@dataclass(frozen=True, eq=False)
class Mask(Operator):
    """Inpainting (paper II-1a): y = m * x, m in {0, 1} per cell, shared by all channels."""

    mask: np.ndarray  # (H, W) or (B, H, W) bool, True = observed
    name = "mask"
    linear = exact_prox = box_feasible = True

    def __post_init__(self):
        m = np.asarray(self.mask)
        if m.dtype != np.bool_ or m.ndim not in (2, 3):
            raise OperatorError(f"mask must be a boolean (H, W) or (B, H, W) array, got {m.dtype} {m.shape}")
        object.__setattr__(self, "mask", m)

    def _m(self, x: np.ndarray) -> np.ndarray:
        x = check_x(x)
        m = self.mask if self.mask.ndim == 3 else self.mask[None]
        if m.shape[-2:] != x.shape[-2:] or m.shape[0] not in (1, x.shape[0]):
            raise OperatorError(f"mask shape {self.mask.shape} does not fit input {x.shape}")
        return m[:, None].astype(x.dtype)

    def forward(self, x):
        return x * self._m(x)

    def vjp(self, x, v):
        return v * self._m(x)

    def prox(self, z, y, lam):
        """Observed cells: (y + lam z) / (1 + lam); the others keep z."""
        m = self._m(z)
        return np.clip(z + m * (y - z) / (1.0 + check_lam(lam)), 0.0, 1.0).astype(z.dtype)

    def measured(self, y):
        return np.broadcast_to(self._m(np.zeros(np.shape(y), np.float32)) > 0, np.shape(y))

    def bounds(self, y, sigma):
        """Observed cells: y -/+ the noise; the others: anything."""
        y, d = np.asarray(y, np.float32), PROVEN_SIGMAS * sigma
        observed = self.measured(y)
        return np.where(observed, np.clip(y - d, 0.0, 1.0), 0.0), np.where(observed, np.clip(y + d, 0.0, 1.0), 1.0)


@register_operator
@dataclass(frozen=True)
class Downsample(Operator):
    """Super-resolution (paper II-1b): D_s = average over s x s blocks. H, W must divide by s."""

    factor: int
    name = "downsample"
    linear = exact_prox = True

    def __post_init__(self):
        if not isinstance(self.factor, (int, np.integer)) or self.factor < 1:
            raise OperatorError(f"downsample factor must be an integer >= 1, got {self.factor!r}")

    def _check(self, x):
        x = check_x(x)
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise OperatorError(f"input {x.shape[2]}x{x.shape[3]} is not divisible by factor {self.factor}")
        return x

    def forward(self, x):
        x = self._check(x)
        b, c, h, w = x.shape
        s = self.factor
        return x.reshape(b, c, h // s, s, w // s, s).mean(axis=(3, 5))

    def vjp(self, x, v):
        s = self.factor
        return np.repeat(np.repeat(v, s, axis=2), s, axis=3) / (s * s)

    def prox(self, z, y, lam):
        """Each block moves by one offset mu toward its observed average, the detail inside the
        block stays z's: x = clip(z + mu, 0, 1) with lam s^2 mu + mean(x) = y per block (the KKT
        condition; without the clip, mu = (y - mean z) / (1 + lam s^2), D D^T = I / s^2). mu is
        found by bisection where the clip is active (g(mu) is increasing)."""
        s, lam = self.factor, check_lam(lam)
        z = self._check(z)
        b, c, h, w = z.shape
        blocks = z.reshape(b, c, h // s, s, w // s, s).astype(np.float64)
        y = np.asarray(y, np.float64)[:, :, :, None, :, None]
        lam = lam if np.ndim(lam) == 0 else lam[..., None, None]
        mu = (y - blocks.mean(axis=(3, 5), keepdims=True)) / (1.0 + lam * s * s)
        x = blocks + mu
        out = ((x < 0.0) | (x > 1.0)).any(axis=(3, 5))  # (B, C, h, w): blocks where the clip binds
        if out.any():
            idx = np.nonzero(out)
            zb = blocks.transpose(0, 1, 2, 4, 3, 5)[idx].reshape(-1, s * s)  # (n, s*s)
            yb = np.broadcast_to(y, mu.shape)[..., 0, :, 0][idx][:, None]
            lb = np.broadcast_to(lam * s * s, mu.shape)[..., 0, :, 0][idx][:, None]
            fixed = np.clip(zb + block_offset(zb, yb, lb), 0.0, 1.0).reshape(-1, s, s)
            xt = x.transpose(0, 1, 2, 4, 3, 5).copy()
            xt[idx] = fixed
            x = xt.transpose(0, 1, 2, 4, 3, 5)
        return x.reshape(b, c, h, w).astype(z.dtype)

    def enforce(self, x, y, sigma):
        """Each block whose average lies farther from y than the noise allows is moved by one offset
        (its detail kept, the codec's [0, 1] respected: `prox` with lam 0) to the nearest average
        the noise allows; the other blocks are left as they are."""
        x = self._check(x)
        mean = self.forward(x)
        d = PROVEN_SIGMAS * sigma
        target = np.clip(mean, np.asarray(y) - d, np.asarray(y) + d)
        far = np.abs(target - mean) > 0
        if not far.any():
            return x
        s = self.factor
        moved = self.prox(x, target, 0.0)
        keep = np.repeat(np.repeat(far, s, axis=2), s, axis=3)
        return np.where(keep, moved, x).astype(x.dtype)

    def output_shape(self, shape):
        b, c, h, w = shape
        return (b, c, h // self.factor, w // self.factor)
