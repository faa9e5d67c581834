"""Load test of the gRPC edge service: throughput and latency percentiles for 1..N concurrent clients.

Each level runs `clients` threads, each with its own channel, sending back-to-back Construct
requests for `duration_s` seconds (after one warm-up request per client). Latency is the
client-side wall time of one call. When the server runs in this process, the mean batch size the
dynamic batcher formed is read from its Prometheus registry.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from runtime.client import EdgeClient
from runtime.operators import Operator


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

    def row(self) -> str:
        batch = "" if self.mean_batch_rows is None else f"{self.mean_batch_rows:.2f}"
        return (f"| {self.clients} | {self.requests} | {self.errors} | {self.throughput_rps:.2f} | "
                f"{self.p50_s * 1e3:.0f} | {self.p95_s * 1e3:.0f} | {self.p99_s * 1e3:.0f} | {batch} |")


def _batch_stats(edge) -> tuple[float, float]:
    if edge is None:
        return 0.0, 0.0
    reg = edge.metrics.registry
    return (reg.get_sample_value("ckm_batch_rows_sum") or 0.0, reg.get_sample_value("ckm_batch_rows_count") or 0.0)


def run_level(target: str, y: np.ndarray, op: Operator, clients: int, duration_s: float, request_kwargs: dict,
              edge=None) -> LoadLevel:
    """One concurrency level; `edge` (an in-process EdgeServer) adds the mean batch size."""
    if clients < 1 or duration_s <= 0:
        raise ValueError(f"need clients >= 1 and duration_s > 0, got {clients}, {duration_s}")
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    clock: dict[str, float] = {}

    def open_window() -> None:  # runs once, before the barrier releases anyone
        clock["began"] = time.perf_counter()
        clock["stop_at"] = clock["began"] + duration_s

    start = threading.Barrier(clients + 1, action=open_window)

    def worker(i: int) -> None:
        with EdgeClient(target) as client:
            client.construct(y, op, seed=i, **request_kwargs)  # warm-up: channel, model, engine
            start.wait()
            while time.perf_counter() < clock["stop_at"]:
                t0 = time.perf_counter()
                try:
                    client.construct(y, op, seed=i, **request_kwargs)
                except Exception:  # counted, not fatal: the benchmark reports the error rate
                    errors[i] += 1
                    continue
                latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    rows0, batches0 = _batch_stats(edge)
    start.wait()  # everyone is warm: the measured window opens
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - clock["began"]
    rows1, batches1 = _batch_stats(edge)
    lat = np.array([v for per in latencies for v in per])
    if lat.size == 0:
        raise RuntimeError(f"no request completed at {clients} client(s) in {duration_s} s ({sum(errors)} errors)")
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    mean_batch = (rows1 - rows0) / (batches1 - batches0) if edge is not None and batches1 > batches0 else None
    return LoadLevel(clients, int(lat.size), sum(errors), elapsed, lat.size / elapsed, float(p50), float(p95), float(p99),
                     mean_batch)


def markdown(levels: list[LoadLevel], description: str) -> str:
    return "\n".join([
        description,
        "",
        "| clients | requests | errors | throughput (req/s) | p50 ms | p95 ms | p99 ms | mean batch rows |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(level.row() for level in levels),
    ])
