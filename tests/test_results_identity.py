"""A result row's identity (``brokenbind.results.IDENTITY``): scoring the same thing again replaces its row, and the
report counts a run directory once per stage and flow."""

import csv
import shutil
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from benchmarks.report import collect, summarise
from brokenbind.checkpoints import checkpoint_digest
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


def test_a_copied_checkpoint_scored_twice_is_one_run_and_the_report_counts_it_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit = ["fit", "--config", str(ROOT / "experiments" / "two_dataset.yaml"), "--trainer.max_epochs=1",
           "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"]  # fmt: skip
    result = cli(fit)
    best = Path(result.trainer.checkpoint_callback.best_model_path)
    stored = torch.load(best, weights_only=True)["config"]["trainer"]
    assert stored["logger"]["init_args"]["save_dir"] == "logs" and stored.get("default_root_dir") is None  # as given
    config = yaml.safe_load((Path(result.trainer.log_dir) / "config.yaml").read_text())["trainer"]
    assert config["logger"]["init_args"]["save_dir"] == "logs"
    copy = tmp_path / "copy.ckpt"
    shutil.copyfile(best, copy)
    for _ in range(2):
        cli(["test", "--ckpt_path", str(copy), "--trainer.enable_progress_bar=false"])
    scored = tmp_path / "logs" / "two_dataset" / f"checkpoint_{checkpoint_digest(copy)}"
    assert sorted(p.name for p in scored.parent.iterdir()) == [scored.name, "version_0"]  # not nested, one directory
    copy_rows, original = read(scored / "results.csv"), read(Path(result.trainer.log_dir) / "results.csv")
    assert [(r["stage"], r["weights"]) for r in copy_rows] == [("test", "copy.ckpt")]
    assert copy_rows[0]["checkpoint"] == original[-1]["checkpoint"] == checkpoint_digest(best)
    assert copy_rows[0]["map_instance"] == original[-1]["map_instance"]
    assert original[0]["checkpoint"] == ""  # a validation epoch scored no checkpoint file
    table = summarise(collect(tmp_path / "logs"), "test")
    assert "| two_dataset | support→evaluation | fou->pix->zer* | brokenbind | 0 |" in table
    assert "1 earlier rows of the same runs left out" in table
