"""Living maps (runtime.sites, runtime.sitestore, the SiteService): the store against real SQLite
and (where one can be started) real PostgreSQL, and the service as an outside client drives it —
the generated stub and raw messages from site.proto, never our Python client."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_server import repo  # noqa: F401 (a module-scoped fixture: this module's own copy)

from ckm_edge.protos.ckm.edge.v1 import site_pb2 as spb
from ckm_edge.protos.ckm.edge.v1 import site_pb2_grpc as sgrpc
from ckm_edge.runtime import api, codec
from ckm_edge.runtime.api import pb
from ckm_edge.runtime.server import ServerConfig, create_server
from ckm_edge.runtime.sites import Geometry, RebuildPolicy
from ckm_edge.runtime.sitestore import MapRow, Readings, SiteExists, StoreError, open_store

BIN = Path(sys.executable).parent
FAST = RebuildPolicy(after_measurements=8, after_seconds=0.3, poll_seconds=0.05)


# -- stores ---------------------------------------------------------------------------------------
def _postgres_binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster (initdb, pg_ctl) in a temp dir, owned by an unprivileged user
    (the server refuses to run as root), on a Unix socket; skipped where none can be started."""
    bindir = _postgres_binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (Debian's postgresql package installs them)")
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the sites-postgres extra)")
    root = Path(tempfile.mkdtemp(prefix="ckm-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        shutil.chown(root, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    data, port = root / "data", 50000 + os.getpid() % 10000
    init = subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "ckm", "--no-sync"],
                          capture_output=True, text=True)
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    opts = f"-p {port} -k {root} -c listen_addresses='' -c fsync=off"
    start = subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "-l", str(root / "log"),
                                      "start"], capture_output=True, text=True)
    if start.returncode != 0:
        pytest.skip(f"pg_ctl start failed: {start.stderr.strip()[-300:]}")
    yield f"postgresql://ckm@/postgres?host={root}&port={port}"
    subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:{tmp_path}/sites.db"
    url = request.getfixturevalue("postgres_url")
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:  # a fresh database per test
        name = f"t{abs(hash(request.node.name)) % 10**9}_{time.monotonic_ns() % 10**6}"
        conn.execute(f"CREATE DATABASE {name}")
    return url.replace("/postgres?", f"/{name}?")


def _readings(cells, gain=None, gain_var=1e-4, aoa=None, aoa_var=1e-4):
    n = len(cells)
    r, c = (np.array([p[i] for p in cells]) for i in (0, 1))
    g = np.full(n, np.nan) if gain is None else np.asarray(gain, float)
    a = np.full(n, np.nan) if aoa is None else np.asarray(aoa, float)
    return Readings(r, c, g, np.full(n, gain_var), a, np.full(n, aoa_var), np.arange(n, dtype=np.int64))


def _map(site_id, version, count, h=4):
    return MapRow(site_id, version, np.full((2, h, h), 0.5, np.float32), np.full((2, h, h), 0.1, np.float32), True, 0.9,
                  count, 2, 0, version > 1, 10, 0.5, "tiny", "1.0.0")


