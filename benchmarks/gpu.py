"""The foundation prior's DPS on a GPU, through PyTorch CUDA.

The product's GPU engines are ONNX Runtime's CUDA provider and TensorRT (runtime/engine.py,
runtime/tensorrt.py). Where neither can be installed (the lent GPU machines have no TensorRT, and
an onnxruntime-gpu wheel is ~240 MiB, over what a call can carry), this benchmark measures the same
network and the same algorithm on the same GPU through PyTorch, and says so in every row:

- `network`: the network work of one guided step (forward with grad, input VJP, one corrector
  forward) per precision and batch size, eager and captured as a CUDA graph; the FLOP floor from
  the measured matrix-multiply rate of the card; peak GPU memory.
- `construction`: a whole IPbox construction (50 steps, M = 1) with every step on the GPU as one
  CUDA-graph replay (`GraphDPS`): the nearest measurable stand-in for a TensorRT construction.
- `reference`: the PyTorch reference DPS (training.reference_dps: autograd, numpy operators) on
  the GPU, M = 1 and the paper's M = 2 (3 forwards + 1 backward per step).
- `runtime loop`: the runtime's own numpy sampler over `TorchEngine` on the GPU, split into engine
  time and loop time, which is the loop ORT CUDA would run.
- `steps`: RMSE vs the number of sampling steps (20..1000) with the runtime's sampler (fp32, no
  TF32) on validation tiles.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ckm_edge.runtime import codec, defaults, tasks
from ckm_edge.runtime.dps import DPSConfig
from ckm_edge.runtime.sampler import Observations, sample
from ckm_edge.runtime.schedule import Schedule

PRECISIONS = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def set_precision(precision: str) -> None:
    """fp32 is true float32 (no TF32 on matrix units); tf32 allows it; bf16/fp16 use autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=False)


