"""The golden set (tests/golden_set.py): every sampler x task x setting of the shipped model, built
locally and over gRPC with a fixed seed on deterministic engines, still gives what it gave when
recorded — bit for bit on the recording machine, within rounding elsewhere."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden_set  # noqa: E402

GOLDEN = json.loads(golden_set.GOLDEN.read_text())
SAME_MACHINE = GOLDEN["machine"] == golden_set.machine()


@pytest.fixture(scope="module")
def recorded():
    return golden_set.record()


def _compare(got: dict, want: dict, where: str) -> None:
    for key in ("steps", "samples", "sampler"):
        assert got[key] == want[key], f"{where}: {key} {got[key]} != {want[key]}"
    assert ("std_sha256" in got) == ("std_sha256" in want), f"{where}: std present {('std_sha256' in got)}"
    if SAME_MACHINE:
        assert got["mean_sha256"] == want["mean_sha256"], f"{where}: the mean map changed"
        assert got.get("std_sha256") == want.get("std_sha256"), f"{where}: the std map changed"
        assert got["residual"] == want["residual"], f"{where}: residual {got['residual']} != {want['residual']}"
    else:  # other CPU kernels round differently; a few steps keep that small
        np.testing.assert_allclose(got["mean_probe"], want["mean_probe"], atol=2e-3, err_msg=where)
        if "std_probe" in want:
            np.testing.assert_allclose(got["std_probe"], want["std_probe"], atol=2e-3, err_msg=where)
        assert abs(got["residual"] - want["residual"]) <= 1e-2 * max(1.0, want["residual"]), where


def test_every_golden_case_is_recorded():
    names = {c.name for c in golden_set.cases()}
    assert names == set(GOLDEN["local"]) | set(GOLDEN["grpc"])
    samplers = {c.sampler for c in golden_set.cases()}
    assert samplers >= {"dps", "diffpir", "daps", None}
    assert {(c.task, c.site) for c in golden_set.cases()} >= {(t, s) for t in golden_set.TASKS for s in (False, True)}


@pytest.mark.parametrize("path", ["local", "grpc"])
def test_golden_constructions_unchanged(recorded, path):
    missing = set(GOLDEN[path]) - set(recorded[path])
    assert not missing, f"{path}: cases no longer constructed: {sorted(missing)}"
    for name, want in GOLDEN[path].items():
        _compare(recorded[path][name], want, f"{path} {name}")
