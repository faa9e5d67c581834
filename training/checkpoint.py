"""Loading trained models back, and slimming a run's checkpoint to its EMA weights for shipping.

A slim model file is a torch-saved dict {"format": "ckm-model", "meta": ..., "weights": ...}
holding only the EMA weights (optionally in float16) and the meta that rebuilds the network
(kind, U-Net config, schedule or tasks) — the model rebuilds itself from its own file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ckm_edge.runtime.schedule import Schedule
from ckm_edge.training.unet import EndToEndModel, ScoreModel, UNetConfig


def build_model(meta: dict) -> torch.nn.Module:
    unet = UNetConfig.from_dict(meta["unet"])
    if meta["kind"] == "prior":
        return ScoreModel(unet, Schedule.from_dict(meta["schedule"]))
    if meta["kind"] == "baseline":
        return EndToEndModel(unet)
    raise ValueError(f"unknown model kind {meta['kind']!r}; expected 'prior' or 'baseline'")


def slim(checkpoint: str | Path, out: str | Path, half: bool = False, note: dict | None = None) -> Path:
    """Write the EMA weights of a training checkpoint (and its meta) as a slim model file."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if ckpt.get("format") != "ckm-checkpoint":
        raise ValueError(f"{checkpoint} is not a ckm training checkpoint")
    weights = {k: (v.half() if half and v.is_floating_point() and not k.endswith("_table") else v)
               for k, v in ckpt["ema"].items()}
    meta = dict(ckpt["meta"], trained_steps=ckpt["step"], train_config=ckpt["train_config"], **(note or {}))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "ckm-model", "meta": meta, "weights": weights}, out)
    return out


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A slim model file or a training checkpoint (its EMA weights) -> (model in eval mode, meta)."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if blob.get("format") == "ckm-model":
        meta, weights = blob["meta"], blob["weights"]
    elif blob.get("format") == "ckm-checkpoint":
        meta, weights = blob["meta"], blob["ema"]
    else:
        raise ValueError(f"{path} is neither a ckm model file nor a ckm training checkpoint")
    model = build_model(meta)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    return model.to(device).eval(), meta
