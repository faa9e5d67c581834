"""`ckm-edge`: the edge runtime's command line (no PyTorch).

    ckm-edge construct --package models/repository/ckm-prior/1.0.0 --truth tile.npz --task ipbox --out out/
    ckm-edge construct --package ... --observation obs.npz --sampler diffpir --param lam=30 --steps 10 --samples 4
    ckm-edge construct --server 127.0.0.1:50051 --truth tile.npz --task trajectory --site

--truth: an npz with `pixels` (2, H, W); the observation is simulated with --task and --sigma.
--observation: an npz with `y` and `operator` (the operator's JSON spec, see runtime.operators),
optionally `building` (H, W) for --site. --sampler/--param/--steps/--samples left out take the
model's recommendation for the operator; --zeta, --corrector-steps, --jacobian-free select DPS.
Writes out/construction.npz (pixels and physical units, the std and, for a package that ships a
calibration, the central 90 % interval in pixels, dB and sine; the observation) and
out/construction.png (truth, observation, construction, error, uncertainty).

    ckm-edge serve --repository models/repository --store sqlite:sites.db      # + the SiteService
    ckm-edge site --server 127.0.0.1:50051 create cell-17 --site-file site.npz --geometry 0 0 2 0
    ckm-edge site --server 127.0.0.1:50051 add cell-17 --csv drive.csv      # x_m,y_m,gain_db,aoa_sine
    ckm-edge site --server 127.0.0.1:50051 query cell-17 --points 10 20 64.5 3.5
    ckm-edge site --server 127.0.0.1:50051 get cell-17 --out cell-17.npz   # also watch, delete
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ckm_edge.runtime import codec, defaults, figures, operators, tasks
from ckm_edge.runtime.construct import ConstructConfig, construct
from ckm_edge.runtime.engine import BACKENDS, EngineConfig, EngineError, open_engine
from ckm_edge.runtime.executor import RESPACINGS, in_physical_units, interval_in_physical_units
from ckm_edge.runtime.package import PackageError, load_package, read_public_key
from ckm_edge.runtime.recommend import resolve, with_dps_shorthand
from ckm_edge.runtime.sampler import SAMPLERS, SamplerError, config_from_params
from ckm_edge.runtime.site import Site


def _load_npz(path: Path, key: str) -> np.lib.npyio.NpzFile:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as npz: {e}") from None
    if key not in data:
        raise ValueError(f"{path} has no array {key!r} (has {sorted(data.files)})")
    return data


def _sampler_choice(args) -> tuple[str | None, dict]:
    """--sampler and --param NAME=VALUE, with DPS's own flags as shorthands for sampler dps."""
    params = {}
    for item in args.param or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            params[key] = float(value)
        except ValueError:
            raise ValueError(f"--param {key}: {value!r} is not a number (switches are 0 or 1)") from None
    shorthand = {k: v for k, v in (("zeta", args.zeta), ("corrector_steps", args.corrector_steps)) if v is not None}
    if args.jacobian_free:
        shorthand["jacobian_free"] = 1.0
    name, params = with_dps_shorthand(args.sampler, params, shorthand, named=lambda k: "--" + k.replace("_", "-"))
    if args.no_clip_denoised:
        if name != "dps":
            raise ValueError("--no-clip-denoised belongs to the dps sampler")
        params["clip_denoised"] = 0.0
    return name, params


def _site(args, truth, data) -> Site | None:
    """The site: with --site the building layout (the truth's, or the observation file's
    `building`); with --base-station, or with --site the file's `base_station` (a truth tile's
    transmitter `tx`, as `ckm-data tile` writes it), the serving base station; with --site also the
    file's `building_height` (metres) where it has one."""
    bs = np.asarray(args.base_station, float) if getattr(args, "base_station", None) else None
    for key in ("base_station", "tx"):
        if args.site and bs is None and data is not None and key in data:
            bs = np.asarray(data[key], float).reshape(3)
    building = None
    if args.site:
        if truth is not None:
            building = codec.building_mask(truth)
        elif data is None or "building" not in data:
            raise ValueError(f"--site needs --truth or a `building` array in {args.observation}")
        else:
            building = np.asarray(data["building"]).astype(bool)
    heights = None
    if args.site and data is not None and "building_height" in data and not np.isnan(data["building_height"]).all():
        heights = np.asarray(data["building_height"], float)
    return None if building is None and bs is None else Site(building, bs, heights)


