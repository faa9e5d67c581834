"""The .proto is the contract: the committed generated code matches it and it passes the lint."""


from google.protobuf import descriptor_pb2

from ckm_edge.protos import generate, lint


def test_committed_generated_code_matches_the_proto():
    assert generate.stale() == [], "run python -m ckm_edge.protos.generate and commit the result"
    grpc_code = (generate.ROOT / "ckm/edge/v1/edge_pb2_grpc.py").read_text()
    assert "from ckm_edge.protos.ckm.edge.v1 import edge_pb2" in grpc_code  # no top-level `ckm`


def test_the_proto_passes_the_lint():
    assert lint.lint() == []


def test_the_lint_catches_what_it_claims():
    fd = lint.descriptors()[0]
    broken = descriptor_pb2.FileDescriptorProto()
    broken.CopyFrom(fd)
    broken.message_type[0].name = "tensor_message"
    broken.message_type[0].field[0].name = "Shape"
    broken.enum_type[0].value[0].name = "DATA_TYPE_NONE"
    broken.service[0].method[1].input_type = ".ckm.edge.v1.ConstructRequest"
    broken.ClearField("source_code_info")
    rules = {p.split(": ")[1] for p in lint.lint_file(broken)}
    assert {"MESSAGE_PASCAL_CASE", "FIELD_LOWER_SNAKE_CASE", "ENUM_ZERO_VALUE_SUFFIX", "RPC_REQUEST_STANDARD_NAME",
            "RPC_REQUEST_RESPONSE_UNIQUE", "COMMENT_MESSAGE", "COMMENT_RPC"} <= rules
