"""The gRPC edge server app: configuration, authentication, TLS, health, reflection, metrics, watcher.

    edge = create_server(ServerConfig(repository="models/repository")).start()
    edge.server.wait_for_termination()

The parts, one module each: runtime.batcher batches jobs (no gRPC; each batch through runtime.executor), runtime.servicer validates
and converts requests, runtime.metrics holds the Prometheus metrics. This module wires them:
- standard grpc.health.v1 health; server reflection as grpc.reflection.v1 and v1alpha;
- optional TLS or mTLS and bearer tokens (RFC 6750 / 7235: the scheme is case-insensitive); with
  no credentials the server binds to localhost only;
- Prometheus metrics over HTTP on a configurable address;
- a watcher that polls the repository and reloads it when packages change (in-flight jobs keep
  the engines they started with);
- with a store (`ServerConfig.store`: sqlite:PATH or postgresql://...), the SiteService: living
  maps (runtime.sites) rebuilt through the same batcher, below interactive constructions.
"""

from __future__ import annotations

import hmac
import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from ckm_edge.runtime import api, defaults
from ckm_edge.runtime.batcher import Batcher, BatcherConfig
from ckm_edge.runtime.engine import EngineConfig
from ckm_edge.runtime.metrics import Metrics
from ckm_edge.runtime.package import read_public_key
from ckm_edge.runtime.repository import ModelRepository
from ckm_edge.runtime.servicer import EdgeServicer, Limits, add_to_server
from ckm_edge.runtime.sites import RebuildPolicy, SiteLimits

log = logging.getLogger("ckm.edge.server")


class BindError(RuntimeError):
    """The server's address could not be bound."""

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


@dataclass(frozen=True)
class ServerConfig:
    repository: Path
    host: str | None = None  # None: 127.0.0.1 without credentials, 0.0.0.0 with TLS
    port: int = 50051
    metrics_port: int | None = None  # Prometheus /metrics; None = off, 0 = any free port
    metrics_host: str = "127.0.0.1"
    max_batch: int = defaults.MAX_BATCH  # posterior-sample rows per engine batch (and the most samples one request may ask)
    max_queue_delay_ms: float = defaults.MAX_QUEUE_DELAY_MS
    max_queue: int = defaults.MAX_QUEUE
    batch_workers: int = 1
    max_batch_memory_mib: float = defaults.MAX_BATCH_MEMORY_MIB  # engine memory one batch may use (rows x measured per-row); 0 = no budget
    max_evaluations: int = defaults.MAX_EVALUATIONS  # network evaluations one request may ask (samples x calls per sample)
    rpc_threads: int = 16  # threads for short RPCs; `threads` adds those a waiting job or a WatchMap stream holds
    engine_threads: int = 0
    deterministic: bool = False  # single-threaded deterministic engines: bitwise-reproducible maps
    backend: str = "onnxruntime"  # the engines' inference library (EngineConfig.backend)
    arena: str = "score"  # graphs that keep ONNX Runtime's memory arena (EngineConfig.arena): idle VJP memory goes back
    device: str = "cpu"
    max_message_bytes: int = 16 * 2**20
    poll_seconds: float = 2.0  # repository watch interval; 0 = no watching
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None  # mTLS: require client certificates signed by this CA
    tokens: tuple[str, ...] = ()  # accepted bearer tokens; empty = no token check
    trusted_keys: tuple[Path, ...] = ()  # package signature keys; empty = no signature check
    store: str | None = None  # the SiteService's store (sqlite:PATH, postgresql://...); None = no SiteService
    site_limits: SiteLimits = field(default_factory=SiteLimits)
    rebuild: RebuildPolicy = field(default_factory=RebuildPolicy)
    reuse_port: bool = False  # share the port with other processes (runtime.workers); off: a taken port is an error

    def __post_init__(self):
        BatcherConfig(self.max_batch, self.max_queue_delay_ms, self.max_queue, self.batch_workers)  # validates
        if self.max_batch_memory_mib < 0 or self.max_evaluations < 1:
            raise ValueError("need max_batch_memory_mib >= 0 and max_evaluations >= 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("mTLS (client_ca) needs a server certificate (tls_cert, tls_key)")
        if any(not t or any(c.isspace() for c in t) for t in self.tokens):
            raise ValueError("bearer tokens must be non-empty and hold no whitespace")

    @property
    def threads(self) -> int:
        """The gRPC thread pool: a handler holds its thread until it returns, so every job the
        batcher may queue and every WatchMap stream the SiteService allows gets one beside the
        `rpc_threads` for short calls (threads start only when needed)."""
        return self.rpc_threads + self.max_queue + (self.site_limits.max_watchers if self.store is not None else 0)

    @property
    def batcher(self) -> BatcherConfig:
        return BatcherConfig(self.max_batch, self.max_queue_delay_ms, self.max_queue, self.batch_workers,
                               int(self.max_batch_memory_mib * 2**20))


def read_tokens(path: Path) -> tuple[str, ...]:
    """Bearer tokens from a file, whitespace separated; an unreadable or empty file is an error
    (it must never silently turn authentication off)."""
    try:
        tokens = tuple(Path(path).read_text().split())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the token file {path}: {e}") from None
    if not tokens:
        raise ValueError(f"the token file {path} holds no token; refusing to start without authentication")
    return tokens


class _TokenInterceptor(grpc.ServerInterceptor):
    """Bearer-token check on the EdgeService; health and reflection stay open."""

    SERVICES = (api.SERVICE_NAME, "ckm.edge.v1.SiteService")
    STREAMING = ("ConstructStream", "WatchMap")

    def __init__(self, tokens: tuple[str, ...], metrics: Metrics):
        self._tokens = [t.encode() for t in tokens]
        self._metrics = metrics

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid 'authorization: Bearer <token>' header is required")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def _valid(self, header: str | None) -> bool:
        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip().encode()
        ok = False
        for t in self._tokens:  # compare with every token in constant time
            ok |= hmac.compare_digest(token, t)
        return scheme.lower() == "bearer" and ok

    def intercept_service(self, continuation, details):
        if not details.method.startswith(tuple(f"/{name}/" for name in self.SERVICES)):
            return continuation(details)
        if self._valid(dict(details.invocation_metadata).get("authorization")):
            return continuation(details)
        self._metrics.rejected.labels("auth").inc()
        method = details.method.rsplit("/", 1)[-1]
        self._metrics.requests.labels(method, grpc.StatusCode.UNAUTHENTICATED.name).inc()
        return self._deny_stream if method in self.STREAMING else self._deny


def _enable_reflection(server: grpc.Server, names: tuple[str, ...]) -> None:
    """Server reflection as grpc.reflection.v1alpha and as v1 (the same messages on the wire; grpcurl
    and recent clients ask v1 first). grpcio-reflection ships only v1alpha's code, so v1 reuses it."""
    servicer = reflection.ReflectionServicer(names + (REFLECTION_V1,))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),))


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
    sites: object | None = None  # runtime.sites.SiteManager when the server has a store
    _watcher: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> EdgeServer:
        self.server.start()
        return self

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        self.health.enter_graceful_shutdown()
        if self.sites is not None:
            self.sites.stop()
        self.server.stop(grace).wait()
        self.batcher.stop()
        if self.sites is not None:
            self.sites.store.close()

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
        if self.sites is not None:
            self.health.set("ckm.edge.v1.SiteService", status)


