"""Export and the torch-free runtime: VJP graphs vs autograd, precision variants, packages, DPS parity."""

import json
import os

import numpy as np
import onnx
import pytest
import torch

from ckm_edge.export import builder, onnx_export
from ckm_edge.runtime import codec, dps, tasks
from ckm_edge.runtime.engine import EngineConfig, EngineError, open_engine
from ckm_edge.runtime.package import PackageError, load_package
from ckm_edge.runtime.sampler import Observations, sample
from ckm_edge.training.reference_dps import DPSConfig, dps_sample


def test_graphs_use_standard_ops_and_match_autograd(tiny_prior, tiny_package):
    model, *_ = tiny_prior
    for precision in tiny_package.precisions:
        for graph in ("score", "forward", "backward"):
            ops = {n.op_type for n in onnx.load(str(tiny_package.graph_path(precision, graph))).graph.node}
            assert ops <= onnx_export.TENSORRT_OPS, (precision, graph, ops - onnx_export.TENSORRT_OPS)
    fp32 = onnx_export.ExportedGraphs(*(tiny_package.graph_path("fp32", g) for g in ("score", "forward", "backward")), 0)
    errors = onnx_export.check_against_torch(model, fp32, 32, batches=(1, 2, 5), seed=3)
    assert errors["vjp"] < 1e-4 and errors["score"] < 1e-4, errors


@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (1, 0, 1), (1, 0, 3), (2, 1, 3), (2, 0, 1)])
def test_convolution_input_gradient_decomposition_matches_autograd(stride, padding, kernel):
    from ckm_edge.export.vjp import _convolution_backward

    torch.manual_seed(0)
    x = torch.randn(2, 5, 16, 16, requires_grad=True)
    w = torch.randn(7, 5, kernel, kernel)
    y = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding)
    g = torch.randn_like(y)
    (expect,) = torch.autograd.grad(y, x, g)
    got, _, _ = _convolution_backward(g, x.detach(), w, None, [stride] * 2, [padding] * 2, [1, 1], False,
                                      [0, 0], 1, [True, False, False])
    torch.testing.assert_close(got, expect, atol=1e-4, rtol=1e-4)


def test_backward_graph_uses_plain_convolutions_for_stride_one(tiny_package):
    """Only the stride-2 downsampling convolutions keep a ConvTranspose in the backward graph."""
    fwd = onnx.load(str(tiny_package.graph_path("fp32", "forward"))).graph.node
    bwd = onnx.load(str(tiny_package.graph_path("fp32", "backward"))).graph.node
    strided = sum(1 for n in fwd if n.op_type == "Conv"
                  and any(a.name == "strides" and list(a.ints) != [1, 1] for a in n.attribute))
    transposed = sum(1 for n in bwd if n.op_type == "ConvTranspose")
    assert transposed <= strided
    assert sum(1 for n in bwd if n.op_type == "Conv") > transposed


def test_precision_variants_load_run_and_stay_close(tiny_package, tiny_prior):
    _, _, _, evl = tiny_prior
    x = evl[:2] * 0.8 + 0.1
    t = np.array([0.3, 0.7], np.float32)
    v = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())  # noqa: E731
    out = {}
    for precision in ("fp32", "fp16", "int8"):
        with open_engine(tiny_package, EngineConfig(precision=precision, threads=1)) as eng:
            s = eng.score(x, t)
            s2, saved = eng.forward(x, t)
            out[precision] = (s, s2, eng.backward(saved, v))
    assert rel(out["fp32"][1], out["fp32"][0]) < 1e-5  # score graph == forward graph's score
    errors = [rel(out["fp16"][i], out["fp32"][i]) for i in range(3)]
    assert max(errors) < 2e-2, errors  # relative to the largest fp32 value
    assert rel(out["int8"][0], out["fp32"][0]) < 0.25
    # INT8 VJPs are coarse; what guidance needs is their direction.
    a, b = out["int8"][2].ravel(), out["fp32"][2].ravel()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.8


def test_int8_graphs_keep_the_first_and_last_convolution_in_float(tiny_package):
    import onnx

    from ckm_edge.export.precision import CONVOLUTIONS

    for graph in ("score", "forward", "backward"):
        model = onnx.load(str(tiny_package.graph_path("int8", graph)), load_external_data=False)
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
        convs = [n for n in model.graph.node if n.op_type in CONVOLUTIONS]
        quantized = [producers.get(n.input[1]) == "DequantizeLinear" for n in convs]
        assert not quantized[0] and not quantized[-1] and all(quantized[1:-1]), (graph, quantized)
        assert convs[0].input[1] in floats and convs[-1].input[1] in floats  # float weights, no Q/DQ
        assert producers.get(convs[0].input[0]) != "DequantizeLinear"


