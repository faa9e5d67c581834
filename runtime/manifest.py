"""A model package's manifest (manifest.json) as one typed object, parsed and checked here.

`Manifest.from_dict` is the one place the manifest's keys are read: it checks every field (the
codec constants against this runtime's, the schedule, the graphs' checksums, the site condition,
the sampler recommendations, a site adapter's base and lambda(t)) and raises PackageError naming
the bad field. The rest of the code reads fields. `to_dict` gives back the JSON document: keys this
runtime does not know are kept in `extra` (a newer package's sections survive a rewrite by an older
tool), a field left None is a key the document does not have, and the condition, recommendations
and lambda(t) sections are written by their own types (runtime.condition, runtime.recommend,
runtime.adapter). Hashes and signatures are over the file's bytes (runtime.package), never over a
re-serialization.

    schema, name, version, created  "ckm-edge-package/1", [a-z0-9_-]{1,64}, X.Y.Z, ISO 8601 time
    channels, tile_size, codec      the map format; the codec constants must equal runtime.codec's
    schedule                        the noise schedule, as runtime.schedule.Schedule.from_dict reads it
    network                         the U-Net's configuration, its saved tensors, the batch dimension
    condition                       a site-aware prior's condition input (runtime.condition.Encoding)
    graphs, files                   {precision: {graph: file}}, {file: FileEntry (SHA-256, bytes)}
    samplers                        recommendations per operator kind (runtime.recommend)
    accuracy                        measured reconstruction quality per precision (export.accuracy)
    uncertainty                     the calibration of the reported std (runtime.uncertainty)
    backends                        the backends the package was built for (None: any)
    adapter                         a site adapter's base package and lambda(t) (runtime.adapter)
    provenance, exporter            where it came from: checkpoint, data, calibration, tool versions
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ckm_edge.runtime import codec, defaults, recommend
from ckm_edge.runtime.condition import ConditionError, Encoding
from ckm_edge.runtime.sampler import SamplerError
from ckm_edge.runtime.schedule import Schedule
from ckm_edge.runtime.uncertainty import Uncertainty, UncertaintyError

if TYPE_CHECKING:
    from ckm_edge.runtime.adapter import LambdaTable

SCHEMA = "ckm-edge-package/1"
GRAPHS = ("score", "forward", "backward")
PRECISIONS = defaults.PRECISIONS
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_REQUIRED = ("name", "version", "tile_size", "channels", "codec", "schedule", "graphs", "files")


class PackageError(ValueError):
    """A package that is malformed, tampered with, truncated or untrusted."""


def _json(value: Any) -> Any:
    """A field's value as JSON data: sections by their own `to_dict`, tuples as lists, fresh containers."""
    if isinstance(value, Encoding):
        return value.section()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    return value


class Section:
    """A manifest object: each field is the JSON key of its name (field metadata "key" where the
    key is not a Python name), `extra` holds the keys this runtime does not know."""

    def to_dict(self) -> dict:
        out = {_key(f): _json(getattr(self, f.name)) for f in fields(self)
               if f.name != "extra" and getattr(self, f.name) is not None}
        return dict(sorted({**out, **_json(self.extra)}.items()))  # in the order manifest.json stores them

    @classmethod
    def from_dict(cls, d: Any):
        """A section of optional, free-form fields: each key's value as read."""
        d = _object(d, cls.__name__.lower())
        return cls(**{f.name: d.get(_key(f)) for f in fields(cls) if f.name != "extra"}, extra=cls.unknown(d))

    @classmethod
    def unknown(cls, d: dict) -> dict:
        """The keys of `d` that are no field of this section."""
        known = {_key(f) for f in fields(cls)}
        return {k: v for k, v in d.items() if k not in known}


def _key(f) -> str:
    return f.metadata.get("key", f.name)


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise PackageError(f"manifest {what} must be an object, got {value!r}")
    return value


@dataclass(frozen=True)
class Codec(Section):
    """The map codec's constants the graphs were trained with (runtime.codec)."""

    gain_db_range: tuple[float, float]
    aoa_sine_pixel_range: tuple[float, float]
    building_value: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> Codec:
        d = _object(d, "codec")
        expect = {"gain_db_range": [codec.GAIN_DB_MIN, codec.GAIN_DB_MAX],
                  "aoa_sine_pixel_range": [codec.AOA_PIXEL_MIN, codec.AOA_PIXEL_MAX]}
        for key, value in expect.items():
            if d.get(key) != value:
                raise PackageError(f"manifest codec {key} = {d.get(key)} differs from the runtime's {value}")
        return cls(tuple(d["gain_db_range"]), tuple(d["aoa_sine_pixel_range"]), d.get("building_value"), cls.unknown(d))


