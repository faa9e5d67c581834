"""Generated 3D city scenes (training/cityscene.py): deterministic, well-formed, and traced by Sionna RT
as the geometry they describe."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from ckm_edge.runtime import codec, physics
from ckm_edge.training import cityscene, raytrace
from ckm_edge.training.data_cli import main as data_main
from ckm_edge.training.dataset import Dataset

BACKEND = raytrace.backend_problem("cpu")
needs_backend = pytest.mark.skipif(BACKEND is not None, reason=f"ray tracing unavailable: {BACKEND}")


def read_ply(path):
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode()
    nv = int(re.search(r"element vertex (\d+)", header).group(1))
    nf = int(re.search(r"element face (\d+)", header).group(1))
    verts = np.frombuffer(data, "<f4", nv * 3, end).reshape(nv, 3)
    faces = np.frombuffer(data, [("n", "u1"), ("i", "<i4", (3,))], nf, end + nv * 12)
    assert end + nv * 12 + nf * 13 == len(data)
    return verts, faces


def test_cities_are_a_function_of_seed_and_index_with_their_family_style():
    a, b = cityscene.generate_city(5, 3), cityscene.generate_city(5, 3)
    assert a.boxes == b.boxes and a.style == b.style and a.style.family == cityscene.FAMILIES[3]
    assert cityscene.generate_city(6, 3).boxes != a.boxes
    heights = {}
    for index in range(len(cityscene.FAMILIES)):
        city = cityscene.generate_city(0, index)
        assert len(city.boxes) > 20
        assert all(np.abs(box.corners()).max() <= city.style.extent_m / 2 for box in city.boxes)
        heights[city.style.family] = np.median([box.height for box in city.boxes])
    assert heights["downtown"] > heights["midrise"] > heights["residential"]
    with pytest.raises(ValueError, match="family"):
        cityscene.city_style(0, 0, family="suburbia")
    with pytest.raises(ValueError, match="street_m"):
        dataclasses.replace(cityscene.city_style(0, 0), street_m=(40.0, 60.0))


def test_scene_files_are_well_formed_and_round_trip(tmp_path):
    city = cityscene.generate_city(1, 1)
    xml = cityscene.write_scene(city, tmp_path / city.name)
    assert xml.name == "gencity-001.xml"
    text = xml.read_text()
    assert text.count('type="itu-radio-material"') == len(re.findall(r'<bsdf ', text))
    assert 'id="ground"' in text and f'value="{cityscene.GROUND_MATERIAL}"' in text
    meshes = sorted((tmp_path / city.name / "meshes").glob("*.ply"))
    assert len(meshes) == len(re.findall(r"<shape ", text))
    boxes = 0
    for mesh in meshes:
        verts, faces = read_ply(mesh)
        assert (faces["n"] == 3).all() and faces["i"].min() >= 0 and faces["i"].max() < len(verts)
        if mesh.stem == "ground":
            continue
        boxes += len(verts) // 8
        # every face points outwards: away from its box's centre
        tri = verts[faces["i"]]
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        centre = verts.reshape(-1, 8, 3).mean(1)[faces["i"][:, 0] // 8]
        assert (np.einsum("ij,ij->i", normal, tri.mean(1) - centre) > 0).all()
    assert boxes == len(city.boxes)
    assert cityscene.load_city(tmp_path / city.name).boxes == tuple(
        cityscene.Box(*row) for row in city.to_json()["boxes"])
    # build_cities keeps a scene already written with the same description
    stamp = xml.stat().st_mtime_ns
    assert cityscene.build_cities(tmp_path, 1, seed=1, start=1) == [xml] and xml.stat().st_mtime_ns == stamp


def test_height_map_is_the_boxes():
    box = cityscene.Box(10.0, -6.0, 20.0, 8.0, 0.0, 17.0, "brick")
    style = cityscene.city_style(0, 0)
    city = cityscene.City(style, 0, 0, (box,))
    hm = cityscene.height_map(city, np.array([0.0, 0.0]), 32, 2.0)
    # cell (i, j) centre: x = (j + .5 - 16) * 2, y = -(i + .5 - 16) * 2; the box spans x 0..20, y -10..-2
    rows, cols = np.nonzero(hm)
    assert set(np.unique(hm)) == {0.0, 17.0}
    assert cols.min() == 16 and cols.max() == 25 and rows.min() == 17 and rows.max() == 20


@needs_backend
def test_the_ray_tracer_sees_the_city_as_described(tmp_path):
    """The builder's probes find buildings exactly where city.json puts them, and a traced tile's
    line-of-sight cells (by the physics channels over the described heights) get the direct path."""
    city = cityscene.generate_city(2, 1)  # a midrise city
    xml = cityscene.write_scene(city, tmp_path / city.name)
    rt, _ = raytrace.load_backend("cpu")
    cfg = raytrace.RaytraceConfig(tile_size=24, cell_size_m=4.0, samples_per_src=20_000, bs_height_m=(25.0, 35.0),
                                  max_depth=1, diffraction=False)
    traced = raytrace.TracedScene(rt, raytrace.SceneSpec.parse(str(xml)), cfg)
    assert sorted(traced.ground) == ["ground"]
    placement = raytrace.place(traced, raytrace.tile_rng(0, city.name, 0))
    building, _ = traced.probe(raytrace.cell_centres(placement.centre_xy, cfg))
    heights = cityscene.height_map(city, placement.centre_xy, cfg.tile_size, cfg.cell_size_m)
    assert np.array_equal(building.reshape(24, 24), heights > 0)
    tile = raytrace.trace_tile(traced, placement, seed=3)
    np.testing.assert_allclose(tile.surface_z, heights, atol=1e-3)  # roofs over the flat ground at z = 0
    bs = tile.tx.astype(np.float64)
    seen = physics.los_visibility(heights > 0, bs, heights=heights, cell_size_m=4.0) == 1.0
    maps = codec.decode(tile.pixels)
    reached = seen & (maps.gain_db > codec.PATH_GAIN_DB_MIN)
    assert reached.sum() >= 20
    sine = physics.direct_aoa_sine(bs, (24, 24))
    # the strongest path of a line-of-sight cell is the direct one, almost always
    assert np.median(np.abs(sine - maps.aoa_sine)[reached]) < 1e-3
    assert np.mean(np.abs(sine - maps.aoa_sine)[reached] < 0.02) > 0.9


@needs_backend
def test_a_build_of_generated_cities_keeps_its_parts_with_no_assemble(tmp_path):
    assert data_main(["cities", "--out", str(tmp_path / "cities"), "--count", "1", "--start", "4", "--seed", "2"]) == 0
    xml = tmp_path / "cities" / "gencity-004" / "gencity-004.xml"
    args = ["raytrace", "--out", str(tmp_path / "rt"), "--train", str(xml), "--tiles-per-scene", "1", "--device", "cpu",
            "--tile-size", "12", "--cell-size", "4", "--samples-per-src", "5000", "--max-depth", "1", "--no-diffraction"]
    assert data_main(args + ["--no-assemble"]) == 0
    assert not (tmp_path / "rt" / "manifest.json").exists()
    part = tmp_path / "rt" / ".raytrace" / "tiles" / "gencity-004-00000.npz"
    assert [p.name for p in part.parent.glob("*.npz")] == [part.name]
    # a part traced before surface heights were kept gets them back from its recorded placement
    with np.load(part) as z:
        saved = {k: z[k] for k in z.files}
    np.savez(part, **{k: v for k, v in saved.items() if k != "surface_z"})
    assert data_main(["raytrace", "--out", str(tmp_path / "rt"), "--backfill-surface", "--device", "cpu"]) == 0
    with np.load(part) as z:
        np.testing.assert_array_equal(z["surface_z"], saved["surface_z"])
        np.testing.assert_array_equal(z["pixels"], saved["pixels"])
    assert data_main(["raytrace", "--out", str(tmp_path / "rt"), "--snapshot", str(tmp_path / "snap")]) == 0
    snap = Dataset(tmp_path / "snap")
    assert snap.manifest["splits"]["train"]["regions"] == ["gencity-004"]
    assert len(snap.split("train")) == 1
    # the tile's building heights come with it: the city's boxes under its cells
    centre = np.array(snap.manifest["provenance"]["tiles"][0]["tile_centre_m"])
    city = cityscene.load_city(tmp_path / "cities" / "gencity-004")
    np.testing.assert_allclose(snap.split("train").heights(np.array([0]))[0], cityscene.height_map(city, centre, 12, 4.0),
                               rtol=2e-3, atol=1e-3)
    assert data_main(args) == 0  # without the flag, the complete plan is assembled
    assert (tmp_path / "rt" / "manifest.json").exists()