def _observation(args, tile_size: int):
    truth = None
    if args.truth:
        truth_file = _load_npz(args.truth, "pixels")
        truth = codec.check_pixels(truth_file["pixels"], name=f"{args.truth}:pixels")
        if truth.shape != (2, tile_size, tile_size):
            raise ValueError(f"{args.truth}:pixels has shape {truth.shape}, the package expects (2, {tile_size}, {tile_size})")
        task = tasks.ALIASES.get(args.task.lower()) if args.task else None
        if task is None:
            raise ValueError(f"--task must be one of {sorted(tasks.ALIASES)} with --truth, got {args.task!r}")
        rng = np.random.default_rng([args.seed, 0x0B5])
        op = tasks.make_operator(task, rng, truth[None])
        y = tasks.observe(op, truth[None], rng, args.sigma)[0]
        return truth, op, y, task, _site(args, truth, truth_file)
    data = _load_npz(args.observation, "y")
    if "operator" not in data:
        raise ValueError(f"{args.observation} has no 'operator' entry (the operator's JSON spec)")
    op = operators.from_spec(json.loads(str(data["operator"])))
    return None, op, data["y"], "custom", _site(args, None, data)


def cmd_construct(args) -> int:
    if args.server:
        _construct_remote(args)
        return 0
    if not args.package:
        raise ValueError("give --package (local construction) or --server host:port")
    trusted = [read_public_key(k) for k in args.trusted_key] if args.trusted_key else None
    pkg = load_package(args.package, trusted)
    truth, op, y, task, site = _observation(args, pkg.tile_size)
    name, params = _sampler_choice(args)
    sampler, steps, samples = resolve(pkg.manifest.samplers, op, name, params, args.steps, args.samples,
                                      site is not None and site.building is not None)
    cfg = ConstructConfig(steps=steps, samples=samples, seed=args.seed, sampler=sampler, respacing=args.respacing)
    start = time.perf_counter()
    engine_cfg = EngineConfig(precision=args.precision, device=args.device, threads=args.threads, backend=args.backend)
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(open_engine(pkg, engine_cfg))
        adapter = lam = None
        if args.adapter:  # a site adapter package, composed with the model by the executor
            from ckm_edge.runtime.adapter import check_base

            adapter_pkg = load_package(args.adapter, trusted)
            lam = check_base(adapter_pkg, pkg)
            adapter = stack.enter_context(open_engine(adapter_pkg, engine_cfg))
        result = construct(engine, pkg.schedule(), op, y, (2, pkg.tile_size, pkg.tile_size), cfg, sigma=args.sigma,
                           site=site, adapter=adapter, adapter_lambda=lam, uncertainty=pkg.manifest.uncertainty)
        calls = dict(engine.calls)  # the model's network calls (a composed adapter's are as many)
    wall = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "construction.npz", **_arrays(result.mean, result.std, result.interval(), result.coverage),
                        observation=y, operator=json.dumps(op.to_spec()))
    figures.construction_figure(out / "construction.png", truth, np.asarray(y)[:2] if np.asarray(y).ndim == 3 else y,
                                result.mean, result.std, observed=_observed(op, y))
    report = {"task": task, "package": f"{pkg.name} {pkg.version}",
              **({"adapter": f"{adapter_pkg.name} {adapter_pkg.version}"} if args.adapter else {}),
              "sampler": _describe(sampler), "steps": result.steps, "samples": samples, **_site_report(site),
              "site_conditioned": site is not None and pkg.condition_channels > 0,
              "engine": f"{args.backend}-{args.device}", "precision": args.precision,
              "residual": round(result.residual, 5), "wall_s": round(wall, 3), "engine_calls": calls,
              "timings_s": {k: round(v, 4) for k, v in result.timings.items()}, "output": str(out)}
    report["calibrated"] = result.calibrated
    if truth is not None:
        report.update(_errors(task, op, y, truth, result.mean, result.interval(), site))
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>14}: {value}")
    return 0


def _observed(op, y) -> np.ndarray:
    """(C', H', W') bool: the entries of the observation that carry a reading."""
    y = np.asarray(y)
    return op.measured(y if y.ndim == 4 else y[None])[0]


def _classical(task: str, op, y, truth: np.ndarray, site: Site | None) -> dict | None:
    """The best classical fill of the same observation (by gain RMSE; benchmarks.solvers: smooth,
    nearest, IDW, bicubic, clipping-aware, whichever fit the operator), given the layout with a
    site; None where the benchmarks' dependencies (scipy) are not installed."""
    try:
        from ckm_edge.benchmarks.solvers import classical_methods
    except ImportError:
        return None
    building = None if site is None or site.building is None else np.asarray(site.building).reshape(truth.shape[-2:])
    y = np.asarray(y)
    fills = classical_methods(task, op, y if y.ndim == 4 else y[None], truth.shape, building)
    scores = {m: (float(codec.gain_rmse_db(v, truth)), float(codec.aoa_sine_rmse(v, truth))) for m, v in fills.items()}
    best = min(scores, key=lambda m: scores[m][0])
    return {"method": best, "gain_rmse_db": round(scores[best][0], 3), "aoa_sine_rmse": round(scores[best][1], 4)}


