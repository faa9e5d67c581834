"""One construction path: `ckm-edge construct` against a package and against a server gives the same
maps for every construction setting the CLI has, and a served request is checked once."""

import numpy as np
import pytest

from ckm_edge.runtime import cli, executor
from ckm_edge.runtime.server import ServerConfig, create_server
from ckm_edge.runtime.site import Site


@pytest.fixture(scope="module")
def served(tiny_adapter):
    repo, _, _ = tiny_adapter
    edge = create_server(ServerConfig(repository=repo, port=0, poll_seconds=0, engine_threads=1,
                                      deterministic=True, max_queue_delay_ms=0)).start()
    yield repo, edge
    edge.stop(0)


@pytest.fixture(scope="module")
def truth(tiny_prior, tmp_path_factory):
    *_, evl = tiny_prior
    path = tmp_path_factory.mktemp("truth") / "t.npz"
    np.savez(path, pixels=evl[1], tx=np.array([10.5, 12.5, 25.0]))
    return path


# Every construction setting of `ckm-edge construct` (engine settings aside: those are the server's).
SETTINGS = {
    "recommended": [],
    "dps": ["--sampler", "dps", "--steps", "3", "--samples", "2"],
    "dps-shorthands": ["--zeta", "5", "--corrector-steps", "2", "--steps", "3"],
    "jacobian-free": ["--jacobian-free", "--steps", "3"],
    "no-clip-denoised": ["--sampler", "dps", "--no-clip-denoised", "--steps", "3"],
    "daps-param": ["--sampler", "daps", "--param", "ratio=0.5", "--steps", "4", "--samples", "2"],
    "diffpir-restart": ["--sampler", "diffpir", "--param", "restart=0.2", "--param", "restart_steps=2", "--steps", "4"],
    "warm-start": ["--sampler", "diffpir", "--param", "start=0.3", "--steps", "4", "--samples", "3"],
    "respacing": ["--sampler", "diffpir", "--steps", "4", "--respacing", "ddim"],
    "seed": ["--seed", "5"],
    "sigma": ["--sigma", "0.03", "--task", "ipbox"],
    "site": ["--site"],
    "base-station": ["--base-station", "40", "-5", "30"],
    "adapter": ["--adapter", "ADAPTER", "--steps", "3"],
    "precision": ["--precision", "fp16", "--steps", "3"],
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_the_server_honours_every_construction_setting_of_the_cli(setting, served, truth, tmp_path):
    repo, edge = served
    extra = list(SETTINGS[setting])
    task = extra.pop(extra.index("--task") + 1) if "--task" in extra else "sr"
    extra = [a for a in extra if a != "--task"]
    maps = {}
    for where in ("local", "served"):
        args = ["construct", "--truth", str(truth), "--task", task, "--out", str(tmp_path / where), "--json"]
        if where == "local":
            args += ["--package", str(repo / "tiny" / "1.0.0"), "--threads", "1"]
        else:
            args += ["--server", f"127.0.0.1:{edge.port}"]
        adapter = str(repo / "site-a" / "1.0.0") if where == "local" else "site-a"
        assert cli.main(args + [adapter if a == "ADAPTER" else a for a in extra]) == 0, (setting, where)
        maps[where] = np.load(tmp_path / where / "construction.npz")["pixels"]
    assert maps["local"].shape == (2, 32, 32)
    np.testing.assert_array_equal(maps["local"], maps["served"], err_msg=setting)


def test_a_served_request_is_checked_once(served, tiny_prior, monkeypatch):
    """The site and the steps (respacing) are checked by the executor's plan and nowhere else."""
    from ckm_edge.runtime import operators, tasks
    from ckm_edge.runtime.client import EdgeClient

    _, edge = served
    *_, evl = tiny_prior
    x = evl[:1]
    op = operators.Mask(tasks.box_mask(np.random.default_rng(0), (32, 32), (4, 8)))
    y = tasks.observe(op, x, np.random.default_rng(1))[0]
    counts = {"site": 0, "respaced": 0}
    check, respaced = Site.check, executor.respaced

    def counted_check(self, shape):
        counts["site"] += 1
        return check(self, shape)

    def counted_respaced(*a, **kw):
        counts["respaced"] += 1
        return respaced(*a, **kw)

    monkeypatch.setattr(Site, "check", counted_check)
    monkeypatch.setattr(executor, "respaced", counted_respaced)
    site = Site(x[0, 0] == 0, np.array([3.0, 4.0, 20.0]))
    with EdgeClient(f"127.0.0.1:{edge.port}") as client:
        result = client.construct(y, op, model="tiny", sampler="diffpir", steps=3, samples=2, site=site)
    assert result.map.shape == (2, 32, 32)
    assert counts == {"site": 1, "respaced": 1}
