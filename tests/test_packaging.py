"""The distribution as integrators install it: one import name, no compiler, no torch at the edge."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "__init__.py", "runtime", "training", "export", "benchmarks", "protos")


def test_the_wheel_installs_everything_under_ckm_edge(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "results", "RESULTS.md"))
        else:
            shutil.copy2(path, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("ckm_edge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ckm_edge", next(t for t in tops if t.endswith(".dist-info"))}, sorted(tops)
    for needed in ("ckm_edge/runtime/server.py", "ckm_edge/protos/ckm/edge/v1/edge_pb2_grpc.py",
                   "ckm_edge/protos/ckm/edge/v1/edge.proto", "ckm_edge/training/procedural_presets.json"):
        assert needed in names, needed
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    edge = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")
            and ("extra ==" not in line or "'cpu'" in line or "'serve'" in line or '"cpu"' in line or '"serve"' in line)]
    assert edge and not any("torch" in line or "grpcio-tools" in line for line in edge), edge
