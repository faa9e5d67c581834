"""Several edge-server processes on one port: `ckm-edge serve --workers N`.

gRPC Python runs every handler under one interpreter lock, so one server process serves about
3,000 one-point QueryPoints calls per second on this CPU however many cores the machine has, and
its RPC threads lose more to each other when they run on several cores than on one (measured:
pinned to one core it served 3,060 calls/s, free on two 1,980; benchmarks/RESULTS.md
sites-sionna-rt-small). The standard answer for CPU-bound gRPC Python servers (grpc's
examples/python/multiprocessing, gunicorn's pre-fork workers) is several processes on one port:

- The supervisor (this module, the process `ckm-edge serve` runs) reserves the port with
  SO_REUSEPORT, opens the store once (its migrations run there, not N times at once), and starts N
  workers. Each worker is a whole server (runtime.server.create_server: the repository, its
  engines, a batcher, the SiteService on the shared store, health, reflection, auth, TLS) bound to
  the same port; Linux spreads incoming connections over them. The supervisor writes the port file
  once every worker serves.
- Worker k is pinned to the k-th CPU the supervisor may use (round robin; `pin=False` lets the OS
  place them), so its RPC threads share one core, and its engines take one thread (runtime.engine
  counts the CPUs of the process' affinity).
- Sites need nothing more: the store is the one truth, and the SiteService already runs as one of
  several servers on a store (rebuild leases, maps and watches polled from the store).
- Per-server limits held in memory (open WatchMap streams, the QueryPoints rate, each site's
  AddMeasurements rate) are split between the workers; the batcher's queue and memory budget are
  per worker.
- Metrics: the workers write Prometheus' multiprocess files (PROMETHEUS_MULTIPROC_DIR, a temporary
  directory of the supervisor's) and the supervisor serves their sum on the metrics address, with
  `ckm_workers` and `ckm_worker_restarts_total` of its own.
- A worker that exits while the server runs is restarted (after a back-off when it keeps failing);
  one that fails while the server starts stops the whole server with its error. SIGTERM to the
  supervisor stops every worker gracefully; a worker dies with its supervisor (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait

from ckm_edge.runtime.server import BindError, ServerConfig

log = logging.getLogger("ckm.edge.workers")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
READY_SECONDS = 600.0  # a worker loads and warms up its engines before it serves


class WorkerError(RuntimeError):
    """A worker could not start; the message is its error."""


def split_limits(cfg: ServerConfig, workers: int) -> ServerConfig:
    """The worker's share of the per-server limits held in memory (the SiteService's watchers and rates)."""
    lim = cfg.site_limits
    return replace(cfg, site_limits=replace(lim, max_watchers=max(1, math.ceil(lim.max_watchers / workers)),
                                            query_rate=lim.query_rate / workers,
                                            add_rate_per_site=lim.add_rate_per_site / workers))


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the supervisor's stop() still ends the workers
        pass


def _worker(cfg: ServerConfig, index: int, cpu: int | None, ready, parent: int) -> None:
    """One worker process: a whole server on the shared port until SIGTERM."""
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the line above
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C goes to the supervisor, which stops us
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # before any thread starts: every thread inherits it
    from ckm_edge.runtime.server import create_server

    try:
        edge = create_server(cfg).start()
    except Exception as e:  # the supervisor reports it
        ready.put((index, os.getpid(), None, f"{type(e).__name__}: {e}"))
        raise SystemExit(2) from None
    ready.put((index, os.getpid(), [m.key for m in edge.repository.models()], None))
    stop.wait()
    edge.stop()


@dataclass
class _Slot:
    index: int
    cpu: int | None
    process: mp.Process | None = None
    started: float = 0.0
    serving: bool = False
    failures: int = 0  # consecutive failed starts (the back-off)
    retry_at: float = 0.0


@dataclass
class Supervisor:
    """N workers serving `cfg` on one port; `start()`, then `run(stop_event)` until it is set, then `stop()`."""

    cfg: ServerConfig
    workers: int
    pin: bool = True
    port: int = 0
    models: list = field(default_factory=list)
    metrics_port: int | None = None
    restarts: int = 0
    _slots: list[_Slot] = field(default_factory=list)
    _reserved: socket.socket | None = None
    _metrics_dir: str | None = None
    _metrics_server: object | None = None
    _stopping: bool = False

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self._ctx = mp.get_context("spawn")
        self._ready = self._ctx.Queue()

    @property
    def cpus(self) -> list[int | None]:
        allowed = sorted(os.sched_getaffinity(0))
        return [allowed[k % len(allowed)] if self.pin else None for k in range(self.workers)]

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process is not None and s.process.is_alive()]

    def start(self, ready_seconds: float = READY_SECONDS) -> Supervisor:
        cfg = self.cfg
        host = cfg.host or ("0.0.0.0" if cfg.tls_cert is not None else "127.0.0.1")
        family, _, _, _, address = socket.getaddrinfo(host.strip("[]"), cfg.port, type=socket.SOCK_STREAM)[0]
        self._reserved = socket.socket(family, socket.SOCK_STREAM)
        self._reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self._reserved.bind(address)
        except OSError as e:
            self._reserved.close()
            raise BindError(f"could not bind {host}:{cfg.port}: {e.strerror}") from None
        self.port = self._reserved.getsockname()[1]
        if cfg.store is not None:  # migrations once, here; a bad URL fails before any worker starts
            from ckm_edge.runtime.sitestore import open_store

            open_store(cfg.store, cfg.rebuild.keep_versions).close()
        if cfg.metrics_port is not None:
            self._serve_metrics()
        worker_cfg = replace(split_limits(cfg, self.workers), port=self.port, metrics_port=None, reuse_port=True)
        self._worker_cfg = worker_cfg
        self._slots = [_Slot(k, cpu) for k, cpu in enumerate(self.cpus)]
        for slot in self._slots:
            self._spawn(slot)
        deadline = time.monotonic() + ready_seconds
        try:
            while not all(s.serving for s in self._slots):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerError(f"the workers did not all serve within {ready_seconds:.0f} s")
                error = self._take_ready(timeout=min(left, 0.5))
                if error:
                    raise WorkerError(error)
                dead = [s for s in self._slots if not s.serving and not s.process.is_alive() and self._ready.empty()]
                if dead:
                    raise WorkerError(f"worker {dead[0].index} exited with code {dead[0].process.exitcode} "
                                      "before it served")
        except BaseException:
            self.stop()
            raise
        self._workers_gauge(len(self._slots))
        return self

    def run(self, stop: threading.Event, poll: float = 0.5) -> None:
        """Keep the workers serving until `stop` is set: restart those that exit."""
        while not stop.is_set():
            alive = [s.process.sentinel for s in self._slots if s.process is not None]
            if alive:
                wait(alive, timeout=poll)
            else:
                stop.wait(poll)
            error = self._take_ready(timeout=0)
            if error:
                log.error("a restarted worker failed: %s", error)
            now = time.monotonic()
            for slot in self._slots:
                p = slot.process
                if p is not None and not p.is_alive() and not stop.is_set():
                    log.warning("worker %d (pid %d) exited with code %s; restarting it", slot.index, p.pid, p.exitcode)
                    self._dead(p.pid)
                    failed_start = not slot.serving or now - slot.started < 10.0
                    slot.failures = slot.failures + 1 if failed_start else 0
                    slot.retry_at = now + (min(30.0, 2.0 ** slot.failures) if slot.failures else 0.0)
                    slot.process, slot.serving = None, False
                if slot.process is None and now >= slot.retry_at and not stop.is_set():
                    self.restarts += 1
                    self._restart_counter()
                    self._spawn(slot)
            self._workers_gauge(sum(s.serving for s in self._slots))

    def stop(self, grace: float = 2.0) -> None:
        self._stopping = True
        procs = [s.process for s in self._slots if s.process is not None]
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker's server stops gracefully
        deadline = time.monotonic() + grace + 15.0
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.warning("worker pid %d did not stop; killing it", p.pid)
                p.kill()
                p.join(5.0)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self._reserved is not None:
            self._reserved.close()
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    # -- parts --------------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        slot.process = self._ctx.Process(target=_worker, args=(self._worker_cfg, slot.index, slot.cpu, self._ready,
                                                               os.getpid()),
                                         name=f"ckm-edge-worker-{slot.index}", daemon=False)
        # the worker's environment, not this process' (prometheus_client reads it when first imported)
        before = os.environ.get(MULTIPROC_ENV)
        if self._metrics_dir is not None:
            os.environ[MULTIPROC_ENV] = self._metrics_dir
        try:
            slot.process.start()
        finally:
            if before is None:
                os.environ.pop(MULTIPROC_ENV, None)
            else:
                os.environ[MULTIPROC_ENV] = before
        slot.started, slot.serving = time.monotonic(), False

    def _take_ready(self, timeout: float) -> str | None:
        """Read the workers' reports; the first error among them, if any."""
        import queue

        error = None
        while True:
            try:
                index, pid, models, err = self._ready.get(timeout=timeout)
            except queue.Empty:
                return error
            timeout = 0
            slot = self._slots[index]
            if err is not None:
                error = error or f"worker {index}: {err}"
            elif slot.process is not None and slot.process.pid == pid:
                slot.serving, slot.failures = True, 0
                self.models = models

    def _serve_metrics(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        self._metrics_dir = tempfile.mkdtemp(prefix="ckm-edge-metrics-")  # the workers' files (_spawn)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._metrics_dir)
        self._own = _OwnMetrics(registry)
        self._metrics_server, _ = start_http_server(self.cfg.metrics_port, addr=self.cfg.metrics_host, registry=registry)
        self.metrics_port = self._metrics_server.server_port

    def _dead(self, pid: int) -> None:
        if self._metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self._metrics_dir)

    def _workers_gauge(self, n: int) -> None:
        if self._metrics_dir is not None:
            self._own.workers.set(n)

    def _restart_counter(self) -> None:
        if self._metrics_dir is not None:
            self._own.restarts.inc()


class _OwnMetrics:
    """The supervisor's own series, served beside the workers' sums (plain values, not multiprocess files)."""

    def __init__(self, registry):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.workers, self.restarts = _Value(), _Value()
        own = self

        class Collector:
            def collect(self):
                yield GaugeMetricFamily("ckm_workers", "Worker processes serving now", value=own.workers.value)
                yield CounterMetricFamily("ckm_worker_restarts", "Workers restarted after they exited",
                                          value=own.restarts.value)

        registry.register(Collector())


class _Value:
    def __init__(self):
        self.value = 0.0

    def set(self, v: float) -> None:
        self.value = float(v)

    def inc(self) -> None:
        self.value += 1.0
