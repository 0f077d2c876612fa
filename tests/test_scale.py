"""The scale section of the benchmark (``benchmarks/scale.py``) at tiny sizes: the report's sections and tables, one
CSV row per measurement, every value finite and of its sign."""

import math

import pandas as pd
import pytest

from benchmarks.scale import embed_available, main

TITLES = [
    "## (a) `brokenbind embed`, 20 image rows",
    "## (b) Training on float16 arrays, 1 and 2 gloo processes",
    "## (c) Exact instance mAP + R@k, chunked",
    "## (d) Class-level mAP against the matmul and instance mAP + R@k",
]


def tables(text: str) -> dict[str, list[list[str]]]:
    """Each section's Markdown table (header first, separator dropped), by section title."""
    out, title = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            title = line
        elif line.startswith("|") and not line.startswith("|---"):
            out.setdefault(title, []).append([cell.strip() for cell in line.strip("|").split("|")])
    return out


def number(cell: str) -> float:
    """The median of ``12.3 (11.9–12.8)`` or the value of ``1,234``."""
    return float(cell.split(" ")[0].replace(",", ""))


@pytest.mark.slow  # training in 1 and 2 gloo processes, `brokenbind embed` in worker processes
def test_the_scale_report_at_tiny_sizes(tmp_path):
    out = tmp_path / "out"
    sizes = ["--rows", "1000", "--steps", "6", "--warmup", "2", "--repeats", "1", "--queries", "300",
             "--galleries", "100,200", "--class_n", "200", "--rounds", "2", "--embed_rows", "20"]  # fmt: skip
    main(["--out", str(out), "--work", str(tmp_path / "work"), *sizes])
    text = (out / "scale.md").read_text()
    assert [line for line in text.splitlines() if line.startswith("## ")] == TITLES
    assert text.startswith("# Scale benchmarks\n\n`python -m benchmarks.scale --out ")
    found = tables(text)
    if embed_available():
        assert [row[:2] for row in found[TITLES[0]][1:]] == [["20", "1"], ["20", "2"]]
    else:
        assert "embed not available" in text and TITLES[0] not in found

    train = found[TITLES[1]]
    assert train[0] == [
        "rows per dataset", "processes", "runs ended / failed", "steps/s per process", "steps/s, epoch ends included",
        "rows/s, all processes", "VmHWM per process (MB)", "peak RssAnon (MB)", "peak RssFile (MB)",
    ]  # fmt: skip
    assert [row[:3] for row in train[1:]] == [["1,000", "1", "1 / 0"], ["1,000", "2", "1 / 0"]]
    retrieval = found[TITLES[2]]
    assert [row[:3] for row in retrieval[1:]] == [
        ["100", "default", "1,024"], ["100", "fixed block", "1,024"], ["200", "default", "1,024"],
        ["200", "fixed block", "512"],
    ]  # fmt: skip
    assert [row[0] for row in found[TITLES[3]][1:]] == ["matmul", "instance mAP + R@k", "class mAP"]
    for title in TITLES[1:]:
        for row in found[title][1:]:
            values = [number(cell) for cell in row[1:] if cell[0].isdigit()]
            assert values and all(math.isfinite(v) and v >= 0 for v in values), row
    for row in found[TITLES[1]][1:] + found[TITLES[3]][1:]:
        assert all(number(cell) > 0 for cell in row[2:]), row

    rows = pd.read_csv(out / "scale.csv")
    assert set(rows["section"]) == {"train", "retrieval", "class"} | ({"embed"} if embed_available() else set())
    assert rows["value"].map(math.isfinite).all()
    exact = rows["quantity"] == "max_abs_diff_sklearn"
    assert exact.sum() == 1 and rows[exact]["value"].iloc[0] < 1e-12
    scores = rows["quantity"].isin(["mAP", "R@1"])
    assert rows[scores]["value"].between(0, 1).all()
    assert (rows[~exact & ~scores]["value"] > 0).all()
    assert len(rows[rows["section"] == "train"]) == 5 * 3  # 1 + 2 processes, five quantities each
