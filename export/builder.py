"""From a training checkpoint to a verified, optionally signed model package (see runtime.package)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.export import onnx_export, precision
from ckm_edge.runtime import codec, condition, defaults
from ckm_edge.runtime.manifest import GRAPHS, PRECISIONS, SCHEMA, Manifest
from ckm_edge.runtime.package import Package, installed_versions, load_package, sha256_file
from ckm_edge.runtime.recommend import BUILTIN
from ckm_edge.runtime.schedule import Schedule

EXPORTER_DISTRIBUTIONS = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu")


@dataclass(frozen=True)
class BuildConfig:
    name: str = "ckm-prior"
    version: str = "0.1.0"
    tile_size: int = 128
    precisions: tuple[str, ...] = defaults.PRECISIONS
    calibration_tiles: int = 32
    seed: int = 0

    def __post_init__(self):
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or "fp32" not in self.precisions:
            raise ValueError(f"precisions must include fp32 and come from {PRECISIONS}, got {self.precisions}")


def build_package(model, meta: dict, out: Path, cfg: BuildConfig, calibration: np.ndarray | None,
                  provenance: dict | None = None, sections: dict | None = None) -> Package:
    """Export, check against PyTorch, make precision variants, write the manifest; atomic.

    `sections`: further manifest sections (a site adapter's "adapter"), which may not replace
    the standard fields."""
    clash = sorted(set(sections or {}) & {"schema", "name", "version", "created", "channels", "tile_size", "codec",
                                          "schedule", "network", "condition", "provenance", "exporter", "graphs", "files",
                                          "accuracy"})
    if clash:
        raise ValueError(f"extra manifest sections may not replace standard fields: {clash}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; packages are immutable, choose a new version or directory")
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    graphs = onnx_export.export_graphs(model, work / "fp32", cfg.tile_size)
    verification = onnx_export.check_against_torch(model, graphs, cfg.tile_size)
    files = {p: {g: f"{p}/{g}.onnx" for g in GRAPHS} for p in cfg.precisions}
    weights = {p: f"{p}/weights.bin" for p in cfg.precisions}
    if "fp16" in cfg.precisions:
        for g in GRAPHS:
            precision.to_fp16(work / files["fp32"][g], work / files["fp16"][g])
    if "int8" in cfg.precisions:
        if calibration is None or len(calibration) == 0:
            raise ValueError("INT8 needs calibration tiles from the training data")
        rng = np.random.default_rng(cfg.seed)
        schedule = Schedule.from_dict(meta["schedule"])
        feeds = precision.calibration_inputs(calibration[: cfg.calibration_tiles], schedule, rng,
                                             onnx_export.condition_channels(model))
        precision.to_int8(work / files["fp32"]["score"], work / files["int8"]["score"], [dict(f) for f in feeds])
        precision.to_int8(work / files["fp32"]["forward"], work / files["int8"]["forward"], [dict(f) for f in feeds])
        bwd = precision.backward_feeds(work / files["fp32"]["forward"], feeds, rng)
        precision.to_int8(work / files["fp32"]["backward"], work / files["int8"]["backward"], bwd)
    for p in cfg.precisions:
        share_weights([work / files[p][g] for g in GRAPHS], work / weights[p])
    document = {
        "schema": SCHEMA,
        "name": cfg.name,
        "version": cfg.version,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "channels": list(codec.CHANNELS),
        "tile_size": cfg.tile_size,
        "codec": {"gain_db_range": [codec.GAIN_DB_MIN, codec.GAIN_DB_MAX],
                  "aoa_sine_pixel_range": [codec.AOA_PIXEL_MIN, codec.AOA_PIXEL_MAX], "building_value": 0.0},
        "schedule": meta["schedule"],
        "network": {"unet": meta["unet"], "saved_tensors": graphs.saved, "batch": "dynamic"},
        **condition_section(onnx_export.condition_channels(model)),
        "provenance": provenance or {},
        "exporter": {"opset": onnx_export.OPSET, "versions": installed_versions(EXPORTER_DISTRIBUTIONS), "torch_parity": verification},
        "graphs": files,
        "files": {},
        "accuracy": {},
        # what the runtime runs when a request names no sampler (runtime.recommend); a caller's
        # `sections` may replace it with recommendations measured for this model
        "samplers": {kind: rec.to_dict() for kind, rec in BUILTIN.items()},
        **(sections or {}),
    }
    for rel in sorted({f for p in files.values() for f in p.values()} | set(weights.values())):
        document["files"][rel] = {"sha256": sha256_file(work / rel), "bytes": (work / rel).stat().st_size}
    write_manifest(work, Manifest.from_dict(document))  # checked as the edge will check it
    os.replace(work, out)
    return load_package(out)


def condition_section(channels: int) -> dict:
    """The manifest's "condition" section of a site-aware prior (nothing for an unconditional one):
    the graphs' extra input and the encoding the runtime must build it with."""
    if not channels:
        return {}
    section = condition.Encoding.for_channels(channels).section()
    assert section["input"] == onnx_export.CONDITION_INPUT
    return {"condition": section}


def share_weights(graphs: list[Path], weights: Path, min_bytes: int = 1024) -> None:
    """Move the large initializers of several graphs into one file, each distinct tensor once.

    The score, forward and backward graphs carry the same network weights; stored once they
    cost a third. ONNX Runtime and TensorRT resolve external data relative to the graph file.
    """
    import onnx
    from onnx.external_data_helper import set_external_data

    offsets: dict[str, tuple[int, int]] = {}
    with open(weights, "wb") as blob:
        for path in graphs:
            model = onnx.load(str(path))
            for tensor in model.graph.initializer:
                raw = onnx.numpy_helper.to_array(tensor).tobytes()
                if len(raw) < min_bytes:
                    continue
                key = f"{tensor.data_type}:{list(tensor.dims)}:" + hashlib.sha256(raw).hexdigest()
                if key not in offsets:
                    blob.write(b"\0" * (-blob.tell() % 64))  # aligned for memory mapping
                    offsets[key] = (blob.tell(), len(raw))
                    blob.write(raw)
                offset, length = offsets[key]
                set_external_data(tensor, location=weights.name, offset=offset, length=length)
                tensor.ClearField("raw_data")
                tensor.ClearField("float_data")
                tensor.ClearField("int32_data")
                tensor.ClearField("int64_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
            onnx.save_model(model, str(path))


def write_manifest(root: Path, manifest: Manifest | dict, signing_key: bytes | None = None) -> None:
    """(Re)write manifest.json atomically; with a key, also manifest.sig (Ed25519 over its bytes).
    `manifest`: the typed manifest, or a JSON document as it is (tests write broken ones)."""
    document = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    tmp = root / "manifest.json.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, root / "manifest.json")
    sig = root / "manifest.sig"
    if signing_key is not None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        signature = Ed25519PrivateKey.from_private_bytes(signing_key).sign(data)
        sig.write_text(signature.hex() + "\n")
    elif sig.exists():
        sig.unlink()  # a signature over an older manifest would only be refused later


def sign_package(root: Path, signing_key: bytes) -> None:
    manifest = Manifest.from_dict(json.loads((Path(root) / "manifest.json").read_text()))  # never sign a broken one
    write_manifest(Path(root), manifest, signing_key)


def generate_keypair() -> tuple[bytes, bytes]:
    """(private, public) raw Ed25519 keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    private = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return private, public
