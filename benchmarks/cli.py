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
    ckm-bench adapt [--device cuda] [--counts 16 64 256]     (site adapters vs fine-tuning)
    ckm-bench gpu [--device cuda] [--batches 1 8 32 128 256 512] [--step-counts 20 50 100 200 500 1000]
    ckm-bench report [--notes NAME]     (RESULTS.md again, e.g. after writing a record's notes; --notes:
                                         start NAME.notes.md, headed with the record it explains)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ckm_edge.benchmarks import report
from ckm_edge.runtime import defaults

DEFAULT_PACKAGE = "models/repository/ckm-prior/1.0.0"  # the embedded default model
DEFAULT_CHECKPOINT = "models/checkpoints/prior-small.pt"  # its PyTorch weights


def _cmd_procedural(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import procedural

    results, markdown = procedural.run(tiles=args.tiles, workers=args.workers)
    command = f"ckm-bench procedural --tiles {args.tiles}" + (f" --workers {args.workers}" if args.workers else "")
    path = report.write_result("procedural-generator", command, results, markdown, results_dir=args.results)
    print(markdown)
    print(f"results: {path}; report: {report.results_md(args.results)}")
    return 0


def _cmd_latency(args: argparse.Namespace) -> int:
    import collections

    import onnx

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
    tile, _ = procedural.generate_region(procedural.ProceduralConfig(tile_size=pkg.tile_size), "eval", 0, 1, seed=7)
    tile = tile[0]
    steps = args.steps
    where = {"device": args.device, "backend": args.backend}
    engine_label = "TensorRT" if args.backend == "tensorrt" else f"ORT {args.device.upper()}"
    rows, results = [], {"steps_timed": steps, "threads": args.threads or "default", "package": f"{pkg.name} {pkg.version}"}
    torch_m1 = latency.torch_step(model, meta["schedule"], tile, steps, corrector=1, threads=args.threads, device=args.device)
    torch_m2 = latency.torch_step(model, meta["schedule"], tile, steps, corrector=2, threads=args.threads, device=args.device)
    results["torch_reference"] = {"M1_step_s": torch_m1, "M2_paper_step_s": torch_m2}
    flops = latency.network_flops(model, pkg.tile_size)
    if args.device == "cuda":
        import torch

        from ckm_edge.benchmarks.gpu import matmul_rate

        gflops = matmul_rate(torch.device("cuda"), torch.float32) / 1e9
    else:
        gflops = latency.machine_gflops()
    floor_m1 = (2 * flops["forward"] + flops["backward"]) / (gflops * 1e9)
    results.update(flops=flops, machine_gflops=round(gflops, 1), floor_M1_step_s=floor_m1)
    rows.append(f"| PyTorch reference, autograd (M=1) | 1 | {torch_m1 * 1e3:.1f} | | | 1.00 | {torch_m1 / floor_m1:.1f}x |")
    rows.append(f"| PyTorch reference, paper config (M=2: 3 fwd + 1 bwd) | 1 | {torch_m2 * 1e3:.1f} | | | {torch_m1 / torch_m2:.2f} | |")
    results["runtime"] = {}
    for precision in pkg.precisions:
        for batch in args.batches:
            r = latency.runtime_step(pkg, tile, precision, steps, batch=batch, threads=args.threads, **where)
            results["runtime"][f"{precision}-b{batch}"] = r
            per_map = r["step_s"] / batch
            rows.append(f"| runtime {engine_label} {precision}, guided (M=1) | {batch} | {r['step_s'] * 1e3:.1f} | "
                        f"{r['engine_s'] * 1e3:.1f} | {r['overhead_s'] * 1e3:.1f} | {torch_m1 / per_map:.2f} | "
                        f"{per_map / floor_m1:.1f}x |")
    jf = latency.runtime_step(pkg, tile, "fp32", steps, jacobian_free=True, threads=args.threads, **where)
    results["runtime"]["fp32-b1-jacobian-free"] = jf
    rows.append(f"| runtime {engine_label} fp32, Jacobian-free (M=1) | 1 | {jf['step_s'] * 1e3:.1f} | {jf['engine_s'] * 1e3:.1f} | "
                f"{jf['overhead_s'] * 1e3:.1f} | {torch_m1 / jf['step_s']:.2f} | |")
    fp32 = results["runtime"]["fp32-b1"]["step_s"]
    ratio = torch_m1 / fp32
    results["speedup_fp32_vs_torch"] = ratio
    target = "met" if ratio >= 2.5 else "MISSED"
    constructions = latency.construction_times(pkg, tile, threads=args.threads) if args.device == "cpu" else []
    results["constructions"] = constructions
    bwd_ops = collections.Counter(n.op_type for n in onnx.load(str(pkg.graph_path("fp32", "backward")),
                                                               load_external_data=False).graph.node)
    markdown = "\n".join([
        f"Per DPS step on `{pkg.name} {pkg.version}` ({pkg.tile_size}x{pkg.tile_size}), {steps} timed steps, "
        f"IPbox observation. Network: {flops['forward'] / 1e9:.2f} GFLOP forward, {flops['backward'] / 1e9:.2f} GFLOP "
        f"input-gradient backward; this machine's float32 matmul rate {gflops:.0f} GFLOP/s, so a guided step "
        f"(2 forwards + 1 backward) cannot take less than {floor_m1 * 1e3:.1f} ms.",
        "",
        "| path | batch | ms/step | engine ms | loop ms | speed-up vs PyTorch (per map) | x floor (per map) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        (f"Target: runtime per-step time on CPU at least 2.5x faster than the PyTorch reference: {ratio:.2f}x, {target}."
         if args.device == "cpu" else f"Runtime vs PyTorch reference on {args.device}, same run: {ratio:.2f}x "
              "(the 2.5x target is stated for CPUs)."),
        *([] if ratio >= 2.5 or args.device != "cpu" else [
            "",
            "Why: the guided step is engine bound (the loop adds ~2 ms) and runs the same network FLOPs as "
            "PyTorch's autograd on the same cores, so per-step parity, not 2.5x, is what kernels alone can give; "
            f"this package's backward graph holds {bwd_ops.get('ConvTranspose', 0)} ConvTranspose and "
            f"{bwd_ops.get('Conv', 0)} Conv nodes"
            + (" (exported before stride-1 input gradients became plain convolutions over flipped kernels; "
               "packages exported now have ConvTranspose only for strided convolutions)"
               if bwd_ops.get("ConvTranspose", 0) > bwd_ops.get("Conv", 0) else "")
            + ". A 2.5x per-step ratio on a CPU needs fewer network evaluations per step: the Jacobian-free "
            f"step, which skips the backward graph, is {torch_m1 / jf['step_s']:.1f}x faster than the reference."]),
        *([] if not constructions else [
            "",
            "Whole constructions, seconds per map, same tile and engine in this run: the paper's DPS (50 steps, M = 1, "
            "one sample: 150 network evaluations) against the default construction (the package's recommended sampler, "
            "steps and posterior samples, run as one batch).",
            "",
            "| task | DPS, 50 steps (s) | default construction | default (s) | speed-up |",
            "|---|---:|---|---:|---:|",
            *[f"| {r['task']} | {r['dps_s']:.2f} | {r['default']} | {r['default_s']:.2f} | {r['dps_s'] / r['default_s']:.1f}x |"
              for r in constructions],
            "",
            "Target: a construction with the default settings in at most 2 s per map on this CPU: "
            + ("met" if all(r["default_s"] <= 2.0 for r in constructions) else "MISSED") + " ("
            + ", ".join(f"{r['task']} {r['default_s']:.2f} s" for r in constructions) + ")."]),
    ])
    name = "latency-tensorrt" if args.backend == "tensorrt" else f"latency-{args.device}"
    command = f"ckm-bench latency --steps {steps}" + ("" if args.device == "cpu" else f" --device {args.device}") + (
        "" if args.backend == "onnxruntime" else f" --backend {args.backend}")
    path = report.write_result(name, command, results, markdown, results_dir=args.results)
    print(markdown)
    print(f"results: {path}")
    if args.device == "cpu" and args.compare_backends:
        _latency_backends(args, pkg, tile)
    return 0


