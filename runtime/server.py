"""The gRPC edge server (ckm.edge.v1.EdgeService): thin servicer, dynamic batcher, repository.

    server, port = create_server(ServerConfig(repository="models/repository"))
    server.start(); server.wait_for_termination()

- The servicer validates and converts each request (INVALID_ARGUMENT naming the field), hands a
  job to the batcher and converts the result; it holds no sampling logic.
- The batcher groups compatible jobs (same model version, precision, steps and sampler settings)
  arriving within `max_queue_delay_ms`, up to `max_batch` rows, into one `runtime.sampler.sample`
  call with per-row operators; a full queue answers RESOURCE_EXHAUSTED. Between steps it checks
  every job's deadline and cancellation and stops a batch whose jobs have all gone.
- Standard grpc.health.v1 health, server reflection, Prometheus metrics over HTTP, optional TLS
  or mTLS and bearer tokens; with no credentials the server binds to localhost only.
- A watcher polls the repository and reloads it when packages change; in-flight jobs keep the
  engines they started with.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime import api, codec
from runtime.api import InvalidArgument, pb
from runtime.construct import MAX_SAMPLES, MAX_STEPS, check_observation
from runtime.engine import EngineConfig, EngineError
from runtime.operators import OperatorError
from runtime.package import PackageError, read_public_key
from runtime.adapter import ComposedEngine, LambdaTable
from runtime.repository import LoadedModel, ModelRepository, adapts
from runtime import recommend
from runtime.sampler import (SAMPLERS, Observation, Observations, SamplerError, StepInfo, config_from_params, respaced,
                             sample, spec_for)
from runtime.schedule import ScheduleError
from runtime.site import Site, SiteError

log = logging.getLogger("ckm.edge.server")
PRECISIONS = {pb.PRECISION_UNSPECIFIED: "fp32", pb.PRECISION_FP32: "fp32", pb.PRECISION_FP16: "fp16", pb.PRECISION_INT8: "int8"}


@dataclass(frozen=True)
class ServerConfig:
    repository: Path
    host: str | None = None  # None: 127.0.0.1 without credentials, 0.0.0.0 with TLS
    port: int = 50051
    metrics_port: int | None = None  # Prometheus /metrics; None = off, 0 = any free port
    max_batch: int = 8
    max_queue_delay_ms: float = 5.0
    max_queue: int = 64
    batch_workers: int = 1
    rpc_threads: int = 16
    engine_threads: int = 0
    device: str = "cpu"
    max_message_bytes: int = 16 * 2**20
    poll_seconds: float = 2.0  # repository watch interval; 0 = no watching
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None  # mTLS: require client certificates signed by this CA
    tokens: tuple[str, ...] = ()  # accepted bearer tokens; empty = no token check
    trusted_keys: tuple[Path, ...] = ()  # package signature keys; empty = no signature check

    def __post_init__(self):
        if not 1 <= self.max_batch <= 256 or self.max_queue < 1 or self.batch_workers < 1:
            raise ValueError("need 1 <= max_batch <= 256, max_queue >= 1 and batch_workers >= 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("mTLS (client_ca) needs a server certificate (tls_cert, tls_key)")


class _Cancelled(Exception):
    pass


@dataclass
class Job:
    model: LoadedModel
    precision: str
    steps: int
    sampler: object  # a registered sampler's frozen config
    op: object
    y: np.ndarray  # (1, C, H', W')
    samples: int
    seed: int
    context: grpc.ServicerContext
    progress: queue.Queue | None = None
    progress_interval: int = 1
    adapter: LoadedModel | None = None  # a site adapter composed with the model
    adapter_lambda: LambdaTable | None = None
    sigma: float = 0.0  # observation noise, pixels
    site: Site | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None

    @property
    def key(self) -> tuple:
        return (id(self.model), id(self.adapter), self.precision, self.steps, self.sampler)

    def alive(self) -> bool:
        return self.context.is_active()


class Metrics:
    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry or CollectorRegistry()
        self.requests = Counter("ckm_requests", "Construction requests", ["model", "version", "code"], registry=self.registry)
        self.latency = Histogram("ckm_request_seconds", "Request latency", ["model", "version"], registry=self.registry,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.queue_depth = Gauge("ckm_queue_depth", "Jobs waiting for a batch", registry=self.registry)
        self.batch_rows = Histogram("ckm_batch_rows", "Rows per engine batch", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.abandoned = Counter("ckm_abandoned_batches", "Batches stopped between steps because every caller "
                                 "cancelled or ran past its deadline", registry=self.registry)

    def serve(self, port: int) -> int:
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        return server.server_port


class Batcher:
    """Collects jobs into engine batches (see module doc)."""

    def __init__(self, cfg: ServerConfig, metrics: Metrics):
        self.cfg, self.metrics = cfg, metrics
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=cfg.max_queue)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"ckm-batcher-{i}", daemon=True)
                         for i in range(cfg.batch_workers)]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise OverflowError(f"the server's queue is full ({self.cfg.max_queue} jobs); retry later") from None
        self.metrics.queue_depth.set(self._queue.qsize())

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    def _collect(self) -> list[Job]:
        first = self._queue.get(timeout=0.1)
        batch, rows = [first], first.samples
        deadline = time.perf_counter() + self.cfg.max_queue_delay_ms / 1e3
        held: list[Job] = []
        while rows < self.cfg.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                job = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if job.key == first.key and rows + job.samples <= self.cfg.max_batch:
                batch.append(job)
                rows += job.samples
            else:
                held.append(job)
        for job in held:  # incompatible jobs go back for the next round
            self._queue.put(job)
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._collect()
            except queue.Empty:
                continue
            self.metrics.queue_depth.set(self._queue.qsize())
            batch = [j for j in batch if j.alive()]
            if batch:
                self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        first = batch[0]
        n = first.model.package.tile_size
        groups, rngs, owner = [], [], []
        for j, job in enumerate(batch):
            job.started = time.perf_counter()
            groups.append((slice(len(rngs), len(rngs) + job.samples), Observation(job.op, job.y, job.sigma, job.site)))
            for s in range(job.samples):
                rngs.append(np.random.default_rng([job.seed, s]))
                owner.append(j)
        self.metrics.batch_rows.observe(len(rngs))
        total = first.steps

        def step(info: StepInfo) -> None:
            if not any(job.alive() for job in batch):
                raise _Cancelled()
            done = total - info.k
            for j, job in enumerate(batch):
                if job.progress is not None and (done % job.progress_interval == 0 or info.k == 0):
                    rows = [i for i, o in enumerate(owner) if o == j]
                    job.progress.put(pb.Progress(step=done, total_steps=total, residual_norm=float(info.residual[rows].mean())))

        try:
            engine = first.model.engine(first.precision)
            if first.adapter is not None:  # s = s_model + lambda(t) (s_proxy - s_reference)
                engine = ComposedEngine(engine, first.adapter.engine(first.precision), first.adapter_lambda)
            schedule = respaced(first.model.package.schedule(), first.steps, first.sampler)
            x = sample(engine, schedule, Observations((2, n, n), len(rngs), groups), rngs, first.sampler, step)
            x = np.clip(x, 0.0, 1.0)
            for j, job in enumerate(batch):
                job.result = x[[i for i, o in enumerate(owner) if o == j]]
        except _Cancelled as e:
            self.metrics.abandoned.inc()
            for job in batch:
                job.error = e
        except Exception as e:  # the engine failed: every job of the batch gets the error
            log.exception("batch failed")
            for job in batch:
                job.error = e
        for job in batch:
            job.done.set()


class EdgeServicer(api.services.EdgeServiceServicer):
    def __init__(self, repo: ModelRepository, batcher: Batcher, metrics: Metrics):
        self.repo, self.batcher, self.metrics = repo, batcher, metrics

    # -- validation -------------------------------------------------------------------------------
    def _job(self, req, context, progress=None, interval=1) -> Job:
        try:
            model = self.repo.resolve(req.model_name, req.model_version)
        except LookupError as e:
            raise _Status(grpc.StatusCode.NOT_FOUND, str(e)) from None
        pkg = model.package
        adapter, lam = self._adapter(req, model)
        precision = PRECISIONS.get(req.precision)
        if precision is None:
            raise InvalidArgument(f"precision {req.precision} is not a known Precision value")
        if precision not in pkg.precisions:
            raise InvalidArgument(f"precision: model {pkg.name} {pkg.version} has no {precision} variant (has {pkg.precisions})")
        if adapter is not None and precision not in adapter.package.precisions:
            raise InvalidArgument(f"precision: site adapter {adapter.package.name} {adapter.package.version} has no "
                                  f"{precision} variant (has {adapter.package.precisions})")
        if not (np.isfinite(req.noise_sigma) and 0 <= req.noise_sigma <= 1):
            raise InvalidArgument(f"noise_sigma must be in [0, 1] pixels, got {req.noise_sigma}")
        if not req.HasField("operator"):
            raise InvalidArgument("operator is required")
        op = api.operator_from_proto(req.operator)
        if not req.HasField("observation"):
            raise InvalidArgument("observation is required")
        y = api.to_numpy(req.observation, "observation")
        shape = (2, pkg.tile_size, pkg.tile_size)
        try:
            y = check_observation(op, y.astype(np.float32), shape)
        except OperatorError as e:
            raise InvalidArgument(f"observation: {e}") from None
        site = None
        if req.HasField("site"):
            try:
                site = Site(api.binary_map(req.site.building, "site.building"))
                site.check(shape)
            except SiteError as e:
                raise InvalidArgument(f"site.building: {e}") from None
        sampler, steps, samples = self._sampler(req, pkg, op, site is not None)
        return Job(model, precision, steps, sampler, op, y, samples, int(req.seed), context, progress, max(1, interval),
                   adapter=adapter, adapter_lambda=lam, sigma=float(req.noise_sigma), site=site)

    def _sampler(self, req, pkg, op, site: bool) -> tuple[object, int, int]:
        """The sampler config, steps and samples of a request (runtime.recommend.resolve), with the
        DPS-only legacy fields (zeta, corrector_steps, jacobian_free) as shorthands for "dps"."""
        legacy = {}
        if req.HasField("zeta"):
            legacy["zeta"] = float(req.zeta)
        if req.corrector_steps:
            legacy["corrector_steps"] = int(req.corrector_steps)
        if req.jacobian_free:
            legacy["jacobian_free"] = True
        name = req.sampler or ("dps" if legacy else None)
        if name is not None and name not in SAMPLERS:
            raise InvalidArgument(f"sampler: unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}")
        if legacy and name != "dps":
            raise InvalidArgument(f"{', '.join(legacy)}: DPS-only field(s), but the sampler is {name!r}; "
                                  "use sampler_parameters")
        if legacy:
            try:
                config_from_params("dps", legacy)
            except SamplerError as e:
                raise InvalidArgument(str(e)) from None
        params = dict(req.sampler_parameters)
        if legacy.keys() & params.keys():
            raise InvalidArgument(f"sampler_parameters: {', '.join(sorted(legacy.keys() & params.keys()))} also given "
                                  "as the request field of the same name; give it once")
        if name == "dps":  # the gRPC API's DPS: no corrector unless asked (corrector_steps is 0 when unset)
            params = {"corrector_steps": 0, **legacy, **params}
        max_samples = min(MAX_SAMPLES, self.batcher.cfg.max_batch)
        try:
            cfg, steps, samples = recommend.resolve(pkg.manifest, op, name, params, req.steps or None,
                                                    req.samples or None, site)
        except SamplerError as e:
            raise InvalidArgument(f"sampler_parameters: {e}") from None
        if not req.samples:  # a recommendation never asks for more rows than a batch holds
            samples = min(samples, max_samples)
        if not 1 <= samples <= max_samples:
            raise InvalidArgument(f"samples must be in [1, {max_samples}], got {req.samples}")
        n_max = min(MAX_STEPS, len(pkg.schedule()))
        if not 1 <= steps <= n_max:
            raise InvalidArgument(f"steps must be in [1, {n_max}], got {req.steps}")
        try:
            respaced(pkg.schedule(), steps, cfg)
        except ScheduleError as e:
            raise InvalidArgument(f"steps: {e}") from None
        return cfg, steps, samples


    def _adapter(self, req, model: LoadedModel) -> tuple[LoadedModel | None, LambdaTable | None]:
        if not req.adapter_name:
            if req.adapter_version:
                raise InvalidArgument("adapter_version given without adapter_name")
            return None, None
        try:
            return self.repo.resolve_adapter(req.adapter_name, req.adapter_version, model)
        except LookupError as e:
            raise _Status(grpc.StatusCode.NOT_FOUND, str(e)) from None
        except PackageError as e:
            raise _Status(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None

    def _response(self, job: Job, req) -> object:
        x = job.result
        mean = x.mean(axis=0)
        std = x.std(axis=0) if len(x) > 1 else None
        if req.output_units == pb.OUTPUT_UNITS_PHYSICAL:
            phys = codec.decode(mean, clip=True)
            out = np.stack([phys.gain_db, phys.aoa_sine])
            if std is not None:
                std = std * np.array([codec.GAIN_RMSE_FACTOR, codec.AOA_RMSE_FACTOR], np.float32)[:, None, None]
        else:
            out = mean
        residual = float(np.sqrt(((job.y[0] - job.op.forward(mean[None])[0]) ** 2).sum()))
        now = time.perf_counter()
        pkg = job.model.package
        resp = pb.ConstructResponse(map=api.from_numpy(out.astype(np.float32)), residual_norm=residual,
                                    model_name=pkg.name, model_version=pkg.version, steps=job.steps,
                                    timings=pb.Timings(queue_seconds=job.started - job.enqueued,
                                                       sampling_seconds=now - job.started, total_seconds=now - job.enqueued))
        if std is not None:
            resp.std.CopyFrom(api.from_numpy(std.astype(np.float32)))
        resp.sampler = spec_for(job.sampler).name
        resp.sampler_parameters.update(sampler_parameters(job.sampler))
        resp.samples = job.samples
        if job.adapter is not None:
            resp.adapter_name, resp.adapter_version = job.adapter.package.name, job.adapter.package.version
        return resp

    def _wait(self, job: Job, context) -> None:
        while not job.done.wait(timeout=0.05):
            if not context.is_active():
                return
        if isinstance(job.error, _Cancelled):
            raise _Status(grpc.StatusCode.CANCELLED, "the request was cancelled or its deadline passed")
        if job.error is not None:
            raise _Status(grpc.StatusCode.INTERNAL, f"construction failed: {job.error}")

    # -- RPCs -------------------------------------------------------------------------------------
    def Construct(self, request, context):
        with self._handling(context) as labels:
            job = self._job(request, context)
            labels.update(model=job.model.package.name, version=job.model.package.version)
            self.batcher.submit(job)
            self._wait(job, context)
            return self._response(job, request)

    def ConstructStream(self, request, context):
        with self._handling(context) as labels:
            progress: queue.Queue = queue.Queue()
            job = self._job(request.request, context, progress, request.progress_interval)
            labels.update(model=job.model.package.name, version=job.model.package.version)
            self.batcher.submit(job)
            while not job.done.is_set() or not progress.empty():
                try:
                    yield pb.ConstructStreamResponse(progress=progress.get(timeout=0.05))
                except queue.Empty:
                    if not context.is_active():
                        return
            self._wait(job, context)
            yield pb.ConstructStreamResponse(result=self._response(job, request.request))

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelVersion(name=m.package.name, version=m.package.version, ready=True,
                                                             adapts=adapts(m.package))
                                             for m in self.repo.models()])

    def GetModelMetadata(self, request, context):
        with self._handling(context):
            try:
                model = self.repo.resolve(request.model_name, request.model_version)
            except LookupError as e:
                model = self.repo.find(request.model_name, request.model_version)  # a site adapter, by exact name
                if model is None:
                    raise _Status(grpc.StatusCode.NOT_FOUND, str(e)) from None
            pkg = model.package
            accuracy = [pb.TaskAccuracy(precision=p, task=t, gain_rmse_db=v["gain_rmse_db"], aoa_sine_rmse=v["aoa_sine_rmse"])
                        for p, rec in pkg.accuracy().items() if isinstance(rec, dict) and "tasks" in rec
                        for t, v in rec["tasks"].items()]
            return pb.GetModelMetadataResponse(
                name=pkg.name, version=pkg.version, channels=list(pkg.manifest["channels"]), tile_size=pkg.tile_size,
                operators=["identity", "mask", "downsample", "truncate", "quantize_aoa", "per_channel", "compose"],
                precisions=pkg.precisions, schedule_json=json.dumps(pkg.manifest["schedule"]),
                max_steps=min(MAX_STEPS, len(pkg.schedule())), accuracy=accuracy, adapts=adapts(pkg),
                samplers=[_sampler_info(s) for s in SAMPLERS.values()],
                recommended=[pb.SamplerRecommendation(operator_kind=kind, sampler=r.sampler, steps=r.steps, samples=r.samples,
                                                      parameters={k: float(v) for k, v in r.parameters.items()})
                             for kind, r in pkg.recommendations().items()])

    def _handling(self, context):
        return _Handling(self.metrics, context)


def sampler_parameters(cfg) -> dict[str, float]:
    """Every parameter of a sampler config as a number (switches 0/1), as the API reports them."""
    return {p["name"]: float(getattr(cfg, p["name"])) for p in spec_for(cfg).parameters()}


def _sampler_info(s) -> object:
    params = [pb.SamplerParameter(name=p["name"], type=p["type"], default_value=float(p["default"]), description=p["doc"])
              for p in s.parameters()]
    for msg, p in zip(params, s.parameters()):  # proto field names: min / max
        if p["low"] is not None:
            msg.min = float(p["low"])
        if p["high"] is not None:
            msg.max = float(p["high"])
    return pb.SamplerInfo(name=s.name, description=s.summary, default_steps=s.default_steps, parameters=params,
                          uses_network_vjp=s.needs_vjp(s.config()))


class _Status(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class _Handling:
    """Maps errors to gRPC status codes and records metrics for one RPC."""

    def __init__(self, metrics: Metrics, context):
        self.metrics, self.context, self.labels = metrics, context, {"model": "", "version": ""}
        self.start = time.perf_counter()

    def __enter__(self):
        return self.labels

    def __exit__(self, exc_type, exc, tb):
        code = grpc.StatusCode.OK
        if isinstance(exc, _Status):
            code = exc.code
        elif isinstance(exc, (InvalidArgument, OperatorError, codec.CodecError)):
            code = grpc.StatusCode.INVALID_ARGUMENT
        elif isinstance(exc, OverflowError):
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
        elif isinstance(exc, (EngineError, PackageError)):
            code = grpc.StatusCode.UNAVAILABLE
        elif exc is not None and not isinstance(exc, GeneratorExit):
            log.exception("unexpected error")
            code = grpc.StatusCode.INTERNAL
        self.metrics.requests.labels(self.labels["model"], self.labels["version"], code.name).inc()
        self.metrics.latency.labels(self.labels["model"], self.labels["version"]).observe(time.perf_counter() - self.start)
        if exc is not None and code != grpc.StatusCode.OK:
            self.context.abort(code, str(exc))
        return False


class _TokenInterceptor(grpc.ServerInterceptor):
    """Bearer-token check on the EdgeService; health and reflection stay open."""

    def __init__(self, tokens: tuple[str, ...]):
        self._tokens = {f"Bearer {t}" for t in tokens}

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid 'authorization: Bearer <token>' header is required")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{api.SERVICE_NAME}/"):
            return continuation(details)
        if dict(details.invocation_metadata).get("authorization") in self._tokens:
            return continuation(details)
        return self._deny_stream if details.method.endswith("/ConstructStream") else self._deny


@dataclass
class EdgeServer:
    """What create_server returns: the started-or-not gRPC server and its parts."""

    server: grpc.Server
    port: int
    repository: ModelRepository
    batcher: Batcher
    metrics: Metrics
    metrics_port: int | None
    health: health.HealthServicer
    _watcher: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "EdgeServer":
        self.server.start()
        return self

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.batcher.stop()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if self.repository.reload():
                    self._set_health()
            except Exception:
                log.exception("repository reload failed")

    def _set_health(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self.repository.models() else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set("", status)
        self.health.set(api.SERVICE_NAME, status)


def create_server(cfg: ServerConfig) -> EdgeServer:
    """Build (not start) the server; returns it with its bound port (cfg.port 0 = any free port)."""
    keys = [read_public_key(k) for k in cfg.trusted_keys] or None
    repo = ModelRepository(cfg.repository, EngineConfig(device=cfg.device, threads=cfg.engine_threads), keys)
    for model in repo.models():
        model.engine("fp32")  # load and warm up before serving
    metrics = Metrics()
    batcher = Batcher(cfg, metrics)
    options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
               ("grpc.max_send_message_length", cfg.max_message_bytes)]
    interceptors = [_TokenInterceptor(cfg.tokens)] if cfg.tokens else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.rpc_threads), options=options, interceptors=interceptors)
    api.services.add_EdgeServiceServicer_to_server(EdgeServicer(repo, batcher, metrics), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (api.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    secure = cfg.tls_cert is not None
    host = cfg.host or ("0.0.0.0" if secure else "127.0.0.1")
    address = f"{host}:{cfg.port}"
    if secure:
        creds = grpc.ssl_server_credentials(
            [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())],
            root_certificates=Path(cfg.client_ca).read_bytes() if cfg.client_ca else None,
            require_client_auth=cfg.client_ca is not None)
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    metrics_port = metrics.serve(cfg.metrics_port) if cfg.metrics_port is not None else None
    edge = EdgeServer(server, port, repo, batcher, metrics, metrics_port, health_servicer)
    edge._set_health()
    if cfg.poll_seconds > 0:
        edge._watcher = threading.Thread(target=edge._watch, args=(cfg.poll_seconds,), daemon=True, name="ckm-repo-watch")
        edge._watcher.start()
    return edge
