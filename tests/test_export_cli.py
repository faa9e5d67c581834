import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import small_dataset

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


def test_package_command_refuses_bad_input(tmp_path, tiny_prior):
    out = _run("package", "--checkpoint", tmp_path / "missing.pt", "--data", tmp_path, "--out", tmp_path / "p")
    assert out.returncode != 0 and "missing.pt" in out.stderr
    model, meta, _, _ = tiny_prior
    torch.save({"format": "ckm-model", "meta": meta, "weights": model.state_dict()}, tmp_path / "tiny.pt")
    small_dataset(tmp_path / "eval-only", {"eval": 1}, region=2, seed=3)
    no_train = _run("package", "--checkpoint", tmp_path / "tiny.pt", "--data", tmp_path / "eval-only", "--out", tmp_path / "p")
    assert no_train.returncode == 2 and "no training tiles to calibrate with" in no_train.stderr
    small_dataset(tmp_path / "train-only", {"train": 2}, region=2, seed=3)
    no_eval = _run("package", "--checkpoint", tmp_path / "tiny.pt", "--data", tmp_path / "train-only", "--out", tmp_path / "p")
    assert no_eval.returncode == 2 and "no eval tiles for the accuracy record" in no_eval.stderr
    assert not (tmp_path / "p").exists()


def test_accuracy_record_from_another_dataset(tiny_site_package):
    acc = tiny_site_package[0].manifest.accuracy
    assert acc.eval_data["dataset"].endswith("held-out") and acc.eval_data["regions"] == ["tiny-eval"]
    assert set(acc.records) == {"fp32", "int8"} and not acc.extra