class TorchEngine:
    """The runtime's engine interface (score / forward / backward over numpy arrays) implemented with
    the PyTorch network on any torch device. Benchmarks use it to run the runtime's own sampler on
    a GPU; the product's engines are ONNX Runtime and TensorRT."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", precision: str = "fp32"):
        set_precision(precision)
        self.device = torch.device(device)
        self.precision = precision
        self.model = model.to(self.device).eval()
        # a site-aware prior's condition channels (runtime.sampler.conditioned binds a batch's sites)
        self.condition_channels = int(getattr(model, "cond_channels", 0) or 0)

    def _in(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device)

    def _args(self, x, t, cond) -> tuple:
        return (x, self._in(t)) + (() if cond is None else (self._in(cond),))

    def score(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        with torch.no_grad(), autocast(self.device, self.precision):
            return self.model(*self._args(self._in(x), t, cond)).float().cpu().numpy()

    def forward(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None):
        xt = self._in(x).requires_grad_(True)
        with torch.enable_grad(), autocast(self.device, self.precision):
            s = self.model(*self._args(xt, t, cond))
        return s.detach().float().cpu().numpy(), (xt, s)

    def backward(self, saved, v: np.ndarray) -> np.ndarray:
        xt, s = saved
        (g,) = torch.autograd.grad(s, xt, self._in(v).to(s.dtype))
        return g.float().cpu().numpy()


def _norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


@dataclass
class GraphDPS:
    """DPS for a mask observation (IPbox, IPrandom) with every step on the device: the runtime
    sampler's arithmetic (clipped predictor, Langevin corrector, normalized guidance through the
    network's VJP) in torch, the per-step coefficients in device buffers, so that on CUDA one step
    is one CUDA-graph replay. `noise()` supplies each draw (prior, then per step the predictor's and
    each corrector's, the runtime's order), so a test can feed the runtime's own draws."""

    model: torch.nn.Module
    schedule: Schedule
    mask: torch.Tensor  # (B, 1, H, W) float, 1 = observed
    y: torch.Tensor  # (B, C, H, W)
    cfg: DPSConfig = DPSConfig()
    precision: str = "fp32"

    def __post_init__(self):
        if self.cfg.jacobian_free or self.cfg.corrector_steps != 1 or not self.cfg.clip_denoised:
            raise ValueError("GraphDPS implements the guided sampler with M = 1 and clip_denoised")
        set_precision(self.precision)
        self.device = self.y.device
        # per step: ax, bs, d, e, c, alpha, t, t_prev
        n = len(self.schedule)
        rows = []
        for k in range(n):
            ax, bs = self.schedule.x0_hat_coefficients(k)
            d, e, c = self.schedule.x0_predictor_coefficients(k)
            alpha = self.schedule.langevin_alpha(k - 1) if k > 0 else 0.0
            t_prev = self.schedule.times[k - 1] if k > 0 else 0.0
            rows.append([ax, bs, d, e, c, alpha, self.schedule.times[k], t_prev])
        self.table = torch.tensor(np.array(rows, np.float64), dtype=torch.float32, device=self.device)
        self.coef = torch.zeros(8, device=self.device)
        self.x = torch.zeros_like(self.y)
        self.z_pred = torch.zeros_like(self.y)
        self.z_corr = torch.zeros_like(self.y)
        self.out = torch.zeros_like(self.y)
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}

    def _step(self, corrector: bool) -> None:
        """x (buffer) -> out (buffer), with the coefficients in `coef` and the draws in z_*."""
        ax, bs, d, e, c, alpha, t, t_prev = self.coef.unbind()
        b = self.x.shape[0]
        x = self.x.detach().requires_grad_(True)
        with torch.enable_grad(), autocast(self.device, self.precision):
            s = self.model(x, t.expand(b)).float()
            x0_hat = ax * x + bs * s
            residual = _norm(self.y - self.mask * x0_hat)
        with torch.no_grad():
            x_next = d * self.x + e * x0_hat.detach().clamp(0.0, 1.0) + c * self.z_pred
            if corrector:
                with autocast(self.device, self.precision):
                    s_c = self.model(x_next, t_prev.expand(b)).float()
                eps = 2 * alpha * (self.cfg.snr * _norm(self.z_corr) / _norm(s_c).clamp_min(1e-12)) ** 2
                x_next = x_next + eps * s_c + torch.sqrt(2 * eps) * self.z_corr
        (g,) = torch.autograd.grad(residual.sum(), x)
        self.out.copy_(x_next - self.cfg.zeta * g)

    def capture(self) -> None:
        """Record the two step variants (with and without the corrector) as CUDA graphs."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.coef.copy_(self.table[-1])
            for _ in range(3):  # warm-up outside the graph (cuDNN algorithm choice, allocator)
                self._step(True)
                self._step(False)
        torch.cuda.current_stream().wait_stream(stream)
        for corrector in (True, False):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step(corrector)
            self.graphs[corrector] = graph

    def run(self, x_init: torch.Tensor, noise: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """x_N -> x_0. noise=None draws on the device (inside the loop, before each replay)."""
        self.x.copy_(x_init)
        for k in reversed(range(len(self.schedule))):
            self.coef.copy_(self.table[k])
            if noise is None:
                self.z_pred.normal_()
                self.z_corr.normal_()
            else:
                self.z_pred.copy_(noise())
                if k > 0:
                    self.z_corr.copy_(noise())
            if self.graphs:
                self.graphs[k > 0].replay()
            else:
                self._step(k > 0)
            self.x.copy_(self.out)
        return self.x


def mask_problem(tile: np.ndarray, batch: int, device: torch.device, seed: int = 0):
    """An IPbox observation of `tile` repeated `batch` times, as device tensors."""
    x = np.repeat(tile[None], batch, axis=0)
    rng = np.random.default_rng(seed)
    op = tasks.make_operator("ipbox", rng, x)
    y = tasks.observe(op, x, rng)
    mask = np.broadcast_to(op.mask if op.mask.ndim == 3 else op.mask[None], (batch,) + tile.shape[-2:])
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(device)
    return op, y, to(mask[:, None]), to(y)


def cuda_time(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of fn() between CUDA events (device work included)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """Measured dense matrix-multiply rate (FLOP/s) on random data."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = cuda_time(lambda: a @ b, repeats=10)
    return 2 * n**3 / seconds


def task_problems(tiles: np.ndarray, task: str, seed: int = 0) -> tuple[list, list]:
    """One observation per tile (operator, y), drawn from the generator [seed, tile index]."""
    ops, ys = [], []
    for i, x in enumerate(tiles):
        rng = np.random.default_rng([seed, i])
        op = tasks.make_operator(task, rng, x[None])
        ops.append(op)
        ys.append(tasks.observe(op, x[None], rng))
    return ops, ys


