"""Figures shared by the edge CLI and the data tools: colour maps and construction panels (Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ckm_edge.runtime import codec

# Anchor colours of a perceptually ordered map (dark blue -> teal -> yellow), like viridis.
SEQUENTIAL = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
# A diverging map for the AoA sine: blue (-1) -> white (0) -> red (+1).
DIVERGING = np.array([[33, 102, 172], [247, 247, 247], [178, 24, 43]], dtype=np.float64)


def colormap(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """values in [0, 1] (H, W) -> RGB uint8 (H, W, 3) by piecewise-linear interpolation."""
    pos = np.clip(values, 0.0, 1.0) * (len(anchors) - 1)
    lo = np.minimum(pos.astype(int), len(anchors) - 2)
    w = (pos - lo)[..., None]
    return (anchors[lo] * (1 - w) + anchors[lo + 1] * w).astype(np.uint8)




UNOBSERVED = np.array([[200, 200, 200], [236, 236, 236]], np.uint8)  # a light checker: "no reading here"


def _panel(values: np.ndarray, anchors: np.ndarray, building: np.ndarray | None,
           unobserved: np.ndarray | None = None) -> np.ndarray:
    """One panel: values on the colour map, buildings black, unobserved cells a light grey checker."""
    rgb = colormap(values, anchors)
    if building is not None:
        rgb[building] = 0
    if unobserved is not None:
        checker = (np.add.outer(np.arange(values.shape[0]) // 2, np.arange(values.shape[1]) // 2) % 2).astype(int)
        rgb[unobserved] = UNOBSERVED[checker[unobserved]]
    return rgb


def construction_figure(path: str | Path, truth: np.ndarray | None, observation: np.ndarray,
                        construction: np.ndarray, std: np.ndarray | None, scale: int = 2,
                        observed: np.ndarray | None = None) -> Path:
    """Rows gain / AoA sine; columns truth, observation, construction, |error|, uncertainty.

    Every map panel shares one colour scale per channel (the codec's range) and draws buildings
    black; the observation's cells without a reading (`observed` False, on the observation's grid,
    (C', H', W') or (H', W')) are a light grey checker, so an observed cell looks as it does in
    the truth."""
    h, w = construction.shape[-2:]
    observed = np.ones(observation.shape, bool) if observed is None else np.broadcast_to(observed, observation.shape)
    if observation.shape[-2:] != (h, w):  # coarse observations are shown on the map's grid
        f = h // observation.shape[-2]
        observation = np.repeat(np.repeat(observation, f, axis=-2), f, axis=-1)
        observed = np.repeat(np.repeat(observed, f, axis=-2), f, axis=-1)
    building = codec.building_mask(truth if truth is not None else construction)
    aoa = lambda p: (p - codec.AOA_PIXEL_MIN) / (codec.AOA_PIXEL_MAX - codec.AOA_PIXEL_MIN)  # noqa: E731
    rows = []
    for ch, norm, cmap in ((0, lambda p: p, SEQUENTIAL), (1, aoa, DIVERGING)):
        cols = []
        if truth is not None:
            cols.append(_panel(norm(truth[ch]), cmap, building))
        seen = observed[min(ch, len(observed) - 1)]
        # an observed building reads 0 in both channels: black, as in the truth; a reading in the
        # building gap where the truth has none is drawn as the value it is
        cols.append(_panel(norm(observation[ch]), cmap, building & seen & (observation[min(1, len(observation) - 1)] <
                                                                          codec.BUILDING_THRESHOLD), ~seen))
        cols.append(_panel(norm(construction[ch]), cmap, building))
        if truth is not None:
            cols.append(_panel(np.abs(construction[ch] - truth[ch]) / 0.25, SEQUENTIAL, None))
        if std is not None:
            cols.append(_panel(std[ch] / max(float(std[ch].max()), 1e-6), SEQUENTIAL, None))
        gap = np.full((h, 3, 3), 255, np.uint8)
        rows.append(np.concatenate([c for col in cols for c in (col, gap)][:-1], axis=1))
    sheet = np.concatenate([rows[0], np.full((3, rows[0].shape[1], 3), 255, np.uint8), rows[1]], axis=0)
    image = Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST)
    labels = (["truth"] if truth is not None else []) + ["observation", "construction"] + \
        (["|error|"] if truth is not None else []) + (["std"] if std is not None else [])
    draw = ImageDraw.Draw(image)
    for i, label in enumerate(labels):
        draw.text((i * (w + 3) * scale + 4, 4), label, fill=(255, 255, 255))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
