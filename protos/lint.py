"""Lint the .proto files with buf's STANDARD naming rules and its comment rules.

    python -m ckm_edge.protos.lint        prints one line per violation; exit 1 if any

Rules (buf's names): PACKAGE_LOWER_SNAKE_CASE, PACKAGE_VERSION_SUFFIX, PACKAGE_DIRECTORY_MATCH,
MESSAGE_PASCAL_CASE, FIELD_LOWER_SNAKE_CASE, ONEOF_LOWER_SNAKE_CASE, ENUM_PASCAL_CASE,
ENUM_VALUE_UPPER_SNAKE_CASE, ENUM_VALUE_PREFIX, ENUM_ZERO_VALUE_SUFFIX, SERVICE_PASCAL_CASE,
SERVICE_SUFFIX, RPC_PASCAL_CASE, RPC_REQUEST_STANDARD_NAME, RPC_RESPONSE_STANDARD_NAME,
RPC_REQUEST_RESPONSE_UNIQUE, and COMMENT_MESSAGE / COMMENT_ENUM / COMMENT_SERVICE / COMMENT_RPC
(a leading comment on every top-level message and enum, the service and every RPC). It reads the
descriptor protoc makes with source info, so it needs grpcio-tools (the `dev` extra).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from ckm_edge.protos.generate import ROOT, SOURCES

_PASCAL = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_LOWER_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
# FileDescriptorProto field numbers (source-info paths): message_type 4, enum_type 5, service 6;
# ServiceDescriptorProto.method 2.
_MESSAGE, _ENUM, _SERVICE, _METHOD = 4, 5, 6, 2


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def descriptors():
    """FileDescriptorProtos of SOURCES, with comments (source code info)."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = ["protoc", f"-I{ROOT}", f"-I{include}", "--include_source_info", f"--descriptor_set_out={out}",
                *(str(ROOT / s) for s in SOURCES)]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return list(fds.file)


def lint_file(fd) -> list[str]:
    problems: list[str] = []

    def bad(rule: str, where: str, why: str) -> None:
        problems.append(f"{fd.name}: {rule}: {where} {why}")

    comments = {tuple(loc.path): loc.leading_comments.strip() for loc in fd.source_code_info.location}
    parts = fd.package.split(".")
    if not fd.package or not all(_LOWER_SNAKE.match(p) for p in parts):
        bad("PACKAGE_LOWER_SNAKE_CASE", f"package {fd.package!r}", "must be lower_snake_case parts")
    if not re.match(r"^v\d+((alpha|beta)\d*)?$", parts[-1]):
        bad("PACKAGE_VERSION_SUFFIX", f"package {fd.package!r}", "must end in a version such as v1")
    if str(Path(fd.name).parent).replace("/", ".") != fd.package:
        bad("PACKAGE_DIRECTORY_MATCH", fd.name, f"must lie in {fd.package.replace('.', '/')}/")

    def message(m, where: str) -> None:
        if not _PASCAL.match(m.name):
            bad("MESSAGE_PASCAL_CASE", where, "must be PascalCase")
        for f in m.field:
            if not _LOWER_SNAKE.match(f.name):
                bad("FIELD_LOWER_SNAKE_CASE", f"{where}.{f.name}", "must be lower_snake_case")
        synthetic = {f.oneof_index for f in m.field if f.proto3_optional}  # `optional` fields' own oneofs
        for i, o in enumerate(m.oneof_decl):
            if i not in synthetic and not _LOWER_SNAKE.match(o.name):
                bad("ONEOF_LOWER_SNAKE_CASE", f"{where}.{o.name}", "must be lower_snake_case")
        for n in m.nested_type:
            if not n.options.map_entry:
                message(n, f"{where}.{n.name}")
        for e in m.enum_type:
            enum(e, f"{where}.{e.name}")

    def enum(e, where: str) -> None:
        if not _PASCAL.match(e.name):
            bad("ENUM_PASCAL_CASE", where, "must be PascalCase")
        prefix = _upper_snake(e.name) + "_"
        for v in e.value:
            if not _UPPER_SNAKE.match(v.name):
                bad("ENUM_VALUE_UPPER_SNAKE_CASE", f"{where}.{v.name}", "must be UPPER_SNAKE_CASE")
            if not v.name.startswith(prefix):
                bad("ENUM_VALUE_PREFIX", f"{where}.{v.name}", f"must start with {prefix}")
        zero = [v for v in e.value if v.number == 0]
        if not zero or zero[0].name != prefix + "UNSPECIFIED":
            bad("ENUM_ZERO_VALUE_SUFFIX", where, f"must have {prefix}UNSPECIFIED = 0")

    for i, m in enumerate(fd.message_type):
        message(m, m.name)
        if not comments.get((_MESSAGE, i)):
            bad("COMMENT_MESSAGE", m.name, "has no leading comment")
    for i, e in enumerate(fd.enum_type):
        enum(e, e.name)
        if not comments.get((_ENUM, i)):
            bad("COMMENT_ENUM", e.name, "has no leading comment")
    types: dict[str, list[str]] = {}
    for si, s in enumerate(fd.service):
        if not _PASCAL.match(s.name):
            bad("SERVICE_PASCAL_CASE", s.name, "must be PascalCase")
        if not s.name.endswith("Service"):
            bad("SERVICE_SUFFIX", s.name, "must end in Service")
        if not comments.get((_SERVICE, si)):
            bad("COMMENT_SERVICE", s.name, "has no leading comment")
        for mi, rpc in enumerate(s.method):
            where = f"{s.name}.{rpc.name}"
            if not _PASCAL.match(rpc.name):
                bad("RPC_PASCAL_CASE", where, "must be PascalCase")
            request, response = rpc.input_type.rsplit(".", 1)[-1], rpc.output_type.rsplit(".", 1)[-1]
            if request != f"{rpc.name}Request":
                bad("RPC_REQUEST_STANDARD_NAME", where, f"takes {request}, must take {rpc.name}Request")
            if response not in (f"{rpc.name}Response", f"{s.name}{rpc.name}Response"):
                bad("RPC_RESPONSE_STANDARD_NAME", where, f"returns {response}, must return {rpc.name}Response")
            for t in (request, response):
                types.setdefault(t, []).append(where)
            if not comments.get((_SERVICE, si, _METHOD, mi)):
                bad("COMMENT_RPC", where, "has no leading comment")
    for t, users in types.items():
        if len(users) > 1:
            bad("RPC_REQUEST_RESPONSE_UNIQUE", t, f"is used by more than one RPC: {', '.join(users)}")
    return problems


def lint() -> list[str]:
    return [p for fd in descriptors() for p in lint_file(fd)]


def main() -> int:
    problems = lint()
    print("\n".join(problems) or "proto lint: no problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
