import json
import subprocess
import sys
from pathlib import Path

CKM_EXPORT = Path(sys.executable).with_name("ckm-export")


def _run(*args):
    return subprocess.run([str(CKM_EXPORT), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_inspect_verify_sign(package_copy, tmp_path):
    out = _run("inspect", package_copy)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["name"] == "tiny" and info["precisions"] == ["fp32", "fp16", "int8"] and not info["signed"]
    assert _run("verify", package_copy).stdout.startswith("OK: tiny 1.0.0, 12 files verified")
    assert _run("keygen", "--out", tmp_path / "keys" / "release").returncode == 0
    assert _run("sign", package_copy, "--key", tmp_path / "keys" / "release.key").returncode == 0
    ok = _run("verify", package_copy, "--trusted-key", tmp_path / "keys" / "release.pub")
    assert ok.returncode == 0 and "signature verified" in ok.stdout
    (package_copy / "fp16" / "backward.onnx").write_bytes(b"not a graph")
    bad = _run("verify", package_copy)
    assert bad.returncode == 1 and "fp16/backward.onnx" in bad.stderr


def test_package_command_refuses_bad_input(tmp_path):
    out = _run("package", "--checkpoint", tmp_path / "missing.pt", "--data", tmp_path, "--out", tmp_path / "p")
    assert out.returncode != 0 and "missing.pt" in out.stderr
