"""TensorRT engines from a package agree with ONNX Runtime; skipped with the reason where TensorRT is absent."""

import pytest

from export import tensorrt_build

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
