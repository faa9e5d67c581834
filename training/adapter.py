"""Training of site adapters (large/small model collaboration, LASCO; see runtime/adapter.py).

    reference  small score model, trained once on the shared (generic) data the prior saw
    proxy      the reference fine-tuned on one site's unlabeled maps (starting from the reference
               keeps d = s_proxy - s_reference to what the site changes, not two models' noise)
    lambda     1 (LASCO), or per-t-bin least squares on the site maps (elastic LASCO): with the
               large and small models frozen, the denoising objective
                   E || std (s_large + lambda d) + z ||^2
               is quadratic in each bin's lambda, so lambda_k = -E<std s_large + z, std d> / E||std d||^2
               over draws with t in bin k, clipped to [0, lambda_max].

The small models train with the prior's own code path (Trainer + ScoreMatching, a small U-Net).
An adapter file is torch-saved {"format": "ckm-adapter", "meta", "proxy", "reference"}; export
turns it into a package (graphs of d, the lambda table, and the base package it adapts).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ckm_edge.runtime.adapter import LAMBDA_MAX, LambdaTable
from ckm_edge.runtime.schedule import Schedule
from ckm_edge.training import objectives
from ckm_edge.training.trainer import TrainConfig, Trainer, count_parameters
from ckm_edge.training.unet import ScoreModel, UNetConfig

# A quarter of the `small` prior's width and no attention: ~0.6 M parameters against its ~2.3 M.
ADAPTER_UNET = UNetConfig(base_channels=16, channel_mults=(1, 2, 2, 2), num_res_blocks=1, attention_levels=(),
                          dropout=0.0, groups=8)
FORMAT = "ckm-adapter"


class ArraySplit:
    """Tiles held in memory, with what the trainer uses of a split (`len`, `take`, `transmitters`)."""

    def __init__(self, name: str, pixels: np.ndarray):
        pixels = np.asarray(pixels, np.float32)
        if pixels.ndim != 4 or pixels.shape[1] != 2:
            raise ValueError(f"{name}: tiles must be (N, 2, H, W), got {pixels.shape}")
        self.name, self.pixels = name, pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def take(self, indices: np.ndarray) -> np.ndarray:
        return self.pixels[np.asarray(indices)]

    def transmitters(self) -> None:
        return None  # site tiles carry no transmitter positions


class ScoreDifference(nn.Module):
    """d(x, t) = s_proxy(x, t) - s_reference(x, t): what an adapter package's graphs compute."""

    def __init__(self, proxy: ScoreModel, reference: ScoreModel):
        super().__init__()
        self.proxy, self.reference = proxy, reference

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.proxy(x, t) - self.reference(x, t)


def train_score_model(tiles: ArraySplit, schedule: Schedule, unet: UNetConfig, cfg: TrainConfig, out: Path,
                      init: nn.Module | None = None, progress: bool = False) -> tuple[ScoreModel, dict]:
    """Denoising score matching on `tiles` (the prior's objective and loop); returns (EMA model, cost)."""
    model = ScoreModel(unet, schedule)
    if init is not None:
        model.load_state_dict(init.state_dict())
    meta = {"kind": "prior", "unet": unet.to_dict(), "schedule": schedule.to_dict()}
    trainer = Trainer(model, objectives.ScoreMatching(schedule), tiles, None, cfg, out, meta, progress=progress)
    if init is not None:
        trainer.ema.model.load_state_dict(init.state_dict())
    t0 = time.perf_counter()
    last = trainer.fit()
    cost = {"seconds": time.perf_counter() - t0, "steps": cfg.steps, "batch_size": cfg.batch_size,
            "parameters_trained": count_parameters(model), "device": str(trainer.device), "loss": last.get("loss")}
    return trainer.ema.model.eval().cpu(), cost


