"""The network-size benchmark (benchmarks/netsize.py): cost of real exported graphs, accuracy of a
real trained prior through the runtime's own sampler."""

import numpy as np
import pytest
import torch

from ckm_edge.benchmarks import netsize, solvers


def test_cost_counts_parameters_flops_and_times_the_exported_graph(tiny_prior):
    model, *_ = tiny_prior
    c = netsize.cost(model, 32, repeats=2)
    assert c["parameters"] == sum(p.numel() for p in model.parameters())
    # The stem alone: 3 x 3 convolution, 2 -> 8 channels, 32 x 32 outputs, 2 FLOPs per multiply-add.
    assert c["gflops_per_eval"] * 1e9 > 2 * 9 * 2 * 8 * 32 * 32
    assert set(c["ort_cpu_ms"]) == {"1", "4"} and all(v > 0 for v in c["ort_cpu_ms"].values())
    assert c["score_graph_mib"] > 4 * c["parameters"] / 2**20 * 0.9  # the weights are in the graph
    # Larger presets cost more: the curve's x axis is monotone in the preset's width.
    small, _ = netsize.load(netsize.parse_candidate("small"), 32)
    with torch.no_grad():
        assert netsize.cost(small, 32, repeats=1)["gflops_per_eval"] > 5 * c["gflops_per_eval"]


def test_accuracy_of_a_trained_prior_is_the_runtime_default_construction(tiny_prior, tiny_package, tmp_path):
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.recommend import resolve

    model, meta, _, evl = tiny_prior
    torch.save({"format": "ckm-model", "meta": {**meta, "trained_steps": 300}, "weights": model.state_dict()},
               tmp_path / "tiny.pt")
    cand = netsize.parse_candidate(f"tiny-trained={tmp_path / 'tiny.pt'}")
    out = netsize.run([cand], evl[:2], repeats=1, progress=lambda line: None)
    rows = out["rows"]
    acc = rows[0]["accuracy"]
    assert set(acc) == {"ipbox", "iprandom", "sr2", "jtqr"} and rows[0]["trained_steps"] == 300
    # The same constructions through the exported package (ONNX Runtime) agree.
    probs = solvers.problems(evl[:2], ("sr2",), 0.01, 0)
    with open_engine(tiny_package, EngineConfig(threads=1)) as eng:
        vals = []
        for i in range(2):
            op, y, unobs, _ = probs["sr2", i]
            s, steps, n = resolve(tiny_package.manifest.samplers, op)
            r = construct(eng, tiny_package.schedule(), op, y, (2, 32, 32), ConstructConfig(steps, n, 0, sampler=s), sigma=0.01)
            vals.append(solvers.metrics(r.mean, evl[i], unobs)["gain_all"])
    assert acc["sr2"]["gain_all"] == pytest.approx(float(np.mean(vals)), rel=1e-3)
    assert rows[0]["label"] == "tiny-trained" and rows[0]["over_package_limit"] is False
    assert out["package_limit_mib"] == netsize.PACKAGE_LIMIT_MIB


def test_candidates_are_presets_or_existing_checkpoints(tmp_path):
    assert netsize.parse_candidate("medium").checkpoint is None
    with pytest.raises(ValueError, match="neither a preset"):
        netsize.parse_candidate("huge")
    with pytest.raises(ValueError, match="does not exist"):
        netsize.parse_candidate(f"x={tmp_path / 'missing.pt'}")
