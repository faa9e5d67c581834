"""Model packages: the self-describing unit the cloud ships to edge servers.

A package is a directory (or a .tar of one)::

    manifest.json        schema, name, version, channels, tile size, codec, schedule, provenance,
                         files with SHA-256, exporter/opset versions, accuracy per precision
    manifest.sig         optional Ed25519 signature over the exact bytes of manifest.json
    fp32/score.onnx      score graph              (B,2,H,W),(B,)[,(B,K,H,W)] -> (B,2,H,W)
    fp32/forward.onnx    score + saved tensors    (x, t[, cond]) -> (score, saved_*)
    fp32/backward.onnx   vector-Jacobian product  (saved_*, v) -> vjp
    fp32/weights.bin     the network weights, stored once and shared by the three graphs
    fp16/..., int8/...   the same graphs in other precisions

A site-aware prior's manifest has a "condition" section ({"input": "cond", "channels": K,
"encoding": "ckm-site/1"}): its score and forward graphs also take the site condition maps
(runtime.condition), all zeros meaning nothing is known (the paper's unconditional setting).

A site adapter (runtime/adapter.py) is a package of the same layout whose graphs compute a score
difference and whose manifest also holds an "adapter" section naming the foundation it adapts.

`load_package` verifies every file's checksum (and the signature when trusted keys are given)
before anything is used; a tampered or truncated package is refused with the reason. Everything
the edge needs is rebuilt from the manifest (schedule included); nothing comes from training code.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ckm_edge.runtime import codec, defaults
from ckm_edge.runtime.schedule import Schedule

SCHEMA = "ckm-edge-package/1"
GRAPHS = ("score", "forward", "backward")
PRECISIONS = defaults.PRECISIONS
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class PackageError(ValueError):
    """A package that is malformed, tampered with, truncated or untrusted."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed_versions(distributions) -> dict:
    """{distribution: version} of those installed (provenance of packages, datasets, benchmarks)."""
    out = {}
    for dist in distributions:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


@dataclass(frozen=True)
class Package:
    root: Path
    manifest: dict
    signed_by: str | None  # hex of the public key that verified the signature, if any
    manifest_sha256: str = ""  # of the manifest bytes that were verified ("" = not read through load_package)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def tile_size(self) -> int:
        return int(self.manifest["tile_size"])

    @property
    def condition_channels(self) -> int:
        """Site condition channels the graphs take (runtime.condition); 0 = an unconditional prior."""
        return int(self.manifest.get("condition", {}).get("channels", 0))

    @property
    def condition_encoding(self):
        """The site condition's encoding (runtime.condition.Encoding); None for an unconditional prior."""
        from ckm_edge.runtime import condition

        section = self.manifest.get("condition")
        return None if section is None else condition.Encoding.from_section(section)

    @property
    def precisions(self) -> list[str]:
        return sorted(self.manifest["graphs"], key=PRECISIONS.index)

    def schedule(self) -> Schedule:
        return Schedule.from_dict(self.manifest["schedule"])

    def graph_path(self, precision: str, graph: str) -> Path:
        try:
            rel = self.manifest["graphs"][precision][graph]
        except KeyError:
            raise PackageError(
                f"package {self.name} {self.version} has no {precision} {graph} graph (precisions: {self.precisions})"
            ) from None
        return self.root / rel

    def accuracy(self) -> dict:
        return self.manifest.get("accuracy", {})

    def recommendations(self) -> dict:
        """Sampler, steps, samples and parameters per operator kind (runtime.recommend)."""
        from ckm_edge.runtime.recommend import recommendations

        return recommendations(self.manifest)


