"""The U-Net backbone shared by the score prior and the end-to-end baselines (paper III-C, Fig. 6).

DDPM/NCSN++-style: residual blocks (GroupNorm, SiLU, 3x3 convolutions, the time embedding added
in between), self-attention at low resolutions, skip connections between the halves. Fully
convolutional over the tile (attention works at any size), so other tile sizes run as long as
they divide by 2^(levels-1).

`ScoreModel` wraps the U-Net as the prior's score s(x, t): the network predicts the noise eps
and the score is -eps / noise_std(t), with noise_std looked up in the schedule's own table
(eq. 12), so the exported graph returns the score itself. `EndToEndModel` is the same backbone
without time conditioning, mapping an observation (plus its mask) to the map.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ckm_edge.runtime.schedule import Schedule


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 2
    out_channels: int = 2
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (3,)  # levels (0 = full resolution) with self-attention
    dropout: float = 0.1
    groups: int = 8
    time_conditional: bool = True
    # Site condition channels (runtime.condition.CHANNELS for a site-aware prior; 0 = the paper's
    # unconditional prior). They enter next to x at the stem; all zeros = unconditional.
    cond_channels: int = 0

    def __post_init__(self):
        if self.base_channels % self.groups:
            raise ValueError(f"base_channels {self.base_channels} must divide by groups {self.groups}")
        if any(a >= len(self.channel_mults) or a < 0 for a in self.attention_levels):
            raise ValueError(f"attention_levels {self.attention_levels} must index channel_mults")

    @staticmethod
    def from_dict(d: dict) -> UNetConfig:
        d = dict(d)
        for key in ("channel_mults", "attention_levels"):
            if key in d:
                d[key] = tuple(d[key])
        return UNetConfig(**d)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # ~0.1M parameters: tests and smoke runs.
    "tiny": UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attention_levels=(2,), dropout=0.0, groups=4),
    # ~1.6M parameters: the embedded default model, trainable on a CPU in an hour.
    "small": UNetConfig(base_channels=32, channel_mults=(1, 2, 2, 2), num_res_blocks=1, attention_levels=(3,), dropout=0.0),
    # ~6.1M parameters: small's layout at twice the width (4x the FLOPs), for the size curve.
    "medium": UNetConfig(base_channels=64, channel_mults=(1, 2, 2, 2), num_res_blocks=1, attention_levels=(3,), dropout=0.0),
    # ~71M parameters: the full-size prior, for GPUs (close to the paper's DDPM-style U-Net).
    "base": UNetConfig(base_channels=128, channel_mults=(1, 1, 2, 2, 4), num_res_blocks=2, attention_levels=(3,), dropout=0.1, groups=32),
}


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in (0, 1] (scaled by 1000 like DDPM's integer steps). (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout) if temb else None
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb is not None:
            h = h + self.temb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over all cells of the feature map."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)  # (B, C, HW) each
        weights = torch.softmax(torch.matmul(q.transpose(1, 2), k) / math.sqrt(c), dim=-1)  # (B, HW, HW)
        out = torch.matmul(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.out(out)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, g = cfg.base_channels, cfg.groups
        temb = 4 * ch if cfg.time_conditional else 0
        if cfg.time_conditional:
            self.time_mlp = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.stem = nn.Conv2d(cfg.in_channels + cfg.cond_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips, cur = [ch], ch
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                block = nn.ModuleList([ResBlock(cur, ch * mult, temb, g, cfg.dropout)])
                cur = ch * mult
                if level in cfg.attention_levels:
                    block.append(Attention(cur, g))
                self.down.append(block)
                skips.append(cur)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, stride=2, padding=1)]))
                skips.append(cur)
        self.mid = nn.ModuleList([ResBlock(cur, cur, temb, g, cfg.dropout), Attention(cur, g), ResBlock(cur, cur, temb, g, cfg.dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(cur + skips.pop(), ch * mult, temb, g, cfg.dropout)])
                cur = ch * mult
                if level in cfg.attention_levels:
                    block.append(Attention(cur, g))
                self.up.append(block)
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cur, cur, 3, padding=1)]))
        self.head = nn.Sequential(nn.GroupNorm(g, cur), nn.SiLU(), nn.Conv2d(cur, cfg.out_channels, 3, padding=1))

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.cfg.channel_mults) - 1)

    def _run(self, block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = None
        if self.cfg.time_conditional:
            emb = self.time_mlp(timestep_embedding(t, self.cfg.base_channels))
        if self.cfg.cond_channels:
            if cond is None:  # unconditional: every condition channel zero
                cond = x.new_zeros((x.shape[0], self.cfg.cond_channels) + tuple(x.shape[2:]))
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            raise ValueError("this U-Net takes no condition channels (cond_channels = 0)")
        h = self.stem(x)
        hs = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for block in self.up:
            if isinstance(block[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(block, h, emb)
        return self.head(h)


class ScoreModel(nn.Module):
    """s(x, t) = -eps_theta(x, t) / noise_std(t); t in (0, 1] is one of the schedule's times.
    A site-aware prior (cfg.cond_channels > 0) takes `cond` (runtime.condition); None = unconditional."""

    def __init__(self, cfg: UNetConfig, schedule: Schedule):
        super().__init__()
        if not cfg.time_conditional or cfg.in_channels != cfg.out_channels:
            raise ValueError("a score model needs a time-conditional U-Net with in_channels == out_channels")
        self.net = UNet(cfg)
        self.schedule_params = schedule.to_dict()
        self.n_steps = len(schedule)
        self.register_buffer("noise_std_table", torch.tensor(schedule.noise_std, dtype=torch.float32))

    def noise_std(self, t: torch.Tensor) -> torch.Tensor:
        index = torch.clamp(torch.round(t * self.n_steps).long() - 1, 0, self.n_steps - 1)
        return self.noise_std_table[index]

    @property
    def cond_channels(self) -> int:
        return self.net.cfg.cond_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return -self.net(x, t, cond) / self.noise_std(t)[:, None, None, None]


class EndToEndModel(nn.Module):
    """Observation (+ mask channel) -> map, the baseline of paper Fig. 6. Output in pixels.
    A site-aware baseline (cfg.cond_channels > 0) also takes the site condition (runtime.condition)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        if cfg.time_conditional:
            raise ValueError("an end-to-end model uses the U-Net without time conditioning")
        self.net = UNet(cfg)

    @property
    def cond_channels(self) -> int:
        return self.net.cfg.cond_channels

    def forward(self, inputs: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(inputs, None, cond)


def warm_start(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load `state` into `model`, which may take more input channels at its stem than the network
    `state` came from (a site-aware model started from an unconditional one). The extra input
    channels' weights start at zero, so the started model computes exactly what the source did
    until training teaches it to use the condition. Returns the names of the widened tensors;
    any other difference is refused."""
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(f"warm start: the networks differ (missing {missing[:4]}, unexpected {unexpected[:4]})")
    widened, out = [], {}
    for name, value in state.items():
        mine = own[name]
        if value.shape == mine.shape:
            out[name] = value
        elif (name.endswith("stem.weight") and value.dim() == 4 and value.shape[0] == mine.shape[0]
              and value.shape[2:] == mine.shape[2:] and value.shape[1] < mine.shape[1]):
            wide = torch.zeros_like(mine)
            wide[:, : value.shape[1]] = value
            out[name] = wide
            widened.append(name)
        else:
            raise ValueError(f"warm start: {name} is {tuple(value.shape)} in the source, {tuple(mine.shape)} here")
    model.load_state_dict(out)
    return widened
