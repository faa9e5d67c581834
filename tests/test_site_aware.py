"""The site-aware prior end to end (issue 16): warm start, training, export with the condition
input, the torch-free engine, the samplers and the gRPC API carrying the base station."""

import dataclasses

import grpc
import numpy as np
import pytest
import torch

from ckm_edge.runtime import api, condition, tasks
from ckm_edge.runtime.construct import ConstructConfig, construct
from ckm_edge.runtime.diffpir import DiffPIRConfig
from ckm_edge.runtime.engine import EngineConfig, EngineError, OrtEngine
from ckm_edge.runtime.package import PackageError, load_package
from ckm_edge.runtime.site import Site, SiteError
from ckm_edge.training.checkpoint import load_model
from ckm_edge.training.unet import PRESETS, ScoreModel, warm_start


def test_warm_start_widens_the_stem_and_keeps_the_function(tiny_prior):
    model, meta, train, _ = tiny_prior
    from ckm_edge.runtime.schedule import Schedule

    wide = ScoreModel(dataclasses.replace(PRESETS["tiny"], cond_channels=condition.CHANNELS),
                      Schedule.from_dict(meta["schedule"])).eval()
    assert warm_start(wide, model.state_dict()) == ["net.stem.weight"]
    x, t = torch.from_numpy(train[:3]), torch.tensor([0.9, 0.3, 0.05])
    cond = torch.from_numpy(condition.site_condition(train[:3, 0] == 0, np.array([5.0, 7.0, 20.0]), (32, 32)))
    with torch.no_grad():
        ref = model(x, t)
        assert torch.equal(wide(x, t), ref)  # condition unknown (zeros)
        assert torch.allclose(wide(x, t, cond), ref, atol=1e-6)  # the new inputs start at zero
    narrow = ScoreModel(dataclasses.replace(PRESETS["tiny"], base_channels=12), Schedule.from_dict(meta["schedule"]))
    with pytest.raises(ValueError, match="warm start"):
        warm_start(narrow, model.state_dict())


def test_site_aware_package_declares_its_condition(tiny_site_package):
    pkg, ckpt, _, _ = tiny_site_package
    # `ckm-train --site-aware` trains ckm-site/2 (the physics channels) by default
    assert pkg.condition_channels == condition.SITE_V2.channels
    assert pkg.manifest.to_dict()["condition"] == {"input": "cond", "channels": condition.SITE_V2.channels,
                                         "encoding": "ckm-site/2", "cell_size_m": 2.0, "carrier_hz": 3.5e9}
    assert pkg.condition_encoding == condition.SITE_V2
    model, meta = load_model(ckpt)
    assert meta["unet"]["cond_channels"] == condition.SITE_V2.channels and meta["init"]["widened"] == ["net.stem.weight"]
    # training moved the condition weights off zero: the model uses the site
    assert model.net.stem.weight[:, 2:].abs().max() > 0


def test_a_package_with_an_unknown_condition_encoding_is_refused(tiny_site_package, tmp_path):
    import json
    import shutil

    pkg = tiny_site_package[0]
    shutil.copytree(pkg.root, tmp_path / "pkg")
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    manifest["condition"]["encoding"] = "ckm-site/9"
    (tmp_path / "pkg" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="encoding"):
        load_package(tmp_path / "pkg", verify_files=False)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_engine_matches_pytorch_with_and_without_the_condition(tiny_site_package, precision):
    pkg, ckpt, tiles, tx = tiny_site_package
    model, _ = load_model(ckpt)
    model = model.float().eval()
    rng = np.random.default_rng(0)
    x = (tiles + 0.1 * rng.standard_normal(tiles.shape)).astype(np.float32)
    t = np.array([0.8, 0.4, 0.1, 0.02], np.float32)
    cond = condition.site_condition(tiles[:, 0] == 0, tx, (32, 32), encoding=pkg.condition_encoding)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(cond)).numpy()
        ref0 = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    tol = 1e-4 if precision == "fp32" else 0.25  # as for the unconditional INT8 graphs (test_export_runtime)
    with OrtEngine(pkg, EngineConfig(precision=precision)) as engine:
        rel = lambda a, r: np.abs(a - r).max() / np.abs(r).max()  # noqa: E731
        assert rel(engine.score(x, t, cond), ref) < tol
        assert rel(engine.score(x, t), ref0) < tol  # no condition = all zeros = unconditional
        s, saved = engine.forward(x, t, cond)
        assert rel(s, ref) < tol
        assert engine.backward(saved, np.ones_like(x)).shape == x.shape
        assert np.abs(ref - ref0).max() > 1e-3 * np.abs(ref).max()  # the condition changes the score
        with pytest.raises(EngineError, match="condition has shape"):
            engine.score(x, t, cond[:, :3])


