"""Where living maps are kept: sites, their measurements and map versions, durable. No gRPC.

    store = open_store("sqlite:/var/lib/ckm/sites.db")        # or "postgresql://user@host/db"
    store.create_site("cell-17", definition_bytes, now_ms)
    store.add_measurements("cell-17", rows, batch_id="ue-42-0007", now_ms)   # durable on return
    store.put_map(MapRow(...))                                   # the next version, or False (taken)

Two back ends share one schema and one set of statements: SQLite (the embedded default: one
file, WAL, `synchronous=FULL`, so an acknowledged write survives a killed process and a power
cut) and PostgreSQL (psycopg 3; a fleet of edge servers sharing sites). Every write is one
transaction: a batch of measurements lands whole or not at all, with the site's counters and its
per-cell fusion sums, so nothing half-written is ever visible.

Tables (schema version in `ckm_schema`, migrations applied in order on open, each in its own
transaction; a store newer than this code is refused):
- sites: the definition (the CreateSite message's bytes, as given), counters, the rebuild lease;
- measurements: every reading as received (cell, values in pixels, variances, time);
- cells: per measured cell and channel the inverse-variance sums sum(w), sum(w y) (w = 1/var),
  so a rebuild reads at most H x W rows however many readings arrived;
- batches: the idempotency keys of acknowledged batches;
- maps: the map versions (mean and std float32 bytes, how they were built), the newest `keep`
  per site.

Several servers on one PostgreSQL store coordinate rebuilds with a lease per site (`try_lease`):
only the holder rebuilds, and a version number is taken once (`put_map` inserts version n + 1
only while n is the newest).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1


class StoreError(RuntimeError):
    """The store cannot be opened or used (its URL, its schema, the database itself)."""


class SiteExists(StoreError):
    """A site with this id exists with another definition."""


@dataclass(frozen=True)
class SiteRow:
    site_id: str
    definition: bytes  # a serialized ckm.edge.v1.SiteDefinition
    created_ms: int
    measurement_count: int
    map_version: int
    map_measurement_count: int
    stale_since_ms: int  # when the oldest measurement the newest map lacks arrived; 0 = not stale

    @property
    def stale(self) -> bool:
        return self.measurement_count > self.map_measurement_count


@dataclass(frozen=True)
class Readings:
    """A batch of measurements, one row each: the cell, values in pixels (NaN = not measured),
    variances in pixels^2, timestamps (Unix ms)."""

    row: np.ndarray  # int
    col: np.ndarray  # int
    gain: np.ndarray  # float64, NaN where the reading has no gain
    gain_var: np.ndarray
    aoa: np.ndarray  # float64, NaN where the reading has no AoA
    aoa_var: np.ndarray
    time_ms: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.row)


@dataclass(frozen=True)
class Fused:
    """A site's measured cells, fused: per channel (2, H, W) the inverse-variance mean and its
    variance (NaN / inf where unmeasured), and the measurement count they came from."""

    value: np.ndarray
    variance: np.ndarray
    measurement_count: int

    @property
    def measured(self) -> np.ndarray:
        return np.isfinite(self.variance)


@dataclass(frozen=True)
class MapRow:
    site_id: str
    version: int
    mean: np.ndarray  # (2, H, W) float32 pixels
    std: np.ndarray  # (2, H, W) float32 pixels
    calibrated: bool
    coverage: float
    measurement_count: int
    measured_cells: int
    built_ms: int
    incremental: bool
    evaluations: int
    seconds: float
    model_name: str
    model_version: str


# One schema for both back ends: {blob}/{bigint} are filled in per dialect.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # version 1
        """CREATE TABLE sites (
            site_id TEXT PRIMARY KEY, definition {blob} NOT NULL, created_ms {bigint} NOT NULL,
            measurement_count {bigint} NOT NULL DEFAULT 0, map_version {bigint} NOT NULL DEFAULT 0,
            map_measurement_count {bigint} NOT NULL DEFAULT 0, stale_since_ms {bigint} NOT NULL DEFAULT 0,
            lease_owner TEXT NOT NULL DEFAULT '', lease_until_ms {bigint} NOT NULL DEFAULT 0)""",
        """CREATE TABLE measurements (
            site_id TEXT NOT NULL REFERENCES sites(site_id) ON DELETE CASCADE, seq {bigint} NOT NULL,
            cell_row INTEGER NOT NULL, cell_col INTEGER NOT NULL, gain DOUBLE PRECISION, gain_var DOUBLE PRECISION,
            aoa DOUBLE PRECISION, aoa_var DOUBLE PRECISION, measured_ms {bigint} NOT NULL, received_ms {bigint} NOT NULL,
            PRIMARY KEY (site_id, seq))""",
        """CREATE TABLE cells (
            site_id TEXT NOT NULL REFERENCES sites(site_id) ON DELETE CASCADE, cell_row INTEGER NOT NULL,
            cell_col INTEGER NOT NULL, gain_w DOUBLE PRECISION NOT NULL DEFAULT 0,
            gain_wy DOUBLE PRECISION NOT NULL DEFAULT 0, aoa_w DOUBLE PRECISION NOT NULL DEFAULT 0,
            aoa_wy DOUBLE PRECISION NOT NULL DEFAULT 0, PRIMARY KEY (site_id, cell_row, cell_col))""",
        """CREATE TABLE batches (
            site_id TEXT NOT NULL REFERENCES sites(site_id) ON DELETE CASCADE, batch_id TEXT NOT NULL,
            accepted {bigint} NOT NULL, PRIMARY KEY (site_id, batch_id))""",
        """CREATE TABLE maps (
            site_id TEXT NOT NULL REFERENCES sites(site_id) ON DELETE CASCADE, version {bigint} NOT NULL,
            height INTEGER NOT NULL, width INTEGER NOT NULL, mean {blob} NOT NULL, std {blob} NOT NULL,
            calibrated INTEGER NOT NULL, coverage DOUBLE PRECISION NOT NULL, measurement_count {bigint} NOT NULL,
            measured_cells {bigint} NOT NULL, built_ms {bigint} NOT NULL, incremental INTEGER NOT NULL,
            evaluations {bigint} NOT NULL, seconds DOUBLE PRECISION NOT NULL, model_name TEXT NOT NULL,
            model_version TEXT NOT NULL, PRIMARY KEY (site_id, version))""",
    ),
)

_SITE_COLUMNS = "site_id, definition, created_ms, measurement_count, map_version, map_measurement_count, stale_since_ms"
_MAP_COLUMNS = ("site_id, version, height, width, mean, std, calibrated, coverage, measurement_count, measured_cells, "
                "built_ms, incremental, evaluations, seconds, model_name, model_version")


class Store:
    """The statements, over a DB-API connection that a subclass opens (`_connect`); thread-safe
    (one connection, one lock: every call is short)."""

    dialect = ""
    blob, bigint, placeholder = "BLOB", "INTEGER", "?"

    def __init__(self, url: str, keep_versions: int = 16):
        if keep_versions < 1:
            raise StoreError("keep_versions must be >= 1")
        self.url, self.keep_versions = url, keep_versions
        self._lock = threading.RLock()
        self._conn = self._connect()
        self._migrate()

    # -- the back end -----------------------------------------------------------------------------
    def _connect(self):
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator:
        """One transaction: committed on success, rolled back on any error. A write transaction
        takes the store's write lock (SQLite) or the site row's lock (PostgreSQL) up front; a read
        takes none."""
        with self._lock:
            cur = self._conn.cursor()
            self._writing = write
            try:
                self._begin(cur)
                yield cur
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                self._writing = False
                cur.close()

    _writing = False

    def _begin(self, cur) -> None: ...

    def _migrate(self) -> None:
        with self._tx(write=True) as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS ckm_schema (version INTEGER NOT NULL)")
            cur.execute("SELECT version FROM ckm_schema")
            row = cur.fetchone()
            if row is None:
                cur.execute(self._sql("INSERT INTO ckm_schema (version) VALUES (?)"), (0,))
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise StoreError(f"the store {self.url} has schema version {current}, newer than this server's "
                             f"{SCHEMA_VERSION}; upgrade the server")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self._tx(write=True) as cur:
                cur.execute("SELECT version FROM ckm_schema")
                if cur.fetchone()[0] >= version:  # another server migrated meanwhile
                    continue
                for statement in MIGRATIONS[version - 1]:
                    cur.execute(statement.format(blob=self.blob, bigint=self.bigint))
                cur.execute(self._sql("UPDATE ckm_schema SET version = ?"), (version,))

    def schema_version(self) -> int:
        with self._tx() as cur:
            cur.execute("SELECT version FROM ckm_schema")
            return int(cur.fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- sites ------------------------------------------------------------------------------------
    def create_site(self, site_id: str, definition: bytes, now_ms: int) -> tuple[SiteRow, bool]:
        """(the site, created): an existing site with the same definition is returned, not created
        again; with another definition SiteExists."""
        with self._tx(write=True) as cur:
            row = self._site(cur, site_id)
            if row is not None:
                if row.definition != definition:
                    raise SiteExists(f"site_id: site {site_id!r} exists with another definition")
                return row, False
            cur.execute(self._sql("INSERT INTO sites (site_id, definition, created_ms) VALUES (?, ?, ?)"),
                        (site_id, definition, now_ms))
            return self._site(cur, site_id), True

    def get_site(self, site_id: str) -> SiteRow | None:
        with self._tx() as cur:
            return self._site(cur, site_id)

    def _site(self, cur, site_id: str) -> SiteRow | None:
        cur.execute(self._sql(f"SELECT {_SITE_COLUMNS} FROM sites WHERE site_id = ?"), (site_id,))
        row = cur.fetchone()
        return None if row is None else SiteRow(row[0], bytes(row[1]), *(int(v) for v in row[2:]))

    def list_sites(self, after: str = "", limit: int = 100) -> list[SiteRow]:
        with self._tx() as cur:
            cur.execute(self._sql(f"SELECT {_SITE_COLUMNS} FROM sites WHERE site_id > ? ORDER BY site_id LIMIT ?"),
                        (after, limit))
            return [SiteRow(r[0], bytes(r[1]), *(int(v) for v in r[2:])) for r in cur.fetchall()]

    def count_sites(self) -> int:
        with self._tx() as cur:
            cur.execute("SELECT COUNT(*) FROM sites")
            return int(cur.fetchone()[0])

    def delete_site(self, site_id: str) -> tuple[int, int] | None:
        """(measurements, maps) deleted with the site; None when there was no such site."""
        with self._tx(write=True) as cur:
            if self._site(cur, site_id) is None:
                return None
            counts = []
            for table in ("measurements", "maps"):
                cur.execute(self._sql(f"SELECT COUNT(*) FROM {table} WHERE site_id = ?"), (site_id,))
                counts.append(int(cur.fetchone()[0]))
            for table in ("measurements", "cells", "batches", "maps", "sites"):  # children first: no reliance on CASCADE
                cur.execute(self._sql(f"DELETE FROM {table} WHERE site_id = ?"), (site_id,))
            return counts[0], counts[1]

    # -- measurements -----------------------------------------------------------------------------
    def add_measurements(self, site_id: str, readings: Readings, now_ms: int, batch_id: str = "",
                         max_measurements: int | None = None) -> tuple[int, int, bool]:
        """Store a batch in one transaction: (accepted, the site's measurement count, duplicate).
        KeyError for an unknown site; OverflowError when the site would hold more than
        `max_measurements`. A batch_id seen before stores nothing and returns duplicate True."""
        with self._tx(write=True) as cur:
            site = self._site(cur, site_id)
            if site is None:
                raise KeyError(site_id)
            if batch_id:
                cur.execute(self._sql("SELECT accepted FROM batches WHERE site_id = ? AND batch_id = ?"), (site_id, batch_id))
                if cur.fetchone() is not None:
                    return 0, site.measurement_count, True
            n = len(readings)
            if max_measurements is not None and site.measurement_count + n > max_measurements:
                raise OverflowError(f"measurements: site {site_id!r} holds {site.measurement_count} measurements; "
                                    f"{n} more would pass this server's limit of {max_measurements} per site")
            seq0 = site.measurement_count
            nan = lambda v: None if not np.isfinite(v) else float(v)  # noqa: E731
            cur.executemany(self._sql(
                "INSERT INTO measurements (site_id, seq, cell_row, cell_col, gain, gain_var, aoa, aoa_var, measured_ms, "
                "received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                [(site_id, seq0 + i + 1, int(readings.row[i]), int(readings.col[i]), nan(readings.gain[i]),
                  nan(readings.gain_var[i]), nan(readings.aoa[i]), nan(readings.aoa_var[i]), int(readings.time_ms[i]), now_ms)
                 for i in range(n)])
            # the per-cell sums, one upsert per distinct cell
            sums: dict[tuple[int, int], list[float]] = {}
            for i in range(n):
                s = sums.setdefault((int(readings.row[i]), int(readings.col[i])), [0.0, 0.0, 0.0, 0.0])
                if np.isfinite(readings.gain[i]):
                    w = 1.0 / readings.gain_var[i]
                    s[0] += w
                    s[1] += w * readings.gain[i]
                if np.isfinite(readings.aoa[i]):
                    w = 1.0 / readings.aoa_var[i]
                    s[2] += w
                    s[3] += w * readings.aoa[i]
            cur.executemany(self._sql(
                "INSERT INTO cells (site_id, cell_row, cell_col, gain_w, gain_wy, aoa_w, aoa_wy) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (site_id, cell_row, cell_col) DO UPDATE SET gain_w = cells.gain_w + excluded.gain_w, "
                "gain_wy = cells.gain_wy + excluded.gain_wy, aoa_w = cells.aoa_w + excluded.aoa_w, "
                "aoa_wy = cells.aoa_wy + excluded.aoa_wy"),
                [(site_id, r, c, *v) for (r, c), v in sums.items()])
            stale_since = site.stale_since_ms or now_ms
            cur.execute(self._sql("UPDATE sites SET measurement_count = ?, stale_since_ms = ? WHERE site_id = ?"),
                        (seq0 + n, stale_since, site_id))
            if batch_id:
                cur.execute(self._sql("INSERT INTO batches (site_id, batch_id, accepted) VALUES (?, ?, ?)"), (site_id, batch_id, n))
            return n, seq0 + n, False

    def fused(self, site_id: str, shape: tuple[int, int]) -> Fused:
        """The site's measured cells, fused by inverse variance, with the measurement count they
        hold (one consistent read). KeyError for an unknown site."""
        with self._tx() as cur:
            site = self._site(cur, site_id)
            if site is None:
                raise KeyError(site_id)
            cur.execute(self._sql("SELECT cell_row, cell_col, gain_w, gain_wy, aoa_w, aoa_wy FROM cells WHERE site_id = ?"),
                        (site_id,))
            rows = cur.fetchall()
        value = np.full((2,) + tuple(shape), np.nan)
        variance = np.full((2,) + tuple(shape), np.inf)
        if rows:
            a = np.asarray(rows, np.float64)
            r, c = a[:, 0].astype(int), a[:, 1].astype(int)
            for ch, (w, wy) in enumerate(((a[:, 2], a[:, 3]), (a[:, 4], a[:, 5]))):
                has = w > 0
                value[ch, r[has], c[has]] = wy[has] / w[has]
                variance[ch, r[has], c[has]] = 1.0 / w[has]
        return Fused(value, variance, site.measurement_count)

    def measurements(self, site_id: str, after_seq: int = 0, limit: int = 10000) -> list[tuple]:
        """Stored readings in order: (seq, row, col, gain, gain_var, aoa, aoa_var, measured_ms, received_ms)."""
        with self._tx() as cur:
            cur.execute(self._sql("SELECT seq, cell_row, cell_col, gain, gain_var, aoa, aoa_var, measured_ms, received_ms "
                                  "FROM measurements WHERE site_id = ? AND seq > ? ORDER BY seq LIMIT ?"),
                        (site_id, after_seq, limit))
            return [tuple(r) for r in cur.fetchall()]

    # -- maps -------------------------------------------------------------------------------------
    def put_map(self, m: MapRow) -> bool:
        """Store version m.version if it is the site's next one (newest + 1) and the site still
        exists; keep the newest `keep_versions`. False when the version was taken (another
        server built it) or the site is gone."""
        with self._tx(write=True) as cur:
            site = self._site(cur, m.site_id)
            if site is None or site.map_version != m.version - 1:
                return False
            h, w = m.mean.shape[-2:]
            cur.execute(self._sql(f"INSERT INTO maps ({_MAP_COLUMNS}) VALUES ({', '.join('?' * 16)})"),
                        (m.site_id, m.version, h, w, np.ascontiguousarray(m.mean, np.float32).tobytes(),
                         np.ascontiguousarray(m.std, np.float32).tobytes(), int(m.calibrated), m.coverage,
                         m.measurement_count, m.measured_cells, m.built_ms, int(m.incremental), m.evaluations,
                         m.seconds, m.model_name, m.model_version))
            stale_since = site.stale_since_ms if site.measurement_count > m.measurement_count else 0
            cur.execute(self._sql("UPDATE sites SET map_version = ?, map_measurement_count = ?, stale_since_ms = ? "
                                  "WHERE site_id = ?"), (m.version, m.measurement_count, stale_since, m.site_id))
            cur.execute(self._sql("DELETE FROM maps WHERE site_id = ? AND version <= ?"),
                        (m.site_id, m.version - self.keep_versions))
            return True

    def get_map(self, site_id: str, version: int = 0) -> MapRow | None:
        """Version `version` of the site's map (0: the newest); None when there is none such."""
        with self._tx() as cur:
            if version:
                cur.execute(self._sql(f"SELECT {_MAP_COLUMNS} FROM maps WHERE site_id = ? AND version = ?"), (site_id, version))
            else:
                cur.execute(self._sql(f"SELECT {_MAP_COLUMNS} FROM maps WHERE site_id = ? ORDER BY version DESC LIMIT 1"),
                            (site_id,))
            r = cur.fetchone()
        if r is None:
            return None
        shape = (2, int(r[2]), int(r[3]))
        return MapRow(r[0], int(r[1]), np.frombuffer(bytes(r[4]), np.float32).reshape(shape),
                      np.frombuffer(bytes(r[5]), np.float32).reshape(shape), bool(r[6]), float(r[7]), int(r[8]), int(r[9]),
                      int(r[10]), bool(r[11]), int(r[12]), float(r[13]), r[14], r[15])

    def map_versions(self, site_id: str) -> list[int]:
        with self._tx() as cur:
            cur.execute(self._sql("SELECT version FROM maps WHERE site_id = ? ORDER BY version"), (site_id,))
            return [int(r[0]) for r in cur.fetchall()]

    # -- rebuilds ---------------------------------------------------------------------------------
    def stale_sites(self) -> list[SiteRow]:
        """Sites with measurements their newest map lacks, oldest first."""
        with self._tx() as cur:
            cur.execute(f"SELECT {_SITE_COLUMNS} FROM sites WHERE measurement_count > map_measurement_count "
                        "ORDER BY stale_since_ms")
            return [SiteRow(r[0], bytes(r[1]), *(int(v) for v in r[2:])) for r in cur.fetchall()]

    def try_lease(self, site_id: str, owner: str, now_ms: int, seconds: float) -> bool:
        """Take (or extend) the site's rebuild lease for `owner` unless another owner holds it."""
        with self._tx(write=True) as cur:
            cur.execute(self._sql("UPDATE sites SET lease_owner = ?, lease_until_ms = ? WHERE site_id = ? AND "
                                  "(lease_until_ms < ? OR lease_owner = ?)"),
                        (owner, now_ms + int(seconds * 1000), site_id, now_ms, owner))
            return cur.rowcount == 1

    def release_lease(self, site_id: str, owner: str) -> None:
        with self._tx(write=True) as cur:
            cur.execute(self._sql("UPDATE sites SET lease_until_ms = 0 WHERE site_id = ? AND lease_owner = ?"), (site_id, owner))

    def size_bytes(self, site_id: str) -> int:
        """About what one site occupies: its rows' payload (maps' arrays, measurements, cells)."""
        with self._tx() as cur:
            cur.execute(self._sql("SELECT COALESCE(SUM(LENGTH(mean) + LENGTH(std) + 128), 0) FROM maps WHERE site_id = ?"),
                        (site_id,))
            maps = int(cur.fetchone()[0])
            cur.execute(self._sql("SELECT COUNT(*) FROM measurements WHERE site_id = ?"), (site_id,))
            meas = int(cur.fetchone()[0])
            cur.execute(self._sql("SELECT COUNT(*) FROM cells WHERE site_id = ?"), (site_id,))
            cells = int(cur.fetchone()[0])
        return maps + 72 * meas + 48 * cells


class SQLiteStore(Store):
    """One file, WAL journal, synchronous FULL (durable on commit), foreign keys on."""

    dialect = "sqlite"

    def _connect(self):
        path = self.url.removeprefix("sqlite:")
        if not path:
            raise StoreError("a SQLite store needs a path: sqlite:PATH")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the SQLite store {path}: {e}") from None
        return conn

    def _begin(self, cur) -> None:
        # a write takes the write lock up front (no upgrade deadlocks between servers); a read none
        cur.execute("BEGIN IMMEDIATE" if self._writing else "BEGIN")


class PostgresStore(Store):
    """psycopg 3, one connection; transactions at READ COMMITTED, a write locking its site's row
    first (SELECT ... FOR UPDATE), so writes to one site are serialized across servers."""

    dialect = "postgresql"
    blob, bigint, placeholder = "BYTEA", "BIGINT", "%s"

    def _connect(self):
        try:
            import psycopg
        except ImportError:
            raise StoreError("a PostgreSQL store needs psycopg 3: pip install 'ckm-edge[sites-postgres]'") from None
        try:
            return psycopg.connect(self.url, autocommit=False)
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to the PostgreSQL store: {e}") from None

    def _site(self, cur, site_id: str) -> SiteRow | None:
        lock = " FOR UPDATE" if self._writing else ""
        cur.execute(f"SELECT {_SITE_COLUMNS} FROM sites WHERE site_id = %s{lock}", (site_id,))
        row = cur.fetchone()
        return None if row is None else SiteRow(row[0], bytes(row[1]), *(int(v) for v in row[2:]))

    def create_site(self, site_id: str, definition: bytes, now_ms: int) -> tuple[SiteRow, bool]:
        import psycopg

        try:
            return super().create_site(site_id, definition, now_ms)
        except psycopg.errors.UniqueViolation:  # another server created it meanwhile: compare with its definition
            return super().create_site(site_id, definition, now_ms)

    def _migrate(self) -> None:
        with self._lock, self._conn.cursor() as cur:  # one migrating server at a time
            cur.execute("SELECT pg_advisory_lock(7310035)")
            self._conn.commit()
            try:
                super()._migrate()
            finally:
                cur.execute("SELECT pg_advisory_unlock(7310035)")
                self._conn.commit()


def open_store(url: str, keep_versions: int = 16) -> Store:
    """`sqlite:PATH` or `postgresql://...` (also `postgres://`)."""
    if url.startswith("sqlite:"):
        return SQLiteStore(url, keep_versions)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, keep_versions)
    raise StoreError(f"unknown store {url!r}: use sqlite:PATH or postgresql://...")


def now_ms() -> int:
    return int(time.time() * 1000)
