"""The gRPC API: its .proto sources and the Python code generated from them (protos/generate.py).

The generated modules (ckm/edge/v1/edge_pb2.py, edge_pb2_grpc.py) are committed and never
edited by hand; `python -m ckm_edge.protos.generate --check` (run by the tests) proves they match.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent  # the .proto sources ship with the package (for clients in other languages)
