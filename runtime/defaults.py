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
DPS_STEPS = 100  # the DPS sampler's steps when a construction names none (runtime.dps)
RECORD_DPS_STEPS = 50  # DPS steps of the packages' accuracy records and the benchmarks (the paper's figures use 1000)
CORRECTOR_STEPS = 1  # M, Langevin corrector steps per DPS step (runtime.dps and the PyTorch reference)
NOISE_SIGMA = 0.01  # measurement noise standard deviation, pixels
TILE_SIZE = 128  # cells per side of a CKM tile

# Limits of one construction, wherever it is asked for (runtime.executor, the server, recommendations)
MAX_STEPS = 2000  # respaced sampling steps
MAX_SAMPLES = 64  # posterior samples
OBSERVATION_RANGE = (-1.0, 2.0)  # pixels: the codec's [0, 1] widened for noise

# The edge server's limits (runtime.server.ServerConfig, `ckm-edge serve`, the batcher, the servicer)
MAX_BATCH = 8  # posterior-sample rows per engine batch (and the most samples one request may ask)
MAX_QUEUE_DELAY_MS = 5.0  # longest the oldest job of a key waits for others to join its batch
MAX_QUEUE = 64  # jobs waiting, all keys together
MAX_BATCH_MEMORY_MIB = 1024.0  # engine memory one batch may use (rows x measured per-row); 0 = no budget
MAX_EVALUATIONS = 20_000  # network evaluations one request may ask (samples x calls per sample)
