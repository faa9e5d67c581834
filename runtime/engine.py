"""Engines: the network behind one small interface, without PyTorch.

    score(x, t, cond=None)      -> s               one network forward
    forward(x, t, cond=None)    -> (s, saved)      forward that keeps what the backward needs
    backward(saved, v)          -> v^T ds/dx       the network's vector-Jacobian product
    condition_channels                             site condition channels (0: unconditional)
    close()                                        release the sessions (also a context manager)

`cond` (B, K, H, W) is the site condition (runtime.condition) of a site-aware package; left out,
the engine feeds zeros (nothing known: the paper's setting). An unconditional package refuses one.

`EngineBase` implements it once: the public methods count the call per kind (`calls`, which the
tests use to check the cost of a DPS step), refuse a closed engine and check the condition, then
call the backend's hooks `_score(x, t, cond)`, `_forward(x, t, cond)` and `_backward(saved, v)`
(`cond` checked: None for an unconditional network, else float32 (B, K, H, W)); `_release()`
frees the backend's resources on `close()`. Every native call goes through `_checked`, which
re-raises the library's message as an EngineError. The backends: `OrtEngine` (here: ONNX Runtime
on the CPU, threads configurable, or with CUDA, where IO binding keeps the saved tensors on the
GPU between forward and backward), `runtime.openvino_engine.OvEngine`,
`runtime.tensorrt.TrtEngine` and `runtime.adapter.ComposedEngine` (a prior plus a site adapter).
"""

from __future__ import annotations

import abc
import importlib.metadata
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from ckm_edge.runtime.package import Package


class EngineError(RuntimeError):
    """A failure inside the inference library, or an engine asked for something it cannot do."""


