"""The one on-disk CKM dataset format, shared by every source (procedural, CKMImageNet, ray-traced).

Layout of a dataset directory::

    manifest.json                      what the dataset is (see `Manifest`)
    <split>/<region>-<shard>.npy       (N, 2, H, W) float32 pixels in the codec's encoding
    <split>/<region>-<shard>.tx.npy    (N, 3) float32 transmitter row, column (cells), height (m)

Transmitter rows and columns are continuous cell coordinates: cell (i, j) spans [i, i+1) x
[j, j+1), so its centre is (i + 0.5, j + 0.5) and the tile spans [0, H) x [0, W) (manifest
`"tx_convention": "cell-corner"`). Ray-traced datasets written before that key existed put cell
centres at whole numbers; the reader shifts their transmitters by half a cell.

Splits are region-disjoint (paper IV-A: training and test maps come from non-overlapping
regions): the writer refuses to put one region into two splits and the reader checks it again.
Shards are memory-mapped on read, so a dataset larger than memory is fine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckm_edge.runtime import codec
from ckm_edge.runtime.package import sha256_file

FORMAT = "ckm-dataset"
VERSION = 1
TX_CONVENTION = "cell-corner"
SPLITS = ("train", "eval")
_REGION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class DatasetError(ValueError):
    """A dataset that is malformed, inconsistent or asked for something it does not hold."""


@dataclass
class _Shard:
    file: str
    region: str
    count: int
    sha256: str
    tx_file: str | None = None
    height_file: str | None = None  # (count, H, W) float16 building heights, metres (0 outdoors)


@dataclass
class DatasetWriter:
    """Write tiles into a new dataset directory; `close()` (or the context manager) writes the manifest.

    The manifest is written last and atomically, so a directory without one is an unfinished
    write, never a silently truncated dataset.
    """

    root: Path
    source: str
    tile_size: int = 128
    cell_size_m: float | None = None
    carrier_hz: float | None = None
    provenance: dict = field(default_factory=dict)
    shard_size: int = 1024
    _shards: dict = field(default_factory=lambda: {s: [] for s in SPLITS}, init=False)
    _pending: dict = field(default_factory=dict, init=False)
    _region_split: dict = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if (self.root / "manifest.json").exists():
            raise DatasetError(f"{self.root} already holds a dataset; choose a new directory")
        self.root.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()

    def add(self, split: str, region: str, pixels: np.ndarray, tx: np.ndarray | None = None,
            heights: np.ndarray | None = None) -> None:
        """Append tiles (B, 2, H, W) (or one (2, H, W)) of `region` to `split`, with their
        transmitters (B, 3) and building heights (B, H, W) in metres (0 outdoors) when known."""
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
        if not _REGION_RE.match(region):
            raise DatasetError(f"region name {region!r} must match {_REGION_RE.pattern}")
        other = self._region_split.setdefault(region, split)
        if other != split:
            raise DatasetError(f"region {region!r} is already in split {other!r}; splits must be region-disjoint")
        pixels = codec.check_pixels(pixels)
        if pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.ndim != 4 or pixels.shape[-2:] != (self.tile_size, self.tile_size):
            raise DatasetError(f"tiles must be (B, 2, {self.tile_size}, {self.tile_size}), got {pixels.shape}")
        if tx is not None:
            tx = np.asarray(tx, dtype=np.float32).reshape(-1, 3)
            if len(tx) != len(pixels):
                raise DatasetError(f"{len(tx)} transmitter rows for {len(pixels)} tiles")
        if heights is not None:
            heights = np.asarray(heights, dtype=np.float32).reshape(-1, self.tile_size, self.tile_size)
            if len(heights) != len(pixels) or not np.isfinite(heights).all() or (heights < 0).any():
                raise DatasetError(f"building heights must be {len(pixels)} finite, non-negative (H, W) maps")
        buf = self._pending.setdefault((split, region), ([], [], []))
        buf[0].append(pixels)
        buf[1].append(tx)
        buf[2].append(heights)
        if sum(len(p) for p in buf[0]) >= self.shard_size:
            self._flush(split, region)

    def _flush(self, split: str, region: str, final: bool = False) -> None:
        """Write the pending tiles of (split, region) as full shards (and the rest if `final`)."""
        maps, txs, hs = self._pending.pop((split, region), ([], [], []))
        if not maps:
            return
        maps = np.concatenate(maps)
        txs = np.concatenate(txs) if all(t is not None for t in txs) else None
        hs = np.concatenate(hs) if all(h is not None for h in hs) else None
        end = len(maps) if final else len(maps) // self.shard_size * self.shard_size
        (self.root / split).mkdir(exist_ok=True)
        for start in range(0, end, self.shard_size):
            stop = min(start + self.shard_size, end)
            index = sum(1 for s in self._shards[split] if s.region == region)
            stem = f"{split}/{region}-{index:05d}"
            np.save(self.root / f"{stem}.npy", maps[start:stop])
            tx_file = None
            if txs is not None:
                tx_file = f"{stem}.tx.npy"
                np.save(self.root / tx_file, txs[start:stop])
            height_file = None
            if hs is not None:
                height_file = f"{stem}.height.npy"
                np.save(self.root / height_file, hs[start:stop].astype(np.float16))
            sha = sha256_file(self.root / f"{stem}.npy")
            self._shards[split].append(_Shard(f"{stem}.npy", region, stop - start, sha, tx_file, height_file))
        if end < len(maps):
            self._pending[(split, region)] = ([maps[end:]], [None if txs is None else txs[end:]],
                                              [None if hs is None else hs[end:]])

    def close(self) -> Path:
        for split, region in list(self._pending):
            self._flush(split, region, final=True)
        splits = {}
        for split, shards in self._shards.items():
            splits[split] = {
                "regions": sorted({s.region for s in shards}),
                "count": sum(s.count for s in shards),
                "shards": [{k: v for k, v in vars(s).items() if k != "height_file" or v} for s in shards],
            }
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "source": self.source,
            "tile_size": self.tile_size,
            "cell_size_m": self.cell_size_m,
            "carrier_hz": self.carrier_hz,
            "channels": list(codec.CHANNELS),
            "tx_convention": TX_CONVENTION,
            "codec": {
                "gain_db_range": [codec.GAIN_DB_MIN, codec.GAIN_DB_MAX],
                "aoa_sine_pixel_range": [codec.AOA_PIXEL_MIN, codec.AOA_PIXEL_MAX],
                "building_value": 0.0,
            },
            "count": sum(v["count"] for v in splits.values()),
            "checksum": hashlib.sha256(
                "".join(s.sha256 for sh in self._shards.values() for s in sh).encode()
            ).hexdigest(),
            "splits": splits,
            "provenance": self.provenance,
        }
        tmp = self.root / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, self.root / "manifest.json")
        return self.root / "manifest.json"


class Split:
    """A read-only, memory-mapped view of one split: `len`, indexing, slicing and batches."""

    def __init__(self, root: Path, name: str, info: dict, tx_shift: float = 0.0):
        self.name = name
        self._tx_shift = tx_shift  # added to transmitter rows/columns written in an older convention
        self.regions: list[str] = list(info["regions"])
        self._shards = info["shards"]
        self._root = root
        self._arrays: list[np.ndarray | None] = [None] * len(self._shards)
        self._heights: list[np.ndarray | None] = [None] * len(self._shards)
        self._offsets = np.cumsum([0] + [s["count"] for s in self._shards])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _shard(self, i: int) -> np.ndarray:
        if self._arrays[i] is None:
            self._arrays[i] = np.load(self._root / self._shards[i]["file"], mmap_mode="r")
        return self._arrays[i]

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for split {self.name!r} of {len(self)} tiles")
        index %= len(self)
        shard = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return np.asarray(self._shard(shard)[index - self._offsets[shard]])

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Tiles at `indices` as one (B, 2, H, W) float32 array."""
        return np.stack([self[int(i)] for i in indices]).astype(np.float32)

    @property
    def has_heights(self) -> bool:
        """Whether any shard records building heights."""
        return any(s.get("height_file") for s in self._shards)

    def heights(self, indices: np.ndarray) -> np.ndarray:
        """(B, H, W) float32 building heights in metres (0 outdoors) of the tiles at `indices`; NaN
        maps for tiles whose shard records none."""
        out = []
        for index in np.asarray(indices).reshape(-1):
            index = int(index) % len(self)
            shard = int(np.searchsorted(self._offsets, index, side="right") - 1)
            name = self._shards[shard].get("height_file")
            if not name:
                size = self[index].shape[-1]
                out.append(np.full((size, size), np.nan, np.float32))
                continue
            if self._heights[shard] is None:
                self._heights[shard] = np.load(self._root / name, mmap_mode="r")
            out.append(np.asarray(self._heights[shard][index - self._offsets[shard]], np.float32))
        return np.stack(out)

    def region_indices(self, region: str) -> np.ndarray:
        """Indices of the tiles of one region."""
        if region not in self.regions:
            raise DatasetError(f"region {region!r} is not in split {self.name!r} (has {self.regions})")
        parts = [
            np.arange(self._offsets[i], self._offsets[i + 1])
            for i, s in enumerate(self._shards)
            if s["region"] == region
        ]
        return np.concatenate(parts)

    def transmitters(self) -> np.ndarray | None:
        """(N, 3) transmitter positions, or None when the source does not record them."""
        if not all(s.get("tx_file") for s in self._shards):
            return None
        tx = np.concatenate([np.load(self._root / s["tx_file"]) for s in self._shards])
        if self._tx_shift:
            tx[:, :2] += self._tx_shift
        return tx

    def batches(self, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
        """Batches over one epoch, shuffled when `rng` is given; the last batch may be smaller."""
        order = np.arange(len(self)) if rng is None else rng.permutation(len(self))
        for start in range(0, len(order), batch_size):
            yield self.take(np.sort(order[start : start + batch_size]))


class Dataset:
    """A dataset directory opened for reading. Checks the manifest; `verify()` checks the bytes."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise DatasetError(f"{self.root} is not a dataset: {path} is missing (unfinished write?)")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path} is not valid JSON: {e}") from e
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise DatasetError(
                f"{path}: format {self.manifest.get('format')!r} version {self.manifest.get('version')!r} "
                f"is not {FORMAT!r} version {VERSION}"
            )
        seen: dict[str, str] = {}
        for name, info in self.manifest["splits"].items():
            for region in info["regions"]:
                if seen.setdefault(region, name) != name:
                    raise DatasetError(f"{path}: region {region!r} is in splits {seen[region]!r} and {name!r}")

    @property
    def tile_size(self) -> int:
        return int(self.manifest["tile_size"])

    def split(self, name: str) -> Split:
        if name not in self.manifest["splits"]:
            raise DatasetError(f"split {name!r} not in {self.root} (has {sorted(self.manifest['splits'])})")
        legacy = self.manifest.get("source") == "sionna-rt" and "tx_convention" not in self.manifest
        return Split(self.root, name, self.manifest["splits"][name], 0.5 if legacy else 0.0)

    def verify(self) -> None:
        """Recompute every shard checksum and check shapes; raise DatasetError naming the bad file."""
        for info in self.manifest["splits"].values():
            for shard in info["shards"]:
                path = self.root / shard["file"]
                if not path.is_file():
                    raise DatasetError(f"shard {path} is missing")
                if sha256_file(path) != shard["sha256"]:
                    raise DatasetError(f"shard {path} does not match its checksum in the manifest")
                arr = np.load(path, mmap_mode="r")
                expect = (shard["count"], 2, self.tile_size, self.tile_size)
                if arr.shape != expect:
                    raise DatasetError(f"shard {path} has shape {arr.shape}, manifest says {expect}")

    def summary(self) -> dict:
        """Counts and value ranges per split and channel (reads every tile)."""
        out = {"source": self.manifest["source"], "tile_size": self.tile_size, "splits": {}}
        for name in self.manifest["splits"]:
            split = self.split(name)
            stats = {"count": len(split), "regions": split.regions}
            if len(split):
                lo = np.full(2, np.inf)
                hi = np.full(2, -np.inf)
                building = 0.0
                for batch in split.batches(256):
                    outdoor = ~codec.building_mask(batch)
                    for ch in range(2):
                        vals = batch[:, ch][outdoor]
                        if vals.size:
                            lo[ch], hi[ch] = min(lo[ch], vals.min()), max(hi[ch], vals.max())
                    building += float((~outdoor).sum())
                phys = [lo[0] * codec.GAIN_DB_SPAN + codec.GAIN_DB_MIN, hi[0] * codec.GAIN_DB_SPAN + codec.GAIN_DB_MIN]
                sine = [(lo[1] - codec.AOA_OFFSET) / codec.AOA_SCALE, (hi[1] - codec.AOA_OFFSET) / codec.AOA_SCALE]
                stats.update(
                    outdoor_gain_db=[round(float(v), 2) for v in phys],
                    outdoor_aoa_sine=[round(float(v), 4) for v in sine],
                    building_fraction=round(building / (len(split) * self.tile_size**2), 4),
                )
            out["splits"][name] = stats
        return out


class Mixture:
    """Several splits read as one, each repeated `repeat` times per epoch: a data mixture.

    Index space: split 0's tiles `repeat[0]` times over, then split 1's, and so on, so a shuffled
    epoch (trainer.DataStream) draws the sources in proportion to size x repeat. Mixing a few
    ray-traced tiles (repeated) with many procedural ones is the use: the rare real data is seen
    often, the bulk keeps the prior from memorising it. Transmitters exist when every part has them.
    """

    def __init__(self, parts: list[tuple[Split, int]]):
        if not parts:
            raise DatasetError("a mixture needs at least one split")
        for split, repeat in parts:
            if repeat < 1:
                raise DatasetError(f"repeat of split {split.name!r} must be >= 1, got {repeat}")
            if len(split) == 0:
                raise DatasetError(f"split {split.name!r} of a mixture is empty")
        self.parts = parts
        self.name = "+".join(f"{s.name}x{r}" if r > 1 else s.name for s, r in parts)
        self.regions = sorted({region for s, _ in parts for region in s.regions})
        self._offsets = np.cumsum([0] + [len(s) * r for s, r in parts])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: int) -> tuple[Split, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for mixture {self.name!r} of {len(self)} tiles")
        part = int(np.searchsorted(self._offsets, index, side="right") - 1)
        split = self.parts[part][0]
        return split, (index - int(self._offsets[part])) % len(split)

    def __getitem__(self, index: int) -> np.ndarray:
        split, i = self._locate(int(index))
        return split[i]

    def take(self, indices: np.ndarray) -> np.ndarray:
        return np.stack([self[int(i)] for i in indices]).astype(np.float32)

    @property
    def has_heights(self) -> bool:
        return any(s.has_heights for s, _ in self.parts)

    def heights(self, indices: np.ndarray) -> np.ndarray:
        """(B, H, W) building heights (NaN maps where a part records none), as Split.heights."""
        return np.stack([split.heights(np.array([i]))[0] for split, i in map(self._locate, map(int, indices))])

    def transmitters(self) -> np.ndarray | None:
        parts = [(s.transmitters(), r) for s, r in self.parts]
        if any(tx is None for tx, _ in parts):
            return None
        return np.concatenate([np.tile(tx, (r, 1)) for tx, r in parts])
