"""The benchmark (``make bench``, ``make bench-quick``): where BrokenBind wins, ties and loses, and what it costs.

1. Runs ``benchmarks/suites/bench.yaml`` (``benchmarks.suite``: every method on the test split of each setting, seed i
   with split seed i, two runs at a time; an interrupted benchmark resumes from ``runs.csv``, and runs whose rows came
   from another configuration or code run again). ``--quick`` runs two settings (bound and scratch fou-pix-zer), four
   methods, two runs of 20 epochs: the same code path in minutes, into ``benchmarks/results/bench-quick``, which git
   ignores, so that the check trains from a fresh clone.
2. Writes ``report.md`` beside ``runs.csv``: tables shaped like the paper's (row: method; column: setting, or dataset
   flow × modality flow for the headline settings), mean and 95 % t-interval over runs, brokenbind's paired
   difference to fabind, centrobind and the oracle setting by setting with win / tie / loss, brokenbind / fabind and
   the share of the fabind → oracle gap closed, the recipe the papers leave open, the command, versions and commit.
3. Draws PNGs: mAP per method with interval bars per setting; validation mAP over epochs with the MOX switch and each
   loss term over steps (from a brokenbind run's checkpoint); real vs pseudo embeddings of the hidden modality
   (the paper's Figure 5; pseudo = X-data of the run's own encoders on a training batch of the other dataset).
4. Runs the cost report (``benchmarks.cost``) into ``cost.md``.
5. Runs the scale report (``benchmarks.scale``; ``--quick``: its small sizes) into ``scale/scale.md`` and
   ``scale/scale.csv``, its generated data in ``--scale_work``.

    python -m benchmarks.bench [--quick] [--out DIR] [--jobs 2] [--skip_cost] [--skip_scale] [--scale_work DIR]
        [--report_only]
"""

import argparse
import math
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from benchmarks.suite import (
    Suite,
    per_run,
    provenance,
    run_pretraining,
    run_suite,
    suite_rows,
)
from brokenbind import api
from brokenbind.callbacks.figures import curves
from brokenbind.checkpoints import load_checkpoint
from brokenbind.losses.mox import pivot_pinv, x_data
from brokenbind.provenance import commit
from brokenbind.results import interval_text, markdown_table, paired_difference, t_interval
from brokenbind.settings import PRESETS

SUITE = Path(__file__).parent / "suites" / "bench.yaml"
QUICK = {  # the quick benchmark: a subset of the full one, fewer epochs
    "settings": ["bound_fou_pix_zer", "scratch_fou_pix_zer"],
    "methods": ["frozen", "fabind", "brokenbind", "oracle"],
    "runs": 2,
    "args": ["--trainer.max_epochs=20"],
}
HEADLINE = ["bound_fou_pix_zer", "bound_fou_fac_zer", "bound_zer_pix_fac"]
METRICS = {"instance": "map_instance", "class": "map_class"}
MIN_GAP = 0.02  # the smallest fabind → oracle gap whose closed share the report gives
REGIMES = {
    "bound": "Frozen pre-bound encoders (the paper's regime)",
    "scratch": "Heads trained from scratch on the standardised views",
    "real": "Real encoders, class-paired (secondary)",
}


# -- statistics ------------------------------------------------------------------------------------------------------
def settings_of(df: pd.DataFrame, regime: str) -> list[str]:
    return [s for s in dict.fromkeys(df["setting"]) if s.split("_")[0] == regime]


def short(setting: str) -> str:
    return setting.split("_", 1)[1].replace("_", "-")


def flow_label(dataset: str, flow: str) -> str:
    parts = flow.split("->")  # query->pivot->target, or query->target
    return f"{parts[0]}→{parts[-1]} on {dataset}"


