"""Combinators: each channel through its own operator (PerChannel), a chain (Compose), and the
paper's JTQR task operator built from them (eq. 32)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime.operators.base import Operator, OperatorError, check_lam, check_x
from ckm_edge.runtime.operators.nonlinear import QuantizeAoA, Truncate
from ckm_edge.runtime.operators.registry import register_operator
from ckm_edge.runtime.operators.solvers import box_refine, cg_prox


@dataclass(frozen=True)
class Combinator(Operator):
    """An operator over sub-operators, stored as a non-empty tuple; linear when all of them are."""

    operators: tuple
    needs = "at least one operator"  # what an empty list or a non-operator is told

    def __post_init__(self):
        object.__setattr__(self, "operators", tuple(self.operators))
        if not self.operators or not all(isinstance(o, Operator) for o in self.operators):
            raise OperatorError(f"{self.name} needs {self.needs}")

    @property
    def linear(self):
        return all(o.linear for o in self.operators)


@register_operator
@dataclass(frozen=True)
class PerChannel(Combinator):
    """Channel c of x through operators[c] (each sees (B, 1, H, W)); outputs stacked on channels."""

    name = "per_channel"
    needs = "one operator per channel"

    def forward(self, x):
        x = check_x(x, len(self.operators))
        outs = [op.forward(x[:, c : c + 1]) for c, op in enumerate(self.operators)]
        if len({o.shape for o in outs}) != 1:
            raise OperatorError(f"per-channel outputs differ in shape: {[o.shape for o in outs]}")
        return np.concatenate(outs, axis=1)

    def vjp(self, x, v):
        x = check_x(x, len(self.operators))
        return np.concatenate(
            [op.vjp(x[:, c : c + 1], v[:, c : c + 1]) for c, op in enumerate(self.operators)], axis=1
        )

    @property
    def exact_prox(self):
        return all(o.exact_prox for o in self.operators)

    @property
    def box_feasible(self):
        return all(o.box_feasible for o in self.operators)

    def known_buildings(self):
        return next((b for b in (o.known_buildings() for o in self.operators) if b is not None), None)

    def bounds(self, y, sigma):
        """Channel by channel, when every channel's operator proves a per-cell interval (else None);
        buildings a channel's operator knows are 0 in every channel."""
        y = np.asarray(y)
        parts = [op.bounds(y[:, c : c + 1], sigma) for c, op in enumerate(self.operators)]
        if any(p is None for p in parts):
            return None
        low = np.concatenate([np.broadcast_to(p[0], y[:, c : c + 1].shape) for c, p in enumerate(parts)], axis=1)
        high = np.concatenate([np.broadcast_to(p[1], y[:, c : c + 1].shape) for c, p in enumerate(parts)], axis=1)
        building = self.known_buildings()
        if building is not None:
            b = (building if building.ndim == 3 else building[None])[:, None]
            low, high = np.where(b, 0.0, low), np.where(b, 0.0, high)
        return low, high

    def enforce(self, x, y, sigma):
        """Channel by channel, then buildings a channel's operator knows are 0 in every channel."""
        x = check_x(x, len(self.operators))
        y = np.asarray(y)
        out = np.concatenate([op.enforce(x[:, c : c + 1], y[:, c : c + 1], sigma) for c, op in enumerate(self.operators)],
                             axis=1)
        building = self.known_buildings()
        if building is not None:
            out = np.where((building if building.ndim == 3 else building[None])[:, None], 0.0, out)
        return out.astype(x.dtype)

    def known_no_path(self, y, sigma=0.0):
        """The gain channel's operator decides (a no-path cell is one in every channel)."""
        return self.operators[0].known_no_path(np.asarray(y)[:, :1], sigma)

    def measured(self, y):
        return np.concatenate([op.measured(np.asarray(y)[:, c : c + 1]) for c, op in enumerate(self.operators)], axis=1)

    def prox(self, z, y, lam):
        """Channel by channel; a building layout that one channel's operator knows (JTQR's quantizer)
        also zeroes the other channels there — buildings are 0 in every channel (codec)."""
        z = check_x(z, len(self.operators))
        x = np.concatenate([op.prox(z[:, c : c + 1], y[:, c : c + 1], lam) for c, op in enumerate(self.operators)],
                           axis=1)
        building = self.known_buildings()
        if building is not None:
            x = np.where((building if building.ndim == 3 else building[None])[:, None], 0.0, x).astype(x.dtype)
        return x

    def output_shape(self, shape):
        b, _, h, w = self.operators[0].output_shape((shape[0], 1) + tuple(shape[2:]))
        return (b, len(self.operators), h, w)


@register_operator
@dataclass(frozen=True)
class Compose(Combinator):
    """A_n(...A_1(x)): the VJP runs the chain rule backwards through the saved intermediates."""

    name = "compose"

    def forward(self, x):
        for op in self.operators:
            x = op.forward(x)
        return x

    def vjp(self, x, v):
        inputs = []
        for op in self.operators:
            inputs.append(x)
            x = op.forward(x)
        for op, xin in zip(reversed(self.operators), reversed(inputs)):
            v = op.vjp(xin, v)
        return v

    @property
    def exact_prox(self):
        return self.linear or len(self.operators) == 1 and self.operators[0].exact_prox

    @property
    def box_feasible(self):
        return len(self.operators) == 1 and self.operators[0].box_feasible

    @property
    def iterative_prox(self):
        return len(self.operators) > 1 or self.operators[0].iterative_prox

    def known_buildings(self):
        return self.operators[0].known_buildings() if len(self.operators) == 1 else None

    def known_no_path(self, y, sigma=0.0):
        return self.operators[0].known_no_path(y, sigma) if len(self.operators) == 1 else None

    def bounds(self, y, sigma):
        return self.operators[0].bounds(y, sigma) if len(self.operators) == 1 else None

    def enforce(self, x, y, sigma):
        """One operator: its own; a chain proves no per-cell interval in general (left as it is)."""
        return self.operators[0].enforce(x, y, sigma) if len(self.operators) == 1 else x

    def measured(self, y):
        return self.operators[-1].measured(y)

    def prox(self, z, y, lam):
        if len(self.operators) == 1:
            return self.operators[0].prox(z, y, lam)
        if self.linear:
            lam = check_lam(lam)
            return box_refine(self, check_x(z), y, lam, cg_prox(self, z, y, lam))
        return super().prox(z, y, lam)

    def output_shape(self, shape):
        for op in self.operators:
            shape = op.output_shape(shape)
        return shape


def jtqr(low: float = 0.2, high: float = 0.7, sectors: int = 24, building: np.ndarray | None = None) -> PerChannel:
    """Joint truncation (gain) and AoA quantization (eq. 32), the paper's JTQR task."""
    return PerChannel((Truncate(low, high), QuantizeAoA(sectors, building)))
