"""Observation operators A(x) with analytic vector-Jacobian products (numpy only).

Paper section II-1 and eqs. (26)-(36). An operator maps a batch of CKMs x (B, 2, H, W) in pixel
space to an observation A(x) (B, C', H', W'); `vjp(x, v)` returns v^T dA/dx (B, 2, H, W), the
only thing diffusion posterior sampling needs from it. Operators compose:

    PerChannel([A_gain, A_aoa])   each channel through its own operator (JTQR, eq. 32)
    Compose([A_1, A_2, ...])      A_n(...A_2(A_1(x)))

Every operator is described by a JSON-able spec (`to_spec`, `from_spec`), which is how a request
names it. Masks are per sample: a (B, H, W) or shared (H, W) boolean array, True = observed.

Data consistency (what samplers other than DPS need): `prox(z, y, lam)` solves, per sample,

    x = argmin_x ||y - A(x)||^2 + lam ||x - z||^2          lam = sigma^2 rho >= 0, x in [0, 1]

which is argmin ||y - A(x)||^2 / (2 sigma^2) + rho/2 ||x - z||^2 for observation noise sigma.
lam = 0 is the noiseless limit: among the x that fit y best, the one nearest z (for a linear A,
z + A^+ (y - A z), DDNM's range/null-space step). Exact, in closed form, for identity, masks and
downsampling (A A^T = c I), per cell for truncation (a clipped gain lies at or beyond the bound
it hit) and AoA quantization (the angle lies inside its reported sector; buildings are 0), and
per channel; compositions of linear operators by conjugate gradients to 1e-6, then (where that
leaves [0, 1]) accelerated projected gradient from its clipped solution. Any
other operator (a composition with a nonlinear part, a new operator) falls back to gradient
descent on the same objective through its own VJP (`exact_prox` is False) — never the network's.
`pinv(y)` is A^+ y for linear operators.

    base        the Operator interface, OperatorError and the input checks
    registry    the registry: register_operator, make, from_spec, OPERATORS
    linear      Identity, Mask, Downsample
    nonlinear   Truncate, QuantizeAoA
    compose     PerChannel, Compose, jtqr
    solvers     the numerical solvers behind prox (CGLS, FISTA, descent, block offsets)

The task masks (box, random, trajectory) are drawn by the tasks (runtime.tasks).
"""

from ckm_edge.runtime.operators.base import Operator, OperatorError
from ckm_edge.runtime.operators.registry import (
    OPERATORS,
    Parameter,
    from_spec,
    known,
    make,
    register_operator,
    unregister_operator,
)

# Importing an operator module registers its operators, in this order: the order in which
# `known()`, error messages and GetModelMetadata list them.
# isort: split
from ckm_edge.runtime.operators.linear import Downsample, Identity, Mask

# isort: split
from ckm_edge.runtime.operators.nonlinear import QuantizeAoA, Truncate

# isort: split
from ckm_edge.runtime.operators.compose import Compose, PerChannel, jtqr

__all__ = [
    "OPERATORS", "Compose", "Downsample", "Identity", "Mask", "Operator", "OperatorError", "Parameter", "PerChannel",
    "QuantizeAoA", "Truncate", "from_spec", "jtqr", "known", "make", "register_operator",
    "unregister_operator",
]
