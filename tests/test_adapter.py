"""Site adapters (LASCO): lambda tables, the elastic fit, the add-on package, the composed engine
(scores and VJPs against the parts and against PyTorch autograd), and serving over gRPC."""

import json
import re
import shutil

import grpc
import numpy as np
import pytest
import torch

from ckm_edge.export.builder import write_manifest
from ckm_edge.runtime import defaults, operators
from ckm_edge.runtime.adapter import ComposedEngine, LambdaTable, adapter_info, check_base
from ckm_edge.runtime.api import pb
from ckm_edge.runtime.client import EdgeClient
from ckm_edge.runtime.construct import ConstructConfig, construct
from ckm_edge.runtime.dps import DPSConfig
from ckm_edge.runtime.engine import open_engine
from ckm_edge.runtime.package import PackageError, load_package
from ckm_edge.runtime.server import ServerConfig, create_server
from ckm_edge.training.adapter import ArraySplit, fit_elastic, load_adapter


def test_lambda_table_lookup_and_validation():
    lam = LambdaTable((0.0, 0.25, 0.5, 1.0), (2.0, 1.0, 0.5))
    got = lam(np.array([0.0, 0.1, 0.25, 0.26, 0.5, 0.99, 1.0])).reshape(-1)
    np.testing.assert_array_equal(got, [2.0, 2.0, 2.0, 1.0, 1.0, 0.5, 0.5])  # values[k] on (edges[k], edges[k+1]]
    assert lam(np.zeros(3)).shape == (3, 1, 1, 1)
    assert LambdaTable.from_dict(lam.to_dict()) == lam
    assert LambdaTable.constant(1.0)(np.array([0.3]))[0, 0, 0, 0] == 1.0
    for edges, values, match in [((0.0, 1.0), (1.0, 2.0), "K\\+1 edges"), ((0.2, 1.0), (1.0,), "increase"),
                                 ((0.0, 0.5, 0.4, 1.0), (1.0, 1.0, 1.0), "increase"), ((0.0, 1.0), (float("nan"),), "finite"),
                                 ((0.0, 1.0), (50.0,), "<= 10")]:
        with pytest.raises(PackageError, match=match):
            LambdaTable(edges, values)
    with pytest.raises(PackageError, match="kind"):
        LambdaTable((0.0, 1.0), (1.0,), "sometimes")
    with pytest.raises(PackageError, match="edges"):
        LambdaTable.from_dict({"values": [1.0]})


class _Scaled(torch.nn.Module):
    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x, t):
        return self.factor * self.model(x, t)


def test_elastic_fit_recovers_a_known_strength(tiny_prior):
    """large = half the trained score, d = the trained score: the denoising objective is smallest
    near lambda = 0.5 in every bin (where the composition is the trained model again)."""
    model, meta, train, _ = tiny_prior
    from ckm_edge.runtime.schedule import Schedule

    schedule = Schedule.from_dict(meta["schedule"])
    lam = fit_elastic(_Scaled(model, 0.5), model, train[:16], schedule, np.random.default_rng(0), bins=5, draws=8)
    assert lam.kind == "elastic" and len(lam.values) == 5
    assert all(0.3 <= v <= 0.7 for v in lam.values), lam.values
    # No shift at all carries no information: every bin falls back to plain LASCO's 1.
    zero = fit_elastic(model, _Scaled(model, 0.0), train[:16], schedule, np.random.default_rng(0), bins=3, draws=2)
    assert zero.values == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="lam_max"):
        fit_elastic(model, model, train[:2], schedule, np.random.default_rng(0), lam_max=0.0)


def test_array_split_checks_its_tiles():
    with pytest.raises(ValueError, match="site"):
        ArraySplit("site", np.zeros((4, 3, 8, 8)))
    split = ArraySplit("site", np.zeros((4, 2, 8, 8)))
    assert len(split) == 4 and split.take(np.array([1, 3])).shape == (2, 2, 8, 8)


def test_adapter_package_names_its_base(tiny_adapter, tiny_package):
    repo, adapter, work = tiny_adapter
    base = load_package(repo / "tiny" / "1.0.0")
    ref, lam = adapter_info(adapter)
    assert (ref.name, ref.version) == ("tiny", "1.0.0") and len(ref.manifest_sha256) == 64
    assert lam.kind == "elastic" and len(lam.values) == 10
    assert check_base(adapter, base) == lam
    assert adapter.manifest.network.unet["base_channels"] == 16  # the small model, not the prior's U-Net
    with pytest.raises(PackageError, match="itself an adapter"):
        check_base(adapter, adapter)


