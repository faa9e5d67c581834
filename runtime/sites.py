"""Living maps: a site's measurements fused as they arrive, its map rebuilt in the background, kept
in a store and looked up by position. No gRPC (runtime.site_servicer is the thin API over it).

    sites = SiteManager(open_store("sqlite:sites.db"), repo, batcher).start()
    sites.create(definition)                     # a ckm.edge.v1.SiteDefinition
    sites.add("cell-17", measurements)           # durable on return; the map goes stale
    sites.wait_for_map("cell-17", count)         # (tests, benchmarks) until a map holds `count`
    sites.query("cell-17", positions)            # interpolated values of the newest map

How a map is built (`SiteManager._rebuild`): the site's measured cells, fused by inverse variance
(runtime.sitestore keeps the sums), are the observation y of a mask operator (one mask when every
measured cell has both channels, else one per channel) with the fused readings' RMS noise; the
site's building layout and base station are its site, as for EdgeService.Construct. The first map
is the model's default construction for that operator (its recommendation, calibrated std
included; a drive test observes a few per cent of the cells: runtime.recommend's "mask-scarce",
most of the map from the prior); every later one is incremental: the same sampler and posterior
samples, warm-started from the previous map corrected towards the new readings
(runtime.observations: the smoothest field through the residuals is added, the readings written
in) instead of the smooth fill, starting no higher than `RebuildPolicy.warm_start` of the noise
levels, with half the steps — half the network evaluations or fewer. Chosen on validation tiles
against halving the samples instead and against starting higher (0.5); measured on held-out tiles
by `ckm-bench sites`, against fresh constructions from the same measurements. A model version change
starts fresh again. Rebuilds go through the server's batcher as background jobs: queued
interactive constructions go first.

When: a map is stale once measurements arrive after it; it is rebuilt when
`rebuild_after_measurements` new ones have arrived or the oldest has waited
`rebuild_after_seconds` (the site's policy, else the server's). Several servers on one store
share the work through the store's per-site lease; each one's watchers see the others' versions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ckm_edge.protos.ckm.edge.v1 import site_pb2 as spb
from ckm_edge.runtime import api, codec, executor, operators, recommend, uncertainty
from ckm_edge.runtime.api import InvalidArgument
from ckm_edge.runtime.batcher import Batcher, Pending, ShuttingDown
from ckm_edge.runtime.sampler import network_evaluations
from ckm_edge.runtime.sitestore import MapRow, Readings, SiteExists, SiteRow, Store, now_ms

log = logging.getLogger("ckm.edge.sites")
SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BATCH_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
DEFAULT_GAIN_NOISE_DB = 2.0
DEFAULT_AOA_NOISE = 0.02
SMALL_QUERY = 64  # QueryPoints with at most this many positions are looked up in plain Python


class NotFound(LookupError):
    """An unknown site, model, adapter or map version."""


class AlreadyExists(Exception):
    """A site id taken by another definition."""


class Precondition(Exception):
    """The site is not in a state that allows the call (no map yet, its model no longer served)."""


class Exhausted(Exception):
    """A server or site limit (docs/serving.md)."""


@dataclass(frozen=True)
class SiteLimits:
    """What the site service holds and accepts; each one refused as RESOURCE_EXHAUSTED or
    INVALID_ARGUMENT naming it."""

    max_sites: int = 1000  # sites per store
    max_measurements_per_site: int = 1_000_000
    max_measurements_per_request: int = 10_000
    max_query_points: int = 4096
    max_watchers: int = 256  # open WatchMap streams per server
    add_rate_per_site: float = 50.0  # AddMeasurements calls per second per site (bursts of twice that)
    query_rate: float = 20000.0  # QueryPoints calls per second per server (bursts of twice that)


@dataclass(frozen=True)
class RebuildPolicy:
    """When and how maps are rebuilt (a site's SitePolicy overrides the first two)."""

    after_measurements: int = 64
    after_seconds: float = 2.0
    warm_start: float = 0.3  # where an incremental rebuild starts at the latest, as a fraction of the noise levels
    warm_steps: float = 0.5  # its steps as a share of a fresh construction's (rounded up, at least 1)
    warm_samples: float = 1.0  # its posterior samples as a share of a fresh construction's (rounded down, at least 1)
    workers: int = 1  # rebuild threads per server
    lease_seconds: float = 10.0  # a rebuild's hold on its site, renewed while it runs (a killed server's runs out)
    poll_seconds: float = 0.25  # how often the store is checked for due rebuilds and others' versions
    keep_versions: int = 16  # map versions kept per site (the store's)

    def __post_init__(self):
        if self.after_measurements < 1 or self.after_seconds < 0 or self.workers < 1:
            raise ValueError("need after_measurements >= 1, after_seconds >= 0 and workers >= 1")
        if not all(0 < v <= 1 for v in (self.warm_start, self.warm_steps, self.warm_samples)):
            raise ValueError("warm_start, warm_steps and warm_samples must be in (0, 1]")


@dataclass(frozen=True)
class Geometry:
    """TileGeometry: world metres <-> the tile's cell coordinates (site.proto)."""

    origin_x: float
    origin_y: float
    cell: float
    orientation_deg: float

    def to_cells(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = math.radians(self.orientation_deg)
        dx, dy = np.asarray(x, np.float64) - self.origin_x, np.asarray(y, np.float64) - self.origin_y
        col = (dx * math.cos(a) + dy * math.sin(a)) / self.cell
        row = (dx * math.sin(a) - dy * math.cos(a)) / self.cell
        return row, col

    def to_world(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = math.radians(self.orientation_deg)
        row, col = np.asarray(row, np.float64), np.asarray(col, np.float64)
        x = self.origin_x + self.cell * (col * math.cos(a) + row * math.sin(a))
        y = self.origin_y + self.cell * (col * math.sin(a) - row * math.cos(a))
        return x, y


@dataclass(frozen=True)
class SiteSpec:
    """A stored definition, parsed: what rebuilds and lookups need."""

    definition: object  # spb.SiteDefinition, resolved
    site: object | None  # runtime.site.Site
    geometry: Geometry | None
    tile: int

    @property
    def policy(self) -> tuple[int, float]:
        p = self.definition.policy
        return p.rebuild_after_measurements, p.rebuild_after_seconds


class _Bucket:
    """A token bucket: `rate` per second, bursts of 2 x rate."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.at = rate, 2 * rate, time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(2 * self.rate, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True


@dataclass
class _Cached:
    """A site's newest map as QueryPoints reads it (also as nested lists: a few points are looked up
    in plain Python, ~50x faster than numpy's per-call overhead)."""

    version: int
    mean: np.ndarray
    std: np.ndarray
    building: np.ndarray
    calibrated: bool
    coverage: float
    checked: float  # when the store was last asked for a newer version (time.monotonic)
    spec: SiteSpec | None = None
    lists: tuple | None = None  # (mean, std, building) .tolist()

    def __post_init__(self):
        self.lists = (self.mean.tolist(), self.std.tolist(), self.building.tolist())


def incremental_construction(cfg, steps: int, samples: int, policy: RebuildPolicy) -> tuple[object, int, int]:
    """A fresh construction (a warm-startable sampler's config, steps, samples) -> the incremental
    rebuild's (module doc): starting no higher than `policy.warm_start`, `policy.warm_steps` of the
    steps, `policy.warm_samples` of the samples, at most half the network evaluations."""
    fresh = network_evaluations(cfg, steps, samples)
    cfg = dataclasses.replace(cfg, start=min(cfg.start, policy.warm_start))
    steps = max(1, math.ceil(steps * policy.warm_steps))
    samples = max(1, math.floor(samples * policy.warm_samples))
    while steps > 1 and network_evaluations(cfg, steps, samples) > fresh / 2:  # one sample: fewer steps instead
        steps -= 1
    return cfg, steps, samples


class SiteManager:
    def __init__(self, store: Store, repo, batcher: Batcher, metrics=None, limits: SiteLimits = SiteLimits(),
                 policy: RebuildPolicy = RebuildPolicy(), row_bytes: bool = True, max_samples: int | None = None):
        self.store, self.repo, self.batcher, self.metrics = store, repo, batcher, metrics
        self.limits, self.policy, self.row_bytes, self.max_samples = limits, policy, row_bytes, max_samples
        self.owner = f"{uuid.uuid4().hex[:12]}"  # this server, for the store's rebuild leases
        self._specs: dict[bytes, SiteSpec] = {}  # definition bytes -> parsed
        self._maps: dict[str, _Cached] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._query_bucket = _Bucket(limits.query_rate)
        self._lock = threading.Lock()
        self._changed = threading.Condition()  # notified on new measurements and new maps
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._watchers = 0
        self._building: set[str] = set()
        self._threads: list[threading.Thread] = []

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> SiteManager:
        for i in range(self.policy.workers):
            t = threading.Thread(target=self._loop, name=f"ckm-site-rebuild-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        with self._changed:
            self._changed.notify_all()
        for t in self._threads:
            t.join(timeout)

    # -- sites ------------------------------------------------------------------------------------
    def create(self, definition) -> tuple[SiteRow, bool]:
        d = self._resolve(definition)
        if self.store.get_site(d.site_id) is None and self.store.count_sites() >= self.limits.max_sites:
            raise Exhausted(f"this server's store holds {self.limits.max_sites} sites, its limit; delete one first")
        try:
            return self._timed("create_site", self.store.create_site, d.site_id, d.SerializeToString(deterministic=True),
                               now_ms())
        except SiteExists as e:
            raise AlreadyExists(str(e)) from None

    def get(self, site_id: str) -> SiteRow:
        _check_id(site_id)
        row = self._timed("get_site", self.store.get_site, site_id)
        if row is None:
            raise NotFound(f"site_id: no site {site_id!r}")
        return row

    def list(self, page_size: int, token: str) -> tuple[list[SiteRow], str]:
        if not 0 <= page_size <= 1000:
            raise InvalidArgument(f"page_size must be in [0, 1000], got {page_size}")
        if token and not SITE_ID.match(token):
            raise InvalidArgument("page_token is not one this server gave")
        size = page_size or 100
        rows = self._timed("list_sites", self.store.list_sites, token, size + 1)
        return rows[:size], (rows[size - 1].site_id if len(rows) > size else "")

    def delete(self, site_id: str) -> tuple[int, int]:
        _check_id(site_id)
        out = self._timed("delete_site", self.store.delete_site, site_id)
        if out is None:
            raise NotFound(f"site_id: no site {site_id!r}")
        with self._lock:
            self._maps.pop(site_id, None)
        with self._changed:
            self._changed.notify_all()
        return out

    def definition(self, row: SiteRow):
        return self.spec(row).definition

    def spec(self, row: SiteRow) -> SiteSpec:
        with self._lock:
            spec = self._specs.get(row.definition)
        if spec is None:
            d = spb.SiteDefinition.FromString(row.definition)
            site = api.site_from_proto(d.site) if d.HasField("site") else None
            geo = d.geometry
            geometry = (Geometry(geo.origin_x_m, geo.origin_y_m, geo.cell_size_m, geo.orientation_deg)
                        if d.HasField("geometry") else None)
            tile = int(site.building.shape[-1]) if site is not None and site.building is not None else 0
            spec = SiteSpec(d, site, geometry, tile)
            with self._lock:
                self._specs[row.definition] = spec
        return spec

    def _resolve(self, definition):
        """A CreateSite definition, checked, with its model version and defaults filled in."""
        d = spb.SiteDefinition()
        d.CopyFrom(definition)
        _check_id(d.site_id, "definition.site_id")
        try:
            model = self.repo.resolve(d.model_name, d.model_version)
        except LookupError as e:
            raise NotFound(f"definition.model_name: {e}") from None
        pkg = model.package
        d.model_name, d.model_version = pkg.name, pkg.version
        if d.adapter_name:
            try:
                adapter, _ = self.repo.resolve_adapter(d.adapter_name, d.adapter_version, model)
            except LookupError as e:
                raise NotFound(f"definition.adapter_name: {e}") from None
            except Exception as e:  # PackageError: it adapts another model
                raise Precondition(f"definition.adapter_name: {e}") from None
            d.adapter_version = adapter.package.version
        elif d.adapter_version:
            raise InvalidArgument("definition.adapter_version given without adapter_name")
        if d.HasField("site"):
            try:
                api.site_from_proto(d.site, (2, pkg.tile_size, pkg.tile_size))
            except InvalidArgument as e:
                raise InvalidArgument(f"definition.{e}") from None
        if d.HasField("geometry"):
            g = d.geometry
            if not all(math.isfinite(v) for v in (g.origin_x_m, g.origin_y_m, g.cell_size_m, g.orientation_deg)):
                raise InvalidArgument("definition.geometry: every number must be finite")
            if not 0 < g.cell_size_m <= 1000:
                raise InvalidArgument(f"definition.geometry.cell_size_m must be in (0, 1000] metres, got {g.cell_size_m}")
            if not -360 <= g.orientation_deg <= 360:
                raise InvalidArgument(f"definition.geometry.orientation_deg must be in [-360, 360], got {g.orientation_deg}")
        for name, default, top in (("default_gain_noise_db", DEFAULT_GAIN_NOISE_DB, 100.0),
                                   ("default_aoa_noise", DEFAULT_AOA_NOISE, 2.0)):
            v = getattr(d, name)
            if not (math.isfinite(v) and 0 <= v <= top):
                raise InvalidArgument(f"definition.{name} must be in (0, {top:g}] (0: the default {default:g}), got {v}")
            setattr(d, name, v or default)
        p = d.policy
        if not 0 <= p.rebuild_after_measurements <= self.limits.max_measurements_per_site:
            raise InvalidArgument(f"definition.policy.rebuild_after_measurements must be in [0, "
                                  f"{self.limits.max_measurements_per_site}], got {p.rebuild_after_measurements}")
        if not (math.isfinite(p.rebuild_after_seconds) and 0 <= p.rebuild_after_seconds <= 86400):
            raise InvalidArgument(f"definition.policy.rebuild_after_seconds must be in [0, 86400], got {p.rebuild_after_seconds}")
        p.rebuild_after_measurements = p.rebuild_after_measurements or self.policy.after_measurements
        p.rebuild_after_seconds = p.rebuild_after_seconds or self.policy.after_seconds
        return d

    # -- measurements -----------------------------------------------------------------------------
    def add(self, site_id: str, measurements, batch_id: str = "") -> tuple[int, int, int, bool]:
        """(accepted, measurement count, map version, duplicate); the batch is durable on return."""
        _check_id(site_id)
        if batch_id and not BATCH_ID.match(batch_id):
            raise InvalidArgument("batch_id must be 1-128 printable ASCII characters without spaces")
        n = len(measurements)
        if n == 0:
            raise InvalidArgument("measurements: give at least one")
        if n > self.limits.max_measurements_per_request:
            raise InvalidArgument(f"measurements: {n} in one request, more than the limit of "
                                  f"{self.limits.max_measurements_per_request}")
        row = self.get(site_id)
        with self._lock:
            bucket = self._buckets.setdefault(site_id, _Bucket(self.limits.add_rate_per_site))
        if not bucket.take():
            raise Exhausted(f"site {site_id!r}: more than {self.limits.add_rate_per_site:g} AddMeasurements calls per "
                            "second; batch measurements or slow down")
        spec = self.spec(row)
        readings = self.readings(spec, measurements, self._tile(spec))
        try:
            accepted, count, duplicate = self._timed(
                "add_measurements", self.store.add_measurements, site_id, readings, now_ms(), batch_id,
                self.limits.max_measurements_per_site)
        except KeyError:
            raise NotFound(f"site_id: no site {site_id!r}") from None
        except OverflowError as e:
            raise Exhausted(str(e)) from None
        if not duplicate and count - row.map_measurement_count >= spec.policy[0]:
            self._wake.set()
        with self._changed:
            self._changed.notify_all()
        return accepted, count, row.map_version, duplicate

    def readings(self, spec: SiteSpec, measurements, tile: int) -> Readings:
        """Measurement messages -> Readings in pixels; INVALID_ARGUMENT naming measurements[i].field."""
        d = spec.definition
        n = len(measurements)
        row, col = np.empty(n), np.empty(n)
        gain, gvar = np.full(n, np.nan), np.full(n, np.nan)
        aoa, avar = np.full(n, np.nan), np.full(n, np.nan)
        when = np.empty(n, np.int64)
        received = now_ms()
        for i, m in enumerate(measurements):
            where = f"measurements[{i}]"
            row[i], col[i] = self._position(spec, m.position if m.HasField("position") else None, f"{where}.position", tile)
            if not (m.HasField("gain_db") or m.HasField("aoa_sine")):
                raise InvalidArgument(f"{where}: give gain_db, aoa_sine or both")
            if m.HasField("gain_db"):
                _within(m.gain_db, codec.GAIN_DB_MIN, codec.GAIN_DB_MAX, f"{where}.gain_db", "dB")
                noise = _noise(m.gain_noise_db, d.default_gain_noise_db, 100.0, f"{where}.gain_noise_db")
                gain[i], gvar[i] = (m.gain_db - codec.GAIN_DB_MIN) / codec.GAIN_DB_SPAN, (noise / codec.GAIN_DB_SPAN) ** 2
            if m.HasField("aoa_sine"):
                _within(m.aoa_sine, -1.0, 1.0, f"{where}.aoa_sine", "")
                noise = _noise(m.aoa_noise, d.default_aoa_noise, 2.0, f"{where}.aoa_noise")
                aoa[i], avar[i] = codec.AOA_SCALE * m.aoa_sine + codec.AOA_OFFSET, (codec.AOA_SCALE * noise) ** 2
            if m.timestamp_unix_ms < 0:
                raise InvalidArgument(f"{where}.timestamp_unix_ms must be >= 0, got {m.timestamp_unix_ms}")
            when[i] = m.timestamp_unix_ms or received
        r, c = np.floor(row).astype(int), np.floor(col).astype(int)
        building = spec.site.building if spec.site is not None else None
        if building is not None:
            inside = np.asarray(building, bool)[r, c]
            if inside.any():
                i = int(np.argmax(inside))
                raise InvalidArgument(f"measurements[{i}].position: cell ({r[i]}, {c[i]}) is a building in the site's "
                                      "layout, where the map holds no signal")
        return Readings(r, c, gain, gvar, aoa, avar, when)

    def _position(self, spec: SiteSpec, pos, where: str, tile: int) -> tuple[float, float]:
        """A Position message -> (row, col) in cells of the `tile` x `tile` map; INVALID_ARGUMENT naming `where`."""
        if pos is None or pos.WhichOneof("kind") is None:
            raise InvalidArgument(f"{where} is required (world metres or cell coordinates)")
        if pos.WhichOneof("kind") == "world":
            if spec.geometry is None:
                raise InvalidArgument(f"{where}.world: the site was created without a geometry; give cell coordinates")
            if not (math.isfinite(pos.world.x_m) and math.isfinite(pos.world.y_m)):
                raise InvalidArgument(f"{where}.world must be finite")
            r, c = spec.geometry.to_cells(pos.world.x_m, pos.world.y_m)
            r, c = float(r), float(c)
        else:
            r, c = pos.cell.row, pos.cell.col
            if not (math.isfinite(r) and math.isfinite(c)):
                raise InvalidArgument(f"{where}.cell must be finite")
        if not (0 <= r < tile and 0 <= c < tile):
            raise InvalidArgument(f"{where}: ({r:.6g}, {c:.6g}) in cells lies outside the {tile} x {tile} tile")
        return r, c

    def _tile(self, spec: SiteSpec) -> int:
        if spec.tile:
            return spec.tile
        model = self._model(spec)
        return model.package.tile_size

    def _model(self, spec: SiteSpec):
        d = spec.definition
        try:
            return self.repo.resolve(d.model_name, d.model_version)
        except LookupError as e:
            raise Precondition(f"the site's model is no longer served: {e}") from None

    # -- maps -------------------------------------------------------------------------------------
    def get_map(self, site_id: str, version: int = 0) -> tuple[MapRow, SiteRow]:
        row = self.get(site_id)
        if version < 0:
            raise InvalidArgument(f"version must be >= 0, got {version}")
        m = self._timed("get_map", self.store.get_map, site_id, version)
        if m is None:
            if version:
                kept = self.store.map_versions(site_id)
                raise NotFound(f"version: site {site_id!r} keeps map versions {kept}, not {version}")
            raise Precondition(f"site {site_id!r} has no map yet ({row.measurement_count} measurements; the first map "
                               "is built once they reach its policy)")
        return m, row

    def query(self, site_id: str, positions) -> tuple[_Cached, dict[str, np.ndarray]]:
        """Values of the newest map at positions (bilinear between cell centres, building cells
        left out of the weights; a position in a building cell gives NaN and building True):
        (the map, [(building, values in FIELDS' order) per position])."""
        _check_id(site_id)
        n = len(positions)
        if not 1 <= n <= self.limits.max_query_points:
            raise InvalidArgument(f"positions: give 1 to {self.limits.max_query_points}, got {n}")
        if not self._query_bucket.take():
            raise Exhausted(f"more than {self.limits.query_rate:g} QueryPoints calls per second on this server")
        cached = self._current(site_id)
        tile = cached.mean.shape[-1]
        pts = [self._position(cached.spec, p, f"positions[{i}]", tile) for i, p in enumerate(positions)]
        if len(pts) <= SMALL_QUERY:
            z = uncertainty.z_of(cached.coverage) if cached.calibrated else 0.0
            return cached, [interpolate_point(cached, r, c, z) for r, c in pts]
        a = np.asarray(pts, np.float64)
        v = interpolate(cached, a[:, 0], a[:, 1])
        columns = [v[k].tolist() for k in FIELDS]
        return cached, [(b, tuple(col[i] for col in columns)) for i, b in enumerate(v["building"].tolist())]

    def _current(self, site_id: str) -> _Cached:
        """The site's newest map from memory; the store is asked for a newer one (another server's,
        or a deleted site) at most every `poll_seconds`."""
        with self._lock:
            c = self._maps.get(site_id)
        if c is not None and c.spec is not None and time.monotonic() - c.checked < self.policy.poll_seconds:
            return c
        row = self.get(site_id)
        if c is None or c.version != row.map_version:
            if row.map_version == 0:
                raise Precondition(f"site {site_id!r} has no map yet ({row.measurement_count} measurements)")
            m = self._timed("get_map", self.store.get_map, site_id, 0)
            if m is None:
                raise Precondition(f"site {site_id!r} has no map yet")
            c = self._cache(m)
        c.spec, c.checked = self.spec(row), time.monotonic()
        return c

    def _cache(self, m: MapRow) -> _Cached:
        c = _Cached(m.version, m.mean, m.std, codec.building_mask(np.clip(m.mean, 0, 1)), m.calibrated, m.coverage,
                    time.monotonic())
        with self._lock:
            old = self._maps.get(m.site_id)
            if old is None or old.version <= m.version:
                self._maps[m.site_id] = c
        return c

    def watch(self, site_id: str, after: int, alive: Callable[[], bool]) -> Iterator[MapRow]:
        """Map versions newer than `after`, in order (a version already evicted from the store's
        history is skipped), as they are built; ends when `alive()` turns False or the site goes
        (NotFound) or the server stops."""
        row = self.get(site_id)
        if after < 0:
            raise InvalidArgument(f"after_version must be >= 0, got {after}")
        with self._lock:
            if self._watchers >= self.limits.max_watchers:
                raise Exhausted(f"this server has {self.limits.max_watchers} WatchMap streams open, its limit")
            self._watchers += 1
        try:
            last = after or max(0, row.map_version - 1)  # after 0: the current map first
            while alive() and not self._stop.is_set():
                row = self.store.get_site(site_id)
                if row is None:
                    raise NotFound(f"site_id: site {site_id!r} was deleted")
                if row.map_version > last:
                    newer = [v for v in self.store.map_versions(site_id) if v > last]
                    for v in newer:
                        m = self.store.get_map(site_id, v)
                        if m is not None:
                            yield m
                        last = v
                    continue
                with self._changed:
                    self._changed.wait(timeout=self.policy.poll_seconds)
            if self._stop.is_set():
                raise ShuttingDown("the server is shutting down; resume with after_version")
        finally:
            with self._lock:
                self._watchers -= 1

    def wait_for_map(self, site_id: str, measurement_count: int, timeout: float = 60.0) -> MapRow:
        """Block until the site's newest map holds at least `measurement_count` measurements."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.get(site_id)
            if row.map_version and row.map_measurement_count >= measurement_count:
                return self.store.get_map(site_id)
            if time.monotonic() > deadline:
                raise TimeoutError(f"site {site_id!r}: no map of {measurement_count} measurements within {timeout} s "
                                   f"(newest: version {row.map_version} of {row.map_measurement_count})")
            self._wake.set()
            with self._changed:
                self._changed.wait(timeout=0.05)

    # -- rebuilds ---------------------------------------------------------------------------------
    def due(self, row: SiteRow, now: int) -> bool:
        count, seconds = self.spec(row).policy
        return row.stale and (row.measurement_count - row.map_measurement_count >= count
                              or now - row.stale_since_ms >= seconds * 1000)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                stale = self.store.stale_sites()
                now = now_ms()
                due = [r for r in stale if self.due(r, now)]
                if self.metrics is not None:
                    self.metrics.site_rebuilds_due.set(len(due))
                for row in due:
                    if self._stop.is_set():
                        break
                    self._try_rebuild(row.site_id)
            except Exception:
                log.exception("site rebuild loop")
            self._wake.wait(self.policy.poll_seconds)

    def _try_rebuild(self, site_id: str) -> None:
        with self._lock:
            if site_id in self._building:
                return
            self._building.add(site_id)
        try:
            if not self.store.try_lease(site_id, self.owner, now_ms(), self.policy.lease_seconds):
                return  # another server builds it
            try:
                row = self.store.get_site(site_id)
                if row is not None and row.stale:
                    self._rebuild(row)
            finally:
                self.store.release_lease(site_id, self.owner)
        finally:
            with self._lock:
                self._building.discard(site_id)

    def plan(self, row: SiteRow, previous: MapRow | None):
        """(job, fused, incremental, network evaluations) of the site's next map (module doc)."""
        spec = self.spec(row)
        model = self._model(spec)
        pkg = model.package
        n = pkg.tile_size
        fused = self.store.fused(row.site_id, (n, n))
        measured = fused.measured
        y = np.where(measured, fused.value, 0.0).astype(np.float32)[None]
        op = (operators.Mask(measured[0]) if (measured[0] == measured[1]).all()
              else operators.PerChannel((operators.Mask(measured[0]), operators.Mask(measured[1]))))
        sigma = float(np.sqrt(np.mean(fused.variance[measured])))
        site = spec.site
        cfg, steps, samples = recommend.resolve(pkg.manifest.samplers, op, site=site is not None and site.building is not None)
        if self.max_samples is not None:
            samples = min(samples, self.max_samples)
        incremental = (previous is not None and previous.model_version == pkg.version and hasattr(cfg, "start")
                       and previous.mean.shape == (2, n, n))
        init = None
        if incremental:
            cfg, steps, samples = incremental_construction(cfg, steps, samples, self.policy)
            init = previous.mean
        adapter = lam = None
        d = spec.definition
        if d.adapter_name:
            adapter, lam = self.repo.resolve_adapter(d.adapter_name, d.adapter_version, model)
        config = executor.ConstructConfig(steps, samples, seed=row.measurement_count, sampler=cfg)
        job = executor.plan(model, op, y, (2, n, n), config, sigma=sigma, site=site, adapter=adapter, adapter_lambda=lam,
                            init=init)
        return job, fused, incremental, network_evaluations(cfg, steps, samples)

    def _rebuild(self, row: SiteRow) -> MapRow | None:
        start = time.perf_counter()
        previous = self.store.get_map(row.site_id) if row.map_version else None
        job, fused, incremental, evaluations = self.plan(row, previous)
        pending = Pending(job, job.row_bytes() if self.row_bytes else 0, background=True)
        self.batcher.submit(pending)
        renewed = time.monotonic()
        while not pending.done.wait(0.1):
            if self._stop.is_set():
                return None
            if time.monotonic() - renewed > self.policy.lease_seconds / 3:
                self.store.try_lease(row.site_id, self.owner, now_ms(), self.policy.lease_seconds)
                renewed = time.monotonic()
        kind = "incremental" if incremental else "fresh"
        if pending.error is not None:
            log.error("site %s: rebuild failed: %s", row.site_id, pending.error)
            if self.metrics is not None:
                self.metrics.site_rebuilds.labels(kind, "failed").inc()
            return None
        result = pending.result
        std = result.std if result.std is not None else np.zeros_like(result.mean)
        pkg = job.model.package
        m = MapRow(row.site_id, row.map_version + 1, result.mean.astype(np.float32), std.astype(np.float32),
                   result.calibrated, result.coverage, fused.measurement_count, int(fused.measured.any(axis=0).sum()),
                   now_ms(), incremental, evaluations, time.perf_counter() - start, pkg.name, pkg.version)
        stored = self._timed("put_map", self.store.put_map, m)
        if self.metrics is not None:
            self.metrics.site_rebuilds.labels(kind, "stored" if stored else "superseded").inc()
            self.metrics.site_rebuild_seconds.labels(kind).observe(m.seconds)
        if stored:
            self._cache(m)
            with self._changed:
                self._changed.notify_all()
        return m if stored else None

    # -- metrics ----------------------------------------------------------------------------------
    def _timed(self, op: str, fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            if self.metrics is not None:
                self.metrics.store_seconds.labels(op).observe(time.perf_counter() - t)


FIELDS = ("gain_db", "gain_std_db", "aoa_sine", "aoa_sine_std", "gain_db_low", "gain_db_high", "aoa_sine_low",
          "aoa_sine_high")
_NAN = float("nan")
_NANS = (_NAN,) * len(FIELDS)


def interpolate_point(c: _Cached, row: float, col: float, z: float) -> tuple[bool, tuple[float, ...]]:
    """`interpolate` for one point in plain Python: (building, values in FIELDS' order)."""
    mean, std, building = c.lists
    h, w = len(building), len(building[0])
    r = min(max(row - 0.5, 0.0), h - 1.0)
    q = min(max(col - 0.5, 0.0), w - 1.0)
    r0, q0 = min(int(r), h - 2), min(int(q), w - 2)
    fr, fq = r - r0, q - q0
    if building[min(max(int(row), 0), h - 1)][min(max(int(col), 0), w - 1)]:
        return True, _NANS
    total = m0 = m1 = s0 = s1 = 0.0
    g0, g1, d0, d1 = mean[0], mean[1], std[0], std[1]
    for rr, qq, wt in ((r0, q0, (1 - fr) * (1 - fq)), (r0 + 1, q0, fr * (1 - fq)), (r0, q0 + 1, (1 - fr) * fq),
                       (r0 + 1, q0 + 1, fr * fq)):
        if wt == 0.0 or building[rr][qq]:
            continue
        total += wt
        m0 += wt * g0[rr][qq]
        m1 += wt * g1[rr][qq]
        s0 += wt * d0[rr][qq]
        s1 += wt * d1[rr][qq]
    if total <= 0.0:
        return True, _NANS
    m0, m1, s0, s1 = m0 / total, m1 / total, s0 / total, s1 / total
    out = (m0 * _SPAN + _LO_DB, s0 * codec.GAIN_RMSE_FACTOR, _sine(m1), s1 * codec.AOA_RMSE_FACTOR)
    if not c.calibrated:
        return False, out + _NANS[:4]
    g_lo, g_hi = min(max(m0 - z * s0, 0.0), 1.0), min(max(m0 + z * s0, 0.0), 1.0)
    a_lo, a_hi = min(max(m1 - z * s1, 0.0), 1.0), min(max(m1 + z * s1, 0.0), 1.0)
    return False, out + (g_lo * _SPAN + _LO_DB, g_hi * _SPAN + _LO_DB, _sine(a_lo), _sine(a_hi))


_SPAN, _LO_DB = codec.GAIN_DB_SPAN, codec.GAIN_DB_MIN


def _sine(px: float) -> float:
    """An AoA pixel -> its sine (the codec's clip and scale), for one value."""
    return (min(max(px, codec.AOA_PIXEL_MIN), codec.AOA_PIXEL_MAX) - codec.AOA_OFFSET) / codec.AOA_SCALE


def interpolate(c: _Cached, row: np.ndarray, col: np.ndarray) -> dict[str, np.ndarray]:
    """Bilinear values at cell coordinates (row, col) between cell centres, building cells left out
    of the weights: {"building", "gain_db", "gain_std_db", "aoa_sine", "aoa_sine_std", and with a
    calibrated map the interval's "gain_db_low/high", "aoa_sine_low/high" (else NaN)}."""
    h, w = c.mean.shape[-2:]
    r = np.clip(np.asarray(row) - 0.5, 0, h - 1)
    q = np.clip(np.asarray(col) - 0.5, 0, w - 1)
    r0, q0 = np.minimum(np.floor(r).astype(int), h - 2), np.minimum(np.floor(q).astype(int), w - 2)
    fr, fq = r - r0, q - q0
    corners = [(r0, q0, (1 - fr) * (1 - fq)), (r0 + 1, q0, fr * (1 - fq)), (r0, q0 + 1, (1 - fr) * fq), (r0 + 1, q0 + 1, fr * fq)]
    total = np.zeros(len(r))
    mean, std = np.zeros((2, len(r))), np.zeros((2, len(r)))
    for rr, qq, wt in corners:
        wt = np.where(c.building[rr, qq], 0.0, wt)
        total += wt
        mean += wt * c.mean[:, rr, qq]
        std += wt * c.std[:, rr, qq]
    inside = np.floor(np.asarray(row)).astype(int).clip(0, h - 1), np.floor(np.asarray(col)).astype(int).clip(0, w - 1)
    building = c.building[inside] | (total <= 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean, std = mean / total, std / total
    gain = mean[0] * codec.GAIN_DB_SPAN + codec.GAIN_DB_MIN
    sine = (np.clip(mean[1], codec.AOA_PIXEL_MIN, codec.AOA_PIXEL_MAX) - codec.AOA_OFFSET) / codec.AOA_SCALE
    out = {"building": building, "gain_db": gain, "gain_std_db": std[0] * codec.GAIN_RMSE_FACTOR,
           "aoa_sine": sine, "aoa_sine_std": std[1] * codec.AOA_RMSE_FACTOR}
    if c.calibrated:
        lo, hi = uncertainty.interval(mean, std, uncertainty.z_of(c.coverage))
        out["gain_db_low"], out["gain_db_high"] = (v[0] * codec.GAIN_DB_SPAN + codec.GAIN_DB_MIN for v in (lo, hi))
        out["aoa_sine_low"], out["aoa_sine_high"] = (
            (np.clip(v[1], codec.AOA_PIXEL_MIN, codec.AOA_PIXEL_MAX) - codec.AOA_OFFSET) / codec.AOA_SCALE for v in (lo, hi))
    else:
        for k in ("gain_db_low", "gain_db_high", "aoa_sine_low", "aoa_sine_high"):
            out[k] = np.full(len(r), np.nan)
    for k, v in out.items():
        if k != "building":
            out[k] = np.where(building, np.nan, v)
    return out


def _check_id(site_id: str, field: str = "site_id") -> None:
    if not SITE_ID.match(site_id or ""):
        raise InvalidArgument(f"{field} must be 1-64 characters from [A-Za-z0-9._-] starting with a letter or digit, "
                              f"got {site_id!r}")


def _within(v: float, lo: float, hi: float, field: str, unit: str) -> None:
    if not (math.isfinite(v) and lo <= v <= hi):
        raise InvalidArgument(f"{field} must be a finite number in [{lo:g}, {hi:g}]{' ' + unit if unit else ''}, got {v}")


def _noise(v: float, default: float, top: float, field: str) -> float:
    if v == 0:
        return default
    if not (math.isfinite(v) and 0 < v <= top):
        raise InvalidArgument(f"{field} must be in (0, {top:g}] (0: the site's default), got {v}")
    return float(v)