def _latency_backends(args: argparse.Namespace, pkg, tile) -> None:
    """ONNX Runtime (its default: the score graph's workers spin; every graph's; none) and OpenVINO per precision, same run."""
    import numpy as np

    from ckm_edge.benchmarks import latency
    from ckm_edge.runtime import tasks
    from ckm_edge.runtime.recommend import resolve

    rows = latency.backend_comparison(pkg, tile, pkg.precisions, threads=args.threads, repeats=args.repeats)
    _, steps, samples = resolve(pkg.manifest, tasks.make_operator("sr2", np.random.default_rng(1), tile[None]))
    markdown = latency.backend_markdown(rows, pkg, f"{steps} steps x {samples} samples")
    command = "ckm-bench latency" + (f" --threads {args.threads}" if args.threads else "")
    path = report.write_result("latency-backends-cpu", command, {"rows": rows, "package": f"{pkg.name} {pkg.version}"},
                               markdown, results_dir=args.results)
    print(markdown)
    print(f"results: {path}; report: {report.results_md(args.results)}")


def _cmd_load(args: argparse.Namespace) -> int:
    import numpy as np

    from ckm_edge.benchmarks import load
    from ckm_edge.runtime import tasks
    from ckm_edge.runtime.client import EdgeClient
    from ckm_edge.training import procedural

    if any(c < 1 for c in args.clients) or args.duration <= 0:
        raise SystemExit("ckm-bench load: --clients must be >= 1 and --duration > 0")
    edge = None
    if args.server:
        target = args.server
    else:
        from ckm_edge.runtime.server import ServerConfig, create_server

        edge = create_server(ServerConfig(repository=args.repository, port=0, poll_seconds=0, max_batch=args.max_batch,
                                          max_queue_delay_ms=args.max_queue_delay_ms, max_queue=args.max_queue,
                                          max_batch_memory_mib=args.max_batch_memory_mib,
                                          engine_threads=args.threads)).start()
        target = f"127.0.0.1:{edge.port}"
    try:
        with EdgeClient(target) as client:
            tile_size = client.metadata().tile_size
        tile, _ = procedural.generate_region(procedural.ProceduralConfig(tile_size=tile_size), "eval", 0, 1, seed=7)
        rng = np.random.default_rng(0)
        op = tasks.make_operator(args.task, rng, tile)
        y = tasks.observe(op, tile, rng)[0]
        if args.mix == "mixed":
            kwargs = load.mixed(args.steps or 10)
            setting = ("mixed settings, each client cycling through: "
                       + "; ".join(", ".join(f"{k} {v}" for k, v in m.items()) for m in kwargs))
        else:
            kwargs = {"steps": args.steps, "precision": args.precision}
            setting = (f"the recommended sampler, {args.steps or 'recommended'} steps and samples (samples capped at the "
                       f"max batch), {args.precision}")
        levels = []
        for clients in args.clients:
            level = load.run_level(target, y, op, clients, args.duration, kwargs, edge, retry=not args.no_retry)
            print(level.row(), flush=True)
            levels.append(level)
    finally:
        if edge is not None:
            edge.stop(0)
    where = f"server {args.server}" if args.server else (
        f"in-process server on `{args.repository}` (max batch {args.max_batch}, max queue delay {args.max_queue_delay_ms} ms, "
        f"max queue {args.max_queue}, batch memory budget {args.max_batch_memory_mib:g} MiB)")
    text = load.markdown(levels, f"gRPC Construct load on {where}: task {args.task}, {setting}; {args.duration:g} s per "
                                 "level, closed-loop clients (each sends its next request when the previous one returns)"
                                 + ("" if args.no_retry else ", retrying RESOURCE_EXHAUSTED/UNAVAILABLE with exponential "
                                    "backoff") + ". Peak RSS: the server process (clients included), sampled every 50 ms.")
    command = (f"ckm-bench load --clients {' '.join(map(str, args.clients))} --duration {args.duration:g} --steps {args.steps}"
               + ("" if args.server or args.max_batch == 8 else f" --max-batch {args.max_batch}")
               + ("" if args.mix == "uniform" else f" --mix {args.mix}")
               + ("" if args.max_queue == 64 else f" --max-queue {args.max_queue}"))
    # Batched, unbatched and mixed serving are separate sections, so they can be read side by side.
    name = "grpc-load-mixed" if args.mix == "mixed" else (
        "grpc-load" if args.server or args.max_batch > 1 else "grpc-load-no-batching")
    path = report.write_result(name, command, {"levels": [vars(lv) for lv in levels], "max_batch": args.max_batch,
                                               "mix": args.mix}, text, results_dir=args.results)
    print(text)
    print(f"results: {path}; report: {report.results_md(args.results)}")
    return 0