@torch.no_grad()
def fit_elastic(large: nn.Module, delta: nn.Module, tiles: np.ndarray, schedule: Schedule, rng: np.random.Generator,
                bins: int = 10, draws: int = 8, batch_size: int = 16, lam_max: float = 2.0,
                device: str | torch.device = "cpu") -> LambdaTable:
    """Per-bin least-squares lambda (module docstring) from `draws` noisings of every site tile."""
    if not 0 < lam_max <= LAMBDA_MAX:
        raise ValueError(f"lam_max must be in (0, {LAMBDA_MAX}], got {lam_max}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    num, den = np.zeros(bins), np.zeros(bins)
    large, delta = large.to(device).eval(), delta.to(device).eval()
    x0_all = np.repeat(np.asarray(tiles, np.float32), draws, axis=0)
    for start in range(0, len(x0_all), batch_size):
        x0 = torch.from_numpy(x0_all[start:start + batch_size]).to(device)
        b = len(x0)
        # stratified over the bins, so every bin gets draws even from a few tiles
        k_bin = (np.arange(start, start + b) % bins)
        t = rng.uniform(edges[k_bin], edges[k_bin + 1])
        i = np.clip(np.ceil(t * len(schedule)).astype(int) - 1, 0, len(schedule) - 1)
        z = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32)).to(device)
        scale = torch.from_numpy(schedule.scale[i].astype(np.float32)).to(device)[:, None, None, None]
        std = torch.from_numpy(schedule.noise_std[i].astype(np.float32)).to(device)[:, None, None, None]
        tt = torch.from_numpy(schedule.times[i].astype(np.float32)).to(device)
        x_i = scale * x0 + std * z
        a = (std * large(x_i, tt) + z).flatten(1).double()
        d = (std * delta(x_i, tt)).flatten(1).double()
        k_of = np.clip(np.searchsorted(edges, schedule.times[i], side="left") - 1, 0, bins - 1)
        np.add.at(num, k_of, -(a * d).sum(1).cpu().numpy())
        np.add.at(den, k_of, (d * d).sum(1).cpu().numpy())
    values = np.clip(num / np.maximum(den, 1e-30), 0.0, lam_max)
    values[den == 0] = 1.0  # no draw in the bin: the plain LASCO strength
    return LambdaTable(tuple(edges), tuple(float(v) for v in values), "elastic")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    unet: UNetConfig = ADAPTER_UNET
    reference: TrainConfig = TrainConfig(steps=3000, batch_size=16, lr=1e-3, warmup=100, ema_decay=0.995,
                                         eval_every=10**9, checkpoint_every=10**9, log_every=100)
    proxy: TrainConfig = TrainConfig(steps=600, batch_size=16, lr=2e-4, warmup=20, ema_decay=0.99,
                                     eval_every=10**9, checkpoint_every=10**9, log_every=100)
    bins: int = 10  # elastic lambda(t): bins in t
    lam_max: float = 2.0
    seed: int = 0

    @classmethod
    def sized(cls, reference_steps: int, proxy_steps: int, batch_size: int, seed: int = 0,
              proxy_lr: float | None = None) -> AdapterConfig:
        """These settings with another training budget (steps, batch size, seed, proxy learning rate)."""
        d = cls()
        reference = dataclasses.replace(d.reference, steps=reference_steps, batch_size=batch_size, seed=seed)
        proxy = dataclasses.replace(d.proxy, steps=proxy_steps, batch_size=batch_size, seed=seed,
                                    lr=d.proxy.lr if proxy_lr is None else proxy_lr)
        return dataclasses.replace(d, reference=reference, proxy=proxy, seed=seed)


def train_reference(generic: np.ndarray, schedule: Schedule, cfg: AdapterConfig, out: Path,
                    progress: bool = False) -> tuple[ScoreModel, dict]:
    """The reference small model on the shared data: once per foundation, reused by every site."""
    return train_score_model(ArraySplit("generic", generic), schedule, cfg.unet, cfg.reference, Path(out) / "reference",
                             progress=progress)


def train_proxy(reference: ScoreModel, site: np.ndarray, schedule: Schedule, cfg: AdapterConfig, out: Path,
                progress: bool = False) -> tuple[ScoreModel, dict]:
    if len(site) < cfg.proxy.batch_size:
        raise ValueError(f"the site has {len(site)} maps, fewer than the proxy batch size {cfg.proxy.batch_size}")
    return train_score_model(ArraySplit("site", site), schedule, cfg.unet, cfg.proxy, Path(out) / "proxy",
                             init=reference, progress=progress)


def save_adapter(path: Path, proxy: ScoreModel, reference: ScoreModel, lam: LambdaTable, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "meta": dict(meta, **{"lambda": lam.to_dict()}),
            "proxy": proxy.state_dict(), "reference": reference.state_dict()}
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_adapter(path: Path) -> tuple[ScoreDifference, LambdaTable, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ckm adapter file (format {FORMAT!r})")
    meta = blob["meta"]
    unet, schedule = UNetConfig.from_dict(meta["unet"]), Schedule.from_dict(meta["schedule"])
    proxy, reference = ScoreModel(unet, schedule), ScoreModel(unet, schedule)
    proxy.load_state_dict(blob["proxy"])
    reference.load_state_dict(blob["reference"])
    return ScoreDifference(proxy, reference).eval(), LambdaTable.from_dict(meta["lambda"]), meta