def batched_rmse(engine, schedule: Schedule, tiles: np.ndarray, problems: tuple[list, list], steps: int,
                 zeta: float = defaults.ZETA, seed: int = 0) -> dict:
    """All tiles as one batch through the runtime's sampler (per-sample operators); mean RMSEs."""
    ops, ys = problems
    t0 = time.perf_counter()
    out = sample(engine, schedule.respace(steps), Observations.of(ops, ys, tiles.shape[1:], len(tiles)),
                 [np.random.default_rng([seed, i]) for i in range(len(tiles))], DPSConfig(zeta=zeta))
    out = np.clip(out, 0.0, 1.0)  # as runtime.construct returns a map
    return {"seconds": time.perf_counter() - t0, "gain_db": float(np.mean(codec.gain_rmse_db(out, tiles))),
            "aoa_sine": float(np.mean(codec.aoa_sine_rmse(out, tiles)))}


def steps_curve(model: torch.nn.Module, schedule: Schedule, tiles: np.ndarray, task_names, step_counts,
                device: str, zeta: float = defaults.ZETA, seed: int = 0, progress=print,
                deadline: float = float("inf")) -> list[dict]:
    """RMSE vs number of steps with the runtime's sampler over a TorchEngine (fp32), all tiles as one
    batch with per-sample operators. A run that would end after `deadline` (time.perf_counter())
    is skipped, judged by the seconds per step seen so far."""
    engine = TorchEngine(model, device, "fp32")
    rows, per_step = [], 0.0
    for task in task_names:
        problems = task_problems(tiles, task, seed)
        for steps in step_counts:
            if time.perf_counter() + per_step * steps > deadline:
                progress(f"steps {steps} {task}: skipped, would pass the time budget")
                continue
            r = batched_rmse(engine, schedule, tiles, problems, steps, zeta, seed)
            per_step = r["seconds"] / steps
            rows.append({"task": task, "steps": steps, **r})
            progress(f"steps {steps} {task}: {r['gain_db']:.2f} dB ({r['seconds']:.1f} s)")
    return rows


def plot_steps(rows: list[dict], path) -> Path | None:
    """RMSE vs number of sampling steps per task (log x) as a PNG; None without matplotlib."""
    from ckm_edge.training import plots

    try:
        plt = plots.pyplot()
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for t in dict.fromkeys(r["task"] for r in rows):
        pts = sorted((r["steps"], r["gain_db"], r["aoa_sine"]) for r in rows if r["task"] == t)
        n, g, a = zip(*pts)
        axes[0].plot(n, g, marker="o", label=t)
        axes[1].plot(n, a, marker="o", label=t)
    for ax, what in zip(axes, ("gain RMSE (dB)", "AoA-sine RMSE")):
        ax.set_xscale("log")
        ax.set(xlabel="sampling steps", ylabel=what, title=f"{what} vs steps")
    return plots.save(fig, axes, path)


def fewest_steps_within(rows: list[dict], task: str, tolerance: float = 0.05) -> int | None:
    """The fewest steps whose gain RMSE is within `tolerance` of the most-steps result (None when
    this task lacks the run with the most steps of the whole curve)."""
    mine = sorted((r for r in rows if r["task"] == task), key=lambda r: r["steps"])
    if not mine or mine[-1]["steps"] != max(r["steps"] for r in rows):
        return None
    ref = mine[-1]["gain_db"]
    return next(r["steps"] for r in mine if r["gain_db"] <= ref * (1 + tolerance))


def _guarded(results: dict, key: str, fn: Callable[[], object], progress) -> object:
    """Run one section; an exception (out of memory, a missing kernel) is recorded, not fatal."""
    try:
        results[key] = fn()
    except Exception as e:  # noqa: BLE001 - recorded and reported, the other sections still run
        results[key] = {"error": f"{type(e).__name__}: {e}"}
        progress(f"{key}: {results[key]['error']}")
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results[key]