def test_adapter_refuses_another_build_or_version_of_its_base(tiny_adapter, tmp_path):
    repo, adapter, work = tiny_adapter
    other = tmp_path / "tiny" / "1.0.0"
    shutil.copytree(repo / "tiny" / "1.0.0", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["provenance"]["rebuilt"] = True  # same name and version, another build
    write_manifest(other, manifest)
    with pytest.raises(PackageError, match="different build"):
        check_base(adapter, load_package(other))
    manifest["version"] = "1.0.1"
    write_manifest(other, manifest)
    with pytest.raises(PackageError, match="adapts tiny 1.0.0, not tiny 1.0.1"):
        check_base(adapter, load_package(other))


def test_a_damaged_adapter_section_is_refused_at_load(tiny_adapter, tmp_path):
    repo, _, _ = tiny_adapter
    for damage, match in [(lambda a: a["lambda"].update(values=[float("nan")] * 10), "finite"),
                          (lambda a: a.pop("base"), "'base'"),
                          (lambda a: a["base"].pop("manifest_sha256"), "manifest_sha256")]:
        copy = tmp_path / f"site-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(repo / "site-a" / "1.0.0", copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        damage(manifest["adapter"])
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(PackageError, match=match):
            load_package(copy)


def _inputs(tile_size, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch, 2, tile_size, tile_size)).astype(np.float32)
    t = np.array([0.05, 0.45, 0.95][:batch], np.float32)  # three different lambda bins
    v = rng.standard_normal(x.shape).astype(np.float32)
    return x, t, v


def test_composed_engine_is_the_combination_of_its_parts(tiny_adapter):
    """Scores and VJPs of the composed engine equal base + lambda(t) * adapter, part by part (ONNX
    Runtime sessions), and equal PyTorch autograd through s_large + lambda(t) (s_proxy - s_reference)."""
    repo, adapter, work = tiny_adapter
    base = load_package(repo / "tiny" / "1.0.0")
    lam = check_base(adapter, base)
    x, t, v = _inputs(base.tile_size)
    with open_engine(base) as b, open_engine(adapter) as d:
        composed = ComposedEngine(b, d, lam)
        s, saved = composed.forward(x, t)
        g = composed.backward(saved, v)
        sc = composed.score(x, t)
        s_b, saved_b = b.forward(x, t)
        s_d, saved_d = d.forward(x, t)
        lam_t = lam(t)
        np.testing.assert_allclose(s, s_b + lam_t * s_d, rtol=1e-6, atol=1e-6 * np.abs(s).max())
        np.testing.assert_allclose(sc, b.score(x, t) + lam_t * d.score(x, t), rtol=1e-6, atol=1e-6 * np.abs(sc).max())
        np.testing.assert_allclose(g, b.backward(saved_b, v) + d.backward(saved_d, lam_t * v), rtol=1e-6,
                                   atol=1e-6 * np.abs(g).max())
        assert dict(composed.calls) == {"forward": 1, "backward": 1, "score": 1}
        assert not np.allclose(s, s_b)  # the adapter changes the score
    # Against PyTorch: the exported parts compose to the autograd VJP of the composed score.
    from ckm_edge.training.checkpoint import load_model

    delta, lam_file, _ = load_adapter(work / "run" / "adapter.pt")
    assert lam_file == lam and adapter.manifest.provenance.adapter_file == str(work / "run" / "adapter.pt")
    large, _ = load_model(work / "tiny-prior.pt")
    xt = torch.from_numpy(x).requires_grad_(True)
    tt = torch.from_numpy(t)
    s_ref = large(xt, tt) + torch.from_numpy(lam_t) * delta(xt, tt)
    (g_ref,) = torch.autograd.grad(s_ref, xt, torch.from_numpy(v))
    s_ref = s_ref.detach().numpy()
    np.testing.assert_allclose(s, s_ref, rtol=1e-3, atol=1e-4 * np.abs(s_ref).max())
    np.testing.assert_allclose(g, g_ref.numpy(), rtol=1e-3, atol=2e-3 * np.abs(g_ref.numpy()).max())


