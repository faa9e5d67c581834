"""Living maps measured (`ckm-bench sites`): drive tests streamed into a real edge server's SiteService.

The server is `ckm-edge serve --store sqlite:...` in its own process, driven over gRPC with the
generated stub, as a base station would. Per held-out tile:

- a site is created with what its base station knows (building layout, base station, building
  heights where recorded: the site setting), the tile's geometry 1 m per cell;
- a drive test: a route along the tile's streets (a random walk over outdoor cells that keeps its
  heading, turning at walls), read every cell with gain noise `gain_noise_db` and AoA noise
  `aoa_noise`, sent in batches of `batch` measurements — the site's rebuild policy is one map per
  batch, so every batch gives one version;
- after each version: its gain / AoA-sine RMSE over the outdoor cells no measurement has reached,
  the share of them inside its 90 % interval, and its network evaluations and build time; then
  a fresh construction from the same measurements (the same fused observation, the model's default
  construction, run in this process with the server idle: `SiteManager.plan` without a previous
  map) and the same metrics for it.

Then QueryPoints under load, on a server started for it on the same store with each of
`query_workers` (`ckm-edge serve --workers`): 1-16 clients, each its own connection and a closed
loop of one-point queries for `query_seconds`, `query_repeats` times (each run opens new
connections, which the kernel splits between the workers anew, unevenly): per-call latency p50 /
p99 and the throughput, all clients together, of the run with the median p99, and the range of
the p99s. The load comes from h2load (nghttp2's HTTP/2 benchmarking tool, C, one thread:
`apt-get install nghttp2-client`) sending one QueryPoints request, framed as gRPC, over and over —
a lookup costs the same wherever it falls; every call is checked OK in the server's own metrics
(h2load sees HTTP, not gRPC status). Without h2load, Python client processes (generated stub,
random outdoor positions of every site) load the server instead; they take a core's worth of CPU
from the 2 the server has, so their latencies are the clients' as much as the server's. Finally
the store's bytes per site.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.runtime import codec, tasks


@dataclass(frozen=True)
class SitesConfig:
    batch: int = 64  # measurements per AddMeasurements = per map version
    batches: int = 8  # per tile
    gain_noise_db: float = 2.0
    aoa_noise: float = 0.02
    seed: int = 7
    query_clients: tuple[int, ...] = (1, 2, 4, 8, 16)
    query_seconds: float = 5.0
    query_workers: tuple[int, ...] = (1, 2)  # `ckm-edge serve --workers` of the servers the lookups load
    load_generator: str = "auto"  # h2load (nghttp2's HTTP/2 load tool) where installed, else python
    query_repeats: int = 3  # runs per (workers, clients): the table gives the median run's p99 and their range
    threads: int = 0  # the server's engine threads (0: one per CPU it may use)
    fresh_draws: int = 2  # fresh constructions per version, each with its own seed (their spread: the sampler's randomness)

    def __post_init__(self):
        if self.batch < 1 or self.batches < 1 or self.fresh_draws < 1 or self.query_repeats < 1:
            raise ValueError("batch, batches, fresh_draws and query_repeats must be >= 1")


def _start_server(repository: Path, store: str, workdir: Path, threads: int, batch: int, workers: int = 1,
                  metrics: bool = False):
    """(the server process, its port, its metrics port or None)."""
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)  # a previous run's
    cmd = [sys.executable, "-m", "ckm_edge.runtime.cli", "serve", "--repository", str(repository), "--port", "0",
           "--port-file", str(port_file), "--poll-seconds", "0", "--store", store, "--rebuild-after-measurements",
           str(batch), "--rebuild-after-seconds", "3600", "--workers", str(workers)]
    cmd += (["--threads", str(threads)] if threads else []) + (["--metrics-port", "0"] if metrics else [])
    out = workdir / "server.out"  # its "serving ..." line names the metrics port it took
    proc = subprocess.Popen(cmd, stdout=open(out, "w"), stderr=open(workdir / "server.log", "a"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text():
            found = re.search(r"metrics on http://[^:]+:(\d+)/metrics", out.read_text())
            return proc, int(port_file.read_text()), int(found.group(1)) if found else None
        if proc.poll() is not None:
            raise RuntimeError(f"the edge server exited: {(workdir / 'server.log').read_text()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the edge server did not start within 180 s")


def drive_readings(cells, phys, rng: np.random.Generator, gain_noise_db: float, aoa_noise: float) -> list:
    """A drive test's readings of `cells` ((row, col) in route order) on a tile (`phys`: codec.decode
    of it): SiteService Measurements at the cell centres, gain and AoA sine with Gaussian noise
    (drawn per reading, gain then AoA), clipped to the codec's ranges."""
    from ckm_edge.protos.ckm.edge.v1 import site_pb2 as spb

    return [spb.Measurement(position=spb.Position(cell=spb.CellPosition(row=r + 0.5, col=c + 0.5)),
                            gain_db=float(np.clip(phys.gain_db[r, c] + gain_noise_db * rng.standard_normal(), -250, -50)),
                            aoa_sine=float(np.clip(phys.aoa_sine[r, c] + aoa_noise * rng.standard_normal(), -1, 1)))
            for r, c in cells]


