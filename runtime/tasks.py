"""The construction tasks of the paper (and ours): each one a registered Task that draws a random
operator for a batch (its masks among them) and says which cells its observation leaves open; and
the noisy observation.

    ipbox       inpainting, one missing box with sides in [5, 50] cells      (paper IV-B-1)
    iprandom    inpainting, random missing cells, ratio in [0.0015, 0.1526]  (paper IV-B-1)
    sr2         super-resolution x2 (2x2 average); alias sr                   (paper IV-B-2)
    jtqr        gain truncation to [0.2, 0.7] + AoA quantization, K = 24      (paper IV-B-3, eq. 32)
    trajectory  drive-test routes through the streets (zero-shot, not in the paper)
    drive       one drive test of 256-1536 readings, the buildings unobserved: what a living map is
                built from (1-7 % of a tile; runtime.recommend's scarce masks)

y = A(x) + n with n ~ N(0, sigma^2 I), sigma = 0.01 in pixels as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ckm_edge.runtime import codec, defaults, operators

DEFAULT_SIGMA = defaults.NOISE_SIGMA


# --- masks: True = observed --------------------------------------------------------------------

BOX_SIDE_RANGE = (5, 50)  # paper IV-B-1, pixels
RANDOM_MISSING_RANGE = (5 * 5 / (128 * 128), 50 * 50 / (128 * 128))  # ~[0.0015, 0.1526]


def box_mask(rng: np.random.Generator, size: tuple[int, int], side_range=BOX_SIDE_RANGE) -> np.ndarray:
    """One missing rectangle with sides uniform in side_range (inclusive). True = observed."""
    h, w = size
    lo, hi = side_range
    if not 1 <= lo <= hi <= min(h, w):
        raise operators.OperatorError(f"box sides {side_range} must satisfy 1 <= lo <= hi <= {min(h, w)}")
    bh, bw = rng.integers(lo, hi + 1, size=2)
    r, c = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
    mask = np.ones((h, w), dtype=bool)
    mask[r : r + bh, c : c + bw] = False
    return mask


def random_mask(rng: np.random.Generator, size: tuple[int, int], missing_range=RANDOM_MISSING_RANGE) -> np.ndarray:
    """Cells missing independently at a ratio drawn uniformly from missing_range. True = observed."""
    lo, hi = missing_range
    if not 0.0 <= lo <= hi < 1.0:
        raise operators.OperatorError(f"missing ratio range {missing_range} must satisfy 0 <= lo <= hi < 1")
    h, w = size
    ratio = rng.uniform(lo, hi)
    missing = rng.permutation(h * w) < round(ratio * h * w)
    return ~missing.reshape(h, w)


def trajectory_mask(
    rng: np.random.Generator,
    building: np.ndarray,
    routes: int = 4,
    length: int = 150,
    width: int = 1,
) -> np.ndarray:
    """Drive-test measurements: cells along random routes through the streets. True = observed.

    Building footprints are map data a base station has, so building cells count as observed
    (their value is 0 in both channels). Each route starts at a random outdoor cell and drives straight along one of 8 headings,
    turning at random (and when blocked by a building or the tile edge), for `length` cells.
    """
    building = np.asarray(building, dtype=bool)
    if building.ndim != 2 or routes < 1 or length < 1 or width < 1:
        raise operators.OperatorError("trajectory needs a (H, W) building mask and routes, length, width >= 1")
    h, w = building.shape
    outdoor = np.flatnonzero(~building.ravel())
    if outdoor.size == 0:
        raise operators.OperatorError("trajectory needs at least one outdoor cell")
    headings = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
    observed = np.zeros((h, w), dtype=bool)
    for _ in range(routes):
        r, c = divmod(int(rng.choice(outdoor)), w)
        k = int(rng.integers(8))
        for _ in range(length):
            observed[max(r - width + 1, 0) : r + width, max(c - width + 1, 0) : c + width] = True
            if rng.random() < 0.04:
                k = (k + rng.choice([-2, 2])) % 8
            for turn in (0, 1, -1, 2, -2, 3, -3, 4):
                dr, dc = headings[(k + turn) % 8]
                nr, nc = r + dr, c + dc
                if 0 <= nr < h and 0 <= nc < w and not building[nr, nc]:
                    k = (k + turn) % 8
                    r, c = nr, nc
                    break
            else:
                break
    return observed | building


DRIVE_READINGS = (256, 1536)  # readings per drive test: one to six of ckm-bench sites' 256-reading batches


def drive_route(rng: np.random.Generator, outdoor: np.ndarray, n: int) -> list[tuple[int, int]]:
    """n outdoor cells along one drive (a living map's readings, in order): keep the heading, turn
    (left or right) when blocked or with probability 0.05, never reverse unless boxed in; cells may
    repeat (a road driven twice); from an isolated cell, jump to another street."""
    outdoor = np.asarray(outdoor, dtype=bool)
    cells = np.argwhere(outdoor)
    if outdoor.ndim != 2 or len(cells) == 0 or n < 1:
        raise operators.OperatorError("a drive needs a (H, W) outdoor mask with an outdoor cell and n >= 1")
    h, w = outdoor.shape
    r, c = (int(v) for v in cells[rng.integers(len(cells))])
    heading = int(rng.integers(4))
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    out: list[tuple[int, int]] = [(r, c)]
    while len(out) < n:
        order = [heading] if rng.random() > 0.05 else []
        order += [(heading + t) % 4 for t in (rng.permutation([1, 3]))] + [(heading + 2) % 4]
        for d in order:
            dr, dc = steps[d]
            if 0 <= r + dr < h and 0 <= c + dc < w and outdoor[r + dr, c + dc]:
                r, c, heading = r + dr, c + dc, d
                break
        else:
            r, c = (int(v) for v in cells[rng.integers(len(cells))])
        out.append((r, c))
    return out


def drive_mask(rng: np.random.Generator, building: np.ndarray, readings: tuple[int, int] = DRIVE_READINGS) -> np.ndarray:
    """One drive test's cells (True = observed) over a tile: a route (`drive_route`) of a number of
    readings drawn uniformly from `readings` (for 128 x 128 tiles; scaled by the tile's area).
    Unlike `trajectory_mask`, building cells are not observed: a living map knows its buildings
    from the site, not from its readings."""
    area = np.size(building) / (128 * 128)  # the readings are for 128 x 128 tiles; other sizes scale them
    n = int(rng.integers(max(1, round(readings[0] * area)), max(1, round(readings[1] * area)) + 1))
    observed = np.zeros(np.shape(building), dtype=bool)
    observed[tuple(np.array(drive_route(rng, ~np.asarray(building, dtype=bool), n)).T)] = True
    return observed


# --- the tasks ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """A construction task: `draw(rng, x)` is a random instance of its operator for the batch x
    (B, 2, H, W), masks drawn per sample; `unobserved(op, x)` the (B, 2, H, W) cells of the true
    maps x whose value that operator's observation does not pin down."""

    name: str
    draw: Callable[[np.random.Generator, np.ndarray], operators.Operator]
    unobserved: Callable[[operators.Operator, np.ndarray], np.ndarray]
    paper: bool = True  # one of the paper's four (IV-B)
    aliases: tuple[str, ...] = ()  # other names the command line accepts


def _box(rng: np.random.Generator, x: np.ndarray) -> operators.Mask:
    # The paper's [5, 50] cells are for 128 x 128 tiles; other tile sizes scale them.
    size = x.shape[-2:]
    lo, hi = (max(1, round(v * min(size) / 128)) for v in BOX_SIDE_RANGE)
    return operators.Mask(np.stack([box_mask(rng, size, (lo, hi)) for _ in range(len(x))]))


def _random(rng: np.random.Generator, x: np.ndarray) -> operators.Mask:
    return operators.Mask(np.stack([random_mask(rng, x.shape[-2:]) for _ in range(len(x))]))


def _trajectory(rng: np.random.Generator, x: np.ndarray) -> operators.Mask:
    return operators.Mask(np.stack([trajectory_mask(rng, b) for b in codec.building_mask(x)]))


def _drive(rng: np.random.Generator, x: np.ndarray) -> operators.Mask:
    return operators.Mask(np.stack([drive_mask(rng, b) for b in codec.building_mask(x)]))


def _downsample2(rng: np.random.Generator, x: np.ndarray) -> operators.Downsample:
    return operators.Downsample(2)


def _jtqr(rng: np.random.Generator, x: np.ndarray) -> operators.PerChannel:
    # The building layout is part of the base station's map data (eq. 31).
    return operators.jtqr(building=codec.building_mask(x))


def _missing(op: operators.Mask, x: np.ndarray) -> np.ndarray:
    """Masks (inpainting, trajectories): the missing cells."""
    m = op.mask if op.mask.ndim == 3 else op.mask[None]
    return np.broadcast_to(~m[:, None], x.shape).copy()


def _missing_outdoor(op: operators.Mask, x: np.ndarray) -> np.ndarray:
    """A drive test: the outdoor cells it did not reach (the buildings are the site's, known)."""
    return _missing(op, x) & ~codec.building_mask(x)[:, None]


def _every_cell(op: operators.Operator, x: np.ndarray) -> np.ndarray:
    """SR: every cell (only block means are seen)."""
    return np.ones(x.shape, dtype=bool)


def _saturated_or_aoa(op: operators.PerChannel, x: np.ndarray) -> np.ndarray:
    """JTQR: saturated gain cells (at or beyond a bound) and every outdoor AoA cell (only its sector
    is seen). Building cells are known (eq. 31) and never counted."""
    low, high = op.operators[0].low, op.operators[0].high
    outdoor = ~codec.building_mask(x)
    gain = x[:, 0]
    return np.stack([outdoor & ((gain <= low) | (gain >= high)), outdoor], axis=1)


REGISTRY: dict[str, Task] = {t.name: t for t in (
    Task("ipbox", _box, _missing),
    Task("iprandom", _random, _missing),
    Task("sr2", _downsample2, _every_cell, aliases=("sr",)),
    Task("jtqr", _jtqr, _saturated_or_aoa),
    Task("trajectory", _trajectory, _missing, paper=False),
    Task("drive", _drive, _missing_outdoor, paper=False),
)}
TASKS = tuple(REGISTRY)
PAPER_TASKS = tuple(name for name, t in REGISTRY.items() if t.paper)
ALIASES = {a: t.name for t in REGISTRY.values() for a in (t.name, *t.aliases)}  # every accepted name -> task


def get(task: str) -> Task:
    """The registered task `task`; an unknown name raises OperatorError naming the known ones."""
    found = REGISTRY.get(task)
    if found is None:
        raise operators.OperatorError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return found


def make_operator(task: str, rng: np.random.Generator, x: np.ndarray) -> operators.Operator:
    """A random instance of `task` for the batch x (B, 2, H, W); masks are drawn per sample."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise operators.OperatorError(f"x must be (B, 2, H, W), got {x.shape}")
    return get(task).draw(rng, x)


def unobserved(task: str, op: operators.Operator, x: np.ndarray) -> np.ndarray:
    """(B, 2, H, W) bool: the cells of the true maps x whose value the task's observation does not
    pin down — where "RMSE over the unobserved cells" is taken (each task's rule: Task.unobserved)."""
    return get(task).unobserved(op, np.asarray(x))


def observe(
    op: operators.Operator, x: np.ndarray, rng: np.random.Generator, sigma: float = DEFAULT_SIGMA
) -> np.ndarray:
    """y = A(x) + n, n ~ N(0, sigma^2 I)."""
    if not (np.isfinite(sigma) and sigma >= 0):
        raise operators.OperatorError(f"noise sigma must be finite and >= 0, got {sigma}")
    y = op.forward(x)
    return (y + sigma * rng.standard_normal(y.shape)).astype(np.float32)