def test_an_unconditional_engine_refuses_a_condition(tiny_package):
    with OrtEngine(tiny_package) as engine:
        assert engine.condition_channels == 0
        with pytest.raises(EngineError, match="not site-aware"):
            engine.score(np.zeros((1, 2, 32, 32), np.float32), np.ones(1, np.float32),
                         np.zeros((1, condition.CHANNELS, 32, 32), np.float32))


def test_vjp_is_with_respect_to_x_only(tiny_site_package):
    """The backward graph of a site-aware package is v^T ds/dx at the given condition (autograd)."""
    pkg, ckpt, tiles, tx = tiny_site_package
    model, _ = load_model(ckpt)
    model = model.float().eval()
    x = tiles[:2].copy()
    t = np.array([0.5, 0.2], np.float32)
    cond = condition.site_condition(tiles[:2, 0] == 0, tx[:2], (32, 32), encoding=pkg.condition_encoding)
    v = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    (ref,) = torch.autograd.grad(model(xt, torch.from_numpy(t), torch.from_numpy(cond)), xt, torch.from_numpy(v))
    with OrtEngine(pkg) as engine:
        _, saved = engine.forward(x, t, cond)
        got = engine.backward(saved, v)
    assert np.abs(got - ref.numpy()).max() < 2e-3 * np.abs(ref.numpy()).max()


def _task(tiles, tx, i=0):
    rng = np.random.default_rng(3)
    truth = tiles[i : i + 1]
    op = tasks.make_operator("sr2", rng, truth)
    y = tasks.observe(op, truth, rng)
    return truth, op, y, Site(truth[0, 0] == 0, tx[i])


def test_samplers_tell_a_site_aware_prior_the_site(tiny_site_package):
    """The same construction with and without the base station differs only through the prior's
    condition (the base station constrains no cell), and an unknown site part is all zeros."""
    pkg, _, tiles, tx = tiny_site_package
    truth, op, y, site = _task(tiles, tx)
    cfg = ConstructConfig(steps=6, samples=2, seed=1, sampler=DiffPIRConfig())
    with OrtEngine(pkg) as engine:
        run = lambda s: construct(engine, pkg.schedule(), op, y, truth.shape[1:], cfg, site=s).mean  # noqa: E731
        full, layout_only = run(site), run(Site(site.building))
        assert np.abs(full - layout_only).max() > 1e-4
        bs_only = run(Site(base_station=site.base_station))
        plain = run(None)
        assert np.abs(bs_only - plain).max() > 1e-4  # the base station alone still reaches the prior


def test_site_validation():
    with pytest.raises(SiteError, match="building map, a base station"):
        Site()
    with pytest.raises(SiteError, match="height"):
        Site(base_station=(3.0, 4.0, 0.0))
    with pytest.raises(SiteError, match="finite"):
        Site(base_station=(np.nan, 4.0, 10.0))
    with pytest.raises(SiteError, match="within 8 tiles"):
        Site(base_station=(5000.0, 4.0, 10.0)).check((2, 32, 32))
    Site(base_station=(-40.0, 70.0, 25.0)).check((2, 32, 32))  # outside the tile is fine
    cond = Site(base_station=(-40.0, 70.0, 25.0)).condition((2, 32, 32), 3)
    assert cond.shape == (3, condition.CHANNELS, 32, 32) and cond[:, 0:2].max() == 0 and cond[:, 3].min() == 1


