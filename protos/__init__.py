"""The gRPC API's .proto sources; Python code is generated from them (runtime.api), never edited."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
EDGE_V1 = "ckm/edge/v1/edge.proto"
