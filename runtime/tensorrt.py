"""TensorRT engines built from a package's ONNX graphs on the target machine (optional).

TensorRT 10+/11 networks are strongly typed: the precision comes from the ONNX (FP32, the FP16
graph, or the INT8 QDQ graph), never from builder flags. Engines are cached next to the package
under engines/<gpu>-trt<version>/<precision>/<graph>.plan with a timing cache, keyed by GPU
name, TensorRT version and precision; an optimization profile covers batch 1..max_batch.

The `tensorrt` wheels need NVIDIA's libraries, which not every machine can install; everything
here reports why it cannot run instead of failing obscurely (`unavailable_reason`).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ckm_edge.runtime.engine import EngineBase, EngineError, graph_inputs
from ckm_edge.runtime.package import GRAPHS, Package


def unavailable_reason() -> str | None:
    """None when TensorRT and an NVIDIA GPU are usable here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return f"the tensorrt Python package is not importable ({e}); install ckm-edge[tensorrt] where NVIDIA's libraries are available"
    if not gpu_name():
        return "no NVIDIA GPU is visible (nvidia-smi lists none)"
    return None


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if names else None


def cache_dir(pkg: Package, precision: str) -> Path:
    import tensorrt as trt

    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name() or "unknown-gpu").strip("-").lower()
    return pkg.root / "engines" / f"{gpu}-trt{trt.__version__}" / precision


def build_engines(pkg: Package, precision: str, max_batch: int = 8, opt_batch: int = 1) -> list[Path]:
    """Build (or reuse from the cache) one engine per graph of `precision`; returns their paths."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    out_dir = cache_dir(pkg, precision)
    out_dir.mkdir(parents=True, exist_ok=True)
    timing_path = out_dir / "timing.cache"
    paths = []
    for graph in GRAPHS:
        plan = out_dir / f"{graph}.plan"
        paths.append(plan)
        if plan.is_file():
            continue
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(pkg.graph_path(precision, graph))):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {precision}/{graph}.onnx: {errors}")
        config = builder.create_builder_config()
        cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = list(tensor.shape)
            shape = lambda b: tuple(b if d == -1 else d for d in dims)  # noqa: E731,B023
            profile.set_shape(tensor.name, shape(1), shape(opt_batch), shape(max_batch))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine for {precision}/{graph}.onnx")
        plan.write_bytes(bytes(serialized))
        timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return paths


class TrtEngine(EngineBase):
    """The engine interface over TensorRT engines of a package (built or taken from the cache).

    Uses Polygraphy's runner for buffer management: the forward's saved tensors stay on the GPU
    (device views) and feed the backward directly; only the score and the VJP come to the host.
    """

    library = "TensorRT"

    def __init__(self, package: Package, precision: str = "fp32", max_batch: int = 8):
        super().__init__()
        reason = unavailable_reason()
        if reason:
            raise EngineError(f"TensorRT engine unavailable: {reason}")
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.package = package
        paths = dict(zip(GRAPHS, build_engines(package, precision, max_batch=max_batch)))
        self._runners = {g: TrtRunner(EngineFromBytes(BytesFromPath(str(p)))) for g, p in paths.items()}
        for runner in self._runners.values():
            runner.activate()

    def _score(self, x, t, cond):
        return self._infer("score", graph_inputs(x, t, cond))["score"].copy()

    def _forward(self, x, t, cond):
        out = self._infer("forward", graph_inputs(x, t, cond), copy_outputs_to_host=False)
        score = out.pop("score").numpy()
        return score, out

    def _backward(self, saved, v):
        feeds = dict(saved)
        feeds["v"] = v
        return self._infer("backward", feeds)["vjp"].copy()

    def _infer(self, graph: str, feeds: dict, **kwargs) -> dict:
        return self._checked(f"{graph} graph", self._runners[graph].infer, feeds, **kwargs)

    def _release(self):
        for runner in self._runners.values():
            runner.deactivate()
        self._runners = {}
