"""The construction tasks of the paper (and ours), as operator factories, and the noisy observation.

    ipbox       inpainting, one missing box with sides in [5, 50] cells      (paper IV-B-1)
    iprandom    inpainting, random missing cells, ratio in [0.0015, 0.1526]  (paper IV-B-1)
    sr2         super-resolution x2 (2x2 average)                             (paper IV-B-2)
    jtqr        gain truncation to [0.2, 0.7] + AoA quantization, K = 24      (paper IV-B-3, eq. 32)
    trajectory  drive-test routes through the streets (zero-shot, not in the paper)

y = A(x) + n with n ~ N(0, sigma^2 I), sigma = 0.01 in pixels as in the paper.
"""

from __future__ import annotations

import numpy as np

from ckm_edge.runtime import codec, defaults, operators

TASKS = ("ipbox", "iprandom", "sr2", "jtqr", "trajectory")
PAPER_TASKS = ("ipbox", "iprandom", "sr2", "jtqr")
DEFAULT_SIGMA = defaults.NOISE_SIGMA


def make_operator(task: str, rng: np.random.Generator, x: np.ndarray) -> operators.Operator:
    """A random instance of `task` for the batch x (B, 2, H, W); masks are drawn per sample."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise operators.OperatorError(f"x must be (B, 2, H, W), got {x.shape}")
    size = x.shape[-2:]
    if task == "ipbox":
        # The paper's [5, 50] cells are for 128 x 128 tiles; other tile sizes scale them.
        lo, hi = (max(1, round(v * min(size) / 128)) for v in operators.BOX_SIDE_RANGE)
        return operators.Mask(np.stack([operators.box_mask(rng, size, (lo, hi)) for _ in range(len(x))]))
    if task == "iprandom":
        return operators.Mask(np.stack([operators.random_mask(rng, size) for _ in range(len(x))]))
    if task == "sr2":
        return operators.Downsample(2)
    if task == "jtqr":
        # The building layout is part of the base station's map data (eq. 31).
        return operators.jtqr(building=codec.building_mask(x))
    if task == "trajectory":
        building = codec.building_mask(x)
        return operators.Mask(np.stack([operators.trajectory_mask(rng, b) for b in building]))
    raise operators.OperatorError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def unobserved(task: str, op: operators.Operator, x: np.ndarray) -> np.ndarray:
    """(B, 2, H, W) bool: the cells of the true maps x whose value the task's observation does not
    pin down — where "RMSE over the unobserved cells" is taken. Masks (inpainting, trajectories):
    the missing cells; SR: every cell (only block means are seen); JTQR: saturated gain cells
    (at or beyond a bound) and every outdoor AoA cell (only its sector is seen). Building cells of
    JTQR are known (eq. 31) and never counted."""
    x = np.asarray(x)
    if task in ("ipbox", "iprandom", "trajectory"):
        m = op.mask if op.mask.ndim == 3 else op.mask[None]
        return np.broadcast_to(~m[:, None], x.shape).copy()
    if task == "sr2":
        return np.ones(x.shape, dtype=bool)
    if task == "jtqr":
        low, high = op.operators[0].low, op.operators[0].high
        outdoor = ~codec.building_mask(x)
        gain = x[:, 0]
        return np.stack([outdoor & ((gain <= low) | (gain >= high)), outdoor], axis=1)
    raise operators.OperatorError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def observe(
    op: operators.Operator, x: np.ndarray, rng: np.random.Generator, sigma: float = DEFAULT_SIGMA
) -> np.ndarray:
    """y = A(x) + n, n ~ N(0, sigma^2 I)."""
    if not (np.isfinite(sigma) and sigma >= 0):
        raise operators.OperatorError(f"noise sigma must be finite and >= 0, got {sigma}")
    y = op.forward(x)
    return (y + sigma * rng.standard_normal(y.shape)).astype(np.float32)
