"""A result row's identity (``brokenbind.results.IDENTITY``): scoring the same thing again replaces its row, and the
report counts a run directory once per stage and flow."""

import csv
from dataclasses import replace
from pathlib import Path

from benchmarks.report import collect, summarise
from brokenbind.cli import cli
from brokenbind.results import ResultRow, write_csv

ROOT = Path(__file__).resolve().parents[1]
ROW = ResultRow("exp", "fabind", "0", "test", "best-epoch001.ckpt", "s→e", "e", "a->b->c", True, 0.2, 0.5, 0, 0, 0)


def read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_a_row_scored_again_replaces_the_earlier_one_and_older_duplicates_collapse(tmp_path):
    path = tmp_path / "results.csv"
    other_flow = replace(ROW, flow="c->b->a", map_instance=0.3)
    write_csv(path, [ROW, other_flow])
    write_csv(path, [replace(ROW, map_instance=0.25)])  # the same checkpoint tested again
    assert [(r["flow"], r["map_instance"]) for r in read(path)] == [("c->b->a", "0.3"), ("a->b->c", "0.25")]
    write_csv(path, [replace(ROW, weights="last.ckpt")])  # another checkpoint is another row
    assert [r["weights"] for r in read(path)] == ["best-epoch001.ckpt", "best-epoch001.ckpt", "last.ckpt"]

    # a file from before rows had an identity, with every row twice and a column this version does not write
    with path.open("a") as f:
        f.write(path.read_text().splitlines()[1] + "\n")
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0] + ",note", *(line + ",x" for line in text[1:])]) + "\n")
    write_csv(path, [replace(ROW, stage="val", weights="epoch 1")])
    rows = read(path)
    assert [(r["stage"], r["flow"], r["weights"]) for r in rows] == [
        ("test", "a->b->c", "best-epoch001.ckpt"), ("test", "a->b->c", "last.ckpt"),
        ("test", "c->b->a", "best-epoch001.ckpt"), ("val", "a->b->c", "epoch 1"),
    ]  # fmt: skip
    assert [r["note"] for r in rows] == ["x", "x", "x", ""]


def test_the_report_counts_a_run_once_per_stage_and_flow(tmp_path):
    for seed, value in (("0", 0.2), ("1", 0.4)):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        write_csv(run / "results.csv", [replace(ROW, seed=seed, map_instance=value)])
    # run1 also tested its last checkpoint (0.6): its latest row counts, not both
    write_csv(tmp_path / "run1" / "results.csv", [replace(ROW, seed="1", weights="last.ckpt", map_instance=0.6)])
    table = summarise(collect(tmp_path), "test")
    assert "| exp | s→e | a->b->c* | fabind | 0,1 | 0.400 ± 0.283 | 0.500 ± 0.000 |" in table
    assert "one row per run directory and flow, the latest: 1 earlier rows of the same runs left out" in table


def test_repeating_test_validate_and_the_resume_command_leaves_each_row_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit = ["fit", "--config", str(ROOT / "experiments" / "two_dataset.yaml"), "--trainer.max_epochs=2",
           "--trainer.limit_train_batches=2", "--trainer.log_every_n_steps=1",
           "--trainer.enable_progress_bar=false"]  # fmt: skip
    result = cli(fit)
    run, best = Path(result.trainer.log_dir), result.trainer.checkpoint_callback.best_model_path
    first = read(run / "results.csv")
    assert [(r["stage"], r["weights"]) for r in first] == [("val", "epoch 1"), ("test", "best-epoch001.ckpt")]
    for args in (["test", "--ckpt_path", best], ["test", "--ckpt_path", best], [*fit, "--ckpt_path", "last"],
                 ["validate", "--ckpt_path", best]):  # fmt: skip
        cli([*args, "--trainer.enable_progress_bar=false"])
    again = read(run / "results.csv")
    assert sorted((r["stage"], r["weights"], r["map_instance"]) for r in again) == sorted(
        (r["stage"], r["weights"], r["map_instance"]) for r in first
    )