def method_table(df: pd.DataFrame, settings: list[str], methods: list[str], metric: str, by_flow: bool) -> list[str]:
    """Rows: methods; columns: settings (mean over their flows per run) or each setting's flows; a mean column."""
    columns = []
    for s in settings:
        flows = df[df.setting == s][["dataset", "flow"]].drop_duplicates().itertuples(index=False)
        columns += [(s, d, f) for d, f in flows] if by_flow else [(s, None, None)]
    header = [f"{short(s)}: {flow_label(d, f)}" if d else short(s) for s, d, f in columns]
    body = []
    for m in methods:
        cells, means = [], []
        for s, d, f in columns:
            rows = df[(df.setting == s) & (df.method == m)]
            if d:
                rows = rows[(rows.dataset == d) & (rows.flow == f)]
            values = rows.groupby(["seed", "split_seed"])[metric].mean().tolist()
            cells.append(interval_text(values, scale=100, digits=1))  # %, one decimal: the paper's unit
            means += [statistics.fmean(values)] if values else []
        if any(cells):
            mean = f"{100 * statistics.fmean(means):.1f}" if len(means) == len(columns) else ""
            body.append([m, *cells, mean])
    return markdown_table(["method", *header, "mean"], body)


def against_every_method(
    rows: list[dict], settings: list[str], methods: list[str], metric: int
) -> tuple[list[str], dict[str, list[str]]]:
    """brokenbind minus every other method, setting by setting (rows) and method (columns): the paired difference in
    percentage points with its 95 % interval and W / T / L; also each method's verdicts, for the tally."""
    runs = per_run(rows)
    others = [m for m in methods if m != "brokenbind"]
    verdicts: dict[str, list[str]] = defaultdict(list)
    body = []
    for s in settings:
        if not (bb := runs.get((s, "brokenbind"))):
            continue
        cells = []
        for other in others:
            if not (base := runs.get((s, other))):
                cells.append("")
                continue
            mean, half, verdict = paired_difference(bb, base, metric)
            verdicts[other].append(verdict)
            cells.append(f"{100 * mean:+.1f} ± {100 * half:.1f} ({verdict})" if verdict != "-" else "-")
        body.append([s, str(len(bb)), *cells])
    return markdown_table(["setting", "runs", *others], body), verdicts


def gap_table(rows: list[dict], settings: list[str]) -> tuple[list[str], dict[str, list[float]]]:
    """Per setting: brokenbind / fabind, and the share of the fabind → oracle gap that brokenbind closes and that the
    pivot ceiling closes (means over runs; instance and class mAP); also the shares per regime, for their medians."""
    runs = per_run(rows)
    shares: dict[str, list[float]] = defaultdict(list)
    body = []
    for s in settings:
        means = {m: [statistics.fmean(v[i] for v in runs[s, m].values()) for i in range(2)]
                 for m in ("brokenbind", "fabind", "oracle", "pivot_ceiling") if (s, m) in runs}  # fmt: skip
        if not {"brokenbind", "fabind"} <= means.keys():
            continue
        cells = [f"{means['brokenbind'][0] / means['fabind'][0]:.2f}"]
        for method in ("brokenbind", "pivot_ceiling"):
            for i, metric in enumerate(METRICS):
                gap = means["oracle"][i] - means["fabind"][i] if "oracle" in means else math.nan
                if method not in means or math.isnan(gap):
                    cells.append("")
                    continue
                if gap < MIN_GAP:  # a share of a gap within noise says nothing
                    cells.append("gap < 2 pp")
                    continue
                share = (means[method][i] - means["fabind"][i]) / gap
                cells.append(f"{100 * share:.0f} %")
                if method == "brokenbind":
                    shares[f"{s.split('_')[0]} {metric}"].append(share)
        body.append([s, *cells])
    header = ["setting", "brokenbind / fabind (instance)", "gap closed by brokenbind, instance", "class",
              "gap closed by pivot_ceiling, instance", "class"]  # fmt: skip
    return markdown_table(header, body), shares


DECOMPOSED = ("brokenbind", "cmcr")  # the methods whose distance to the oracle the report decomposes