@dataclass(frozen=True)
class GpuBenchConfig:
    steps: int = defaults.RECORD_DPS_STEPS
    batches: tuple[int, ...] = (1, 8, 32, 128, 256, 512)
    precisions: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
    step_counts: tuple[int, ...] = (20, 50, 100, 200, 500, 1000)
    tiles: int = 8
    tasks: tuple[str, ...] = ("ipbox", "iprandom", "sr2", "jtqr")
    zeta: float = defaults.ZETA
    reference_steps: int = 20
    seed: int = 0
    time_budget_s: float = float("inf")  # the steps curve skips runs that would end after it


def run(model: torch.nn.Module, meta: dict, tile: np.ndarray, tiles: np.ndarray, cfg: GpuBenchConfig,
        device: str = "cuda", progress=print) -> dict:
    """Every section on `device`; returns the JSON-able results (errors recorded per section) and
    their `summary` against the targets."""
    from ckm_edge.benchmarks.latency import _TimedEngine, network_flops
    from ckm_edge.training.reference_dps import DPSConfig, dps_sample

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    deadline = time.perf_counter() + cfg.time_budget_s
    schedule = Schedule.from_dict(meta["schedule"])
    flops = network_flops(model, tile.shape[-1])
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    step_flops = 2 * flops["forward"] + flops["backward"]  # guided step, M = 1, per map
    results: dict = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu", "torch": torch.__version__,
                     "flops": flops, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items()}}

    def rates():
        out = {"fp32": matmul_rate(dev, torch.float32)}
        set_precision("tf32")
        out["tf32"] = matmul_rate(dev, torch.float32)
        set_precision("fp32")
        out["bf16"] = matmul_rate(dev, torch.bfloat16)
        out["fp16"] = out["bf16"] if not cuda else matmul_rate(dev, torch.float16)
        return out
    if cuda:
        _guarded(results, "matmul_flops", rates, progress)
        progress(f"matmul FLOP/s: {results['matmul_flops']}")

    def agreement():
        """GraphDPS (captured) against the runtime sampler over TorchEngine, same draws, 10 steps."""
        short = schedule.respace(10)
        op, y, mask, yt = mask_problem(tile, 1, dev, seed=cfg.seed)
        rng = np.random.default_rng(1)
        ref = sample(TorchEngine(model, dev, "fp32"), short, Observations.of(op, y, tile.shape, 1), [rng],
                     DPSConfig(zeta=cfg.zeta))
        rng = np.random.default_rng(1)
        x_init = torch.from_numpy(short.prior_sample(tile.shape, rng)[None]).to(dev)
        noise = lambda: torch.from_numpy(rng.standard_normal(tile.shape).astype(np.float32)[None]).to(dev)
        dps = GraphDPS(model, short, mask, yt, DPSConfig(zeta=cfg.zeta), "fp32")
        if cuda:
            dps.capture()
        got = dps.run(x_init, noise).cpu().numpy()
        return {"max_abs_diff": float(np.abs(got - ref).max()), "ref_max_abs": float(np.abs(ref).max())}
    _guarded(results, "graph_agreement", agreement, progress)
    progress(f"graph vs runtime sampler: {results['graph_agreement']}")

    def construction(precision: str, batch: int):
        short = schedule.respace(cfg.steps)
        _, _, mask, yt = mask_problem(tile, batch, dev, seed=cfg.seed)
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        dps = GraphDPS(model, short, mask, yt, DPSConfig(zeta=cfg.zeta), precision)
        x_init = torch.randn_like(yt)
        row = {"precision": precision, "batch": batch}
        if cuda:
            row["eager_step_s"] = cuda_time(lambda: dps._step(True), repeats=5, warmup=2)
            dps.capture()
            row["graph_step_s"] = cuda_time(lambda: dps.graphs[True].replay(), repeats=10, warmup=2)
            if batch == 1:
                row["construction_s"] = cuda_time(lambda: dps.run(x_init), repeats=5, warmup=1)
            else:
                row["construction_s"] = row["graph_step_s"] * cfg.steps  # per step x steps, stated as such
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
            per_step = row["graph_step_s"] / batch
            row["floor_step_s"] = step_flops * batch / results.get("matmul_flops", {}).get(precision, float("nan"))
        else:
            t0 = time.perf_counter()
            dps.run(x_init)
            row["construction_s"] = time.perf_counter() - t0
            per_step = row["construction_s"] / cfg.steps / batch
        row["constructions_per_s"] = 1.0 / (per_step * cfg.steps)
        return row

    results["construction"] = []
    for precision in cfg.precisions:
        for batch in cfg.batches:
            key = f"{precision}-b{batch}"
            box: dict = {}
            _guarded(box, key, lambda: construction(precision, batch), progress)  # noqa: B023
            results["construction"].append(box[key] if "error" not in box[key] else
                                           {"precision": precision, "batch": batch, **box[key]})
            progress(f"construction {key}: {results['construction'][-1]}")
            if "error" in box[key]:
                break  # a larger batch of the same precision will not fit either

    def reference():
        op, y, _, _ = mask_problem(tile, 1, dev, seed=cfg.seed)
        out = {}
        set_precision("fp32")
        for m in (1, 2):
            short = schedule.respace(cfg.reference_steps)
            run_once = lambda: dps_sample(model, short, op, torch.from_numpy(y).to(dev), shape=(1,) + tile.shape,  # noqa: B023
                                          rng=np.random.default_rng(0), cfg=DPSConfig(zeta=cfg.zeta, corrector_steps=m),  # noqa: B023
                                          device=dev)
            run_once()
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run_once()
            if cuda:
                torch.cuda.synchronize()
            out[f"M{m}_step_s"] = (time.perf_counter() - t0) / cfg.reference_steps
        return out
    _guarded(results, "reference", reference, progress)
    progress(f"reference: {results['reference']}")

    def runtime_loop():
        op, y, _, _ = mask_problem(tile, 1, dev, seed=cfg.seed)
        engine = _TimedEngine(TorchEngine(model, dev, "fp32"))
        short = schedule.respace(cfg.reference_steps)
        sample(engine.engine, schedule.respace(2), Observations.of(op, y, tile.shape, 1), [np.random.default_rng(0)], DPSConfig())
        t0 = time.perf_counter()
        sample(engine, short, Observations.of(op, y, tile.shape, 1), [np.random.default_rng(0)], DPSConfig(zeta=cfg.zeta))
        total = time.perf_counter() - t0
        return {"step_s": total / len(short), "engine_s": engine.seconds / len(short),
                "loop_s": (total - engine.seconds) / len(short)}
    _guarded(results, "runtime_loop", runtime_loop, progress)
    progress(f"runtime loop: {results['runtime_loop']}")

    _guarded(results, "steps_curve", lambda: steps_curve(model, schedule, tiles, cfg.tasks, cfg.step_counts, device,
                                                         zeta=cfg.zeta, seed=cfg.seed, progress=progress,
                                                         deadline=deadline), progress)
    results["summary"] = summary(results)
    return results


