"""The project's shared defaults, in one place.

Every command, config and benchmark that has one of these defaults reads it from here (a sampler's
own parameters live on its config: runtime.dps.DPSConfig takes ZETA as its default); a test that
changes a default changes it for all of them.
"""

from __future__ import annotations

PRECISIONS = ("fp32", "fp16", "int8")  # the variants a package may ship, in order of preference
PRECISION = "fp32"
BACKEND = "onnxruntime"  # the engines' inference library (runtime.engine.BACKENDS); see ckm-bench latency
ZETA = 13.0  # DPS guidance strength (paper IV-C: 10-13)
DPS_STEPS = 50  # DPS steps of the accuracy records and benchmarks (the paper's figures use 1000)
CORRECTOR_STEPS = 1  # M, Langevin corrector steps per DPS step in the PyTorch reference
NOISE_SIGMA = 0.01  # measurement noise standard deviation, pixels
TILE_SIZE = 128  # cells per side of a CKM tile

# Limits of one construction, wherever it is asked for (runtime.executor, the server, recommendations)
MAX_STEPS = 2000  # respaced sampling steps
MAX_SAMPLES = 64  # posterior samples
OBSERVATION_RANGE = (-1.0, 2.0)  # pixels: the codec's [0, 1] widened for noise
