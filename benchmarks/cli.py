"""`ckm-bench`: run a benchmark, store its JSON and regenerate RESULTS.md (default: benchmarks/results/
and benchmarks/RESULTS.md under the working directory; `ckm-bench --results DIR COMMAND` elsewhere).

    ckm-bench procedural [--tiles 1000] [--workers N]
    ckm-bench latency [--package DIR] [--checkpoint FILE] [--steps 10] [--device cpu|cuda] [--backend onnxruntime|tensorrt]
    ckm-bench load [--repository DIR | --server HOST:PORT] [--clients 1 2 4 8] [--duration 20]
    ckm-bench raytrace [--scene munich] [--tiles 2] [--device auto|cpu|cuda]
    ckm-bench sweep [--zetas 2 5 9 13 18] [--steps 25] [--precisions fp32 fp16 int8] [--jacobian-free]
    ckm-bench memory [--package DIR] [--batches 1 4]
    ckm-bench netsize [--networks tiny small medium base | LABEL=CHECKPOINT ...] [--data DIR --tiles 8]
    ckm-bench accuracy [--data datasets/sionna-rt-small | --data procedural] [--tiles 8] [--checkpoints DIR]
                       [--journal FILE] [--exclude TRAINED ...]   (validation tiles instead of held-out)
    ckm-bench tune [--package DIR] [--data DIR --exclude TRAINED ...] [--budget 25] [--out samplers.json]
    ckm-bench shift [--data DIR] [--tiles 16] [--checkpoints DIR] [--rows ...] [--journal FILE]
                       (observations no method was tuned for: the foundation vs the end-to-end networks)
    ckm-bench sites [--repository DIR] [--data DIR] [--tiles 8] [--batch 64] [--batches 8] [--query-workers 1 2]
                       (living maps: drive tests into a SiteService, incremental vs fresh, QueryPoints load)
    ckm-bench uncertainty [--package DIR] [--data DIR --exclude TRAINED ...] [--tiles 24] [--write]
                       (calibrate the std a package reports: its manifest's "uncertainty" section)
    ckm-bench adapt [--device cuda] [--counts 16 64 256]     (site adapters vs fine-tuning)
    ckm-bench gpu [--device cuda] [--batches 1 8 32 128 256 512] [--step-counts 20 50 100 200 500 1000]
    ckm-bench report [--notes NAME]     (RESULTS.md again, e.g. after writing a record's notes; --notes:
                                         start NAME.notes.md, headed with the record it explains)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ckm_edge.benchmarks import render, report
from ckm_edge.runtime import defaults, tasks

DEFAULT_PACKAGE = "models/repository/ckm-prior/1.0.0"  # the embedded default model
DEFAULT_CHECKPOINT = "models/checkpoints/prior-small.pt"  # its PyTorch weights


def _store(args: argparse.Namespace, name: str, kind: str, command: str, results: dict, say: str = "") -> None:
    """Write the record, regenerate RESULTS.md from every record, print the record's new section."""
    path = report.write_result(name, kind, command, results, results_dir=args.results)
    print(render.section(report.read_record(path)))
    print(f"results: {path}; report: {report.results_md(args.results)}" + say)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text)


def _data_slug(data: str) -> str:
    """A record's name for the tiles it ran on: the dataset directory's name, or 'procedural'."""
    return _slug(Path(data).name if data != "procedural" else "procedural")


def _progress(line: str) -> None:
    print(line, flush=True)


