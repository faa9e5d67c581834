"""The GPU benchmark's pieces (benchmarks/gpu.py), on the CPU here; the CUDA-graph path where a GPU is."""

import numpy as np
import pytest
import torch

from ckm_edge.benchmarks import gpu
from ckm_edge.runtime.dps import DPSConfig
from ckm_edge.runtime.engine import EngineConfig, open_engine
from ckm_edge.runtime.sampler import Observations, sample
from ckm_edge.runtime.schedule import Schedule


def test_torch_engine_matches_the_onnx_engine(tiny_prior, tiny_package):
    model, _, train, _ = tiny_prior
    x = train[:2].astype(np.float32)
    t = np.array([0.3, 0.8], np.float32)
    v = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    mine = gpu.TorchEngine(model, "cpu", "fp32")
    with open_engine(tiny_package, EngineConfig(precision="fp32")) as ort:
        s_ref, saved_ref = ort.forward(x, t)
        g_ref = ort.backward(saved_ref, v)
        sc_ref = ort.score(x, t)
    s, saved = mine.forward(x, t)
    np.testing.assert_allclose(s, s_ref, rtol=1e-4, atol=1e-3 * np.abs(s_ref).max())
    np.testing.assert_allclose(mine.score(x, t), sc_ref, rtol=1e-4, atol=1e-3 * np.abs(sc_ref).max())
    np.testing.assert_allclose(mine.backward(saved, v), g_ref, rtol=1e-3, atol=2e-3 * np.abs(g_ref).max())


def _problem(model, meta, tile, steps):
    schedule = Schedule.from_dict(meta["schedule"]).respace(steps)
    op, y, mask, yt = gpu.mask_problem(tile, 1, torch.device("cpu"), seed=3)
    return schedule, op, y, mask, yt


def test_graph_dps_is_the_runtime_sampler_with_the_same_draws(tiny_prior):
    model, meta, _, held = tiny_prior
    tile = held[0].astype(np.float32)
    schedule, op, y, mask, yt = _problem(model, meta, tile, 6)
    ref = sample(gpu.TorchEngine(model, "cpu"), schedule, Observations.of(op, y, tile.shape, 1), [np.random.default_rng(5)],
                 DPSConfig())
    rng = np.random.default_rng(5)
    x_init = torch.from_numpy(schedule.prior_sample(tile.shape, rng)[None])
    draws = []

    def noise():
        draws.append(1)
        return torch.from_numpy(rng.standard_normal(tile.shape).astype(np.float32)[None])

    got = gpu.GraphDPS(model, schedule, mask, yt).run(x_init, noise).numpy()
    assert len(draws) == 2 * 6 - 1  # a predictor draw every step, a corrector draw on all but the last
    np.testing.assert_allclose(got, ref, atol=1e-4)
    with pytest.raises(ValueError, match="M = 1"):
        gpu.GraphDPS(model, schedule, mask, yt, DPSConfig(jacobian_free=True))


def test_steps_curve_rows_and_the_fewest_steps_rule(tiny_prior, tmp_path):
    model, meta, _, held = tiny_prior
    tiles = held[:2].astype(np.float32)
    rows = gpu.steps_curve(model, Schedule.from_dict(meta["schedule"]), tiles, ("ipbox", "sr2"), (2, 8), "cpu",
                           progress=lambda _: None)
    assert [(r["task"], r["steps"]) for r in rows] == [("ipbox", 2), ("ipbox", 8), ("sr2", 2), ("sr2", 8)]
    assert all(np.isfinite(r["gain_db"]) and r["gain_db"] >= 0 for r in rows)
    png = gpu.plot_steps(rows, tmp_path / "steps.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    made = [{"task": "a", "steps": n, "gain_db": g} for n, g in ((20, 12.0), (100, 10.4), (1000, 10.0))]
    assert gpu.fewest_steps_within(made, "a") == 100  # 10.4 <= 1.05 * 10.0
    assert gpu.fewest_steps_within(made + [{"task": "b", "steps": 20, "gain_db": 1.0}], "b") is None
    # A run that would pass the deadline is skipped, and said to be.
    said = []
    skipped = gpu.steps_curve(model, Schedule.from_dict(meta["schedule"]), tiles, ("ipbox",), (2, 50), "cpu",
                              progress=said.append, deadline=0.0)
    assert skipped == [] and all("skipped" in line for line in said)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; run on a lent GPU)")
def test_captured_graph_equals_the_eager_step(tiny_prior):
    model, meta, _, held = tiny_prior
    tile = held[0].astype(np.float32)
    schedule, _, _, mask, yt = _problem(model, meta, tile, 5)
    dev = torch.device("cuda")
    model = model.to(dev)
    x_init = torch.randn(1, *tile.shape, generator=torch.Generator().manual_seed(0)).to(dev)
    draws = [torch.randn_like(x_init) for _ in range(9)]
    eager = gpu.GraphDPS(model, schedule, mask.to(dev), yt.to(dev))
    a = eager.run(x_init, iter(draws).__next__).clone()
    captured = gpu.GraphDPS(model, schedule, mask.to(dev), yt.to(dev))
    captured.capture()
    b = captured.run(x_init, iter(draws).__next__)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_latency_refuses_an_engine_this_machine_cannot_run(capsys):
    """`ckm-bench latency --device cuda` / `--backend tensorrt` measure the product's GPU engines where
    they are installed; elsewhere they stop before timing anything, saying why."""
    import onnxruntime

    from ckm_edge.benchmarks import cli

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has ONNX Runtime's CUDA provider")
    with pytest.raises(SystemExit, match="onnxruntime engine on cuda cannot run here: .*CUDAExecutionProvider"):
        cli.main(["latency", "--device", "cuda", "--steps", "1"])
    with pytest.raises(SystemExit, match="tensorrt engine on cpu cannot run here"):
        cli.main(["latency", "--backend", "tensorrt", "--steps", "1"])
