"""Ray-traced CKM tiles from city scenes with Sionna RT (optional extra `raytrace`).

A tile is built the way CKMImageNet's are, with Sionna RT in place of a commercial ray tracer:

1. A base station (BS) at a random outdoor position of the scene (a vertical ray from above
   lands on a ground object, not on a building), `bs_height_m` above that ground.
2. A square tile of `tile_size` x `tile_size` cells of `cell_size_m` around it; the tile centre
   is offset from the BS by up to `bs_offset` tile half-widths along each axis, so the BS may lie
   inside or outside the tile. The tile must lie inside the scene's footprint.
3. Building cells: a vertical ray through the cell centre whose first hit is a building object.
   Ground objects are recognised by name (`ground_pattern`) or by covering most of the scene's
   footprint, so scenes with terrain (hills are not buildings) work; the cell's ground height
   comes from the same ray.
4. Each outdoor cell gets a receiver at `rx_height_m` above its ground. Sionna's path solver
   (line of sight, specular reflections, optional diffraction, up to `max_depth` interactions)
   gives every path's complex coefficient a_i, delay tau_i and arrival azimuth. The gain is the
   coherent sum at the carrier, |sum_i a_i exp(-j 2 pi f tau_i)|^2, with isotropic antennas; the
   AoA is the azimuth of the strongest path (|a_i| largest), stored as its sine. Cells with no
   path get the codec's minimum gain.

Geometry convention (the same as the procedural generator): row 0 is north (+y), columns run
east (+x); the azimuth is counter-clockwise from +x, so sin(AoA) is the arrival direction's y
component. The transmitter row of a tile is (row, column) of the BS in cells (possibly outside
the tile) and its height above ground in metres.

Region discipline: `munich`, `etoile` and user scenes are training regions; `florence` and
`san_francisco` are held out for evaluation, and the builder refuses to put them (or a user
file that is a copy of them) into a training split.

Large builds run as independent jobs: `shard=(i, n)` builds tiles i, i + n, ...; every finished
tile is saved at once (atomically) under `<out>/.raytrace/tiles/`, so a killed job resumes where
it stopped, and whichever job finds the plan complete assembles the dataset. `snapshot` writes
the tiles finished so far as a dataset of their own while the build goes on.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckm_edge.runtime import codec
from ckm_edge.runtime.package import installed_versions, sha256_file
from ckm_edge.training.dataset import SPLITS, DatasetError, DatasetWriter

TRAINING_SCENES = ("munich", "etoile")
HELD_OUT_SCENES = ("florence", "san_francisco")
# Sionna's small analytic scenes, useful for tests; usable like any user scene.
TOY_SCENES = ("simple_street_canyon", "simple_street_canyon_with_cars", "box", "floor_wall")
BUILTIN_SCENES = TRAINING_SCENES + HELD_OUT_SCENES + TOY_SCENES

MIN_LLVM = 16  # drjit's code generation crashes with LLVM 14 and 15
_LLVM_GLOBS = (
    "/usr/lib/x86_64-linux-gnu/libLLVM-*.so*",
    "/usr/lib/aarch64-linux-gnu/libLLVM-*.so*",
    "/usr/lib/llvm-*/lib/libLLVM*.so*",
    "/usr/lib64/libLLVM*.so*",
    "/usr/local/lib/libLLVM*.so*",
    "/opt/homebrew/opt/llvm/lib/libLLVM.dylib",
)
_VARIANTS = {"cpu": "llvm_ad_mono_polarized", "cuda": "cuda_ad_mono_polarized"}
WORK_DIR = ".raytrace"


class RaytraceError(RuntimeError):
    """The ray-tracing backend is missing or misconfigured, or a build was asked for something invalid."""


# --- Backend ------------------------------------------------------------------------------------


def _llvm_version(path: str) -> int | None:
    m = re.search(r"LLVM-?(\d+)", os.path.basename(path))
    return int(m.group(1)) if m else None


def find_llvm() -> tuple[str | None, str]:
    """(path, note): the LLVM library for drjit's CPU backend, or None and why not.

    DRJIT_LIBLLVM_PATH wins when set; otherwise the newest system libLLVM >= 16 is taken.
    """
    env = os.environ.get("DRJIT_LIBLLVM_PATH")
    if env:
        if not os.path.exists(env):
            return None, f"DRJIT_LIBLLVM_PATH={env} does not exist"
        version = _llvm_version(env)
        if version is not None and version < MIN_LLVM:
            return None, f"DRJIT_LIBLLVM_PATH={env} is LLVM {version}; drjit needs LLVM >= {MIN_LLVM}"
        return env, "from DRJIT_LIBLLVM_PATH"
    found = []
    for pattern in _LLVM_GLOBS:
        for path in glob.glob(pattern):
            version = _llvm_version(path)
            if version is not None:
                found.append((version, path))
    good = sorted(v for v in found if v[0] >= MIN_LLVM)
    if good:
        return good[-1][1], f"LLVM {good[-1][0]} found on the system"
    seen = ", ".join(sorted({f"LLVM {v}" for v, _ in found})) or "none"
    return None, (
        f"no LLVM >= {MIN_LLVM} library found (seen: {seen}); Sionna RT's CPU backend crashes with "
        "LLVM 14/15. On Debian/Ubuntu: `apt-get install libllvm19` (or `make raytrace-setup`), "
        "or point DRJIT_LIBLLVM_PATH at a libLLVM.so >= 16"
    )


def backend_problem(device: str = "cpu") -> str | None:
    """Why a ray-traced build cannot run here on `device`, or None when it can (imports nothing heavy)."""
    if _sionna_rt_dir() is None:
        return "sionna-rt is not installed: pip install 'ckm-edge[raytrace]'"
    if device == "cpu":
        path, note = find_llvm()
        if path is None:
            return note
    return None


def load_backend(device: str = "auto"):
    """Select the Mitsuba variant for `device` ('cpu', 'cuda' or 'auto') and import Sionna RT.

    Returns (sionna.rt module, device actually used). Must run before anything imports drjit
    with another backend; switching backends inside one process is refused.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise RaytraceError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    problem = backend_problem("cuda" if device == "cuda" else "cpu")
    if problem is not None and not (device == "auto" and "LLVM" in problem):
        raise RaytraceError(problem)
    if device in ("auto", "cpu"):
        path, _ = find_llvm()
        if path is not None:
            os.environ.setdefault("DRJIT_LIBLLVM_PATH", path)
    import mitsuba as mi

    wanted = [device] if device != "auto" else ["cuda", "cpu"]
    current = mi.variant()
    if current is not None:
        for name in wanted:
            if current == _VARIANTS[name]:
                import sionna.rt as rt

                return rt, name
        raise RaytraceError(
            f"this process already uses Mitsuba variant {current!r}; start a new process for device {device!r}"
        )
    errors = []
    for name in wanted:
        try:
            mi.set_variant(_VARIANTS[name])
            import sionna.rt as rt
        except Exception as e:  # noqa: BLE001 - mitsuba raises ImportError/RuntimeError/AttributeError
            errors.append(f"{name}: {e}")
            continue
        return rt, name
    raise RaytraceError("no usable ray-tracing backend: " + "; ".join(errors))


