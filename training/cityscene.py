"""Generated 3D city scenes for the ray tracer: street grids, lots and extruded buildings (numpy only).

Two real training cities (munich, etoile) are too few to learn what a radio map looks like, so
the ray-traced training data also comes from cities made here and traced by Sionna RT exactly like
the shipped scenes (`training.raytrace` loads any Mitsuba XML scene). A city is a pure function of
(seed, index):

1. **Style** (`city_style`): one of the families below, with its own numbers drawn around the
   family's: block pitch, street and avenue widths, lot splits, built density, setbacks,
   building-height law (log-normal median and spread, a share of towers), footprint shapes and
   wall materials. Families: `downtown` (large blocks, towers on podiums, glass and concrete),
   `midrise` (perimeter blocks with courtyards, brick and concrete), `residential` (small
   detached houses, wood and brick), `oldtown` (narrow streets, small irregular blocks, two grid
   orientations, brick and marble), `industrial` (wide lots, low large halls, metal).
2. **Layout** (`generate_city`): the street grid at a random orientation (an old town has a
   second district at another angle), pitches jittered per row and column of blocks, some
   streets widened into avenues, some blocks left open (squares, parks); each block split into
   lots, each lot holding one building whose footprint is made of boxes: a plain block, an L, a
   courtyard ring, or a podium with a tower.
3. **Scene** (`write_scene`): one PLY mesh per material (buildings are merged by material, as
   Sionna does anyway; fewer shapes load faster), a flat `ground` plane of `medium_dry_ground`,
   and a Mitsuba XML with `itu-radio-material` BSDFs. Beside it, `city.json` records the style
   and every building box (centre, size, rotation, height, material), so a tile's building-height
   map can be rasterised from the scene's own geometry (`height_map`).

Coordinates: scene metres, x east, y north, z up, the ground at z = 0, the city centred on the
origin. Cities are training regions (`training.raytrace` refuses only the held-out shipped scenes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FAMILIES = ("downtown", "midrise", "residential", "oldtown", "industrial")
# Sionna RT's ITU materials (ITU-R P.2040) used for walls, and the ground's.
WALL_MATERIALS = ("concrete", "brick", "glass", "marble", "metal", "wood", "plasterboard")
GROUND_MATERIAL = "medium_dry_ground"
FORMAT = "ckm-city/1"
CHUNKS = 4  # building meshes per material: one per square of a CHUNKS x CHUNKS grid over the city


@dataclass(frozen=True)
class CityStyle:
    """The numbers of one city. Lengths in metres."""

    family: str
    extent_m: float = 640.0  # the city is a square of this side
    block_pitch_m: tuple[float, float] = (50.0, 90.0)  # street-centre to street-centre
    street_m: tuple[float, float] = (10.0, 18.0)
    avenue_prob: float = 0.15  # a street widened into an avenue
    avenue_m: tuple[float, float] = (24.0, 36.0)
    lots: tuple[int, int] = (1, 3)  # lots per block side
    density: float = 0.85  # probability that a lot is built
    open_block_prob: float = 0.06  # squares and parks
    setback_m: tuple[float, float] = (0.0, 3.0)
    abut_prob: float = 0.0  # a lot's building stands on its lot lines (perimeter blocks, terraces)
    height_median_m: float = 18.0
    height_sigma: float = 0.45  # log-normal shape
    height_range_m: tuple[float, float] = (4.0, 150.0)
    tower_prob: float = 0.0  # a lot holds a podium with a tower
    shapes: tuple[tuple[str, float], ...] = (("block", 1.0),)  # footprint kinds and weights
    materials: tuple[tuple[str, float], ...] = (("concrete", 1.0),)
    districts: int = 1  # grid orientations (an old town has two)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if not 200.0 <= self.extent_m <= 5000.0:
            raise ValueError(f"extent_m must be in [200, 5000], got {self.extent_m}")
        for name in ("block_pitch_m", "street_m", "avenue_m", "setback_m", "height_range_m"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")
        if self.street_m[1] >= self.block_pitch_m[0] * 0.6:
            raise ValueError("street_m must stay well below block_pitch_m")
        if not 1 <= self.lots[0] <= self.lots[1] <= 6:
            raise ValueError(f"lots must be a range within [1, 6], got {self.lots}")
        for name in ("avenue_prob", "density", "open_block_prob", "tower_prob", "abut_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for kind, _ in self.shapes:
            if kind not in SHAPES:
                raise ValueError(f"unknown footprint shape {kind!r}; known: {', '.join(SHAPES)}")
        for material, _ in self.materials:
            if material not in WALL_MATERIALS:
                raise ValueError(f"unknown wall material {material!r}; known: {', '.join(WALL_MATERIALS)}")
        if self.districts not in (1, 2):
            raise ValueError(f"districts must be 1 or 2, got {self.districts}")


SHAPES = ("block", "L", "courtyard", "detached")

# The families' centres; `city_style` draws each city's numbers around them.
_FAMILY = {
    "downtown": dict(block_pitch_m=(70.0, 110.0), street_m=(14.0, 22.0), avenue_prob=0.25, lots=(1, 2), density=0.9,
                     open_block_prob=0.06, setback_m=(0.0, 4.0), height_median_m=32.0, height_sigma=0.5,
                     tower_prob=0.3, shapes=(("block", 0.6), ("L", 0.25), ("courtyard", 0.15)),
                     materials=(("glass", 0.4), ("concrete", 0.45), ("metal", 0.15))),
    "midrise": dict(block_pitch_m=(55.0, 90.0), street_m=(12.0, 18.0), avenue_prob=0.15, lots=(2, 3), density=0.9,
                    open_block_prob=0.05, setback_m=(0.0, 1.5), abut_prob=0.6, height_median_m=20.0, height_sigma=0.3,
                    tower_prob=0.03, shapes=(("block", 0.45), ("L", 0.2), ("courtyard", 0.35)),
                    materials=(("brick", 0.4), ("concrete", 0.45), ("plasterboard", 0.15))),
    "residential": dict(block_pitch_m=(45.0, 75.0), street_m=(10.0, 16.0), avenue_prob=0.1, lots=(1, 3),
                        density=0.8, open_block_prob=0.08, setback_m=(1.0, 4.0), height_median_m=8.0,
                        height_sigma=0.35, tower_prob=0.0, shapes=(("detached", 0.7), ("L", 0.3)),
                        materials=(("wood", 0.35), ("brick", 0.45), ("plasterboard", 0.2))),
    "oldtown": dict(block_pitch_m=(35.0, 65.0), street_m=(6.0, 12.0), avenue_prob=0.08, lots=(2, 4), density=0.95,
                    open_block_prob=0.07, setback_m=(0.0, 0.8), abut_prob=0.7, height_median_m=15.0, height_sigma=0.3,
                    tower_prob=0.02, shapes=(("block", 0.7), ("L", 0.2), ("courtyard", 0.1)),
                    materials=(("brick", 0.5), ("marble", 0.3), ("concrete", 0.2)), districts=2),
    "industrial": dict(block_pitch_m=(90.0, 150.0), street_m=(14.0, 24.0), avenue_prob=0.15, lots=(1, 2),
                       density=0.7, open_block_prob=0.1, setback_m=(3.0, 10.0), height_median_m=11.0,
                       height_sigma=0.35, tower_prob=0.0, shapes=(("block", 0.8), ("L", 0.2)),
                       materials=(("metal", 0.6), ("concrete", 0.4))),
}


def city_style(seed: int, index: int, family: str | None = None, extent_m: float = 640.0) -> CityStyle:
    """The style of city `index` of a build seeded `seed`: its family (round-robin over FAMILIES
    unless given) and its numbers, drawn around the family's."""
    rng = np.random.default_rng([seed, index, 0xC1D])
    family = family or FAMILIES[index % len(FAMILIES)]
    if family not in _FAMILY:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    base = dict(_FAMILY[family])

    def scale(pair, sigma=0.12):
        f = float(np.exp(sigma * rng.standard_normal()))
        return (round(pair[0] * f, 2), round(pair[1] * f, 2))

    base["block_pitch_m"] = scale(base["block_pitch_m"])
    base["street_m"] = scale(base["street_m"])
    base["street_m"] = (base["street_m"][0], min(base["street_m"][1], 0.5 * base["block_pitch_m"][0]))
    base["density"] = float(np.clip(base["density"] + 0.08 * rng.standard_normal(), 0.4, 1.0))
    base["height_median_m"] = round(base["height_median_m"] * float(np.exp(0.25 * rng.standard_normal())), 2)
    base["height_sigma"] = round(base["height_sigma"] * float(np.exp(0.2 * rng.standard_normal())), 3)
    base["tower_prob"] = float(np.clip(base["tower_prob"] * float(np.exp(0.3 * rng.standard_normal())), 0, 1))
    return CityStyle(family=family, extent_m=extent_m, **base)