def _errors(task: str, op, y, truth: np.ndarray, mean: np.ndarray, interval, site: Site | None) -> dict:
    """The construction against the truth: RMSEs, the best classical fill's on the same observation
    and, with an interval, the share of the cells the observation leaves unknown that it holds."""
    out = {"gain_rmse_db": round(float(codec.gain_rmse_db(mean, truth)), 3),
           "aoa_sine_rmse": round(float(codec.aoa_sine_rmse(mean, truth)), 4)}
    classical = _classical(task, op, y, truth, site)
    if classical is not None:
        out["classical"] = classical
    if interval is not None:
        unknown = tasks.unobserved(task, op, truth[None])[0]
        inside = (truth >= interval[0] - 1e-7) & (truth <= interval[1] + 1e-7)
        out["interval_holds_unobserved"] = [round(float(inside[c][unknown[c]].mean()), 3) if unknown[c].any() else None
                                            for c in range(2)]
    return out


def _arrays(mean: np.ndarray, std: np.ndarray | None, interval, coverage: float) -> dict:
    """construction.npz's arrays: the map in pixels and physical units; its std (pixels, and dB /
    sine); with a calibration, the central `coverage` interval in pixels, dB and sine."""
    phys = codec.decode(mean, clip=True)
    out = {"pixels": mean, "gain_db": phys.gain_db, "aoa_sine": phys.aoa_sine, "building": phys.building,
           "std": std if std is not None else np.zeros(0), "calibrated": np.bool_(interval is not None)}
    if std is not None:
        _, std_phys = in_physical_units(mean, std)
        out.update(gain_db_std=std_phys[0], aoa_sine_std=std_phys[1])
    if interval is not None:
        low, high = interval_in_physical_units(mean, *interval)
        out.update(coverage=np.float64(coverage), interval_low=interval[0], interval_high=interval[1],
                   gain_db_low=low[0], gain_db_high=high[0], aoa_sine_low=low[1], aoa_sine_high=high[1])
    return out


def _site_report(site: Site | None) -> dict:
    report = {"site": site is not None and site.building is not None}
    if site is not None and site.base_station is not None:
        report["base_station"] = [round(float(v), 3) for v in np.ravel(site.base_station)]
    return report


def _describe(cfg) -> dict:
    from ckm_edge.runtime.sampler import spec_for

    return {"name": spec_for(cfg).name, **{p["name"]: getattr(cfg, p["name"]) for p in spec_for(cfg).parameters()}}


def _construct_remote(args) -> dict:
    """The same construction, sent to an edge server over gRPC; prints and returns its report."""
    import grpc

    from ckm_edge.runtime.client import EdgeClient

    with EdgeClient(args.server, token=args.token, root_certs=args.root_certs) as client:
        meta = client.metadata(args.model or "", args.model_version or "")
        truth, op, y, task, site = _observation(args, meta.tile_size)
        name, params = _sampler_choice(args)
        if name == "dps":  # the API's DPS runs no corrector unless asked; this command's runs its default
            params.setdefault("corrector_steps", float(config_from_params("dps").corrector_steps))
        start = time.perf_counter()
        try:
            result = client.construct(y, op, model=meta.name, version=meta.version, sampler=name or "",
                                      sampler_parameters=params, steps=args.steps or 0, samples=args.samples or 0,
                                      seed=args.seed, noise_sigma=args.sigma, site=site, precision=args.precision,
                                      respacing=args.respacing,
                                      timeout=args.timeout, adapter=str(args.adapter or ""),
                                      adapter_version=args.adapter_version or "")
        except grpc.RpcError as e:
            raise ValueError(f"the server answered {e.code().name}: {e.details()}") from None
        wall = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures.construction_figure(out / "construction.png", truth, y, result.map, result.std, observed=_observed(op, y))
    np.savez_compressed(out / "construction.npz", **_arrays(result.map, result.std, result.interval, result.interval_coverage),
                        observation=y, operator=json.dumps(op.to_spec()))
    report = {"task": task, "server": args.server, "model": f"{result.model} {result.version}",
              **({"adapter": f"{result.adapter} {result.adapter_version}"} if result.adapter else {}),
              "sampler": {"name": result.sampler, **result.sampler_parameters}, "steps": result.steps,
              "samples": result.samples, **_site_report(site), "site_conditioned": result.site_conditioned,
              "precision": args.precision, "residual": round(result.residual_norm, 5), "wall_s": round(wall, 3),
              "server_timings_s": {k: round(v, 4) for k, v in result.timings.items()}, "output": str(out)}
    report["calibrated"] = result.calibrated
    if truth is not None:
        report.update(_errors(task, op, y, truth, result.map, result.interval, site))
    print(json.dumps(report) if args.json else "\n".join(f"{k:>16}: {v}" for k, v in report.items()))
    return report


