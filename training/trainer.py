"""The training loop shared by the score prior and the end-to-end baselines.

AdamW with linear warm-up, gradient clipping, EMA weights (what export uses), bf16 autocast on
GPU, checkpoints with exact resume (weights, EMA, optimizer, step, every random state, the data
position), a tqdm progress bar with loss and throughput, held-out evaluation loss, periodic PNG
sample grids. Multi-GPU / multi-node through torch's DistributedDataParallel under `torchrun`
(WORLD_SIZE/RANK/LOCAL_RANK from the environment); without them it runs on one device, CPU too.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ckm_edge.runtime import codec
from ckm_edge.training import augment as flipping
from ckm_edge.training.dataset import Split


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10_000
    batch_size: int = 16  # global, split over ranks
    lr: float = 2e-4
    warmup: int = 500
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    crop: int | None = None  # random square crops (fully convolutional training), None = full tiles
    flips: bool = True  # mirror augmentation that respects the AoA-sine encoding
    log_every: int = 25
    eval_every: int = 500
    eval_batches: int = 4
    sample_every: int = 1000
    checkpoint_every: int = 250
    # mixed precision of the forward pass: "auto" = bf16 autocast on a GPU, float32 on a CPU;
    # "bf16" also on a CPU (worth it where oneDNN has AMX or AVX512-BF16 kernels: ~1.5-2x per step
    # on this project's Xeon); "fp32" never. Weights, optimizer and EMA stay float32.
    precision: str = "auto"

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        for name in ("steps", "batch_size", "log_every", "eval_every", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.ema_decay < 1 and self.warmup >= 0 and self.grad_clip > 0):
            raise ValueError("need lr > 0, 0 <= ema_decay < 1, warmup >= 0 and grad_clip > 0")


class DataStream:
    """Shuffled epochs over a split with crops and flips, drawn from its own numpy generator."""

    def __init__(self, split: Split, cfg: TrainConfig, rank: int = 0, world: int = 1):
        if len(split) < cfg.batch_size:
            raise ValueError(f"split {split.name!r} has {len(split)} tiles, fewer than the batch size {cfg.batch_size}")
        self.split, self.cfg, self.rank, self.world = split, cfg, rank, world
        self.rng = np.random.default_rng([cfg.seed, 0xDA7A])
        self.order = self.rng.permutation(len(split))
        self.position = 0
        self._tx = None  # the split's transmitters, read on first use (False: it has none)
        # ckm-site/2 models see the line of sight over the whole tile, computed before the crop
        # (runtime.condition: `visibility`), and the buildings' heights where the data records
        # them; set by the trainer for such a model
        self.site_maps = False
        self._site: dict[int, np.ndarray] = {}

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": self.order.tolist(), "position": self.position}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = np.asarray(state["order"])
        self.position = state["position"]

    def next(self) -> tuple[np.ndarray, np.ndarray | None, dict | None]:
        """This rank's share of the next global batch, (B / world, 2, crop, crop), its
        transmitters (B / world, 3) moved with the crop and flips (None when the split has none)
        and, when `site_maps` is set, the site maps of each tile (`site_maps`), cropped and
        flipped with it: {"visibility", "visibility_heights", "heights"}, each (B / world, crop,
        crop) (None otherwise)."""
        b = self.cfg.batch_size
        if self.position + b > len(self.order):
            self.order, self.position = self.rng.permutation(len(self.split)), 0
        idx = np.sort(self.order[self.position : self.position + b])
        self.position += b
        x = self.split.take(idx)
        if self._tx is None:
            known = self.split.transmitters()
            self._tx = False if known is None else known
        tx = None if self._tx is False else self._tx[idx]
        maps = None
        if self.site_maps and tx is not None:
            maps = np.stack([self._site_maps(int(i), x[k], tx[k]) for k, i in enumerate(idx)])
        x, tx, maps = augment(x, self.rng, self.cfg.crop, self.cfg.flips, tx, maps)
        part = slice(self.rank, None, self.world)
        extra = None if maps is None else dict(zip(SITE_MAPS, np.moveaxis(maps[part], 1, 0)))
        return x[part], None if tx is None else tx[part], extra

    def _site_maps(self, index: int, tile: np.ndarray, tx: np.ndarray) -> np.ndarray:
        if index not in self._site:
            heights = self.split.heights(np.array([index]))[0] if getattr(self.split, "has_heights", False) else None
            self._site[index] = site_maps(tile, tx, heights)
        return self._site[index]


def wants_site_maps(model: nn.Module) -> bool:
    """Whether `model` takes ckm-site/2's condition, whose line of sight is computed per whole tile."""
    from ckm_edge.runtime.condition import SITE_V2

    return int(getattr(model, "cond_channels", 0) or 0) == SITE_V2.channels