def summary(results: dict) -> dict:
    """The targets against what was measured: the fastest batch-1 construction (target: under 25 ms
    with TensorRT FP16), the best throughput and the most this network allows at the card's
    measured matrix-multiply peak (target: 1,000 constructions/s), and the fewest steps within 5 %
    of the steps curve's last (target: equal accuracy in at most 100 steps)."""
    out: dict = {}
    ok = [r for r in results.get("construction", []) if "error" not in r]
    b1 = [r for r in ok if r["batch"] == 1]
    if b1:
        fastest = min(b1, key=lambda r: r["construction_s"])
        best = max(ok, key=lambda r: r["constructions_per_s"])
        rates = results.get("matmul_flops", {})
        peak = max(rates.values()) if rates and "error" not in rates else float("nan")
        f = results["flops"]
        out["fastest_batch1"] = {"precision": fastest["precision"], "construction_s": fastest["construction_s"],
                                 "target_ms": 25.0, "met": fastest["construction_s"] < 0.025}
        out["best_throughput"] = {k: best[k] for k in ("precision", "batch", "constructions_per_s")}
        out["peak_flops"] = peak
        out["ceiling_constructions_per_s"] = peak / ((2 * f["forward"] + f["backward"]) * results["config"]["steps"])
    curve = results.get("steps_curve")
    if isinstance(curve, list) and curve:
        names = list(dict.fromkeys(r["task"] for r in curve))
        out["fewest_steps"] = {t: fewest_steps_within(curve, t) for t in names}
        worst = max((v for v in out["fewest_steps"].values() if v is not None), default=None)
        if worst is not None:
            out["steps_target"] = {"max_steps": 100, "reference_evaluations": 8000, "steps": worst,
                                   "evaluations": 3 * worst, "met": worst <= 100}
    return out
