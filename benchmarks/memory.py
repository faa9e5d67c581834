"""Memory: peak resident memory of an edge engine per precision and batch, and package sizes.

Each measurement runs in a fresh Python process (`python -m ckm_edge.benchmarks.memory --child ...`) that
imports only the torch-free runtime, opens the engine, runs a sampler (its recommended settings
for an IPbox observation, `batch` posterior samples in one batch) and reports its peak resident
set size (getrusage ru_maxrss) and the RSS before the engine opened, so the numbers are the edge
server's own footprint, not the benchmark's. Samplers that never differentiate through the
network (diffpir, daps) never load the forward-with-saves and backward graphs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(package: str, precision: str, batch: int, steps: int, sampler: str = "dps") -> dict:
    import numpy as np

    from ckm_edge.runtime import tasks
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.package import load_package
    from ckm_edge.runtime.recommend import resolve
    from ckm_edge.runtime.sampler import Observations, respaced, sample

    base = _rss_mib()
    pkg = load_package(package)
    rng = np.random.default_rng(0)
    x = np.full((batch, 2, pkg.tile_size, pkg.tile_size), 0.5, np.float32)
    op = tasks.make_operator("ipbox", rng, x)
    y = tasks.observe(op, x, rng)
    cfg, _, _ = resolve(pkg.manifest.samplers, op, sampler)
    with open_engine(pkg, EngineConfig(precision=precision)) as engine:
        opened = _rss_mib()
        sample(engine, respaced(pkg.schedule(), steps, cfg), Observations.of(op, y, x.shape[1:], batch, 0.01),
               [np.random.default_rng(b) for b in range(batch)], cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"sampler": sampler, "precision": precision, "batch": batch, "baseline_mib": round(base, 1),
            "after_open_mib": round(opened, 1), "peak_mib": round(peak, 1)}


def run(package: str, precisions: list[str], batches: list[int], steps: int = 3,
        samplers: tuple[str, ...] = ("dps",)) -> dict:
    from ckm_edge.runtime.package import load_package

    pkg = load_package(package)
    rows = []
    for sampler in samplers:
        for precision in precisions:
            for batch in batches:
                proc = subprocess.run(
                    [sys.executable, "-m", "ckm_edge.benchmarks.memory", "--child", package, precision, str(batch), str(steps),
                     sampler], capture_output=True, text=True, timeout=1800,
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"memory child {sampler} {precision} b{batch} failed: {proc.stderr[-2000:]}")
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    sizes = {}
    for rel, info in pkg.manifest.files.items():
        p = rel.split("/")[0]
        sizes[p] = sizes.get(p, 0) + info.bytes
    return {"package": f"{pkg.name} {pkg.version}", "tile_size": pkg.tile_size, "rows": rows, "package_bytes": sizes,
            "steps": steps, "samplers": list(samplers)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=5, metavar=("PACKAGE", "PRECISION", "BATCH", "STEPS", "SAMPLER"), required=True)
    a = parser.parse_args()
    print(json.dumps(child(a.child[0], a.child[1], int(a.child[2]), int(a.child[3]), a.child[4])))
