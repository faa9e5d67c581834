"""Generate, or check, the committed Python code of the gRPC API from its .proto files.

    python -m ckm_edge.protos.generate            rewrite protos/ckm/edge/v1/{edge,site}_pb2{,_grpc}.py and .pyi
    python -m ckm_edge.protos.generate --check    exit 1 naming the files that differ from the .proto

The code is generated at development time and committed, so an edge install needs no compiler
(grpcio-tools is a `dev` dependency, pinned so that the check is exact). protoc names imports
after the .proto's path (`from ckm.edge.v1 import ...`); they are rewritten under this package,
so nothing called `ckm` lands at the top of site-packages. The test suite runs the check.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCES = ("ckm/edge/v1/edge.proto", "ckm/edge/v1/site.proto")
PACKAGE = "ckm_edge.protos"  # the import name of this folder once installed


def generate() -> dict[str, str]:
    """{path relative to protos/: text} of every generated file."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in SOURCES:
            args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                    f"--grpc_python_out={tmp}", str(ROOT / source)]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {source}")
        for path in sorted(Path(tmp).rglob("*.py*")):
            rel = path.relative_to(tmp).as_posix()
            text = path.read_text()
            for source in SOURCES:
                module = source.removesuffix(".proto").replace("/", ".")  # ckm.edge.v1.edge
                parent, name = module.rsplit(".", 1)
                text = text.replace(f"from {parent} import {name}_pb2", f"from {PACKAGE}.{parent} import {name}_pb2")
            out[rel] = text
    return out


def stale() -> list[str]:
    """Generated files whose committed copy is missing or differs."""
    return [rel for rel, text in generate().items()
            if not (ROOT / rel).is_file() or (ROOT / rel).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ckm_edge.protos.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the committed code is stale")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        if bad:
            print(f"generated code differs from the .proto: {', '.join(bad)}; run python -m {PACKAGE}.generate",
                  file=sys.stderr)
            return 1
        print("generated code matches the .proto")
        return 0
    for rel, text in generate().items():
        (ROOT / rel).write_text(text)
        print(f"wrote protos/{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