def decomposition_table(rows: list[dict], settings: list[str]) -> list[str]:
    """Per setting and method of ``DECOMPOSED``, instance mAP (means over runs, points): oracle − method split into
    what the pivot loses (oracle − pivot_ceiling), what the shift between datasets loses (pivot_ceiling − impute:
    the same linear map fitted on the supporting dataset only) and what is left to the method (impute − method;
    negative where the method beats the transferred map)."""
    runs = per_run(rows)
    body = []
    for s in settings:
        means = {m: 100 * statistics.fmean(v[0] for v in runs[s, m].values())
                 for m in ("oracle", "pivot_ceiling", "impute", *DECOMPOSED) if (s, m) in runs}  # fmt: skip
        if not {"oracle", "pivot_ceiling", "impute"} <= means.keys():
            continue
        for method in (m for m in DECOMPOSED if m in means):
            parts = (means["oracle"] - means[method], means["oracle"] - means["pivot_ceiling"],
                     means["pivot_ceiling"] - means["impute"], means["impute"] - means[method])  # fmt: skip
            body.append([s, method, *(f"{p:+.1f}" for p in parts)])
    header = ["setting", "method", "oracle − method", "pivot (oracle − pivot_ceiling)",
              "shift (pivot_ceiling − impute)", "method (impute − method)"]  # fmt: skip
    return markdown_table(header, body) if body else []