@dataclass(frozen=True)
class Network(Section):
    """The exported network: its U-Net configuration (training.unet), saved tensors, batch dimension."""

    unet: dict | None = None
    saved_tensors: int | None = None
    batch: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry(Section):
    """A package file's checksum and size, verified before anything is used."""

    sha256: str
    bytes: int
    extra: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, rel: str, d: Any) -> FileEntry:
        if not (isinstance(d, dict) and isinstance(d.get("sha256"), str) and isinstance(d.get("bytes"), int)):
            raise PackageError(f"manifest files[{rel!r}] must give the file's sha256 and bytes, got {d!r}")
        return cls(d["sha256"], d["bytes"], cls.unknown(d))


@dataclass(frozen=True)
class Exporter(Section):
    """What exported the graphs: ONNX opset, tool versions, parity with PyTorch."""

    opset: int | None = None
    versions: dict | None = None
    torch_parity: dict | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Provenance(Section):
    """Where the package came from; the sections differ by package kind (prior, site adapter)."""

    checkpoint: str | None = None  # the PyTorch weights it was exported from
    training: dict | None = None
    calibration: dict | None = None  # the INT8 calibration tiles
    samplers: dict | None = None  # the tuned recommendations' file and kinds
    adapter_file: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskAccuracy(Section):
    """Mean RMSEs of one task's constructions."""

    gain_rmse_db: float
    aoa_sine_rmse: float
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AccuracyRecord(Section):
    """One precision's measured quality: mean RMSEs per task over `tiles` maps (export.accuracy)."""

    tasks: dict[str, TaskAccuracy]
    steps: int | None = None
    zeta: float | None = None
    tiles: int | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, d: Any) -> AccuracyRecord | None:
        """The record, or None for something else (kept as read: the record is informative only)."""
        metrics = ("gain_rmse_db", "aoa_sine_rmse")
        tasks = d.get("tasks") if isinstance(d, dict) else None
        if not (isinstance(tasks, dict) and all(isinstance(v, dict) and all(isinstance(v.get(m), int | float) for m in metrics)
                                                 for v in tasks.values())):
            return None
        return cls({t: TaskAccuracy(v["gain_rmse_db"], v["aoa_sine_rmse"], TaskAccuracy.unknown(v)) for t, v in tasks.items()},
                   d.get("steps"), d.get("zeta"), d.get("tiles"), cls.unknown(d))


@dataclass(frozen=True)
class Accuracy(Section):
    """Accuracy records by precision and the data they were measured on."""

    records: dict[str, AccuracyRecord] = field(default_factory=dict)
    eval_data: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> Accuracy:
        records = {p: AccuracyRecord.parse(r) for p, r in _object(d, "accuracy").items() if p != "eval_data"}
        return cls({p: r for p, r in records.items() if r is not None}, d.get("eval_data"),
                   {k: v for k, v in d.items() if k != "eval_data" and records[k] is None})

    def to_dict(self) -> dict:
        eval_data = {} if self.eval_data is None else {"eval_data": _json(self.eval_data)}
        return dict(sorted({**_json(self.records), **eval_data, **_json(self.extra)}.items()))


@dataclass(frozen=True)
class BaseRef(Section):
    """The foundation package a site adapter was fitted to."""

    name: str
    version: str
    manifest_sha256: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Adapter(Section):
    """A site adapter's section: its base and lambda(t) (runtime.adapter.LambdaTable)."""

    base: BaseRef
    lam: LambdaTable = field(metadata={"key": "lambda"})
    site: dict | None = None
    training: dict | None = None
    proxy_unet: dict | None = None
    reference_unet: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, d: Any, package: str) -> Adapter:
        """The section of the adapter package `package` ("name version")."""
        from ckm_edge.runtime.adapter import LambdaTable  # runtime.adapter imports the package format

        if not isinstance(d, dict):
            raise PackageError(f"package {package} is not a site adapter (no 'adapter' section)")
        base = d.get("base")
        if not isinstance(base, dict) or not all(isinstance(base.get(k), str) and base.get(k) for k in
                                                 ("name", "version", "manifest_sha256")):
            raise PackageError(f"adapter {package}: 'base' must name the foundation package by "
                               "name, version and manifest_sha256")
        ref = BaseRef(base["name"], base["version"], base["manifest_sha256"], BaseRef.unknown(base))
        return cls(ref, LambdaTable.from_dict(d.get("lambda", {})), d.get("site"), d.get("training"), d.get("proxy_unet"),
                   d.get("reference_unet"), cls.unknown(d))


