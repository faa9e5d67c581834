"""The gRPC edge service over real loopback channels."""

import datetime
import shutil
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ckm_edge.runtime import api, codec, operators, tasks
from ckm_edge.runtime.api import pb
from ckm_edge.runtime.client import EdgeClient
from ckm_edge.runtime.construct import ConstructConfig, construct
from ckm_edge.runtime.engine import EngineConfig, open_engine
from ckm_edge.runtime.recommend import recommend, resolve
from ckm_edge.runtime.sampler import SAMPLERS
from ckm_edge.runtime.server import ServerConfig, create_server
from ckm_edge.runtime.site import Site


@pytest.fixture(scope="module")
def repo(tiny_package, tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(tiny_package.root, root / "tiny" / "1.0.0")
    return root


@pytest.fixture(scope="module")
def edge(repo):
    server = create_server(ServerConfig(repository=repo, port=0, metrics_port=0, poll_seconds=0.2, engine_threads=1,
                                        max_batch=8, max_queue_delay_ms=50)).start()
    yield server
    server.stop(0)


@pytest.fixture()
def client(edge):
    with EdgeClient(f"127.0.0.1:{edge.port}") as c:
        yield c


def _observation(tiny_prior, task="sr2", seed=0):
    *_, evl = tiny_prior
    x = evl[:1]
    rng = np.random.default_rng(seed)
    op = tasks.make_operator(task, rng, x)
    if isinstance(op, operators.Mask):
        op = operators.Mask(op.mask[0])
    return x[0], op, tasks.observe(op, x, rng)[0]


def test_construct_and_metadata(client, tiny_prior):
    x, op, y = _observation(tiny_prior)
    result = client.construct(y, op, steps=6, samples=2, seed=1)
    assert result.map.shape == (2, 32, 32) and result.std.shape == (2, 32, 32)
    assert (result.map >= 0).all() and (result.map <= 1).all() and result.steps == 6
    assert (result.model, result.version) == ("tiny", "1.0.0") and result.residual_norm > 0
    assert result.timings["total_s"] >= result.timings["sampling_s"] > 0
    phys = client.construct(y, op, steps=6, physical=True, seed=1)
    expected = codec.decode(client.construct(y, op, steps=6, seed=1).map, clip=True)
    np.testing.assert_allclose(phys.map[0], expected.gain_db, rtol=1e-5)
    meta = client.metadata()
    assert meta.name == "tiny" and meta.tile_size == 32 and list(meta.precisions) == ["fp32", "fp16", "int8"]
    assert "downsample" in meta.operators and meta.max_steps == 1000
    assert client.list_models() == [("tiny", "1.0.0")]


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("task", tasks.TASKS)
def test_every_sampler_and_task_over_grpc_equals_the_local_construction(client, tiny_prior, tiny_package, task, sampler):
    x, op, y = _observation(tiny_prior, task, seed=5)
    building = codec.building_mask(x) if task in ("trajectory", "ipbox") else None  # with and without a site map
    params = {"corrector_steps": 1} if sampler == "dps" else {}
    remote = client.construct(y, op, sampler=sampler, sampler_parameters=params, steps=3, samples=2, seed=4,
                              noise_sigma=0.01, site=building)
    cfg, steps, samples = resolve(tiny_package.manifest.samplers, op, sampler, params, 3, 2, building is not None)
    with open_engine(tiny_package, EngineConfig(threads=1)) as engine:
        local = construct(engine, tiny_package.schedule(), op, y, (2, 32, 32), ConstructConfig(steps, samples, 4, sampler=cfg),
                          sigma=0.01, site=None if building is None else Site(building))
    # The operator (masks, building layout, quantizer, truncation window), the site map and the
    # sampler's settings crossed the wire intact.
    np.testing.assert_allclose(remote.map, local.mean, atol=1e-5)
    np.testing.assert_allclose(remote.std, local.std, atol=1e-5)
    assert remote.residual_norm == pytest.approx(local.residual, rel=1e-4, abs=1e-6)
    assert (remote.sampler, remote.samples, remote.steps) == (sampler, 2, 3)
    assert remote.sampler_parameters == {p["name"]: float(getattr(cfg, p["name"])) for p in SAMPLERS[sampler].parameters()}


def test_cells_saturated_below_any_real_path_are_served_as_no_path(client, tiny_prior):
    """The server's batched path finishes a construction as `construct` does: a JTQR gain saturated
    under the weakest real path comes back as exactly the codec's no-path value."""
    x, op, _ = _observation(tiny_prior, "jtqr", seed=5)
    x = x.copy()
    gone = np.zeros((32, 32), bool)
    gone[20:, 20:] = True
    gone &= ~codec.building_mask(x)
    x[0][gone], x[1][gone] = codec.NO_PATH_PIXELS
    y = op.forward(x[None])[0]
    y = y + 0.005 * np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    remote = client.construct(y, op, sampler="diffpir", steps=2, samples=2, seed=3, noise_sigma=0.005)
    assert gone.sum() > 10
    np.testing.assert_array_equal(remote.map[:, gone], np.array(codec.NO_PATH_PIXELS, np.float32)[:, None].repeat(gone.sum(), 1))


def test_the_recommendation_fills_what_a_request_leaves_out(client, tiny_prior, tiny_package):
    _, op, y = _observation(tiny_prior, "sr2")
    rec = recommend(tiny_package.manifest.samplers, op)  # the recommendation for a downsampling operator
    result = client.construct(y, op, seed=2)  # no sampler, steps or samples
    assert (result.sampler, result.steps, result.samples) == (rec.sampler, rec.steps, rec.samples)
    assert all(result.sampler_parameters[k] == pytest.approx(v) for k, v in rec.parameters.items())
    # a parameter given overrides the recommendation; the rest stays
    key = next(iter(rec.parameters))
    one = client.construct(y, op, seed=2, steps=2, sampler_parameters={key: rec.parameters[key] * 0.5})
    assert one.sampler_parameters[key] == pytest.approx(rec.parameters[key] * 0.5)
    # the DPS shorthands select DPS, with the API's corrector default of 0
    dps = client.construct(y, op, steps=2, zeta=5.0)
    assert dps.sampler == "dps" and dps.sampler_parameters["zeta"] == 5.0 and dps.sampler_parameters["corrector_steps"] == 0
    meta = client.metadata()
    assert {s.name for s in meta.samplers} == set(SAMPLERS)
    diffpir = next(s for s in meta.samplers if s.name == "diffpir")
    assert not diffpir.uses_network_vjp and next(s for s in meta.samplers if s.name == "dps").uses_network_vjp
    lam = next(p for p in diffpir.parameters if p.name == "lam")
    assert lam.type == "float" and lam.HasField("min") and lam.description
    assert {r.operator_kind for r in meta.recommended} >= {"*"}


@pytest.mark.parametrize("kwargs,field", [
    (dict(sampler="ddrm"), "sampler: unknown sampler 'ddrm'; known: daps, diffpir, dps"),
    (dict(sampler="diffpir", sampler_parameters={"zeta": 3}), "sampler 'diffpir' has no parameter 'zeta'"),
    (dict(sampler="diffpir", sampler_parameters={"lam": float("nan")}), "lam must be a finite number"),
    (dict(sampler="diffpir", sampler_parameters={"stochasticity": 2}), "stochasticity must be in [0.0, 1.0], got 2"),
    (dict(sampler="dps", sampler_parameters={"corrector_steps": 1.5}), "corrector_steps must be an integer"),
    (dict(sampler="dps", sampler_parameters={"jacobian_free": 3}), "jacobian_free is a switch"),
    (dict(sampler="diffpir", zeta=3.0), "zeta: DPS-only, but the sampler is 'diffpir'"),
    (dict(zeta=3.0, sampler_parameters={"zeta": 4}), "zeta also given as the sampler parameter"),
    (dict(corrector_steps=50), "corrector_steps must be in [0, 20], got 50"),
    (dict(sampler="diffpir", sampler_parameters={"start": 0.1}, steps=500), "steps: steps must be in [1, 100] (start 0.1"),
    (dict(sampler="diffpir", sampler_parameters={"restart": 0.01, "restart_steps": 50}, steps=5),
     "steps: restart_steps: steps must be in [1, 10] (start 0.01"),
    (dict(site=np.ones((16, 16), bool)), "site.building: site building map has shape (16, 16), the maps are (2, 32, 32)"),
    (dict(site=np.full((32, 32), 2)), "site.building must hold only 0 and 1, got 2"),
    (dict(noise_sigma=float("inf")), "noise_sigma must be in [0, 1] pixels"),
    (dict(noise_sigma=3.0), "noise_sigma must be in [0, 1] pixels"),
])
def test_sampler_and_site_errors_name_the_field(client, tiny_prior, kwargs, field):
    _, op, y = _observation(tiny_prior, "sr2")
    with pytest.raises(grpc.RpcError) as err:
        client.construct(y, op, **{"steps": 2, **kwargs})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_operator_that_does_not_fit_the_tile_is_refused_before_batching(client, tiny_prior):
    _, _, y = _observation(tiny_prior, "ipbox")
    small = operators.Mask(np.ones((16, 16), bool))
    with pytest.raises(grpc.RpcError) as err:
        client.construct(np.zeros((2, 16, 16), np.float32), small, steps=2)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not fit" in err.value.details()
    jtqr = operators.jtqr(building=np.zeros((8, 8), bool))
    with pytest.raises(grpc.RpcError) as err:
        client.construct(y, jtqr, steps=2)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "building" in err.value.details()


def test_client_cancellation_stops_the_batch(edge, client, tiny_prior):
    _, op, y = _observation(tiny_prior, "iprandom")
    before = edge.metrics.registry.get_sample_value("ckm_abandoned_batches_total") or 0.0
    call = client.stub.ConstructStream(pb.ConstructStreamRequest(request=client.request(y, op, sampler="dps", steps=1000),
                                                                 progress_interval=1))
    steps_seen = [event.progress.step for _, event in zip(range(3), call)]
    assert steps_seen == [1, 2, 3]
    call.cancel()
    deadline = time.time() + 60
    while (edge.metrics.registry.get_sample_value("ckm_abandoned_batches_total") or 0.0) == before and time.time() < deadline:
        time.sleep(0.05)
    assert edge.metrics.registry.get_sample_value("ckm_abandoned_batches_total") == before + 1
    assert client.construct(y, op, steps=2).steps == 2  # and the server goes on serving


def test_stream_reports_every_step_then_the_result(client, tiny_prior):
    _, op, y = _observation(tiny_prior, "iprandom")
    events = list(client.construct_stream(y, op, steps=5))
    progress = [e[1] for e in events if e[0] == "progress"]
    assert [p[0] for p in progress] == [1, 2, 3, 4, 5] and all(p[1] == 5 for p in progress)
    assert events[-1][0] == "result" and events[-1][1].map.shape == (2, 32, 32)
    # a DiffPIR restart runs 2 more steps: progress counts them, to the end, without going back
    events = list(client.construct_stream(y, op, steps=5, sampler="diffpir", samples=1,
                                          sampler_parameters={"restart": 0.5, "restart_steps": 2}))
    progress = [e[1] for e in events if e[0] == "progress"]
    assert [p[0] for p in progress] == [1, 2, 3, 4, 5, 6, 7] and all(p[1] == 7 for p in progress)
    assert events[-1][0] == "result"


def test_concurrent_requests_are_batched_and_equal_single_runs(edge, client, tiny_prior):
    _, op, y = _observation(tiny_prior, "sr2")
    alone = client.construct(y, op, steps=4, samples=1, seed=3).map
    before = edge.metrics.batch_rows.collect()[0].samples
    count_before = sum(s.value for s in before if s.name.endswith("_count"))
    sum_before = sum(s.value for s in before if s.name.endswith("_sum"))
    results = [None] * 4
    def run(i):
        results[i] = client.construct(y, op, steps=4, samples=1, seed=3).map
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_allclose(r, alone, atol=1e-5)
    after = edge.metrics.batch_rows.collect()[0].samples
    batches = sum(s.value for s in after if s.name.endswith("_count")) - count_before
    rows = sum(s.value for s in after if s.name.endswith("_sum")) - sum_before
    assert rows == 4 and batches < 4  # at least two requests shared one engine batch


def test_load_benchmark_reports_throughput_percentiles_and_batching(edge, tiny_prior):
    from ckm_edge.benchmarks import load

    _, op, y = _observation(tiny_prior, "sr2")
    level = load.run_level(f"127.0.0.1:{edge.port}", y, op, clients=3, duration_s=1.0,
                           request_kwargs={"steps": 2, "samples": 1}, edge=edge)
    assert level.clients == 3 and level.errors == 0 and level.requests >= 3
    assert 0 < level.p50_s <= level.p95_s <= level.p99_s
    assert level.throughput_rps == pytest.approx(level.requests / level.seconds)
    assert level.mean_batch_rows is not None and 1.0 <= level.mean_batch_rows <= 3.0
    with pytest.raises(ValueError, match="clients"):
        load.run_level(f"127.0.0.1:{edge.port}", y, op, clients=0, duration_s=1.0, request_kwargs={})


@pytest.mark.parametrize("mutate,field", [
    (lambda r: r.observation.shape.__setitem__(0, 3), "observation"),
    (lambda r: setattr(r.observation, "data", r.observation.data[:-4]), "observation.data"),
    (lambda r: setattr(r.observation, "data", np.full(512, np.nan, np.float32).tobytes()), "non-finite"),
    (lambda r: setattr(r, "steps", 100000), "steps"),
    (lambda r: setattr(r, "samples", 1000), "samples"),
    (lambda r: r.ClearField("operator"), "operator is required"),
    (lambda r: r.operator.downsample.__setattr__("factor", 0), "operator.downsample"),
    (lambda r: setattr(r, "zeta", float("nan")), "zeta"),
    (lambda r: r.sampler_parameters.__setitem__("lam", -1.0), "sampler_parameters"),
    (lambda r: setattr(r, "sampler", "DPS"), "sampler"),
    (lambda r: setattr(r, "precision", 42), "precision"),
    (lambda r: setattr(r.observation, "dtype", 0), "observation.dtype"),
])
def test_invalid_requests_name_the_field_and_the_server_keeps_serving(client, tiny_prior, mutate, field):
    _, op, y = _observation(tiny_prior, "sr2")
    req = client.request(y, op, steps=3)
    mutate(req)
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Construct(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
    assert client.construct(y, op, steps=2).map.shape == (2, 32, 32)


def test_unknown_model_version_and_oversized_messages(client, tiny_prior):
    _, op, y = _observation(tiny_prior, "sr2")
    with pytest.raises(grpc.RpcError) as err:
        client.construct(y, op, version="9.9.9", steps=2)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "9.9.9" in err.value.details()
    req = client.request(y, op, steps=2)
    req.observation.data = b"\0" * (17 * 2**20)
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Construct(req)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_deadline_is_honoured_between_steps(client, tiny_prior):
    _, op, y = _observation(tiny_prior, "sr2")
    with pytest.raises(grpc.RpcError) as err:
        client.construct(y, op, sampler="dps", steps=1000, timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    t0 = time.perf_counter()
    assert client.construct(y, op, steps=2).steps == 2  # the abandoned batch stopped early
    assert time.perf_counter() - t0 < 20


def test_health_reflection_and_metrics(edge, client, tiny_prior):
    _, op, y = _observation(tiny_prior)
    client.construct(y, op, steps=2)
    health = health_pb2_grpc.HealthStub(client.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=api.SERVICE_NAME)).status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    names = {s.name for r in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
             for s in r.list_services_response.service}
    assert api.SERVICE_NAME in names and "grpc.health.v1.Health" in names
    text = urllib.request.urlopen(f"http://127.0.0.1:{edge.metrics_port}/metrics", timeout=5).read().decode()
    assert 'ckm_model_requests_total{code="OK",model="tiny",version="1.0.0"}' in text and "ckm_batch_rows_bucket" in text


def test_repository_reload_serves_new_versions(edge, repo, client, tiny_prior):
    shutil.copytree(repo / "tiny" / "1.0.0", repo / "tiny" / "1.1.0")
    manifest = (repo / "tiny" / "1.1.0" / "manifest.json")
    manifest.write_text(manifest.read_text().replace('"version": "1.0.0"', '"version": "1.1.0"'))
    deadline = time.time() + 10
    while ("tiny", "1.1.0") not in client.list_models() and time.time() < deadline:
        time.sleep(0.1)
    assert ("tiny", "1.1.0") in client.list_models()
    _, op, y = _observation(tiny_prior)
    assert client.construct(y, op, steps=2).version == "1.1.0"
    assert client.construct(y, op, steps=2, version="1.0.0").version == "1.0.0"
    shutil.rmtree(repo / "tiny" / "1.1.0")
    deadline = time.time() + 10
    while ("tiny", "1.1.0") in client.list_models() and time.time() < deadline:
        time.sleep(0.1)
    assert client.list_models() == [("tiny", "1.0.0")]  # a removed version is no longer served


def test_reload_during_load_drops_no_request(edge, repo, tiny_prior):
    _, op, y = _observation(tiny_prior, "sr2")
    results, errors = [], []

    def load(i):
        with EdgeClient(f"127.0.0.1:{edge.port}") as c:
            for k in range(6):
                try:
                    results.append(c.construct(y, op, steps=3, seed=10 * i + k).version)
                except grpc.RpcError as e:
                    errors.append((e.code(), e.details()))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    shutil.copytree(repo / "tiny" / "1.0.0", repo / "tiny" / "1.2.0")
    manifest = repo / "tiny" / "1.2.0" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": "1.0.0"', '"version": "1.2.0"'))
    for t in threads:
        t.join()
    try:
        assert errors == [], errors
        assert len(results) == 18 and set(results) <= {"1.0.0", "1.2.0"}, results
        with EdgeClient(f"127.0.0.1:{edge.port}") as c:
            deadline = time.time() + 10
            while ("tiny", "1.2.0") not in c.list_models() and time.time() < deadline:
                time.sleep(0.1)
            assert c.construct(y, op, steps=2).version == "1.2.0"
    finally:
        shutil.rmtree(repo / "tiny" / "1.2.0")
        with EdgeClient(f"127.0.0.1:{edge.port}") as c:
            deadline = time.time() + 10
            while ("tiny", "1.2.0") in c.list_models() and time.time() < deadline:
                time.sleep(0.1)


def test_health_follows_the_repository(tiny_package, tmp_path):
    server = create_server(ServerConfig(repository=tmp_path, port=0, poll_seconds=0.1, engine_threads=1)).start()
    try:
        with EdgeClient(f"127.0.0.1:{server.port}") as c:
            health = health_pb2_grpc.HealthStub(c.channel)

            def status():
                return health.Check(health_pb2.HealthCheckRequest(service=api.SERVICE_NAME)).status

            def wait_for(expected):
                deadline = time.time() + 10
                while status() != expected and time.time() < deadline:
                    time.sleep(0.05)
                return status()

            assert status() == health_pb2.HealthCheckResponse.NOT_SERVING  # nothing to serve yet
            shutil.copytree(tiny_package.root, tmp_path / "tiny" / "1.0.0")
            assert wait_for(health_pb2.HealthCheckResponse.SERVING) == health_pb2.HealthCheckResponse.SERVING
            shutil.rmtree(tmp_path / "tiny")
            assert wait_for(health_pb2.HealthCheckResponse.NOT_SERVING) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop(0)


def test_full_queue_answers_resource_exhausted(repo, tiny_prior):
    server = create_server(ServerConfig(repository=repo, port=0, poll_seconds=0, engine_threads=1, max_queue=1,
                                        max_batch=1, max_queue_delay_ms=0)).start()
    try:
        _, op, y = _observation(tiny_prior)
        codes = []
        with EdgeClient(f"127.0.0.1:{server.port}") as c:
            futures = [c.stub.Construct.future(c.request(y, op, sampler="dps", steps=40, seed=i)) for i in range(6)]
            for f in futures:
                try:
                    f.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    codes.append(e.code())
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
    finally:
        server.stop(0)


def test_bearer_tokens(repo, tiny_prior):
    server = create_server(ServerConfig(repository=repo, port=0, poll_seconds=0, engine_threads=1, tokens=("s3cret",))).start()
    try:
        _, op, y = _observation(tiny_prior)
        with EdgeClient(f"127.0.0.1:{server.port}") as anonymous:
            with pytest.raises(grpc.RpcError) as err:
                anonymous.construct(y, op, steps=2)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(anonymous.channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        with EdgeClient(f"127.0.0.1:{server.port}", token="s3cret") as c:
            assert c.construct(y, op, steps=2).steps == 2
    finally:
        server.stop(0)


def _self_signed(tmp_path, name):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    return tmp_path / f"{name}.crt", tmp_path / f"{name}.key"


def test_mutual_tls(repo, tiny_prior, tmp_path):
    cert, key = _self_signed(tmp_path, "server")
    client_cert, client_key = _self_signed(tmp_path, "client")
    server = create_server(ServerConfig(repository=repo, host="127.0.0.1", port=0, poll_seconds=0, engine_threads=1,
                                        tls_cert=cert, tls_key=key, client_ca=client_cert)).start()
    try:
        _, op, y = _observation(tiny_prior)
        target = f"localhost:{server.port}"
        with EdgeClient(target, root_certs=cert, client_cert=client_cert, client_key=client_key) as c:
            assert c.construct(y, op, steps=2).steps == 2
        with EdgeClient(target, root_certs=cert) as no_client_cert:
            with pytest.raises(grpc.RpcError) as err:
                no_client_cert.construct(y, op, steps=2, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)