# -- pictures --------------------------------------------------------------------------------------------------------
def bars(df: pd.DataFrame, settings: list[str], methods: list[str], path: Path) -> None:
    """Instance mAP per method with 95 % interval bars, one panel per setting."""
    columns = 3
    rows = math.ceil(len(settings) / columns)
    figure = Figure(figsize=(5 * columns, 3.2 * rows))
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for k, s in enumerate(settings):
        axes = figure.add_subplot(rows, columns, k + 1)
        names, means, halves = [], [], []
        for m in methods:
            values = df[(df.setting == s) & (df.method == m)].groupby(["seed", "split_seed"])["map_instance"].mean()
            if len(values):
                mean, half = t_interval(values.tolist())
                names.append(m)
                means.append(100 * mean)
                halves.append(0.0 if math.isnan(half) else 100 * half)
        axes.bar(range(len(names)), means, yerr=halves, color=[colours[n] for n in names], capsize=3)
        axes.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize="small")
        axes.set_title(short(s), fontsize="medium")
        axes.set_ylabel("test instance mAP (%)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def example_run(suite: Suite, out: Path, setting: str, method: str = "brokenbind", train: bool = True) -> Path | None:
    """The run directory of a method's first run on a setting (seed 0, split seed 0). Run directories are not
    committed (only ``runs.csv``), so a report made from a fresh clone retrains that one run (the same seeds and
    split, hence the same run), or, without ``train``, returns None."""
    preset = suite.methods[method].get("preset")  # the run directory is named after the preset, as any run's
    root = suite.run_root(out, method, 0, 0) / setting
    found = (root / preset if preset else root).glob("version_*")
    if newest := max(found, key=lambda p: int(p.name.removeprefix("version_")), default=None):
        return newest  # a stale run ran again in the next version
    if not train:
        return None
    run_pretraining(suite, out, [setting])
    return api.fit(*suite.run_args(setting, method, 0, 0, out)).run_dir


def training_curves(run: Path, out: Path) -> list[str]:
    """Validation mAP with the MOX switch and the loss terms, from the run's last checkpoint (TensorBoardFigures keeps
    the history there)."""
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["callbacks"]["TensorBoardFigures"]
    curves(state["val_map"], "epoch", "validation mAP", state["mox_epoch"]).savefig(out / "val_map.png", dpi=80)
    curves(state["losses"], "step", "loss term").savefig(out / "loss_terms.png", dpi=80)
    return ["val_map.png", "loss_terms.png"]


def pseudo_vs_real(run: Path, path: Path) -> str:
    """The paper's Figure 5: the run's real embeddings of a flow's hidden target on the evaluation dataset's test split
    against its MOX pseudo embeddings (X-data, Eq. 8, from one training batch of the dataset that observes the target),
    in the first two principal components of both; returns a sentence with the cosines."""
    best = sorted((run / "checkpoints").glob("best-*.ckpt"))[-1]
    api.predict(best, ["--trainer.enable_progress_bar=false"])
    config = load_checkpoint(best)["config"]
    data, method = config["data"]["init_args"], config["model"]["method"]["init_args"]
    flow = data["flows"][0]
    _query, pivot, target = flow["flow"].split("->")
    source = next(n for n, d in data["datasets"].items() if {pivot, target} <= set(d["modalities"]))
    embeddings = run / "embeddings"

    def load(dataset: str, split: str, m: str) -> torch.Tensor:
        return torch.from_numpy(np.load(embeddings / dataset / split / f"{m}.npy"))

    batch = data["batch_size"]  # the stored configuration is resolved: every argument is there
    other_pivot, other_target = load(source, "train", pivot)[:batch], load(source, "train", target)[:batch]
    real = load(flow["dataset"], "test", target)
    pseudo = x_data(load(flow["dataset"], "test", pivot), pivot_pinv(other_pivot, method["pinv_ridge"]), other_target)
    pseudo = torch.nn.functional.normalize(pseudo, dim=-1)  # on the sphere, as the real ones, for one picture
    labels = pd.read_csv(embeddings / flow["dataset"] / "test" / "index.csv")["label"].to_numpy()
    both = torch.cat([real, pseudo])
    _, _, v = torch.pca_lowrank(both, q=2, center=True)
    points = ((both - both.mean(0)) @ v).numpy()
    figure = Figure(figsize=(5.5, 4.5))
    axes = figure.subplots()
    n = len(real)
    for part, marker, name in ((slice(0, n), "o", "real"), (slice(n, 2 * n), "x", "pseudo (MOX X-data)")):
        axes.scatter(*points[part].T, c=labels, cmap="tab10", marker=marker, s=14, label=name, alpha=0.8)
    axes.set_title(f"{target} on {flow['dataset']} (test): real vs pseudo", fontsize="medium")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    cosine = real @ pseudo.T
    own = cosine.diag().mean().item()
    other = (cosine.sum() - cosine.diag().sum()).item() / (n * n - n)
    same_class = torch.from_numpy(labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool)
    return (
        f"mean cosine of a real {target} embedding with its own pseudo embedding {own:.2f}, with pseudo embeddings of "
        f"other instances of its class {cosine[same_class].mean().item():.2f}, of all other instances {other:.2f}"
    )


def diagnosis_table(df: pd.DataFrame, settings: list[str], methods: list[str]) -> list[str]:
    """Rows: methods; columns: settings; cells: the mean (over runs and flows) cosine of a MOX pseudo target with its
    own row's pivot / with its own real target at the last validation epoch (``runs.csv``, callbacks/diagnosis.py)."""
    has = df[df["cos_pseudo_pivot"].astype(str).str.strip() != ""].copy()
    if has.empty:
        return []
    for name in ("cos_pseudo_pivot", "cos_pseudo_target"):
        has[name] = has[name].astype(float)
    columns = [s for s in settings if s in set(has.setting)]
    body = []
    for m in methods:
        cells = []
        for s in columns:
            got = has[(has.setting == s) & (has.method == m)]
            cells.append(f"{got.cos_pseudo_pivot.mean():.2f} / {got.cos_pseudo_target.mean():.2f}" if len(got) else "")
        if any(cells):
            body.append([m, *cells])
    return markdown_table(["method", *(f"{short(s)} ({s.split('_')[0]})" for s in columns)], body)


def diagnosis_curves(runs: dict[str, Path], path: Path) -> None:
    """The pivot diagnosis over epochs of a flow, one line per (method, cosine), from the runs' last checkpoints."""
    series = {}
    for method, run in runs.items():
        history = load_checkpoint(run / "checkpoints" / "last.ckpt")["callbacks"]["PivotDiagnosis"]["history"]
        flow = sorted({key.rsplit("/", 1)[0] for key in history})[0]
        for name, label in (
            ("cos_pseudo_pivot", "cos(pseudo, own pivot)"),
            ("cos_pseudo_target", "cos(pseudo, real target)"),
        ):
            series[f"{method}: {label}"] = history[f"{flow}/{name}"]
    curves(series, "epoch", f"mean cosine, validation ({flow})").savefig(path, dpi=80)


# -- report ----------------------------------------------------------------------------------------------------------
def versions() -> str:
    import lightning
    import torchmetrics

    return (
        f"report made at commit {commit() or 'unknown'}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}, "
        f"torchmetrics {torchmetrics.__version__}, {platform.machine()} with {torch.get_num_threads()} torch threads "
        "per run"
    )


def report(
    suite: Suite,
    rows: list[dict],
    out: Path,
    command: str,
    seconds: float,
    quick: bool,
    pictures: bool = True,
    train_examples: bool = True,
) -> str:
    df = pd.DataFrame(rows)
    for column in ("map_instance", "map_class"):
        df[column] = df[column].astype(float)
    methods = [m for m in suite.methods if m in set(df.method)]
    run_seconds = [float(r["seconds"]) for r in {(r["setting"], r["method"], r["seed"], r["split_seed"]): r
                                                 for r in rows}.values()]  # fmt: skip
    runs_per_setting = {s: len({(r["seed"], r["split_seed"]) for r in rows if r["setting"] == s}) for s in df.setting}
    lines = [
        f"# brokenbind benchmark{' (quick)' if quick else ''}",
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d')}; {versions()}. {len(run_seconds)} runs, "
        f"{sum(run_seconds) / 60:.0f} min of run time in all (this call: {seconds / 60:.0f} min). Every number is on "
        "the TEST split; nothing was chosen on it (the default recipe was chosen on validation, `benchmarks/suites/"
        "validation.yaml`; the pool size on `benchmarks/suites/pool_size.yaml`). Cells: mAP in %, mean ± 95 % "
        "t-interval over runs, run i = training seed i with data split seed i (a different division of the "
        "instances into datasets and splits), each run scored at the epoch validation selects. Runs per setting: "
        + ", ".join(f"{short(s)} ({s.split('_')[0]}) {n}" for s, n in runs_per_setting.items())
        + ". Instance mAP: the paired item is the one relevant one (the task); class mAP: every item of the query's "
        f"class is relevant (secondary). Raw rows: `runs.csv`. {provenance(rows)}"
        + (
            " QUICK: two runs of 20 epochs on two settings, to check the code path; with two runs the intervals are "
            "too wide to conclude anything, read `benchmarks/results/bench/report.md`."
            if quick
            else ""
        ),
    ]
    for regime, title in REGIMES.items():
        settings = settings_of(df, regime)
        if not settings:
            continue
        lines += ["", f"## {title}", ""]
        if regime == "bound":
            lines += [
                "The backbones are frozen encoders that already bind all six views: an ImageBind-like model trained on "
                "a pool of 20 % of the instances (`experiments/pretrain/mfeat_pool.yaml`, no benchmark dataset holds "
                "them, every view bound to pix), with residual heads starting from their space (`model.head: "
                'residual`). `frozen` is their zero-shot retrieval (the paper\'s "IB" row); fabind is "+FT".',
                "",
            ]
        elif regime == "scratch":
            lines += ["The same instances, splits and seeds; `frozen` is untrained random heads (chance).", ""]
        else:
            lines += [
                "`experiments/digits_real.yaml`: the built-in tri-modal digits, frozen EfficientNet-Lite0 (images) and "
                "MiniLM (text), a trainable log-mel CNN (speech), image→audio through text. Pairs share a class, not "
                "an instance, so instance mAP means little here: read the class mAP table.",
                "",
            ]
        headline = [s for s in settings if s in HEADLINE]
        for metric, column in METRICS.items():
            if headline:
                lines += [f"**{metric.capitalize()} mAP, each dataset flow × modality flow:**", ""]
                lines += [*method_table(df, headline, methods, column, by_flow=True), ""]
            lines += [f"**{metric.capitalize()} mAP per setting (the mean over its flows):**", ""]
            lines += [*method_table(df, settings, methods, column, by_flow=False), ""]
        bars(df, settings, methods, out / f"map_{regime}.png")
        lines += [f"![test instance mAP, {regime}](map_{regime}.png)", ""]
    settings = list(dict.fromkeys(df.setting))
    lines += ["", "## brokenbind against every method", ""]
    lines += [
        "brokenbind minus the column's method, paired over the same runs (seed i, split seed i): the difference's mean "
        "± 95 % t-interval in percentage points, W / T / L when the interval lies above / around / below 0. An empty "
        "cell: the method was not run on that setting. `brokenbind_wo_mox` is what MOX adds, "
        "`brokenbind_wo_transitive` what the default's share of the score through the supporting rows adds; "
        "`pivot_ceiling` is an "
        "analysis row (its regressor is fitted on pivot-target pairs of every dataset, the hidden ones included), "
        "never a method: a loss against it is expected.",
        "",
    ]
    for i, metric in enumerate(METRICS):
        table, verdicts = against_every_method(rows, settings, methods, i)
        lines += [f"**{metric.capitalize()} mAP:**", "", *table, ""]
        lines += [f"- brokenbind vs {other}, {metric} W/T/L over {len(v)} settings: "
                  + "/".join(str(v.count(c)) for c in "WTL") for other, v in verdicts.items()]  # fmt: skip
        lines.append("")
    table, shares = gap_table(rows, settings)
    lines += [
        "**The fabind → oracle gap** (from the means over runs; the pivot ceiling's share bounds what a method that "
        "reaches the target through the pivot can close, within the ceiling's own limits; no share where the oracle "
        "is less than 2 points above fabind or below it):",
        "",
        *table,
        "",
    ]
    lines += [f"- median share of the gap closed by brokenbind, {key} mAP, over {len(v)} settings: "
              f"{100 * statistics.median(v):.0f} %" for key, v in shares.items()]  # fmt: skip
    if table := decomposition_table(rows, settings):
        lines += [
            "",
            "**Where the distance to the oracle goes** (instance mAP, points; the three parts sum to the "
            "first column; `transfer/...` in each run's log gives the map's own transfer error):",
            "",
            *table,
        ]
    if table := diagnosis_table(df, settings, methods):
        lines += ["", "## Does the pseudo target carry more than the pivot?", ""]
        lines += [
            "The pivot diagnosis at the last validation epoch (`callbacks/diagnosis.py`): for each flow whose target "
            "its dataset never observes, pseudo targets are extrapolated from the pivot as MOX does (X-data, "
            "arXiv 2602.06451 Eq. 8; for methods without MOX, with MOX's defaults on their embeddings). Cells: mean "
            "cosine of a pseudo target with its own row's pivot / with its own real target. Equal numbers say the "
            "pseudo target is a copy of the pivot.",
            "",
            *table,
            "",
        ]
    lines += ["", "## Pictures of one brokenbind run", ""]
    example = next((s for s in HEADLINE if s in set(df.setting)), None)
    compared = ("brokenbind", "brokenbind_paper", "fabind")
    runs = {m: example_run(suite, out, example, m, train_examples) for m in compared if m in suite.methods} if (
        pictures and example
    ) else {}  # fmt: skip
    if None in runs.values():
        lines += ["Not drawn: the example runs' directories (seed 0; not committed) are not here, and `--report_only` "
                  "trains nothing; `make bench` draws them."]  # fmt: skip
    elif runs:
        run = runs["brokenbind"]
        lines += [f"`{example}`, seed 0: validation mAP per flow (MOX switched on at the dashed line) and the loss "
                  "terms.", ""]  # fmt: skip
        lines += [f"![{name}]({name})" for name in training_curves(run, out)]
        sentence = pseudo_vs_real(run, out / "pseudo_vs_real.png")
        lines += ["", f"Real vs pseudo embeddings (the paper's Figure 5), test split: {sentence}.", "",
                  "![real vs pseudo](pseudo_vs_real.png)"]  # fmt: skip
        diagnosis_curves(runs, out / "pivot_diagnosis.png")
        lines += [
            "",
            "The pivot diagnosis of the same setting and seed over epochs, for the default (MOX aligned in the "
            "subspace orthogonal to the pivot), the paper's recipe (MOX on the full space) and fine-tuning (no MOX; "
            "its pseudo targets extrapolated as MOX would): a pseudo target as close to its own pivot as to the real "
            "target carries nothing the pivot does not.",
            "",
            "![pivot diagnosis](pivot_diagnosis.png)",
        ]
    recipe = (PRESETS["method"] / "brokenbind.yaml").read_text()
    lines += [
        "",
        "## The recipe the papers leave open",
        "",
        "`brokenbind` is this project's default; `brokenbind_paper` spells out Eqs. 3-12 exactly (Moore-Penrose "
        "pseudo-inverse, summed R_Fro, Eq. 10's push-away at full weight). Ablations drop terms from the default. "
        "All: AdamW lr 5e-4, weight decay 0.2, 50 epochs, embedding 128, heads Linear-GELU-Linear (256), batch 64 per "
        "dataset (chains 32), logit scale 10.",
        "",
        "```yaml",
        recipe.rstrip(),
        "```",
        "",
        "## Cost",
        "",
        "See [cost.md](cost.md): step-time ratios brokenbind / fabind at batch 8, 64, 256, a profile of a step, exact "
        "retrieval against torchmetrics and scikit-learn, the feature cache, and a whole run.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two settings, four methods, two runs of 20 epochs")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/bench[-quick]")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one process and one thread each")
    parser.add_argument("--skip_cost", action="store_true", help="no cost report")
    parser.add_argument("--skip_scale", action="store_true", help="no scale report")
    parser.add_argument("--scale_work", help="the scale report's generated data (several GB; default: a temp folder)")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="rewrite report.md from runs.csv as it is, running nothing (rows of other code are reported as such: "
        "the report names the commits that produced them)",
    )
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.bench", *(argv if argv is not None else sys.argv[1:])])
    out = args.out or Path("benchmarks") / "results" / ("bench-quick" if args.quick else "bench")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the runs' workers take one core each
    api.quiet_lightning()
    suite = Suite.load(SUITE)
    if args.quick:
        suite = suite.select(QUICK["settings"], QUICK["methods"])
        suite.args = [*suite.args, *QUICK["args"]]
        suite.seeds, suite.split_seeds = suite.seeds[: QUICK["runs"]], suite.split_seeds[: QUICK["runs"]]
    start = time.perf_counter()
    if args.report_only:
        rows = suite_rows(suite, out / "runs.csv")
    else:
        rows = run_suite(suite, out, log=lambda msg: print(msg, flush=True), jobs=args.jobs)
    seconds = time.perf_counter() - start
    (out / "report.md").write_text(report(suite, rows, out, command, seconds, args.quick, True, not args.report_only))
    print(f"report: {out / 'report.md'}", flush=True)
    if not args.skip_cost:
        from benchmarks import cost

        torch.set_num_threads(threads)
        cost.main([*(["--quick"] if args.quick else []), "--out", str(out / "cost.md")])
    if not args.skip_scale and not args.report_only:
        from benchmarks import scale

        torch.set_num_threads(threads)
        work = ["--work", args.scale_work] if args.scale_work else []
        scale.main([*(["--quick"] if args.quick else []), "--out", str(out / "scale"), *work])


if __name__ == "__main__":
    main()
