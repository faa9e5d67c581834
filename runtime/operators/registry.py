"""The operator registry: one table for specs, the gRPC API, metadata and errors.

`register_operator` makes a dataclass Operator known by its name; `make` builds one from typed
parameters (the API's path), `from_spec` from its JSON-able spec (`Operator.to_spec` writes it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime.operators.base import Operator, OperatorError

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