def validate_manifest(manifest: dict) -> None:
    """Check the manifest's fields and codec constants; raise PackageError naming the bad field."""
    if manifest.get("schema") != SCHEMA:
        raise PackageError(f"manifest schema is {manifest.get('schema')!r}, this runtime reads {SCHEMA!r}")
    for key in ("name", "version", "tile_size", "channels", "codec", "schedule", "graphs", "files"):
        if key not in manifest:
            raise PackageError(f"manifest is missing the field {key!r}")
    if not _NAME_RE.match(str(manifest["name"])):
        raise PackageError(f"manifest name {manifest['name']!r} must match {_NAME_RE.pattern}")
    if not _VERSION_RE.match(str(manifest["version"])):
        raise PackageError(f"manifest version {manifest['version']!r} is not a semantic version X.Y.Z")
    if manifest["channels"] != list(codec.CHANNELS):
        raise PackageError(f"manifest channels {manifest['channels']} differ from the codec's {list(codec.CHANNELS)}")
    expect = {"gain_db_range": [codec.GAIN_DB_MIN, codec.GAIN_DB_MAX],
              "aoa_sine_pixel_range": [codec.AOA_PIXEL_MIN, codec.AOA_PIXEL_MAX]}
    for key, value in expect.items():
        if manifest["codec"].get(key) != value:
            raise PackageError(f"manifest codec {key} = {manifest['codec'].get(key)} differs from the runtime's {value}")
    for precision, graphs in manifest["graphs"].items():
        if precision not in PRECISIONS or set(graphs) != set(GRAPHS):
            raise PackageError(f"manifest graphs[{precision!r}] must name {GRAPHS} for a precision in {PRECISIONS}")
        for rel in graphs.values():
            if rel not in manifest["files"]:
                raise PackageError(f"graph file {rel} has no checksum in the manifest")
    Schedule.from_dict(manifest["schedule"])
    if "condition" in manifest:
        _validate_condition(manifest["condition"])


def _validate_condition(section) -> None:
    from ckm_edge.runtime import condition

    try:
        condition.Encoding.from_section(section)
    except condition.ConditionError as e:
        raise PackageError(str(e)) from None


def _verify_signature(manifest_bytes: bytes, sig_path: Path, trusted_keys: list[bytes]) -> str:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not sig_path.is_file():
        raise PackageError(f"{sig_path.parent} is unsigned but trusted keys are configured")
    signature = bytes.fromhex(sig_path.read_text().strip())
    for raw in trusted_keys:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, manifest_bytes)
            return raw.hex()
        except InvalidSignature:
            continue
    raise PackageError(f"the signature of {sig_path.parent} does not verify with any trusted key")


def load_package(root: str | Path, trusted_keys: list[bytes] | None = None, verify_files: bool = True) -> Package:
    """Open and verify a package directory. trusted_keys: raw 32-byte Ed25519 public keys."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise PackageError(f"{root} is not a model package: {path} is missing")
    data = path.read_bytes()
    try:
        manifest = json.loads(data)
    except json.JSONDecodeError as e:
        raise PackageError(f"{path} is not valid JSON ({e}); the package is truncated or corrupted") from None
    validate_manifest(manifest)
    if "samplers" in manifest:  # the recommendations must name known samplers and valid parameters
        from ckm_edge.runtime.recommend import recommendations
        from ckm_edge.runtime.sampler import SamplerError

        try:
            recommendations(manifest)
        except SamplerError as e:
            raise PackageError(str(e)) from None
    if "adapter" in manifest:  # a site adapter: its base reference and lambda table must be sound
        from ckm_edge.runtime.adapter import adapter_info

        adapter_info(Package(root, manifest, None, hashlib.sha256(data).hexdigest()))
    signed_by = _verify_signature(data, root / "manifest.sig", trusted_keys) if trusted_keys else None
    if verify_files:
        for rel, info in manifest["files"].items():
            file = root / rel
            if not file.is_file():
                raise PackageError(f"package file {rel} is missing")
            if file.stat().st_size != info["bytes"]:
                raise PackageError(f"package file {rel} has {file.stat().st_size} bytes, the manifest says {info['bytes']} (truncated?)")
            if sha256_file(file) != info["sha256"]:
                raise PackageError(f"package file {rel} does not match its SHA-256 in the manifest (tampered or corrupted)")
    return Package(root, manifest, signed_by, hashlib.sha256(data).hexdigest())


def read_public_key(path: str | Path) -> bytes:
    """A trusted key file: the 32-byte raw Ed25519 public key as 64 hex characters."""
    text = Path(path).read_text().strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise PackageError(f"{path} is not a raw Ed25519 public key in hex (64 hex characters)")
    return raw