def test_grpc_request_names_a_site_adapter(tiny_adapter, tmp_path):
    repo, adapter, work = tiny_adapter
    served = tmp_path / "repository"
    shutil.copytree(repo, served)
    # Another version of the base, to which the adapter was not fitted.
    manifest = json.loads((served / "tiny" / "1.0.0" / "manifest.json").read_text())
    shutil.copytree(served / "tiny" / "1.0.0", served / "tiny" / "1.0.1")
    manifest["version"] = "1.0.1"
    write_manifest(served / "tiny" / "1.0.1", manifest)
    base = load_package(served / "tiny" / "1.0.0")
    n = base.tile_size
    truth = np.random.default_rng(1).uniform(0.2, 0.9, (1, 2, n, n)).astype(np.float32)
    mask = np.zeros((n, n), bool)
    mask[::3, ::2] = True
    op = operators.Mask(mask)
    y = op.forward(truth)[0]
    edge = create_server(ServerConfig(repository=served, port=0, poll_seconds=0, max_batch=4)).start()
    try:
        with EdgeClient(f"127.0.0.1:{edge.port}") as client:
            listed = {(m.name, m.version): m.adapts for m in client.stub.ListModels(pb.ListModelsRequest()).models}
            assert listed == {("tiny", "1.0.0"): "", ("tiny", "1.0.1"): "", ("site-a", "1.0.0"): "tiny 1.0.0"}
            assert client.metadata("site-a").adapts == "tiny 1.0.0"
            plain = client.construct(y, op, model="tiny", version="1.0.0", sampler="dps", steps=4, samples=1, seed=3,
                                     sampler_parameters={"corrector_steps": 1})
            adapted = client.construct(y, op, model="tiny", version="1.0.0", sampler="dps", steps=4, samples=1, seed=3,
                                       sampler_parameters={"corrector_steps": 1}, adapter="site-a")
            assert (adapted.adapter, adapted.adapter_version) == ("site-a", "1.0.0") and plain.adapter == ""
            # The served construction is the local one over the composed engine, draw for draw.
            with open_engine(base) as b, open_engine(adapter) as d:
                local = construct(ComposedEngine(b, d, check_base(adapter, base)), base.schedule(), op, y[None],
                                  (2, n, n), ConstructConfig(steps=4, seed=3, sampler=DPSConfig()),
                                  sigma=defaults.NOISE_SIGMA)  # the client's default noise: the finish honours it
            np.testing.assert_allclose(adapted.map, local.mean, atol=1e-5)
            assert np.abs(adapted.map - plain.map).max() > 1e-4
            for kwargs, code, match in [
                (dict(adapter="site-b"), grpc.StatusCode.NOT_FOUND, "site adapter 'site-b' is not in the repository"),
                (dict(adapter="site-a", adapter_version="2.0.0"), grpc.StatusCode.NOT_FOUND, "no version '2.0.0'"),
                (dict(adapter_version="1.0.0"), grpc.StatusCode.INVALID_ARGUMENT, "adapter_version given without"),
                (dict(version="1.0.1", adapter="site-a"), grpc.StatusCode.FAILED_PRECONDITION, "versions adapt \\['tiny 1.0.0'\\]"),
                (dict(version="1.0.1", adapter="site-a", adapter_version="1.0.0"), grpc.StatusCode.FAILED_PRECONDITION,
                 "adapts tiny 1.0.0, not tiny 1.0.1"),
                (dict(model="site-a"), grpc.StatusCode.NOT_FOUND, "is a site adapter, not a model"),
                (dict(adapter="site-a", precision="fp16"), grpc.StatusCode.INVALID_ARGUMENT, "has no fp16 variant"),
            ]:
                kwargs = {"model": "tiny", "version": "1.0.0", **kwargs}
                with pytest.raises(grpc.RpcError) as err:
                    client.construct(y, op, steps=2, **kwargs)
                assert err.value.code() == code, (kwargs, err.value.details())
                assert re.search(match, err.value.details()), err.value.details()
    finally:
        edge.stop(0)


