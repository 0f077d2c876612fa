"""The kernel-map section of the cost benchmark (``benchmarks/cost.py``) at a tiny size: its table and its numbers."""

import math

from benchmarks.cost import bench_map


def test_the_kernel_map_section_times_each_part_and_states_the_cap(monkeypatch):
    monkeypatch.setattr("brokenbind.methods.impute.KERNEL_ROWS", 100)  # the caps, at a test's size
    monkeypatch.setattr("brokenbind.methods.impute.KERNEL_GRID_ROWS", 60)
    lines = bench_map([(50, 6), (1_500, 4)], rounds=2)
    assert lines[0].startswith("| supporting rows × features | choose (s) |") and lines[1].startswith("|---|")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[0] for row in rows] == ["50 × 6", "1,500 × 4 (capped at 100)"]
    for row in rows:  # seconds print with 2 decimals: a tiny map may take "0.00"; the ratio comes from the raw times
        seconds = [float(row[1]), float(row[2]), float(row[5]), float(row[6])]
        assert all(math.isfinite(v) and v >= 0 for v in seconds) and float(row[3].split(" ")[0]) > 0, row
    # the faster choice, scored by the full search: the same candidate under the grid cap (50 rows), no better above it
    assert float(rows[0][4]) == 1.0 and float(rows[1][4]) >= 1.0
