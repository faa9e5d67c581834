"""The CKM pixel codec: physical channel knowledge <-> the two-channel map the models see.

Paper section IV-A. A CKM tile is a float32 array of shape (2, H, W):

    channel 0  gain     pixel = (G_dB - (-250)) / 200          G_dB in [-250, -50]  -> [0, 1]
    channel 1  AoA      pixel = 0.35 * sin(theta) + 0.65       sin(theta) in [-1, 1] -> [0.3, 1]

Building cells carry no signal and are 0 in both channels. The gap (0, 0.3) of the AoA channel
separates buildings from coverage, so the building mask is read off the AoA channel.

Error metrics (paper Tables II/III) are RMSEs in physical units: since both encodings are
affine, gain RMSE in dB = 200 x pixel RMSE and AoA-sine RMSE = (1/0.35) x pixel RMSE = 20/7 x
pixel RMSE. Every reduction here is per sample: a batch (B, 2, H, W) gives B values.

This module is the single home of these constants; every stage imports them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAIN_DB_MIN = -250.0
GAIN_DB_MAX = -50.0
GAIN_DB_SPAN = GAIN_DB_MAX - GAIN_DB_MIN  # 200 dB per unit pixel
AOA_SCALE = 0.35  # pixel per unit sine
AOA_OFFSET = 0.65  # pixel of sin(theta) = 0
AOA_PIXEL_MIN = AOA_OFFSET - AOA_SCALE  # 0.3
AOA_PIXEL_MAX = AOA_OFFSET + AOA_SCALE  # 1.0
# AoA pixels below the middle of the (0, 0.3) gap are read as buildings.
BUILDING_THRESHOLD = AOA_PIXEL_MIN / 2.0
# Cells no path reaches hold the floor (-250 dB, sine 0); real paths in a tile are far stronger: of
# the ray-traced training tiles' outdoor cells 0.02 % lie between -249.5 and -200 dB, of the
# calibrated procedural tiles' none (the v1 generator, which has no no-path cells, fades 1 % of
# them that far). A gain an observation proves to be below PATH_GAIN_DB_MIN is therefore no path.
PATH_GAIN_DB_MIN = -200.0
PATH_GAIN_PIXEL_MIN = (PATH_GAIN_DB_MIN - GAIN_DB_MIN) / GAIN_DB_SPAN  # 0.25
NO_PATH_PIXELS = (0.0, AOA_OFFSET)  # (gain, AoA) of a no-path cell
GAIN_RMSE_FACTOR = GAIN_DB_SPAN  # dB per pixel
AOA_RMSE_FACTOR = 1.0 / AOA_SCALE  # sine per pixel, = 20/7

CHANNELS = ("gain", "aoa_sine")
_TOL = 1e-6


class CodecError(ValueError):
    """Input that the CKM codec refuses: non-finite, out of range or wrongly shaped."""


@dataclass(frozen=True)
class PhysicalCKM:
    """A CKM in physical units. Building cells hold NaN in both value arrays."""

    gain_db: np.ndarray  # (..., H, W) float32, dB
    aoa_sine: np.ndarray  # (..., H, W) float32, sin(theta)
    building: np.ndarray  # (..., H, W) bool


def _check_finite(name: str, values: np.ndarray, where: np.ndarray | None = None) -> None:
    bad = ~np.isfinite(values)
    if where is not None:
        bad &= where
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CodecError(f"{name} has {int(bad.sum())} non-finite value(s), first at index {index}")


def _check_range(name: str, values: np.ndarray, lo: float, hi: float, where: np.ndarray) -> None:
    bad = where & ((values < lo - _TOL) | (values > hi + _TOL))
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CodecError(
            f"{name} has {int(bad.sum())} value(s) outside [{lo}, {hi}], "
            f"first {float(values[index]):.6g} at index {index}"
        )


def encode(
    gain_db: np.ndarray,
    aoa_sine: np.ndarray,
    building: np.ndarray,
    *,
    clip_gain: bool = False,
) -> np.ndarray:
    """Physical (gain dB, AoA sine, building mask), each (..., H, W) -> pixels (..., 2, H, W).

    Values at building cells are ignored (they may be NaN). Outdoor gains outside
    [-250, -50] dB are an error unless ``clip_gain`` is set, which saturates them to the range
    (a propagation model's "no path" cells are far below -250 dB).
    """
    gain_db = np.asarray(gain_db, dtype=np.float64)
    aoa_sine = np.asarray(aoa_sine, dtype=np.float64)
    building = np.asarray(building)
    if building.dtype != np.bool_:
        raise CodecError(f"building mask must be boolean, got dtype {building.dtype}")
    if not (gain_db.shape == aoa_sine.shape == building.shape) or gain_db.ndim < 2:
        raise CodecError(
            "gain_db, aoa_sine and building must share one shape (..., H, W); got "
            f"{gain_db.shape}, {aoa_sine.shape}, {building.shape}"
        )
    outdoor = ~building
    _check_finite("gain_db", gain_db, outdoor)
    _check_finite("aoa_sine", aoa_sine, outdoor)
    if clip_gain:
        gain_db = np.clip(gain_db, GAIN_DB_MIN, GAIN_DB_MAX)
    else:
        _check_range("gain_db", gain_db, GAIN_DB_MIN, GAIN_DB_MAX, outdoor)
    _check_range("aoa_sine", aoa_sine, -1.0, 1.0, outdoor)
    gain_px = np.clip((gain_db - GAIN_DB_MIN) / GAIN_DB_SPAN, 0.0, 1.0)
    aoa_px = np.clip(AOA_SCALE * aoa_sine + AOA_OFFSET, AOA_PIXEL_MIN, AOA_PIXEL_MAX)
    pixels = np.stack([gain_px, aoa_px], axis=-3)  # (..., 2, H, W)
    return np.where(building[..., None, :, :], 0.0, pixels).astype(np.float32)


def check_pixels(pixels: np.ndarray, *, name: str = "pixels") -> np.ndarray:
    """Validate a pixel map (..., 2, H, W): finite and inside [0, 1]. Returns it as float32."""
    pixels = np.asarray(pixels)
    if pixels.ndim < 3 or pixels.shape[-3] != len(CHANNELS):
        raise CodecError(f"{name} must have shape (..., 2, H, W), got {pixels.shape}")
    if not np.issubdtype(pixels.dtype, np.floating):
        raise CodecError(f"{name} must be floating point, got dtype {pixels.dtype}")
    _check_finite(name, pixels)
    _check_range(name, pixels, 0.0, 1.0, np.ones(pixels.shape, dtype=bool))
    return pixels.astype(np.float32, copy=False)


def building_mask(pixels: np.ndarray) -> np.ndarray:
    """Building cells of a pixel map (..., 2, H, W) -> bool (..., H, W), read off the AoA channel."""
    pixels = np.asarray(pixels)
    if pixels.ndim < 3 or pixels.shape[-3] != len(CHANNELS):
        raise CodecError(f"pixels must have shape (..., 2, H, W), got {pixels.shape}")
    return pixels[..., 1, :, :] < BUILDING_THRESHOLD


def set_no_path(pixels: np.ndarray, cells: np.ndarray, outdoor: np.ndarray | None = None) -> np.ndarray:
    """Pixels (..., 2, H, W) with the outdoor cells of `cells` (broadcast to (..., H, W)) set to
    no path (NO_PATH_PIXELS); building cells stay buildings. `outdoor` (broadcast likewise): the
    outdoor cells when the caller knows the layout (default: the cells the pixels do not code as
    buildings, which an intermediate map need not do). Returns a new array."""
    pixels = np.array(pixels, copy=True)
    outdoor = ~building_mask(pixels) if outdoor is None else outdoor
    cells = np.broadcast_to(cells, pixels.shape[:-3] + pixels.shape[-2:]) & outdoor
    pixels[..., 0, :, :][cells] = NO_PATH_PIXELS[0]
    pixels[..., 1, :, :][cells] = NO_PATH_PIXELS[1]
    return pixels


def decode(pixels: np.ndarray, *, clip: bool = False) -> PhysicalCKM:
    """Pixels (..., 2, H, W) -> physical units; building cells become NaN.

    Strict by default: pixels must be finite and in [0, 1]. A model's output may overshoot the
    range slightly; ``clip=True`` saturates it first (NaN/Inf are refused either way).
    """
    pixels = np.asarray(pixels)
    if clip:
        _check_finite("pixels", pixels)
        pixels = np.clip(pixels, 0.0, 1.0)
    pixels = check_pixels(pixels).astype(np.float64)
    building = building_mask(pixels)
    gain_db = pixels[..., 0, :, :] * GAIN_DB_SPAN + GAIN_DB_MIN
    aoa_px = np.clip(pixels[..., 1, :, :], AOA_PIXEL_MIN, AOA_PIXEL_MAX)
    aoa_sine = (aoa_px - AOA_OFFSET) / AOA_SCALE
    gain_db[building] = np.nan
    aoa_sine[building] = np.nan
    return PhysicalCKM(gain_db.astype(np.float32), aoa_sine.astype(np.float32), building)


def _per_sample_rmse(pred: np.ndarray, true: np.ndarray, channel: int, outdoor_only: bool,
                     where: np.ndarray | None = None) -> np.ndarray:
    pred = check_pixels(pred, name="prediction")
    true = check_pixels(true, name="ground truth")
    if pred.shape != true.shape:
        raise CodecError(f"prediction shape {pred.shape} differs from ground truth shape {true.shape}")
    sq = (pred[..., channel, :, :].astype(np.float64) - true[..., channel, :, :]) ** 2
    if not outdoor_only and where is None:
        return np.sqrt(sq.mean(axis=(-2, -1)))
    cells = np.ones(sq.shape, bool) if where is None else np.broadcast_to(where, sq.shape)
    if outdoor_only:
        cells = cells & ~building_mask(true)
    count = cells.sum(axis=(-2, -1))
    if np.any(count == 0):
        raise CodecError("RMSE asked for over a map with no cell selected (outdoor_only / where)")
    return np.sqrt((sq * cells).sum(axis=(-2, -1)) / count)


def gain_rmse_db(pred: np.ndarray, true: np.ndarray, *, outdoor_only: bool = False,
                 where: np.ndarray | None = None) -> np.ndarray:
    """Gain RMSE in dB per sample: 200 x pixel RMSE of channel 0. Shape (...,). `where` (..., H, W)
    bool restricts it to those cells (e.g. the unobserved ones)."""
    return GAIN_RMSE_FACTOR * _per_sample_rmse(pred, true, 0, outdoor_only, where)


def aoa_sine_rmse(pred: np.ndarray, true: np.ndarray, *, outdoor_only: bool = False,
                  where: np.ndarray | None = None) -> np.ndarray:
    """AoA-sine RMSE per sample: 20/7 x pixel RMSE of channel 1. Shape (...,)."""
    return AOA_RMSE_FACTOR * _per_sample_rmse(pred, true, 1, outdoor_only, where)