# --- Configuration and scenes ------------------------------------------------------------------


@dataclass(frozen=True)
class RaytraceConfig:
    """Settings of one ray-traced build; every field goes into the dataset's provenance."""

    tile_size: int = 128
    cell_size_m: float = 2.0
    carrier_hz: float = 3.5e9
    rx_height_m: float = 1.5
    bs_height_m: tuple[float, float] = (10.0, 30.0)  # above the ground under the BS
    bs_offset: float = 1.25  # max |tile centre - BS| per axis, in tile half-widths
    min_outdoor_fraction: float = 0.2
    min_building_fraction: float = 0.05  # skip tiles in empty outskirts of a scene
    max_depth: int = 3
    los: bool = True
    specular_reflection: bool = True
    diffraction: bool = True
    edge_diffraction: bool = False
    refraction: bool = False
    samples_per_src: int = 100_000
    rx_per_solve: int = 256  # receivers per path-solver call
    hash_slots_per_rx: int = 1 << 18  # candidate hash-table slots per receiver (see TracedScene.solve)
    ground_pattern: str = r"(?i)^(ground|terrain|plane|floor|road|street)"
    ground_footprint: float = 0.5  # an object covering this much of the scene is ground

    def __post_init__(self) -> None:
        if self.tile_size < 2:
            raise ValueError(f"tile_size must be >= 2, got {self.tile_size}")
        for name in ("cell_size_m", "carrier_hz", "rx_height_m", "samples_per_src", "rx_per_solve", "hash_slots_per_rx"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        lo, hi = self.bs_height_m
        if not 0 < lo <= hi:
            raise ValueError(f"bs_height_m must be a range (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")
        if not 0 <= self.bs_offset <= 10:
            raise ValueError(f"bs_offset must be in [0, 10] tile half-widths, got {self.bs_offset}")
        for name in ("min_outdoor_fraction", "min_building_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.min_outdoor_fraction + self.min_building_fraction > 1:
            raise ValueError("min_outdoor_fraction + min_building_fraction must not exceed 1")
        if not 0 <= self.max_depth <= 10:
            raise ValueError(f"max_depth must be in [0, 10], got {self.max_depth}")
        try:
            re.compile(self.ground_pattern)
        except re.error as e:
            raise ValueError(f"ground_pattern {self.ground_pattern!r} is not a regular expression: {e}") from e

    @property
    def extent_m(self) -> float:
        return self.tile_size * self.cell_size_m


@dataclass(frozen=True)
class SceneSpec:
    """A scene to trace: a Sionna built-in scene name or a Mitsuba XML file."""

    source: str  # built-in name or absolute path
    region: str  # dataset region name
    builtin: bool

    @classmethod
    def parse(cls, text: str) -> SceneSpec:
        if text in BUILTIN_SCENES:
            return cls(text, text, True)
        path = Path(text)
        if path.suffix.lower() != ".xml":
            raise RaytraceError(
                f"scene {text!r} is neither a built-in scene ({', '.join(BUILTIN_SCENES)}) nor a Mitsuba .xml file"
            )
        if not path.is_file():
            raise RaytraceError(f"scene file {text} does not exist")
        region = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:64] or "scene"
        return cls(str(path.resolve()), region, False)

    def xml_path(self, rt) -> str:
        return getattr(rt.scene, self.source) if self.builtin else self.source

    def held_out_as(self) -> str | None:
        """The held-out region this scene is (by name, or by content for a user file), else None."""
        if self.builtin:
            return self.source if self.source in HELD_OUT_SCENES else None
        digest = sha256_file(Path(self.source))
        for name in HELD_OUT_SCENES:
            ref = _builtin_xml(name)
            if ref is not None and (os.path.samefile(ref, self.source) or sha256_file(Path(ref)) == digest):
                return name
        return None


def _sionna_rt_dir() -> Path | None:
    """Where sionna.rt is installed, found without importing it (its import starts drjit)."""
    import importlib.util

    spec = importlib.util.find_spec("sionna")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "rt"
    return path if (path / "__init__.py").exists() else None


def _builtin_xml(name: str) -> str | None:
    root = _sionna_rt_dir()
    if root is None:
        return None
    path = root / "scenes" / name / f"{name}.xml"
    return str(path) if path.exists() else None


def check_split(scene: SceneSpec, split: str) -> None:
    """Region discipline: held-out scenes never go into a training split."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    held = scene.held_out_as()
    if split == "train" and held is not None:
        what = "" if scene.builtin else f" (the file {scene.source} is the built-in scene {held!r})"
        raise DatasetError(
            f"scene {held!r}{what} is a held-out evaluation region ({', '.join(HELD_OUT_SCENES)}); "
            "it is never used for training: put it in the eval split"
        )


# --- Scene geometry ----------------------------------------------------------------------------


class TracedScene:
    """A loaded scene: its ground objects, footprint, and the vertical-ray queries of the builder."""

    def __init__(self, rt, spec: SceneSpec, cfg: RaytraceConfig):
        import mitsuba as mi

        self.rt, self.mi, self.spec, self.cfg = rt, mi, spec, cfg
        xml = spec.xml_path(rt)
        try:
            # Ground objects are told apart before Sionna merges shapes per material (a merged
            # "all marble buildings" shape spans the whole scene too): by name, or by covering
            # most of the scene's footprint as a single object. They are then kept out of the merge.
            parts = rt.load_scene(xml, merge_shapes=False)
            bbox = parts.mi_scene.bbox()
            area = max((bbox.max.x - bbox.min.x) * (bbox.max.y - bbox.min.y), 1e-9)
            pattern = re.compile(cfg.ground_pattern)
            ground = []
            for name, obj in parts.objects.items():
                ob = obj.mi_mesh.bbox()
                footprint = (ob.max.x - ob.min.x) * (ob.max.y - ob.min.y) / area
                if pattern.search(name) or footprint >= cfg.ground_footprint:
                    ground.append(name)
            del parts
            exclude = "^(" + "|".join(re.escape(n) for n in ground) + ")$" if ground else None
            self.scene = rt.load_scene(xml, merge_shapes=True, merge_shapes_exclude_regex=exclude)
        except Exception as e:  # noqa: BLE001 - mitsuba's loader raises plain RuntimeError
            raise RaytraceError(f"cannot load scene {spec.source!r}: {e}") from e
        self.xml_sha256 = sha256_file(Path(xml))
        bbox = self.scene.mi_scene.bbox()
        self.lo = np.array([bbox.min.x, bbox.min.y, bbox.min.z], dtype=np.float64)
        self.hi = np.array([bbox.max.x, bbox.max.y, bbox.max.z], dtype=np.float64)
        # Without ground geometry a ray that hits nothing is outdoor at the scene's lowest z.
        self.ground = {name: int(self.scene.objects[name].object_id) for name in ground if name in self.scene.objects}
        if len(self.ground) != len(ground):
            missing = sorted(set(ground) - set(self.ground))
            raise RaytraceError(f"ground object(s) {missing} of {spec.source!r} vanished when the scene was merged")
        self.scene.frequency = cfg.carrier_hz
        self.solver = rt.PathSolver()
        array = rt.PlanarArray(num_rows=1, num_cols=1, pattern="iso", polarization="V")
        self.scene.tx_array = array
        self.scene.rx_array = array

    def describe(self) -> dict:
        return {
            "scene": self.spec.source if self.spec.builtin else Path(self.spec.source).name,
            "builtin": self.spec.builtin,
            "xml_sha256": self.xml_sha256,
            "bbox_m": [self.lo.round(3).tolist(), self.hi.round(3).tolist()],
            "ground_objects": sorted(self.ground),
        }

    def probe(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vertical rays at points (N, 2) -> (is_building (N,), ground_z (N,)).

        The first surface hit from above decides: a ground object means outdoor at that height;
        any other object means building; no hit means outdoor at the scene's lowest z.
        """
        valid, z, on_ground = self._from_above(xy)
        building = valid & ~on_ground
        ground_z = np.where(valid & on_ground, z, self.lo[2])
        return building, ground_z

    def surface(self, xy: np.ndarray) -> np.ndarray:
        """(N,) z of the first surface a vertical ray from above meets at points (N, 2): a roof on a
        building cell, the ground elsewhere (the scene's lowest z where nothing is hit)."""
        valid, z, _ = self._from_above(xy)
        return np.where(valid, z, self.lo[2])

    def _from_above(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mi = self.mi
        import drjit as dr

        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        top = float(self.hi[2] + 10.0)
        origin = mi.Point3f(mi.Float(xy[:, 0]), mi.Float(xy[:, 1]), mi.Float(np.full(len(xy), top)))
        ray = mi.Ray3f(origin, mi.Vector3f(0.0, 0.0, -1.0))
        si = self.scene.mi_scene.ray_intersect(ray)
        valid = np.array(si.is_valid(), dtype=bool).reshape(-1)
        z = np.array(si.p.z, dtype=np.float64).reshape(-1)
        shape_id = np.array(dr.reinterpret_array(mi.UInt32, si.shape), dtype=np.uint64).reshape(-1)
        on_ground = np.isin(shape_id, np.array(list(self.ground.values()), dtype=np.uint64))
        return valid, z, on_ground

    def solve(self, tx_xyz: np.ndarray, rx_xyz: np.ndarray, *, seed: int = 42) -> dict:
        """Sionna's paths from one transmitter to receivers (N, 3) -> per-path numpy arrays.

        Returns a (N, P) complex128 coefficients, tau (N, P) s, phi_r (N, P) rad, valid (N, P).
        Receivers are solved `rx_per_solve` at a time. Sionna's shoot-and-bounce stage keeps one
        hash table of (specular chain, receiver) pairs per source and silently drops a candidate
        whose slot is taken; at its default size (1e6 slots) a solve with thousands of receivers
        loses about half of all paths (measured on munich: 4,096 receivers, 30,579 paths instead
        of 61,284). The table is therefore sized to `hash_slots_per_rx` per receiver of a chunk.
        """
        from sionna.rt.path_solvers.sb_candidate_generator import SBCandidateGenerator

        rt, mi, cfg = self.rt, self.mi, self.cfg
        scene = self.scene
        rx_xyz = np.asarray(rx_xyz, dtype=np.float64).reshape(-1, 3)
        for name in list(scene.transmitters):
            scene.remove(name)
        scene.add(rt.Transmitter("bs", position=mi.Point3f(*map(float, tx_xyz))))
        parts = []
        saved = SBCandidateGenerator.MIN_SPEC_COUNT_SIZE
        chunk = cfg.rx_per_solve
        SBCandidateGenerator.MIN_SPEC_COUNT_SIZE = max(saved, chunk * cfg.hash_slots_per_rx)
        try:
            for start in range(0, len(rx_xyz), chunk):
                block = rx_xyz[start : start + chunk]
                for name in list(scene.receivers):
                    scene.remove(name)
                for i, p in enumerate(block):
                    scene.add(rt.Receiver(f"rx{i}", position=mi.Point3f(*map(float, p))))
                paths = self.solver(
                    scene,
                    max_depth=cfg.max_depth,
                    los=cfg.los,
                    specular_reflection=cfg.specular_reflection,
                    diffuse_reflection=False,
                    refraction=cfg.refraction,
                    diffraction=cfg.diffraction,
                    edge_diffraction=cfg.edge_diffraction,
                    samples_per_src=int(cfg.samples_per_src),
                    synthetic_array=True,
                    seed=seed,
                )
                n = len(block)
                a_re, a_im = (np.array(t, dtype=np.float64) for t in paths.a)
                parts.append({
                    "a": (a_re + 1j * a_im).reshape(n, -1),
                    "tau": np.array(paths.tau, dtype=np.float64).reshape(n, -1),
                    "phi_r": np.array(paths.phi_r, dtype=np.float64).reshape(n, -1),
                    "valid": np.array(paths.valid, dtype=bool).reshape(n, -1),
                })
        finally:
            SBCandidateGenerator.MIN_SPEC_COUNT_SIZE = saved
        width = max(p["a"].shape[1] for p in parts)

        def pad(x, fill):
            return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=fill)

        return {k: np.concatenate([pad(p[k], fill) for p in parts]) for k, fill in
                (("a", 0), ("tau", 0.0), ("phi_r", 0.0), ("valid", False))}


def building_heights(surface_z: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(H, W) building heights in metres (0 outdoors) of a tile from its `surface_z`: each building
    cell's roof above the ground of the nearest outdoor cells (filled in ring by ring from the
    outdoor cells around it, so terrain under a building is the terrain beside it)."""
    building = codec.building_mask(pixels)
    z = np.asarray(surface_z, np.float64)
    if not building.any() or building.all():
        return np.zeros(building.shape, np.float32)
    ground = np.where(building, np.nan, z)
    known = ~building
    while not known.all():
        pad = np.pad(np.where(known, ground, 0.0), 1)
        cnt = np.pad(known.astype(np.float64), 1)
        total = pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:]
        n = cnt[:-2, 1:-1] + cnt[2:, 1:-1] + cnt[1:-1, :-2] + cnt[1:-1, 2:]
        new = ~known & (n > 0)
        ground[new] = total[new] / n[new]
        known = known | new
    return np.where(building, np.maximum(z - ground, 0.0), 0.0).astype(np.float32)


def combine_paths(paths: dict, carrier_hz: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per receiver: coherent gain (dB, -inf without paths), sin(AoA) of the strongest path, path count."""
    a = np.where(paths["valid"], paths["a"], 0.0)
    phase = np.exp(-2j * np.pi * carrier_hz * paths["tau"])
    h = (a * phase).sum(-1)
    power = np.abs(h) ** 2
    with np.errstate(divide="ignore"):
        gain_db = 10.0 * np.log10(power)
    count = paths["valid"].sum(-1)
    if a.shape[-1] == 0:
        return gain_db, np.zeros(len(a)), count
    strongest = np.argmax(np.abs(a), axis=-1)
    phi = np.take_along_axis(paths["phi_r"], strongest[:, None], -1)[:, 0]
    sine = np.where(count > 0, np.sin(phi), 0.0)
    return gain_db, np.clip(sine, -1.0, 1.0), count


# --- Tiles -------------------------------------------------------------------------------------


def cell_centres(centre_xy: np.ndarray, cfg: RaytraceConfig) -> np.ndarray:
    """(H*W, 2) scene (x, y) of the cell centres of a tile centred at `centre_xy`; row 0 is north."""
    n, c = cfg.tile_size, cfg.cell_size_m
    offs = (np.arange(n) + 0.5 - n / 2) * c
    x = centre_xy[0] + offs[None, :].repeat(n, 0)
    y = centre_xy[1] - offs[:, None].repeat(n, 1)
    return np.stack([x.ravel(), y.ravel()], -1)


def scene_to_cell(xy: np.ndarray, centre_xy: np.ndarray, cfg: RaytraceConfig) -> np.ndarray:
    """Scene (x, y) -> continuous (row, col) of a tile centred at `centre_xy`: cell (i, j) spans
    [i, i+1) x [j, j+1), its centre at (i + .5, j + .5), as in procedural tiles (training.dataset)."""
    n, c = cfg.tile_size, cfg.cell_size_m
    col = (xy[0] - centre_xy[0]) / c + n / 2
    row = (centre_xy[1] - xy[1]) / c + n / 2
    return np.array([row, col])


def tile_rng(seed: int, region: str, index: int) -> np.random.Generator:
    key = int.from_bytes(hashlib.sha256(region.encode()).digest()[:4], "little")
    return np.random.default_rng([seed, key, index])


@dataclass
class Placement:
    bs_xyz: np.ndarray  # scene metres
    bs_height_m: float  # above its ground
    centre_xy: np.ndarray  # tile centre, scene metres
    attempts: int


def place(traced: TracedScene, rng: np.random.Generator, max_attempts: int = 2000) -> Placement:
    """A random outdoor BS and a tile around it that fits the scene and is outdoor enough."""
    cfg = traced.cfg
    half = cfg.extent_m / 2
    lo, hi = traced.lo[:2] + half, traced.hi[:2] - half
    if np.any(hi < lo):
        raise RaytraceError(
            f"a {cfg.extent_m:g} m tile does not fit scene {traced.spec.region!r} "
            f"({traced.hi[0] - traced.lo[0]:.0f} x {traced.hi[1] - traced.lo[1]:.0f} m); "
            "use a smaller tile or cell size"
        )
    for attempt in range(1, max_attempts + 1):
        # Positions in whole millimetres, so the manifest's numbers reproduce a tile exactly.
        centre = np.round(rng.uniform(lo, hi), 3)
        bs_xy = np.round(centre + rng.uniform(-1, 1, 2) * cfg.bs_offset * half, 3)
        height = round(float(rng.uniform(*cfg.bs_height_m)), 3)
        if np.any(bs_xy < traced.lo[:2]) or np.any(bs_xy > traced.hi[:2]):
            continue
        building, ground_z = traced.probe(bs_xy[None])
        if building[0]:
            continue
        cells_building, _ = traced.probe(cell_centres(centre, cfg))
        share = cells_building.mean()
        if 1.0 - share < cfg.min_outdoor_fraction or share < cfg.min_building_fraction:
            continue
        bs = np.array([bs_xy[0], bs_xy[1], round(float(ground_z[0]) + height, 3)])
        return Placement(bs, height, centre, attempt)
    raise RaytraceError(
        f"no outdoor base-station position with a tile of >= {cfg.min_outdoor_fraction:.0%} outdoor and "
        f">= {cfg.min_building_fraction:.0%} building cells "
        f"found in scene {traced.spec.region!r} after {max_attempts} draws"
    )


@dataclass
class RaytracedTile:
    pixels: np.ndarray  # (2, H, W) codec pixels
    tx: np.ndarray  # (3,) row, col (cells), height above ground (m)
    meta: dict
    # (H, W) float32 scene z (m) of the first surface from above at each cell centre: roofs on
    # building cells, the ground elsewhere; with the BS's ground z (meta bs_m[2] - bs_height_m) it
    # gives building heights (runtime.physics takes them). Kept in the build's tile parts.
    surface_z: np.ndarray | None = None


def trace_tile(traced: TracedScene, placement: Placement, *, seed: int = 42) -> RaytracedTile:
    """Ray-trace one tile at a given placement."""
    cfg = traced.cfg
    n = cfg.tile_size
    start = time.perf_counter()
    xy = cell_centres(placement.centre_xy, cfg)
    building, ground_z = traced.probe(xy)
    outdoor = np.flatnonzero(~building)
    rx = np.column_stack([xy[outdoor], ground_z[outdoor] + cfg.rx_height_m])
    gain_db = np.full(n * n, np.nan)
    sine = np.full(n * n, np.nan)
    count = np.zeros(n * n, dtype=np.int64)
    if outdoor.size:
        paths = traced.solve(placement.bs_xyz, rx, seed=seed)
        g, s, c = combine_paths(paths, cfg.carrier_hz)
        gain_db[outdoor], sine[outdoor], count[outdoor] = g, s, c
    no_path = (~building) & (count == 0)
    gain_db[no_path] = codec.GAIN_DB_MIN
    pixels = codec.encode(
        gain_db.reshape(n, n), sine.reshape(n, n), building.reshape(n, n), clip_gain=True
    )
    rc = scene_to_cell(placement.bs_xyz[:2], placement.centre_xy, cfg)
    tx = np.array([rc[0], rc[1], placement.bs_height_m], dtype=np.float32)
    outdoor_gain = gain_db[~building]
    surface_z = traced.surface(xy).reshape(n, n).astype(np.float32)
    meta = {
        "tile_centre_m": placement.centre_xy.tolist(),
        "bs_m": placement.bs_xyz.tolist(),
        "bs_height_m": placement.bs_height_m,
        "bs_in_tile": bool(0 <= rc[0] < n and 0 <= rc[1] < n),
        "building_fraction": round(float(building.mean()), 4),
        "no_path_fraction": round(float(no_path.sum() / max(outdoor.size, 1)), 4),
        "max_paths": int(count.max()) if count.size else 0,
        "gain_db_range": [round(float(np.nanmin(outdoor_gain)), 2), round(float(np.nanmax(outdoor_gain)), 2)]
        if outdoor.size
        else None,
        "placement_attempts": placement.attempts,
        "solver_seed": seed,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return RaytracedTile(pixels, tx, meta, surface_z)


# --- Builds: plan, shards, resume, assembly ----------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class BuildPlan:
    """What a build makes: tiles per (scene, split), the config and the seed. Saved as plan.json."""

    scenes: tuple[tuple[str, str], ...]  # (scene source, split)
    tiles_per_scene: int
    seed: int
    config: RaytraceConfig

    def __post_init__(self) -> None:
        if self.tiles_per_scene < 1:
            raise ValueError(f"tiles_per_scene must be >= 1, got {self.tiles_per_scene}")
        if not self.scenes:
            raise ValueError("a build needs at least one scene")
        regions = []
        for source, split in self.scenes:
            spec = SceneSpec.parse(source)
            check_split(spec, split)
            regions.append(spec.region)
        twice = sorted({r for r in regions if regions.count(r) > 1})
        if twice:
            raise DatasetError(f"scene(s) {', '.join(twice)} listed twice; each scene is one region in one split")

    def jobs(self) -> list[tuple[SceneSpec, str, int]]:
        return [
            (SceneSpec.parse(source), split, i)
            for source, split in self.scenes
            for i in range(self.tiles_per_scene)
        ]

    def to_json(self) -> dict:
        return {
            "scenes": [list(s) for s in self.scenes],
            "tiles_per_scene": self.tiles_per_scene,
            "seed": self.seed,
            "config": dataclasses.asdict(self.config),
        }

    @classmethod
    def from_json(cls, data: dict) -> BuildPlan:
        cfg = dict(data["config"])
        cfg["bs_height_m"] = tuple(cfg["bs_height_m"])
        return cls(
            tuple((s, sp) for s, sp in data["scenes"]),
            int(data["tiles_per_scene"]),
            int(data["seed"]),
            RaytraceConfig(**cfg),
        )


def _part_path(out: Path, region: str, index: int) -> Path:
    return out / WORK_DIR / "tiles" / f"{region}-{index:05d}.npz"


def _atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def prepare(out: Path, plan: BuildPlan) -> None:
    """Create the work area, or check that an existing one belongs to the same plan."""
    out = Path(out)
    if (out / "manifest.json").exists():
        raise DatasetError(f"{out} already holds a finished dataset; choose a new directory")
    work = out / WORK_DIR
    (work / "tiles").mkdir(parents=True, exist_ok=True)
    plan_file = work / "plan.json"
    if plan_file.exists():
        old = json.loads(plan_file.read_text())
        new = json.loads(json.dumps(plan.to_json()))
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if "config" in diff:
                diff.remove("config")
                diff += [
                    f"config.{k}" for k in sorted(new["config"]) if old.get("config", {}).get(k) != new["config"][k]
                ]
            raise DatasetError(
                f"{out} holds a build with a different plan (differs in {', '.join(diff)}); "
                "resume with the same arguments or choose a new directory"
            )
    else:
        _atomic_write_json(plan_file, plan.to_json())


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def build(
    out: Path,
    plan: BuildPlan,
    *,
    shard: tuple[int, int] = (0, 1),
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
    limit: int | None = None,
    exclude: frozenset[str] = frozenset(),
    assemble_when_done: bool = True,
) -> dict:
    """Build this shard's missing tiles of `plan` into `out`; assemble the dataset when all exist
    (unless `assemble_when_done` is False: the parts stay, for snapshots of subsets).

    Returns a summary: tiles built now, skipped (already there), excluded (named in `exclude`, such
    as "munich-00012": tiles another machine's build of the same plan has finished; `merge` brings
    them here), remaining in the plan, and the manifest path if the dataset was assembled. `limit`
    stops after that many new tiles.
    """
    out = Path(out)
    prepare(out, plan)
    _check_in_plan(out, plan, exclude)
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    index, count = shard
    jobs = [j for k, j in enumerate(plan.jobs()) if k % count == index]
    missing = [j for j in jobs if not _part_path(out, j[0].region, j[2]).exists()]
    todo = [j for j in missing if _part_path(out, j[0].region, j[2]).stem not in exclude]
    excluded = len(missing) - len(todo)
    # Round-robin over scenes (tile 0 of every scene, then tile 1, ...): a build stopped or
    # snapshotted part way covers every scene, not the first one only.
    todo.sort(key=lambda j: j[2])
    skipped = len(jobs) - len(missing)
    if limit is not None:
        todo = todo[:limit]
    built = 0
    rt, used = (None, None)
    scenes: dict[str, TracedScene] = {}
    start = time.perf_counter()
    if todo:
        rt, used = load_backend(device)
        say(f"shard {index}/{count}: {len(todo)} tile(s) to trace on {used} ({skipped} already done"
            + (f", {excluded} built elsewhere)" if excluded else ")"))
    for spec, split, i in todo:
        traced = scenes.get(spec.region)
        if traced is None:
            traced = scenes[spec.region] = TracedScene(rt, spec, plan.config)
        placement = place(traced, tile_rng(plan.seed, spec.region, i))
        tile = trace_tile(traced, placement, seed=plan.seed * 1_000_003 + i)
        meta = {"region": spec.region, "split": split, "index": i, "device": used, **tile.meta}
        path = _part_path(out, spec.region, i)
        tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
        np.savez(tmp, pixels=tile.pixels, tx=tile.tx, meta=json.dumps(meta), scene=json.dumps(traced.describe()),
                 tx_convention=np.array("cell-corner"), surface_z=tile.surface_z)
        os.replace(tmp, path)
        built += 1
        elapsed = time.perf_counter() - start
        eta = elapsed / built * (len(todo) - built)
        bar = "#" * int(20 * built / len(todo))
        say(
            f"[{bar:<20}] {built}/{len(todo)} {spec.region} tile {i} ({split}): {tile.meta['seconds']:.1f} s, "
            f"{100 * tile.meta['building_fraction']:.0f}% buildings, elapsed {_eta(elapsed)}, ETA {_eta(eta)}"
        )
    remaining = [j for j in plan.jobs() if not _part_path(out, j[0].region, j[2]).exists()]
    summary = {"built": built, "skipped": skipped, "excluded": excluded, "remaining": len(remaining), "device": used,
               "manifest": None}
    if not remaining and assemble_when_done:
        manifest = assemble(out, plan)
        summary["manifest"] = str(manifest) if manifest else None
    return summary


def assemble(out: Path, plan: BuildPlan) -> Path | None:
    """Write the dataset (shards + manifest) from the finished tiles; None if another job is at it.

    Every tile part carries the description of the scene it was traced in, so the manifest is
    the same whichever shard assembles it (a job may not have loaded every scene).
    """
    out = Path(out)
    work = out / WORK_DIR
    lock = work / "assemble.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return None
    os.close(fd)
    try:
        if (out / "manifest.json").exists():
            return out / "manifest.json"
        _write_dataset(out, out, plan, plan.jobs())
        for path in (work / "tiles").glob("*.npz"):
            path.unlink()
        return out / "manifest.json"
    finally:
        lock.unlink(missing_ok=True)


def snapshot(build_dir: Path, dest: Path, exclude: frozenset[str] = frozenset()) -> dict:
    """Write the tiles a build has finished so far as a dataset at `dest`, leaving the build alone.

    A build of a thousand tiles takes days on a CPU; a snapshot lets training use what exists
    while tracing goes on (take another later: `dest` must be a new directory). The manifest's
    provenance names the build and how many of its planned tiles the snapshot holds. Tiles named
    in `exclude` ("munich-00024", ...) are left out: tiles held back for validation, which a
    snapshot of everything then holds beside the training snapshot (`ckm-bench tune --exclude`).
    """
    build_dir, dest = Path(build_dir), Path(dest)
    plan = _build_plan(build_dir)
    _check_in_plan(build_dir, plan, exclude)
    finished = [j for j in plan.jobs() if _part_path(build_dir, j[0].region, j[2]).exists()]
    done = [j for j in finished if _part_path(build_dir, j[0].region, j[2]).stem not in exclude]
    if not done:
        raise DatasetError(f"{build_dir} has no finished tiles yet" + (" outside the excluded ones" if finished else ""))
    if dest.resolve() == build_dir.resolve():
        raise DatasetError("the snapshot needs a directory of its own, not the build's")
    extra = {"snapshot_of": {"build": str(build_dir.resolve()), "planned": len(plan.jobs()), "finished": len(finished)}}
    if exclude:
        extra["snapshot_of"]["left_out"] = sorted({_part_path(build_dir, j[0].region, j[2]).stem for j in finished} & set(exclude))
    _write_dataset(dest, build_dir, plan, done, extra)
    return {"tiles": len(done), "planned": len(plan.jobs()), "manifest": str(dest / "manifest.json")}


def backfill_surface(build_dir: Path, device: str = "auto") -> dict:
    """Give the finished tile parts of a build that lack `surface_z` (traced before it was kept)
    their surface heights: vertical rays through the tile's cells at the placement its meta records,
    in the scene its plan names (checked to be the same file by its SHA-256). Cheap: no paths are
    solved. Returns {"filled": n, "kept": n}."""
    build_dir = Path(build_dir)
    plan = _build_plan(build_dir)
    todo = []
    kept = 0
    for spec, _, i in plan.jobs():
        path = _part_path(build_dir, spec.region, i)
        if not path.exists():
            continue
        with np.load(path) as z:
            if "surface_z" in z.files:
                kept += 1
                continue
        todo.append((spec, path))
    if todo:
        rt, _ = load_backend(device)
        scenes: dict[str, TracedScene] = {}
        for spec, path in todo:
            traced = scenes.get(spec.region) or scenes.setdefault(spec.region, TracedScene(rt, spec, plan.config))
            with np.load(path) as z:
                parts = {k: z[k] for k in z.files}
            if json.loads(str(parts["scene"]))["xml_sha256"] != traced.xml_sha256:
                raise DatasetError(f"{path} was traced in another version of scene {spec.region!r}; not filling it in")
            centre = np.array(json.loads(str(parts["meta"]))["tile_centre_m"], dtype=np.float64)
            n = plan.config.tile_size
            parts["surface_z"] = traced.surface(cell_centres(centre, plan.config)).reshape(n, n).astype(np.float32)
            tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
            np.savez(tmp, **parts)
            os.replace(tmp, path)
    return {"filled": len(todo), "kept": kept}


def _check_in_plan(build_dir: Path, plan: BuildPlan, names: frozenset[str]) -> None:
    """Refuse tile names ("munich-00012") that are not jobs of `plan` (a list from another plan?)."""
    unknown = sorted(set(names) - {_part_path(build_dir, j[0].region, j[2]).stem for j in plan.jobs()})
    if unknown:
        raise DatasetError(f"excluded tile(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} are not "
                           "in this build's plan (a list from another plan?)")


def _build_plan(build_dir: Path) -> BuildPlan:
    """The plan of the unfinished build in `build_dir` (refused: a finished dataset, no build)."""
    plan_file = build_dir / WORK_DIR / "plan.json"
    if (build_dir / "manifest.json").exists():
        raise DatasetError(f"{build_dir} is a finished dataset; use it directly")
    if not plan_file.is_file():
        raise DatasetError(f"{build_dir} holds no ray-tracing build ({plan_file} is missing)")
    return BuildPlan.from_json(json.loads(plan_file.read_text()))


def merge(build_dir: Path, other: Path) -> dict:
    """Add to the build in `build_dir` the tiles that another machine's build of the same plan has
    finished (`other`: a copy of that build's directory, with its .raytrace folder) — a GPU
    session traces part of a plan while the CPU goes on with the rest (`build(exclude=...)`).

    The plans must be equal. Tiles this build lacks are copied in (each checked to be the tile its
    name says, of the plan's size, before it lands; written atomically); tiles it has are kept.
    Assembles the dataset when the plan is then complete. Returns copied, kept, remaining, manifest.
    """
    build_dir, other = Path(build_dir), Path(other)
    plan = _build_plan(build_dir)
    theirs = _build_plan(other)
    if theirs.to_json() != plan.to_json():
        raise DatasetError(f"{other} is a build of a different plan than {build_dir}; only tiles of the same plan merge")
    size = plan.config.tile_size
    copied = kept = 0
    for spec, _, i in plan.jobs():
        src, dst = _part_path(other, spec.region, i), _part_path(build_dir, spec.region, i)
        if not src.exists():
            continue
        if dst.exists():
            kept += 1
            continue
        try:
            with np.load(src) as part:
                meta = json.loads(str(part["meta"]))
                ok = part["pixels"].shape == (2, size, size) and (meta["region"], meta["index"]) == (spec.region, i)
        except (OSError, ValueError, KeyError) as e:
            raise DatasetError(f"{src} is not a readable tile: {e}") from None
        if not ok:
            raise DatasetError(f"{src} does not hold tile {i} of {spec.region} at {size}x{size}")
        tmp = dst.with_name(dst.stem + f".tmp{os.getpid()}.npz")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        copied += 1
    remaining = [j for j in plan.jobs() if not _part_path(build_dir, j[0].region, j[2]).exists()]
    manifest = assemble(build_dir, plan) if not remaining else None
    return {"copied": copied, "kept": kept, "remaining": len(remaining), "manifest": str(manifest) if manifest else None}


def _write_dataset(dest: Path, build_dir: Path, plan: BuildPlan, jobs: list, extra: dict | None = None) -> None:
    """A dataset at `dest` from the tile parts of `jobs` under `build_dir`."""
    tiles_meta = []
    by_region: dict[tuple[str, str], list] = {}
    scenes: dict[str, dict] = {}
    for spec, split, i in jobs:
        with np.load(_part_path(build_dir, spec.region, i)) as z:
            tx = z["tx"].copy()
            if "tx_convention" not in z.files:  # a part traced before the cell-corner convention
                tx[:2] += 0.5
            heights = building_heights(z["surface_z"], z["pixels"]) if "surface_z" in z.files else None
            by_region.setdefault((split, spec.region), []).append((z["pixels"], tx, heights))
            tiles_meta.append(json.loads(str(z["meta"])))
            scenes.setdefault(spec.region, {"region": spec.region, "split": split, **json.loads(str(z["scene"]))})
    cfg = plan.config
    provenance = {
        "generator": "training.raytrace (Sionna RT path solver)",
        "versions": installed_versions(("sionna-rt", "mitsuba", "drjit", "numpy")),
        "seed": plan.seed,
        "config": dataclasses.asdict(cfg),
        "gain": "coherent sum over paths at the carrier, isotropic antennas, V polarisation",
        "aoa": "azimuth of the strongest path, counter-clockwise from +x (east); row 0 = north",
        "scenes": list(scenes.values()),
        "tiles": tiles_meta,
        **(extra or {}),
    }
    with DatasetWriter(dest, "sionna-rt", cfg.tile_size, cfg.cell_size_m, cfg.carrier_hz, provenance) as writer:
        for (split, region), rows in by_region.items():
            # heights when every tile of the region has them (parts traced before surface_z have none)
            heights = np.stack([h for _, _, h in rows]) if all(h is not None for _, _, h in rows) else None
            writer.add(split, region, np.stack([p for p, _, _ in rows]), np.stack([t for _, t, _ in rows]), heights)
