import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ckm_edge.runtime import operators, tasks

BIN = Path(sys.executable).parent


def _run(tool, *args):
    return subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_construct_from_a_truth_tile(tiny_package, tmp_path):
    assert _run("ckm-data", "tile", "--out", tmp_path / "t.npz", "--tile-size", "32").returncode == 0
    out = _run("ckm-edge", "construct", "--package", tiny_package.root, "--truth", tmp_path / "t.npz",
               "--task", "SR", "--steps", "8", "--samples", "2", "--out", tmp_path / "o", "--json", "--threads", "1")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    # the recommended sampler: one score evaluation per step and posterior sample batch
    assert report["task"] == "sr2" and report["steps"] == 8 and report["engine_calls"] == {"score": 8}
    assert report["sampler"]["name"] == "diffpir" and report["samples"] == 2
    assert report["gain_rmse_db"] >= 0 and report["aoa_sine_rmse"] >= 0
    saved = np.load(tmp_path / "o" / "construction.npz")
    assert saved["pixels"].shape == (2, 32, 32) and saved["std"].shape == (2, 32, 32)
    assert saved["observation"].shape == (2, 16, 16)
    assert (tmp_path / "o" / "construction.png").stat().st_size > 1000


def test_construct_from_an_observation_file(tiny_package, tmp_path):
    x = np.full((1, 2, 32, 32), 0.6, np.float32)
    op = operators.Compose((operators.Mask(tasks.box_mask(np.random.default_rng(0), (32, 32), (4, 8))), operators.jtqr()))
    y = tasks.observe(op, x, np.random.default_rng(1))[0]
    np.savez(tmp_path / "obs.npz", y=y, operator=json.dumps(op.to_spec()))
    out = _run("ckm-edge", "construct", "--package", tiny_package.root, "--observation", tmp_path / "obs.npz",
               "--steps", "4", "--out", tmp_path / "o", "--json", "--jacobian-free")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["engine_calls"] == {"score": 7}


def test_bad_input_gets_a_clear_error(tiny_package, tmp_path):
    np.savez(tmp_path / "big.npz", pixels=np.zeros((2, 64, 64), np.float32))
    out = _run("ckm-edge", "construct", "--package", tiny_package.root, "--truth", tmp_path / "big.npz", "--task", "ipbox")
    assert out.returncode == 2 and "expects (2, 32, 32)" in out.stderr
    np.savez(tmp_path / "t.npz", pixels=np.zeros((2, 32, 32), np.float32))
    out = _run("ckm-edge", "construct", "--package", tiny_package.root, "--truth", tmp_path / "t.npz", "--task", "denoise")
    assert out.returncode == 2 and "--task must be one of" in out.stderr
    np.savez(tmp_path / "o.npz", y=np.zeros((2, 32, 32), np.float32), operator='{"op": "blur"}')
    out = _run("ckm-edge", "construct", "--package", tiny_package.root, "--observation", tmp_path / "o.npz")
    assert out.returncode == 2 and "unknown operator 'blur'" in out.stderr
    np.savez(tmp_path / "o.npz", y=np.zeros((2, 8, 8), np.float32), operator='{"op": "identity"}')
    out = _run("ckm-edge", "construct", "--package", tiny_package.root, "--observation", tmp_path / "o.npz")
    assert out.returncode == 2 and "observation has shape [2, 8, 8]; the operator produces [2, 32, 32]" in out.stderr
    out = _run("ckm-edge", "construct", "--package", tmp_path, "--observation", tmp_path / "o.npz")
    assert out.returncode == 2 and "is not a model package" in out.stderr
    out = _run("ckm-edge", "construct", "--package", tiny_package.root, "--observation", tmp_path / "o.npz", "--steps", "0")
    assert out.returncode == 2 and "steps must be in [1, 2000]" in out.stderr
    np.savez(tmp_path / "o.npz", y=np.zeros((2, 32, 32), np.float32), operator='{"op": "identity"}')
    for args, message in [(["--sampler", "ddrm"], "invalid choice: 'ddrm'"),
                          (["--param", "lam"], "--param takes NAME=VALUE, got 'lam'"),
                          (["--param", "lam=big"], "--param lam: 'big' is not a number"),
                          (["--sampler", "diffpir", "--param", "zeta=3"], "sampler 'diffpir' has no parameter 'zeta'"),
                          (["--sampler", "daps", "--zeta", "3"], "--zeta: DPS-only, but the sampler is 'daps'"),
                          (["--site"], "--site needs --truth or a `building` array")]:
        out = _run("ckm-edge", "construct", "--package", tiny_package.root, "--observation", tmp_path / "o.npz", *args)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)


def test_construct_names_the_sampler_its_parameters_and_the_site(tiny_package, tmp_path):
    assert _run("ckm-data", "tile", "--out", tmp_path / "t.npz", "--tile-size", "32").returncode == 0
    out = _run("ckm-edge", "construct", "--package", tiny_package.root, "--truth", tmp_path / "t.npz", "--task", "trajectory",
               "--site", "--sampler", "daps", "--param", "ratio=0.5", "--steps", "3", "--samples", "2", "--out",
               tmp_path / "o", "--json", "--threads", "1")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["sampler"] == {"name": "daps", "ratio": 0.5, "r_max": 0.5} and report["site"] is True
    assert report["engine_calls"] == {"score": 3} and report["samples"] == 2
    tx = np.load(tmp_path / "t.npz")["tx"]  # the tile's own transmitter is the site's base station
    assert report["base_station"] == [round(float(v), 3) for v in tx] and report["site_conditioned"] is False
    saved = np.load(tmp_path / "o" / "construction.npz")
    truth = np.load(tmp_path / "t.npz")["pixels"]
    building = truth[1] < 0.15
    assert (saved["pixels"][:, building] == 0).all()  # the layout was applied
    out = _run("ckm-edge", "construct", "--package", tiny_package.root, "--truth", tmp_path / "t.npz", "--task", "sr",
               "--zeta", "5", "--steps", "2", "--json", "--out", tmp_path / "o2")
    assert out.returncode == 0 and json.loads(out.stdout)["sampler"]["name"] == "dps"
