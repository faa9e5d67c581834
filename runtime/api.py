"""The gRPC API (ckm.edge.v1): message conversions over the code generated from
protos/ckm/edge/v1/edge.proto (committed, checked against the .proto by the tests; see
protos/generate.py), so an edge server needs no protobuf compiler.
"""

from __future__ import annotations

import math

from ckm_edge.protos.ckm.edge.v1 import edge_pb2 as pb
from ckm_edge.protos.ckm.edge.v1 import edge_pb2_grpc as services  # noqa: F401 (re-exported: stubs, servicers)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeService"].full_name


# --- conversions between messages and numpy / runtime objects ----------------------------------

import numpy as np  # noqa: E402

from ckm_edge.runtime import operators  # noqa: E402

_DTYPES = {pb.DATA_TYPE_FLOAT32: np.float32, pb.DATA_TYPE_FLOAT64: np.float64, pb.DATA_TYPE_UINT8: np.uint8}
_PB_DTYPES = {np.dtype(v): k for k, v in _DTYPES.items()}
MAX_ELEMENTS = 4 * 512 * 512


class InvalidArgument(ValueError):
    """A request field that is wrong; the message names the field."""


def decimal(value: float) -> float:
    """A proto `float` field as the number its sender wrote: the shortest decimal that rounds to the
    same float32 (0.01f arrives as 0.009999999776; this gives 0.01 back), so a served construction
    computes with the same numbers as a local one given the same settings."""
    return float(str(np.float32(value)))


def to_numpy(tensor, field: str, max_elements: int = MAX_ELEMENTS, finite: bool = True) -> np.ndarray:
    """A Tensor message -> ndarray, refusing bad dtypes, shapes, sizes (and non-finite values)."""
    if tensor.dtype not in _DTYPES:
        raise InvalidArgument(f"{field}.dtype must be FLOAT32, FLOAT64 or UINT8, got {tensor.dtype}")
    shape = tuple(int(d) for d in tensor.shape)
    if not shape or any(d <= 0 for d in shape):
        raise InvalidArgument(f"{field}.shape must be non-empty with positive sizes, got {list(shape)}")
    count = math.prod(shape)  # Python integers: no wrap-around however large the sizes
    if count > max_elements:
        raise InvalidArgument(f"{field} has {count} elements, more than the limit {max_elements}")
    dtype = np.dtype(_DTYPES[tensor.dtype]).newbyteorder("<")
    if len(tensor.data) != count * dtype.itemsize:
        raise InvalidArgument(f"{field}.data has {len(tensor.data)} bytes, shape {list(shape)} of {dtype.name} "
                              f"needs {count * dtype.itemsize}")
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidArgument(f"{field} has {int((~np.isfinite(array)).sum())} non-finite value(s)")
    return array.astype(array.dtype.newbyteorder("="))


def from_numpy(array: np.ndarray):
    array = np.ascontiguousarray(array)
    if array.dtype not in _PB_DTYPES:
        array = array.astype(np.float32)
    return pb.Tensor(shape=list(array.shape), dtype=_PB_DTYPES[array.dtype], data=array.astype(array.dtype.newbyteorder("<")).tobytes())