@dataclass(frozen=True)
class Box:
    """An extruded rectangle: centre (x, y), size along its own axes, rotation (rad), height, material."""

    x: float
    y: float
    length: float  # along the box's u axis (rotation)
    width: float  # along its v axis
    angle: float
    height: float
    material: str

    def corners(self) -> np.ndarray:
        """(4, 2) footprint corners, counter-clockwise."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = np.array([c, s]) * self.length / 2
        v = np.array([-s, c]) * self.width / 2
        p = np.array([self.x, self.y])
        return np.stack([p - u - v, p + u - v, p + u + v, p - u + v])


@dataclass(frozen=True)
class City:
    style: CityStyle
    seed: int
    index: int
    boxes: tuple[Box, ...]

    @property
    def name(self) -> str:
        return city_name(self.index)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "seed": self.seed,
            "index": self.index,
            "style": dataclasses.asdict(self.style),
            "ground_material": GROUND_MATERIAL,
            "boxes": [[round(b.x, 3), round(b.y, 3), round(b.length, 3), round(b.width, 3), round(b.angle, 6),
                       round(b.height, 3), b.material] for b in self.boxes],
        }


def city_name(index: int) -> str:
    return f"gencity-{index:03d}"


def _pick(rng: np.random.Generator, weighted: tuple[tuple[str, float], ...]) -> str:
    names = [n for n, _ in weighted]
    p = np.array([w for _, w in weighted], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _grid_lines(rng: np.random.Generator, style: CityStyle, span: float) -> tuple[np.ndarray, np.ndarray]:
    """Street centre lines along one axis covering [-span, span]: positions and widths."""
    pos, widths = [], []
    x = -span - rng.uniform(0, style.block_pitch_m[1])
    while x < span + style.block_pitch_m[1]:
        wide = rng.random() < style.avenue_prob
        widths.append(rng.uniform(*(style.avenue_m if wide else style.street_m)))
        pos.append(x)
        x += rng.uniform(*style.block_pitch_m)
    return np.array(pos), np.array(widths)


def _lot_buildings(rng: np.random.Generator, style: CityStyle, material: str, u0: float, u1: float, v0: float,
                   v1: float) -> list[tuple[float, float, float, float, float, str]]:
    """Boxes in grid coordinates (u centre, v centre, length u, width v, height, material) for one lot."""
    sb = 0.0 if rng.random() < style.abut_prob else rng.uniform(*style.setback_m)
    u0, u1, v0, v1 = u0 + sb, u1 - sb, v0 + sb, v1 - sb
    lu, lv = u1 - u0, v1 - v0
    if lu < 4.0 or lv < 4.0:
        return []
    lo, hi = style.height_range_m
    height = float(np.clip(style.height_median_m * np.exp(style.height_sigma * rng.standard_normal()), lo, hi))
    cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
    out = []
    if rng.random() < style.tower_prob and min(lu, lv) > 16.0:
        podium = float(np.clip(rng.uniform(6.0, 14.0), lo, hi))
        out.append((cu, cv, lu, lv, podium, material))
        tower = float(np.clip(height * rng.uniform(1.8, 4.0), podium + 10.0, hi))
        f = rng.uniform(0.35, 0.6)
        du, dv = rng.uniform(-0.5, 0.5, 2) * (1 - f) * np.array([lu, lv])
        out.append((cu + du, cv + dv, lu * f, lv * f, tower, material))
        return out
    kind = _pick(rng, style.shapes)
    if kind == "courtyard" and min(lu, lv) > 20.0:
        t = rng.uniform(0.22, 0.32) * min(lu, lv)
        out += [(cu, v0 + t / 2, lu, t, height, material), (cu, v1 - t / 2, lu, t, height, material),
                (u0 + t / 2, cv, t, lv - 2 * t, height, material), (u1 - t / 2, cv, t, lv - 2 * t, height, material)]
    elif kind == "L" and min(lu, lv) > 10.0:
        fu, fv = rng.uniform(0.35, 0.6, 2)
        su, sv = rng.choice([-1, 1], 2)
        # the long arm along u on one side, the other arm along v at one end
        arm_v = lv * fv
        out.append((cu, cv + sv * (lv - arm_v) / 2, lu, arm_v, height, material))
        arm_u = lu * fu
        h2 = float(np.clip(height * rng.uniform(0.7, 1.3), lo, hi))
        out.append((cu + su * (lu - arm_u) / 2, cv - sv * arm_v / 2, arm_u, lv - arm_v, h2, material))
    elif kind == "detached":
        f = rng.uniform(0.55, 0.85, 2)
        du, dv = rng.uniform(-0.5, 0.5, 2) * (1 - f) * np.array([lu, lv])
        out.append((cu + du, cv + dv, lu * f[0], lv * f[1], height, material))
    else:
        out.append((cu, cv, lu, lv, height, material))
    return out


def _district(rng: np.random.Generator, style: CityStyle, angle: float, half: float) -> list[Box]:
    """Buildings of one street grid at `angle` covering the square [-half, half]^2."""
    span = half * math.sqrt(2)
    us, uw = _grid_lines(rng, style, span)
    vs, vw = _grid_lines(rng, style, span)
    c, s = math.cos(angle), math.sin(angle)
    boxes = []
    for i in range(len(us) - 1):
        bu0, bu1 = us[i] + uw[i] / 2, us[i + 1] - uw[i + 1] / 2
        for j in range(len(vs) - 1):
            bv0, bv1 = vs[j] + vw[j] / 2, vs[j + 1] - vw[j + 1] / 2
            if bu1 - bu0 < 8.0 or bv1 - bv0 < 8.0 or rng.random() < style.open_block_prob:
                continue
            material = _pick(rng, style.materials)
            nu, nv = (int(rng.integers(style.lots[0], style.lots[1] + 1)) for _ in range(2))
            cuts_u = np.linspace(bu0, bu1, nu + 1)
            cuts_v = np.linspace(bv0, bv1, nv + 1)
            for a in range(nu):
                for b in range(nv):
                    if rng.random() >= style.density:
                        continue
                    lot_material = material if rng.random() < 0.8 else _pick(rng, style.materials)
                    for bu, bv, lu, lv, h, m in _lot_buildings(rng, style, lot_material, cuts_u[a], cuts_u[a + 1],
                                                               cuts_v[b], cuts_v[b + 1]):
                        x, y = bu * c - bv * s, bu * s + bv * c
                        boxes.append(Box(x, y, lu, lv, angle, h, m))
    return boxes


def generate_city(seed: int, index: int, style: CityStyle | None = None) -> City:
    """City `index` of a build seeded `seed` (its style from `city_style` unless given)."""
    style = style or city_style(seed, index)
    rng = np.random.default_rng([seed, index, 0xB10C])
    half = style.extent_m / 2
    angle = rng.uniform(0.0, math.pi / 2)
    boxes = _district(rng, style, angle, half)
    if style.districts == 2:
        # a second grid at another angle beyond a random line through the city (an old town's
        # quarter), with a street along the line between them
        other = _district(rng, style, angle + rng.uniform(0.3, 1.2), half)
        normal_angle = rng.uniform(0, 2 * math.pi)
        n = np.array([math.cos(normal_angle), math.sin(normal_angle)])
        offset = rng.uniform(-0.25, 0.25) * style.extent_m
        gap = rng.uniform(*style.street_m) / 2

        def side(b: Box) -> np.ndarray:
            return b.corners() @ n - offset

        boxes = [b for b in boxes if side(b).max() < -gap] + [b for b in other if side(b).min() > gap]
    keep = [b for b in boxes if np.all(np.abs(b.corners()) <= half)]
    return City(style, seed, index, tuple(keep))


# --- Scene files -------------------------------------------------------------------------------


def _box_mesh(boxes: list[Box]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (8K, 3) float32 and triangles (10K, 3) int32 of closed boxes (no bottom face: it
    lies on the ground and no ray reaches it), outward normals."""
    verts, faces = [], []
    # corner order (counter-clockwise seen from above): 0..3 at the ground, 4..7 at the roof
    quads = [(0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7), (4, 5, 6, 7)]
    for k, b in enumerate(boxes):
        foot = b.corners()
        base = 8 * k
        verts.append(np.concatenate([np.column_stack([foot, np.zeros(4)]), np.column_stack([foot, np.full(4, b.height)])]))
        for q in quads:
            faces.append((base + q[0], base + q[1], base + q[2]))
            faces.append((base + q[0], base + q[2], base + q[3]))
    return np.concatenate(verts).astype(np.float32), np.array(faces, dtype=np.int32)


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """A binary little-endian PLY mesh (float x, y, z; uchar-counted int vertex indices)."""
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode("ascii")
    face_rec = np.zeros(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face_rec["n"] = 3
    face_rec["i"] = faces
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(vertices, dtype="<f4").tobytes())
        f.write(face_rec.tobytes())
    os.replace(tmp, path)


