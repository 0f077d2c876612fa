"""``brokenbind tune``: a 3-trial Optuna study on a tiny config, on the validation split only."""

import csv
import re
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from brokenbind import tune
from brokenbind.cli import cli, main
from brokenbind.errors import ConfigError
from datamodules.base import PairedDataModule

ROOT = Path(__file__).resolve().parents[1]
SPACE = {
    "method": "brokenbind",
    "objective": "mix",
    "class_weight": 0.25,
    "seeds": [0, 1],
    "enqueue": [{"model.method.init_args.push_away": "none", "model.embed_dim": 32}],
    "args": [
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=2",
        "--trainer.log_every_n_steps=1",
        "--data.init_args.batch_size=16",
    ],
    "space": {
        "model.method.init_args.push_away": {"choices": ["observed_pairs", "none"]},
        "model.method.init_args.consistency_fraction": {"low": 0.0, "high": 1.0},
        "model.embed_dim": {"low": 16, "high": 32, "step": 16},
    },
}


@pytest.fixture(autouse=True)
def run_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.slow
def test_three_trial_study_writes_a_runnable_best_config_trials_and_a_plot(tmp_path, monkeypatch):
    def no_test(self):
        raise AssertionError("tuning touched the test split")

    monkeypatch.setattr(PairedDataModule, "test_dataloader", no_test)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out = tmp_path / "study"
    tune.main(["--config", str(ROOT / "experiments" / "two_dataset.yaml"), "--space", str(space), "--n_trials", "3",
               "--out", str(out)])  # fmt: skip
    with (out / "trials.csv").open() as f:
        trials = list(csv.DictReader(f))
    assert [t["number"] for t in trials] == ["0", "1", "2"] and {t["state"] for t in trials} == {"COMPLETE"}
    for t in trials:  # the value is the named mix of the mean validation mAPs over both seeds
        assert float(t["value"]) == pytest.approx(0.75 * float(t["instance"]) + 0.25 * float(t["class"]), abs=1e-5)
    assert {t["model.embed_dim"] for t in trials} <= {"16", "32"}
    assert trials[0]["model.method.init_args.push_away"] == "none" and trials[0]["model.embed_dim"] == "32"
    assert (out / "search.png").stat().st_size > 1000 and (out / "study.db").is_file()
    assert len(list((out / "trials").rglob("results.csv"))) == 6  # 3 trials × 2 seeds, validation rows only
    # the pruning callback went with each trial's first seed and reported the best objective so far at every epoch
    study = optuna.load_study(study_name="two_dataset", storage=f"sqlite:///{out / 'study.db'}")
    for t in study.trials:
        assert sorted(t.intermediate_values) == [0, 1] and t.intermediate_values[0] <= t.intermediate_values[1]

    best = max(trials, key=lambda t: float(t["value"]))
    config = yaml.safe_load((out / "best.yaml").read_text())
    init_args = config["model"]["method"]["init_args"]
    assert init_args["push_away"] == best["model.method.init_args.push_away"]
    assert init_args["consistency_fraction"] == pytest.approx(
        float(best["model.method.init_args.consistency_fraction"])
    )
    assert config["model"]["embed_dim"] == int(best["model.embed_dim"])
    assert config["data"]["init_args"]["batch_size"] == 16 and config["trainer"]["max_epochs"] == 2
    assert config["data"]["class_path"] == "datamodules.MfeatDataModule"
    monkeypatch.undo()
    ran = cli(["fit", "--config", str(out / "best.yaml"), "--trainer.fast_dev_run=true"])
    assert ran.trainer.state.finished and ran.model.embed_dim == int(best["model.embed_dim"])

    # the same storage resumes the study: a fourth trial joins the three
    tune.main(["--config", str(ROOT / "experiments" / "two_dataset.yaml"), "--space", str(space), "--n_trials", "1",
               "--out", str(out), "--seeds", "0"])  # fmt: skip
    with (out / "trials.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4


def test_pruning_callback_reports_the_best_so_far_and_stops_the_fit():
    class Trial:
        def __init__(self):
            self.reports = []

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return len(self.reports) >= 2

    trial = Trial()
    callback = tune.PruneOnValidation(trial, objective="mix", class_weight=0.5)
    for epoch, (instance, klass) in enumerate([(0.2, 0.6), (0.1, 0.2)]):
        trainer = SimpleNamespace(
            sanity_checking=False, current_epoch=epoch, should_stop=False,
            callback_metrics={"val/mAP": instance, "val/mAP_class/d/a->b": klass},
        )  # fmt: skip
        assert not callback.pruned
        callback.on_validation_epoch_end(trainer, None)
    assert trial.reports == [(0, pytest.approx(0.4)), (1, pytest.approx(0.4))]
    assert trainer.should_stop and callback.pruned


def test_search_space_errors_are_clear(tmp_path):
    path = tmp_path / "space.yaml"
    for text, match in [
        ("space: {}\n", "no `space`"),
        ("space: {model.embed_dim: {low: 2}}\n", "needs `choices"),
        ("space: {model.embed_dim: {low: 3, high: 2}}\n", "low > high"),
        ("space: {--model.embed_dim: {low: 1, high: 2}}\n", "without dashes"),
        ("spaces: {}\n", "unknown keys"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            tune.load_space(path)


def test_shipped_search_spaces_parse():
    for path in (ROOT / "experiments" / "tune").glob("*.yaml"):
        spec = tune.load_space(path)
        assert (ROOT / "experiments" / f"{path.stem}.yaml").is_file()
        assert all(key.count(".") >= 1 for key in spec["space"])


def test_fixed_arguments_are_checked_before_the_first_trial_and_a_hardware_preset_is_a_config_layer(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    experiment = str(ROOT / "experiments" / "two_dataset.yaml")
    for bad in (["--trainer.callbacks+=brokenbind.tune.PruneOnValidation"], ["--hardware=tpu"], ["fast"]):
        with pytest.raises(
            ConfigError, match=rf"^fixed arguments must read --key=value .* got {re.escape(repr(bad[0]))}"
        ):
            tune.main(["--config", experiment, "--space", str(space), "--out", str(tmp_path / "out"), "--", *bad])
        assert not (tmp_path / "out" / "study.db").exists()  # no study, no trial
    hardware, fixed = tune.fixed_arguments(["--hardware", "cpu", "--trainer.max_epochs=3"])
    assert hardware == ["cpu"] and fixed == {"trainer.max_epochs": 3}
    config = tune.best_config([experiment], "fabind", hardware, fixed, {"model.embed_dim": 32})
    assert config["trainer"] == {"accelerator": "cpu", "devices": 1, "precision": 32, "max_epochs": 3}
    assert "hardware" not in config and config["model"]["embed_dim"] == 32


def test_trial_arguments_keep_the_order_of_a_mapping():
    # the order of the datasets decides how the data is split: a sorted dump would re-split it
    datasets = {"support": {"modalities": ["pix", "zer"]}, "evaluation": {"modalities": ["fou", "pix"]}}
    assert tune.as_args({"data.init_args.datasets": datasets, "model.embed_dim": 32, "x": None}) == [
        "--data.init_args.datasets={support: {modalities: [pix, zer]}, evaluation: {modalities: [fou, pix]}}",
        "--model.embed_dim=32",
        "--x=null",
    ]


@pytest.mark.parametrize(
    ("fixed", "space_key", "message"),
    [
        (["--model.nonexistent=1"], "model.embed_dim", "unrecognized arguments: --model.nonexistent=1;"),
        ([], "model.method.init_args.nonexistent", "model.method: brokenbind.methods.BrokenBind takes no option "
                                                   "'nonexistent';"),
    ],
)  # fmt: skip
def test_a_configuration_that_does_not_parse_stops_the_command_before_the_study_and_writes_nothing(
    tmp_path, monkeypatch, capsys, fixed, space_key, message
):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "enqueue": [], "space": {space_key: {"low": 16, "high": 32}}}))
    out = tmp_path / "study"
    monkeypatch.setattr("sys.argv", ["brokenbind", "tune", "--config", str(ROOT / "experiments" / "two_dataset.yaml"),
                                     "--space", str(space), "--out", str(out), "--", *fixed])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"brokenbind: ConfigError: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]  # no study directory, no study.db, no logs/