def binary_map(tensor, field: str) -> np.ndarray:
    m = to_numpy(tensor, field)
    if m.ndim != 2:
        raise InvalidArgument(f"{field} must be an (H, W) array of 0/1, got shape {list(m.shape)}")
    bad = ~np.isin(m, (0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InvalidArgument(f"{field} must hold only 0 and 1, got {m[r, c]:g} at [{r}, {c}] "
                              f"({int(bad.sum())} cell(s) not 0/1)")
    return m.astype(bool)


def _one_map(m: np.ndarray, what: str) -> np.ndarray:
    m = m[0] if m.ndim == 3 and len(m) == 1 else m
    if m.ndim != 2:
        raise ValueError(f"a request carries one (H, W) {what}, got shape {m.shape}")
    return m.astype(np.uint8)


MAX_OPERATORS = 64  # operators in one request, nested ones included
MAX_DEPTH = 8


def operator_from_proto(msg, field: str = "operator", shape: tuple[int, ...] | None = None) -> operators.Operator:
    """An Operator message -> a runtime operator; every error names the offending field.

    At most MAX_OPERATORS operators nested at most MAX_DEPTH deep. With `shape` (the map's
    (C, H, W)) every operator is also tried on its input, so an operator that does not fit (a mask
    of the wrong size, a factor that does not divide) is refused under its own field path.
    """
    return fitted_operator_from_proto(msg, field, shape)[0]


def fitted_operator_from_proto(msg, field: str = "operator",
                               shape: tuple[int, ...] | None = None) -> tuple[operators.Operator, tuple | None]:
    """`operator_from_proto`, with the operator's output shape for one map of `shape` (None without
    `shape`): the probe that checked the operator also says what the observation must look like."""
    count = _count_operators(msg)
    if count > MAX_OPERATORS:
        raise InvalidArgument(f"{field} holds more than {MAX_OPERATORS} operators (nested ones included)")
    return _operator(msg, field, 0, None if shape is None else tuple(shape))


def _count_operators(msg) -> int:
    count, stack = 0, [msg]
    while stack and count <= MAX_OPERATORS:  # stops early: a huge request costs no more than the limit
        m = stack.pop()
        count += 1
        kind = m.WhichOneof("kind")
        if kind in ("per_channel", "compose"):
            stack.extend(getattr(m, kind).operators)
    return count


def _fits(op: operators.Operator, field: str, shape: tuple | None) -> tuple | None:
    """The operator's output shape for one map of input `shape` (None: not checked)."""
    if shape is None:
        return None
    try:
        return tuple(op.forward(np.zeros((1,) + shape, np.float32)).shape[1:])
    except (operators.OperatorError, ValueError) as e:
        raise InvalidArgument(f"{field}: does not fit its input of shape {list(shape)}: {e}") from None


def _operator(msg, field: str, depth: int, shape: tuple | None) -> tuple[operators.Operator, tuple | None]:
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"{field} nests operators more than {MAX_DEPTH} deep")
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(f"{field} sets no operator (one of {operators.known()})")
    here = f"{field}.{kind}"
    body = getattr(msg, kind)
    if kind == "named":  # any registered operator, by name
        cls = operators.OPERATORS.get(body.name)
        if cls is None:
            raise InvalidArgument(f"{here}.name: unknown operator {body.name!r}; known: {operators.known()}")
        values = {**dict(body.numbers), **dict(body.maps)}
        extra = set(values) - {p.name for p in cls.parameters}
        if extra:
            raise InvalidArgument(f"{here}: operator {body.name!r} has no parameter(s) {', '.join(sorted(map(repr, extra)))}")
        subs = list(body.operators)
        where = lambda name: f"{here}.maps[{name!r}]"  # noqa: E731
    else:  # its typed message: field names are the parameter names
        cls = operators.OPERATORS[kind]
        floats = {f.name for f in body.DESCRIPTOR.fields if f.type == f.TYPE_FLOAT}
        values = {p.name: decimal(getattr(body, p.name)) if p.name in floats else getattr(body, p.name)
                  for p in cls.parameters
                  if p.kind not in ("map", "operators") or (p.kind == "map" and body.HasField(p.name))}
        subs = next((list(getattr(body, p.name)) for p in cls.parameters if p.kind == "operators"), [])
        where = lambda name: f"{here}.{name}"  # noqa: E731
    params = {}
    for p in cls.parameters:
        if p.kind == "map" and p.name in values:
            params[p.name] = binary_map(values[p.name], where(p.name))
        elif p.kind == "operators":  # per_channel: each sees one channel; others: a chain
            ops, out = [], shape
            for i, o in enumerate(subs):
                per_channel = cls is operators.PerChannel
                child, child_out = _operator(o, f"{here}.operators[{i}]", depth + 1,
                                             (shape and (1,) + shape[1:]) if per_channel else out)
                ops.append(child)
                out = out if per_channel else child_out
            params[p.name] = tuple(ops)
        elif p.name in values:
            params[p.name] = values[p.name]
    try:
        op = operators.make(cls.name, params)
    except operators.OperatorError as e:
        raise InvalidArgument(f"{here}: {e}") from None
    return op, _fits(op, here, shape)


def operator_to_proto(op: operators.Operator):
    """A runtime operator -> its Operator message (the client side): its typed message when the
    .proto has one, else a NamedOperator."""
    typed = op.name != "named" and op.name in pb.Operator.DESCRIPTOR.fields_by_name
    msg = pb.Operator()
    body = getattr(msg, op.name) if typed else msg.named
    body.SetInParent()
    if not typed:
        body.name = op.name
    for p in type(op).parameters:
        v = getattr(op, p.name)
        if p.kind == "map":
            if v is not None:
                tensor = from_numpy(_one_map(np.asarray(v), p.name))
                (getattr(body, p.name) if typed else body.maps[p.name]).CopyFrom(tensor)
        elif p.kind == "operators":
            body.operators.extend(operator_to_proto(o) for o in v)
        elif typed:
            setattr(body, p.name, v)
        else:
            body.numbers[p.name] = float(v)
    return msg


def site_from_proto(msg, shape: tuple[int, ...] | None = None):
    """A Site message -> runtime.site.Site; errors name the field. With `shape` (C, H, W) it is also
    checked against the maps (the server leaves that to runtime.executor.plan, once)."""
    from ckm_edge.runtime.site import Site, SiteError

    building = binary_map(msg.building, "site.building") if msg.HasField("building") else None
    bs = None
    if msg.HasField("base_station"):
        b = msg.base_station
        bs = np.array([b.row, b.col, b.height_m])
    if building is None and bs is None:
        raise InvalidArgument("site: give its building map, its base_station, or both (leave site unset when "
                              "neither is known)")
    heights = None
    if msg.HasField("building_height"):
        if msg.building_height.dtype not in (pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_FLOAT64):
            raise InvalidArgument("site.building_height.dtype must be FLOAT32 or FLOAT64 (metres)")
        heights = to_numpy(msg.building_height, "site.building_height")
    try:
        site = Site(building, bs, heights)
        if shape is not None:
            site.check(tuple(shape))
    except SiteError as e:
        raise InvalidArgument(f"site.{e.part}: {e}" if e.part else f"site: {e}") from None
    return site


def site_to_proto(site):
    """runtime.site.Site (one map's: (H, W) layout, (3,) base station) -> its Site message."""
    msg = pb.Site()
    if site.building is not None:
        msg.building.CopyFrom(from_numpy(_one_map(np.asarray(site.building), "building map")))
    if site.base_station is not None:
        bs = np.asarray(site.base_station, float).reshape(-1, 3)
        if len(bs) != 1:
            raise ValueError(f"a request carries one base station, got {len(bs)}")
        msg.base_station.row, msg.base_station.col, msg.base_station.height_m = (float(v) for v in bs[0])
    if site.building_height is not None:
        heights = np.asarray(site.building_height, np.float32)
        heights = heights[0] if heights.ndim == 3 and len(heights) == 1 else heights
        if heights.ndim != 2:
            raise ValueError(f"a request carries one (H, W) map of building heights, got shape {heights.shape}")
        msg.building_height.CopyFrom(from_numpy(heights))
    return msg
