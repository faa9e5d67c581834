"""Model packages: the self-describing unit the cloud ships to edge servers.

A package is a directory (or a .tar of one)::

    manifest.json        schema, name, version, channels, tile size, codec, schedule, provenance,
                         files with SHA-256, exporter/opset versions, accuracy per precision
                         (read as one typed, checked object: runtime.manifest.Manifest)
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
from dataclasses import dataclass
from pathlib import Path

from ckm_edge.runtime.manifest import GRAPHS, PRECISIONS, SCHEMA, Accuracy, Manifest, PackageError  # noqa: F401  (re-exported)
from ckm_edge.runtime.schedule import Schedule


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
    manifest: Manifest
    signed_by: str | None  # hex of the public key that verified the signature, if any
    manifest_sha256: str = ""  # of the manifest bytes that were verified ("" = not read through load_package)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def tile_size(self) -> int:
        return self.manifest.tile_size

    @property
    def condition_channels(self) -> int:
        """Site condition channels the graphs take (runtime.condition); 0 = an unconditional prior."""
        return 0 if self.manifest.condition is None else self.manifest.condition.channels

    @property
    def condition_encoding(self):
        """The site condition's encoding (runtime.condition.Encoding); None for an unconditional prior."""
        return self.manifest.condition

    @property
    def precisions(self) -> list[str]:
        return sorted(self.manifest.graphs, key=PRECISIONS.index)

    def schedule(self) -> Schedule:
        return Schedule.from_dict(self.manifest.schedule)

    def graph_path(self, precision: str, graph: str) -> Path:
        try:
            rel = self.manifest.graphs[precision][graph]
        except KeyError:
            raise PackageError(
                f"package {self.name} {self.version} has no {precision} {graph} graph (precisions: {self.precisions})"
            ) from None
        return self.root / rel

    def accuracy(self) -> Accuracy:
        return Accuracy() if self.manifest.accuracy is None else self.manifest.accuracy

    def recommendations(self) -> dict:
        """Sampler, steps, samples and parameters per operator kind (runtime.recommend)."""
        from ckm_edge.runtime.recommend import recommendations

        return recommendations(self.manifest.samplers)


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
        document = json.loads(data)
    except json.JSONDecodeError as e:
        raise PackageError(f"{path} is not valid JSON ({e}); the package is truncated or corrupted") from None
    manifest = Manifest.from_dict(document)  # every field checked (runtime.manifest)
    signed_by = _verify_signature(data, root / "manifest.sig", trusted_keys) if trusted_keys else None
    if verify_files:
        for rel, info in manifest.files.items():
            file = root / rel
            if not file.is_file():
                raise PackageError(f"package file {rel} is missing")
            if file.stat().st_size != info.bytes:
                raise PackageError(f"package file {rel} has {file.stat().st_size} bytes, the manifest says {info.bytes} (truncated?)")
            if sha256_file(file) != info.sha256:
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
