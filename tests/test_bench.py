"""The benchmark report (``make bench``): its tables and statistics on known rows, its pictures from a real run."""

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.bench import (
    QUICK,
    SUITE,
    diagnosis_curves,
    example_run,
    main,
    pseudo_vs_real,
    report,
    training_curves,
)
from benchmarks.suite import DIAGNOSIS, RUN_FIELDS, Suite, write_runs
from brokenbind.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def rows_for(
    setting: str, method: str, instance: list[float], cosines: tuple[str, str] = ("", "")
) -> list[dict[str, str]]:
    """Two flows per run; the run's instance mAP is the mean of the two (here both equal); ``cosines``: the pivot
    diagnosis' cos(pseudo, pivot) and cos(pseudo, target) of every row (empty: not diagnosed)."""
    diagnosis = dict(zip(DIAGNOSIS, [*cosines, "", ""], strict=True))
    return [
        {"setting": setting, "method": method, "seed": str(i), "split_seed": str(i), "stage": "test", "dataset": ds,
         "flow": flow, "map_instance": str(value), "map_class": "0.5", "weights": "best.ckpt", "seconds": "10",
         "config_hash": "0123456789ab", "code_hash": "ba9876543210", "commit": "abc1234" if i else "", **diagnosis}
        for i, value in enumerate(instance)
        for ds, flow in (("evaluation", "fou->pix->zer"), ("support", "zer->pix->fou"))
    ]  # fmt: skip


def test_the_report_tables_paired_verdicts_ratios_and_gap(tmp_path):
    suite = Suite.load(SUITE)
    rows = (
        rows_for("bound_fou_pix_zer", "fabind", [0.20, 0.22, 0.21], ("0.8", "0.6"))
        + rows_for("bound_fou_pix_zer", "brokenbind", [0.25, 0.28, 0.26], ("0.75", "0.73"))  # +0.05 to +0.06: a win
        + rows_for("bound_fou_pix_zer", "oracle", [0.30, 0.32, 0.31])
        + rows_for("bound_fou_pix_zer", "centrobind", [0.25, 0.27, 0.27])  # paired difference 0, +0.01, -0.01: tie
        + rows_for("bound_fou_pix_zer", "pivot_ceiling", [0.28, 0.30, 0.29])
    )
    text = report(suite, rows, tmp_path, "python -m benchmarks.bench", 60.0, quick=False, pictures=False)
    assert "| brokenbind | 26.3 ± 3.8 | 26.3 ± 3.8 | 26.3 |" in text  # both flows, then the mean column
    assert "| fabind | 21.0 ± 2.5 |" in text
    # brokenbind minus each method, in the suite's method order: fabind +5.33 pp ± t(2)·sd/√3 (differences 5, 6, 5)
    assert "| bound_fou_pix_zer | 3 | +5.3 ± 1.4 (W) | +0.0 ± 2.5 (T) | -4.7 ± 1.4 (L) | -2.7 ± 1.4 (L) |" in text
    assert "| bound_fou_pix_zer | 3 | +0.0 ± 0.0 (T) | +0.0 ± 0.0 (T) | +0.0 ± 0.0 (T) | +0.0 ± 0.0 (T) |" in text
    assert "- brokenbind vs fabind, instance W/T/L over 1 settings: 1/0/0" in text
    assert "- brokenbind vs oracle, class W/T/L over 1 settings: 0/1/0" in text
    # ratio 0.263/0.21; gap closed 0.053 / 0.10 and by the ceiling 0.08 / 0.10; no class gap (all 0.5)
    assert "| bound_fou_pix_zer | 1.25 | 53 % | gap < 2 pp | 80 % | gap < 2 pp |" in text
    assert "- median share of the gap closed by brokenbind, bound instance mAP, over 1 settings: 53 %" in text
    # the pivot diagnosis: methods with diagnosed rows only
    assert "| fabind | 0.80 / 0.60 |\n| brokenbind | 0.75 / 0.73 |\n\n" in text
    assert (tmp_path / "map_bound.png").stat().st_size > 0 and "scratch" not in text.split("## brokenbind against")[0]
    # which code produced the rows, counted in runs (5 methods × 3): seed 0's rows came from outside a git checkout
    assert "Runs by the code that produced them: commit abc1234: 10, code ba9876543210 (no git): 5." in text


def test_quick_benchmark_is_a_subset_of_the_full_one():
    suite = Suite.load(SUITE)
    assert set(QUICK["settings"]) <= set(suite.settings) and set(QUICK["methods"]) <= set(suite.methods)


