"""Property-based fuzzing of the gRPC service: malformed requests never crash or wedge it.

CI runs 150 examples; `pytest -m slow tests/test_server_fuzz.py` runs the full 10,000.
"""

import resource
import shutil

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckm_edge.runtime.api import pb
from ckm_edge.runtime.client import EdgeClient
from ckm_edge.runtime.operators import Downsample
from ckm_edge.runtime.server import ServerConfig, create_server

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def fuzz_server(tiny_package, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-repo")
    shutil.copytree(tiny_package.root, root / "tiny" / "1.0.0")
    server = create_server(ServerConfig(repository=root, port=0, poll_seconds=0, engine_threads=1)).start()
    with EdgeClient(f"127.0.0.1:{server.port}") as client:
        yield server, client
    server.stop(0)


def tensors():
    dims = st.one_of(st.integers(-2, 40), st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1]))
    shape = st.lists(dims, min_size=0, max_size=5)
    dtype = st.sampled_from([0, 1, 2, 3, 7])
    return st.builds(lambda s, d, data: pb.Tensor(shape=s, dtype=d, data=data), shape, dtype, st.binary(max_size=9000))


def operators_(depth=2):
    leaf = st.one_of(
        st.builds(lambda t: pb.Operator(mask=pb.MaskOperator(mask=t)), tensors()),
        st.builds(lambda f: pb.Operator(downsample=pb.DownsampleOperator(factor=f)), st.integers(-3, 70)),
        st.builds(lambda a, b: pb.Operator(truncate=pb.TruncateOperator(low=a, high=b)), st.floats(allow_nan=True),
                  st.floats(allow_nan=True)),
        st.builds(lambda k, b: pb.Operator(quantize_aoa=pb.QuantizeAoaOperator(sectors=k, building=b)),
                  st.integers(-5, 100), st.one_of(st.none(), tensors())),
        st.just(pb.Operator(identity=pb.IdentityOperator())),
        st.just(pb.Operator()),
    )
    if depth == 0:
        return leaf
    wide = st.builds(lambda n: pb.Operator(compose=pb.ComposeOperator(operators=[pb.Operator(identity=pb.IdentityOperator())] * n)),
                     st.integers(0, 5000))  # many operators in a small message
    sub = st.lists(operators_(depth - 1), max_size=3)
    return st.one_of(leaf, wide, st.builds(lambda ops: pb.Operator(per_channel=pb.PerChannelOperator(operators=ops)), sub),
                     st.builds(lambda ops: pb.Operator(compose=pb.ComposeOperator(operators=ops)), sub))


def _request(obs, op, steps, samples, corr, zeta, prec, name, version, seed, units, sampler, params, sigma, site):
    req = pb.ConstructRequest(observation=obs, operator=op, steps=steps, samples=samples, corrector_steps=corr, zeta=zeta,
                              precision=prec, model_name=name, model_version=version, seed=seed, output_units=units,
                              sampler=sampler, sampler_parameters=params, noise_sigma=sigma)
    if site is not None:
        req.site.building.CopyFrom(site)
    return req


requests = st.builds(
    _request, tensors(), operators_(), st.integers(-5, 4), st.integers(-2, 3), st.integers(-1, 2),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 5), st.sampled_from(["", "tiny", "nope"]),
    st.sampled_from(["", "1.0.0", "0.0.0", "x"]), st.integers(0, 2**64 - 1), st.integers(-1, 99),
    st.sampled_from(["", "diffpir", "daps", "dps", "ddrm"]),
    st.dictionaries(st.sampled_from(["lam", "zeta", "start", "corrector_steps", "x"]),
                    st.floats(allow_nan=True, allow_infinity=True), max_size=2),
    st.one_of(st.floats(-1, 2), st.just(float("nan"))), st.one_of(st.none(), tensors()))


@pytest.mark.parametrize("examples", [150, pytest.param(10_000, marks=pytest.mark.slow)])
def test_malformed_requests_never_crash_the_server(fuzz_server, examples):
    server, client = fuzz_server
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    sent = []

    @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(requests)
    def check(req):
        sent.append(1)
        try:
            client.stub.Construct(req, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        assert code in ALLOWED, (code, req)

    check()
    assert len(sent) >= examples  # every example really went over the wire
    # Still serving, and memory did not run away.
    good = client.request(np.zeros((2, 16, 16), np.float32), Downsample(2), steps=2)
    assert client.stub.Construct(good).steps == 2
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert growth_mib < 500, growth_mib