def write_scene(city: City, out_dir: Path) -> Path:
    """The city as a Mitsuba/Sionna scene under `out_dir`: <name>.xml, meshes/*.ply, city.json.
    Returns the XML's path (its stem is the dataset region's name)."""
    out_dir = Path(out_dir)
    (out_dir / "meshes").mkdir(parents=True, exist_ok=True)
    half = city.style.extent_m / 2 + 20.0
    ground_v = np.array([[-half, -half, 0], [half, -half, 0], [half, half, 0], [-half, half, 0]], dtype=np.float32)
    write_ply(out_dir / "meshes" / "ground.ply", ground_v, np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32))
    shapes = ['  <shape type="ply" id="ground">\n    <string name="filename" value="meshes/ground.ply"/>\n'
              f'    <ref id="itu_{GROUND_MATERIAL}" name="bsdf"/>\n    <boolean name="face_normals" value="true"/>\n'
              '  </shape>']
    used = {GROUND_MATERIAL}
    # Buildings are merged per material and per square of a CHUNKS x CHUNKS grid: few shapes, and
    # none spans most of the city (the ray-tracing builder takes such an object for the ground).
    side = city.style.extent_m / CHUNKS
    for material in WALL_MATERIALS:
        for ci in range(CHUNKS):
            for cj in range(CHUNKS):
                boxes = [b for b in city.boxes if b.material == material
                         and min(int((b.x + city.style.extent_m / 2) // side), CHUNKS - 1) == ci
                         and min(int((b.y + city.style.extent_m / 2) // side), CHUNKS - 1) == cj]
                if not boxes:
                    continue
                used.add(material)
                v, f = _box_mesh(boxes)
                name = f"buildings_{material}_{ci}{cj}"
                write_ply(out_dir / "meshes" / f"{name}.ply", v, f)
                shapes.append(f'  <shape type="ply" id="{name}">\n'
                              f'    <string name="filename" value="meshes/{name}.ply"/>\n'
                              f'    <ref id="itu_{material}" name="bsdf"/>\n'
                              '    <boolean name="face_normals" value="true"/>\n  </shape>')
    bsdfs = [f'  <bsdf type="itu-radio-material" id="itu_{m}">\n    <string name="type" value="{m}"/>\n'
             '    <float name="thickness" value="0.2"/>\n  </bsdf>' for m in sorted(used)]
    xml = '<scene version="2.1.0">\n' + "\n".join(bsdfs + shapes) + "\n</scene>\n"
    path = out_dir / f"{city.name}.xml"
    for target, text in ((out_dir / "city.json", json.dumps(city.to_json()) + "\n"), (path, xml)):
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, target)
    return path


def load_city(path: Path) -> City:
    """A city from its city.json (or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "city.json"
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} city description (format {data.get('format')!r})")
    style = dict(data["style"])
    for k, v in style.items():
        if isinstance(v, list):
            style[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
    boxes = tuple(Box(*row) for row in data["boxes"])
    return City(CityStyle(**style), int(data["seed"]), int(data["index"]), boxes)


def height_map(city: City, centre_xy: np.ndarray, tile_size: int, cell_size_m: float) -> np.ndarray:
    """(H, W) building height in metres at each cell centre of a tile centred at `centre_xy`
    (row 0 north, as `training.raytrace.cell_centres`); 0 outdoors. The tallest box wins."""
    n, c = tile_size, cell_size_m
    offs = (np.arange(n) + 0.5 - n / 2) * c
    x = centre_xy[0] + offs[None, :]
    y = centre_xy[1] - offs[:, None]
    out = np.zeros((n, n), dtype=np.float32)
    reach = c * n / 2 * math.sqrt(2)
    for b in city.boxes:
        if abs(b.x - centre_xy[0]) > reach + b.length + b.width or abs(b.y - centre_xy[1]) > reach + b.length + b.width:
            continue
        cs, sn = math.cos(b.angle), math.sin(b.angle)
        du, dv = (x - b.x) * cs + (y - b.y) * sn, -(x - b.x) * sn + (y - b.y) * cs
        inside = (np.abs(du) <= b.length / 2) & (np.abs(dv) <= b.width / 2)
        np.maximum(out, np.where(inside, np.float32(b.height), np.float32(0)), out=out)
    return out


def build_cities(out: Path, count: int, seed: int = 0, start: int = 0, extent_m: float = 640.0) -> list[Path]:
    """Cities start..start+count-1 of a build seeded `seed`, each in out/<name>/; returns the XML
    paths. A city already written with the same description is kept (a build resumes)."""
    paths = []
    for index in range(start, start + count):
        city = generate_city(seed, index, city_style(seed, index, extent_m=extent_m))
        folder = Path(out) / city.name
        xml = folder / f"{city.name}.xml"
        existing = folder / "city.json"
        if xml.exists() and existing.exists() and json.loads(existing.read_text()) == json.loads(json.dumps(city.to_json())):
            paths.append(xml)
            continue
        paths.append(write_scene(city, folder))
    return paths
