"""One operator registry: a new operator added through it alone works in specs, the API and over gRPC."""

import shutil
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from ckm_edge.runtime import api, operators
from ckm_edge.runtime.api import pb
from ckm_edge.runtime.client import EdgeClient
from ckm_edge.runtime.construct import ConstructConfig, construct
from ckm_edge.runtime.engine import EngineConfig, open_engine
from ckm_edge.runtime.recommend import resolve
from ckm_edge.runtime.server import ServerConfig, create_server


@dataclass(frozen=True)
class Attenuate(operators.Operator):
    """A toy operator: y = gain * x (a receiver with a known loss), never mentioned in the .proto."""

    gain: float = 0.5
    name = "toy_attenuate"
    linear = True

    def __post_init__(self):
        if not 0 < self.gain <= 1:
            raise operators.OperatorError(f"gain must be in (0, 1], got {self.gain}")

    def forward(self, x):
        return self.gain * np.asarray(x, np.float32)

    def vjp(self, x, v):
        return self.gain * np.asarray(v, np.float32)


@pytest.fixture()
def registered():
    operators.register_operator(Attenuate)
    yield Attenuate
    operators.unregister_operator(Attenuate.name)


def test_registry_drives_specs_errors_and_messages(registered):
    op = operators.from_spec({"op": "toy_attenuate", "gain": 0.25})
    assert op == Attenuate(0.25) and op.to_spec() == {"op": "toy_attenuate", "gain": 0.25}
    assert "toy_attenuate" in operators.known()
    with pytest.raises(operators.OperatorError, match="has no parameter"):
        operators.from_spec({"op": "toy_attenuate", "loss": 3})
    with pytest.raises(operators.OperatorError, match=r"unknown operator 'blur'; known: .*toy_attenuate"):
        operators.from_spec({"op": "blur"})
    msg = api.operator_to_proto(operators.Compose((Attenuate(0.5), operators.Downsample(2))))
    assert msg.compose.operators[0].named.name == "toy_attenuate"  # no typed message: the generic one
    assert msg.compose.operators[1].HasField("downsample")
    back = api.operator_from_proto(msg, shape=(2, 8, 8))
    assert back.to_spec() == {"op": "compose", "operators": [{"op": "toy_attenuate", "gain": 0.5},
                                                             {"op": "downsample", "factor": 2}]}
    operators.unregister_operator("toy_attenuate")
    with pytest.raises(api.InvalidArgument, match="operator.named.name: unknown operator 'toy_attenuate'"):
        api.operator_from_proto(pb.Operator(named=pb.NamedOperator(name="toy_attenuate")))


def test_a_registered_toy_operator_works_end_to_end_over_grpc(registered, tiny_package, tiny_prior, tmp_path):
    *_, evl = tiny_prior
    x = evl[:1]
    op = Attenuate(0.5)
    y = op.forward(x)[0] + 0.01 * np.random.default_rng(0).standard_normal(x.shape[1:]).astype(np.float32)
    shutil.copytree(tiny_package.root, tmp_path / "tiny" / "1.0.0")
    server = create_server(ServerConfig(repository=tmp_path, port=0, poll_seconds=0, engine_threads=1)).start()
    try:
        with EdgeClient(f"127.0.0.1:{server.port}") as client:
            assert "toy_attenuate" in client.metadata().operators
            remote = client.construct(y, op, sampler="diffpir", steps=3, samples=2, seed=5, noise_sigma=0.01)
            bad = client.request(y, op, steps=2)
            bad.operator.named.numbers["gain"] = 3.0
            with pytest.raises(grpc.RpcError) as err:
                client.stub.Construct(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("operator.named: gain must be in (0, 1], got 3.0")
    finally:
        server.stop(0)
    cfg, steps, samples = resolve(tiny_package.manifest.samplers, op, "diffpir", {}, 3, 2)  # what the server resolved
    assert remote.sampler_parameters == {k: float(v) for k, v in vars(cfg).items()}
    with open_engine(tiny_package, EngineConfig(threads=1)) as engine:
        local = construct(engine, tiny_package.schedule(), op, y, (2, 32, 32),
                          ConstructConfig(steps, samples, 5, sampler=cfg), sigma=0.01)
    np.testing.assert_allclose(remote.map, local.mean, atol=1e-5)
    assert remote.residual_norm < np.sqrt(y.size) * 0.05  # the map explains what was observed
