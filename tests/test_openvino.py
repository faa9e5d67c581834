"""The OpenVINO engine backend: the same package graphs, the same answers, served over gRPC."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from ckm_edge.runtime import api, condition, tasks
from ckm_edge.runtime.construct import ConstructConfig, construct
from ckm_edge.runtime.diffpir import DiffPIRConfig
from ckm_edge.runtime.dps import DPSConfig
from ckm_edge.runtime.engine import EngineConfig, EngineError, OrtEngine, open_engine
from ckm_edge.runtime.openvino_engine import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _inputs(evl):
    x = evl[:3] * 0.8 + 0.1
    return x.astype(np.float32), np.array([0.9, 0.3, 0.05], np.float32), \
        np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)


def test_openvino_matches_onnx_runtime_per_precision(tiny_package, tiny_prior):
    x, t, v = _inputs(tiny_prior[3])
    tolerance = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.25}
    for precision in tiny_package.precisions:
        with OrtEngine(tiny_package, EngineConfig(precision=precision)) as ort_engine, \
                open_engine(tiny_package, EngineConfig(precision=precision, backend="openvino")) as ov_engine:
            assert _rel(ov_engine.score(x, t), ort_engine.score(x, t)) < tolerance[precision], precision
            s, saved = ov_engine.forward(x, t)
            s_ref, saved_ref = ort_engine.forward(x, t)
            assert _rel(s, s_ref) < tolerance[precision], precision
            vjp, vjp_ref = ov_engine.backward(saved, v), ort_engine.backward(saved_ref, v)
            if precision == "int8":  # INT8 VJPs are coarse; guidance needs their direction
                assert vjp.ravel() @ vjp_ref.ravel() / (np.linalg.norm(vjp) * np.linalg.norm(vjp_ref)) > 0.8
            else:
                assert _rel(vjp, vjp_ref) < tolerance[precision] * 20, precision
            assert dict(ov_engine.calls) == {"score": 1, "forward": 1, "backward": 1}


def test_unsigned_activations_keep_the_qdq_graphs_values(tiny_package, tiny_prior):
    """OpenVINO compiles int8 graphs with their activations unsigned (zero point 128): by the ONNX
    reference semantics the same values as the package's signed graph, weights untouched."""
    import onnx
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator

    from ckm_edge.runtime.engine import network_inputs
    from ckm_edge.runtime.openvino_engine import unsigned_activations

    path = tiny_package.graph_path("int8", "score")
    data, rewritten = unsigned_activations(path)
    before, after = onnx.load(str(path)), onnx.load_from_string(data)
    quantized = [n for n in before.graph.node if n.op_type == "QuantizeLinear"]
    assert rewritten == len(quantized) > 0  # every activation the exporter quantized
    types = {i.name: i.data_type for i in after.graph.initializer}
    weights = {i.name for i in before.graph.initializer}
    for old, new in zip(before.graph.node, after.graph.node):
        if new.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if new.input[0] in weights:  # a weight's (int8) or bias's (int32) DequantizeLinear is untouched
                assert new.input[2] == old.input[2]
            else:
                assert types[new.input[2]] == onnx.TensorProto.UINT8
    x, t, _ = _inputs(tiny_prior[3])
    feeds = network_inputs(x[:1], t[:1], None, tiny_package.condition_channels)
    # the reference runtime implements QuantizeLinear/DequantizeLinear from opset 19 (the same
    # semantics for int8 and uint8 as the exporter's 18)
    before, after = (version_converter.convert_version(m, 19) for m in (before, after))
    want, = ReferenceEvaluator(before).run(None, feeds)
    got, = ReferenceEvaluator(after).run(None, feeds)
    np.testing.assert_array_equal(got, want)


def test_an_int8_engine_that_disagrees_with_the_qdq_reference_refuses_to_open(tiny_package, monkeypatch):
    from ckm_edge.runtime import openvino_engine

    monkeypatch.setattr(openvino_engine, "INT8_TOLERANCE", 0.0)  # any disagreement at all
    with pytest.raises(EngineError, match=r"int8 kernels on this CPU \(.+\) disagree with ONNX Runtime's int8 by "
                                          r"\d+% on a probe .*onnxruntime backend"):
        open_engine(tiny_package, EngineConfig(precision="int8", backend="openvino"))
    open_engine(tiny_package, EngineConfig(precision="fp32", backend="openvino")).close()  # other precisions unchecked


