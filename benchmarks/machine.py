"""A description of the machine a benchmark ran on, written into every result."""

from __future__ import annotations

import os
import platform
import subprocess

from ckm_edge.runtime.engine import available_cpus
from ckm_edge.runtime.package import installed_versions

_LIBRARIES = ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "onnx", "grpcio", "tensorrt")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_names() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def describe() -> dict:
    """CPU model, usable cores, memory, GPUs and the versions of the libraries that matter."""
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": _cpu_model(),
        "cores": available_cpus(),
        "memory_gib": mem_gib,
        "gpus": _gpu_names(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": installed_versions(_LIBRARIES),
    }


def label(machine: dict) -> str:
    """One line naming a machine, for report headings."""
    gpus = ", ".join(machine.get("gpus") or []) or "no GPU"
    return f"{machine['cpu']}, {machine['cores']} cores, {machine.get('memory_gib')} GiB, {gpus}"
