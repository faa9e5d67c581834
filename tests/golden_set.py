"""The golden set: fixed-seed constructions of the shipped default model, locally and over gRPC.

Recorded before a refactor and checked after it (tests/test_golden.py): for every sampler x task x
setting (observation alone / given the site) plus a few settings of note, one construction of a
ray-traced tile with a fixed seed on a deterministic engine, and the gRPC response to the same
request. Stored per case: SHA-256 of the mean and std (float32 bytes), the residual, and a coarse
probe of both maps (every 32nd cell), so that a machine whose CPU kernels round differently can
still compare within a tolerance while the recording machine compares bit for bit.

    python tests/golden_set.py            # re-record tests/golden/constructions.json

Changes since the first recording (each stated in its commit): the server reads the request's
float32 fields (noise sigma, truncation bounds) as the decimals the client wrote (runtime.api.decimal),
so the served constructions of the samplers sensitive to them (DiffPIR, DAPS on SR and JTQR) now
equal the local ones bit for bit; the server takes a respacing, so the DDIM case is served too.
Issue 35 changed every case once, on purpose: a construction ends moved into what its observation
proves (Operator.enforce), the default package's JTQR defaults draw 4 / 8 samples, and its std is
the calibrated one (the package's "uncertainty" section). Re-recorded when that section was refitted
with a scale per distance bin (the std changed; every mean stayed as it was), and when a calibrated
construction's bounded cells began reporting the calibrated predictive's truncated mean
(uncertainty.conditional_mean) and the section was refitted for it (JTQR's maps changed most; the
masks' only in their observed cells), when it was refitted on 48 validation tiles (was 16), and when
the truncated mean was kept to censored cells (a reading within its noise keeps its samples' mean:
the masks' maps are again those of their samples).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "models" / "repository" / "ckm-prior" / "1.0.0"
GOLDEN = Path(__file__).resolve().parent / "golden" / "constructions.json"
TILE = 3  # of datasets/sionna-rt-small's eval split
TASKS = ("ipbox", "iprandom", "sr2", "jtqr", "trajectory")
PROBE = (slice(None), slice(None, None, 32), slice(None, None, 32))


@dataclass(frozen=True)
class Case:
    sampler: str | None  # None: the package's recommendation for the operator
    task: str
    site: bool
    steps: int | None = None
    samples: int | None = None
    params: dict = field(default_factory=dict)
    respacing: str = "ddpm"
    legacy: dict = field(default_factory=dict)  # the request's DPS shorthand fields (gRPC only)

    @property
    def name(self) -> str:
        extra = "".join(f",{k}={v}" for k, v in sorted({**self.params, **self.legacy}.items()))
        resp = "" if self.respacing == "ddpm" else f",{self.respacing}"
        return f"{self.sampler or 'default'}{extra}{resp}/{self.task}/{'site' if self.site else 'paper'}"


SAMPLER_CASES = {
    "dps": dict(steps=3, samples=2, params={"corrector_steps": 1}),
    "diffpir": dict(steps=3, samples=2),
    "daps": dict(steps=3, samples=2),
    None: dict(),
}


def cases() -> list[Case]:
    out = [Case(s, t, site, **kw) for s, kw in SAMPLER_CASES.items() for t in TASKS for site in (False, True)]
    out += [Case("dps", "sr2", True, 3, 2, legacy={"zeta": 13.0, "jacobian_free": True}),
            Case("diffpir", "jtqr", True, 3, 2, {"restart": 0.1, "restart_steps": 2}),
            Case("diffpir", "ipbox", False, 4, 2, {"start": 0.3}),
            Case("diffpir", "sr2", False, 3, 2, respacing="ddim")]
    return out


def observation(task: str, site: bool):
    """The tile, the task's operator, y and (with `site`) the site, as the edge CLI builds them."""
    from ckm_edge.runtime import codec, tasks
    from ckm_edge.runtime.site import Site
    from ckm_edge.training.dataset import Dataset

    split = Dataset(ROOT / "datasets" / "sionna-rt-small").split("eval")
    truth = split[TILE].astype(np.float32)
    rng = np.random.default_rng([7, TASKS.index(task)])
    op = tasks.make_operator(task, rng, truth[None])
    if hasattr(op, "mask") and op.mask.ndim == 3:
        from ckm_edge.runtime import operators
        op = operators.Mask(op.mask[0])
    y = tasks.observe(op, truth[None], rng)[0]
    s = Site(codec.building_mask(truth), np.asarray(split.transmitters()[TILE], float)) if site else None
    return truth, op, y, s