SITE_MAPS = ("visibility", "visibility_heights", "heights")


def site_maps(tile: np.ndarray, tx: np.ndarray, heights: np.ndarray | None = None) -> np.ndarray:
    """(3, H, W) what a ckm-site/2 model is told of a whole tile beyond its layout (SITE_MAPS): the
    line of sight from its transmitter over the layout, over the roofs, and the buildings' heights
    (runtime.physics); the last two NaN where the heights are unknown, the first zeros where the
    transmitter is."""
    from ckm_edge.runtime import physics

    shape = tile.shape[-2:]
    out = np.full((3,) + shape, np.nan, np.float32)
    building = codec.building_mask(tile)
    known = heights is not None and not np.isnan(heights).all()
    if known:
        out[2] = np.where(building, heights, 0.0)
    if not np.isfinite(tx).all():
        out[0] = 0.0
        return out
    out[0] = physics.los_visibility(building, tx)
    if known:
        out[1] = physics.los_visibility(building, tx, heights=out[2])
    return out


def augment(x: np.ndarray, rng: np.random.Generator, crop: int | None, flips: bool,
            tx: np.ndarray | None = None, maps: np.ndarray | None = None,
            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Random crop and mirrors (training.augment: a left-right mirror keeps the AoA sine, an
    up-down mirror negates it), with the transmitters moved to match and `maps` (B, ..., H, W) of
    per-cell scalars (e.g. line of sight) cropped and mirrored with the cells."""
    b, _, h, w = x.shape
    out = np.empty((b, 2, crop or h, crop or w), np.float32)
    tx_out = None if tx is None else np.array(tx, np.float32, copy=True)
    maps_out = None if maps is None else np.empty(maps.shape[:-2] + (crop or h, crop or w), np.float32)
    for k in range(b):
        tile = x[k]
        t = None if tx_out is None else tx_out[k]
        m = None if maps is None else maps[k]
        if crop:
            r, c = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
            tile = tile[:, r : r + crop, c : c + crop]
            if m is not None:
                m = m[..., r : r + crop, c : c + crop]
            if t is not None:
                t[:2] -= (r, c)
        flip_cols = flips and rng.random() < 0.5
        flip_rows = flips and rng.random() < 0.5
        name = {(False, False): "identity", (False, True): "flip_cols", (True, False): "flip_rows",
                (True, True): "rot180"}[(flip_rows, flip_cols)]
        tile, t = flipping.apply(tile, name, t)
        out[k] = tile
        if t is not None:
            tx_out[k] = t
        if m is not None:
            maps_out[k] = m[..., ::-1 if flip_rows else 1, ::-1 if flip_cols else 1]
    return out, tx_out, maps_out


class EMA:
    """Exponential moving average of a model's weights, with the usual warm-up of the decay."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, p in zip(self.model.buffers(), model.buffers()):
            e.copy_(p)


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if world > 1 else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, local, world


Objective = Callable[[nn.Module, torch.Tensor, np.random.Generator], torch.Tensor]
SampleHook = Callable[[nn.Module, Path, int], None]


@dataclass
class Trainer:
    """Runs `objective` over `train` for cfg.steps, writing into `out` (checkpoint.pt, log.jsonl)."""

    model: nn.Module
    objective: Objective
    train: Split
    eval: Split | None
    cfg: TrainConfig
    out: Path
    meta: dict  # what the checkpoint must carry to rebuild the model (kind, unet, schedule, ...)
    sample_hook: SampleHook | None = None
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        self.rank, local, self.world = _distributed()
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(self.cfg.seed + self.rank)
        self.model.to(self.device)
        self.ema = EMA(self.model, self.cfg.ema_decay)
        self.net = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=[local] if self.device.type == "cuda" else None)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        warm = max(self.cfg.warmup, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm))
        self.data = DataStream(self.train, self.cfg, self.rank, self.world)
        self.data.site_maps = wants_site_maps(self.model)
        self.obj_rng = np.random.default_rng([self.cfg.seed, 0x0B7, self.rank])
        self.step = 0
        self.path = self.out / "checkpoint.pt"
        self.bf16 = self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and self.device.type == "cuda")

    # -- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "objective": self.obj_rng.bit_generator.state}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": "ckm-checkpoint",
            "meta": self.meta,
            "train_config": asdict(self.cfg),
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "lr_schedule": self.sched.state_dict(),
            "data": self.data.state(),
            "rng": rng,
        }

    def save(self) -> Path:
        if self.rank != 0:
            return self.path
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, self.path)  # never leave a half-written checkpoint
        return self.path

    def resume(self, path: Path | None = None) -> None:
        ckpt = torch.load(path or self.path, map_location=self.device, weights_only=False)
        if ckpt.get("format") != "ckm-checkpoint":
            raise ValueError(f"{path or self.path} is not a ckm checkpoint")
        if ckpt["meta"].get("unet") != self.meta.get("unet"):
            raise ValueError("checkpoint was trained with a different U-Net config; refusing to resume")
        self.model.load_state_dict(ckpt["model"])
        self.ema.model.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["lr_schedule"])
        self.data.load_state(ckpt["data"])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng"]["cuda"]])
        self.obj_rng.bit_generator.state = ckpt["rng"]["objective"]
        self.step = ckpt["step"]

    # -- the loop ---------------------------------------------------------------------------------
    def _train_step(self) -> float:
        x, tx, extra = self.data.next()
        x = torch.from_numpy(x).to(self.device)
        self.net.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.objective(self.net, x, self.obj_rng, tx, **(extra or {}))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step}; stopping before the checkpoint is spoiled")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean objective of the EMA model on fixed held-out batches (same draws every time)."""
        if self.eval is None or len(self.eval) == 0:
            return None
        rng = np.random.default_rng([self.cfg.seed, 0xE7A1])
        n = min(len(self.eval), self.cfg.eval_batches * self.cfg.batch_size)
        losses = []
        tx_all = self.eval.transmitters()
        for start in range(0, n, self.cfg.batch_size):
            idx = np.arange(start, min(start + self.cfg.batch_size, n))
            x = self.eval.take(idx)
            tx = None if tx_all is None else tx_all[idx]
            extra = {}
            if self.data.site_maps and tx is not None:
                heights = self.eval.heights(idx) if getattr(self.eval, "has_heights", False) else [None] * len(x)
                maps = np.stack([site_maps(tile, t, hk) for tile, t, hk in zip(x, tx, heights)])
                extra = dict(zip(SITE_MAPS, np.moveaxis(maps, 1, 0)))
            if self.cfg.crop:  # the top-left crop: transmitters keep their coordinates
                x = x[:, :, : self.cfg.crop, : self.cfg.crop]
                extra = {k: v[:, : self.cfg.crop, : self.cfg.crop] for k, v in extra.items()}
            losses.append(float(self.objective(self.ema.model, torch.from_numpy(x).to(self.device), rng, tx, **extra)))
        return float(np.mean(losses))

    def _log(self, record: dict) -> None:
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def fit(self, max_seconds: float | None = None) -> dict:
        """Train up to cfg.steps (or until max_seconds pass); returns the last log record."""
        from tqdm import tqdm

        from ckm_edge.benchmarks import machine

        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not self.progress or self.rank != 0, dynamic_ncols=True)
        # one record per sitting: where and how this stretch of training ran (the model card's history);
        # rank 0 writes the log, so only it describes the machine (nvidia-smi, /proc reads)
        if self.rank == 0:
            self._log({"event": "start", "step": self.step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "machine": machine.label(machine.describe()), "device": str(self.device),
                       "precision": "bf16" if self.bf16 else "fp32", "world": self.world})
        start, window, window_t, last = time.perf_counter(), [], time.perf_counter(), {}
        while self.step < self.cfg.steps:
            window.append(self._train_step())
            bar.update(1)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                now = time.perf_counter()
                rate = len(window) * self.cfg.batch_size / (now - window_t)
                last = {"step": self.step, "loss": float(np.mean(window)), "samples_per_s": round(rate, 2),
                        "lr": self.sched.get_last_lr()[0], "elapsed_s": round(now - start, 1)}
                bar.set_postfix(loss=f"{last['loss']:.4f}", samples_s=f"{rate:.1f}")
                window, window_t = [], now
                if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.steps:
                    last["eval_loss"] = self.evaluate()
                self._log(last)
            if self.step % self.cfg.checkpoint_every == 0:
                self.save()
            if self.sample_hook and self.rank == 0 and self.step % self.cfg.sample_every == 0:
                self.sample_hook(self.ema.model, self.out / f"samples-{self.step:07d}.png", self.step)
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
        bar.close()
        self.save()
        self._log({"event": "stop", "step": self.step, "elapsed_s": round(time.perf_counter() - start, 1)})
        return last


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
