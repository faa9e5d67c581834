"""Engine memory per posterior sample of a package: measured once in a fresh process, cached on disk.

    per_row = row_bytes(package, "fp32", vjp=False)   # bytes one more posterior sample costs

The edge server bounds a batch's memory by rows x this number (runtime.batcher). Each measurement
runs `python -m ckm_edge.runtime.memory PACKAGE PRECISION PATH` in a child process that imports only the
torch-free runtime, runs two steps of a sampler on batches of 1 and 3 rows and reports the growth
of its peak resident set per extra row: the engine's arena, the activations (and, for the VJP
path, the saved activations and the backward pass) and the sampler's own arrays. "score" is the
path of the score-only samplers (diffpir, daps), "vjp" the path through the forward-with-saves and
backward graphs (dps). Results are cached per package manifest digest under $CKM_EDGE_CACHE (default
~/.cache/ckm-edge/memory); a package's bytes never change under one digest.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger("ckm.edge.memory")
PATHS = ("score", "vjp")
_LOCK = threading.Lock()
_MEMO: dict[tuple[str, str, str, str], int] = {}


class MemoryProbeError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("CKM_EDGE_CACHE", Path.home() / ".cache" / "ckm-edge")) / "memory"


def row_bytes(package, precision: str, vjp: bool, backend: str = "onnxruntime") -> int:
    """Measured (or cached) engine memory per posterior sample of `package` at `precision` on
    `backend`; 0 (and a warning) when it cannot be measured."""
    path = "vjp" if vjp else "score"
    key = (package.manifest_sha256 or str(package.root), precision, path, backend)
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
        suffix = "" if backend == "onnxruntime" else f"-{backend}"  # ONNX Runtime's entries keep their names
        file = cache_dir() / f"{key[0]}-{precision}-{path}{suffix}.json"
        try:
            value = int(json.loads(file.read_text())["row_bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            try:
                value = _measure(package.root, precision, path, backend)
            except MemoryProbeError as e:  # never refuse a request for it: this model's batches go unbounded
                log.warning("no memory estimate; batches of %s are bounded by rows only: %s", package.root, e)
                _MEMO[key] = 0
                return 0
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
                tmp = file.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"row_bytes": value, "package": str(package.root)}))
                tmp.replace(file)
            except OSError:
                pass  # an unwritable cache only costs a re-measurement
        _MEMO[key] = value
        return value


def _measure(root: Path, precision: str, path: str, backend: str = "onnxruntime") -> int:
    try:
        proc = subprocess.run([sys.executable, "-m", "ckm_edge.runtime.memory", str(root), precision, path, backend],
                              capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MemoryProbeError(f"measuring {path} memory of {root} ({precision}) failed: {e}") from None
    if proc.returncode != 0:
        raise MemoryProbeError(f"measuring {path} memory of {root} ({precision}) failed: {proc.stderr[-1500:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["row_bytes"])


def release_free_memory() -> None:
    """Hand the C heap's free memory back to the system (glibc malloc_trim; a no-op elsewhere).
    Called after every batch: ONNX Runtime without its arena and numpy free large buffers into the
    heap, which otherwise keeps them mapped at the high-water mark of the largest batch."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(root: str, precision: str, path: str, backend: str = "onnxruntime") -> dict:
    import numpy as np

    from ckm_edge.runtime import executor
    from ckm_edge.runtime.daps import DAPSConfig  # noqa: F401  (registers every sampler)
    from ckm_edge.runtime.diffpir import DiffPIRConfig
    from ckm_edge.runtime.dps import DPSConfig
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.operators import Identity
    from ckm_edge.runtime.package import load_package

    pkg = load_package(root)
    n = pkg.tile_size
    cfg = DPSConfig(corrector_steps=1) if path == "vjp" else DiffPIRConfig()
    peaks = {}
    with open_engine(pkg, EngineConfig(precision=precision, threads=1, backend=backend)) as engine:
        model = executor.Opened(engine, pkg.schedule())
        for batch in (1, 3):
            y = np.full((2, n, n), 0.5, np.float32)
            job = executor.plan(model, Identity(), y, (2, n, n), executor.ConstructConfig(2, batch, sampler=cfg), sigma=0.01)
            executor.execute([job])
            peaks[batch] = _peak_bytes()
    floor = 4 * 2 * n * n * 4  # a few copies of the map itself
    return {"row_bytes": max(floor, (peaks[3] - peaks[1]) // 2), "peaks": peaks, "path": path}


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5) or sys.argv[3] not in PATHS:
        sys.exit("usage: python -m ckm_edge.runtime.memory PACKAGE PRECISION {score,vjp} [BACKEND]")
    print(json.dumps(child(*sys.argv[1:])))
