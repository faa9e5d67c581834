"""Memory: peak resident memory of an edge engine per precision and batch, and package sizes.

Each measurement runs in a fresh Python process (`python -m benchmarks.memory --child ...`) that
imports only the torch-free runtime, opens the engine, runs guided DPS steps and reports its
peak resident set size (getrusage ru_maxrss) and the RSS before the engine opened, so the
numbers are the edge server's own footprint, not the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(package: str, precision: str, batch: int, steps: int) -> dict:
    import numpy as np

    from runtime import tasks
    from runtime.engine import EngineConfig, open_engine
    from runtime.package import load_package
    from runtime.dps import DPSConfig
    from runtime.sampler import Observations, sample

    base = _rss_mib()
    pkg = load_package(package)
    rng = np.random.default_rng(0)
    x = np.full((batch, 2, pkg.tile_size, pkg.tile_size), 0.5, np.float32)
    op = tasks.make_operator("ipbox", rng, x)
    y = tasks.observe(op, x, rng)
    with open_engine(pkg, EngineConfig(precision=precision)) as engine:
        opened = _rss_mib()
        sample(engine, pkg.schedule().respace(steps), Observations.of(op, y, x.shape[1:], batch),
               [np.random.default_rng(b) for b in range(batch)], DPSConfig())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"precision": precision, "batch": batch, "baseline_mib": round(base, 1),
            "after_open_mib": round(opened, 1), "peak_mib": round(peak, 1)}


def run(package: str, precisions: list[str], batches: list[int], steps: int = 3) -> tuple[dict, str]:
    from runtime.package import load_package

    pkg = load_package(package)
    rows = []
    for precision in precisions:
        for batch in batches:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.memory", "--child", package, precision, str(batch), str(steps)],
                capture_output=True, text=True, timeout=1800,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"memory child {precision} b{batch} failed: {proc.stderr[-2000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    sizes = {}
    for rel, info in pkg.manifest["files"].items():
        p = rel.split("/")[0]
        sizes[p] = sizes.get(p, 0) + info["bytes"]
    lines = [
        f"Edge engine memory on `{pkg.name} {pkg.version}` ({pkg.tile_size}x{pkg.tile_size}), ONNX Runtime CPU, "
        f"guided DPS (M = 1), {steps} steps, each row a fresh process importing only the torch-free runtime.",
        "",
        "| precision | batch | RSS before (MiB) | RSS engine open (MiB) | peak RSS (MiB) | peak - before (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {r['precision']} | {r['batch']} | {r['baseline_mib']:.0f} | {r['after_open_mib']:.0f} | {r['peak_mib']:.0f} | "
          f"{r['peak_mib'] - r['baseline_mib']:.0f} |" for r in rows],
        "",
        "| precision | package files (MiB) |",
        "|---|---:|",
        *[f"| {p} | {b / 2**20:.1f} |" for p, b in sorted(sizes.items())],
    ]
    return {"rows": rows, "package_bytes": sizes, "steps": steps}, "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, metavar=("PACKAGE", "PRECISION", "BATCH", "STEPS"), required=True)
    a = parser.parse_args()
    print(json.dumps(child(a.child[0], a.child[1], int(a.child[2]), int(a.child[3]))))