@pytest.mark.parametrize("task", ["ipbox", "iprandom", "sr2", "jtqr"])
def test_runtime_dps_matches_the_pytorch_reference(tiny_prior, tiny_package, task):
    model, meta, _, evl = tiny_prior
    x = evl[:1]
    schedule = tiny_package.schedule().respace(12)
    rng = np.random.default_rng(7)
    op = tasks.make_operator(task, rng, x)
    y = tasks.observe(op, x, rng)
    ref = dps_sample(model, schedule, op, torch.from_numpy(y), shape=x.shape, rng=np.random.default_rng(99),
                     cfg=DPSConfig(zeta=13.0, corrector_steps=1)).numpy()
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        out = sample(eng, schedule, Observations.of(op, y, x.shape[1:], 1), [np.random.default_rng(99)],
                     dps.DPSConfig(zeta=13.0, corrector_steps=1))
        # Cost per step: one forward-with-saves + one backward; one score call per corrector step.
        assert eng.calls == {"forward": 12, "backward": 12, "score": 11}
    rmse = float(np.sqrt(((out - ref) ** 2).mean()))
    # ~3e-7 here for every task. JTQR's quantizer is discontinuous, so a 1e-6 difference between
    # ONNX Runtime and PyTorch arithmetic can flip a cell to the next sector; with x0_hat clipped
    # in the predictor (DPSConfig.clip_denoised) such flips no longer snowball.
    assert rmse < 1e-3, rmse


def test_batch_equals_samples_run_one_by_one(tiny_package, tiny_prior):
    *_, evl = tiny_prior
    x = evl[:3]
    schedule = tiny_package.schedule().respace(5)
    op = tasks.make_operator("iprandom", np.random.default_rng(1), x)
    y = tasks.observe(op, x, np.random.default_rng(2))
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        batch = sample(eng, schedule, Observations.of(op, y, x.shape[1:], 3), [np.random.default_rng(s) for s in (5, 6, 7)],
                       dps.DPSConfig())
        for i, s in enumerate((5, 6, 7)):
            single_op = type(op)(op.mask[i : i + 1])
            one = sample(eng, schedule, Observations.of(single_op, y[i : i + 1], x.shape[1:], 1), [np.random.default_rng(s)],
                         dps.DPSConfig())
            np.testing.assert_allclose(batch[i], one[0], atol=2e-5)


def test_different_requests_batch_together(tiny_package, tiny_prior):
    *_, evl = tiny_prior
    x = evl[:2]
    schedule = tiny_package.schedule().respace(4)
    ops = [tasks.make_operator("sr2", np.random.default_rng(1), x[:1]), tasks.make_operator("jtqr", np.random.default_rng(1), x[1:])]
    ys = [tasks.observe(o, x[i : i + 1], np.random.default_rng(i))[0] for i, o in enumerate(ops)]
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        both = sample(eng, schedule, Observations.of(ops, ys, x.shape[1:], 2), [np.random.default_rng(s) for s in (3, 4)],
                      dps.DPSConfig())
        assert eng.calls["forward"] == 4  # one engine call per step for both requests
        for i in range(2):
            one = sample(eng, schedule, Observations.of(ops[i], ys[i][None], x.shape[1:], 1), [np.random.default_rng(3 + i)],
                         dps.DPSConfig())
            np.testing.assert_allclose(both[i], one[0], atol=2e-5)


def test_jacobian_free_guidance_skips_the_backward_graph(tiny_package, tiny_prior):
    *_, evl = tiny_prior
    x = evl[:1]
    schedule = tiny_package.schedule().respace(6)
    op = tasks.make_operator("sr2", np.random.default_rng(1), x)
    y = tasks.observe(op, x, np.random.default_rng(2))
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        out = sample(eng, schedule, Observations.of(op, y, x.shape[1:], 1), [np.random.default_rng(3)],
                     dps.DPSConfig(jacobian_free=True, corrector_steps=0))
        assert eng.calls == {"score": 6}
    assert np.isfinite(out).all()


def test_package_round_trip_and_manifest(tiny_package):
    pkg = load_package(tiny_package.root)
    m = pkg.manifest
    assert m.name == "tiny" and m.version == "1.0.0" and m.tile_size == 32
    assert m.schedule == tiny_package.schedule().to_dict() and m.channels == codec.CHANNELS
    assert set(pkg.precisions) == {"fp32", "fp16", "int8"}
    assert m.exporter.torch_parity["vjp"] < 1e-4
    assert len(m.files) == 12 and all(len(f.sha256) == 64 for f in m.files.values())
    # the package names what a request without a sampler gets, per operator kind
    assert {"*", "mask", "downsample", "jtqr", "mask+site"} <= set(m.samplers)
    assert pkg.recommendations()["mask"] == m.samplers["mask"]


def test_a_manifest_with_bad_recommendations_is_refused(package_copy):
    from ckm_edge.export.builder import write_manifest

    manifest = json.loads((package_copy / "manifest.json").read_text())
    for bad, message in [({"mask": {"sampler": "ddrm", "steps": 4, "samples": 1}}, "unknown sampler 'ddrm'"),
                         ({"blur": {"sampler": "diffpir", "steps": 4, "samples": 1}}, "operator kind must be one of"),
                         ({"mask": {"sampler": "diffpir", "steps": 4, "samples": 1, "parameters": {"zeta": 1}}},
                          "has no parameter 'zeta'"),
                         ({"mask": {"sampler": "diffpir", "steps": 0, "samples": 1}}, "steps in \\[1, 2000\\]")]:
        write_manifest(package_copy, {**manifest, "samplers": bad})
        with pytest.raises(PackageError, match=message):
            load_package(package_copy, verify_files=False)


