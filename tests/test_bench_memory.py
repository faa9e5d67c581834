"""The memory benchmark measures real engine processes."""

from ckm_edge.benchmarks import memory


def test_memory_benchmark_reports_engine_processes_and_package_sizes(tiny_package):
    results = memory.run(str(tiny_package.root), ["fp32", "int8"], [1, 2], steps=2, samplers=("dps", "diffpir"))
    rows = results["rows"]
    assert [(r["sampler"], r["precision"], r["batch"]) for r in rows] == [
        (s, p, b) for s in ("dps", "diffpir") for p in ("fp32", "int8") for b in (1, 2)]
    for r in rows:
        assert 0 < r["baseline_mib"] <= r["peak_mib"] and r["after_open_mib"] <= r["peak_mib"]
    assert set(results["package_bytes"]) == set(tiny_package.precisions)
    assert all(b > 0 for b in results["package_bytes"].values())
    assert results["package"] == f"{tiny_package.name} {tiny_package.version}" and results["tile_size"] == tiny_package.tile_size