def create_server(cfg: ServerConfig) -> EdgeServer:
    """Build (not start) the server; returns it with its bound port (cfg.port 0 = any free port)."""
    keys = [read_public_key(k) for k in cfg.trusted_keys] or None
    engine = EngineConfig(device=cfg.device, threads=cfg.engine_threads, deterministic=cfg.deterministic, arena=cfg.arena,
                          backend=cfg.backend)
    repo = ModelRepository(cfg.repository, engine, keys)
    sched = cfg.batcher
    for model in repo.models():
        model.engine("fp32")  # load and warm up before serving
        if sched.memory_budget:
            model.row_bytes("fp32", False)  # measured (or read from the cache) before the first request
    metrics = Metrics(sched.memory_budget)
    batcher = Batcher(sched, metrics)
    # The transport takes messages up to twice the limit so that the servicer can refuse (and count)
    # those over it; beyond that gRPC itself answers RESOURCE_EXHAUSTED.
    options = [("grpc.max_receive_message_length", 2 * cfg.max_message_bytes),
               ("grpc.max_send_message_length", cfg.max_message_bytes), ("grpc.so_reuseport", int(cfg.reuse_port))]
    interceptors = [_TokenInterceptor(cfg.tokens, metrics)] if cfg.tokens else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.threads), options=options, interceptors=interceptors)
    limits = Limits(max_samples=cfg.max_batch, max_evaluations=cfg.max_evaluations, memory_budget=bool(sched.memory_budget),
                    deterministic=cfg.deterministic)
    add_to_server(EdgeServicer(repo, batcher, metrics, limits), server, metrics, cfg.max_message_bytes)
    names = (api.SERVICE_NAME,)
    sites = None
    if cfg.store is not None:
        from ckm_edge.runtime.site_servicer import SITE_SERVICE, SITE_SERVICE_NAME, SiteServicer
        from ckm_edge.runtime.sites import SiteManager
        from ckm_edge.runtime.sitestore import open_store

        sites = SiteManager(open_store(cfg.store, cfg.rebuild.keep_versions), repo, batcher, metrics, cfg.site_limits,
                            cfg.rebuild, row_bytes=bool(sched.memory_budget), max_samples=cfg.max_batch)
        add_to_server(SiteServicer(sites, metrics), server, metrics, cfg.max_message_bytes, SITE_SERVICE)
        names += (SITE_SERVICE_NAME,)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _enable_reflection(server, names + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME))
    secure = cfg.tls_cert is not None
    host = cfg.host or ("0.0.0.0" if secure else "127.0.0.1")
    address = f"{host}:{cfg.port}"
    creds = None
    if secure:
        creds = grpc.ssl_server_credentials(
            [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())],
            root_certificates=Path(cfg.client_ca).read_bytes() if cfg.client_ca else None,
            require_client_auth=cfg.client_ca is not None)
    try:
        port = server.add_secure_port(address, creds) if secure else server.add_insecure_port(address)
    except RuntimeError:  # newer grpc raises where older returned 0
        port = 0
    if port == 0:
        raise BindError(f"could not bind {address}: the port is in use or the address is not this machine's")
    metrics_port = metrics.serve(cfg.metrics_host, cfg.metrics_port) if cfg.metrics_port is not None else None
    edge = EdgeServer(server, port, repo, batcher, metrics, metrics_port, health_servicer, sites)
    edge._set_health()
    if sites is not None:
        sites.start()
    if cfg.poll_seconds > 0:
        edge._watcher = threading.Thread(target=edge._watch, args=(cfg.poll_seconds,), daemon=True, name="ckm-repo-watch")
        edge._watcher.start()
    return edge
