"""The Operator interface: forward, VJP, output shape, spec, proximal step; and the input checks.

Concrete operators are frozen dataclasses registered with `registry.register_operator`; an
operator without an exact data-consistency step inherits `Operator.prox`, gradient descent through
its own VJP (`solvers.descent_prox`).
"""

from __future__ import annotations

import math

import numpy as np

from ckm_edge.runtime.operators.solvers import descent_prox

# How far, in noise standard deviations, an observation may sit from the value it proves: a
# reading's noise exceeds 4 sigma once in ~16,000 cells, so what lies farther is excluded.
PROVEN_SIGMAS = 4.0


def censored(low: np.ndarray, high: np.ndarray, sigma: float) -> np.ndarray:
    """Bool like `low`: the cells whose `Operator.bounds` (low, high) censor the value rather than
    read it — narrower than the codec's [0, 1] and wider than a reading's noise (-/+ PROVEN_SIGMAS
    sigma): a saturated gain, an AoA sector. A mask's reading within its noise is measured, not
    censored."""
    return ((low > 0.0) | (high < 1.0)) & (high - low > 2.0 * PROVEN_SIGMAS * sigma + 1e-6)


class OperatorError(ValueError):
    """An unknown operator, bad parameters, or input of the wrong shape."""


def check_x(x: np.ndarray, channels: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise OperatorError(f"operator input must be (B, C, H, W), got shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        raise OperatorError(f"operator input must have {channels} channel(s), got {x.shape[1]}")
    return x


def check_lam(lam):
    """A proximal weight: a float, or one per sample as a (B,) array (returned as (B, 1, 1, 1))."""
    if np.ndim(lam) == 0:
        lam = float(lam)
        if not (math.isfinite(lam) and lam >= 0):
            raise OperatorError(f"the proximal weight lam must be finite and >= 0, got {lam}")
        return lam
    lam = np.asarray(lam, np.float64)
    if lam.ndim != 1 or not (np.isfinite(lam).all() and (lam >= 0).all()):
        raise OperatorError(f"per-sample proximal weights must be a finite (B,) array >= 0, got shape {lam.shape}")
    return lam.reshape(-1, 1, 1, 1)


class Operator:
    """Base class: `forward(x)`, `vjp(x, v)`, `output_shape(shape)`, `to_spec()`, `prox(z, y, lam)`.
    Concrete operators are frozen dataclasses registered with `@register_operator`."""

    name = "operator"
    linear = False  # A(x) = A x: the VJP does not depend on x
    exact_prox = False  # prox() is exact (closed form, per cell or CG), not the iterative fallback
    # what an observation allows (prox with lam = 0) is a box, an interval per cell: projecting
    # onto it is clip(x, prox(0, y, 0), prox(1, y, 0)) within [0, 1] (runtime.smooth uses this)
    box_feasible = False

    @property
    def iterative_prox(self) -> bool:
        """prox() is an iterative solve (the descent fallback; a chain of operators: conjugate
        gradients, projected gradient), ~1 s per call at 128 x 128: callers that would call it
        hundreds of times (runtime.smooth) cap that."""
        return not self.exact_prox

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def vjp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def to_spec(self) -> dict:
        """The JSON-able spec: {"op": name, parameter: value, ...} (maps as 0/1 lists)."""
        spec = {"op": self.name}
        for p in type(self).parameters:
            v = getattr(self, p.name)
            if p.kind == "map":
                if v is not None:
                    spec[p.name] = np.asarray(v).astype(np.uint8).tolist()
            elif p.kind == "operators":
                spec[p.name] = [o.to_spec() for o in v]
            else:
                spec[p.name] = v
        return spec

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def prox(self, z: np.ndarray, y: np.ndarray, lam) -> np.ndarray:
        """argmin_x ||y - A(x)||^2 + lam ||x - z||^2 per sample (see the module doc); lam a float
        or a (B,) array. This fallback runs gradient descent through `vjp`; operators with an exact
        solution override it."""
        return descent_prox(self, check_x(z), y, check_lam(lam))

    def known_buildings(self) -> np.ndarray | None:
        """(H, W) or (B, H, W) bool: building cells this operator is told about (eq. 31), or None."""
        return None

    def bounds(self, y: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray] | None:
        """(low, high), each shaped like the maps y was observed from: the interval each cell's
        value is proven to lie in by y (observation noise `sigma` tolerated up to PROVEN_SIGMAS),
        [0, 1] where y proves nothing; None when the operator proves no per-cell interval."""
        return None

    def enforce(self, x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
        """Maps x (B, C, H, W) moved as little as possible to respect what y proves: clipped into
        `bounds` (operators whose proof is not per cell, e.g. block averages, override this)."""
        b = self.bounds(y, sigma)
        return x if b is None else np.clip(x, b[0], b[1]).astype(x.dtype)

    def known_no_path(self, y: np.ndarray, sigma: float = 0.0) -> np.ndarray | None:
        """(B, H, W) bool: cells whose observation (noise `sigma`) proves a gain below the weakest
        real path (codec.PATH_GAIN_DB_MIN), hence no path at all; None when the operator proves none."""
        return None

    def measured(self, y: np.ndarray) -> np.ndarray:
        """Bool like y: the entries of an observation that carry a measurement (a mask's missing
        cells do not). The residual that is compared with the noise level is taken over these."""
        return np.ones(np.shape(y), bool)

    def pinv(self, y: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A^+ y for a linear operator: the least-squares solution of least norm, of `shape`."""
        if not self.linear:
            raise OperatorError(f"operator {self.name!r} is not linear: it has no pseudo-inverse")
        return self.prox(np.zeros(shape, np.float32), y, 0.0)