def cmd_serve(args) -> int:
    import logging
    import signal

    from ckm_edge.runtime.server import BindError, ServerConfig, create_server, read_tokens
    from ckm_edge.runtime.sites import RebuildPolicy
    from ckm_edge.runtime.sitestore import StoreError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    metrics_host, metrics_port = "127.0.0.1", None
    if args.metrics_address:
        metrics_host, _, port = args.metrics_address.rpartition(":")
        metrics_host, metrics_port = metrics_host.strip("[]") or "127.0.0.1", int(port)
    elif args.metrics_port is not None:
        metrics_port = args.metrics_port
    try:
        tokens = read_tokens(args.token_file) if args.token_file else ()
        cfg = ServerConfig(repository=args.repository, host=args.host, port=args.port, metrics_port=metrics_port,
                           metrics_host=metrics_host, max_batch=args.max_batch, max_queue_delay_ms=args.max_queue_delay_ms,
                           max_queue=args.max_queue, max_batch_memory_mib=args.max_batch_memory_mib,
                           max_evaluations=args.max_evaluations, max_message_bytes=args.max_message_bytes,
                           engine_threads=args.threads,
                           deterministic=args.deterministic, arena=args.arena, device=args.device, backend=args.backend,
                           poll_seconds=args.poll_seconds,
                           tls_cert=args.tls_cert, tls_key=args.tls_key, client_ca=args.client_ca, tokens=tokens,
                           trusted_keys=tuple(args.trusted_key or ()), store=args.store,
                           rebuild=RebuildPolicy(after_measurements=args.rebuild_after_measurements,
                                                 after_seconds=args.rebuild_after_seconds, workers=args.rebuild_workers,
                                                 keep_versions=args.keep_map_versions))
    except ValueError as e:
        print(f"ckm-edge serve: {e}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"ckm-edge serve: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def until_signalled():  # installed once the server serves (a refused start leaves the caller's handlers)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        return stop

    if args.workers > 1:
        from ckm_edge.runtime.workers import Supervisor, WorkerError

        try:
            sup = Supervisor(cfg, args.workers, pin=not args.no_pin).start()
        except (StoreError, WorkerError, BindError) as e:
            print(f"ckm-edge serve: {'--store: ' if isinstance(e, StoreError) else ''}{e}", file=sys.stderr)
            return 2
        cpus = sorted(c for c in sup.cpus if c is not None)
        _serving(sup.models, sup.port, cfg, sup.metrics_port, f" with {args.workers} workers"
                 + (f" (pinned to CPUs {', '.join(map(str, cpus))})" if cpus else ""), args.port_file)
        sup.run(until_signalled())
        sup.stop()
        return 0
    try:
        edge = create_server(cfg).start()
    except (StoreError, BindError) as e:
        print(f"ckm-edge serve: {'--store: ' if isinstance(e, StoreError) else ''}{e}", file=sys.stderr)
        return 2
    _serving([m.key for m in edge.repository.models()], edge.port, cfg, edge.metrics_port, "", args.port_file)
    until_signalled().wait()
    edge.stop()
    return 0


def _serving(models, port: int, cfg, metrics_port: int | None, how: str, port_file: Path | None) -> None:
    print(f"ckm-edge serving {models} on port {port}{how}"
          + (f", sites in {cfg.store.split('@')[-1]}" if cfg.store else "")
          + (f", metrics on http://{cfg.metrics_host}:{metrics_port}/metrics" if metrics_port else ""), flush=True)
    if port_file:
        Path(port_file).write_text(str(port))


def cmd_demo(args) -> int:
    """The main job end to end: an edge server on the repository, one gRPC construction per task in
    the paper's setting (the observation alone) and one per site task given the site (its building
    layout and base station, as a base station knows them), then the gain RMSE of each side by side."""
    from ckm_edge.runtime.server import ServerConfig, create_server

    site_tasks = list(args.tasks) if args.site_tasks is None else args.site_tasks
    unknown = sorted(set(site_tasks) - set(args.tasks))
    if unknown:
        raise ValueError(f"--site-tasks {' '.join(unknown)}: not among --tasks ({' '.join(args.tasks)})")
    edge = create_server(ServerConfig(repository=args.repository, port=0, poll_seconds=0, engine_threads=args.threads)).start()
    print(f"edge server on 127.0.0.1:{edge.port} serving {[m.key for m in edge.repository.models()]}", flush=True)
    reports = {}
    try:
        for task, site in [(t, False) for t in args.tasks] + [(t, True) for t in site_tasks]:
            ns = argparse.Namespace(
                server=f"127.0.0.1:{edge.port}", token=None, root_certs=None, model=None, model_version=None,
                truth=args.truth, observation=None, task=task, sigma=args.sigma, seed=args.seed,
                steps=args.steps, samples=args.samples, sampler=args.sampler, param=args.param, zeta=None,
                corrector_steps=None, jacobian_free=False, no_clip_denoised=False, respacing="ddpm", site=site,
                precision="fp32", timeout=None, out=Path(args.out) / (f"{task}-site" if site else task), json=True,
                adapter=args.adapter, adapter_version=None)
            reports[task, site] = _construct_remote(ns)
    finally:
        edge.stop(0)
    print(_demo_table(args.tasks, reports))
    print(f"figures: {args.out}/<task>[-site]/construction.png")
    return 0


def _demo_table(task_names, reports: dict) -> str:
    """The demo's summary: per task and setting, the construction's errors beside the best classical
    fill's on the same observation, and the share of unknown cells its interval holds."""
    lines = ["", "Each construction against the truth (all cells): gain RMSE dB / AoA-sine RMSE; the best classical fill",
             "of the same observation; the share of the cells the observation leaves unknown that the construction's",
             "calibrated 90 % interval holds (gain / AoA sine).", "",
             f"{'task':>12}  {'setting':<17} {'construction':>16}  {'best classical fill':>30}  {'90 % interval holds':>20}"]
    for task in task_names:
        for site in (False, True):
            r = reports.get((task, site))
            if r is None:
                continue
            c = r.get("classical")
            classical = "-" if c is None else f"{c['gain_rmse_db']:.2f} / {c['aoa_sine_rmse']:.4f} ({c['method']})"
            held = r.get("interval_holds_unobserved")
            cover = "not calibrated" if held is None else " / ".join("-" if v is None else f"{100 * v:.0f} %" for v in held)
            lines.append(f"{task:>12}  {'given the site' if site else 'observation alone':<17} "
                         f"{r['gain_rmse_db']:>7.2f} / {r['aoa_sine_rmse']:.4f}  {classical:>30}  {cover:>20}")
    return "\n".join(lines)


def _sampler_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None,
                   help="posterior sampler (default: the model's recommendation for the operator)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a sampler parameter, repeatable: " + "; ".join(
                       f"{n}: " + ", ".join(q["name"] for q in s.parameters()) for n, s in sorted(SAMPLERS.items())))
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the recommendation's)")
    p.add_argument("--samples", type=int, default=None, help="posterior samples, one batch (default: the recommendation's)")
    p.add_argument("--sigma", type=float, default=tasks.DEFAULT_SIGMA,
                   help="observation noise in pixels: simulated with --truth, and what the sampler assumes")


