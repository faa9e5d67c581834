import numpy as np
import pytest

from training import procedural


@pytest.fixture(scope="session")
def proc_tiles() -> tuple[np.ndarray, np.ndarray]:
    """Eight procedural tiles (pixels, transmitters), shared by tests that only read them."""
    return procedural.generate_region(procedural.ProceduralConfig(), "train", 0, 8, seed=123)
