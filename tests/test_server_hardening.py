"""What an independent client found in the edge service (issue 18), each over a real loopback server.

Requests here are built as raw protobuf messages or raw bytes, as a client in another language
would send them: the .proto is the contract, not our Python client.
"""

import logging
import resource
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2
from test_server import _observation, repo  # noqa: F401 (a module-scoped fixture: this module's own copy)

from ckm_edge.runtime import api, operators
from ckm_edge.runtime.api import pb
from ckm_edge.runtime.client import EdgeClient
from ckm_edge.runtime.server import ServerConfig, create_server, read_tokens

METRICS = "ckm_requests_total"


@pytest.fixture(scope="module")
def edge(repo):
    server = create_server(ServerConfig(repository=repo, port=0, metrics_port=0, poll_seconds=0, engine_threads=1,
                                        max_batch=8, max_queue_delay_ms=20)).start()
    yield server
    server.stop(0)


@pytest.fixture()
def client(edge):
    with EdgeClient(f"127.0.0.1:{edge.port}") as c:
        yield c


def _code(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def _count(edge, name, **labels):
    return edge.metrics.registry.get_sample_value(name, labels) or 0.0


# 1. amplification -------------------------------------------------------------------------------
def test_operator_count_and_work_are_capped(edge, client, tiny_prior):
    _, _, y = _observation(tiny_prior, "iprandom")
    req = client.request(y, operators.Identity(), steps=1)
    req.operator.Clear()
    req.operator.compose.operators.extend([pb.Operator(identity=pb.IdentityOperator())] * 20_000)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    code, details = _code(client.stub.Construct, req, timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "operator holds more than 64 operators" in details
    assert time.perf_counter() - t0 < 5
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024 < 200  # MiB
    # the work a request may ask for: samples x network calls per sample
    meta = client.metadata()
    assert meta.max_operators == 64 and meta.max_evaluations == 20_000 and meta.max_samples == 8
    code, details = _code(client.stub.Construct, client.request(y, operators.Identity(), sampler="dps", steps=1000,
                                                                samples=8, corrector_steps=2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "31984 network evaluations" in details and "20000" in details


# 2. shape overflow ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,data", [([2**32, 2**32], b""), ([2, 2**62, 2], b""), ([2**63 - 1, 2], b"\0" * 8),
                                        ([2**31, 2**31, 4], b"")])
def test_shapes_whose_element_count_overflows_are_invalid_arguments(client, tiny_prior, shape, data):
    _, op, y = _observation(tiny_prior)
    req = client.request(y, op, steps=1)
    req.observation.CopyFrom(pb.Tensor(shape=shape, dtype=pb.DATA_TYPE_FLOAT32, data=data))
    code, details = _code(client.stub.Construct, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("observation has")
    assert "more than the limit" in details and "-" not in details.split("elements")[0]


# 3. deadlines and cancellation --------------------------------------------------------------------
def test_deadlines_and_cancellations_are_counted_as_such_without_a_traceback(edge, client, tiny_prior, caplog):
    _, op, y = _observation(tiny_prior, "iprandom")
    before = {c: _count(edge, METRICS, method=m, code=c) for m, c in
              [("Construct", "DEADLINE_EXCEEDED"), ("Construct", "INTERNAL"), ("ConstructStream", "CANCELLED"),
               ("Construct", "CANCELLED"), ("ConstructStream", "OK")]}
    with caplog.at_level(logging.INFO):
        code, _ = _code(client.construct, y, op, sampler="dps", steps=500, timeout=0.3)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        future = client.stub.Construct.future(client.request(y, op, sampler="dps", steps=500))
        time.sleep(0.3)
        future.cancel()
        stream = client.stub.ConstructStream(pb.ConstructStreamRequest(request=client.request(y, op, sampler="dps", steps=500)))
        next(stream)
        stream.cancel()
        deadline = time.time() + 30
        while time.time() < deadline and (
                _count(edge, METRICS, method="Construct", code="DEADLINE_EXCEEDED") == before["DEADLINE_EXCEEDED"]
                or _count(edge, METRICS, method="Construct", code="CANCELLED") == before["CANCELLED"]
                or _count(edge, METRICS, method="ConstructStream", code="CANCELLED") == before["CANCELLED"]):
            time.sleep(0.05)
    assert _count(edge, METRICS, method="Construct", code="DEADLINE_EXCEEDED") == before["DEADLINE_EXCEEDED"] + 1
    assert _count(edge, METRICS, method="Construct", code="CANCELLED") >= 1
    assert _count(edge, METRICS, method="ConstructStream", code="CANCELLED") >= 1
    assert _count(edge, METRICS, method="Construct", code="INTERNAL") == before["INTERNAL"]
    assert _count(edge, METRICS, method="ConstructStream", code="OK") == before["OK"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


# 4. authentication --------------------------------------------------------------------------------
def test_an_empty_or_unreadable_token_file_refuses_to_start(repo, tmp_path, capsys):
    from ckm_edge.runtime import cli

    empty = tmp_path / "tokens"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="holds no token"):
        read_tokens(empty)
    with pytest.raises(ValueError, match="cannot read"):
        read_tokens(tmp_path / "missing")
    assert cli.main(["serve", "--repository", str(repo), "--port", "0", "--token-file", str(empty)]) == 2
    assert "holds no token" in capsys.readouterr().err
    with pytest.raises(ValueError, match="non-empty"):
        ServerConfig(repository=repo, tokens=("",))


def test_bearer_scheme_is_case_insensitive_and_refusals_are_counted(repo, tiny_prior):
    server = create_server(ServerConfig(repository=repo, port=0, poll_seconds=0, engine_threads=1, tokens=("s3cret",))).start()
    try:
        _, op, y = _observation(tiny_prior)
        with EdgeClient(f"127.0.0.1:{server.port}") as c:
            req = c.request(y, op, steps=1)
            for header in ("bearer s3cret", "BEARER s3cret", "Bearer  s3cret"):
                assert c.stub.Construct(req, metadata=(("authorization", header),)).steps == 1
            for header in ("Bearer s3cre", "Basic s3cret", "s3cret", "Bearer"):
                code, _ = _code(c.stub.Construct, req, metadata=(("authorization", header),))
                assert code == grpc.StatusCode.UNAUTHENTICATED, header
        assert _count(server, "ckm_rejected_requests_total", reason="auth") == 4
    finally:
        server.stop(0)


# 5. the batcher ---------------------------------------------------------------------------------
def test_batcher_is_fifo_within_a_key_and_fair_across_keys(repo, tiny_package, tiny_prior):
    """One worker, a backlog of one kind of job, then one job of another kind: the other kind runs
    next (not after the backlog), and each kind leaves in arrival order."""
    from ckm_edge.runtime import executor
    from ckm_edge.runtime.batcher import Batcher, BatcherConfig, Pending
    from ckm_edge.runtime.diffpir import DiffPIRConfig
    from ckm_edge.runtime.repository import ModelRepository

    model = ModelRepository(repo).resolve("tiny")
    _, op, y = _observation(tiny_prior)

    def pending(steps, seed, **kw):
        job = executor.plan(model, op, y, (2, 32, 32), executor.ConstructConfig(steps, 1, seed, sampler=DiffPIRConfig()))
        for k, v in kw.items():
            setattr(job, k, v)
        return Pending(job)

    gate = threading.Event()
    order = []
    batcher = Batcher(BatcherConfig(max_batch=1, max_queue_delay_ms=0, max_queue=16))
    try:
        blocker = pending(2, 0, on_step=lambda *a: gate.wait(10))
        batcher.submit(blocker)
        time.sleep(0.2)  # the worker is inside the blocker's batch
        jobs = [pending(2, i) for i in range(4)]
        jobs.append(pending(3, 99))  # another key: 3 steps
        jobs.append(pending(2, 4))
        for p in jobs:
            p.job.on_step = lambda done, total, r, seed=p.job.config.seed: order.append(seed) if done == total else None
            batcher.submit(p)
        gate.set()
        for p in [blocker] + jobs:
            assert p.done.wait(60) and p.error is None
    finally:
        batcher.stop()
    assert order.index(99) <= 1  # not starved behind the backlog of the other key
    assert [s for s in order if s != 99] == [0, 1, 2, 3, 4]  # FIFO within a key


def test_background_jobs_wait_for_queued_interactive_ones_and_do_not_fill_the_queue(repo, tiny_prior):
    """A living map's rebuild (Pending.background) queued before interactive constructions runs
    after them, of the same key or not, and never makes an interactive job QueueFull."""
    from ckm_edge.runtime import executor
    from ckm_edge.runtime.batcher import Batcher, BatcherConfig, Pending, QueueFull
    from ckm_edge.runtime.diffpir import DiffPIRConfig
    from ckm_edge.runtime.repository import ModelRepository

    model = ModelRepository(repo).resolve("tiny")
    _, op, y = _observation(tiny_prior)

    def pending(steps, seed, background=False):
        job = executor.plan(model, op, y, (2, 32, 32), executor.ConstructConfig(steps, 1, seed, sampler=DiffPIRConfig()))
        return Pending(job, background=background)

    gate = threading.Event()
    order = []
    batcher = Batcher(BatcherConfig(max_batch=1, max_queue_delay_ms=0, max_queue=2))
    try:
        blocker = pending(2, 0)
        blocker.job.on_step = lambda *a: gate.wait(10)
        batcher.submit(blocker)
        time.sleep(0.2)  # the worker is inside the blocker's batch
        jobs = [pending(2, 100, background=True), pending(3, 101, background=True), pending(2, 102, background=True),
                pending(2, 1), pending(3, 2)]
        for p in jobs:
            p.job.on_step = lambda done, total, r, seed=p.job.config.seed: order.append(seed) if done == total else None
            batcher.submit(p)  # three background jobs and two interactive ones: max_queue 2 still admits them
        with pytest.raises(QueueFull):
            batcher.submit(pending(2, 3))
        gate.set()
        for p in [blocker] + jobs:
            assert p.done.wait(60) and p.error is None
    finally:
        batcher.stop()
    assert sorted(order[:2]) == [1, 2] and sorted(order[2:]) == [100, 101, 102]


def test_mixed_settings_load_with_retrying_clients_never_stalls(repo, tiny_prior):
    """The stall the old batcher had: a small queue, mixed keys, clients that retry on
    RESOURCE_EXHAUSTED. Every client gets all its answers; nothing is INTERNAL."""
    from ckm_edge.benchmarks import load

    server = create_server(ServerConfig(repository=repo, port=0, poll_seconds=0, engine_threads=1, max_batch=4,
                                        max_queue=3, max_queue_delay_ms=5)).start()
    try:
        _, op, y = _observation(tiny_prior)
        result = load.run_level(f"127.0.0.1:{server.port}", y, op, clients=8, duration_s=4.0,
                                request_kwargs=load.MIXED, edge=server, retry=True)
    finally:
        server.stop(0)
    assert result.errors == 0 and result.requests >= 8 and result.retries > 0
    assert result.stalled_s < 3.0  # longest time with clients waiting and nothing completing
    assert _count(server, METRICS, method="Construct", code="INTERNAL") == 0
    assert result.peak_rss_mib > 0


# 6. unvalidated fields ----------------------------------------------------------------------------
def test_unknown_enum_values_and_out_of_range_observations_are_refused(client, tiny_prior):
    _, op, y = _observation(tiny_prior)
    req = client.request(y, op, steps=1)
    req.output_units = 99
    code, details = _code(client.stub.Construct, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "output_units 99" in details
    huge = y.copy()
    huge[0, 0, 0] = 1e30
    code, details = _code(client.construct, huge, op, steps=1)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "observation values must lie in [-1, 2]" in details


# 7. messages ------------------------------------------------------------------------------------
def test_messages_say_what_was_wrong_and_where(client, tiny_prior):
    _, op, y = _observation(tiny_prior, "iprandom")  # a mask operator, y (2, 32, 32)
    code, details = _code(client.construct, np.stack([y, y]), op, steps=1)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "observation has shape [2, 2, 32, 32]" in details and "produces [2, 32, 32]" in details
    req = client.request(y, op, steps=1)
    mask = np.ones((32, 32), np.uint8)
    mask[3, 4] = 2
    req.operator.mask.mask.CopyFrom(api.from_numpy(mask))
    code, details = _code(client.stub.Construct, req)
    assert "operator.mask.mask must hold only 0 and 1, got 2 at [3, 4]" in details
    # an operator fault is reported under the operator's own field path, not the observation's
    req.operator.Clear()
    req.operator.compose.operators.extend([pb.Operator(identity=pb.IdentityOperator()),
                                           pb.Operator(mask=pb.MaskOperator(mask=api.from_numpy(np.ones((16, 16), np.uint8))))])
    code, details = _code(client.stub.Construct, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("operator.compose.operators[1].mask: does not fit its input of shape [2, 32, 32]")


# 8. reproducibility -------------------------------------------------------------------------------
def test_deterministic_mode_is_bitwise_reproducible_alone_and_batched(repo, tiny_prior):
    server = create_server(ServerConfig(repository=repo, port=0, poll_seconds=0, deterministic=True, max_batch=8,
                                        max_queue_delay_ms=300)).start()
    try:
        _, op, y = _observation(tiny_prior, "iprandom")
        with EdgeClient(f"127.0.0.1:{server.port}") as c:
            alone = [c.construct(y, op, steps=4, samples=2, seed=7) for _ in range(2)]
            assert alone[0].deterministic and c.metadata().deterministic
            np.testing.assert_array_equal(alone[0].map, alone[1].map)
            batched = [None] * 3
            def run(i):
                batched[i] = c.construct(y, op, steps=4, samples=2, seed=7 if i == 0 else i)
            threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert server.metrics.batch_rows.collect()[0].samples  # batches ran
        rows = server.metrics.registry.get_sample_value("ckm_batch_rows_sum")
        count = server.metrics.registry.get_sample_value("ckm_batch_rows_count")
        assert rows / count > 2  # some requests shared a batch
        np.testing.assert_array_equal(batched[0].map, alone[0].map)
    finally:
        server.stop(0)


# 9. memory under load -----------------------------------------------------------------------------
def test_batch_memory_is_bounded_by_the_measured_per_row_memory(repo, tiny_prior):
    from ckm_edge.runtime import memory
    from ckm_edge.runtime.repository import ModelRepository

    pkg = ModelRepository(repo).resolve("tiny").package
    per_row = memory.row_bytes(pkg, "fp32", False)
    assert per_row > 0 and memory.row_bytes(pkg, "fp32", True) > per_row  # the VJP path keeps activations
    budget_mib = 2.5 * per_row / 2**20  # room for two rows of the score-only samplers
    server = create_server(ServerConfig(repository=repo, port=0, metrics_port=0, poll_seconds=0, engine_threads=1,
                                        max_batch=8, max_queue_delay_ms=100, max_batch_memory_mib=budget_mib)).start()
    try:
        _, op, y = _observation(tiny_prior)
        with EdgeClient(f"127.0.0.1:{server.port}") as c:
            code, details = _code(c.construct, y, op, sampler="diffpir", steps=2, samples=3)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith("samples: 3 posterior samples")
            threads = [threading.Thread(target=c.construct, args=(y, op), kwargs=dict(sampler="diffpir", steps=2, samples=1, seed=i))
                       for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        reg = server.metrics.registry
        assert reg.get_sample_value("ckm_batch_rows_bucket", {"le": "2.0"}) == reg.get_sample_value("ckm_batch_rows_count")
        assert reg.get_sample_value("ckm_batch_memory_budget_bytes") == int(budget_mib * 2**20)
        assert reg.get_sample_value("ckm_rejected_requests_total", {"reason": "memory"}) == 1
        assert reg.get_sample_value("process_resident_memory_bytes") > 0
    finally:
        server.stop(0)


# 10. metrics and reflection -----------------------------------------------------------------------
def test_metrics_follow_prometheus_conventions_and_count_rejections(edge, client, tiny_prior):
    _, op, y = _observation(tiny_prior)
    client.construct(y, op, steps=2)
    raw = client.channel.unary_unary(f"/{api.SERVICE_NAME}/Construct")  # bytes in, bytes out
    code, details = _code(raw, b"\xff\xff\xff\xff", timeout=5)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid ckm.edge.v1.ConstructRequest" in details
    _code(client.construct, y, op, version="9.9.9", steps=1)  # NOT_FOUND before any model resolved
    text = urllib.request.urlopen(f"http://127.0.0.1:{edge.metrics_port}/metrics", timeout=5).read().decode()
    for series in ('ckm_requests_total{code="OK",method="Construct"}',
                   'ckm_request_duration_seconds_bucket{code="OK",le="0.5",method="Construct"}',
                   'ckm_requests_total{code="NOT_FOUND",method="Construct"}',
                   'ckm_rejected_requests_total{reason="decode"} 1.0',
                   'ckm_model_requests_total{code="OK",model="tiny",version="1.0.0"}',
                   "ckm_queue_wait_seconds_bucket", "ckm_compute_seconds_bucket", 'ckm_inflight_requests{method="Construct"} 0.0',
                   "ckm_batch_memory_bytes 0.0", "process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert series in text, series
    assert 'model=""' not in text and 'version=""' not in text


def test_reflection_v1_and_v1alpha(client):
    for version in ("v1", "v1alpha"):
        call = client.channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        names = {s.name for r in call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
                 for s in r.list_services_response.service}
        assert {api.SERVICE_NAME, "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