def test_the_store_fuses_by_inverse_variance_and_keeps_versions(store_url):
    store = open_store(store_url, keep_versions=2)
    assert store.schema_version() == 1
    row, created = store.create_site("a", b"def", 1)
    assert created and row.measurement_count == 0 and not row.stale
    assert store.create_site("a", b"def", 2) == (row, False)  # the same definition again: no change
    with pytest.raises(SiteExists, match="site_id"):
        store.create_site("a", b"other", 3)
    # one cell read twice (variances 1e-4 and 4e-4) and once more in AoA only
    assert store.add_measurements("a", _readings([(1, 2), (1, 2)], gain=[0.4, 0.6], gain_var=1e-4), 10, "b1") == (2, 2, False)
    store.add_measurements("a", Readings(np.array([1]), np.array([2]), np.array([0.5]), np.array([4e-4]), np.array([0.7]),
                                         np.array([1e-4]), np.array([0])), 11)
    assert store.add_measurements("a", _readings([(0, 0)], gain=[0.1]), 12, "b1") == (0, 3, True)  # a retried batch
    fused = store.fused("a", (4, 4))
    w = 1 / 1e-4 + 1 / 1e-4 + 1 / 4e-4
    np.testing.assert_allclose(fused.value[0, 1, 2], (0.4 / 1e-4 + 0.6 / 1e-4 + 0.5 / 4e-4) / w)
    np.testing.assert_allclose(fused.variance[0, 1, 2], 1 / w)
    np.testing.assert_allclose(fused.value[1, 1, 2], 0.7)
    assert fused.measured.sum() == 2 and fused.measurement_count == 3
    assert store.get_site("a").stale and store.get_site("a").stale_since_ms == 10
    assert [s.site_id for s in store.stale_sites()] == ["a"]
    with pytest.raises(OverflowError, match="limit of 4"):
        store.add_measurements("a", _readings([(0, 0), (0, 1)], gain=[0.1, 0.2]), 13, max_measurements=4)
    assert store.get_site("a").measurement_count == 3  # nothing of the refused batch
    # versions: only the next one is taken; the newest two are kept
    assert store.put_map(_map("a", 1, 3)) and not store.put_map(_map("a", 1, 3)) and not store.put_map(_map("a", 3, 3))
    assert not store.get_site("a").stale and store.stale_sites() == []
    for v in (2, 3):
        assert store.put_map(_map("a", v, 3))
    assert store.map_versions("a") == [2, 3] and store.get_map("a").version == 3 and store.get_map("a", 1) is None
    m = store.get_map("a", 2)
    assert m.incremental and m.mean.shape == (2, 4, 4) and m.calibrated and m.model_version == "1.0.0"
    # leases: one owner at a time until it releases or the lease runs out
    assert store.try_lease("a", "s1", 1000, 10) and not store.try_lease("a", "s2", 2000, 10)
    assert store.try_lease("a", "s2", 11001, 10)  # s1's lease ran out
    store.release_lease("a", "s2")
    assert store.try_lease("a", "s1", 11002, 10)
    assert store.delete_site("a") == (3, 2) and store.get_site("a") is None and store.delete_site("a") is None
    with pytest.raises(KeyError):
        store.add_measurements("a", _readings([(0, 0)], gain=[0.1]), 14)
    store.close()