def digest(mean: np.ndarray, std: np.ndarray | None, residual: float, steps: int, samples: int, sampler: str) -> dict:
    mean = np.ascontiguousarray(mean, np.float32)
    out = {"mean_sha256": hashlib.sha256(mean.tobytes()).hexdigest(), "mean_probe": mean[PROBE].ravel().tolist(),
           "residual": float(residual), "steps": int(steps), "samples": int(samples), "sampler": sampler}
    if std is not None:
        std = np.ascontiguousarray(std, np.float32)
        out.update(std_sha256=hashlib.sha256(std.tobytes()).hexdigest(), std_probe=std[PROBE].ravel().tolist())
    return out


def machine() -> str:
    """What decides the bits: CPU model, onnxruntime and numpy versions."""
    import onnxruntime

    model = platform.processor()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()} {model}; onnxruntime {onnxruntime.__version__}; numpy {np.__version__}"


def local(case: Case, engine, pkg) -> dict:
    """The case constructed in process, as `ckm-edge construct --package` does."""
    from ckm_edge.runtime.construct import ConstructConfig, construct
    from ckm_edge.runtime.recommend import resolve
    from ckm_edge.runtime.sampler import spec_for

    _, op, y, site = observation(case.task, case.site)
    params = {**case.params, **case.legacy}
    sampler, steps, samples = resolve(pkg.manifest.samplers, op, case.sampler, params, case.steps, case.samples, case.site)
    cfg = ConstructConfig(steps=steps, samples=samples, seed=11, sampler=sampler, respacing=case.respacing)
    r = construct(engine, pkg.schedule(), op, y, (2, pkg.tile_size, pkg.tile_size), cfg, sigma=0.01, site=site)
    return digest(r.mean, r.std, r.residual, r.steps, samples, spec_for(sampler).name)


def remote(case: Case, client) -> dict:
    """The same request over gRPC (a deterministic server, one request at a time)."""
    _, op, y, site = observation(case.task, case.site)
    kwargs = dict(case.legacy)
    if case.respacing != "ddpm":
        kwargs["respacing"] = case.respacing
    r = client.construct(y, op, sampler=case.sampler or "", sampler_parameters=case.params, steps=case.steps or 0,
                         samples=case.samples or 0, seed=11, noise_sigma=0.01, site=site, **kwargs)
    return digest(r.map, r.std, r.residual_norm, r.steps, r.samples, r.sampler)


def record(remote_cases: bool = True) -> dict:
    from ckm_edge.runtime.client import EdgeClient
    from ckm_edge.runtime.engine import EngineConfig, open_engine
    from ckm_edge.runtime.package import load_package
    from ckm_edge.runtime.server import ServerConfig, create_server

    pkg = load_package(PACKAGE)
    doc = {"machine": machine(), "package": f"{pkg.name} {pkg.version}", "local": {}, "grpc": {}}
    with open_engine(pkg, EngineConfig(deterministic=True, threads=1)) as engine:
        for case in cases():
            if not case.legacy:
                doc["local"][case.name] = local(case, engine, pkg)
    if remote_cases:
        edge = create_server(ServerConfig(repository=ROOT / "models" / "repository", port=0, poll_seconds=0,
                                          engine_threads=1, deterministic=True)).start()
        try:
            with EdgeClient(f"127.0.0.1:{edge.port}") as client:
                for case in cases():
                    doc["grpc"][case.name] = remote(case, client)
        finally:
            edge.stop(0)
    return doc


if __name__ == "__main__":
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
