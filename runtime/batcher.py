"""Dynamic batching for the edge server: per-key queues, fair across keys, FIFO within one. No gRPC.

    batcher = Batcher(BatcherConfig(max_batch=8, max_queue_delay_ms=5, max_queue=64))
    pending = Pending(executor.plan(...), row_bytes)
    batcher.submit(pending)                # QueueFull when max_queue wait, TooLarge past the memory budget
    pending.done.wait(); pending.result    # runtime.executor.Result, or pending.error

Background jobs (`Pending.background`: a living map's rebuild, runtime.sites) wait in queues of
their own and are served only while no interactive job waits: they never delay a Construct request
that is queued (one already running finishes its batch first), and they do not count against
`max_queue`.

It only forms batches and honours deadlines: each batch runs through `runtime.executor.execute`,
the one construction path. Jobs that can share one sampler run (`executor.Job.key`) wait in one
FIFO queue per key, as Triton's dynamic batcher keeps one
queue per model. A batch worker serves the keys round robin, so a stream of one kind of request
cannot starve another; within a key jobs leave in arrival order. A batch holds the oldest job of its
key and then the next ones of the same key while they fit (`max_batch` rows, and `memory_budget`
bytes at `Pending.row_bytes` per row), waiting at most `max_queue_delay_ms` after that oldest job
arrived for more to come. Nothing is ever put back into a queue, so a worker never blocks on a
full queue and nothing is reordered.

Between sampling steps the executor checks its jobs' `alive()`; when every job of a batch has gone
(cancelled, past its deadline) the batch stops and its jobs end with `Cancelled`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ckm_edge.runtime import defaults, executor
from ckm_edge.runtime.memory import release_free_memory

log = logging.getLogger("ckm.edge.batcher")


class QueueFull(OverflowError):
    """The batcher holds max_queue jobs already; the client may retry later."""


class TooLarge(ValueError):
    """One job needs more rows or memory than a batch may hold; retrying will not help."""


class Cancelled(Exception):
    """Every job of the batch was cancelled or ran past its deadline; the batch was stopped."""


class ShuttingDown(Exception):
    """The batcher stopped before the job ran."""


@dataclass(eq=False)
class Pending:
    """A planned job (runtime.executor.plan) in the batcher: its queue bookkeeping and outcome."""

    job: executor.Job
    row_bytes: int = 0  # estimated engine memory per posterior sample (0 = not limited)
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    finished: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    result: executor.Result | None = None
    error: BaseException | None = None
    background: bool = False  # served only while no interactive job waits (see module doc)

    @property
    def samples(self) -> int:
        return self.job.samples

    @property
    def key(self) -> tuple:
        return self.job.key

    def alive(self) -> bool:
        return self.job.alive()

    def complete(self, result=None, error: BaseException | None = None) -> None:
        self.result, self.error, self.finished = result, error, time.perf_counter()
        self.done.set()


class BatcherMetrics:
    """What the batcher reports; the server's Prometheus metrics implement it. No-ops here."""

    def queued(self, jobs: int) -> None: ...

    def batch_started(self, jobs: list[Pending], rows: int, memory_bytes: int) -> None: ...

    def batch_finished(self, jobs: list[Pending], rows: int, memory_bytes: int, seconds: float) -> None: ...

    def abandoned(self) -> None: ...


@dataclass(frozen=True)
class BatcherConfig:
    max_batch: int = defaults.MAX_BATCH  # posterior-sample rows per engine batch
    max_queue_delay_ms: float = defaults.MAX_QUEUE_DELAY_MS  # longest the oldest job of a key waits for others to join its batch
    max_queue: int = defaults.MAX_QUEUE  # jobs waiting, all keys together
    workers: int = 1  # batch worker threads
    memory_budget: int = 0  # bytes of engine memory one batch may use (rows x row_bytes); 0 = no budget

    def __post_init__(self):
        if not 1 <= self.max_batch <= 256 or self.max_queue < 1 or self.workers < 1:
            raise ValueError("need 1 <= max_batch <= 256, max_queue >= 1 and workers >= 1")
        if self.max_queue_delay_ms < 0 or self.memory_budget < 0:
            raise ValueError("max_queue_delay_ms and memory_budget must be >= 0")


