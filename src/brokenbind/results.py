"""Results on disk and on screen: one row per (experiment, method, seed, stage, weights, dataset, flow).

A row's identity is what was scored (``IDENTITY``): scoring it again (a repeated ``brokenbind test --ckpt_path X``, the
resume command run again on a finished run) replaces the row instead of adding a second one. A test row also carries
the digest of the checkpoint file it scored (``checkpoint``), so that a copy of a checkpoint scored elsewhere is
recognised as the same weights (``benchmarks.report`` counts them once). A metric that cannot be
computed (class mAP without labels, or with one class) is NaN in a row, an empty cell in ``results.csv`` and "n/a" on
screen, and means leave it out.
"""

import csv
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class ResultRow:
    experiment: str
    method: str
    seed: str
    stage: str
    weights: str  # what was scored: the epoch just validated, or the checkpoint file tested
    dataset_flow: str  # datasets from one observing the target to the evaluation dataset, e.g. support→evaluation
    dataset: str
    flow: str  # query->pivot->target
    emergent: bool  # query and target never observed together in one training dataset
    map_instance: float
    map_class: float
    r1: float
    r5: float
    r10: float
    checkpoint: str = ""  # the scored checkpoint file's digest (``checkpoints.checkpoint_digest``); "" for an epoch


FIELDS = [field.name for field in fields(ResultRow)]
IDENTITY = ("experiment", "method", "seed", "stage", "weights", "dataset", "flow")


def identity(row: Mapping[str, object]) -> tuple[str, ...]:
    """What a row scored; a row read from CSV and a ``ResultRow`` (as a dict) of the same score compare equal."""
    return tuple(str(row[key]) for key in IDENTITY)


def write_csv(path: Path, rows: list[ResultRow]) -> None:
    """Write ``rows`` into ``path``: each replaces the earlier row of its identity (and older duplicates written before
    rows had one), the others stay in order, new rows come last. The file is replaced whole: a reader never sees half
    of it."""
    new = [csv_cells(row) for row in rows]
    replaced = {identity(row) for row in new}
    kept: dict[tuple[str, ...], dict[str, str]] = {}
    columns = list(FIELDS)
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns += [c for c in reader.fieldnames or [] if c not in columns]
            for row in reader:
                if identity(row) not in replaced:
                    kept.pop(identity(row), None)  # of two duplicates the later stands, where it was written
                    kept[identity(row)] = row
    replace_csv(path, columns, [*kept.values(), *new])


def replace_csv(path: Path, columns: list[str], rows: list[Mapping[str, object]]) -> None:
    """Write ``rows`` as the whole of ``path``, through a temporary file: a reader (or an interrupted write) never
    sees half of it. Cells a row lacks are empty."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def csv_cells(row: ResultRow) -> dict[str, object]:
    """A row's ``results.csv`` cells: a missing metric (NaN) is an empty cell."""
    return {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(row).items()}


def metric(cell: str) -> float:
    """A metric cell of ``results.csv`` as a float; an empty cell (missing) is NaN."""
    return float(cell) if cell.strip() else math.nan


def format_table(rows: list[ResultRow]) -> str:
    """The paper's layout: a row per method, a column per dataset flow × modality flow; cells are
    instance / class mAP in % ("n/a" where missing), emergent flows marked with *."""
    columns = list(dict.fromkeys((r.dataset_flow, r.flow + ("*" if r.emergent else "")) for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    cell = {(r.method, r.dataset_flow, r.flow + ("*" if r.emergent else "")): r for r in rows}
    header = ["method", *(f"{df} {mf}" for df, mf in columns)]
    body = [
        [
            m,
            *(
                f"{_percent(c.map_instance)} / {_percent(c.map_class)}" if (c := cell.get((m, *col))) else "-"
                for col in columns
            ),
        ]
        for m in methods
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + (
        "\nmAP in % (instance / class; n/a: cannot be computed); * = emergent: query and target never observed together"
        "\ncolumns: dataset flow (from a dataset observing the target to the dataset scored), modality flow "
        "(query->pivot->target)"
    )


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


# -- statistics over runs and Markdown tables ------------------------------------------------------------------------
def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95 % Student-t interval (half-width nan for a single value)."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def interval_text(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± 95 % half-width`` of ``values`` × ``scale`` (the mean alone for one value, "" for none)."""
    if not values:
        return ""
    mean, half = t_interval(values)
    text = f"{scale * mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {scale * half:.{digits}f}"


def paired_difference(
    method: Mapping[object, Sequence[float]], baseline: Mapping[object, Sequence[float]], metric: int
) -> tuple[float, float, str]:
    """Mean and 95 % half-width of the paired difference of ``metric`` over the runs both have (the same keys: seeds
    and split seeds; a run missing the metric, NaN, is left out), and W / T / L: the interval lies above / around /
    below 0 ("-" with fewer than two common runs)."""
    keys = sorted(k for k in method.keys() & baseline.keys() if not math.isnan(method[k][metric] - baseline[k][metric]))
    if len(keys) < 2:
        return math.nan, math.nan, "-"
    mean, half = t_interval([method[k][metric] - baseline[k][metric] for k in keys])
    if half == 0.0 or math.isnan(half):
        return mean, half, "T" if mean == 0 else ("W" if mean > 0 else "L")
    return mean, half, "W" if mean - half > 0 else ("L" if mean + half < 0 else "T")


def markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    """The lines of a Markdown table."""
    # Ours, not DataFrame.to_markdown (tabulate 0.10): on the 49 tables of benchmarks/results it pads each cell to its
    # column's width and stretches the separator's dashes (640 of their 655 lines change, in spaces and dashes only),
    # which breaks the rows that tests pin (8 of the 32 tests of test_bench.py and test_suite.py fail: "| new | 2 |
    # 0.310 | ..."); it also rewrites numbers unless told not to ("0.100" -> "0.1", "12.0" -> "12").
    return [f"| {' | '.join(header)} |", "|---" * len(header) + "|", *(f"| {' | '.join(line)} |" for line in body)]
