"""Dataset statistics used to calibrate the procedural generator against ray-traced data."""

import json

import numpy as np
import pytest

from ckm_edge.runtime import codec
from ckm_edge.training import statistics
from ckm_edge.training.data_cli import main as data_main
from ckm_edge.training.dataset import DatasetWriter


def _tiles(gain_db: np.ndarray, building: np.ndarray) -> np.ndarray:
    sine = np.zeros_like(gain_db)
    return codec.encode(gain_db, sine, building, clip_gain=True)


def test_statistics_of_known_tiles():
    n = 64
    rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    dist_m = np.hypot(rows - 10, cols - 20) * 2.0
    # Exactly a path-loss exponent of 3: gain = -40 dB at 1 m - 30 log10(d).
    gain = -40.0 - 30.0 * np.log10(np.maximum(dist_m, 1.0))
    building = np.zeros((n, n), bool)
    building[40:50, 40:60] = True  # 200 of 4096 cells
    gain[:5, 50:] = -400.0  # 70 outdoor cells no path reaches: saturate at the floor
    gain[:2, 48:50] = -230.0  # 4 more, as a network draws them: above the floor, below any real path
    pixels = _tiles(gain, building)[None]
    stats = statistics.tile_statistics(pixels, np.array([[10, 20, 25.0]]), cell_size_m=2.0)
    assert stats["building_fraction"]["mean"] == pytest.approx(200 / 4096)
    assert stats["floor_fraction"] == pytest.approx(74 / (4096 - 200), abs=1e-9)
    assert stats["falloff"]["path_loss_exponent"] == pytest.approx(3.0, abs=1e-3)
    assert stats["falloff"]["gain_at_1m_db"] == pytest.approx(-40.0, abs=0.05)
    assert sum(stats["gain_histogram"]["density"]) == pytest.approx(1.0, abs=1e-3)  # rounded to 5 digits
    md = statistics.markdown([("a", stats), ("b", stats)])
    assert "| path-loss exponent (fit, d >= 10 m) | 3.00 | 3.00 |" in md


def test_stats_cli_writes_report(tmp_path, proc_tiles):
    pixels, tx = proc_tiles
    with DatasetWriter(tmp_path / "ds", "procedural", 128, 2.0, 3.5e9) as w:
        w.add("train", "r0", pixels, tx)
    assert data_main(["stats", str(tmp_path / "ds"), str(tmp_path / "ds"), "--labels", "one", "two",
                      "--out", str(tmp_path / "rep"), "--preview", "3"]) == 0
    from PIL import Image

    with Image.open(tmp_path / "rep" / "preview.png") as im:
        assert im.width > 3 * 500 and im.height > 2 * 256
    data = json.loads((tmp_path / "rep" / "stats.json").read_text())
    assert set(data) == {"one", "two"} and data["one"]["tiles"] == 8
    assert "| tiles | 8 | 8 |" in (tmp_path / "rep" / "stats.md").read_text()
    assert data_main(["stats", str(tmp_path / "ds"), "--labels", "a", "b", "--out", str(tmp_path / "x")]) == 2