def _metrics(mean_px: np.ndarray, std_px: np.ndarray, calibrated: bool, coverage: float, truth: np.ndarray,
             where: np.ndarray) -> dict:
    from ckm_edge.runtime import uncertainty

    out = {"gain_db": _gain_rmse(mean_px, truth, where),
           "aoa_sine": float(codec.aoa_sine_rmse(np.clip(mean_px, 0.0, 1.0)[None], truth[None], where=where)[0])}
    if calibrated:
        held = uncertainty.covered(mean_px, std_px, truth, np.stack([where, where]), uncertainty.z_of(coverage))
        out["gain_cover"], out["aoa_cover"] = held
    return out


def _gain_rmse(mean_px: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    return float(codec.gain_rmse_db(np.clip(mean_px, 0.0, 1.0)[None], truth[None], where=where)[0])


def run(repository: str | Path, held, cfg: SitesConfig, progress=print, workdir: str | Path | None = None) -> dict:
    """{"tiles": [per tile: {"versions": [...]}], "query": [...], "store": {...}, "summary": {...}}."""
    import grpc

    from ckm_edge.protos.ckm.edge.v1 import site_pb2 as spb
    from ckm_edge.protos.ckm.edge.v1 import site_pb2_grpc as sgrpc
    from ckm_edge.runtime import api, executor
    from ckm_edge.runtime.api import pb
    from ckm_edge.runtime.batcher import Batcher
    from ckm_edge.runtime.repository import ModelRepository
    from ckm_edge.runtime.sites import SiteManager
    from ckm_edge.runtime.sitestore import open_store

    work = Path(workdir or tempfile.mkdtemp(prefix="ckm-bench-sites-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "sites.db"
    db.unlink(missing_ok=True)
    store_url = f"sqlite:{db}"
    proc, port, _ = _start_server(Path(repository), store_url, work, cfg.threads, cfg.batch)
    local = ModelRepository(Path(repository))
    fresh_mgr = SiteManager(open_store(store_url), local, Batcher(), row_bytes=False)  # fresh builds, this process
    rng = np.random.default_rng(cfg.seed)
    tiles_out, t0 = [], time.perf_counter()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = sgrpc.SiteServiceStub(channel)
            for i, truth in enumerate(held.tiles):
                site_id = f"tile-{i}"
                layout = codec.building_mask(truth)
                site = held.site(i, layout)
                d = spb.SiteDefinition(site_id=site_id, default_gain_noise_db=cfg.gain_noise_db, default_aoa_noise=cfg.aoa_noise,
                                       geometry=spb.TileGeometry(cell_size_m=1.0))
                d.site.CopyFrom(api.site_to_proto(site))
                stub.CreateSite(spb.CreateSiteRequest(definition=d))
                cells = tasks.drive_route(rng, ~layout, cfg.batch * cfg.batches)
                phys = codec.decode(truth)
                measured = np.zeros(layout.shape, bool)
                undriven = ~layout  # the outdoor cells the whole drive never reaches: the same cells at every version
                undriven[tuple(np.array(cells).T)] = False
                versions = []
                for k in range(cfg.batches):
                    part = cells[k * cfg.batch:(k + 1) * cfg.batch]
                    ms = drive_readings(part, phys, rng, cfg.gain_noise_db, cfg.aoa_noise)
                    measured[tuple(np.array(part).T)] = True
                    count = stub.AddMeasurements(spb.AddMeasurementsRequest(site_id=site_id, measurements=ms,
                                                                            batch_id=f"{site_id}-{k}")).measurement_count
                    m = None
                    for w in stub.WatchMap(spb.WatchMapRequest(site_id=site_id, after_version=k,
                                                               output_units=pb.OUTPUT_UNITS_PIXELS), timeout=600):
                        if w.map.measurement_count >= count:
                            m = w.map
                            break
                    mean = api.to_numpy(m.map, "map", 2**31, finite=False)
                    std = api.to_numpy(m.std, "std", 2**31, finite=False)
                    where = ~layout & ~measured
                    inc = {"version": m.version, "measurements": m.measurement_count, "incremental": m.incremental,
                           "evaluations": m.network_evaluations, "seconds": m.build_seconds,
                           **_metrics(mean, std, m.calibrated, m.interval_coverage, truth, where),
                           "gain_db_undriven": _gain_rmse(mean, truth, undriven)}
                    row = fresh_mgr.get(site_id)
                    job, _, _, evals = fresh_mgr.plan(row, None)
                    draws = []
                    for draw in range(cfg.fresh_draws):
                        seed = job.config.seed + 1_000_003 * draw
                        tf = time.perf_counter()
                        [res] = executor.execute([dataclasses.replace(job, config=dataclasses.replace(job.config, seed=seed))])
                        fresh_s = time.perf_counter() - tf
                        fs = res.std if res.std is not None else np.zeros_like(res.mean)
                        draws.append({"evaluations": evals, "seconds": fresh_s, "seed": seed,
                                      **_metrics(res.mean, fs, res.calibrated, res.coverage, truth, where),
                                      "gain_db_undriven": _gain_rmse(res.mean, truth, undriven)})
                    fresh = {**draws[0], "draws": draws}
                    versions.append({"map": inc, "fresh": fresh})
                    progress(f"tile {i + 1}/{len(held.tiles)} v{m.version}: {m.measurement_count} measurements, "
                             f"{'incremental' if m.incremental else 'fresh'} {inc['gain_db']:.2f} dB ({inc['evaluations']} "
                             f"evals, {inc['seconds']:.2f} s) vs fresh {fresh['gain_db']:.2f} dB ({evals} evals, "
                             f"{fresh_s:.2f} s) [{time.perf_counter() - t0:.0f} s]")
                tiles_out.append({"versions": versions, "outdoor": int((~layout).sum()),
                                  "measured_cells": int(measured.sum()), "undriven_cells": int(undriven.sum())})
        _stop_server(proc)
        proc = None
        positions = [np.argwhere(~codec.building_mask(t)) for t in held.tiles]
        generator = _generator(cfg.load_generator)
        query = []
        for w in cfg.query_workers:
            proc, port, metrics_port = _start_server(Path(repository), store_url, work, cfg.threads, cfg.batch, w, True)
            try:
                for n in cfg.query_clients:
                    runs = []
                    for _ in range(cfg.query_repeats):  # new connections each time: the kernel splits them anew
                        if generator == "h2load":
                            runs.append(h2load_load(port, metrics_port, positions[0], n, cfg.query_seconds, work))
                        else:
                            runs.append(query_load(port, len(held.tiles), positions, n, cfg.query_seconds))
                    q = {"workers": w, "generator": generator, **_median_run(runs), "runs": runs}
                    query.append(q)
                    progress(f"QueryPoints, {w} worker(s), {n} client(s) ({generator}, {len(runs)} runs): p50 "
                             f"{q['p50_ms']:.2f} ms, p99 {q['p99_ms']:.2f} ms (runs {q['p99_ms_min']:.2f}-"
                             f"{q['p99_ms_max']:.2f}), {q['per_second']:.0f} calls/s")
            finally:
                _stop_server(proc)
                proc = None
        store = {"sites": len(held.tiles), "file_bytes": sum(p.stat().st_size for p in work.glob("sites.db*")),
                 "per_site_bytes": [fresh_mgr.store.size_bytes(f"tile-{i}") for i in range(len(held.tiles))],
                 "versions_kept": len(fresh_mgr.store.map_versions("tile-0"))}
    finally:
        if proc is not None:
            _stop_server(proc)
        fresh_mgr.store.close()
    return {"tiles": tiles_out, "query": query, "store": store, "summary": summarize(tiles_out, query),
            "seconds": time.perf_counter() - t0}


def _query_client(port: int, sites: int, positions: list, seconds: float, seed: int, go, back) -> None:
    import grpc

    from ckm_edge.protos.ckm.edge.v1 import site_pb2 as spb
    from ckm_edge.protos.ckm.edge.v1 import site_pb2_grpc as sgrpc

    rng = np.random.default_rng(seed)
    lat = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = sgrpc.SiteServiceStub(ch)
        stub.GetSite(spb.GetSiteRequest(site_id="tile-0"))  # connected before the clock starts
        go.get()  # start together
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            i = int(rng.integers(sites))
            r, c = positions[i][rng.integers(len(positions[i]))] + rng.uniform(0, 1, 2)
            req = spb.QueryPointsRequest(site_id=f"tile-{i}", positions=[spb.Position(cell=spb.CellPosition(row=r, col=c))])
            t = time.perf_counter()
            stub.QueryPoints(req)
            lat.append(time.perf_counter() - t)
    back.put(lat)


def _median_run(runs: list[dict]) -> dict:
    """The run whose p99 is the median of the runs' (its p50 and throughput with it), and the p99s' range."""
    mid = sorted(runs, key=lambda q: q["p99_ms"])[len(runs) // 2]
    return {**mid, "p99_ms_min": min(q["p99_ms"] for q in runs), "p99_ms_max": max(q["p99_ms"] for q in runs)}


def _stop_server(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _generator(choice: str) -> str:
    if choice not in ("auto", "h2load", "python"):
        raise ValueError(f"load_generator must be auto, h2load or python, got {choice!r}")
    found = shutil.which("h2load") is not None
    if choice == "h2load" and not found:
        raise ValueError("load_generator h2load: h2load is not installed (apt-get install nghttp2-client)")
    return "h2load" if choice == "h2load" or (choice == "auto" and found) else "python"


def _queries_ok(metrics_port: int) -> tuple[float, float]:
    """The server's QueryPoints calls so far: (OK, any other code), from its Prometheus text."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    ok = other = 0.0
    for m in re.finditer(r'^ckm_requests_total\{(.*)\} (\S+)$', text, re.M):
        if 'method="QueryPoints"' in m.group(1):
            if 'code="OK"' in m.group(1):
                ok += float(m.group(2))
            else:
                other += float(m.group(2))
    return ok, other


def h2load_load(port: int, metrics_port: int, outdoor: np.ndarray, clients: int, seconds: float, work: Path) -> dict:
    """`clients` HTTP/2 connections of h2load, one stream each (a closed loop), sending one-point
    QueryPoints for site tile-0 at an outdoor position for `seconds` (after 1 s of warm-up); the
    latencies from its per-request log; every call checked OK in the server's metrics."""
    import struct

    from ckm_edge.protos.ckm.edge.v1 import site_pb2 as spb

    r, c = outdoor[len(outdoor) // 2] + 0.5
    raw = spb.QueryPointsRequest(site_id="tile-0", positions=[spb.Position(cell=spb.CellPosition(row=r, col=c))]).SerializeToString()
    body, log = work / "query.bin", work / f"h2load-{clients}.log"
    body.write_bytes(b"\0" + struct.pack(">I", len(raw)) + raw)  # gRPC framing: uncompressed, length
    log.unlink(missing_ok=True)
    ok0, bad0 = _queries_ok(metrics_port)
    done = subprocess.run(["h2load", "-c", str(clients), "-m", "1", "-D", f"{seconds:g}", "--warm-up-time", "1",
                           "--log-file", str(log), "-d", str(body), "-H", "content-type: application/grpc", "-H",
                           "te: trailers", f"http://127.0.0.1:{port}/ckm.edge.v1.SiteService/QueryPoints"],
                          capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed: {done.stderr[-1000:] or done.stdout[-1000:]}")
    rows = np.loadtxt(log, ndmin=2)  # start (us), HTTP status, duration (us) per request
    ok1, bad1 = _queries_ok(metrics_port)
    lat = rows[:, 2] / 1e3
    return {"clients": clients, "calls": int(len(lat)), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "per_second": float(len(lat) / seconds),
            "http_not_200": int((rows[:, 1] != 200).sum()), "grpc_ok": int(ok1 - ok0), "grpc_not_ok": int(bad1 - bad0)}


def query_load(port: int, sites: int, positions: list, clients: int, seconds: float) -> dict:
    """`clients` processes, one channel each, closed-loop one-point QueryPoints for `seconds`."""
    ctx = mp.get_context("spawn")
    go, back = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_query_client, args=(port, sites, positions, seconds, 100 + k, go, back))
             for k in range(clients)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # the clients import and connect
    for _ in procs:
        go.put(True)
    lat = np.concatenate([np.asarray(back.get(timeout=seconds + 120)) for _ in procs]) * 1e3
    for p in procs:
        p.join(30)
    return {"clients": clients, "calls": int(len(lat)), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "per_second": float(len(lat) / seconds)}


def summarize(tiles: list, query: list) -> dict:
    by_k = {}
    for t in tiles:
        for k, v in enumerate(t["versions"]):
            by_k.setdefault(k, []).append(v)
    curve = []
    for k, vs in sorted(by_k.items()):
        curve.append({"version": k + 1, "measurements": int(np.mean([v["map"]["measurements"] for v in vs])),
                      "map_gain_db": float(np.mean([v["map"]["gain_db"] for v in vs])),
                      "fresh_gain_db": float(np.mean([_fresh(v, "gain_db") for v in vs])),
                      "map_gain_db_undriven": _mean([v["map"].get("gain_db_undriven") for v in vs]),
                      "fresh_gain_db_undriven": _mean([_fresh(v, "gain_db_undriven") for v in vs]),
                      "map_aoa": float(np.mean([v["map"]["aoa_sine"] for v in vs])),
                      "fresh_aoa": float(np.mean([_fresh(v, "aoa_sine") for v in vs])),
                      "map_evaluations": float(np.mean([v["map"]["evaluations"] for v in vs])),
                      "fresh_evaluations": float(np.mean([v["fresh"]["evaluations"] for v in vs])),
                      "map_seconds": float(np.mean([v["map"]["seconds"] for v in vs])),
                      "fresh_seconds": float(np.mean([v["fresh"]["seconds"] for v in vs])),
                      "map_gain_cover": _mean([v["map"].get("gain_cover") for v in vs])})
    pairs = [v for t in tiles for v in t["versions"][1:]]  # the incremental rebuilds
    draws = [len(v["fresh"].get("draws", [v["fresh"]])) for v in pairs]
    undriven = [c["map_gain_db_undriven"] for c in curve]
    p99_16 = {str(q.get("workers", 1)): q["p99_ms"] for q in query if q["clients"] == 16}
    return {"curve": curve,
            # over the cells no measurement has reached yet (a set that shrinks as the drive goes on)
            "falls": all(b["map_gain_db"] <= a["map_gain_db"] for a, b in zip(curve, curve[1:])),
            # over the cells the whole drive never reaches: the same cells at every version
            "falls_undriven": (None if None in undriven else all(b <= a for a, b in zip(undriven, undriven[1:]))),
            "rebuilds": len(pairs), "fresh_draws": min(draws) if draws else 0,
            # worse than a fresh construction's first draw / than its draws' mean / than every draw
            "rebuilds_worse_than_fresh": sum(v["map"]["gain_db"] > v["fresh"]["gain_db"] for v in pairs),
            "rebuilds_worse_than_fresh_mean": sum(v["map"]["gain_db"] > _fresh(v, "gain_db") for v in pairs),
            "rebuilds_worse_than_every_fresh": sum(v["map"]["gain_db"] > max(_draws(v, "gain_db")) for v in pairs),
            "fresh_draw_spread_db": (float(np.mean([np.ptp(_draws(v, "gain_db")) for v in pairs])) if pairs else None),
            "evaluation_share": (float(np.mean([v["map"]["evaluations"] / v["fresh"]["evaluations"] for v in pairs]))
                                 if pairs else None),
            "query_p99_ms_16": p99_16}  # by server workers


def _draws(version: dict, key: str) -> list:
    """A version's fresh constructions' values of `key` (records before draws: the one)."""
    return [d.get(key) for d in version["fresh"].get("draws", [version["fresh"]])]


def _fresh(version: dict, key: str) -> float | None:
    """The mean of a version's fresh draws' `key`."""
    return _mean(_draws(version, key))


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None