@pytest.fixture(scope="module")
def site_server(tiny_site_package, tiny_package, tmp_path_factory):
    import shutil

    from ckm_edge.runtime.server import ServerConfig, create_server

    repo = tmp_path_factory.mktemp("site-repo")
    shutil.copytree(tiny_site_package[0].root, repo / "tiny-site" / "1.0.0")
    shutil.copytree(tiny_package.root, repo / "tiny" / "1.0.0")
    server = create_server(ServerConfig(repository=repo, port=0, poll_seconds=0, engine_threads=1)).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield api.services.EdgeServiceStub(channel)
    channel.close()
    server.stop(0)


def _request(model, truth, op, y, site_msg=None, **kw):
    req = api.pb.ConstructRequest(model_name=model, observation=api.from_numpy(y[0]), operator=api.operator_to_proto(op),
                                  noise_sigma=0.01, steps=6, samples=2, seed=4, sampler="diffpir", **kw)
    if site_msg is not None:
        req.site.CopyFrom(site_msg)
    return req


def test_grpc_carries_the_base_station_and_matches_local(site_server, tiny_site_package):
    """As an outside client would: raw proto messages, the base station as its own message."""
    pkg, _, tiles, tx = tiny_site_package
    truth, op, y, site = _task(tiles, tx, 1)
    meta = site_server.GetModelMetadata(api.pb.GetModelMetadataRequest(model_name="tiny-site"))
    assert meta.site_aware
    assert not site_server.GetModelMetadata(api.pb.GetModelMetadataRequest(model_name="tiny")).site_aware
    msg = api.pb.Site(building=api.from_numpy(site.building.astype(np.uint8)),
                      base_station=api.pb.BaseStation(row=float(tx[1, 0]), col=float(tx[1, 1]), height_m=float(tx[1, 2])))
    resp = site_server.Construct(_request("tiny-site", truth, op, y, msg))
    assert resp.site_conditioned
    from ckm_edge.runtime.sampler import config_from_params

    sampler = config_from_params("diffpir", dict(resp.sampler_parameters))  # what the server ran
    with OrtEngine(pkg) as engine:
        local = construct(engine, pkg.schedule(), op, y, truth.shape[1:],
                          ConstructConfig(steps=6, samples=2, seed=4, sampler=sampler), sigma=0.01, site=site)
    assert np.abs(api.to_numpy(resp.map, "map", finite=False) - local.mean).max() < 1e-4
    # an unconditional model uses the layout as an observation but is not conditioned
    assert not site_server.Construct(_request("tiny", truth, op, y, msg)).site_conditioned