def _cmd_physics(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import physics as bench_physics

    results, markdown = bench_physics.run(args.data, tuple(args.splits), args.repeats, args.limit)
    command = f"ckm-bench physics --data {args.data} --splits {' '.join(args.splits)} --repeats {args.repeats}" + (
        f" --limit {args.limit}" if args.limit else "")
    path = report.write_result("physics-cpu", command, results, markdown, results_dir=args.results)
    print(markdown)
    print(f"results: {path}; report: {report.results_md(args.results)}")
    return 0


def _cmd_raytrace(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import raytrace as bench_raytrace
    from ckm_edge.training.raytrace import HELD_OUT_SCENES, RaytraceError

    if args.scene in HELD_OUT_SCENES:
        raise SystemExit(f"ckm-bench raytrace: {args.scene!r} is a held-out region; benchmark on a training scene")
    try:
        results, markdown = bench_raytrace.run(args.scene, args.tiles, args.device)
    except RaytraceError as e:
        raise SystemExit(f"ckm-bench raytrace: {e}") from None
    command = f"ckm-bench raytrace --scene {args.scene} --tiles {args.tiles} --device {args.device}"
    path = report.write_result(f"raytrace-{results['device']}", command, results, markdown, results_dir=args.results)
    print(markdown)
    print(f"results: {path}; report: {report.results_md(args.results)}")
    return 0


def _cmd_accuracy(args: argparse.Namespace) -> int:
    import re

    from ckm_edge.benchmarks import accuracy
    from ckm_edge.runtime import tasks
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
    if args.exclude:  # validation tiles: a training city's tiles that no excluded dataset (what training read) holds
        from ckm_edge.benchmarks import tune

        try:
            val = tune.validation_tiles(args.data, args.tiles, exclude=args.exclude, seed=args.seed)
        except ValueError as e:
            raise SystemExit(f"ckm-bench accuracy: {e}") from None
        held, which = accuracy.HeldOut(val.tiles, val.transmitters, val.description, val.heights), "validation tiles"
    else:
        held, which = accuracy.load_held_out(args.data, args.tiles, seed=args.seed), "region-held-out tiles"
    pkg = load_package(args.package)
    try:
        out = accuracy.run(args.package, args.checkpoints, held, tuple(args.tasks), cfg,
                           progress=lambda line: print(line, flush=True), journal=args.journal)
    except ValueError as e:
        raise SystemExit(f"ckm-bench accuracy: {e}") from None
    text = accuracy.markdown(out, f"Construction accuracy on {len(held.tiles)} {which}: {held.description}; "
                                  f"package `{pkg.name} {pkg.version}`, baselines from `{args.checkpoints}`.", cfg)
    name = "accuracy-" + re.sub(r"[^A-Za-z0-9]+", "-", Path(args.data).name if args.data != "procedural" else "procedural")
    name += "-validation" if args.exclude else ""
    name += "-" + re.sub(r"[^A-Za-z0-9]+", "-", Path(args.samplers).stem) if args.samplers else ""
    command = (f"ckm-bench accuracy --data {args.data} --tiles {args.tiles} --package {args.package} "
               f"--checkpoints {args.checkpoints} --precision {args.precision} --tasks {' '.join(args.tasks)}"
               + (f" --exclude {' '.join(args.exclude)}" if args.exclude else "")
               + (f" --samplers {args.samplers}" if args.samplers else ""))
    path = report.write_result(name, command, {"config": vars(cfg), "tiles": len(held.tiles), **out}, text,
                               results_dir=args.results)
    print(text)
    print(f"results: {path}; report: {report.results_md(args.results)}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    import json
    import re

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
        out = tune.run(args.package, val, cfg, progress=lambda line: print(line, flush=True), journal=args.journal,
                       start_from=start_from)
    except ValueError as e:
        raise SystemExit(f"ckm-bench tune: {e}") from None
    text = tune.markdown(out, f"Default constructions of `{pkg.name} {pkg.version}` tuned on validation tiles: {val.description} "
                              "(never the held-out regions); ONNX Runtime CPU fp32, noise sigma "
                              f"{cfg.sigma:g}, {cfg.rounds} round(s) of coordinate search.", cfg)
    if args.out:
        Path(args.out).write_text(json.dumps({"samplers": out["samplers"]}, indent=1) + "\n")
    # a tuning at another budget than the default is its own record
    name = "tune-" + re.sub(r"[^A-Za-z0-9]+", "-", f"{pkg.name}-{pkg.version}") + (
        f"-budget-{args.budget}" if args.budget != tune.TuneConfig.budget else "")
    command = (f"ckm-bench tune --package {args.package} --data {args.data} --tiles {args.tiles} --budget {args.budget} "
               f"--tasks {' '.join(args.tasks)} --settings {' '.join(args.settings)} --rounds {args.rounds}"
               + (f" --coordinates {' '.join(args.coordinates)}" if tuple(args.coordinates) != tune.COORDINATES else "")
               + (f" --samples {' '.join(map(str, args.samples))}" if args.samples else "")
               + (f" --samplers {args.samplers}" if args.samplers else "")
               + (f" --exclude {' '.join(args.exclude)}" if args.exclude else ""))
    path = report.write_result(name, command, {"config": vars(cfg), "tiles": len(val.tiles), "validation": val.description,
                                               "tile_keys": [list(k) for k in val.keys], **out}, text, results_dir=args.results)
    print(text)
    print(f"results: {path}; report: {report.results_md(args.results)}" + (f"; samplers section: {args.out}" if args.out else ""))
    return 0


def _cmd_netsize(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import accuracy, netsize

    try:
        candidates = [netsize.parse_candidate(text) for text in args.networks]
    except ValueError as e:
        raise SystemExit(f"ckm-bench netsize: {e}") from None
    held = accuracy.load_held_out(args.data, args.tiles, seed=args.seed) if any(c.checkpoint for c in candidates) else None
    rows = netsize.run(candidates, None if held is None else held.tiles, repeats=args.repeats, device=args.device,
                       progress=lambda line: print(line, flush=True))
    where = f"; accuracy on {len(held.tiles)} held-out tiles: {held.description}" if held is not None else ""
    text = netsize.markdown(rows, f"Network size against edge cost (ONNX Runtime CPU, score graph, 128 x 128){where}.")
    command = (f"ckm-bench netsize --networks {' '.join(args.networks)} --repeats {args.repeats}"
               + (f" --data {args.data} --tiles {args.tiles}" if held is not None else ""))
    path = report.write_result("netsize-cpu", command, {"rows": rows}, text, results_dir=args.results)
    print(text)
    print(f"results: {path}; report: {report.results_md(args.results)}")
    return 0


def _cmd_solvers(args: argparse.Namespace) -> int:
    import re

    from ckm_edge.benchmarks import accuracy, solvers
    from ckm_edge.runtime.package import load_package

    cfg = solvers.SolverBenchConfig(nfe=tuple(args.nfe), samplers=tuple(args.samplers), curve_samples=args.curve_samples,
                                    curve_tasks=tuple(args.curve_tasks), tasks=tuple(args.tasks), precision=args.precision,
                                    other_precisions=tuple(p for p in args.other_precisions if p != args.precision),
                                    seed=args.seed)
    tiles, description = accuracy.load_tiles(args.data, args.tiles, seed=args.seed)
    pkg = load_package(args.package)
    results = solvers.run(args.package, tiles, cfg, progress=lambda line: print(line, flush=True))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(args.data).name if args.data != "procedural" else "procedural")
    recs = {kind: r.to_dict() for kind, r in pkg.recommendations().items()}
    text = solvers.markdown(results, f"Samplers and the default construction on {len(tiles)} region-held-out tiles: "
                                     f"{description}; package `{pkg.name} {pkg.version}`, ONNX Runtime CPU {args.precision}, "
                                     f"noise sigma {cfg.sigma:g}.", cfg, recs)
    png = solvers.plot(results["curve"], results["default"], args.results / f"solvers-{slug}.png") \
        if results["curve"] else None
    if png is not None:
        text += f"\n![RMSE vs network evaluations](results/{png.name})"
    command = (f"ckm-bench solvers --data {args.data} --tiles {args.tiles} --nfe {' '.join(map(str, args.nfe))} "
               f"--samplers {' '.join(args.samplers)} --curve-samples {args.curve_samples} "
               f"--curve-tasks {' '.join(args.curve_tasks)} --tasks {' '.join(args.tasks)}"
               + (f" --other-precisions {' '.join(args.other_precisions)}" if args.other_precisions else ""))
    path = report.write_result(f"solvers-{slug}", command, {"config": vars(cfg), "tiles": len(tiles),
                                                            "recommendations": recs, **results}, text, results_dir=args.results)
    print(text)
    print(f"results: {path}; report: {report.results_md(args.results)}")
    return 0


def _cmd_memory(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import memory

    results, text = memory.run(args.package, args.precisions, args.batches, args.steps, tuple(args.samplers))
    command = (f"ckm-bench memory --package {args.package} --precisions {' '.join(args.precisions)} "
               f"--batches {' '.join(map(str, args.batches))} --samplers {' '.join(args.samplers)}")
    path = report.write_result("memory-cpu", command, results, text, results_dir=args.results)
    print(text)
    print(f"results: {path}; report: {report.results_md(args.results)}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ckm_edge.benchmarks import sweep
    from ckm_edge.runtime.package import load_package

    ref_zeta = args.reference_zeta
    points = [sweep.Point(z, s, "fp32", False) for z in args.zetas for s in args.steps]
    points += [sweep.Point(ref_zeta, args.steps[0], p, False) for p in args.precisions if p != "fp32"]
    if args.jacobian_free:
        points.append(sweep.Point(ref_zeta, args.steps[0], "fp32", True))
    pkg = load_package(args.package)
    tiles = sweep.validation_tiles(args.tiles, pkg.tile_size, seed=args.seed)
    rows = sweep.run(args.package, points, tuple(args.tasks), tiles, seed=args.seed,
                     progress=lambda line: print(line, flush=True))
    png = sweep.plot(rows, args.results / "sweep-zeta.png")
    text = sweep.markdown(rows, f"Foundation prior `{pkg.name} {pkg.version}` with the runtime's DPS on {len(tiles)} "
                                f"validation tiles (procedural regions never used in training), ONNX Runtime CPU; "
                                f"mean over tiles of gain RMSE (dB) / AoA-sine RMSE.")
    if png is not None:
        text += f"\n\n![RMSE vs zeta](results/{png.name})"
    command = (f"ckm-bench sweep --zetas {' '.join(f'{z:g}' for z in args.zetas)} --steps {' '.join(map(str, args.steps))} "
               f"--precisions {' '.join(args.precisions)} --tiles {args.tiles}" + (" --jacobian-free" if args.jacobian_free else ""))
    path = report.write_result("sweep-cpu", command, {"rows": rows}, text, results_dir=args.results)
    print(text)
    print(f"results: {path}; report: {report.results_md(args.results)}")
    return 0


def _cmd_gpu(args: argparse.Namespace) -> int:
    import re

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
    results = gpu.run(model, meta, tile[0], tiles, cfg, device=args.device, progress=lambda line: print(line, flush=True))
    results["package"] = f"{pkg.name} {pkg.version}"
    if isinstance(results.get("steps_curve"), list) and results["steps_curve"]:
        gpu.plot_steps(results["steps_curve"], args.results / "steps-curve.png")
    text = gpu.markdown(results, f"{pkg.name} {pkg.version}")
    command = (f"ckm-bench gpu --device {args.device} --steps {args.steps} --batches {' '.join(map(str, args.batches))} "
               f"--precisions {' '.join(args.precisions)} --step-counts {' '.join(map(str, args.step_counts))} "
               f"--tiles {args.tiles}")
    name = "gpu-" + re.sub(r"[^a-z0-9]+", "-", results["device"].lower()).strip("-")
    path = report.write_result(name, command, results, text, results_dir=args.results)
    print(text)
    print(f"results: {path}; report: {report.results_md(args.results)}")
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
    device_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    command = (f"ckm-bench adapt --device {device} --counts {' '.join(map(str, args.counts))} --test-tiles {args.test_tiles} "
               f"--tasks {' '.join(args.tasks)} --steps {args.steps} --reference-steps {args.reference_steps} "
               f"--proxy-steps {args.proxy_steps} --finetune-steps {args.finetune_steps} --batch-size {args.batch_size}")
    name = f"site-adaptation-{'gpu' if device.startswith('cuda') else 'cpu'}"

    def write(results: dict):  # after every method: a run stopped early keeps what it measured
        text = adapt.markdown(results, f"{pkg.name} {pkg.version}", device_name)
        return report.write_result(name, command, results, text, results_dir=args.results)

    with tempfile.TemporaryDirectory(prefix="ckm-adapt-") as work:
        results = adapt.run(large, meta, cfg, Path(work), device=device, workers=args.workers,
                            progress=lambda line: print(line, flush=True), on_result=write)
    path = write(results)
    text = adapt.markdown(results, f"{pkg.name} {pkg.version}", device_name)
    print(text)
    print(f"results: {path}; report: {report.results_md(args.results)}")
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
    so.add_argument("--tasks", nargs="+", default=["ipbox", "iprandom", "sr2", "jtqr", "trajectory"])
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
    acc.add_argument("--tasks", nargs="+", default=["ipbox", "iprandom", "sr2", "jtqr", "trajectory"])
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

    ad = sub.add_parser("adapt", help="site adapters (LASCO) vs foundation alone vs full fine-tuning, with training cost")
    ad.add_argument("--package", default=DEFAULT_PACKAGE)
    ad.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="the package's PyTorch weights")
    ad.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    ad.add_argument("--site-preset", default="calibrated")
    ad.add_argument("--site-region", type=int, default=100)
    ad.add_argument("--counts", type=int, nargs="+", default=[16, 64, 256])
    ad.add_argument("--test-tiles", type=int, default=8)
    ad.add_argument("--tasks", nargs="+", default=["ipbox", "iprandom", "sr2", "jtqr"])
    ad.add_argument("--steps", type=int, default=defaults.DPS_STEPS)
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
    gp.add_argument("--steps", type=int, default=defaults.DPS_STEPS)
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
