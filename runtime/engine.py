"""Engines: the network behind one small interface, without PyTorch.

    score(x, t, cond=None)      -> s               one network forward
    forward(x, t, cond=None)    -> (s, saved)      forward that keeps what the backward needs
    backward(saved, v)          -> v^T ds/dx       the network's vector-Jacobian product
    condition_channels                             site condition channels (0: unconditional)
    close()                                        release the sessions (also a context manager)

`cond` (B, K, H, W) is the site condition (runtime.condition) of a site-aware package; left out,
the engine feeds zeros (nothing known: the paper's setting). An unconditional package refuses one.

`OrtEngine` (here) and `runtime.tensorrt.TrtEngine` implement it. `OrtEngine` runs a package's
ONNX graphs in ONNX Runtime on the CPU (threads configurable) or
with CUDA (IO binding keeps the saved tensors on the GPU between forward and backward). Every
native call goes through `_checked`, which re-raises ONNX Runtime's message as an EngineError.
Calls are counted per kind (`calls`), which the tests use to check the cost of a DPS step.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckm_edge.runtime.package import GRAPHS, Package


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


def _checked(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # ONNX Runtime raises its own exception classes
        if isinstance(e, EngineError):
            raise
        raise EngineError(f"{what} failed in ONNX Runtime: {e}") from e


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
    # the cores from the second's (fp32 guided step 177 -> 112 ms on the project's 2-core CPU,
    # RESULTS latency-backends-cpu; score-only constructions unchanged). True / False: every graph.
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


@dataclass
class OrtEngine:
    package: Package
    config: EngineConfig = EngineConfig()
    calls: Counter = field(default_factory=Counter)

    def __post_init__(self):
        check_onnxruntime_install()
        import onnxruntime as ort

        self._ort = ort
        if self.config.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError("device 'cuda' asked for, but this ONNX Runtime has no CUDAExecutionProvider "
                                  "(install the `gpu` extra on a machine with an NVIDIA GPU)")
            providers = [("CUDAExecutionProvider", {"device_id": self.config.device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self._providers = providers
        self._sessions = {}
        self._open = True
        self._session("score")  # the score graph always; forward/backward when a sampler first needs them

    def _session(self, graph: str):
        """The graph's session, created on first use: a sampler that never differentiates through
        the network never loads the forward-with-saves and backward graphs (nor pays their arenas)."""
        if not self._open:
            raise EngineError("engine is closed")
        if graph not in self._sessions:
            path = self.package.graph_path(self.config.precision, graph)
            self._sessions[graph] = _checked(f"loading {path}", self._ort.InferenceSession, str(path),
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

    def load_all(self) -> OrtEngine:
        """Create every graph's session now (e.g. to fail early on a broken package)."""
        for graph in GRAPHS:
            self._session(graph)
        return self

    # -- the interface ---------------------------------------------------------------------------
    @property
    def condition_channels(self) -> int:
        return self.package.condition_channels

    @property
    def condition_encoding(self):
        return self.package.condition_encoding

    def score(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        self.calls["score"] += 1
        return self._run("score", network_inputs(x, t, cond, self.condition_channels))[0]

    def forward(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        self.calls["forward"] += 1
        feeds = network_inputs(x, t, cond, self.condition_channels)
        if self.config.device == "cuda":
            return self._forward_bound(feeds)
        outs = self._run("forward", feeds)
        return outs[0], outs[1:]

    def backward(self, saved: Any, v: np.ndarray) -> np.ndarray:
        self.calls["backward"] += 1
        if self.config.device == "cuda":
            return self._backward_bound(saved, v)
        feeds = dict(zip(self._saved_names, saved))
        feeds["v"] = _f32(v)
        return self._run("backward", feeds)[0]

    def close(self) -> None:
        self._sessions.clear()
        self._open = False

    def __enter__(self) -> OrtEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------
    def _run(self, graph: str, feeds: dict) -> list[np.ndarray]:
        return _checked(f"{graph} graph", self._session(graph).run, None, feeds)

    def _forward_bound(self, feeds: dict):
        """CUDA: the saved tensors stay on the GPU as OrtValues; only the score comes back."""
        session = self._session("forward")
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda", self.config.device_id)
        _checked("forward graph", session.run_with_iobinding, binding)
        outs = binding.get_outputs()
        return outs[0].numpy(), outs[1:]

    def _backward_bound(self, saved, v):
        session = self._session("backward")
        binding = session.io_binding()
        for name, value in zip(self._saved_names, saved):
            binding.bind_ortvalue_input(name, value)
        binding.bind_cpu_input("v", _f32(v))
        binding.bind_output("vjp", "cpu")
        _checked("backward graph", session.run_with_iobinding, binding)
        return binding.copy_outputs_to_cpu()[0]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def network_inputs(x: np.ndarray, t: np.ndarray, cond: np.ndarray | None, channels: int) -> dict:
    """The feeds of a score/forward graph: x, t and, for a site-aware package, cond (zeros when
    not given). Refuses a condition the package cannot take or of the wrong shape."""
    feeds = {"x": _f32(x), "t": _f32(t)}
    if not channels:
        if cond is not None:
            raise EngineError("this package is not site-aware: its graphs take no condition input")
        return feeds
    want = (feeds["x"].shape[0], channels) + feeds["x"].shape[2:]
    if cond is None:
        feeds["cond"] = np.zeros(want, np.float32)
    else:
        feeds["cond"] = _f32(cond)
        if feeds["cond"].shape != want:
            raise EngineError(f"condition has shape {feeds['cond'].shape}, the package wants {want}")
    return feeds


def open_engine(package: Package, config: EngineConfig = EngineConfig()):
    """The engine for a package on `config.backend` (validated by EngineConfig): "onnxruntime"
    (CPU or CUDA per config.device), "openvino" (CPU) or "tensorrt" (CUDA). A package whose
    manifest lists the backends it was built for ("backends") refuses others."""
    backend = config.backend
    declared = package.manifest.get("backends")
    if declared is not None and backend not in declared:
        raise EngineError(f"package {package.name} {package.version} was built for {', '.join(declared)}, not {backend}")
    if backend == "onnxruntime":
        return OrtEngine(package, config)
    if backend == "openvino":
        from ckm_edge.runtime.openvino_engine import OvEngine

        return OvEngine(package, config)
    from ckm_edge.runtime.tensorrt import TrtEngine

    return TrtEngine(package, config.precision)
