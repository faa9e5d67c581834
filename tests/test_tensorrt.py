"""TensorRT engines from a package agree with ONNX Runtime; skipped with the reason where TensorRT is absent."""

import pytest

from ckm_edge.runtime import tensorrt as tensorrt_build

REASON = tensorrt_build.unavailable_reason()


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=f"TensorRT unavailable: {REASON}")
def test_engines_build_and_are_cached(tiny_package):
    first = tensorrt_build.build_engines(tiny_package, "fp32", max_batch=4)
    assert all(p.is_file() and p.stat().st_size > 0 for p in first)
    mtimes = [p.stat().st_mtime for p in first]
    again = tensorrt_build.build_engines(tiny_package, "fp32", max_batch=4)
    assert [p.stat().st_mtime for p in again] == mtimes  # served from the cache


def test_unavailable_reason_names_what_is_missing():
    if REASON is None:
        pytest.skip("TensorRT is available here")
    assert "tensorrt" in REASON or "GPU" in REASON


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=f"TensorRT unavailable: {REASON}")
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 2e-2), ("int8", 0.25)])
def test_tensorrt_agrees_with_onnxruntime(tiny_package, tiny_prior, precision, tol):
    import numpy as np

    from ckm_edge.runtime.engine import EngineConfig, open_engine

    *_, evl = tiny_prior
    x, t = evl[:2], np.array([0.2, 0.6], np.float32)
    v = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    results = []
    for backend in ("onnxruntime", "tensorrt"):
        with open_engine(tiny_package, EngineConfig(precision=precision, backend=backend)) as eng:
            s, saved = eng.forward(x, t)
            results.append((eng.score(x, t), s, eng.backward(saved, v)))
    for a, b in zip(*results):
        assert np.abs(a - b).max() / np.abs(a).max() < tol