def test_the_quick_benchmark_writes_where_git_does_not_look():
    """A fresh clone holds no quick results, so `make bench-quick` (an install check) trains every run."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    quick = "benchmarks/results/bench-quick"
    tracked = subprocess.run(["git", "ls-files", quick], cwd=ROOT, capture_output=True, text=True, check=True)
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{quick}/runs.csv"], cwd=ROOT)
    assert tracked.stdout == "" and ignored.returncode == 0


@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_pictures_of_a_real_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli(["fit", "--config", str(ROOT / "experiments" / "two_dataset.yaml"), "--trainer.max_epochs=2",
                  "--test_after_fit=false", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
                  f"--trainer.logger.init_args.save_dir={tmp_path}"])  # fmt: skip
    run = Path(result.trainer.log_dir)
    assert training_curves(run, tmp_path) == ["val_map.png", "loss_terms.png"]
    sentence = pseudo_vs_real(run, tmp_path / "fig5.png")
    assert sentence.startswith("mean cosine of a real zer embedding with its own pseudo embedding")
    diagnosis_curves({"brokenbind": run, "again": run}, tmp_path / "diagnosis.png")  # from the checkpoint's history
    pictures = ("val_map.png", "loss_terms.png", "fig5.png", "diagnosis.png")
    assert all((tmp_path / name).stat().st_size > 0 for name in pictures)


def test_example_run_finds_the_directory_named_after_the_preset_and_otherwise_trains_it_once(tmp_path, monkeypatch):
    suite = Suite(settings={"s": {"config": "x.yaml"}}, methods={"bb": {"preset": "brokenbind"}})
    trained = []

    def fit(configs: list[str], overrides: list[str]) -> SimpleNamespace:
        trained.append(overrides)
        return SimpleNamespace(run_dir=tmp_path / "trained")

    monkeypatch.setattr("brokenbind.api.fit", fit)
    monkeypatch.setattr("benchmarks.bench.run_pretraining", lambda *args: None)
    monkeypatch.setattr(Suite, "run_args", lambda self, *run: ([], list(map(str, run[:4]))))
    assert example_run(suite, tmp_path, "s", "bb") == tmp_path / "trained" and trained == [["s", "bb", "0", "0"]]
    made = suite.run_root(tmp_path, "bb", 0, 0) / "s" / "brokenbind" / "version_1"  # run directories: the preset's
    made.mkdir(parents=True)
    assert example_run(suite, tmp_path, "s", "bb") == made and len(trained) == 1


def test_report_only_writes_the_report_from_runs_csv_and_runs_nothing(tmp_path, monkeypatch):
    def no_runs(*args, **kwargs):
        raise AssertionError("--report_only ran something")

    monkeypatch.setattr("benchmarks.bench.run_suite", no_runs)
    rows = rows_for("bound_fou_pix_zer", "fabind", [0.20, 0.22, 0.21]) + rows_for(
        "bound_fou_pix_zer", "brokenbind", [0.25, 0.28, 0.26]
    )
    write_runs(tmp_path / "runs.csv", [{**{f: "" for f in RUN_FIELDS}, **r} for r in rows])
    monkeypatch.setattr("benchmarks.bench.api.fit", no_runs)
    # main sets process-wide state for its runs (Lightning's log levels, one torch thread): keep it out of later tests
    monkeypatch.setattr("benchmarks.bench.api.quiet_lightning", lambda: None)
    monkeypatch.setattr("benchmarks.bench.torch.set_num_threads", lambda n: None)
    main(["--report_only", "--skip_cost", "--out", str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    assert "`python -m benchmarks.bench --report_only --skip_cost --out" in text
    assert "| bound_fou_pix_zer | 3 | +5.3 ± 1.4 (W) |" in text
    assert "Not drawn: the example runs' directories (seed 0; not committed) are not here" in text


def test_the_decomposition_splits_the_distance_to_the_oracle_into_pivot_shift_and_method(tmp_path):
    rows = (
        rows_for("bound_fou_pix_zer", "oracle", [0.80, 0.80])
        + rows_for("bound_fou_pix_zer", "pivot_ceiling", [0.70, 0.72])  # pivot: 80 − 71 = 9 points
        + rows_for("bound_fou_pix_zer", "impute", [0.60, 0.62])  # shift: 71 − 61 = 10 points
        + rows_for("bound_fou_pix_zer", "brokenbind", [0.65, 0.65])  # method: 61 − 65 = −4 (beats the transfer)
        + rows_for("bound_fou_pix_zer", "cmcr", [0.50, 0.54])
        + rows_for("bound_fou_fac_zer", "brokenbind", [0.5, 0.5])  # no oracle / ceiling / impute: not decomposed
    )
    text = report(Suite.load(SUITE), rows, tmp_path, "python -m benchmarks.bench", 60.0, quick=False, pictures=False)
    assert "| bound_fou_pix_zer | brokenbind | +15.0 | +9.0 | +10.0 | -4.0 |" in text
    assert "| bound_fou_pix_zer | cmcr | +28.0 | +9.0 | +10.0 | +9.0 |" in text
    assert "| bound_fou_fac_zer | brokenbind |" not in text