def cmd_site(args) -> int:
    """`ckm-edge site create|add|get|query|watch|delete`: a site's living map over the SiteService."""
    import grpc
    from google.protobuf import json_format

    from ckm_edge.runtime.client import SiteClient

    def show(msg) -> None:
        print(json_format.MessageToJson(msg, indent=1, preserving_proto_field_name=True))

    with SiteClient(args.server, token=args.token, root_certs=args.root_certs) as sites:
        try:
            if args.site_command == "create":
                building = base = heights = None
                if args.site_file:
                    with np.load(args.site_file) as z:
                        building = z["building"] if "building" in z.files else None
                        base = z["base_station"] if "base_station" in z.files else None
                        heights = z["building_height"] if "building_height" in z.files else None
                if args.base_station:
                    base = args.base_station
                show(sites.create(args.site_id, building=building, base_station=base, heights=heights,
                                  geometry=args.geometry, model=args.model or "", version=args.model_version or "",
                                  adapter=args.adapter or "", gain_noise_db=args.gain_noise_db, aoa_noise=args.aoa_noise,
                                  rebuild_after_measurements=args.rebuild_after_measurements,
                                  rebuild_after_seconds=args.rebuild_after_seconds))
            elif args.site_command == "add":
                rows = _measurement_rows(args.csv)
                world = "x_m" in rows
                pos = np.stack([rows["x_m"], rows["y_m"]] if world else [rows["row"], rows["col"]], axis=1)
                show(sites.add(args.site_id, pos, gain_db=rows.get("gain_db"), aoa_sine=rows.get("aoa_sine"),
                               gain_noise_db=rows.get("gain_noise_db", 0.0), aoa_noise=rows.get("aoa_noise", 0.0),
                               timestamps_ms=rows.get("timestamp_unix_ms"), world=world, batch_id=args.batch_id or ""))
            elif args.site_command == "get":
                show(sites.get(args.site_id))
                if args.out:
                    _save_site_map(args.out, sites.map(args.site_id, args.version, physical=not args.pixels))
                    print(f"map written to {args.out}")
            elif args.site_command == "query":
                pts = np.array(args.points, float).reshape(-1, 2)
                out = sites.query(args.site_id, pts, world=args.world)
                keys = [k for k in out if k != "map_version"]
                print(f"map version {int(out['map_version'])}")
                print(" ".join(f"{k:>14}" for k in ["position"] + keys))
                for i, p in enumerate(pts):
                    print(" ".join([f"{p[0]:>6.1f},{p[1]:<7.1f}"] + [f"{float(out[k][i]):>14.4f}" for k in keys]))
            elif args.site_command == "watch":
                for m in sites.watch(args.site_id, args.after, physical=not args.pixels, timeout=args.timeout):
                    print(f"version {m.version}: {m.measurement_count} measurements, "
                          f"{'incremental' if m.incremental else 'fresh'}, {m.network_evaluations} evaluations, "
                          f"{m.build_seconds:.2f} s", flush=True)
                    if args.out_dir:
                        _save_site_map(Path(args.out_dir) / f"{args.site_id}-v{m.version}.npz", m)
                    if args.count and m.version >= args.after + args.count:
                        break
            elif args.site_command == "delete":
                show(sites.delete(args.site_id))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and args.site_command == "watch":
                return 0
            print(f"ckm-edge site {args.site_command}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


def _measurement_rows(path) -> dict[str, np.ndarray]:
    """A CSV with a header: x_m,y_m (world) or row,col (cells), and gain_db and/or aoa_sine,
    optionally gain_noise_db, aoa_noise, timestamp_unix_ms; empty cells = not measured."""
    import csv

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        names = reader.fieldnames or []
        rows = list(reader)
    if not ({"x_m", "y_m"} <= set(names) or {"row", "col"} <= set(names)):
        raise ValueError(f"{path}: needs columns x_m,y_m (metres) or row,col (cells); has {names}")
    known = {"x_m", "y_m", "row", "col", "gain_db", "aoa_sine", "gain_noise_db", "aoa_noise", "timestamp_unix_ms"}
    if set(names) - known:
        raise ValueError(f"{path}: unknown columns {sorted(set(names) - known)}")
    out = {}
    for k in names:
        try:
            out[k] = np.array([float(r[k]) if r[k].strip() else (0.0 if k in ("gain_noise_db", "aoa_noise") else np.nan)
                               for r in rows])
        except ValueError as e:
            raise ValueError(f"{path}: column {k}: {e}") from None
    return out


def _save_site_map(path, m) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    extra = {} if m.interval is None else {"interval_low": m.interval[0], "interval_high": m.interval[1],
                                           "coverage": m.interval_coverage}
    np.savez(path, map=m.map, std=m.std, version=m.version, measurement_count=m.measurement_count, **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckm-edge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("construct", help="construct a CKM from an observation with a package")
    c.add_argument("--package", type=Path, help="construct locally with this package")
    c.add_argument("--server", help="or send the request to an edge server, host:port")
    c.add_argument("--model", help="model name on the server (default: its only model)")
    c.add_argument("--model-version", help="model version on the server (default: newest)")
    c.add_argument("--adapter", help="site adapter: a package directory (local) or its name on the server")
    c.add_argument("--adapter-version", help="site adapter version on the server (default: newest fitted to the model)")
    c.add_argument("--token", help="bearer token for the server")
    c.add_argument("--root-certs", type=Path, help="CA certificate for a TLS server")
    c.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--truth", type=Path, help="npz with `pixels`: simulate the observation with --task")
    src.add_argument("--observation", type=Path, help="npz with `y` and `operator` (JSON spec)")
    c.add_argument("--task", help="ipbox, iprandom, sr (x2), jtqr or trajectory (with --truth)")
    c.add_argument("--out", type=Path, default=Path("construction-out"))
    _sampler_arguments(c)
    c.add_argument("--site", action="store_true",
                   help="use the site's building layout (from --truth, or `building` in the observation file) "
                        "and its `base_station` (row, col, height_m) if the observation file has one")
    c.add_argument("--base-station", nargs=3, type=float, metavar=("ROW", "COL", "HEIGHT_M"),
                   help="the serving base station in cell coordinates (may lie outside the tile) and its "
                        "height above ground; a site-aware model conditions on it")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--zeta", type=float, default=None, help="dps: observation constraint strength (selects dps)")
    c.add_argument("--corrector-steps", type=int, default=None, help="dps: Langevin steps per step (selects dps)")
    c.add_argument("--jacobian-free", action="store_true", help="dps: skip the backward graph (selects dps)")
    c.add_argument("--no-clip-denoised", action="store_true",
                   help="dps: the paper's unclipped predictor (x0_hat not clipped to [0, 1] in the ancestral step)")
    c.add_argument("--respacing", default="ddpm", choices=RESPACINGS,
                   help="which of the model's noise levels the steps keep (ddpm: exact ancestral steps; ddim)")
    c.add_argument("--precision", default=defaults.PRECISION, choices=defaults.PRECISIONS)
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    c.add_argument("--backend", default=defaults.BACKEND, choices=BACKENDS,
                   help="inference library: ONNX Runtime (CPU/CUDA), OpenVINO (CPU, the `openvino` extra), TensorRT")
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--trusted-key", action="append", type=Path)
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_construct)

    s = sub.add_parser("serve", help="serve a model repository over gRPC")
    s.add_argument("--repository", type=Path, default=Path("models/repository"))
    s.add_argument("--host", default=None, help="bind address (default 127.0.0.1; 0.0.0.0 with TLS)")
    s.add_argument("--port", type=int, default=50051)
    s.add_argument("--port-file", type=Path, help="write the bound port here (useful with --port 0)")
    s.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics on this port of 127.0.0.1")
    s.add_argument("--metrics-address", default=None, metavar="HOST:PORT",
                   help="Prometheus metrics on this address (e.g. 0.0.0.0:9090); overrides --metrics-port")
    s.add_argument("--max-batch", type=int, default=defaults.MAX_BATCH, help="posterior-sample rows per engine batch")
    s.add_argument("--max-queue-delay-ms", type=float, default=defaults.MAX_QUEUE_DELAY_MS)
    s.add_argument("--max-queue", type=int, default=defaults.MAX_QUEUE)
    s.add_argument("--max-batch-memory-mib", type=float, default=defaults.MAX_BATCH_MEMORY_MIB,
                   help="engine memory one batch may use, rows x measured per-row memory (0 = no budget)")
    s.add_argument("--max-evaluations", type=int, default=defaults.MAX_EVALUATIONS,
                   help="network evaluations one request may ask for (samples x calls per sample)")
    s.add_argument("--arena", choices=["all", "score", "none"], default="score",
                   help="graphs that keep ONNX Runtime's memory arena; the others return memory after each call")
    s.add_argument("--max-message-bytes", type=int, default=16 * 2**20, help="largest request accepted")
    s.add_argument("--deterministic", action="store_true",
                   help="single-threaded deterministic engines: bitwise-reproducible maps, batched or alone")
    s.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--backend", default=defaults.BACKEND, choices=BACKENDS,
                   help="inference library of the engines: onnxruntime, openvino (CPU) or tensorrt")
    s.add_argument("--poll-seconds", type=float, default=2.0, help="repository watch interval (0 = off)")
    s.add_argument("--tls-cert", type=Path)
    s.add_argument("--tls-key", type=Path)
    s.add_argument("--client-ca", type=Path, help="require client certificates from this CA (mTLS)")
    s.add_argument("--token-file", type=Path, help="accepted bearer tokens, whitespace separated")
    s.add_argument("--trusted-key", action="append", type=Path, help="only serve packages signed by these keys")
    s.add_argument("--store", default=None, metavar="URL",
                   help="serve the SiteService (living maps) from this store: sqlite:PATH (one file) or "
                        "postgresql://USER@HOST/DB (servers sharing sites; the `sites-postgres` extra)")
    s.add_argument("--rebuild-after-measurements", type=int, default=64,
                   help="rebuild a site's map once this many new measurements arrived (a site's policy overrides)")
    s.add_argument("--rebuild-after-seconds", type=float, default=2.0,
                   help="... or once the oldest of them waited this long")
    s.add_argument("--rebuild-workers", type=int, default=1, help="site map rebuilds running at once")
    s.add_argument("--keep-map-versions", type=int, default=16, help="map versions kept per site")
    s.add_argument("--workers", type=int, default=1,
                   help="server processes on the port (runtime/workers.py: gRPC Python serves one core's worth "
                        "of calls per process); each a whole server, pinned to a CPU of its own")
    s.add_argument("--no-pin", action="store_true", help="with --workers: let the OS place the workers")
    s.set_defaults(func=cmd_serve)

    st = sub.add_parser("site", help="a site's living map on an edge server (SiteService): create, add, get, query, "
                                     "watch, delete")
    st.add_argument("--server", required=True, help="host:port of an edge server started with --store")
    st.add_argument("--token", help="bearer token for the server")
    st.add_argument("--root-certs", type=Path, help="CA certificate for a TLS server")
    ss = st.add_subparsers(dest="site_command", required=True)
    sc = ss.add_parser("create", help="register a site")
    sc.add_argument("site_id")
    sc.add_argument("--site-file", type=Path, help="npz with `building` (H, W 0/1), optionally `base_station` "
                                                   "(row, col, height_m) and `building_height`")
    sc.add_argument("--base-station", nargs=3, type=float, metavar=("ROW", "COL", "HEIGHT_M"))
    sc.add_argument("--geometry", nargs=4, type=float, metavar=("ORIGIN_X_M", "ORIGIN_Y_M", "CELL_M", "ORIENTATION_DEG"),
                    help="how the tile lies in the world (site.proto TileGeometry)")
    sc.add_argument("--model")
    sc.add_argument("--model-version")
    sc.add_argument("--adapter")
    sc.add_argument("--gain-noise-db", type=float, default=0.0, help="a measurement's default noise (0: 2 dB)")
    sc.add_argument("--aoa-noise", type=float, default=0.0, help="(0: 0.02)")
    sc.add_argument("--rebuild-after-measurements", type=int, default=0, help="0: the server's")
    sc.add_argument("--rebuild-after-seconds", type=float, default=0.0, help="0: the server's")
    sa = ss.add_parser("add", help="add measurements from a CSV file")
    sa.add_argument("site_id")
    sa.add_argument("--csv", type=Path, required=True,
                    help="header x_m,y_m or row,col; gain_db and/or aoa_sine; optional gain_noise_db, aoa_noise, "
                         "timestamp_unix_ms")
    sa.add_argument("--batch-id", help="idempotency key: a retry with it is not stored twice")
    sg = ss.add_parser("get", help="the site's state; with --out its map (npz)")
    sg.add_argument("site_id")
    sg.add_argument("--out", type=Path)
    sg.add_argument("--version", type=int, default=0, help="a kept map version (0: newest)")
    sg.add_argument("--pixels", action="store_true", help="codec pixels instead of dB / sine")
    sq = ss.add_parser("query", help="gain and AoA with uncertainty at positions")
    sq.add_argument("site_id")
    sq.add_argument("--points", nargs="+", type=float, required=True, metavar="V",
                    help="row col [row col ...] (or x_m y_m ... with --world)")
    sq.add_argument("--world", action="store_true")
    sw = ss.add_parser("watch", help="print (and save) each new map version")
    sw.add_argument("site_id")
    sw.add_argument("--after", type=int, default=0)
    sw.add_argument("--count", type=int, default=0, help="stop after this many versions (0: until --timeout)")
    sw.add_argument("--timeout", type=float, default=None)
    sw.add_argument("--out-dir", type=Path)
    sw.add_argument("--pixels", action="store_true")
    sd = ss.add_parser("delete", help="remove the site, its measurements and maps")
    sd.add_argument("site_id")
    st.set_defaults(func=cmd_site)

    d = sub.add_parser("demo", help="serve the repository and construct a truth tile for each task over gRPC")
    d.add_argument("--repository", type=Path, default=Path("models/repository"))
    d.add_argument("--truth", type=Path, required=True, help="npz with `pixels` (ckm-data tile)")
    d.add_argument("--tasks", nargs="+", default=["ipbox", "iprandom", "sr", "jtqr", "trajectory"])
    d.add_argument("--site-tasks", nargs="*", default=None,
                   help="tasks also constructed given the site: the truth tile's building layout and its base "
                        "station when the file has one (default: all of --tasks; none: give the flag alone)")
    _sampler_arguments(d)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=0)
    d.add_argument("--out", type=Path, default=Path("demo-out"))
    d.add_argument("--adapter", default=None, help="compose this site adapter (its name in the repository)")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PackageError, EngineError, operators.OperatorError, codec.CodecError, SamplerError, ValueError) as e:
        print(f"ckm-edge {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
