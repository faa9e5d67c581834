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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime import codec


class OperatorError(ValueError):
    """An unknown operator, bad parameters, or input of the wrong shape."""


def _check_x(x: np.ndarray, channels: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise OperatorError(f"operator input must be (B, C, H, W), got shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        raise OperatorError(f"operator input must have {channels} channel(s), got {x.shape[1]}")
    return x


# --- the registry: one table for specs, the gRPC API, metadata and errors ---------------------

OPERATORS: dict[str, type] = {}


@dataclass(frozen=True)
class Parameter:
    name: str
    kind: str  # "map" ((H, W) 0/1 array), "operators" (sub-operators), "int" or "float"
    optional: bool  # a map that may be None
    default: object = dataclasses.MISSING


def register_operator(cls: type) -> type:
    """Class decorator: make a dataclass Operator known by `cls.name` everywhere it is named —
    specs (`from_spec`/`to_spec`), the gRPC API (its typed message in edge.proto, or the generic
    NamedOperator for an operator the .proto does not know), GetModelMetadata and error messages.
    Its dataclass fields are its parameters, typed by annotation: `np.ndarray` (a 0/1 map; with
    `| None`, optional), `tuple` (sub-operators), `int` or `float`."""
    if not (isinstance(cls, type) and issubclass(cls, Operator) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass Operator")
    if cls.name in OPERATORS and OPERATORS[cls.name] is not cls:
        raise OperatorError(f"an operator named {cls.name!r} is registered already")
    cls.parameters = tuple(_parameter(f) for f in dataclasses.fields(cls))
    OPERATORS[cls.name] = cls
    return cls


def unregister_operator(name: str) -> None:
    OPERATORS.pop(name, None)


def _parameter(f: dataclasses.Field) -> Parameter:
    t = f.type.__name__ if isinstance(f.type, type) else str(f.type)  # a class, or a (string) annotation
    kind = ("operators" if "tuple" in t else "map" if "ndarray" in t else "int" if t == "int" else
            "float" if t == "float" else None)
    if kind is None:
        raise TypeError(f"operator parameter {f.name!r} has type {t!r}; use np.ndarray, tuple, int or float")
    return Parameter(f.name, kind, "None" in t, f.default)


def known() -> str:
    return ", ".join(OPERATORS)


def make(name: str, params: dict) -> Operator:
    """The registered operator `name` from its parameters (maps as 0/1 arrays, sub-operators as
    Operators); unknown names, missing, unknown or mistyped parameters raise OperatorError."""
    cls = OPERATORS.get(name)
    if cls is None:
        raise OperatorError(f"unknown operator {name!r}; known: {known()}")
    names = {p.name for p in cls.parameters}
    extra = sorted(set(params) - names)
    if extra:
        raise OperatorError(f"operator {name!r} has no parameter(s) {', '.join(map(repr, extra))} "
                            f"(has: {', '.join(sorted(names)) or 'none'})")
    kwargs = {}
    for p in cls.parameters:
        if p.name not in params:
            if p.default is dataclasses.MISSING and not p.optional:
                raise OperatorError(f"operator {name!r} needs parameter {p.name!r}")
            continue
        kwargs[p.name] = _convert(name, p, params[p.name])
    try:
        return cls(**kwargs)
    except OperatorError:
        raise
    except (TypeError, ValueError) as e:
        raise OperatorError(f"bad parameters for operator {name!r}: {e}") from None


def _convert(name: str, p: Parameter, v):
    where = f"operator {name!r} parameter {p.name!r}"
    if p.kind == "map":
        if v is None and p.optional:
            return None
        m = np.asarray(v)
        if m.dtype == np.bool_:
            return m
        if m.dtype.kind not in "biuf" or not np.isin(m, (0, 1)).all():
            raise OperatorError(f"{where} must be a 0/1 map")
        return m.astype(bool)
    if p.kind == "operators":
        ops = tuple(v)
        if not all(isinstance(o, Operator) for o in ops):
            raise OperatorError(f"{where} must be a list of operators")
        return ops
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise OperatorError(f"{where} must be a number, got {v!r}") from None
    if p.kind == "int":
        if not math.isfinite(x) or x != int(x):
            raise OperatorError(f"{where} must be an integer, got {v!r}")
        return int(x)
    return x


def parameters_of(op: Operator) -> dict:
    """A registered operator's parameters by name (maps as arrays, sub-operators as Operators)."""
    return {p.name: getattr(op, p.name) for p in type(op).parameters}


class Operator:
    """Base class: `forward(x)`, `vjp(x, v)`, `output_shape(shape)`, `to_spec()`, `prox(z, y, lam)`.
    Concrete operators are frozen dataclasses registered with `@register_operator`."""

    name = "operator"
    linear = False  # A(x) = A x: the VJP does not depend on x
    exact_prox = False  # prox() is exact (closed form, per cell or CG), not the iterative fallback
    # what an observation allows (prox with lam = 0) is a box, an interval per cell: projecting
    # onto it is clip(x, prox(0, y, 0), prox(1, y, 0)) within [0, 1] (runtime.smooth uses this)
    box_feasible = False

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
        return _descent_prox(self, _check_x(z), y, _check_lam(lam))

    def known_buildings(self) -> np.ndarray | None:
        """(H, W) or (B, H, W) bool: building cells this operator is told about (eq. 31), or None."""
        return None

    def known_no_path(self, y: np.ndarray) -> np.ndarray | None:
        """(B, H, W) bool: cells whose observation proves a gain below the weakest real path
        (codec.PATH_GAIN_DB_MIN), hence no path at all; None when the operator proves none."""
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


@register_operator
@dataclass(frozen=True)
class Identity(Operator):
    name = "identity"
    linear = exact_prox = box_feasible = True

    def forward(self, x):
        return _check_x(x).copy()

    def vjp(self, x, v):
        return np.asarray(v).copy()

    def prox(self, z, y, lam):
        lam = _check_lam(lam)
        return np.clip((y + lam * _check_x(z)) / (1.0 + lam), 0.0, 1.0).astype(z.dtype)



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
        x = _check_x(x)
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
        return np.clip(z + m * (y - z) / (1.0 + _check_lam(lam)), 0.0, 1.0).astype(z.dtype)

    def measured(self, y):
        return np.broadcast_to(self._m(np.zeros(np.shape(y), np.float32)) > 0, np.shape(y))

    def observed_fraction(self) -> float:
        return float(self.mask.mean())



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
        x = _check_x(x)
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
        s, lam = self.factor, _check_lam(lam)
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
            fixed = np.clip(zb + _block_offset(zb, yb, lb), 0.0, 1.0).reshape(-1, s, s)
            xt = x.transpose(0, 1, 2, 4, 3, 5).copy()
            xt[idx] = fixed
            x = xt.transpose(0, 1, 2, 4, 3, 5)
        return x.reshape(b, c, h, w).astype(z.dtype)

    def output_shape(self, shape):
        b, c, h, w = shape
        return (b, c, h // self.factor, w // self.factor)



@register_operator
@dataclass(frozen=True)
class Truncate(Operator):
    """Dynamic-range truncation (eq. 2 / 26): y = min(max(x, a), b), straight-through backward.

    The clamp's own gradient is 0 outside [a, b], so a cell whose estimate has left the window
    while its observation lies inside gets no pull back and the guidance loses it for good (on
    JTQR this made the construction diverge). The VJP is therefore the identity, as the paper
    does for the quantizer (eq. 36). It only differs from the clamp's gradient where the
    estimate is saturated, and there it points the right way: toward y when y is inside the
    window, and nowhere when y is saturated on the same side (the residual is then ~0).
    """

    low: float = 0.2
    high: float = 0.7
    name = "truncate"
    exact_prox = box_feasible = True

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and 0.0 <= self.low < self.high <= 1.0):
            raise OperatorError(f"truncation needs 0 <= low < high <= 1, got low={self.low}, high={self.high}")

    def forward(self, x):
        return np.clip(_check_x(x), self.low, self.high)

    def vjp(self, x, v):
        return np.asarray(v).copy()

    def known_no_path(self, y):
        """A gain saturated at a low bound below the weakest real path lies at the floor. A cell
        counts as saturated when y is nearer the bound than the weakest path (noise-tolerant:
        with the paper's bound, -210 dB, and sigma 0.01 pixels, a 2.5 sigma margin)."""
        if self.low >= codec.PATH_GAIN_PIXEL_MIN:
            return None
        return np.asarray(y)[:, 0] < (self.low + codec.PATH_GAIN_PIXEL_MIN) / 2.0

    def prox(self, z, y, lam):
        """Per cell, the best of three pieces: x <= low (then clip(x) = low, x = min(z, low)),
        low <= x <= high (a quadratic), x >= high (x = max(z, high)). lam = 0: a gain observed
        at a bound lies at or beyond it (nearest z), one inside the window is y."""
        z, lam = _check_x(z), _check_lam(lam)
        a, b = self.low, self.high
        low, high, mid = np.minimum(z, a), np.maximum(z, b), np.clip((y + lam * z) / (1.0 + lam), a, b)
        c_low = (y - a) ** 2 + lam * (low - z) ** 2
        c_high = (y - b) ** 2 + lam * (high - z) ** 2
        c_mid = (y - mid) ** 2 + lam * (mid - z) ** 2
        # ties (lam = 0, a saturated y: a bound piece and the middle one fit equally) go to the bound
        # piece, the one nearest z among the best fits
        return np.where(c_low <= np.minimum(c_high, c_mid), low, np.where(c_high <= c_mid, high, mid)).astype(z.dtype)



@register_operator
@dataclass(frozen=True, eq=False)
class QuantizeAoA(Operator):
    """AoA quantization into K equal sectors (eqs. 28-31) on AoA-sine pixels, STE backward (eq. 36).

    Reported angles are sector centres; building cells stay 0. Which cells are buildings is a
    property of the map (eq. 31), known at the base station from its building layout; pass it as
    `building` ((H, W) or (B, H, W)).
    Without it, cells whose current value lies in the codec's building gap count as buildings.
    Only the sine is stored, and theta and 180 - theta share it; the quantizer is the same for
    both when K is even (sector boundaries are symmetric about +-90 degrees), so K must be even.
    Backward: the identity on outdoor cells (straight-through), 0 on buildings.
    """

    sectors: int = 24
    building: np.ndarray | None = None
    name = "quantize_aoa"
    exact_prox = box_feasible = True

    def __post_init__(self):
        if not isinstance(self.sectors, (int, np.integer)) or self.sectors < 2 or self.sectors % 2:
            raise OperatorError(f"AoA quantization needs an even number of sectors >= 2, got {self.sectors!r}")
        if self.building is not None:
            b = np.asarray(self.building)
            if b.dtype != np.bool_ or b.ndim not in (2, 3):
                raise OperatorError(f"building must be a boolean (H, W) or (B, H, W) array, got {b.dtype} {b.shape}")
            object.__setattr__(self, "building", b)

    def _building(self, x: np.ndarray) -> np.ndarray:
        if self.building is None:
            return x < codec.BUILDING_THRESHOLD
        b = self.building if self.building.ndim == 3 else self.building[None]
        if b.shape[-2:] != x.shape[-2:] or b.shape[0] not in (1, x.shape[0]):
            raise OperatorError(f"building mask shape {self.building.shape} does not fit input {x.shape}")
        return np.broadcast_to(b[:, None], x.shape)

    def forward(self, x):
        x = _check_x(x)
        sine = np.clip((x - codec.AOA_OFFSET) / codec.AOA_SCALE, -1.0, 1.0)
        theta = np.degrees(np.arcsin(sine))
        delta = 360.0 / self.sectors
        k = np.minimum(np.floor((theta + 180.0) / delta), self.sectors - 1)
        hard = codec.AOA_SCALE * np.sin(np.radians(-180.0 + (k + 0.5) * delta)) + codec.AOA_OFFSET
        return np.where(self._building(x), 0.0, hard).astype(x.dtype)

    def vjp(self, x, v):
        return v * ~self._building(x)

    def known_buildings(self):
        return self.building

    def sector_intervals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(centre, low, high) pixels of every sector the sine can report: the sector's angles
        clipped to [-90, 90] degrees (arcsin's range), where the sine is increasing."""
        delta = 360.0 / self.sectors
        edges = -180.0 + delta * np.arange(self.sectors + 1)
        keep = (edges[1:] > -90.0) & (edges[:-1] < 90.0)
        lo, hi = np.maximum(edges[:-1][keep], -90.0), np.minimum(edges[1:][keep], 90.0)
        centre = (edges[:-1][keep] + edges[1:][keep]) / 2

        def px(deg):
            return codec.AOA_SCALE * np.sin(np.radians(deg)) + codec.AOA_OFFSET

        # 1e-6 pixel inside each edge, so that a value clipped into a sector stays in it after
        # float32 rounding (the forward's floor() puts an edge into one sector or the other)
        return px(centre), px(lo) + 1e-6, px(hi) - 1e-6

    def prox(self, z, y, lam):
        """Per outdoor cell: the sector j minimising (y - centre_j)^2 + lam dist(z, sector_j)^2,
        then z clipped into that sector (lam = 0: the nearest centre's sector). Buildings: 0
        (the given layout; without one, cells whose observation is in the building gap)."""
        z, lam = _check_x(z), _check_lam(lam)
        y = np.broadcast_to(np.asarray(y), z.shape)
        centre, lo, hi = self.sector_intervals()  # increasing in the sector index
        j_y = np.clip(np.searchsorted((centre[1:] + centre[:-1]) / 2, y), 0, len(centre) - 1)  # nearest centre
        x = np.clip(z, lo[j_y], hi[j_y])
        # Where z lies outside the nearest centre's sector and lam > 0, the best sector lies between
        # that one and z's own (farther ones fit y worse and lie farther from z): compare them all there.
        lam_cells = np.broadcast_to(lam, z.shape)
        todo = (x != z) & (lam_cells > 0)
        if todo.any():
            zt, yt, lt = z[todo][None], y[todo][None], lam_cells[todo][None]
            inside = np.clip(zt, lo[:, None], hi[:, None])  # (J, n): z clipped into each sector
            cost = (yt - centre[:, None]) ** 2 + lt * (inside - zt) ** 2
            x[todo] = np.take_along_axis(inside, np.argmin(cost, axis=0)[None], axis=0)[0]
        building = self._building(z) if self.building is not None else y < codec.BUILDING_THRESHOLD
        return np.where(building, 0.0, x).astype(z.dtype)



def _freeze_operators(combinator: Operator, message: str) -> None:
    """Store a combinator's operators as a tuple; refuse an empty list or a non-operator."""
    object.__setattr__(combinator, "operators", tuple(combinator.operators))
    if not combinator.operators or not all(isinstance(o, Operator) for o in combinator.operators):
        raise OperatorError(message)


@register_operator
@dataclass(frozen=True)
class PerChannel(Operator):
    """Channel c of x through operators[c] (each sees (B, 1, H, W)); outputs stacked on channels."""

    operators: tuple
    name = "per_channel"

    def __post_init__(self):
        _freeze_operators(self, "per_channel needs one operator per channel")

    def forward(self, x):
        x = _check_x(x, len(self.operators))
        outs = [op.forward(x[:, c : c + 1]) for c, op in enumerate(self.operators)]
        if len({o.shape for o in outs}) != 1:
            raise OperatorError(f"per-channel outputs differ in shape: {[o.shape for o in outs]}")
        return np.concatenate(outs, axis=1)

    def vjp(self, x, v):
        x = _check_x(x, len(self.operators))
        return np.concatenate(
            [op.vjp(x[:, c : c + 1], v[:, c : c + 1]) for c, op in enumerate(self.operators)], axis=1
        )

    @property
    def linear(self):
        return all(o.linear for o in self.operators)

    @property
    def exact_prox(self):
        return all(o.exact_prox for o in self.operators)

    @property
    def box_feasible(self):
        return all(o.box_feasible for o in self.operators)

    def known_buildings(self):
        return next((b for b in (o.known_buildings() for o in self.operators) if b is not None), None)

    def known_no_path(self, y):
        """The gain channel's operator decides (a no-path cell is one in every channel)."""
        return self.operators[0].known_no_path(np.asarray(y)[:, :1])

    def measured(self, y):
        return np.concatenate([op.measured(np.asarray(y)[:, c : c + 1]) for c, op in enumerate(self.operators)], axis=1)

    def prox(self, z, y, lam):
        """Channel by channel; a building layout that one channel's operator knows (JTQR's quantizer)
        also zeroes the other channels there — buildings are 0 in every channel (codec)."""
        z = _check_x(z, len(self.operators))
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
class Compose(Operator):
    """A_n(...A_1(x)): the VJP runs the chain rule backwards through the saved intermediates."""

    operators: tuple
    name = "compose"

    def __post_init__(self):
        _freeze_operators(self, "compose needs at least one operator")

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
    def linear(self):
        return all(o.linear for o in self.operators)

    @property
    def exact_prox(self):
        return self.linear or len(self.operators) == 1 and self.operators[0].exact_prox

    @property
    def box_feasible(self):
        return len(self.operators) == 1 and self.operators[0].box_feasible

    def known_buildings(self):
        return self.operators[0].known_buildings() if len(self.operators) == 1 else None

    def known_no_path(self, y):
        return self.operators[0].known_no_path(y) if len(self.operators) == 1 else None

    def measured(self, y):
        return self.operators[-1].measured(y)

    def prox(self, z, y, lam):
        if len(self.operators) == 1:
            return self.operators[0].prox(z, y, lam)
        if self.linear:
            lam = _check_lam(lam)
            return _box_refine(self, _check_x(z), y, lam, _cg_prox(self, z, y, lam))
        return super().prox(z, y, lam)

    def output_shape(self, shape):
        for op in self.operators:
            shape = op.output_shape(shape)
        return shape



def _block_offset(z: np.ndarray, y: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Per row of z (n, k): the mu solving g(mu) = lam mu + mean(clip(z + mu, 0, 1)) - y = 0.
    g is increasing and piecewise linear with kinks at -z_i and 1 - z_i: evaluate it there, take
    the segment where it crosses 0 and interpolate (beyond the kinks g has slope lam; with lam = 0
    and y outside [0, 1] the nearest kink, all cells at a bound, is the best fit)."""
    kinks = np.sort(np.concatenate([-z, 1.0 - z], axis=1), axis=1)  # (n, 2k)
    g = lam * kinks + np.clip(z[:, None, :] + kinks[:, :, None], 0.0, 1.0).mean(axis=2) - y  # (n, 2k)
    above = g >= 0
    k = np.argmax(above, axis=1)  # first kink where g >= 0 (0 if none: handled below)
    rows = np.arange(len(z))
    k0 = np.maximum(k - 1, 0)
    m0, m1, g0, g1 = kinks[rows, k0], kinks[rows, k], g[rows, k0], g[rows, k]
    inside = m0 - g0 * (m1 - m0) / np.where(g1 > g0, g1 - g0, 1.0)
    lam1 = lam[:, 0]
    first = np.where(lam1 > 0, kinks[:, 0] - g[:, 0] / np.where(lam1 > 0, lam1, 1.0), kinks[:, 0])
    last = np.where(lam1 > 0, kinks[:, -1] - g[:, -1] / np.where(lam1 > 0, lam1, 1.0), kinks[:, -1])
    mu = np.where(~above.any(axis=1), last, np.where(above[:, 0], first, inside))
    return mu[:, None]


def _check_lam(lam):
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


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample inner product (B, 1, 1, 1), in float64."""
    return (a.astype(np.float64) * b).reshape(len(a), -1).sum(axis=1).reshape(-1, 1, 1, 1)


def _cg_prox(op: Operator, z: np.ndarray, y: np.ndarray, lam: float, tol: float = 1e-6, iters: int = 500) -> np.ndarray:
    """x = z + d, d solving min ||r - A d||^2 + lam ||d||^2 with r = y - A z, by CGLS per sample.

    From d = 0, CGLS stays in the row space of A, so for lam = 0 it converges to the least-norm
    solution: x = z + A^+ (y - A z). Stops when every sample's normal-equation residual is below
    tol times its start (float64 throughout)."""
    z64 = z.astype(np.float64)
    r = np.asarray(y, np.float64) - op.forward(z64)
    d = np.zeros_like(z64)
    s = op.vjp(z64, r)  # A^T r - lam d, with d = 0
    p, gamma = s.copy(), _dot(s, s)
    stop = tol**2 * np.maximum(gamma, 1e-300)
    for _ in range(iters):
        if np.all(gamma <= stop):
            break
        q = op.forward(p)
        alpha = gamma / np.maximum(_dot(q, q) + lam * _dot(p, p), 1e-300)
        d += alpha * p
        r -= alpha * q
        s = op.vjp(z64, r) - lam * d
        gamma_new = _dot(s, s)
        p = s + gamma_new / np.maximum(gamma, 1e-300) * p
        gamma = gamma_new
    return (z64 + d).astype(z.dtype)


def _box_refine(op: Operator, z: np.ndarray, y: np.ndarray, lam, x: np.ndarray, iters: int = 500) -> np.ndarray:
    """Bring an unconstrained minimiser x into [0, 1]: accelerated projected gradient (FISTA) on
    ||y - A x||^2 + lam ||x - z||^2 from clip(x), for a linear A (||A||^2 by power iteration)."""
    if x.min() >= 0.0 and x.max() <= 1.0:
        return x
    z64, y64 = z.astype(np.float64), np.asarray(y, np.float64)
    v = np.random.default_rng(0).standard_normal(z.shape)  # fixed: the result must not depend on a global seed
    for _ in range(30):
        v = op.vjp(z64, op.forward(v))
        v /= np.maximum(np.sqrt(_dot(v, v)), 1e-300)
    u = op.vjp(z64, op.forward(v))
    norm2 = np.sqrt(_dot(u, u))  # ||A^T A v|| with ||v|| = 1: the largest eigenvalue of A^T A
    step = 1.0 / (2.0 * (norm2 * 1.01 + lam))
    x = np.clip(x.astype(np.float64), 0.0, 1.0)
    w, t = x, 1.0
    for _ in range(iters):
        g = -2.0 * op.vjp(z64, y64 - op.forward(w)) + 2.0 * lam * (w - z64)
        x_new = np.clip(w - step * g, 0.0, 1.0)
        t_new = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        w = x_new + ((t - 1.0) / t_new) * (x_new - x)
        done = np.abs(x_new - x).max() < 1e-10
        x, t = x_new, t_new
        if done:
            break
    return x.astype(z.dtype)


def _descent_prox(op: Operator, z: np.ndarray, y: np.ndarray, lam: float, iters: int = 50) -> np.ndarray:
    """The fallback data step: gradient descent on f(x) = ||y - A(x)||^2 + lam ||x - z||^2 from z,
    through the operator's VJP only, with a per-sample backtracking step (halved until f falls).
    With lam = 0 the few iterations from z are what keeps x near z."""
    x = z.astype(np.float64)

    def f(v):
        r = np.asarray(y, np.float64) - op.forward(v)
        return _dot(r, r) + lam * _dot(v - z, v - z), r

    fx, r = f(x)
    step = np.full_like(fx, 0.5)
    for _ in range(iters):
        g = -2.0 * op.vjp(x, r) + 2.0 * lam * (x - z)
        for _ in range(30):  # backtracking, per sample
            cand = x - step * g
            fc, rc = f(cand)
            ok = fc <= fx - 0.5 * step * _dot(g, g)
            if ok.all():
                break
            step = np.where(ok, step, step / 2)
        ok = fc <= fx
        x, fx, r = np.where(ok, cand, x), np.where(ok, fc, fx), np.where(ok, rc, r)
        step = np.minimum(step * 2, 8.0)
    return x.astype(z.dtype)


def jtqr(low: float = 0.2, high: float = 0.7, sectors: int = 24, building: np.ndarray | None = None) -> PerChannel:
    """Joint truncation (gain) and AoA quantization (eq. 32), the paper's JTQR task."""
    return PerChannel((Truncate(low, high), QuantizeAoA(sectors, building)))


# --- masks -----------------------------------------------------------------------------------

BOX_SIDE_RANGE = (5, 50)  # paper IV-B-1, pixels
RANDOM_MISSING_RANGE = (5 * 5 / (128 * 128), 50 * 50 / (128 * 128))  # ~[0.0015, 0.1526]


def box_mask(rng: np.random.Generator, size: tuple[int, int], side_range=BOX_SIDE_RANGE) -> np.ndarray:
    """One missing rectangle with sides uniform in side_range (inclusive). True = observed."""
    h, w = size
    lo, hi = side_range
    if not 1 <= lo <= hi <= min(h, w):
        raise OperatorError(f"box sides {side_range} must satisfy 1 <= lo <= hi <= {min(h, w)}")
    bh, bw = rng.integers(lo, hi + 1, size=2)
    r, c = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
    mask = np.ones((h, w), dtype=bool)
    mask[r : r + bh, c : c + bw] = False
    return mask


def random_mask(rng: np.random.Generator, size: tuple[int, int], missing_range=RANDOM_MISSING_RANGE) -> np.ndarray:
    """Cells missing independently at a ratio drawn uniformly from missing_range. True = observed."""
    lo, hi = missing_range
    if not 0.0 <= lo <= hi < 1.0:
        raise OperatorError(f"missing ratio range {missing_range} must satisfy 0 <= lo <= hi < 1")
    h, w = size
    ratio = rng.uniform(lo, hi)
    missing = rng.permutation(h * w) < round(ratio * h * w)
    return ~missing.reshape(h, w)


def trajectory_mask(
    rng: np.random.Generator,
    building: np.ndarray,
    routes: int = 4,
    length: int = 150,
    width: int = 1,
) -> np.ndarray:
    """Drive-test measurements: cells along random routes through the streets. True = observed.

    Building footprints are map data a base station has, so building cells count as observed
    (their value is 0 in both channels). Each route starts at a random outdoor cell and drives straight along one of 8 headings,
    turning at random (and when blocked by a building or the tile edge), for `length` cells.
    """
    building = np.asarray(building, dtype=bool)
    if building.ndim != 2 or routes < 1 or length < 1 or width < 1:
        raise OperatorError("trajectory needs a (H, W) building mask and routes, length, width >= 1")
    h, w = building.shape
    outdoor = np.flatnonzero(~building.ravel())
    if outdoor.size == 0:
        raise OperatorError("trajectory needs at least one outdoor cell")
    headings = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
    observed = np.zeros((h, w), dtype=bool)
    for _ in range(routes):
        r, c = divmod(int(rng.choice(outdoor)), w)
        k = int(rng.integers(8))
        for _ in range(length):
            observed[max(r - width + 1, 0) : r + width, max(c - width + 1, 0) : c + width] = True
            if rng.random() < 0.04:
                k = (k + rng.choice([-2, 2])) % 8
            for turn in (0, 1, -1, 2, -2, 3, -3, 4):
                dr, dc = headings[(k + turn) % 8]
                nr, nc = r + dr, c + dc
                if 0 <= nr < h and 0 <= nc < w and not building[nr, nc]:
                    k = (k + turn) % 8
                    r, c = nr, nc
                    break
            else:
                break
    return observed | building


# --- specs -----------------------------------------------------------------------------------

def from_spec(spec: dict) -> Operator:
    """Build an operator from its JSON-able spec; unknown names and bad parameters raise."""
    if not isinstance(spec, dict) or "op" not in spec:
        raise OperatorError(f"an operator spec is a dict with an 'op' key, got {spec!r}")
    name = spec["op"]
    cls = OPERATORS.get(name)
    if cls is None:
        raise OperatorError(f"unknown operator {name!r}; known: {known()}")
    params = {k: v for k, v in spec.items() if k != "op"}
    for p in cls.parameters:
        if p.kind == "operators" and p.name in params:
            if not isinstance(params[p.name], list):
                raise OperatorError(f"bad parameters for operator {name!r}: {p.name!r} must be a list of specs")
            params[p.name] = [from_spec(sub) for sub in params[p.name]]
    return make(name, params)
