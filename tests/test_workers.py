"""`ckm-edge serve --workers N` (runtime/workers.py): real server processes on one port, driven
over gRPC from fresh connections, their metrics summed by the supervisor, a worker killed and
restarted, and the ways it refuses to start."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_server import repo  # noqa: F401 (a module-scoped fixture: this module's own copy)
from test_sites import _definition, _measurements, _port, _route, _serve, _wait_map

from ckm_edge.protos.ckm.edge.v1 import site_pb2 as spb
from ckm_edge.protos.ckm.edge.v1 import site_pb2_grpc as sgrpc
from ckm_edge.runtime import cli


def _metric(text: str, name: str, **labels) -> float:
    """The value of one series of Prometheus text (labels in any order); 0 where it is absent."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def _workers(supervisor_pid: int) -> list[int]:
    """The supervisor's worker processes (its children, less multiprocessing's resource tracker)."""
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text().split()
    return [int(p) for p in children if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]


def _fresh(port: int) -> grpc.Channel:
    """A channel with a connection of its own (not shared with this process' other channels), as
    a separate client would open: the kernel hands it to any of the workers."""
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


def _query_from_fresh_connections(port: int, n: int) -> set[int]:
    versions = set()
    for _ in range(n):
        with _fresh(port) as ch:
            r = sgrpc.SiteServiceStub(ch).QueryPoints(
                spb.QueryPointsRequest(site_id="shared", positions=[spb.Position(cell=spb.CellPosition(row=2.0, col=3.5))]),
                timeout=30, wait_for_ready=True)
            versions.add(r.map_version)
    return versions


def test_workers_serve_one_port_share_the_store_and_survive_a_killed_worker(repo, tmp_path, tiny_prior):
    *_, evl = tiny_prior
    port_file = tmp_path / "port"
    proc = _serve(repo, f"sqlite:{tmp_path}/s.db", port_file, "--workers", "2", "--metrics-port", "0",
                  stdout=subprocess.PIPE)
    try:
        port = _port(proc, port_file, timeout=180)
        line = proc.stdout.readline()  # printed before the port file is written
        metrics_port = int(re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", line).group(1))
        assert "with 2 workers (pinned to CPUs" in line
        assert len(_workers(proc.pid)) == 2
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="ckm.edge.v1.SiteService"))
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            s = sgrpc.SiteServiceStub(ch)
            s.CreateSite(spb.CreateSiteRequest(definition=_definition("shared")))
            s.AddMeasurements(spb.AddMeasurementsRequest(site_id="shared", measurements=_measurements(evl[0], _route(evl[0], 8, 1))))
            version = _wait_map(s, "shared", 8, timeout=120).map_version
        # every connection, whichever worker took it, sees the same site and map
        assert _query_from_fresh_connections(port, 12) == {version}
        text = _scrape(metrics_port)  # the supervisor sums its workers' series
        assert _metric(text, "ckm_requests_total", method="QueryPoints", code="OK") == 12
        assert _metric(text, "ckm_requests_total", method="CreateSite", code="OK") == 1
        assert _metric(text, "ckm_workers") == 2

        victim = _workers(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            text = _scrape(metrics_port)
            if _metric(text, "ckm_worker_restarts_total") == 1 and _metric(text, "ckm_workers") == 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the killed worker was not restarted: {text[-1500:]}")
        assert victim not in _workers(proc.pid) and len(_workers(proc.pid)) == 2
        assert _query_from_fresh_connections(port, 12) == {version}
        assert _metric(_scrape(metrics_port), "ckm_requests_total", method="QueryPoints", code="OK") == 24
    finally:
        workers = _workers(proc.pid) if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0  # a graceful stop of every worker
    assert not any(Path(f"/proc/{w}").exists() and "zombie" not in Path(f"/proc/{w}/status").read_text()
                   for w in workers)


def test_a_worker_that_cannot_start_stops_the_server_with_its_error(repo, tmp_path, capsys):
    missing = tmp_path / "missing.pem"
    rc = cli.main(["serve", "--repository", str(repo), "--port", "0", "--workers", "2", "--threads", "1",
                   "--tls-cert", str(missing), "--tls-key", str(missing)])
    err = capsys.readouterr().err
    assert rc == 2 and "worker" in err and "missing.pem" in err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_is_an_error_not_a_shared_one(repo, workers, capsys):
    with socket.socket() as taken:  # another program's port (no SO_REUSEPORT)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc = cli.main(["serve", "--repository", str(repo), "--port", str(port), "--workers", workers, "--threads", "1",
                       "--poll-seconds", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and f"could not bind 127.0.0.1:{port}" in err


def test_workers_must_be_positive(repo, capsys):
    assert cli.main(["serve", "--repository", str(repo), "--port", "0", "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_per_server_limits_are_split_between_workers():
    from ckm_edge.runtime.server import ServerConfig
    from ckm_edge.runtime.sites import SiteLimits
    from ckm_edge.runtime.workers import split_limits

    cfg = ServerConfig(repository=Path("r"), site_limits=SiteLimits(max_watchers=5, query_rate=300.0, add_rate_per_site=10.0))
    lim = split_limits(cfg, 2).site_limits
    assert (lim.max_watchers, lim.query_rate, lim.add_rate_per_site) == (3, 150.0, 5.0)
    assert lim.max_sites == cfg.site_limits.max_sites  # held in the store: the server's, not split
