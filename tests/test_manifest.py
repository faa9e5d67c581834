"""The package manifest as one typed object (runtime.manifest): parsed, checked, written back as read."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from ckm_edge.runtime.adapter import LambdaTable
from ckm_edge.runtime.manifest import Accuracy, Manifest, PackageError
from ckm_edge.runtime.recommend import BUILTIN

RELEASE = Path(__file__).resolve().parents[1] / "models" / "repository" / "ckm-prior" / "1.0.0" / "manifest.json"


@pytest.fixture()
def document() -> dict:
    return json.loads(RELEASE.read_text())


def _written(document: dict) -> bytes:
    """manifest.json's bytes as export.builder.write_manifest writes them."""
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def test_the_release_manifest_reads_as_fields_and_writes_back_byte_for_byte(document):
    m = Manifest.from_dict(copy.deepcopy(document))
    assert (m.name, m.version, m.tile_size, m.channels) == ("ckm-prior", "1.0.0", 128, ("gain", "aoa_sine"))
    assert m.codec.gain_db_range == (-250.0, -50.0) and m.schedule["kind"] == "vp" and m.network.unet["cond_channels"] == 5
    assert m.condition.name == "ckm-site/1" and m.condition.channels == 5
    assert m.graphs["int8"]["score"] == "int8/score.onnx" and m.files["int8/score.onnx"].bytes == 959760
    assert m.samplers["jtqr"].parameters["restart_steps"] == 5 and "*+site" in m.samplers
    assert m.accuracy.records["fp16"].tasks["sr2"].gain_rmse_db == 11.418 and m.accuracy.eval_data["split"] == "eval"
    assert m.provenance.checkpoint.endswith("prior.pt") and m.exporter.opset == 18
    assert m.backends is None and m.adapter is None and m.extra == {}
    assert m.to_dict() == document and _written(m.to_dict()) == RELEASE.read_bytes()


def test_unknown_keys_survive_a_round_trip(document):
    document["deployment"] = {"zone": "eu"}  # a section of a newer package
    document["codec"]["gamma"] = 2.2
    document["files"]["fp32/score.onnx"]["compression"] = "none"
    document["network"]["opset_hint"] = 18
    document["accuracy"]["fp32"]["seed"] = 0
    document["accuracy"]["bf16-note"] = "pending"  # not a record: kept as it is
    document["provenance"]["operator"] = "ci"
    m = Manifest.from_dict(copy.deepcopy(document))
    assert m.extra == {"deployment": {"zone": "eu"}} and m.codec.extra == {"gamma": 2.2}
    assert m.accuracy.extra == {"bf16-note": "pending"} and m.accuracy.records["fp32"].extra == {"seed": 0}
    assert m.to_dict() == document
    # absent sections stay absent; a replaced field is written
    del document["samplers"], document["accuracy"]
    bare = Manifest.from_dict(copy.deepcopy(document))
    assert bare.samplers is None and bare.accuracy is None and bare.to_dict() == document
    measured = dataclasses.replace(bare, accuracy=Accuracy(eval_data={"dataset": "d"}), backends=("onnxruntime",))
    assert measured.to_dict() == {**document, "accuracy": {"eval_data": {"dataset": "d"}}, "backends": ["onnxruntime"]}


def test_an_adapter_section_is_typed(document):
    base = {"name": "ckm-prior", "version": "1.0.0", "manifest_sha256": "ab" * 32}
    document["adapter"] = {"base": base, "lambda": LambdaTable.constant(1.0).to_dict(), "site": {"data": "x"},
                           "training": {}, "proxy_unet": {"base_channels": 16}, "reference_unet": {"base_channels": 16}}
    m = Manifest.from_dict(copy.deepcopy(document))
    assert (m.adapter.base.name, m.adapter.base.manifest_sha256) == ("ckm-prior", "ab" * 32)
    assert m.adapter.lam == LambdaTable.constant(1.0) and m.adapter.proxy_unet == {"base_channels": 16}
    assert m.to_dict() == document
    assert m.backends is None and m.schedule == document["schedule"]
    assert not hasattr(m, "__getitem__")  # fields, not keys


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(schema="ckm-edge-package/0"), "manifest schema is 'ckm-edge-package/0'"),
    (lambda d: d.pop("files"), "missing the field 'files'"),
    (lambda d: d.update(name="CKM Prior"), "manifest name 'CKM Prior' must match"),
    (lambda d: d.update(version="1.0"), "not a semantic version"),
    (lambda d: d.update(channels=["gain"]), "differ from the codec's"),
    (lambda d: d["codec"].update(gain_db_range=[-200.0, -50.0]), "codec gain_db_range = \\[-200.0, -50.0\\] differs"),
    (lambda d: d["graphs"]["fp32"].pop("backward"), "graphs\\['fp32'\\] must name"),
    (lambda d: d["files"].pop("fp32/score.onnx"), "fp32/score.onnx has no checksum"),
    (lambda d: d["condition"].update(encoding="ckm-site/9"), "condition encoding is 'ckm-site/9'"),
    (lambda d: d["samplers"].update(blur=d["samplers"]["mask"]), "operator kind must be one of"),
    (lambda d: d["files"]["fp32/score.onnx"].pop("sha256"), "files\\['fp32/score.onnx'\\] must give"),
    (lambda d: d.update(tile_size="128"), "tile_size must be a positive integer"),
    (lambda d: d.update(backends="onnxruntime"), "backends must be a list"),
    (lambda d: d.update(adapter={"base": {"name": "x"}, "lambda": {}}), "'base' must name the foundation"),
    (lambda d: d.update(adapter=[]), "not a site adapter"),
])
def test_a_bad_field_is_refused_by_name(document, damage, message):
    damage(document)
    with pytest.raises(PackageError, match=message):
        Manifest.from_dict(document)


def test_a_package_without_recommendations_runs_the_builtin_ones(document):
    del document["samplers"]
    from ckm_edge.runtime.recommend import recommendations

    assert recommendations(Manifest.from_dict(document).samplers) == BUILTIN