def check_onnxruntime_install() -> None:
    """Refuse an environment with both onnxruntime and onnxruntime-gpu: they overwrite each other."""
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.version(dist)
            found.append(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if len(found) == 2:
        raise EngineError(
            "both onnxruntime and onnxruntime-gpu are installed; they overwrite each other's files. "
            "Uninstall both, then install exactly one (the `cpu` or the `gpu` extra of ckm-edge)."
        )
    if not found:
        raise EngineError("ONNX Runtime is not installed: install ckm-edge with the `cpu` or the `gpu` extra")


BACKENDS = ("onnxruntime", "openvino", "tensorrt")


@dataclass(frozen=True)
class EngineConfig:
    precision: str = "fp32"
    device: str = "cpu"  # "cpu" or "cuda"
    threads: int = 0  # intra-op threads for the CPU provider; 0 = the CPUs this process may run on (cpu_threads)
    device_id: int = 0
    # One thread, sequential execution and ONNX Runtime's deterministic kernels: the same inputs
    # give bitwise-identical outputs run after run (multi-threaded reductions may not).
    deterministic: bool = False
    # Which graphs keep ONNX Runtime's CPU memory arena (fastest, but it holds its high-water mark
    # for the life of the session): "all", "score" (the forward-with-saves and backward graphs,
    # hundreds of MiB per row, give their memory back after every call, ~15% slower) or "none".
    arena: str = "all"
    # Which inference library runs the graphs (BACKENDS): ONNX Runtime (CPU or CUDA), OpenVINO
    # (CPU; runtime.openvino_engine) or TensorRT (CUDA; runtime.tensorrt).
    backend: str = "onnxruntime"
    # ONNX Runtime's intra-op worker threads spin while waiting for work: lower latency on an
    # otherwise idle machine, wasted cores next to other work (ckm-bench latency measures both).
    # None (auto): the score graph's workers spin, the forward-with-saves and backward graphs'
    # do not — a guided step runs the two back to back, and the first one's spinning workers took
    # the cores from the second's (measured: RESULTS.md, latency-backends-cpu). True / False: every graph.
    spinning: bool | None = None

    def spins(self, graph: str) -> bool:
        return graph == "score" if self.spinning is None else self.spinning

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise EngineError(f"unknown engine backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        if self.device not in ("cpu", "cuda"):
            raise EngineError(f"engine device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.arena not in ("all", "score", "none"):
            raise EngineError(f"arena must be 'all', 'score' or 'none', got {self.arena!r}")
        if self.threads < 0:
            raise EngineError(f"threads must be >= 0, got {self.threads}")

    def cpu_threads(self) -> int:
        """Intra-op threads for a CPU engine: the configured number, else one per CPU this process
        may run on. ONNX Runtime's own default is one per core of the machine, each worker pinned to
        its core: a process confined to fewer cores (taskset, a container's cpuset) would keep
        waiting on workers pinned where other work runs."""
        return self.threads or available_cpus()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API on this OS
        return max(1, os.cpu_count() or 1)


class EngineBase(abc.ABC):
    """The engine interface, implemented once (module doc). A backend sets `package` (or overrides
    `condition_channels` and `condition_encoding`), calls `super().__init__()` and implements the
    hooks; `library` names whose errors `_checked` re-raises."""

    library = "the inference library"
    package: Package

    def __init__(self) -> None:
        self.calls: Counter = Counter()  # network calls per kind: "score", "forward", "backward"
        self._open = True

    @property
    def condition_channels(self) -> int:
        return self.package.condition_channels

    @property
    def condition_encoding(self):
        return self.package.condition_encoding

    def score(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        self.calls["score"] += 1
        self._check_open()
        return self._score(x, t, self._condition(x, cond))

    def forward(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        self.calls["forward"] += 1
        self._check_open()
        return self._forward(x, t, self._condition(x, cond))

    def backward(self, saved: Any, v: np.ndarray) -> np.ndarray:
        self.calls["backward"] += 1
        self._check_open()
        return self._backward(saved, _f32(v))

    def close(self) -> None:
        self._open = False
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what a backend implements ---------------------------------------------------------------
    @abc.abstractmethod
    def _score(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray: ...

    @abc.abstractmethod
    def _forward(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> tuple[np.ndarray, Any]: ...

    @abc.abstractmethod
    def _backward(self, saved: Any, v: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _release(self) -> None:
        """Free the backend's sessions, requests or buffers (on close)."""

    # -- shared by the backends ------------------------------------------------------------------
    def _check_open(self) -> None:
        if not self._open:
            raise EngineError("engine is closed")

    def _condition(self, x: np.ndarray, cond: np.ndarray | None) -> np.ndarray | None:
        return condition_input(np.shape(x), cond, self.condition_channels)

    def _checked(self, what: str, fn, *args, **kwargs):
        """fn(*args, **kwargs), the library's own exceptions re-raised as an EngineError with its message."""
        try:
            return fn(*args, **kwargs)
        except EngineError:
            raise
        except Exception as e:  # each library raises its own exception classes
            raise EngineError(f"{what} failed in {self.library}: {e}") from e


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def condition_input(shape: tuple[int, ...], cond: np.ndarray | None, channels: int) -> np.ndarray | None:
    """The condition a network with `channels` condition channels gets with inputs x of `shape`:
    None for an unconditional network (which refuses one), else float32 (B, K, H, W), zeros when
    not given. Refuses a condition of the wrong shape."""
    if not channels:
        if cond is not None:
            raise EngineError("this package is not site-aware: its graphs take no condition input")
        return None
    want = (shape[0], channels) + tuple(shape[2:])
    if cond is None:
        return np.zeros(want, np.float32)
    cond = _f32(cond)
    if cond.shape != want:
        raise EngineError(f"condition has shape {cond.shape}, the package wants {want}")
    return cond


def graph_inputs(x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> dict:
    """The feeds of a score/forward graph: x, t and the (checked) condition where there is one."""
    feeds = {"x": _f32(x), "t": _f32(t)}
    if cond is not None:
        feeds["cond"] = cond
    return feeds


def network_inputs(x: np.ndarray, t: np.ndarray, cond: np.ndarray | None, channels: int) -> dict:
    """The feeds of a score/forward graph of a network with `channels` condition channels."""
    return graph_inputs(x, t, condition_input(np.shape(x), cond, channels))


class OrtEngine(EngineBase):
    library = "ONNX Runtime"

    def __init__(self, package: Package, config: EngineConfig = EngineConfig()):
        super().__init__()
        check_onnxruntime_install()
        import onnxruntime as ort

        self.package, self.config = package, config
        self._ort = ort
        if config.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError("device 'cuda' asked for, but this ONNX Runtime has no CUDAExecutionProvider "
                                  "(install the `gpu` extra on a machine with an NVIDIA GPU)")
            providers = [("CUDAExecutionProvider", {"device_id": config.device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self._providers = providers
        self._sessions = {}
        self._session("score")  # the score graph always; forward/backward when a sampler first needs them

    def _session(self, graph: str):
        """The graph's session, created on first use: a sampler that never differentiates through
        the network never loads the forward-with-saves and backward graphs (nor pays their arenas)."""
        self._check_open()
        if graph not in self._sessions:
            path = self.package.graph_path(self.config.precision, graph)
            self._sessions[graph] = self._checked(f"loading {path}", self._ort.InferenceSession, str(path),
                                                  self._options(graph), providers=self._providers)
            if graph in ("forward", "backward") and {"forward", "backward"} <= self._sessions.keys():
                self._check_saved()
        return self._sessions[graph]

    def _options(self, graph: str):
        ort = self._ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = self.config.cpu_threads()
        if self.config.deterministic:
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.use_deterministic_compute = True
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not self.config.spins(graph):
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.enable_cpu_mem_arena = self.config.arena == "all" or (self.config.arena == "score" and graph == "score")
        return opts

    def _check_saved(self) -> None:
        saved = [o.name for o in self._sessions["forward"].get_outputs()[1:]]
        if [i.name for i in self._sessions["backward"].get_inputs()] != saved + ["v"]:
            raise EngineError("the package's forward outputs do not line up with its backward inputs")

    @property
    def _saved_names(self) -> list[str]:
        return [o.name for o in self._session("forward").get_outputs()[1:]]

    # -- the hooks -------------------------------------------------------------------------------
    def _score(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        return self._run("score", graph_inputs(x, t, cond))[0]

    def _forward(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> tuple[np.ndarray, Any]:
        feeds = graph_inputs(x, t, cond)
        if self.config.device == "cuda":
            return self._forward_bound(feeds)
        outs = self._run("forward", feeds)
        return outs[0], outs[1:]

    def _backward(self, saved: Any, v: np.ndarray) -> np.ndarray:
        if self.config.device == "cuda":
            return self._backward_bound(saved, v)
        feeds = dict(zip(self._saved_names, saved))
        feeds["v"] = v
        return self._run("backward", feeds)[0]

    def _release(self) -> None:
        self._sessions.clear()

    # -- internals -------------------------------------------------------------------------------
    def _run(self, graph: str, feeds: dict) -> list[np.ndarray]:
        return self._checked(f"{graph} graph", self._session(graph).run, None, feeds)

    def _forward_bound(self, feeds: dict):
        """CUDA: the saved tensors stay on the GPU as OrtValues; only the score comes back."""
        session = self._session("forward")
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda", self.config.device_id)
        self._checked("forward graph", session.run_with_iobinding, binding)
        outs = binding.get_outputs()
        return outs[0].numpy(), outs[1:]

    def _backward_bound(self, saved, v):
        session = self._session("backward")
        binding = session.io_binding()
        for name, value in zip(self._saved_names, saved):
            binding.bind_ortvalue_input(name, value)
        binding.bind_cpu_input("v", v)
        binding.bind_output("vjp", "cpu")
        self._checked("backward graph", session.run_with_iobinding, binding)
        return binding.copy_outputs_to_cpu()[0]


def open_engine(package: Package, config: EngineConfig = EngineConfig()):
    """The engine for a package on `config.backend` (validated by EngineConfig): "onnxruntime"
    (CPU or CUDA per config.device), "openvino" (CPU) or "tensorrt" (CUDA). A package whose
    manifest lists the backends it was built for ("backends") refuses others."""
    backend = config.backend
    declared = package.manifest.backends
    if declared is not None and backend not in declared:
        raise EngineError(f"package {package.name} {package.version} was built for {', '.join(declared)}, not {backend}")
    if backend == "onnxruntime":
        return OrtEngine(package, config)
    if backend == "openvino":
        from ckm_edge.runtime.openvino_engine import OvEngine

        return OvEngine(package, config)
    from ckm_edge.runtime.tensorrt import TrtEngine

    return TrtEngine(package, config.precision)
