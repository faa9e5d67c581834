"""PNG preview grids of CKM tiles: gain and AoA-sine side by side, buildings in black."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ckm_edge.runtime import codec
from ckm_edge.runtime.figures import DIVERGING as _DIVERGING
from ckm_edge.runtime.figures import SEQUENTIAL as _ANCHORS
from ckm_edge.runtime.figures import colormap as _colormap


def render_tile(pixels: np.ndarray, scale: int = 2, tx: np.ndarray | None = None) -> Image.Image:
    """One tile (2, H, W) -> an RGB image: gain | AoA sine, buildings black, BS as a cross."""
    pixels = codec.check_pixels(pixels)
    building = codec.building_mask(pixels)
    gain = _colormap(pixels[0], _ANCHORS)
    aoa = _colormap((pixels[1] - codec.AOA_PIXEL_MIN) / (codec.AOA_PIXEL_MAX - codec.AOA_PIXEL_MIN), _DIVERGING)
    gain[building] = 0
    aoa[building] = 0
    gap = np.full((pixels.shape[1], 2, 3), 255, dtype=np.uint8)
    image = Image.fromarray(np.concatenate([gain, gap, aoa], axis=1))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    if tx is not None:
        draw = ImageDraw.Draw(image)
        width = pixels.shape[2] + 2
        for offset in (0, width):
            r, c = tx[0] * scale, (tx[1] + offset) * scale
            draw.line([(c - 5, r), (c + 5, r)], fill=(255, 0, 255), width=2)
            draw.line([(c, r - 5), (c, r + 5)], fill=(255, 0, 255), width=2)
    return image


def save_grid(path: str | Path, tiles: np.ndarray, tx: np.ndarray | None = None, columns: int = 2) -> Path:
    """Write tiles (B, 2, H, W) as a PNG grid, `columns` tile pairs per row; returns the path."""
    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[0] == 0:
        raise ValueError(f"tiles must have shape (B, 2, H, W) with B >= 1, got {tiles.shape}")
    images = [render_tile(t, tx=None if tx is None else tx[i]) for i, t in enumerate(tiles)]
    w, h = images[0].size
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (w + 8), rows * (h + 8)), (255, 255, 255))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * (w + 8), (i // columns) * (h + 8)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def save_rows(path: str | Path, rows: list[tuple[str, np.ndarray, np.ndarray | None]]) -> Path:
    """One labelled row of tiles per dataset: [(label, tiles (B, 2, H, W), tx (B, 3) or None)] -> PNG."""
    if not rows:
        raise ValueError("save_rows needs at least one row")
    strips = []
    for label, tiles, tx in rows:
        tiles = np.asarray(tiles)
        if tiles.ndim != 4 or tiles.shape[0] == 0:
            raise ValueError(f"row {label!r}: tiles must have shape (B, 2, H, W) with B >= 1, got {tiles.shape}")
        images = [render_tile(t, tx=None if tx is None else tx[i]) for i, t in enumerate(tiles)]
        w, h = images[0].size
        strip = Image.new("RGB", (len(images) * (w + 8), h + 22), (255, 255, 255))
        ImageDraw.Draw(strip).text((4, 4), label, fill=(0, 0, 0))
        for i, image in enumerate(images):
            strip.paste(image, (i * (w + 8), 20))
        strips.append(strip)
    sheet = Image.new("RGB", (max(s.width for s in strips), sum(s.height + 6 for s in strips)), (255, 255, 255))
    y = 0
    for strip in strips:
        sheet.paste(strip, (0, y))
        y += strip.height + 6
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