class Batcher:
    def __init__(self, cfg: BatcherConfig = BatcherConfig(), metrics: BatcherMetrics | None = None):
        self.cfg, self.metrics = cfg, metrics or BatcherMetrics()
        # per level (0 interactive, 1 background): key -> FIFO; insertion order = round-robin order
        self._levels: tuple[dict[tuple, deque[Pending]], dict[tuple, deque[Pending]]] = ({}, {})
        self._count = 0  # jobs waiting, both levels
        self._interactive = 0  # of which interactive (what max_queue bounds)
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [threading.Thread(target=self._loop, name=f"ckm-batcher-{i}", daemon=True)
                         for i in range(cfg.workers)]
        for t in self._threads:
            t.start()

    # -- admission -------------------------------------------------------------------------------
    def rows_for(self, row_bytes: int) -> int:
        """The most rows one batch may hold at `row_bytes` per row."""
        if not self.cfg.memory_budget or row_bytes <= 0:
            return self.cfg.max_batch
        return max(0, min(self.cfg.max_batch, self.cfg.memory_budget // row_bytes))

    def submit(self, job: Pending) -> None:
        cap = self.rows_for(job.row_bytes)
        if job.samples > cap:
            need = job.samples * job.row_bytes / 2**20
            raise TooLarge(f"samples: {job.samples} posterior samples need about {need:.0f} MiB of engine memory in "
                           f"one batch; this server allows {cap} per batch for this model and sampler "
                           f"(memory budget {self.cfg.memory_budget / 2**20:.0f} MiB, max batch {self.cfg.max_batch})")
        with self._cond:
            if self._stopped:
                raise ShuttingDown("the server is shutting down")
            if not job.background and self._interactive >= self.cfg.max_queue:
                raise QueueFull(f"the server's queue is full ({self.cfg.max_queue} jobs); retry later")
            job.enqueued = time.perf_counter()
            self._levels[int(job.background)].setdefault(job.key, deque()).append(job)
            self._count += 1
            self._interactive += not job.background
            self._cond.notify_all()
            depth = self._count
        self.metrics.queued(depth)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers; jobs still queued end with ShuttingDown."""
        with self._cond:
            self._stopped = True
            pending = [job for level in self._levels for q in level.values() for job in q]
            for level in self._levels:
                level.clear()
            self._count = self._interactive = 0
            self._cond.notify_all()
        for job in pending:
            job.complete(error=ShuttingDown("the server shut down before this request ran"))
        for t in self._threads:
            t.join(timeout=timeout)

    # -- batching --------------------------------------------------------------------------------
    def _take(self) -> tuple[list[Pending], int] | None:
        """The next batch (see module doc), or None when stopping or idle for a while."""
        with self._cond:
            while not self._count:
                if self._stopped or not self._cond.wait(timeout=0.1):
                    return None
            queues = self._levels[0] if self._interactive else self._levels[1]
            key = next(iter(queues))
            q = queues.pop(key)  # re-inserted at the end: the next batch serves the next key
            first = q[0]
            cap = max(1, self.rows_for(first.row_bytes))
            batch, rows = [], 0
            deadline = first.enqueued + self.cfg.max_queue_delay_ms / 1e3
            while True:
                while q and rows + q[0].samples <= cap:
                    job = q.popleft()
                    self._count -= 1
                    self._interactive -= not job.background
                    if job.alive():
                        batch.append(job)
                        rows += job.samples
                    else:
                        job.complete(error=Cancelled("the request was cancelled or its deadline passed while queued"))
                remaining = deadline - time.perf_counter()
                if q or rows >= cap or remaining <= 0 or self._stopped:
                    break
                queues[key] = q  # visible to submit while this worker waits for more
                self._cond.wait(timeout=remaining)
                q = queues.pop(key, q)
            if q:
                queues[key] = q
            depth = self._count
        self.metrics.queued(depth)
        return batch, rows

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
            taken = self._take()
            if taken is None:
                continue
            batch, rows = taken
            if batch:
                self._run(batch, rows)

    def _run(self, batch: list[Pending], rows: int) -> None:
        memory = rows * batch[0].row_bytes
        start = time.perf_counter()
        for pending in batch:
            pending.started = start
        self.metrics.batch_started(batch, rows, memory)
        try:
            outcome = [(r, None) for r in executor.execute([p.job for p in batch])]
        except executor.Stopped as e:
            self.metrics.abandoned()
            outcome = [(None, Cancelled(str(e)))] * len(batch)
        except Exception as e:  # the engine failed: every job of the batch gets the error
            log.exception("batch failed")
            outcome = [(None, e)] * len(batch)
        self.metrics.batch_finished(batch, rows, memory, time.perf_counter() - start)
        for pending, (result, error) in zip(batch, outcome):
            pending.complete(result, error)
        del outcome
        release_free_memory()