def test_a_store_newer_than_the_server_is_refused(tmp_path):
    url = f"sqlite:{tmp_path}/s.db"
    open_store(url).close()
    import sqlite3

    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("UPDATE ckm_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(url)
    with pytest.raises(StoreError, match="unknown store"):
        open_store("mysql://x")


def test_geometry_maps_world_metres_to_cells_and_back():
    g = Geometry(100.0, 200.0, 2.5, 30.0)
    rng = np.random.default_rng(0)
    r, c = rng.uniform(0, 128, 50), rng.uniform(0, 128, 50)
    x, y = g.to_world(r, c)
    r2, c2 = g.to_cells(x, y)
    np.testing.assert_allclose(r2, r, atol=1e-9)
    np.testing.assert_allclose(c2, c, atol=1e-9)
    flat = Geometry(0.0, 0.0, 1.0, 0.0)  # columns east, rows south
    assert tuple(float(v) for v in flat.to_cells(3.0, -5.0)) == (5.0, 3.0)


# -- the service ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def edge(repo, tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "sites.db"
    server = create_server(ServerConfig(repository=repo, port=0, poll_seconds=0, engine_threads=1, max_batch=8,
                                        store=f"sqlite:{store}", rebuild=FAST)).start()
    yield server
    server.stop(0)


@pytest.fixture()
def stub(edge):
    with grpc.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
        yield sgrpc.SiteServiceStub(channel)


def _definition(site_id, building=None, **kw):
    d = spb.SiteDefinition(site_id=site_id, geometry=spb.TileGeometry(origin_x_m=10.0, origin_y_m=20.0, cell_size_m=4.0,
                                                                      orientation_deg=15.0), **kw)
    if building is not None:
        d.site.building.CopyFrom(api.from_numpy(building.astype(np.uint8)))
        d.site.base_station.CopyFrom(pb.BaseStation(row=16.5, col=3.5, height_m=25.0))
    return d


def _measurements(truth, cells, noise_db=1.0):
    """Readings of the truth tile (pixels) at cells, gain and AoA, in physical units."""
    phys = codec.decode(truth)
    return [spb.Measurement(position=spb.Position(cell=spb.CellPosition(row=r + 0.5, col=c + 0.5)),
                            gain_db=float(phys.gain_db[r, c]), aoa_sine=float(phys.aoa_sine[r, c]), gain_noise_db=noise_db)
            for r, c in cells]


def _route(truth, n, seed):
    """n outdoor cells along a random walk (a drive test)."""
    rng = np.random.default_rng(seed)
    outdoor = ~codec.building_mask(truth)
    cells, (r, c) = [], np.argwhere(outdoor)[rng.integers(outdoor.sum())]
    while len(cells) < n:
        dr, dc = [(0, 1), (1, 0), (0, -1), (-1, 0)][rng.integers(4)]
        if 0 <= r + dr < truth.shape[-2] and 0 <= c + dc < truth.shape[-1] and outdoor[r + dr, c + dc]:
            r, c = r + dr, c + dc
            cells.append((int(r), int(c)))
    return cells


def _wait_map(stub, site_id, count, timeout=60.0):
    """As an outside client waits: GetSite until the newest map holds `count` measurements."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = stub.GetSite(spb.GetSiteRequest(site_id=site_id)).site
        if info.map_version and info.map_measurement_count >= count:
            return info
        time.sleep(0.05)
    raise AssertionError(f"no map of {count} measurements within {timeout} s")


def _array(t):
    return np.frombuffer(t.data, np.float32).reshape(tuple(t.shape))


def test_a_site_life_cycle_from_the_proto_alone(stub, tiny_prior):
    *_, evl = tiny_prior
    truth = evl[0]
    building = codec.building_mask(truth)
    made = stub.CreateSite(spb.CreateSiteRequest(definition=_definition("life", building)))
    assert made.created and made.site.definition.model_name == "tiny" and made.site.definition.model_version == "1.0.0"
    assert made.site.definition.default_gain_noise_db == 2.0 and made.site.definition.policy.rebuild_after_measurements == 8
    again = stub.CreateSite(spb.CreateSiteRequest(definition=_definition("life", building)))
    assert not again.created and again.site.definition == made.site.definition
    with pytest.raises(grpc.RpcError) as e:
        stub.GetMap(spb.GetMapRequest(site_id="life"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no map yet" in e.value.details()

    watch = stub.WatchMap(spb.WatchMapRequest(site_id="life", output_units=pb.OUTPUT_UNITS_PHYSICAL), timeout=60)
    route = _route(truth, 60, 1)
    first = stub.AddMeasurements(spb.AddMeasurementsRequest(site_id="life", measurements=_measurements(truth, route[:30]),
                                                            batch_id="drive-1"))
    assert (first.accepted, first.measurement_count, first.duplicate) == (30, 30, False)
    retry = stub.AddMeasurements(spb.AddMeasurementsRequest(site_id="life", measurements=_measurements(truth, route[:30]),
                                                            batch_id="drive-1"))
    assert (retry.accepted, retry.measurement_count, retry.duplicate) == (0, 30, True)
    v1 = next(iter(watch)).map
    assert v1.version == 1 and v1.measurement_count == 30 and not v1.incremental and v1.calibrated is False
    gain = _array(v1.map)[0]
    assert np.isnan(gain[building]).all() and np.isfinite(gain[~building]).all()
    r, c = route[0]  # a measured cell holds its reading (within the noise)
    assert abs(gain[r, c] - codec.decode(truth).gain_db[r, c]) < 5.0

    # world positions: the same cells through the site's geometry
    g = Geometry(10.0, 20.0, 4.0, 15.0)
    world = []
    for m in _measurements(truth, route[30:]):
        x, y = g.to_world(m.position.cell.row, m.position.cell.col)
        m.position.world.CopyFrom(spb.WorldPosition(x_m=float(x), y_m=float(y)))
        world.append(m)
    stub.AddMeasurements(spb.AddMeasurementsRequest(site_id="life", measurements=world))
    v2 = next(iter(watch)).map
    assert v2.version == 2 and v2.measurement_count == 60 and v2.incremental
    assert 0 < v2.network_evaluations <= v1.network_evaluations / 2  # warm-started: at most half a fresh build
    got = stub.GetMap(spb.GetMapRequest(site_id="life", output_units=pb.OUTPUT_UNITS_PIXELS))
    assert got.map.version == 2 and got.site_measurement_count == 60
    assert stub.GetMap(spb.GetMapRequest(site_id="life", version=1)).map.version == 1

    # QueryPoints: a cell centre gives the cell's value; between centres, the bilinear blend
    mean = _array(got.map.map)
    outdoor = np.argwhere(~building)
    pr, pc = outdoor[len(outdoor) // 2]
    q = stub.QueryPoints(spb.QueryPointsRequest(site_id="life", positions=[
        spb.Position(cell=spb.CellPosition(row=pr + 0.5, col=pc + 0.5)),
        spb.Position(cell=spb.CellPosition(row=float(np.argwhere(building)[0][0]) + 0.5,
                                           col=float(np.argwhere(building)[0][1]) + 0.5))]))
    assert q.map_version == 2 and len(q.values) == 2
    assert q.values[0].gain_db == pytest.approx(mean[0, pr, pc] * codec.GAIN_DB_SPAN + codec.GAIN_DB_MIN, abs=1e-3)
    assert q.values[1].building and np.isnan(q.values[1].gain_db)

    listed = stub.ListSites(spb.ListSitesRequest(page_size=1000))
    assert "life" in [s.definition.site_id for s in listed.sites]
    gone = stub.DeleteSite(spb.DeleteSiteRequest(site_id="life"))
    assert (gone.measurements_deleted, gone.maps_deleted) == (60, 2)
    with pytest.raises(grpc.RpcError) as e:
        next(iter(watch))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.GetSite(spb.GetSiteRequest(site_id="life"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_sites_list_in_pages(stub):
    for i in range(5):
        stub.CreateSite(spb.CreateSiteRequest(definition=_definition(f"page-{i}")))
    seen, token = [], ""
    while True:
        page = stub.ListSites(spb.ListSitesRequest(page_size=2, page_token=token))
        seen += [s.definition.site_id for s in page.sites if s.definition.site_id.startswith("page-")]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"page-{i}" for i in range(5)]


def _bad(stub, method, request):
    with pytest.raises(grpc.RpcError) as e:
        out = getattr(stub, method)(request)
        if method == "WatchMap":  # a stream: its status comes with the first read
            next(iter(out))
    return e.value


def _cell(r, c):
    return spb.Position(cell=spb.CellPosition(row=r, col=c))


@pytest.mark.parametrize("definition, code, field", [
    (spb.SiteDefinition(site_id="-bad"), "INVALID_ARGUMENT", "definition.site_id"),
    (spb.SiteDefinition(site_id="x" * 65), "INVALID_ARGUMENT", "definition.site_id"),
    (spb.SiteDefinition(site_id="m", model_name="nope"), "NOT_FOUND", "definition.model_name"),
    (spb.SiteDefinition(site_id="m", model_name="tiny", model_version="9.9.9"), "NOT_FOUND", "definition.model_name"),
    (spb.SiteDefinition(site_id="m", adapter_name="nope"), "NOT_FOUND", "definition.adapter_name"),
    (spb.SiteDefinition(site_id="m", adapter_version="1.0.0"), "INVALID_ARGUMENT", "definition.adapter_version"),
    (spb.SiteDefinition(site_id="m", site=pb.Site(building=api.from_numpy(np.zeros((16, 16), np.uint8)))),
     "INVALID_ARGUMENT", "definition.site.building"),
    (spb.SiteDefinition(site_id="m", geometry=spb.TileGeometry(cell_size_m=0)), "INVALID_ARGUMENT", "definition.geometry.cell_size_m"),
    (spb.SiteDefinition(site_id="m", geometry=spb.TileGeometry(cell_size_m=1, orientation_deg=float("nan"))),
     "INVALID_ARGUMENT", "definition.geometry"),
    (spb.SiteDefinition(site_id="m", geometry=spb.TileGeometry(cell_size_m=1, orientation_deg=400)),
     "INVALID_ARGUMENT", "definition.geometry.orientation_deg"),
    (spb.SiteDefinition(site_id="m", default_gain_noise_db=-1), "INVALID_ARGUMENT", "definition.default_gain_noise_db"),
    (spb.SiteDefinition(site_id="m", default_aoa_noise=float("inf")), "INVALID_ARGUMENT", "definition.default_aoa_noise"),
    (spb.SiteDefinition(site_id="m", policy=spb.SitePolicy(rebuild_after_measurements=-1)),
     "INVALID_ARGUMENT", "definition.policy.rebuild_after_measurements"),
    (spb.SiteDefinition(site_id="m", policy=spb.SitePolicy(rebuild_after_seconds=float("nan"))),
     "INVALID_ARGUMENT", "definition.policy.rebuild_after_seconds"),
])
def test_a_bad_site_definition_is_refused_naming_the_field(stub, definition, code, field):
    e = _bad(stub, "CreateSite", spb.CreateSiteRequest(definition=definition))
    assert e.code() == getattr(grpc.StatusCode, code) and field in e.details(), e.details()


def test_a_taken_site_id_is_already_exists(stub):
    stub.CreateSite(spb.CreateSiteRequest(definition=_definition("taken")))
    other = _definition("taken")
    other.default_gain_noise_db = 5.0
    e = _bad(stub, "CreateSite", spb.CreateSiteRequest(definition=other))
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and "taken" in e.details()
    assert _bad(stub, "CreateSite", spb.CreateSiteRequest()).code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def bad_site(edge, tiny_prior):
    *_, evl = tiny_prior
    building = codec.building_mask(evl[0])
    with grpc.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
        s = sgrpc.SiteServiceStub(channel)
        s.CreateSite(spb.CreateSiteRequest(definition=_definition("bad-input", building)))
        plain = spb.SiteDefinition(site_id="no-geometry")
        s.CreateSite(spb.CreateSiteRequest(definition=plain))
    return building


def _one(**kw):
    return spb.Measurement(**{"position": _cell(1.5, 1.5), "gain_db": -100.0, **kw})


@pytest.mark.parametrize("site_id, measurements, batch_id, code, field", [
    ("unknown", [_one()], "", "NOT_FOUND", "site_id"),
    ("bad id", [_one()], "", "INVALID_ARGUMENT", "site_id"),
    ("bad-input", [], "", "INVALID_ARGUMENT", "measurements"),
    ("bad-input", [_one()] * 10001, "", "INVALID_ARGUMENT", "limit of 10000"),
    ("bad-input", [_one()], "has space", "INVALID_ARGUMENT", "batch_id"),
    ("bad-input", [spb.Measurement(gain_db=-100.0)], "", "INVALID_ARGUMENT", "measurements[0].position"),
    ("bad-input", [_one(), _one(position=_cell(40.0, 1.0))], "", "INVALID_ARGUMENT", "measurements[1].position"),
    ("bad-input", [_one(position=_cell(float("nan"), 1.0))], "", "INVALID_ARGUMENT", "measurements[0].position.cell"),
    ("bad-input", [_one(position=spb.Position(world=spb.WorldPosition(x_m=1e9, y_m=0)))], "", "INVALID_ARGUMENT",
     "measurements[0].position"),
    ("no-geometry", [_one(position=spb.Position(world=spb.WorldPosition(x_m=1, y_m=1)))], "", "INVALID_ARGUMENT",
     "measurements[0].position.world"),
    ("bad-input", [spb.Measurement(position=_cell(1.5, 1.5))], "", "INVALID_ARGUMENT", "gain_db, aoa_sine or both"),
    ("bad-input", [_one(gain_db=float("nan"))], "", "INVALID_ARGUMENT", "measurements[0].gain_db"),
    ("bad-input", [_one(gain_db=-10.0)], "", "INVALID_ARGUMENT", "measurements[0].gain_db"),
    ("bad-input", [_one(aoa_sine=1.5)], "", "INVALID_ARGUMENT", "measurements[0].aoa_sine"),
    ("bad-input", [_one(gain_noise_db=-1.0)], "", "INVALID_ARGUMENT", "measurements[0].gain_noise_db"),
    ("bad-input", [_one(aoa_sine=0.1, aoa_noise=5.0)], "", "INVALID_ARGUMENT", "measurements[0].aoa_noise"),
    ("bad-input", [_one(timestamp_unix_ms=-5)], "", "INVALID_ARGUMENT", "measurements[0].timestamp_unix_ms"),
])
def test_bad_measurements_are_refused_naming_the_field_and_nothing_is_stored(stub, bad_site, site_id, measurements,
                                                                             batch_id, code, field):
    before = stub.GetSite(spb.GetSiteRequest(site_id="bad-input")).site.measurement_count
    e = _bad(stub, "AddMeasurements", spb.AddMeasurementsRequest(site_id=site_id, measurements=measurements,
                                                                 batch_id=batch_id))
    assert e.code() == getattr(grpc.StatusCode, code) and field in e.details(), e.details()
    assert stub.GetSite(spb.GetSiteRequest(site_id="bad-input")).site.measurement_count == before


def test_a_measurement_in_a_building_cell_is_refused(stub, bad_site):
    r, c = np.argwhere(bad_site)[0]
    e = _bad(stub, "AddMeasurements", spb.AddMeasurementsRequest(
        site_id="bad-input", measurements=[_one(position=_cell(r + 0.5, c + 0.5))]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "building" in e.details()


@pytest.mark.parametrize("method, request_, code, field", [
    ("GetMap", spb.GetMapRequest(site_id="bad-input", version=-1), "INVALID_ARGUMENT", "version"),
    ("GetMap", spb.GetMapRequest(site_id="bad-input", output_units=7), "INVALID_ARGUMENT", "output_units"),
    ("GetMap", spb.GetMapRequest(site_id="unknown"), "NOT_FOUND", "site_id"),
    ("QueryPoints", spb.QueryPointsRequest(site_id="bad-input"), "INVALID_ARGUMENT", "positions"),
    ("QueryPoints", spb.QueryPointsRequest(site_id="bad-input", positions=[_cell(1, 1)] * 4097), "INVALID_ARGUMENT",
     "positions"),
    ("ListSites", spb.ListSitesRequest(page_size=5000), "INVALID_ARGUMENT", "page_size"),
    ("ListSites", spb.ListSitesRequest(page_token="?!"), "INVALID_ARGUMENT", "page_token"),
    ("DeleteSite", spb.DeleteSiteRequest(site_id="unknown"), "NOT_FOUND", "site_id"),
    ("GetSite", spb.GetSiteRequest(site_id=""), "INVALID_ARGUMENT", "site_id"),
])
def test_bad_reads_are_refused_naming_the_field(stub, bad_site, method, request_, code, field):
    e = _bad(stub, method, request_)
    assert e.code() == getattr(grpc.StatusCode, code) and field in e.details(), e.details()


def test_queries_of_a_site_without_a_map_and_of_positions_outside_the_tile(stub, edge, tiny_prior):
    *_, evl = tiny_prior
    stub.CreateSite(spb.CreateSiteRequest(definition=_definition("query")))
    e = _bad(stub, "QueryPoints", spb.QueryPointsRequest(site_id="query", positions=[_cell(1, 1)]))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.AddMeasurements(spb.AddMeasurementsRequest(site_id="query", measurements=_measurements(evl[1], _route(evl[1], 10, 2))))
    _wait_map(stub, "query", 10)
    e = _bad(stub, "QueryPoints", spb.QueryPointsRequest(site_id="query", positions=[_cell(1, 1), _cell(-0.1, 3)]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "positions[1]" in e.details()
    e = _bad(stub, "WatchMap", spb.WatchMapRequest(site_id="query", after_version=-1))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "after_version" in e.details()


# -- durability and shared stores -----------------------------------------------------------------
def _serve(repo, store, port_file, *extra, stdout=subprocess.DEVNULL):
    return subprocess.Popen([str(BIN / "ckm-edge"), "serve", "--repository", str(repo), "--port", "0", "--port-file",
                             str(port_file), "--poll-seconds", "0", "--threads", "1", "--store", store,
                             "--rebuild-after-measurements", "8", "--rebuild-after-seconds", "0.3", *extra],
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


def _port(proc, port_file, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text():
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("the server did not start")


def _kill9_resumes(repo, store, tmp_path, truth):
    """Stream batches, SIGKILL the server mid-stream, restart it on the same store: every
    acknowledged batch is there (a retry of each is a duplicate) and the versions go on."""
    port_file = tmp_path / "port"
    proc = _serve(repo, store, port_file)
    acked = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{_port(proc, port_file)}") as ch:
            s = sgrpc.SiteServiceStub(ch)
            s.CreateSite(spb.CreateSiteRequest(definition=_definition("durable")))
            route = _route(truth, 400, 3)
            for k in range(40):
                if k == 12:
                    _wait_map(s, "durable", 8 * 12)  # a map exists before the kill
                batch = _measurements(truth, route[10 * k: 10 * k + 10])
                r = s.AddMeasurements(spb.AddMeasurementsRequest(site_id="durable", measurements=batch, batch_id=f"b{k}"))
                acked.append((f"b{k}", batch, r.measurement_count))
                if k == 20:
                    proc.send_signal(signal.SIGKILL)  # mid-stream, while rebuilds run
                    break
    finally:
        proc.kill()
        proc.wait()
    port_file.unlink()
    proc = _serve(repo, store, port_file)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{_port(proc, port_file)}") as ch:
            s = sgrpc.SiteServiceStub(ch)
            info = s.GetSite(spb.GetSiteRequest(site_id="durable")).site
            assert info.measurement_count == acked[-1][2] == 10 * len(acked)
            for batch_id, batch, _ in acked:  # nothing acknowledged was lost, nothing is stored twice
                r = s.AddMeasurements(spb.AddMeasurementsRequest(site_id="durable", measurements=batch, batch_id=batch_id))
                assert r.duplicate and r.measurement_count == info.measurement_count
            before = info.map_version
            assert before >= 1
            s.AddMeasurements(spb.AddMeasurementsRequest(site_id="durable", measurements=_measurements(truth, _route(truth, 10, 9))))
            after = _wait_map(s, "durable", info.measurement_count + 10)
            assert after.map_version > before  # the versions resume from the stored ones
            got = s.GetMap(spb.GetMapRequest(site_id="durable"))
            assert got.map.version == after.map_version and got.map.measurement_count == info.measurement_count + 10
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_a_server_killed_mid_stream_loses_no_acknowledged_measurement_sqlite(repo, tmp_path, tiny_prior):
    *_, evl = tiny_prior
    _kill9_resumes(repo, f"sqlite:{tmp_path}/sites.db", tmp_path, evl[2])


@pytest.mark.slow  # two server processes, a cluster: ~1 min (`make test-slow`)
def test_a_server_killed_mid_stream_loses_no_acknowledged_measurement_postgresql(repo, tmp_path, tiny_prior, postgres_url):
    *_, evl = tiny_prior
    pytest.importorskip("psycopg")
    _kill9_resumes(repo, postgres_url, tmp_path, evl[2])


@pytest.mark.slow  # two server processes on one cluster (`make test-slow`)
def test_two_servers_on_one_postgresql_store_share_sites(repo, tmp_path, tiny_prior, postgres_url):
    *_, evl = tiny_prior
    procs, ports = [], []
    try:
        for i in range(2):
            port_file = tmp_path / f"port{i}"
            procs.append(_serve(repo, postgres_url, port_file))
            ports.append(_port(procs[-1], port_file))
        with grpc.insecure_channel(f"127.0.0.1:{ports[0]}") as a, grpc.insecure_channel(f"127.0.0.1:{ports[1]}") as b:
            sa, sb = sgrpc.SiteServiceStub(a), sgrpc.SiteServiceStub(b)
            sa.CreateSite(spb.CreateSiteRequest(definition=_definition("shared")))
            assert sb.GetSite(spb.GetSiteRequest(site_id="shared")).site.definition.site_id == "shared"
            route = _route(evl[3], 40, 4)
            sa.AddMeasurements(spb.AddMeasurementsRequest(site_id="shared", measurements=_measurements(evl[3], route[:20])))
            sb.AddMeasurements(spb.AddMeasurementsRequest(site_id="shared", measurements=_measurements(evl[3], route[20:])))
            for s in (sa, sb):
                assert s.GetSite(spb.GetSiteRequest(site_id="shared")).site.measurement_count == 40
            info = _wait_map(sb, "shared", 40)
            q = sa.QueryPoints(spb.QueryPointsRequest(site_id="shared", positions=[_cell(route[0][0] + 0.5, route[0][1] + 0.5)]))
            assert q.map_version >= 1
            versions = sa.GetMap(spb.GetMapRequest(site_id="shared")).map.version
            assert versions == info.map_version or versions > info.map_version
            sb.DeleteSite(spb.DeleteSiteRequest(site_id="shared"))
            assert _bad(sa, "GetSite", spb.GetSiteRequest(site_id="shared")).code() == grpc.StatusCode.NOT_FOUND
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(30)


def test_site_limits_are_resource_exhausted(repo, tmp_path, tiny_prior):
    from ckm_edge.runtime.sites import SiteLimits

    *_, evl = tiny_prior
    limits = SiteLimits(max_sites=2, max_measurements_per_site=20, add_rate_per_site=1.0, max_watchers=1)
    server = create_server(ServerConfig(repository=repo, port=0, poll_seconds=0, engine_threads=1,
                                        store=f"sqlite:{tmp_path}/s.db", site_limits=limits, rebuild=FAST)).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            s = sgrpc.SiteServiceStub(ch)
            for i in range(2):
                s.CreateSite(spb.CreateSiteRequest(definition=_definition(f"l{i}")))
            e = _bad(s, "CreateSite", spb.CreateSiteRequest(definition=_definition("l2")))
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 sites" in e.details()
            route = _route(evl[0], 30, 5)
            s.AddMeasurements(spb.AddMeasurementsRequest(site_id="l0", measurements=_measurements(evl[0], route[:15])))
            e = _bad(s, "AddMeasurements", spb.AddMeasurementsRequest(site_id="l0", measurements=_measurements(evl[0], route[15:])))
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 20" in e.details()
            s.AddMeasurements(spb.AddMeasurementsRequest(site_id="l1", measurements=_measurements(evl[0], route[:1])))
            s.AddMeasurements(spb.AddMeasurementsRequest(site_id="l1", measurements=_measurements(evl[0], route[1:2])))
            e = _bad(s, "AddMeasurements", spb.AddMeasurementsRequest(site_id="l1", measurements=_measurements(evl[0], route[2:3])))
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "per second" in e.details()
            _wait_map(s, "l0", 15)
            first = s.WatchMap(spb.WatchMapRequest(site_id="l0"), timeout=30)
            assert next(iter(first)).map.version >= 1  # one stream open: the server's limit
            e = _bad(s, "WatchMap", spb.WatchMapRequest(site_id="l0"))
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "WatchMap" in e.details()
            first.cancel()
    finally:
        server.stop(0)


def test_open_watches_leave_threads_for_other_calls(repo, tmp_path):
    """A WatchMap stream holds its handler thread while it waits: the server keeps a thread for each
    stream it allows beside those for short calls, so the allowed streams never starve a GetSite."""
    from ckm_edge.runtime.sites import SiteLimits

    server = create_server(ServerConfig(repository=repo, port=0, poll_seconds=0, engine_threads=1, rpc_threads=1,
                                        max_queue=1, store=f"sqlite:{tmp_path}/s.db",
                                        site_limits=SiteLimits(max_watchers=4), rebuild=FAST)).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            s = sgrpc.SiteServiceStub(ch)
            s.CreateSite(spb.CreateSiteRequest(definition=_definition("w")))
            streams = [s.WatchMap(spb.WatchMapRequest(site_id="w"), timeout=60) for _ in range(4)]  # no map yet: they wait
            deadline = time.monotonic() + 30
            while server.sites._watchers < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.sites._watchers == 4
            assert s.GetSite(spb.GetSiteRequest(site_id="w"), timeout=10).site.definition.site_id == "w"
            e = _bad(s, "WatchMap", spb.WatchMapRequest(site_id="w"))
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for st in streams:
                st.cancel()
    finally:
        server.stop(0)


def test_the_site_command_line_drives_a_site(edge, tiny_prior, tmp_path):
    *_, evl = tiny_prior
    truth = evl[4]
    building = codec.building_mask(truth)
    np.savez(tmp_path / "site.npz", building=building.astype(np.uint8), base_station=np.array([16.5, 3.5, 25.0]))
    phys = codec.decode(truth)
    g = Geometry(0.0, 0.0, 2.0, 0.0)
    rows = ["x_m,y_m,gain_db,aoa_sine"]
    for r, c in _route(truth, 12, 6):
        x, y = g.to_world(r + 0.5, c + 0.5)
        rows.append(f"{x},{y},{phys.gain_db[r, c]},{phys.aoa_sine[r, c]}")
    (tmp_path / "drive.csv").write_text("\n".join(rows) + "\n")
    server = ["--server", f"127.0.0.1:{edge.port}"]

    def site(*args, ok=True):
        p = subprocess.run([str(BIN / "ckm-edge"), "site", *server, *args], capture_output=True, text=True, timeout=120)
        assert (p.returncode == 0) == ok, p.stderr
        return p

    assert '"created": true' in site("create", "cli", "--site-file", str(tmp_path / "site.npz"), "--geometry", "0", "0", "2",
                                     "0").stdout
    assert '"accepted": "12"' in site("add", "cli", "--csv", str(tmp_path / "drive.csv"), "--batch-id", "d1").stdout
    watched = site("watch", "cli", "--count", "1", "--timeout", "60").stdout
    assert "version 1: 12 measurements, fresh" in watched
    site("get", "cli", "--out", str(tmp_path / "cli.npz"))
    with np.load(tmp_path / "cli.npz") as z:
        assert z["map"].shape == (2, 32, 32) and int(z["version"]) == 1 and np.isnan(z["map"][0][building]).all()
    outdoor = np.argwhere(~building)[0]
    out = site("query", "cli", "--points", str(outdoor[0] + 0.5), str(outdoor[1] + 0.5)).stdout
    assert "map version 1" in out and "gain_db" in out
    bad = site("add", "cli", "--csv", str(tmp_path / "site.npz"), ok=False)
    assert bad.returncode != 0
    missing = site("get", "nope", ok=False)
    assert "NOT_FOUND" in missing.stderr
    assert '"measurements_deleted": "12"' in site("delete", "cli").stdout


def test_one_point_lookups_equal_the_array_path():
    from ckm_edge.runtime.sites import FIELDS, _Cached, interpolate, interpolate_point

    rng = np.random.default_rng(3)
    mean = rng.uniform(0.3, 1.0, (2, 12, 10)).astype(np.float32)
    building = rng.random((12, 10)) < 0.25
    mean[:, building] = 0.0
    std = rng.uniform(0.0, 0.05, (2, 12, 10)).astype(np.float32)
    rows, cols = rng.uniform(0, 12, 300), rng.uniform(0, 10, 300)
    rows[:4], cols[:4] = [0.0, 11.999, 0.2, 6.0], [0.0, 9.999, 9.7, 0.0]  # corners and edges
    for calibrated in (False, True):
        c = _Cached(1, mean, std, building, calibrated, 0.9, 0.0)
        many = interpolate(c, rows, cols)
        z = 1.6448536269514722
        for i in range(len(rows)):
            b, values = interpolate_point(c, rows[i], cols[i], z)
            assert b == bool(many["building"][i])
            np.testing.assert_allclose(values, [many[k][i] for k in FIELDS], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_a_warm_start_moves_the_previous_map_the_whole_way_to_a_far_off_reading():
    """The correction added to the previous map is the smoothest field through the residuals, none
    clipped: a reading 0.8 (160 dB) above a map of no paths lifts the map to it, as a fresh fill would."""
    from ckm_edge.runtime import operators
    from ckm_edge.runtime.observations import Observation, Observations

    mask = np.zeros((16, 16), bool)
    mask[4, 4] = True
    y = np.zeros((1, 2, 16, 16), np.float32)
    y[0, :, 4, 4] = 0.9
    previous = np.full((2, 16, 16), 0.1, np.float32)
    obs = Observations((2, 16, 16), 1, [(slice(0, 1), Observation(operators.Mask(mask), y, 0.0, None, previous))])
    x = obs.initial_estimate()[0]
    assert x[0, 4, 4] == pytest.approx(0.9, abs=1e-4) and np.allclose(x, 0.9, atol=1e-3)
