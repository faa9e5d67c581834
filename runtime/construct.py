"""Construct a CKM from one observation with an engine in hand: one job through runtime.executor.

    result = construct(engine, schedule, op, y, shape, ConstructConfig(sampler=DiffPIRConfig(), samples=4),
                       sigma=0.01, site=Site(building))

Runs `samples` posterior samples as one batch (each with its own generator, seeded from the
config's seed) through the sampler that `cfg.sampler` configures, and returns their mean and
per-cell standard deviation in pixels, plus the final residual ||y - A(x)|| of the mean and the
wall time of each stage. `sigma` is the observation's noise level in pixels (the data-consistent
samplers use it; 0 = noiseless), `site` what the base station knows of its site. The server's
batcher runs the same `executor.plan` / `executor.execute`, so a local construction and a
served one of the same request are the same maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime import executor, operators
from ckm_edge.runtime.executor import ConstructConfig, check_observation, in_physical_units, summarize  # noqa: F401
from ckm_edge.runtime.schedule import Schedule
from ckm_edge.runtime.site import Site
from ckm_edge.runtime.uncertainty import DEFAULT_COVERAGE, Uncertainty, interval, z_of


@dataclass
class Construction:
    mean: np.ndarray  # (2, H, W) pixels, clipped to [0, 1]
    std: np.ndarray | None  # (2, H, W) calibrated std, else the samples' spread (None for 1 sample)
    samples: np.ndarray  # (S, 2, H, W)
    residual: float  # ||y - A(mean)||
    timings: dict  # seconds per stage
    steps: int
    calibrated: bool = False  # std is the package's calibrated one (runtime.uncertainty)
    coverage: float = DEFAULT_COVERAGE

    def interval(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The central `coverage` interval in pixels (clipped to [0, 1]); None when not calibrated."""
        return interval(self.mean, self.std, z_of(self.coverage)) if self.calibrated else None


def construct(engine, schedule: Schedule, op: operators.Operator, y: np.ndarray, shape: tuple[int, int, int],
              cfg: ConstructConfig | None = None, *, sigma: float = 0.0, site: Site | None = None,
              adapter=None, adapter_lambda=None, uncertainty: Uncertainty | None = None) -> Construction:
    """`cfg` None: ConstructConfig(); `adapter`: an open site-adapter engine composed with `engine`
    (lambda(t): `adapter_lambda`); `uncertainty`: the package's calibration (`pkg.manifest.uncertainty`),
    which makes `std` the calibrated one and gives the interval."""
    job = executor.plan(executor.Opened(engine, schedule, uncertainty), op, y, shape, cfg or ConstructConfig(), sigma=sigma, site=site,
                        adapter=None if adapter is None else executor.Opened(adapter, schedule),
                        adapter_lambda=adapter_lambda)
    [r] = executor.execute([job])
    return Construction(r.mean, r.std, r.samples, r.residual, r.timings, r.steps, r.calibrated, r.coverage)

