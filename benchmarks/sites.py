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

Then QueryPoints under load: 1-16 client processes, each one channel and a closed loop of one-point
queries at random outdoor positions for `query_seconds`: per-call latency p50 / p99 and the
throughput, all clients together. Finally the store's bytes per site.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.runtime import codec


@dataclass(frozen=True)
class SitesConfig:
    batch: int = 64  # measurements per AddMeasurements = per map version
    batches: int = 8  # per tile
    gain_noise_db: float = 2.0
    aoa_noise: float = 0.02
    seed: int = 7
    query_clients: tuple[int, ...] = (1, 2, 4, 8, 16)
    query_seconds: float = 5.0
    threads: int = 0  # the server's engine threads (0: one per CPU it may use)


def route(truth: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n outdoor cells along a drive: keep the heading, turn (left or right) when blocked or with
    probability 0.05, never reverse unless boxed in; cells may repeat (a road driven twice)."""
    outdoor = ~codec.building_mask(truth)
    h, w = outdoor.shape
    cells = np.argwhere(outdoor)
    r, c = (int(v) for v in cells[rng.integers(len(cells))])
    heading = int(rng.integers(4))
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    out: list[tuple[int, int]] = [(r, c)]
    while len(out) < n:
        order = [heading] if rng.random() > 0.05 else []
        order += [(heading + t) % 4 for t in (rng.permutation([1, 3]))] + [(heading + 2) % 4]
        for d in order:
            dr, dc = steps[d]
            if 0 <= r + dr < h and 0 <= c + dc < w and outdoor[r + dr, c + dc]:
                r, c, heading = r + dr, c + dc, d
                break
        else:  # an isolated cell: jump to another street
            r, c = (int(v) for v in cells[rng.integers(len(cells))])
        out.append((r, c))
    return out


def _start_server(repository: Path, store: str, workdir: Path, threads: int, batch: int):
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)  # a previous run's
    cmd = [sys.executable, "-m", "ckm_edge.runtime.cli", "serve", "--repository", str(repository), "--port", "0",
           "--port-file", str(port_file), "--poll-seconds", "0", "--store", store, "--rebuild-after-measurements",
           str(batch), "--rebuild-after-seconds", "3600"] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "w"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text():
            return proc, int(port_file.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"the edge server exited: {(workdir / 'server.log').read_text()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the edge server did not start within 180 s")


def _metrics(mean_px: np.ndarray, std_px: np.ndarray, calibrated: bool, coverage: float, truth: np.ndarray,
             where: np.ndarray) -> dict:
    from ckm_edge.runtime import uncertainty

    p = np.clip(mean_px, 0.0, 1.0)[None]
    t = truth[None]
    out = {"gain_db": float(codec.gain_rmse_db(p, t, where=where)[0]), "aoa_sine": float(codec.aoa_sine_rmse(p, t, where=where)[0])}
    if calibrated:
        held = uncertainty.covered(mean_px, std_px, truth, np.stack([where, where]), uncertainty.z_of(coverage))
        out["gain_cover"], out["aoa_cover"] = held
    return out


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
    proc, port = _start_server(Path(repository), store_url, work, cfg.threads, cfg.batch)
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
                cells = route(truth, cfg.batch * cfg.batches, rng)
                phys = codec.decode(truth)
                measured = np.zeros(layout.shape, bool)
                versions = []
                for k in range(cfg.batches):
                    part = cells[k * cfg.batch:(k + 1) * cfg.batch]
                    ms = []
                    for r, c in part:
                        ms.append(spb.Measurement(
                            position=spb.Position(cell=spb.CellPosition(row=r + 0.5, col=c + 0.5)),
                            gain_db=float(np.clip(phys.gain_db[r, c] + cfg.gain_noise_db * rng.standard_normal(), -250, -50)),
                            aoa_sine=float(np.clip(phys.aoa_sine[r, c] + cfg.aoa_noise * rng.standard_normal(), -1, 1))))
                        measured[r, c] = True
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
                           **_metrics(mean, std, m.calibrated, m.interval_coverage, truth, where)}
                    row = fresh_mgr.get(site_id)
                    job, _, _, evals = fresh_mgr.plan(row, None)
                    tf = time.perf_counter()
                    [res] = executor.execute([job])
                    fresh_s = time.perf_counter() - tf
                    fs = res.std if res.std is not None else np.zeros_like(res.mean)
                    fresh = {"evaluations": evals, "seconds": fresh_s,
                             **_metrics(res.mean, fs, res.calibrated, res.coverage, truth, where)}
                    versions.append({"map": inc, "fresh": fresh})
                    progress(f"tile {i + 1}/{len(held.tiles)} v{m.version}: {m.measurement_count} measurements, "
                             f"{'incremental' if m.incremental else 'fresh'} {inc['gain_db']:.2f} dB ({inc['evaluations']} "
                             f"evals, {inc['seconds']:.2f} s) vs fresh {fresh['gain_db']:.2f} dB ({evals} evals, "
                             f"{fresh_s:.2f} s) [{time.perf_counter() - t0:.0f} s]")
                tiles_out.append({"versions": versions, "outdoor": int((~layout).sum()),
                                  "measured_cells": int(measured.sum())})
            query = []
            positions = [np.argwhere(~codec.building_mask(t)) for t in held.tiles]
            for n in cfg.query_clients:
                query.append(query_load(port, len(held.tiles), positions, n, cfg.query_seconds))
                q = query[-1]
                progress(f"QueryPoints, {n} client(s): p50 {q['p50_ms']:.2f} ms, p99 {q['p99_ms']:.2f} ms, "
                         f"{q['per_second']:.0f} calls/s")
            store = {"sites": len(held.tiles), "file_bytes": sum(p.stat().st_size for p in work.glob("sites.db*")),
                     "per_site_bytes": [fresh_mgr.store.size_bytes(f"tile-{i}") for i in range(len(held.tiles))],
                     "versions_kept": len(fresh_mgr.store.map_versions("tile-0"))}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
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
                      "fresh_gain_db": float(np.mean([v["fresh"]["gain_db"] for v in vs])),
                      "map_aoa": float(np.mean([v["map"]["aoa_sine"] for v in vs])),
                      "fresh_aoa": float(np.mean([v["fresh"]["aoa_sine"] for v in vs])),
                      "map_evaluations": float(np.mean([v["map"]["evaluations"] for v in vs])),
                      "fresh_evaluations": float(np.mean([v["fresh"]["evaluations"] for v in vs])),
                      "map_seconds": float(np.mean([v["map"]["seconds"] for v in vs])),
                      "fresh_seconds": float(np.mean([v["fresh"]["seconds"] for v in vs])),
                      "map_gain_cover": _mean([v["map"].get("gain_cover") for v in vs])})
    pairs = [v for t in tiles for v in t["versions"][1:]]  # the incremental rebuilds
    worse = [v for v in pairs if v["map"]["gain_db"] > v["fresh"]["gain_db"]]
    q16 = next((q for q in query if q["clients"] == 16), None)
    return {"curve": curve, "falls": all(b["map_gain_db"] <= a["map_gain_db"] for a, b in zip(curve, curve[1:])),
            "rebuilds": len(pairs), "rebuilds_worse_than_fresh": len(worse),
            "evaluation_share": (float(np.mean([v["map"]["evaluations"] / v["fresh"]["evaluations"] for v in pairs]))
                                 if pairs else None),
            "query_p99_ms_16": None if q16 is None else q16["p99_ms"]}


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None