def test_tampering_and_truncation_are_refused(package_copy):
    graph = package_copy / "fp32" / "score.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"fp32/score.onnx does not match its SHA-256"):
        load_package(package_copy)
    graph.write_bytes(bytes(data[:100]))
    with pytest.raises(PackageError, match=r"fp32/score.onnx has 100 bytes.*truncated"):
        load_package(package_copy)
    (package_copy / "manifest.json").write_text('{"schema": ')
    with pytest.raises(PackageError, match="not valid JSON"):
        load_package(package_copy)


def test_signatures(package_copy):
    private, public = builder.generate_keypair()
    other_private, other_public = builder.generate_keypair()
    with pytest.raises(PackageError, match="unsigned but trusted keys"):
        load_package(package_copy, trusted_keys=[public])
    builder.sign_package(package_copy, private)
    assert load_package(package_copy, trusted_keys=[other_public, public]).signed_by == public.hex()
    with pytest.raises(PackageError, match="does not verify with any trusted key"):
        load_package(package_copy, trusted_keys=[other_public])
    manifest = json.loads((package_copy / "manifest.json").read_text())
    manifest["accuracy"] = {"fp32": {"forged": True}}
    (package_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="does not verify"):
        load_package(package_copy, trusted_keys=[public])


def test_engine_errors_are_clear(tiny_package):
    with pytest.raises(PackageError, match="has no int4 score graph"):
        tiny_package.graph_path("int4", "score")
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        with pytest.raises(EngineError, match="score graph failed in ONNX Runtime"):
            eng.score(np.zeros((1, 3, 32, 32), np.float32), np.zeros(1, np.float32))
    with pytest.raises(EngineError, match="device must be"):
        EngineConfig(device="tpu")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity API on this OS")
def test_engine_threads_default_to_the_cpus_the_process_may_run_on(tiny_package, tiny_prior):
    """A process confined to one core (taskset, a cpuset) gets one intra-op thread, not one per
    core of the machine pinned where other work runs; an explicit count is kept."""
    x, t = tiny_prior[3][:2] * 0.8 + 0.1, np.array([0.3, 0.7], np.float32)
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert EngineConfig().cpu_threads() == 1 and EngineConfig(threads=3).cpu_threads() == 3
        with open_engine(tiny_package, EngineConfig()) as eng:
            assert eng._session("score").get_session_options().intra_op_num_threads == 1
            confined = eng.score(x, t)
    finally:
        os.sched_setaffinity(0, before)
    with open_engine(tiny_package, EngineConfig()) as eng:
        assert eng._session("score").get_session_options().intra_op_num_threads == len(before)
        free = eng.score(x, t)
    assert np.abs(confined - free).max() <= 1e-5 * np.abs(free).max()  # the same network either way


def test_only_the_score_graphs_workers_spin_by_default(tiny_package):
    """A guided step runs the forward and backward graphs back to back: their workers must not spin
    (the first one's took the cores from the second's); score-only samplers keep spinning workers."""
    def spin(eng, graph):  # the session's setting; "" where it keeps ONNX Runtime's default (spinning)
        try:
            return eng._session(graph).get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # never set
            return ""
    with open_engine(tiny_package, EngineConfig()) as eng:
        assert [spin(eng, g) for g in ("score", "forward", "backward")] == ["", "0", "0"]  # "": ORT's default, spinning
    for forced, expect in ((True, ["", "", ""]), (False, ["0", "0", "0"])):
        with open_engine(tiny_package, EngineConfig(spinning=forced)) as eng:
            assert [spin(eng, g) for g in ("score", "forward", "backward")] == expect


def test_polygraphy_loads_and_runs_every_graph(tiny_package, tiny_prior):
    """NVIDIA's Polygraphy (the TensorRT toolkit) reads and runs each graph through ONNX Runtime,
    fed with realistic inputs: a noisy tile, its time, and the fp32 forward's saved tensors."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator

    *_, evl = tiny_prior
    x = (evl[:1] + 0.2 * np.random.default_rng(0).standard_normal(evl[:1].shape)).astype(np.float32)
    t = np.array([0.3], np.float32)
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        _, saved = eng.forward(x, t)
        names = eng._saved_names
    v = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    feeds = {"score": {"x": x, "t": t}, "forward": {"x": x, "t": t}, "backward": {**dict(zip(names, saved)), "v": v}}
    for precision in tiny_package.precisions:
        for graph in ("score", "forward", "backward"):
            runner = OnnxrtRunner(SessionFromOnnx(str(tiny_package.graph_path(precision, graph)),
                                                  providers=["CPUExecutionProvider"]))
            results = Comparator.run([runner], data_loader=[feeds[graph]])
            outputs = results[runner.name][0]
            assert all(np.isfinite(v).all() for v in outputs.values()), (precision, graph)
