"""Prometheus metrics of the edge server (names and labels after Triton's and Prometheus' conventions).

Per RPC: `ckm_requests_total{method,code}` and `ckm_request_duration_seconds{method,code}`; requests
refused before a handler ran: `ckm_rejected_requests_total{reason}` (auth, size, decode, queue_full,
memory); `ckm_inflight_requests{method}`. Per model, only once a request resolved one (never an empty
label): `ckm_model_requests_total{model,version,code}`. The batcher: `ckm_queue_depth`,
`ckm_queue_wait_seconds` and `ckm_compute_seconds` (per job), `ckm_batch_rows`,
`ckm_batch_memory_bytes` (the batcher's estimate for the batches running now) next to
`ckm_batch_memory_budget_bytes`, `ckm_abandoned_batches_total`. The site service: `ckm_store_seconds{op}`,
`ckm_site_rebuilds_total{kind,outcome}`, `ckm_site_rebuild_seconds{kind}`, `ckm_site_rebuilds_due`. Plus the standard `process_*`
(resident memory, CPU, file descriptors), `python_gc_*` and `python_info` collectors.
"""

from __future__ import annotations

import threading

from ckm_edge.runtime.batcher import BatcherMetrics, Pending

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics(BatcherMetrics):
    def __init__(self, memory_budget: int = 0, registry=None):
        from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.gc_collector import GCCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        del GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR  # those live in the global registry
        r = self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.requests = Counter("ckm_requests", "RPCs handled, by method and status code", ["method", "code"], registry=r)
        self.duration = Histogram("ckm_request_duration_seconds", "RPC wall time, by method and status code",
                                  ["method", "code"], registry=r, buckets=_SECONDS)
        self.inflight = Gauge("ckm_inflight_requests", "RPCs being handled now", ["method"], registry=r,
                              multiprocess_mode="livesum")
        self.rejected = Counter("ckm_rejected_requests", "Requests refused before construction: auth (no valid token), "
                                "size (message over the limit), decode (not a valid message), queue_full, memory "
                                "(more samples than the batch memory budget allows)", ["reason"], registry=r)
        for reason in ("auth", "size", "decode", "queue_full", "memory"):
            self.rejected.labels(reason)
        self.model_requests = Counter("ckm_model_requests", "Construction RPCs per resolved model version and code",
                                      ["model", "version", "code"], registry=r)
        self.queue_depth = Gauge("ckm_queue_depth", "Jobs waiting for a batch", registry=r, multiprocess_mode="livesum")
        self.queue_wait = Histogram("ckm_queue_wait_seconds", "Time a job waited before its batch started", registry=r,
                                    buckets=_SECONDS)
        self.compute = Histogram("ckm_compute_seconds", "Engine time of the batch a job ran in", registry=r,
                                 buckets=_SECONDS)
        self.batch_rows = Histogram("ckm_batch_rows", "Posterior-sample rows per engine batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_memory = Gauge("ckm_batch_memory_bytes", "Estimated engine memory of the batches running now "
                                  "(rows x per-row estimate)", registry=r, multiprocess_mode="livesum")
        Gauge("ckm_batch_memory_budget_bytes", "Engine memory one batch may use (0 = no budget; per worker)",
              registry=r, multiprocess_mode="livemax").set(memory_budget)
        self.abandoned_batches = Counter("ckm_abandoned_batches", "Batches stopped between steps because every "
                                         "caller cancelled or ran past its deadline", registry=r)
        # the site service (runtime.sites): its store and its background rebuilds
        self.store_seconds = Histogram("ckm_store_seconds", "Site store calls, by operation", ["op"], registry=r,
                                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
        self.site_rebuilds = Counter("ckm_site_rebuilds", "Site map rebuilds by kind (fresh, incremental) and outcome "
                                     "(stored, superseded: another server stored that version first, failed)",
                                     ["kind", "outcome"], registry=r)
        self.site_rebuild_seconds = Histogram("ckm_site_rebuild_seconds", "Wall time of a site map rebuild (queue "
                                              "included)", ["kind"], registry=r, buckets=_SECONDS)
        self.site_rebuilds_due = Gauge("ckm_site_rebuilds_due", "Sites whose map is due for a rebuild (the rebuild "
                                       "queue)", registry=r, multiprocess_mode="livemax")
        self._lock = threading.Lock()
        self._memory = 0
        self._rpc: dict[tuple[str, str], tuple] = {}  # (method, code) -> its children: labels() costs ~5 us a call

    # -- RPCs ------------------------------------------------------------------------------------
    def rpc_started(self, method: str) -> None:
        self._children(method, "")[0].inc()

    def rpc_finished(self, method: str, code: str, seconds: float) -> None:
        inflight, requests, duration = self._children(method, code)
        inflight.dec()
        requests.inc()
        duration.observe(seconds)

    def _children(self, method: str, code: str) -> tuple:
        c = self._rpc.get((method, code))
        if c is None:
            c = self._rpc[(method, code)] = (self.inflight.labels(method), code and self.requests.labels(method, code),
                                             code and self.duration.labels(method, code))
        return c

    def serve(self, host: str, port: int) -> int:
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port

    # -- BatcherMetrics --------------------------------------------------------------------------
    def queued(self, jobs: int) -> None:
        self.queue_depth.set(jobs)

    def batch_started(self, jobs: list[Pending], rows: int, memory_bytes: int) -> None:
        self.batch_rows.observe(rows)
        for job in jobs:
            self.queue_wait.observe(job.started - job.enqueued)
        with self._lock:
            self._memory += memory_bytes
            self.batch_memory.set(self._memory)

    def batch_finished(self, jobs: list[Pending], rows: int, memory_bytes: int, seconds: float) -> None:
        for _ in jobs:
            self.compute.observe(seconds)
        with self._lock:
            self._memory -= memory_bytes
            self.batch_memory.set(self._memory)

    def abandoned(self) -> None:
        self.abandoned_batches.inc()