@dataclass(frozen=True)
class Manifest(Section):
    """The manifest of a model package (or a site adapter package); see the module's docstring."""

    name: str
    version: str
    tile_size: int
    channels: tuple[str, ...]
    codec: Codec
    schedule: dict  # runtime.schedule.Schedule.from_dict's input (runtime.package.Package.schedule())
    graphs: dict[str, dict[str, str]]  # precision -> graph -> file
    files: dict[str, FileEntry]
    schema: str = SCHEMA
    created: str | None = None
    network: Network | None = None
    condition: Encoding | None = None  # a site-aware prior's (runtime.condition)
    samplers: dict[str, recommend.Recommendation] | None = None  # the package's own (runtime.recommend)
    accuracy: Accuracy | None = None
    uncertainty: Uncertainty | None = None  # the calibration of the std constructions report
    backends: tuple[str, ...] | None = None
    adapter: Adapter | None = None
    provenance: Provenance | None = None
    exporter: Exporter | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        """Check a manifest.json document and parse it; PackageError names the bad field."""
        _check_identity(d)
        codec_ = Codec.from_dict(d["codec"])
        graphs = _graphs(d["graphs"], d["files"])
        Schedule.from_dict(d["schedule"])
        section = lambda key, parse: None if key not in d else parse(d[key])  # None: the key is absent
        encoding, samplers = section("condition", _condition), section("samplers", _samplers)
        adapter = section("adapter", lambda a: Adapter.parse(a, f"{d['name']} {d['version']}"))
        return cls(d["name"], d["version"], _tile_size(d["tile_size"]), tuple(d["channels"]), codec_, d["schedule"], graphs,
                   {rel: FileEntry.parse(rel, info) for rel, info in _object(d["files"], "files").items()},
                   schema=d["schema"], created=d.get("created"), network=section("network", Network.from_dict),
                   condition=encoding, samplers=samplers, accuracy=section("accuracy", Accuracy.from_dict),
                   uncertainty=section("uncertainty", _uncertainty),
                   backends=section("backends", _backends), adapter=adapter,
                   provenance=section("provenance", Provenance.from_dict), exporter=section("exporter", Exporter.from_dict),
                   extra=cls.unknown(d))


def _check_identity(d: Any) -> None:
    """Schema, required fields, name, version and channels."""
    if not isinstance(d, dict):
        raise PackageError(f"manifest must be a JSON object, got {type(d).__name__}")
    if d.get("schema") != SCHEMA:
        raise PackageError(f"manifest schema is {d.get('schema')!r}, this runtime reads {SCHEMA!r}")
    for key in _REQUIRED:
        if key not in d:
            raise PackageError(f"manifest is missing the field {key!r}")
    if not _NAME_RE.match(str(d["name"])):
        raise PackageError(f"manifest name {d['name']!r} must match {_NAME_RE.pattern}")
    if not _VERSION_RE.match(str(d["version"])):
        raise PackageError(f"manifest version {d['version']!r} is not a semantic version X.Y.Z")
    if d["channels"] != list(codec.CHANNELS):
        raise PackageError(f"manifest channels {d['channels']} differ from the codec's {list(codec.CHANNELS)}")


def _tile_size(value: Any) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise PackageError(f"manifest tile_size must be a positive integer, got {value!r}")
    return value


def _graphs(graphs: Any, files: Any) -> dict[str, dict[str, str]]:
    for precision, paths in _object(graphs, "graphs").items():
        if precision not in PRECISIONS or not isinstance(paths, dict) or set(paths) != set(GRAPHS):
            raise PackageError(f"manifest graphs[{precision!r}] must name {GRAPHS} for a precision in {PRECISIONS}")
        for rel in paths.values():
            if rel not in files:
                raise PackageError(f"graph file {rel} has no checksum in the manifest")
    return graphs


def _condition(section: Any) -> Encoding:
    try:
        return Encoding.from_section(section)
    except ConditionError as e:
        raise PackageError(str(e)) from None


def _uncertainty(section: Any) -> Uncertainty:
    try:
        return Uncertainty.from_dict(section)
    except UncertaintyError as e:
        raise PackageError(str(e)) from None


def _samplers(section: Any) -> dict[str, recommend.Recommendation]:
    """The recommendations must name known samplers and valid parameters."""
    try:
        return recommend.from_section(section)
    except SamplerError as e:
        raise PackageError(str(e)) from None


def _backends(value: Any) -> tuple[str, ...]:
    if not (isinstance(value, list) and all(isinstance(b, str) for b in value)):
        raise PackageError(f"manifest backends must be a list of backend names, got {value!r}")
    return tuple(value)