@pytest.mark.parametrize("site_msg, field", [
    (api.pb.Site(), "site: give its building map, its base_station, or both"),
    (api.pb.Site(base_station=api.pb.BaseStation(row=3, col=4, height_m=0)), "site.base_station: a base station's height"),
    (api.pb.Site(base_station=api.pb.BaseStation(row=3, col=4, height_m=float("nan"))), "site.base_station:"),
    (api.pb.Site(base_station=api.pb.BaseStation(row=1e6, col=4, height_m=20)), "site.base_station: a base station must stand"),
])
def test_bad_base_stations_are_invalid_argument(site_server, tiny_site_package, site_msg, field):
    pkg, _, tiles, tx = tiny_site_package
    truth, op, y, _ = _task(tiles, tx)
    with pytest.raises(grpc.RpcError) as err:
        site_server.Construct(_request("tiny-site", truth, op, y, site_msg))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_grpc_building_heights_reach_a_ckm_site_2_prior(site_server, tiny_site_package):
    """Heights as an outside client sends them (FLOAT32 metres): the model sees them and the line of
    sight over the roofs; the construction matches the local one with the same Site; bad heights
    are INVALID_ARGUMENT naming site.building_height."""
    pkg, _, tiles, tx = tiny_site_package
    truth, op, y, site = _task(tiles, tx, 1)
    heights = np.where(site.building, 12.0, 0.0).astype(np.float32)
    bs = api.pb.BaseStation(row=float(tx[1, 0]), col=float(tx[1, 1]), height_m=float(tx[1, 2]))
    msg = api.pb.Site(building=api.from_numpy(site.building.astype(np.uint8)), base_station=bs,
                      building_height=api.from_numpy(heights))
    resp = site_server.Construct(_request("tiny-site", truth, op, y, msg))
    with_heights = Site(site.building, tx[1], heights)
    assert pkg.condition_encoding == condition.SITE_V2
    cond = with_heights.condition((1, 2, 32, 32), 1, pkg.condition_encoding)
    assert (cond[0, 9] == 1).all() and np.allclose(cond[0, 8], heights / 50.0)
    from ckm_edge.runtime.sampler import config_from_params

    sampler = config_from_params("diffpir", dict(resp.sampler_parameters))
    with OrtEngine(pkg) as engine:
        local = construct(engine, pkg.schedule(), op, y, truth.shape[1:],
                          ConstructConfig(steps=6, samples=2, seed=4, sampler=sampler), sigma=0.01, site=with_heights)
        flat = construct(engine, pkg.schedule(), op, y, truth.shape[1:],
                         ConstructConfig(steps=6, samples=2, seed=4, sampler=sampler), sigma=0.01, site=site)
    got = api.to_numpy(resp.map, "map", finite=False)
    assert np.abs(got - local.mean).max() < 1e-4 and np.abs(got - flat.mean).max() > 1e-5
    for tensor, text in ((api.from_numpy(-heights - 1), "finite and >= 0"),
                         (api.from_numpy(heights[:8]), "shaped like its building map"),
                         (api.from_numpy(site.building.astype(np.uint8)), "FLOAT32 or FLOAT64")):
        bad = api.pb.Site(building=msg.building, base_station=bs, building_height=tensor)
        with pytest.raises(grpc.RpcError) as err:
            site_server.Construct(_request("tiny-site", truth, op, y, bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "site.building_height" in err.value.details() and text in err.value.details()
    only_heights = api.pb.Site(base_station=bs, building_height=api.from_numpy(heights))
    with pytest.raises(grpc.RpcError) as err:
        site_server.Construct(_request("tiny-site", truth, op, y, only_heights))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "need its building map" in err.value.details()
    assert api.site_from_proto(api.site_to_proto(with_heights), (2, 32, 32)).building_height.tolist() == heights.tolist()


@pytest.mark.parametrize("encoding", [condition.SITE_V1, condition.SITE_V2], ids=lambda e: e.name)
def test_int8_calibration_feeds_carry_the_condition(encoding):
    from ckm_edge.export import precision
    from ckm_edge.runtime.schedule import Schedule

    tiles = np.random.default_rng(0).random((6, 2, 16, 16)).astype(np.float32)
    feeds = precision.calibration_inputs(tiles, Schedule.vp(100), np.random.default_rng(0), encoding.channels)
    assert all(f["cond"].shape == (1, encoding.channels, 16, 16) for f in feeds)
    assert any(f["cond"].max() > 0 for f in feeds) and any(f["cond"].max() == 0 for f in feeds)
    with pytest.raises(ValueError, match="condition channels"):
        precision.calibration_inputs(tiles, Schedule.vp(100), np.random.default_rng(0), 3)


def test_edge_cli_conditions_on_the_base_station(tiny_site_package, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    pkg, _, tiles, tx = tiny_site_package
    np.savez(tmp_path / "t.npz", pixels=tiles[0])
    base = [str(Path(sys.executable).parent / "ckm-edge"), "construct", "--package", str(pkg.root), "--truth",
            str(tmp_path / "t.npz"), "--task", "sr2", "--steps", "4", "--samples", "2", "--json", "--threads", "1"]
    out = subprocess.run(base + ["--out", str(tmp_path / "a"), "--site", "--base-station", *map(str, tx[0])],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["site"] and report["site_conditioned"] and report["base_station"] == [round(float(v), 3) for v in tx[0]]
    out = subprocess.run(base + ["--out", str(tmp_path / "b"), "--base-station", "3", "4", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "height" in out.stderr