def _cmd_procedural(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import procedural

    results = procedural.run(tiles=args.tiles, workers=args.workers)
    command = f"ckm-bench procedural --tiles {args.tiles}" + (f" --workers {args.workers}" if args.workers else "")
    _store(args, "procedural-generator", "procedural", command, results)
    return 0


def _cmd_latency(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import latency
    from ckm_edge.runtime.engine import EngineConfig, EngineError, open_engine
    from ckm_edge.runtime.package import load_package
    from ckm_edge.training import procedural
    from ckm_edge.training.checkpoint import load_model

    pkg = load_package(args.package)
    try:  # an engine this machine cannot run is refused before anything is timed
        open_engine(pkg, EngineConfig(device=args.device, backend=args.backend)).close()
    except (EngineError, ImportError) as e:
        raise SystemExit(f"ckm-bench latency: the {args.backend} engine on {args.device} cannot run here: {e}") from None
    model, meta = load_model(args.checkpoint)
    tile = procedural.generate_region(procedural.ProceduralConfig(tile_size=pkg.tile_size), "eval", 0, 1, seed=7)[0][0]
    results = latency.run(pkg, model, meta, tile, args.steps, tuple(args.batches), args.threads, args.device, args.backend)
    name = "latency-tensorrt" if args.backend == "tensorrt" else f"latency-{args.device}"
    command = f"ckm-bench latency --steps {args.steps}" + ("" if args.device == "cpu" else f" --device {args.device}") + (
        "" if args.backend == "onnxruntime" else f" --backend {args.backend}")
    _store(args, name, "latency", command, results)
    if args.device == "cpu" and args.compare_backends:  # ONNX Runtime (spinning or not) and OpenVINO, same run
        results = latency.backend_comparison(pkg, tile, pkg.precisions, threads=args.threads, repeats=args.repeats)
        command = "ckm-bench latency" + (f" --threads {args.threads}" if args.threads else "")
        _store(args, "latency-backends-cpu", "latency-backends", command, results)
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    import numpy as np

    from ckm_edge.benchmarks import load
    from ckm_edge.runtime import tasks
    from ckm_edge.runtime.client import EdgeClient
    from ckm_edge.training import procedural

    if any(c < 1 for c in args.clients) or args.duration <= 0:
        raise SystemExit("ckm-bench load: --clients must be >= 1 and --duration > 0")
    edge = None
    if not args.server:
        from ckm_edge.runtime.server import ServerConfig, create_server

        edge = create_server(ServerConfig(repository=args.repository, port=0, poll_seconds=0, max_batch=args.max_batch,
                                          max_queue_delay_ms=args.max_queue_delay_ms, max_queue=args.max_queue,
                                          max_batch_memory_mib=args.max_batch_memory_mib,
                                          engine_threads=args.threads)).start()
    target = args.server or f"127.0.0.1:{edge.port}"
    try:
        with EdgeClient(target) as client:
            tile_size = client.metadata().tile_size
        tile, _ = procedural.generate_region(procedural.ProceduralConfig(tile_size=tile_size), "eval", 0, 1, seed=7)
        rng = np.random.default_rng(0)
        op = tasks.make_operator(args.task, rng, tile)
        settings = load.mixed(args.steps or 10) if args.mix == "mixed" else None
        kwargs = settings or {"steps": args.steps, "precision": args.precision}
        levels = load.run(target, tasks.observe(op, tile, rng)[0], op, args.clients, args.duration, kwargs, edge,
                          retry=not args.no_retry, progress=_progress)
    finally:
        if edge is not None:
            edge.stop(0)
    setup = {"server": args.server, "repository": args.repository, "max_queue_delay_ms": args.max_queue_delay_ms,
             "max_queue": args.max_queue, "max_batch_memory_mib": args.max_batch_memory_mib, "task": args.task,
             "settings": settings, "steps": args.steps, "precision": args.precision, "duration_s": args.duration,
             "retry": not args.no_retry}
    command = (f"ckm-bench load --clients {' '.join(map(str, args.clients))} --duration {args.duration:g} --steps {args.steps}"
               + ("" if args.server or args.max_batch == 8 else f" --max-batch {args.max_batch}")
               + ("" if args.mix == "uniform" else f" --mix {args.mix}")
               + ("" if args.max_queue == 64 else f" --max-queue {args.max_queue}"))
    # Batched, unbatched and mixed serving are separate sections, so they can be read side by side.
    name = "grpc-load-mixed" if args.mix == "mixed" else (
        "grpc-load" if args.server or args.max_batch > 1 else "grpc-load-no-batching")
    _store(args, name, "load", command, {"levels": levels, "max_batch": args.max_batch, "mix": args.mix, "setup": setup})
    return 0


def _cmd_physics(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import physics as bench_physics

    results = bench_physics.run(args.data, tuple(args.splits), args.repeats, args.limit)
    command = f"ckm-bench physics --data {args.data} --splits {' '.join(args.splits)} --repeats {args.repeats}" + (
        f" --limit {args.limit}" if args.limit else "")
    _store(args, "physics-cpu", "physics", command, results)
    return 0


def _cmd_raytrace(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import raytrace as bench_raytrace
    from ckm_edge.training.raytrace import HELD_OUT_SCENES, RaytraceError

    if args.scene in HELD_OUT_SCENES:
        raise SystemExit(f"ckm-bench raytrace: {args.scene!r} is a held-out region; benchmark on a training scene")
    try:
        results = bench_raytrace.run(args.scene, args.tiles, args.device)
    except RaytraceError as e:
        raise SystemExit(f"ckm-bench raytrace: {e}") from None
    command = f"ckm-bench raytrace --scene {args.scene} --tiles {args.tiles} --device {args.device}"
    _store(args, f"raytrace-{results['device']}", "raytrace", command, results)
    return 0


def _held_out(args: argparse.Namespace):
    """The accuracy benchmark's tiles: validation tiles with --exclude (a training city's tiles that no
    excluded dataset, what training read, holds), else DATA's held-out eval split."""
    from ckm_edge.benchmarks import accuracy, tune

    if not args.exclude:
        return accuracy.load_held_out(args.data, args.tiles, seed=args.seed)
    try:
        val = tune.validation_tiles(args.data, args.tiles, exclude=args.exclude, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"ckm-bench accuracy: {e}") from None
    return accuracy.HeldOut(val.tiles, val.transmitters, val.description, val.heights)


def _cmd_accuracy(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import accuracy
    from ckm_edge.runtime.package import load_package
    from ckm_edge.runtime.recommend import read_section

    unknown = [t for t in args.tasks if t not in tasks.TASKS]
    if unknown:
        raise SystemExit(f"ckm-bench accuracy: unknown task(s) {unknown}; known: {', '.join(tasks.TASKS)}")
    try:
        samplers = read_section(args.samplers)[0] if args.samplers else None
    except ValueError as e:
        raise SystemExit(f"ckm-bench accuracy: {e}") from None
    cfg = accuracy.AccuracyConfig(precision=args.precision, seed=args.seed, max_nfe=args.max_nfe, samplers=samplers)
    held = _held_out(args)
    pkg = load_package(args.package)
    try:
        out = accuracy.run(args.package, args.checkpoints, held, tuple(args.tasks), cfg, progress=_progress,
                           journal=args.journal)
    except ValueError as e:
        raise SystemExit(f"ckm-bench accuracy: {e}") from None
    name = "accuracy-" + _data_slug(args.data) + ("-validation" if args.exclude else "") + (
        "-" + _slug(Path(args.samplers).stem) if args.samplers else "")
    command = (f"ckm-bench accuracy --data {args.data} --tiles {args.tiles} --package {args.package} "
               f"--checkpoints {args.checkpoints} --precision {args.precision} --tasks {' '.join(args.tasks)}"
               + (f" --exclude {' '.join(args.exclude)}" if args.exclude else "")
               + (f" --samplers {args.samplers}" if args.samplers else ""))
    results = {"config": vars(cfg), "tiles": len(held.tiles), "data": held.description, "validation": bool(args.exclude),
               "package": f"{pkg.name} {pkg.version}", "checkpoints": str(args.checkpoints),
               "tiles_digest": accuracy.tiles_digest(held.tiles), **out}
    if args.update:  # these tasks' rows replace theirs in the record; the others stay as measured
        import datetime

        from ckm_edge.benchmarks import machine
        from ckm_edge.runtime.package import sha256_file

        path = Path(args.results) / f"{name}.json"
        if not path.exists():
            raise SystemExit(f"ckm-bench accuracy --update: no record {path} to update; run it without --update first")
        record = report.read_record(path)
        run = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "machine": machine.describe(),
               "manifest": "sha256:" + sha256_file(Path(args.package) / "manifest.json"), "command": command + " --update"}
        first = {"date": record["date"], "machine": record["machine"], "manifest": None, "command": record["command"],
                 "tasks": list(record["results"].get("results", {}).get("paper", {}))}
        try:
            results = accuracy.update(record["results"], results, run, first)
        except ValueError as e:
            raise SystemExit(f"ckm-bench accuracy --update {path.name}: {e}") from None
        command = record["command"]  # the record's whole: every task it holds
    _store(args, name, "accuracy", command, results)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    import json

    from ckm_edge.benchmarks import tune
    from ckm_edge.runtime.package import load_package

    try:
        grid = {"samples": tuple(args.samples)} if args.samples else {}
        cfg = tune.TuneConfig(budget=args.budget, tasks=tuple(args.tasks), settings=tuple(args.settings), rounds=args.rounds,
                              seed=args.seed, coordinates=tuple(args.coordinates), **grid)
        val = tune.validation_tiles(args.data, args.tiles, exclude=args.exclude, split=args.split, seed=args.seed)
        start_from = None
        if args.samplers:
            from ckm_edge.runtime.recommend import read_section

            section, kinds = read_section(args.samplers)
            start_from = {k: section[k] for k in kinds}
    except ValueError as e:
        raise SystemExit(f"ckm-bench tune: {e}") from None
    pkg = load_package(args.package)
    try:
        out = tune.run(args.package, val, cfg, progress=_progress, journal=args.journal, start_from=start_from)
    except ValueError as e:
        raise SystemExit(f"ckm-bench tune: {e}") from None
    if args.out:
        Path(args.out).write_text(json.dumps({"samplers": out["samplers"]}, indent=1) + "\n")
    # a tuning at another budget than the default is its own record
    name = "tune-" + _slug(f"{pkg.name}-{pkg.version}") + (f"-budget-{args.budget}" if args.budget != tune.TuneConfig.budget else "")
    command = (f"ckm-bench tune --package {args.package} --data {args.data} --tiles {args.tiles} --budget {args.budget} "
               f"--tasks {' '.join(args.tasks)} --settings {' '.join(args.settings)} --rounds {args.rounds}"
               + (f" --coordinates {' '.join(args.coordinates)}" if tuple(args.coordinates) != tune.COORDINATES else "")
               + (f" --samples {' '.join(map(str, args.samples))}" if args.samples else "")
               + (f" --samplers {args.samplers}" if args.samplers else "")
               + (f" --exclude {' '.join(args.exclude)}" if args.exclude else ""))
    _store(args, name, "tune", command, {"config": vars(cfg), "tiles": len(val.tiles), "validation": val.description,
                                         "tile_keys": [list(k) for k in val.keys], "package": f"{pkg.name} {pkg.version}",
                                         **out}, say=f"; samplers section: {args.out}" if args.out else "")
    return 0


def _cmd_shift(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import accuracy, shift
    from ckm_edge.runtime.package import PackageError, load_package

    try:
        cfg = shift.ShiftConfig(rows=tuple(args.rows), settings=tuple(args.settings), seed=args.seed, precision=args.precision)
        held = accuracy.load_held_out(args.data, args.tiles, seed=0)
        pkg = load_package(args.package)
        out = shift.run(args.package, args.checkpoints, held, cfg, progress=_progress, journal=args.journal)
    except (ValueError, PackageError) as e:
        raise SystemExit(f"ckm-bench shift: {e}") from None
    command = (f"ckm-bench shift --data {args.data} --tiles {args.tiles} --package {args.package} "
               f"--checkpoints {args.checkpoints} --settings {' '.join(args.settings)} --seed {args.seed}"
               + (f" --rows {' '.join(args.rows)}" if tuple(args.rows) != tuple(shift.ROWS) else ""))
    _store(args, "shift-" + _data_slug(args.data), "shift", command,
           {"config": vars(cfg), "tiles": len(held.tiles), "data": held.description, "package": f"{pkg.name} {pkg.version}",
            "checkpoints": str(args.checkpoints), **out})
    return 0


def _cmd_sites(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import accuracy, sites

    try:
        cfg = sites.SitesConfig(batch=args.batch, batches=args.batches, seed=args.seed,
                                query_clients=tuple(args.clients), query_seconds=args.query_seconds, threads=args.threads,
                                query_workers=tuple(args.query_workers), load_generator=args.load_generator,
                                query_repeats=args.query_repeats, fresh_draws=args.fresh_draws)
        held = accuracy.load_held_out(args.data, args.tiles, seed=0)
        out = sites.run(args.repository, held, cfg, progress=_progress, workdir=args.workdir)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"ckm-bench sites: {e}") from None
    command = (f"ckm-bench sites --repository {args.repository} --data {args.data} --tiles {args.tiles} --batch {args.batch} "
               f"--batches {args.batches} --clients {' '.join(map(str, args.clients))} --query-seconds {args.query_seconds} "
               f"--query-workers {' '.join(map(str, args.query_workers))} --query-repeats {args.query_repeats} "
               f"--load-generator {args.load_generator} --fresh-draws {args.fresh_draws}")
    _store(args, "sites-" + _data_slug(args.data), "sites", command,
           {"config": vars(cfg), "tiles_count": len(held.tiles), "data": held.description, **out})
    return 0


def _cmd_uncertainty(args: argparse.Namespace) -> int:
    import json

    from ckm_edge.benchmarks import tune, uncertainty
    from ckm_edge.runtime.package import PackageError, load_package
    from ckm_edge.runtime.recommend import read_section
    from ckm_edge.runtime.tasks import PAPER_TASKS

    try:
        samplers = read_section(args.samplers)[0] if args.samplers else None
        if args.rebuilds and (args.tasks != ["drive"] or args.samplers):
            raise ValueError("--rebuilds fits drive tests' rebuilds: give --tasks drive and no --samplers")
        cfg = uncertainty.UncertaintyConfig(tasks=tuple(args.tasks), settings=tuple(args.settings), coverage=args.coverage,
                                            seed=args.seed, samplers=samplers,
                                            rebuilds=tuple(args.rebuilds) if args.rebuilds else None)
        val = tune.validation_tiles(args.data, args.tiles, exclude=args.exclude, split=args.split, seed=args.seed)
        pkg = load_package(args.package)
        current = pkg.manifest.uncertainty and pkg.manifest.uncertainty.to_dict()
        if args.write:  # what --write would refuse is refused before the constructions, not after
            merge = uncertainty.merge_constructions if args.samplers or args.rebuilds else uncertainty.merge_kinds
            merge(current, {"coverage": args.coverage, "kinds": {}})
        out = uncertainty.run(args.package, val, cfg, progress=_progress, cache=args.cache)
    except (ValueError, PackageError) as e:
        raise SystemExit(f"ckm-bench uncertainty: {e}") from None
    if args.out:
        Path(args.out).write_text(json.dumps({"uncertainty": out["uncertainty"]}, indent=1) + "\n")
    say = ""
    if args.write:  # into the package's section: the kinds fitted (merge_kinds), or fits at other constructions
        section = merge(current, out["uncertainty"])
        say = f"; written into {uncertainty.write_section(args.package, section)}"
        left = uncertainty.not_added(current, out["uncertainty"]) if merge is uncertainty.merge_constructions else []
        if left:
            say += (f"; NOT added: {', '.join(left)} (the package has no fit of its own for them to sit beside: "
                    "calibrate its default constructions for them first, `ckm-bench uncertainty --tasks ... --write`)")
    command = (f"ckm-bench uncertainty --package {args.package} --data {' '.join(args.data)} --tiles {args.tiles} "
               f"--tasks {' '.join(args.tasks)} --settings {' '.join(args.settings)} --coverage {args.coverage:g} --seed {args.seed}"
               + (f" --exclude {' '.join(args.exclude)}" if args.exclude else "")
               + (f" --samplers {args.samplers}" if args.samplers else "")
               + (f" --rebuilds {args.rebuilds[0]} {args.rebuilds[1]}" if args.rebuilds else ""))
    some = not set(PAPER_TASKS) <= set(args.tasks)  # a fit of a few kinds (e.g. --tasks drive): a record of its own
    name = ("uncertainty-" + _slug(f"{pkg.name}-{pkg.version}") + ("-" + _slug(Path(args.samplers).stem) if args.samplers else "")
            + ("-rebuilds" if args.rebuilds else "-" + "-".join(args.tasks) if some else ""))
    _store(args, name, "uncertainty", command,
           {"config": vars(cfg), "tiles": len(val.tiles), "validation": val.description,
            "tile_keys": [list(k) for k in val.keys], "package": f"{pkg.name} {pkg.version}", **out}, say=say)
    return 0


def _cmd_netsize(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import accuracy, netsize

    try:
        candidates = [netsize.parse_candidate(text) for text in args.networks]
    except ValueError as e:
        raise SystemExit(f"ckm-bench netsize: {e}") from None
    held = accuracy.load_held_out(args.data, args.tiles, seed=args.seed) if any(c.checkpoint for c in candidates) else None
    results = netsize.run(candidates, None if held is None else held.tiles, repeats=args.repeats, device=args.device,
                          progress=_progress)
    if held is not None:
        results["held_out"] = {"tiles": len(held.tiles), "data": held.description}
    command = (f"ckm-bench netsize --networks {' '.join(args.networks)} --repeats {args.repeats}"
               + (f" --data {args.data} --tiles {args.tiles}" if held is not None else ""))
    _store(args, "netsize-cpu", "netsize", command, results)
    return 0


def _cmd_solvers(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import accuracy, solvers
    from ckm_edge.runtime.package import load_package

    cfg = solvers.SolverBenchConfig(nfe=tuple(args.nfe), samplers=tuple(args.samplers), curve_samples=args.curve_samples,
                                    curve_tasks=tuple(args.curve_tasks), tasks=tuple(args.tasks), precision=args.precision,
                                    other_precisions=tuple(p for p in args.other_precisions if p != args.precision),
                                    seed=args.seed)
    tiles, description = accuracy.load_tiles(args.data, args.tiles, seed=args.seed)
    pkg = load_package(args.package)
    results = solvers.run(args.package, tiles, cfg, progress=_progress)
    name = f"solvers-{_data_slug(args.data)}"
    png = solvers.plot(results["curve"], results["default"], args.results / f"{name}.png") if results["curve"] else None
    command = (f"ckm-bench solvers --data {args.data} --tiles {args.tiles} --nfe {' '.join(map(str, args.nfe))} "
               f"--samplers {' '.join(args.samplers)} --curve-samples {args.curve_samples} "
               f"--curve-tasks {' '.join(args.curve_tasks)} --tasks {' '.join(args.tasks)}"
               + (f" --other-precisions {' '.join(args.other_precisions)}" if args.other_precisions else ""))
    _store(args, name, "solvers", command, {
        "config": vars(cfg), "tiles": len(tiles), "data": description, "package": f"{pkg.name} {pkg.version}",
        "recommendations": {kind: r.to_dict() for kind, r in pkg.recommendations().items()},
        "plot": None if png is None else png.name, **results})
    return 0


def _cmd_memory(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import memory

    results = memory.run(args.package, args.precisions, args.batches, args.steps, tuple(args.samplers))
    command = (f"ckm-bench memory --package {args.package} --precisions {' '.join(args.precisions)} "
               f"--batches {' '.join(map(str, args.batches))} --samplers {' '.join(args.samplers)}")
    _store(args, "memory-cpu", "memory", command, results)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import sweep
    from ckm_edge.runtime.package import load_package

    ref_zeta = args.reference_zeta
    points = [sweep.Point(z, s, "fp32", False) for z in args.zetas for s in args.steps]
    points += [sweep.Point(ref_zeta, args.steps[0], p, False) for p in args.precisions if p != "fp32"]
    if args.jacobian_free:
        points.append(sweep.Point(ref_zeta, args.steps[0], "fp32", True))
    tiles = sweep.validation_tiles(args.tiles, load_package(args.package).tile_size, seed=args.seed)
    results = sweep.run(args.package, points, tuple(args.tasks), tiles, seed=args.seed, progress=_progress)
    png = sweep.plot(results["rows"], args.results / "sweep-zeta.png")
    command = (f"ckm-bench sweep --zetas {' '.join(f'{z:g}' for z in args.zetas)} --steps {' '.join(map(str, args.steps))} "
               f"--precisions {' '.join(args.precisions)} --tiles {args.tiles}" + (" --jacobian-free" if args.jacobian_free else ""))
    _store(args, "sweep-cpu", "sweep", command, {**results, "plot": None if png is None else png.name})
    return 0


def _cmd_gpu(args: argparse.Namespace) -> int:
    import torch

    from ckm_edge.benchmarks import gpu, sweep
    from ckm_edge.runtime.package import load_package
    from ckm_edge.training import procedural
    from ckm_edge.training.checkpoint import load_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("ckm-bench gpu: no CUDA device visible to PyTorch (run it on a GPU machine, or --device cpu)")
    pkg = load_package(args.package)
    model, meta = load_model(args.checkpoint)
    tile, _ = procedural.generate_region(procedural.ProceduralConfig(tile_size=pkg.tile_size), "eval", 0, 1, seed=7)
    tiles = sweep.validation_tiles(args.tiles, pkg.tile_size, seed=args.seed)
    cfg = gpu.GpuBenchConfig(steps=args.steps, batches=tuple(args.batches), precisions=tuple(args.precisions),
                             step_counts=tuple(args.step_counts), tiles=args.tiles, tasks=tuple(args.tasks),
                             zeta=args.zeta, reference_steps=args.reference_steps, seed=args.seed,
                             time_budget_s=args.time_budget)
    results = gpu.run(model, meta, tile[0], tiles, cfg, device=args.device, progress=_progress)
    results["package"] = f"{pkg.name} {pkg.version}"
    if isinstance(results.get("steps_curve"), list) and results["steps_curve"]:
        gpu.plot_steps(results["steps_curve"], args.results / "steps-curve.png")
    command = (f"ckm-bench gpu --device {args.device} --steps {args.steps} --batches {' '.join(map(str, args.batches))} "
               f"--precisions {' '.join(args.precisions)} --step-counts {' '.join(map(str, args.step_counts))} "
               f"--tiles {args.tiles}")
    _store(args, "gpu-" + re.sub(r"[^a-z0-9]+", "-", results["device"].lower()).strip("-"), "gpu", command, results)
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from ckm_edge.benchmarks import adapt
    from ckm_edge.runtime.package import load_package
    from ckm_edge.training.checkpoint import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pkg = load_package(args.package)
    large, meta = load_model(args.checkpoint)
    meta = dict(meta, tile_size=pkg.tile_size)
    try:
        cfg = adapt.AdaptBenchConfig(site_preset=args.site_preset, site_region=args.site_region, counts=tuple(args.counts),
                                     test_tiles=args.test_tiles, tasks=tuple(args.tasks), steps=args.steps, zeta=args.zeta,
                                     generic_tiles=args.generic_tiles, reference_steps=args.reference_steps,
                                     proxy_steps=args.proxy_steps, finetune_steps=args.finetune_steps,
                                     batch_size=args.batch_size, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"ckm-bench adapt: {e}") from None
    about = {"package": f"{pkg.name} {pkg.version}",
             "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"}
    command = (f"ckm-bench adapt --device {device} --counts {' '.join(map(str, args.counts))} --test-tiles {args.test_tiles} "
               f"--tasks {' '.join(args.tasks)} --steps {args.steps} --reference-steps {args.reference_steps} "
               f"--proxy-steps {args.proxy_steps} --finetune-steps {args.finetune_steps} --batch-size {args.batch_size}")
    name = f"site-adaptation-{'gpu' if device.startswith('cuda') else 'cpu'}"

    def write(results: dict) -> None:  # after every method: a run stopped early keeps what it measured
        report.write_result(name, "adapt", command, {**results, **about}, results_dir=args.results)

    with tempfile.TemporaryDirectory(prefix="ckm-adapt-") as work:
        results = adapt.run(large, meta, cfg, Path(work), device=device, workers=args.workers, progress=_progress,
                            on_result=write)
    _store(args, name, "adapt", command, {**results, **about})
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    results_dir = Path(args.results)
    try:
        if args.notes:
            notes = report.start_notes(results_dir, args.notes)
            print(f"notes: {notes} (edit it, then run `ckm-bench report` again)")
        out = report.regenerate(results_dir, report.results_md(results_dir))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"report: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckm-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=report.DEFAULT_RESULTS_DIR,
                        help="directory for the JSON results; RESULTS.md is regenerated beside it "
                             "(default: %(default)s under the working directory)")
    sub = parser.add_subparsers(dest="command", required=True)
    proc = sub.add_parser("procedural", help="procedural tile generation throughput")
    proc.add_argument("--tiles", type=int, default=1000)
    proc.add_argument("--workers", type=int, default=None, help="processes (default: usable cores)")
    proc.set_defaults(func=_cmd_procedural)
    lat = sub.add_parser("latency", help="runtime vs PyTorch reference per-step latency on CPU")
    lat.add_argument("--package", default=DEFAULT_PACKAGE)
    lat.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    lat.add_argument("--steps", type=int, default=10)
    lat.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    lat.add_argument("--threads", type=int, default=0)
    lat.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="engine and PyTorch reference device")
    lat.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    lat.add_argument("--no-compare-backends", dest="compare_backends", action="store_false",
                     help="skip the ONNX Runtime vs OpenVINO comparison per precision (CPU only)")
    lat.add_argument("--repeats", type=int, default=5, help="timed calls per point of the backend comparison")
    lat.set_defaults(func=_cmd_latency)
    ld = sub.add_parser("load", help="gRPC service throughput and p50/p95/p99 latency for 1..N concurrent clients")
    ld.add_argument("--repository", default="models/repository", help="serve this repository in-process")
    ld.add_argument("--server", help="or load an already running server, host:port")
    ld.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    ld.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    ld.add_argument("--steps", type=int, default=0, help="steps per request (0 = the recommendation's)")
    ld.add_argument("--mix", choices=["uniform", "mixed"], default="uniform",
                    help="one setting for every request, or mixed samplers/steps/samples/precisions")
    ld.add_argument("--max-queue", type=int, default=64)
    ld.add_argument("--max-batch-memory-mib", type=float, default=1024, help="the server's batch memory budget")
    ld.add_argument("--no-retry", action="store_true", help="count RESOURCE_EXHAUSTED as errors instead of retrying")
    ld.add_argument("--task", default="ipbox")
    ld.add_argument("--precision", default=defaults.PRECISION, choices=defaults.PRECISIONS)
    ld.add_argument("--max-batch", type=int, default=8)
    ld.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    ld.add_argument("--threads", type=int, default=0, help="engine threads (0 = one per CPU this process may run on)")
    ld.set_defaults(func=_cmd_load)
    ph = sub.add_parser("physics", help="ckm-site/2's physics channels: milliseconds per map, and their agreement with "
                                        "ray-traced tiles in line-of-sight cells")
    ph.add_argument("--data", type=Path, default=Path("datasets/sionna-rt-small"), help="a ray-traced dataset")
    ph.add_argument("--splits", nargs="+", default=["train", "eval"])
    ph.add_argument("--repeats", type=int, default=5)
    ph.add_argument("--limit", type=int, default=None, help="at most this many tiles per split")
    ph.set_defaults(func=_cmd_physics)
    rt = sub.add_parser("raytrace", help="seconds per ray-traced tile (Sionna RT) on this machine's CPU or GPU")
    rt.add_argument("--scene", default="munich")
    rt.add_argument("--tiles", type=int, default=2)
    rt.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    rt.set_defaults(func=_cmd_raytrace)
    sw = sub.add_parser("sweep", help="RMSE vs zeta / steps / precision, guided vs Jacobian-free (paper Fig. 11)")
    sw.add_argument("--package", default=DEFAULT_PACKAGE)
    sw.add_argument("--zetas", type=float, nargs="+", default=[2.0, 5.0, 9.0, 13.0, 18.0])
    sw.add_argument("--steps", type=int, nargs="+", default=[25])
    sw.add_argument("--precisions", nargs="+", default=list(defaults.PRECISIONS), choices=defaults.PRECISIONS)
    sw.add_argument("--reference-zeta", type=float, default=defaults.ZETA, help="zeta for the precision / Jacobian-free points")
    sw.add_argument("--jacobian-free", action="store_true", help="add a Jacobian-free point")
    sw.add_argument("--tasks", nargs="+", default=["ipbox", "iprandom", "sr2", "jtqr"])
    sw.add_argument("--tiles", type=int, default=2)
    sw.add_argument("--seed", type=int, default=0)
    sw.set_defaults(func=_cmd_sweep)
    so = sub.add_parser("solvers", help="samplers: RMSE vs network evaluations; the default construction vs classical "
                                        "interpolation, with and without the site map")
    so.add_argument("--package", default=DEFAULT_PACKAGE)
    so.add_argument("--data", default="procedural", help="'procedural' (held-out v1 regions) or a dataset directory")
    so.add_argument("--tiles", type=int, default=8)
    so.add_argument("--nfe", type=int, nargs="*", default=[4, 10, 20, 50, 100])
    so.add_argument("--samplers", nargs="*", default=["diffpir", "daps", "dps"])
    so.add_argument("--curve-samples", type=int, default=1)
    so.add_argument("--curve-tasks", nargs="*", default=["ipbox", "iprandom", "sr2", "jtqr"])
    so.add_argument("--tasks", nargs="+", default=list(tasks.TASKS))
    so.add_argument("--precision", default=defaults.PRECISION, choices=defaults.PRECISIONS)
    so.add_argument("--other-precisions", nargs="*", default=[], choices=defaults.PRECISIONS,
                    help="the default construction again with these precisions (accuracy change, seconds)")
    so.add_argument("--seed", type=int, default=0)
    so.set_defaults(func=_cmd_solvers)

    ns = sub.add_parser("netsize", help="network size against edge cost (parameters, FLOPs, CPU latency, package size) "
                                        "and, for trained priors, accuracy")
    ns.add_argument("--networks", nargs="+", default=["tiny", "small", "medium", "base"],
                    help="U-Net presets (cost only) or LABEL=CHECKPOINT for trained priors (cost and accuracy)")
    ns.add_argument("--data", default="procedural", help="held-out tiles for the accuracy of trained priors")
    ns.add_argument("--tiles", type=int, default=8)
    ns.add_argument("--repeats", type=int, default=10)
    ns.add_argument("--device", default="cpu", help="torch device for the accuracy constructions")
    ns.add_argument("--seed", type=int, default=0)
    ns.set_defaults(func=_cmd_netsize)

    mem = sub.add_parser("memory", help="peak resident memory of the edge engine per precision and batch; package sizes")
    mem.add_argument("--package", default=DEFAULT_PACKAGE)
    mem.add_argument("--precisions", nargs="+", default=list(defaults.PRECISIONS), choices=defaults.PRECISIONS)
    mem.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    mem.add_argument("--steps", type=int, default=3)
    mem.add_argument("--samplers", nargs="+", default=["dps", "diffpir"], help="samplers to measure (their recommended settings)")
    mem.set_defaults(func=_cmd_memory)
    acc = sub.add_parser("accuracy", help="the foundation's default construction vs end-to-end baselines and classical "
                                          "interpolation on held-out tiles, paper and site settings")
    acc.add_argument("--data", default="datasets/sionna-rt-small", help="dataset dir (its eval split) or 'procedural'")
    acc.add_argument("--tiles", type=int, default=8)
    acc.add_argument("--tasks", nargs="+", default=list(tasks.TASKS))
    acc.add_argument("--package", default=DEFAULT_PACKAGE)
    acc.add_argument("--checkpoints", default="models/checkpoints",
                     help="directory of the end-to-end baselines: baseline-<task>.pt, baseline-multi.pt and the "
                          "site-aware baseline-<task>-site.pt, baseline-multi-site.pt")
    acc.add_argument("--max-nfe", type=int, default=100, help="network evaluations per posterior sample allowed to the "
                                                             "package's default construction")
    acc.add_argument("--samplers", help="constructions to run instead of the package's defaults: a tuned samplers file "
                                        "(`ckm-bench tune --budget N --out FILE`); the report is accuracy-<data>-<file stem>")
    acc.add_argument("--precision", default=defaults.PRECISION, choices=defaults.PRECISIONS)
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--journal", help="JSONL file of the maps measured: a run given it again resumes where it stopped")
    acc.add_argument("--update", action="store_true",
                     help="measure only --tasks again and replace their rows in the existing record (the same data, "
                          "tiles, configuration, package and baselines; refused otherwise); the other tasks' rows are "
                          "kept as measured, and the record says which run measured which tasks")
    acc.add_argument("--exclude", nargs="+", metavar="TRAINED",
                     help="validation instead of held-out tiles: DATA's training split minus every tile of these "
                          "datasets (what the prior and baselines read), for choosing between candidates without "
                          "touching the held-out split; the report is accuracy-<data>-validation")
    acc.set_defaults(func=_cmd_accuracy)
    tu = sub.add_parser("tune", help="tune a package's default constructions (sampler parameters, steps x samples "
                                     "within a budget) on validation tiles; writes a manifest samplers section")
    tu.add_argument("--package", default=DEFAULT_PACKAGE)
    tu.add_argument("--data", default="procedural",
                    help="'procedural' (validation regions) or a dataset whose training split minus --exclude is validation")
    tu.add_argument("--exclude", nargs="*", default=[], metavar="DATASET",
                    help="the datasets the prior was trained on: their tiles (region, index) are left out")
    tu.add_argument("--split", default="train", help="the dataset split to draw from (an eval split is refused)")
    tu.add_argument("--tiles", type=int, default=12)
    tu.add_argument("--budget", type=int, default=25, help="network evaluations per construction (samples x per sample)")
    tu.add_argument("--tasks", nargs="+", default=["ipbox", "iprandom", "sr2", "jtqr"])
    tu.add_argument("--settings", nargs="+", default=["paper", "site"], choices=["paper", "site"])
    tu.add_argument("--rounds", type=int, default=2)
    from ckm_edge.benchmarks.tune import COORDINATES, TuneConfig
    tu.add_argument("--coordinates", nargs="+", default=list(COORDINATES), choices=list(COORDINATES),
                    help="what the search varies (default: all); e.g. `split` alone: how a larger budget is best spent")
    tu.add_argument("--samples", type=int, nargs="+", metavar="N",
                    help=f"the posterior-sample counts the split tries (default {' '.join(map(str, TuneConfig.samples))})")
    tu.add_argument("--samplers", metavar="FILE",
                    help="start from this tuned table (ckm-bench tune --out) instead of the package's recommendations")
    tu.add_argument("--seed", type=int, default=1)
    tu.add_argument("--out", help="write the tuned manifest section here ({\"samplers\": ...}) for ckm-export package --samplers")
    tu.add_argument("--journal", help="JSONL file of the points measured: a run given it again resumes where it stopped")
    tu.set_defaults(func=_cmd_tune)

    from ckm_edge.benchmarks.shift import ROWS
    sh = sub.add_parser("shift", help="observations none of the methods was tuned for (larger boxes, sparse and dense "
                                      "masks, SR x4, other noise, other JTQR, trajectories, composed): the foundation "
                                      "vs the end-to-end networks and classical fills on held-out tiles")
    sh.add_argument("--data", default="datasets/sionna-rt-small", help="dataset dir (its eval split)")
    sh.add_argument("--tiles", type=int, default=16)
    sh.add_argument("--package", default=DEFAULT_PACKAGE)
    sh.add_argument("--checkpoints", default="models/checkpoints",
                    help="directory of the end-to-end baselines (baseline-<task>[-site].pt, baseline-multi[-site].pt)")
    sh.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    sh.add_argument("--settings", nargs="+", default=["paper", "site"], choices=["paper", "site"])
    sh.add_argument("--precision", default=defaults.PRECISION, choices=defaults.PRECISIONS)
    sh.add_argument("--seed", type=int, default=5)
    sh.add_argument("--journal", help="JSONL file of the maps measured: a run given it again resumes where it stopped")
    sh.set_defaults(func=_cmd_shift)

    si = sub.add_parser("sites", help="living maps: drive tests streamed into an edge server's SiteService (accuracy "
                                      "against measurements, incremental vs fresh rebuilds, QueryPoints latency)")
    si.add_argument("--repository", default="models/repository")
    si.add_argument("--data", default="datasets/sionna-rt-small", help="dataset dir (its eval split)")
    si.add_argument("--tiles", type=int, default=8)
    si.add_argument("--batch", type=int, default=64, help="measurements per batch (one map version each)")
    si.add_argument("--batches", type=int, default=8)
    si.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    si.add_argument("--query-seconds", type=float, default=5.0)
    si.add_argument("--query-workers", type=int, nargs="+", default=[1, 2],
                    help="`ckm-edge serve --workers` of the servers the QueryPoints load runs against")
    si.add_argument("--query-repeats", type=int, default=3, help="runs per (workers, clients); the median p99's run is shown")
    si.add_argument("--load-generator", choices=["auto", "h2load", "python"], default="auto",
                    help="h2load (apt-get install nghttp2-client; auto: where installed) or Python client processes")
    si.add_argument("--threads", type=int, default=0, help="the server's engine threads")
    si.add_argument("--fresh-draws", type=int, default=2,
                    help="fresh constructions per version, each its own seed (the sampler's own spread)")
    si.add_argument("--seed", type=int, default=7)
    si.add_argument("--workdir", help="where the server's store and log go (default: a temp dir)")
    si.set_defaults(func=_cmd_sites)

    ca = sub.add_parser("uncertainty", help="calibrate the std a package reports (and its interval), per operator kind "
                                            "and setting, on validation tiles; --write puts it into the manifest")
    ca.add_argument("--package", default=DEFAULT_PACKAGE)
    ca.add_argument("--data", nargs="+", default=["procedural"],
                    help="'procedural' (validation regions) or a dataset whose training split minus --exclude is validation; "
                         "several (generated cities, a real city's validation tiles): --tiles from each, the interval "
                         "fitted to hold on each")
    ca.add_argument("--exclude", nargs="*", default=[], metavar="DATASET",
                    help="the datasets the prior was trained on: their tiles (region, index) are left out")
    ca.add_argument("--split", default="train", help="the dataset split to draw from (an eval split is refused)")
    ca.add_argument("--tiles", type=int, default=24)
    ca.add_argument("--tasks", nargs="+", default=["ipbox", "iprandom", "sr2", "jtqr", "trajectory", "drive"])
    ca.add_argument("--settings", nargs="+", default=["paper", "site"], choices=["paper", "site"])
    ca.add_argument("--coverage", type=float, default=0.9, help="what the central interval must hold")
    ca.add_argument("--seed", type=int, default=2)
    ca.add_argument("--samplers", metavar="FILE", help="constructions to calibrate instead of the package's defaults: a "
                                                       "tuned samplers file (`ckm-bench tune --budget N --out FILE`)")
    ca.add_argument("--rebuilds", type=int, nargs=2, metavar=("BATCH", "BATCHES"),
                    help="fit a living map's incremental rebuilds instead: on each tile a drive test of BATCHES batches "
                         "of BATCH readings streamed into a site (runtime.sites, in process), every map after the "
                         "first warm-started from the one before (--tasks drive; --write adds the fit as the kind's "
                         "fit at the rebuild's construction, read only by rebuilds)")
    ca.add_argument("--out", help="also write the section here ({\"uncertainty\": ...})")
    ca.add_argument("--write", action="store_true", help="write the fits into the package's manifest.json: each kind "
                                                         "fitted replaces its entry, the others are kept (with --samplers: "
                                                         "they join the kinds' entries as fits of those constructions, "
                                                         "which the runtime applies where a request runs one)")
    ca.add_argument("--cache", help=".npz file keeping the constructions: a run given it again (same package, tiles, "
                                    "settings) fits from them, or resumes where it stopped")
    ca.set_defaults(func=_cmd_uncertainty)

    ad = sub.add_parser("adapt", help="site adapters (LASCO) vs foundation alone vs full fine-tuning, with training cost")
    ad.add_argument("--package", default=DEFAULT_PACKAGE)
    ad.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="the package's PyTorch weights")
    ad.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    ad.add_argument("--site-preset", default="calibrated")
    ad.add_argument("--site-region", type=int, default=100)
    ad.add_argument("--counts", type=int, nargs="+", default=[16, 64, 256])
    ad.add_argument("--test-tiles", type=int, default=8)
    ad.add_argument("--tasks", nargs="+", default=["ipbox", "iprandom", "sr2", "jtqr"])
    ad.add_argument("--steps", type=int, default=defaults.RECORD_DPS_STEPS)
    ad.add_argument("--zeta", type=float, default=defaults.ZETA)
    ad.add_argument("--generic-tiles", type=int, default=1024)
    ad.add_argument("--reference-steps", type=int, default=2000)
    ad.add_argument("--proxy-steps", type=int, default=500)
    ad.add_argument("--finetune-steps", type=int, default=500)
    ad.add_argument("--batch-size", type=int, default=16)
    ad.add_argument("--workers", type=int, default=1, help="processes generating the procedural tiles")
    ad.add_argument("--seed", type=int, default=0)
    ad.set_defaults(func=_cmd_adapt)
    gp = sub.add_parser("gpu", help="construction latency/throughput, reference ratios and RMSE vs steps on a GPU (PyTorch CUDA)")
    gp.add_argument("--package", default=DEFAULT_PACKAGE)
    gp.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="the package's PyTorch weights")
    gp.add_argument("--device", default="cuda")
    gp.add_argument("--steps", type=int, default=defaults.RECORD_DPS_STEPS)
    gp.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128, 256, 512])
    gp.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16", "fp16"], choices=["fp32", "tf32", "bf16", "fp16"])
    gp.add_argument("--step-counts", type=int, nargs="+", default=[20, 50, 100, 200, 500, 1000])
    gp.add_argument("--tiles", type=int, default=8)
    gp.add_argument("--tasks", nargs="+", default=["ipbox", "iprandom", "sr2", "jtqr"])
    gp.add_argument("--zeta", type=float, default=defaults.ZETA)
    gp.add_argument("--reference-steps", type=int, default=20)
    gp.add_argument("--seed", type=int, default=0)
    gp.add_argument("--time-budget", type=float, default=float("inf"),
                    help="seconds; steps-curve runs that would end later are skipped (and reported missing)")
    gp.set_defaults(func=_cmd_gpu)
    rp = sub.add_parser("report", help="regenerate RESULTS.md from the records (and their hand-written notes)")
    rp.add_argument("--notes", metavar="NAME", help="start the notes file of record NAME (headed with its date)")
    rp.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
