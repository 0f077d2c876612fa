"""Aggregate ``results.csv`` files over runs: mean ± std over seeds per (experiment, method, flow, stage).

A run directory counts once per stage and flow: its latest row (``results.csv`` replaces a row scored again; a run
whose best and last checkpoints were both tested, or that was extended, has several rows of one flow); a checkpoint
scored again in another directory (a copy) counts once.

python -m benchmarks.report logs/                 # every run under logs/
python -m benchmarks.report logs/ --stage val     # validation rows (the best epoch of each run)
"""

import argparse
import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from brokenbind.results import markdown_table, metric


def collect(root: Path) -> list[dict[str, str]]:
    """Every ``results.csv`` row under ``root``, in the order written, with ``run``: its run directory."""
    rows = []
    for path in sorted(root.rglob("results.csv")):
        with path.open() as f:
            rows += [{**row, "run": str(path.parent)} for row in csv.DictReader(f)]
    return rows


def latest_per_run(rows: list[dict[str, str]], stage: str) -> tuple[list[dict[str, str]], int]:
    """The rows of ``stage``, one per (run directory, dataset, flow): the latest; and how many earlier ones it left
    out. A checkpoint scored again elsewhere (a copy, whose rows carry the same ``checkpoint`` digest) counts once,
    where it was first scored."""
    latest: dict[tuple[str, str, str], dict[str, str]] = {}
    scored: set[tuple[str, str, str]] = set()
    staged = [row for row in rows if row["stage"] == stage]
    for row in staged:
        weights = (row.get("checkpoint") or "", row["dataset"], row["flow"])
        if weights[0] and weights in scored:
            continue
        scored.add(weights)
        latest[row["run"], row["dataset"], row["flow"]] = row
    return list(latest.values()), len(staged) - len(latest)


def _stat(values: list[float]) -> str:
    """mean ± std of the values that exist (a missing metric is NaN; "n/a" when none exists)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def summarise(rows: list[dict[str, str]], stage: str) -> str:
    """A markdown table: one line per (experiment, method, dataset flow, modality flow), in first-seen order."""
    rows, left_out = latest_per_run(rows, stage)
    groups: dict[tuple[str, ...], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        key = (row["experiment"], row["dataset_flow"], row["flow"] + ("*" if row["emergent"] == "True" else ""))
        groups[(*key, row["method"])].append(row)
    body = []
    for (experiment, dataset_flow, flow, method), group in groups.items():
        seeds = ",".join(sorted({r["seed"] for r in group}))
        instance = _stat([metric(r["map_instance"]) for r in group])
        klass = _stat([metric(r["map_class"]) for r in group])
        body.append([experiment, dataset_flow, flow, method, seeds, instance, klass])
    header = ["experiment", "dataset flow", "modality flow", "method", "seeds", f"{stage} instance mAP",
              f"{stage} class mAP"]  # fmt: skip
    note = "\n\n(* emergent: query and target never observed together; std over runs"
    if left_out:
        note += f"; one row per run directory and flow, the latest: {left_out} earlier rows of the same runs left out"
    return "\n".join(markdown_table(header, body)) + note + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, nargs="?", default=Path("logs"))
    parser.add_argument("--stage", choices=["val", "test"], default="test")
    args = parser.parse_args()
    rows = collect(args.root)
    if not rows:
        raise SystemExit(f"no results.csv under {args.root}")
    print(summarise(rows, args.stage))


if __name__ == "__main__":
    main()
