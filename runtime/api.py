"""The gRPC API (ckm.edge.v1), generated from protos/ckm/edge/v1/edge.proto at first import.

Generated code is never committed or edited: `grpc.protos_and_services` compiles the .proto with
grpc_tools on import (the `serve` extra), so the .proto is the single source of truth.
"""

from __future__ import annotations

import sys

import grpc

import protos

if str(protos.ROOT) not in sys.path:
    sys.path.append(str(protos.ROOT))
pb, services = grpc.protos_and_services(protos.EDGE_V1)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeService"].full_name


# --- conversions between messages and numpy / runtime objects ----------------------------------

import numpy as np  # noqa: E402

from runtime import operators  # noqa: E402

_DTYPES = {pb.DATA_TYPE_FLOAT32: np.float32, pb.DATA_TYPE_FLOAT64: np.float64, pb.DATA_TYPE_UINT8: np.uint8}
_PB_DTYPES = {np.dtype(v): k for k, v in _DTYPES.items()}
MAX_ELEMENTS = 4 * 512 * 512


class InvalidArgument(ValueError):
    """A request field that is wrong; the message names the field."""


def to_numpy(tensor, field: str, max_elements: int = MAX_ELEMENTS, finite: bool = True) -> np.ndarray:
    """A Tensor message -> ndarray, refusing bad dtypes, shapes, sizes (and non-finite values)."""
    if tensor.dtype not in _DTYPES:
        raise InvalidArgument(f"{field}.dtype must be FLOAT32, FLOAT64 or UINT8, got {tensor.dtype}")
    shape = tuple(int(d) for d in tensor.shape)
    if not shape or any(d <= 0 for d in shape):
        raise InvalidArgument(f"{field}.shape must be non-empty with positive sizes, got {list(shape)}")
    count = int(np.prod(shape, dtype=np.int64))
    if count > max_elements:
        raise InvalidArgument(f"{field} has {count} elements, more than the limit {max_elements}")
    dtype = np.dtype(_DTYPES[tensor.dtype]).newbyteorder("<")
    if len(tensor.data) != count * dtype.itemsize:
        raise InvalidArgument(f"{field}.data has {len(tensor.data)} bytes, shape {list(shape)} of {dtype.name} needs {count * dtype.itemsize}")
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
    if m.ndim != 2 or not np.isin(m, (0, 1)).all():
        raise InvalidArgument(f"{field} must be an (H, W) array of 0/1, got shape {list(m.shape)}")
    return m.astype(bool)


def _one_map(m: np.ndarray, what: str) -> np.ndarray:
    m = m[0] if m.ndim == 3 and len(m) == 1 else m
    if m.ndim != 2:
        raise ValueError(f"a request carries one (H, W) {what}, got shape {m.shape}")
    return m.astype(np.uint8)


def operator_from_proto(msg, field: str = "operator", depth: int = 0) -> operators.Operator:
    """An Operator message -> a runtime operator; every error names the offending field."""
    if depth > 8:
        raise InvalidArgument(f"{field} nests operators more than 8 deep")
    kind = msg.WhichOneof("kind")
    try:
        if kind is None:
            raise InvalidArgument(f"{field} sets no operator (one of mask, downsample, truncate, quantize_aoa, per_channel, compose, identity)")
        if kind == "identity":
            return operators.Identity()
        if kind == "mask":
            return operators.Mask(binary_map(msg.mask.mask, f"{field}.mask.mask"))
        if kind == "downsample":
            return operators.Downsample(int(msg.downsample.factor))
        if kind == "truncate":
            return operators.Truncate(float(msg.truncate.low), float(msg.truncate.high))
        if kind == "quantize_aoa":
            building = None
            if msg.quantize_aoa.HasField("building"):
                building = binary_map(msg.quantize_aoa.building, f"{field}.quantize_aoa.building")
            return operators.QuantizeAoA(int(msg.quantize_aoa.sectors), building)
        sub = msg.per_channel.operators if kind == "per_channel" else msg.compose.operators
        ops = tuple(operator_from_proto(o, f"{field}.{kind}.operators[{i}]", depth + 1) for i, o in enumerate(sub))
        return (operators.PerChannel if kind == "per_channel" else operators.Compose)(ops)
    except operators.OperatorError as e:
        raise InvalidArgument(f"{field}.{kind}: {e}") from None


def operator_to_proto(op: operators.Operator):
    """A runtime operator -> its Operator message (the client side)."""
    if isinstance(op, operators.Identity):
        return pb.Operator(identity=pb.IdentityOperator())
    if isinstance(op, operators.Mask):
        return pb.Operator(mask=pb.MaskOperator(mask=from_numpy(_one_map(op.mask, "mask"))))
    if isinstance(op, operators.Downsample):
        return pb.Operator(downsample=pb.DownsampleOperator(factor=op.factor))
    if isinstance(op, operators.Truncate):
        return pb.Operator(truncate=pb.TruncateOperator(low=op.low, high=op.high))
    if isinstance(op, operators.QuantizeAoA):
        msg = pb.QuantizeAoaOperator(sectors=op.sectors)
        if op.building is not None:
            msg.building.CopyFrom(from_numpy(_one_map(op.building, "building mask")))
        return pb.Operator(quantize_aoa=msg)
    subs = [operator_to_proto(o) for o in op.operators]
    if isinstance(op, operators.PerChannel):
        return pb.Operator(per_channel=pb.PerChannelOperator(operators=subs))
    return pb.Operator(compose=pb.ComposeOperator(operators=subs))