def test_openvino_refuses_stale_saved_tensors_and_cuda(tiny_package, tiny_prior):
    x, t, v = _inputs(tiny_prior[3])
    with open_engine(tiny_package, EngineConfig(backend="openvino")) as engine:
        _, old = engine.forward(x, t)
        engine.forward(x, t)
        with pytest.raises(EngineError, match="latest forward"):
            engine.backward(old, v)
    with pytest.raises(EngineError, match="CPU"):
        open_engine(tiny_package, EngineConfig(backend="openvino", device="cuda"))


def test_openvino_constructions_equal_onnx_runtime(tiny_package, tiny_prior):
    """A whole construction (score-only DiffPIR and VJP-guided DPS) agrees across backends at fp32."""
    truth = tiny_prior[3][:1]
    rng = np.random.default_rng(2)
    op = tasks.make_operator("sr2", rng, truth)
    y = tasks.observe(op, truth, rng)
    for sampler in (DiffPIRConfig(), DPSConfig(corrector_steps=1)):
        cfg = ConstructConfig(steps=6, samples=2, seed=3, sampler=sampler)
        maps = []
        for backend in ("onnxruntime", "openvino"):
            with open_engine(tiny_package, EngineConfig(backend=backend)) as engine:
                maps.append(construct(engine, tiny_package.schedule(), op, y, truth.shape[1:], cfg).mean)
        assert np.abs(maps[0] - maps[1]).max() < 1e-3, type(sampler).__name__


def test_openvino_takes_the_site_condition(tiny_site_package):
    pkg, _, tiles, tx = tiny_site_package
    x = tiles[:2]
    t = np.array([0.5, 0.1], np.float32)
    cond = condition.site_condition(tiles[:2, 0] == 0, tx[:2], (32, 32), encoding=pkg.condition_encoding)
    with OrtEngine(pkg) as ort_engine, open_engine(pkg, EngineConfig(backend="openvino")) as ov_engine:
        assert ov_engine.condition_channels == pkg.condition_channels
        assert _rel(ov_engine.score(x, t, cond), ort_engine.score(x, t, cond)) < 1e-4


def test_a_package_declaring_its_backends_refuses_others(package_copy):
    import json

    from ckm_edge.export.builder import write_manifest
    from ckm_edge.runtime.package import load_package

    manifest = json.loads((package_copy / "manifest.json").read_text())
    manifest["backends"] = ["onnxruntime"]
    write_manifest(package_copy, manifest)
    with pytest.raises(EngineError, match="built for onnxruntime, not openvino"):
        open_engine(load_package(package_copy), EngineConfig(backend="openvino"))


def test_ckm_edge_serve_backend_openvino_serves(tiny_package, tiny_prior, tmp_path):
    """`ckm-edge serve --backend openvino` as an operator starts it; a raw-proto client constructs."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_package.root, repo / "tiny" / "1.0.0")
    port_file = tmp_path / "port"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ckm-edge"), "serve", "--repository", str(repo), "--port", "0",
                             "--port-file", str(port_file), "--backend", "openvino", "--poll-seconds", "0", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not port_file.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert port_file.exists(), proc.stdout.read() if proc.poll() is not None else "server did not start"
        truth = tiny_prior[3][:1]
        rng = np.random.default_rng(5)
        op = tasks.make_operator("iprandom", rng, truth)
        y = tasks.observe(op, truth, rng)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            stub = api.services.EdgeServiceStub(channel)
            resp = stub.Construct(api.pb.ConstructRequest(model_name="tiny", observation=api.from_numpy(y[0]),
                                                          operator=api.operator_to_proto(op), noise_sigma=0.01,
                                                          steps=4, samples=2, seed=1, sampler="diffpir"), timeout=120)
        out = api.to_numpy(resp.map, "map", finite=False)
        with open_engine(tiny_package, EngineConfig(backend="openvino")) as engine:
            local = construct(engine, tiny_package.schedule(), op, y, truth.shape[1:],
                              ConstructConfig(steps=4, samples=2, seed=1, sampler=_served(resp)), sigma=0.01)
        assert np.abs(out - local.mean).max() < 1e-4
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _served(resp):
    from ckm_edge.runtime.sampler import config_from_params

    return config_from_params(resp.sampler, dict(resp.sampler_parameters))
