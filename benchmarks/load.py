"""Load test of the gRPC edge service: throughput, latency percentiles and peak memory for 1..N clients.

Each level runs `clients` threads, each with its own channel, sending back-to-back Construct
requests for `duration_s` seconds (after one warm-up request per client). `request_kwargs` is one
setting for every request, or a list of settings (e.g. MIXED: different samplers, steps, samples and
precisions, so the batcher holds several keys at once) that each client walks through in turn,
starting at its own index. With `retry`, a client answered RESOURCE_EXHAUSTED or UNAVAILABLE backs
off (exponentially, with jitter) and sends the same request again, as a well-behaved gRPC client
does; retries are counted, other failures are errors. Latency is the client-side wall time of one
answered request, retries included. `stalled_s` is the longest stretch in the window in which no
request completed. When the server runs in this process the mean batch size is read from its
Prometheus registry and the process' resident memory is sampled every 50 ms (peak_rss_mib).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np

from ckm_edge.benchmarks.memory import _rss_mib
from ckm_edge.runtime.client import EdgeClient
from ckm_edge.runtime.operators import Operator

# Mixed settings for a small test model (steps per request kept short); `mixed(steps)` scales them.
MIXED = [
    {"sampler": "diffpir", "steps": 3, "samples": 2},
    {"sampler": "diffpir", "steps": 5, "samples": 1},
    {"sampler": "daps", "steps": 3, "samples": 1},
    {"sampler": "dps", "steps": 2, "samples": 1},
    {"sampler": "diffpir", "steps": 3, "samples": 1, "precision": "fp16"},
]
RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


def mixed(steps: int) -> list[dict]:
    """MIXED with every step count scaled so that the longest is `steps`."""
    top = max(m["steps"] for m in MIXED)
    return [{**m, "steps": max(1, round(m["steps"] * steps / top))} for m in MIXED]


@dataclass(frozen=True)
class LoadLevel:
    clients: int
    requests: int
    errors: int
    seconds: float
    throughput_rps: float
    p50_s: float
    p95_s: float
    p99_s: float
    mean_batch_rows: float | None
    retries: int = 0
    stalled_s: float = 0.0
    peak_rss_mib: float | None = None


def _batch_stats(edge) -> tuple[float, float]:
    if edge is None:
        return 0.0, 0.0
    reg = edge.metrics.registry
    return (reg.get_sample_value("ckm_batch_rows_sum") or 0.0, reg.get_sample_value("ckm_batch_rows_count") or 0.0)


def run_level(target: str, y: np.ndarray, op: Operator, clients: int, duration_s: float,
              request_kwargs: dict | list[dict], edge=None, retry: bool = False) -> LoadLevel:
    """One concurrency level; `edge` (an in-process EdgeServer) adds the mean batch size and peak RSS."""
    if clients < 1 or duration_s <= 0:
        raise ValueError(f"need clients >= 1 and duration_s > 0, got {clients}, {duration_s}")
    settings = request_kwargs if isinstance(request_kwargs, list) else [request_kwargs]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    completed: list[list[float]] = [[] for _ in range(clients)]
    errors, retries = [0] * clients, [0] * clients
    clock: dict[str, float] = {}
    done = threading.Event()

    def open_window() -> None:  # runs once, before the barrier releases anyone
        clock["began"] = time.perf_counter()
        clock["stop_at"] = clock["began"] + duration_s

    start = threading.Barrier(clients + 1, action=open_window)

    def call(client: EdgeClient, i: int, kwargs: dict) -> None:
        backoff = 0.01
        rng = random.Random(i)
        while True:
            try:
                client.construct(y, op, seed=i, **kwargs)
                return
            except grpc.RpcError as e:
                if not retry or e.code() not in RETRYABLE or time.perf_counter() > clock.get("stop_at", float("inf")) + 30:
                    raise
                retries[i] += 1
                time.sleep(backoff * (0.5 + rng.random()))
                backoff = min(0.5, backoff * 2)

    def worker(i: int) -> None:
        with EdgeClient(target) as client:
            for k in range(len(settings)):  # warm-up: channel, model, every engine and memory estimate
                call(client, i, settings[(i + k) % len(settings)])
            start.wait()
            k = i
            while time.perf_counter() < clock["stop_at"]:
                t0 = time.perf_counter()
                try:
                    call(client, i, settings[k % len(settings)])
                except Exception:  # counted, not fatal: the benchmark reports the error rate
                    errors[i] += 1
                    continue
                finally:
                    k += 1
                t1 = time.perf_counter()
                latencies[i].append(t1 - t0)
                completed[i].append(t1)

    peak = [0.0]

    def sample_rss() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _rss_mib())

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    rows0, batches0 = _batch_stats(edge)
    start.wait()  # everyone is warm: the measured window opens
    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    for t in threads:
        t.join()
    done.set()
    sampler.join()
    elapsed = time.perf_counter() - clock["began"]
    rows1, batches1 = _batch_stats(edge)
    lat = np.array([v for per in latencies for v in per])
    if lat.size == 0:
        raise RuntimeError(f"no request completed at {clients} client(s) in {duration_s} s ({sum(errors)} errors)")
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    times = np.sort([clock["began"]] + [t for per in completed for t in per if t <= clock["stop_at"]])
    stalled = float(np.diff(times).max()) if len(times) > 1 else float(duration_s)
    mean_batch = (rows1 - rows0) / (batches1 - batches0) if edge is not None and batches1 > batches0 else None
    return LoadLevel(clients, int(lat.size), sum(errors), elapsed, lat.size / elapsed, float(p50), float(p95), float(p99),
                     mean_batch, sum(retries), stalled, peak[0] if edge is not None else None)


def run(target: str, y: np.ndarray, op: Operator, clients: list[int], duration_s: float,
        request_kwargs: dict | list[dict], edge=None, retry: bool = False, progress=print) -> list[dict]:
    """`run_level` at each count of `clients`, in order: one dict per level."""
    levels = []
    for n in clients:
        level = run_level(target, y, op, n, duration_s, request_kwargs, edge, retry=retry)
        progress(f"{n} client(s): {level.requests} requests, {level.errors} errors, {level.throughput_rps:.2f} req/s, "
                 f"p50 {level.p50_s * 1e3:.0f} ms, p99 {level.p99_s * 1e3:.0f} ms")
        levels.append(vars(level))
    return levels