def test_site_adaptation_benchmark_reports_every_method_as_it_goes(tiny_prior, tmp_path):
    import copy

    from ckm_edge.benchmarks import adapt

    model, meta, _, _ = tiny_prior
    cfg = adapt.AdaptBenchConfig(counts=(16,), test_tiles=2, tasks=("ipbox", "sr2"), steps=2, generic_tiles=32,
                                 reference_steps=3, proxy_steps=2, finetune_steps=2)
    seen = []
    results = adapt.run(copy.deepcopy(model), dict(meta, tile_size=32), cfg, tmp_path, progress=lambda _: None,
                        on_result=lambda r: seen.append((len(r["methods"]), r["complete"])))
    assert [(m["method"], m["n"]) for m in results["methods"]] == [("foundation", 0), ("lasco", 16), ("elastic", 16),
                                                                    ("finetune", 16)]
    assert seen == [(1, False), (2, False), (3, False), (4, False), (4, True)]
    rows = {m["method"]: m for m in results["methods"]}
    from ckm_edge.training.adapter import ADAPTER_UNET
    from ckm_edge.training.trainer import count_parameters
    from ckm_edge.training.unet import UNet

    assert rows["finetune"]["cost"]["parameters_trained"] == results["large_parameters"]  # the whole foundation
    assert rows["lasco"]["cost"]["parameters_trained"] == count_parameters(UNet(ADAPTER_UNET))  # the proxy alone
    assert len(rows["elastic"]["lambda"]["values"]) == 10 and results["reference_cost"]["steps"] == 3
    for m in results["methods"]:
        assert all(np.isfinite(m["rmse"][t]["gain_db"]) for t in cfg.tasks)
    # the summary: adapter against foundation against fine-tuning on the mean gain RMSE, and per task
    (by_n,) = results["summary"]["by_n"]
    mean = lambda m: float(np.mean([m["rmse"][t]["gain_db"] for t in cfg.tasks]))
    assert by_n["n"] == 16 and by_n["best_adapter_db"] == min(mean(rows["lasco"]), mean(rows["elastic"]))
    assert by_n["finetune_db"] == mean(rows["finetune"]) and by_n["foundation_db"] == mean(rows["foundation"])
    assert results["summary"]["improved_at"] == ([16] if by_n["best_adapter_db"] < by_n["foundation_db"] else [])
    assert set(results["summary"]["per_task"]) == set(cfg.tasks)
    partial = adapt.summary(dict(results, methods=results["methods"][:2], complete=False))  # stopped after LASCO
    assert partial["by_n"] == [] and set(partial["per_task"]) == set(cfg.tasks)
    with pytest.raises(ValueError, match="batch size"):
        adapt.AdaptBenchConfig(counts=(8,))


def test_ckm_edge_construct_composes_an_adapter_package(tiny_adapter, tmp_path, capsys):
    from ckm_edge.runtime import cli

    repo, adapter, _ = tiny_adapter
    base = repo / "tiny" / "1.0.0"
    truth = np.random.default_rng(2).uniform(0.2, 0.9, (2, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "truth.npz", pixels=truth)
    args = ["construct", "--package", str(base), "--truth", str(tmp_path / "truth.npz"), "--task", "ipbox", "--steps", "3",
            "--json", "--out", str(tmp_path / "out")]
    assert cli.main(args + ["--adapter", str(adapter.root)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["adapter"] == "site-a 1.0.0" and report["engine_calls"] == {"score": 3}
    # An adapter package given as the model, or a model given as the adapter, is refused with the reason.
    assert cli.main(args + ["--adapter", str(base)]) != 0
    assert "not a site adapter" in capsys.readouterr().err


def test_ckm_edge_demo_serves_the_repository_with_and_without_an_adapter(tiny_adapter, tmp_path, capsys):
    from ckm_edge.runtime import cli

    repo, _, _ = tiny_adapter
    np.savez(tmp_path / "truth.npz", pixels=np.random.default_rng(3).uniform(0.2, 0.9, (2, 32, 32)).astype(np.float32))
    for extra, adapter in (([], None), (["--adapter", "site-a"], "site-a 1.0.0")):
        assert cli.main(["demo", "--repository", str(repo), "--truth", str(tmp_path / "truth.npz"), "--tasks", "ipbox", "sr",
                         "--steps", "2", "--samples", "1", "--out", str(tmp_path / "demo")] + extra) == 0
        out = capsys.readouterr().out
        reports = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        # each task observed alone, then given the site (the truth tile's building layout)
        assert [(r["task"], r["site"]) for r in reports] == [
            ("ipbox", False), ("sr2", False), ("ipbox", True), ("sr2", True)]
        assert all(r.get("adapter") == adapter and r["model"] == "tiny 1.0.0" for r in reports)
        # the summary: a row per task and setting, the construction beside the best classical fill
        rows = [line.split() for line in out[out.index("best classical fill"):].splitlines() if line.strip()[:3] in ("ipb", "sr ")]
        assert [(r[0], r[1]) for r in rows] == [("ipbox", "observation"), ("ipbox", "given"), ("sr", "observation"), ("sr", "given")]
        assert f"{reports[1]['gain_rmse_db']:.2f}" in " ".join(rows[2]) and f"{reports[3]['gain_rmse_db']:.2f}" in " ".join(rows[3])
        assert (tmp_path / "demo" / "sr" / "construction.png").is_file()
        assert (tmp_path / "demo" / "sr-site" / "construction.png").is_file()
    # a site task that is not a task is refused by name
    assert cli.main(["demo", "--repository", str(repo), "--truth", str(tmp_path / "truth.npz"), "--tasks", "ipbox",
                     "--site-tasks", "jtqr", "--out", str(tmp_path / "demo")]) == 2
    assert "--site-tasks jtqr: not among --tasks (ipbox)" in capsys.readouterr().err
