import pkgutil
import subprocess
import sys

from ckm_edge import runtime

_PROBE = r"""
import importlib, importlib.abc, pkgutil, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is hidden in this test (asked for {name})")
        return None

sys.meta_path.insert(0, BlockTorch())
from ckm_edge import runtime
for mod in MODULES:
    importlib.import_module(mod)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok", len(MODULES))
"""


def test_runtime_imports_without_torch():
    modules = ["ckm_edge.runtime"] + [m.name for m in pkgutil.walk_packages(runtime.__path__, prefix="ckm_edge.runtime.")]
    code = f"MODULES = {modules!r}\n" + _PROBE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ok {len(modules)}"
