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
EXPERIMENT = str(ROOT / "experiments" / "two_dataset.yaml")
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
    tune.main(["--config", EXPERIMENT, "--space", str(space), "--n_trials", "3",
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
    assert ran.trainer.state.finished and ran.model.model.embed_dim == int(best["model.embed_dim"])

    # the same storage resumes the study: a fourth trial joins the three
    tune.main(["--config", EXPERIMENT, "--space", str(space), "--n_trials", "1",
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
        ("space: {model.embed_dim: {low: 2}}\n", "model.embed_dim needs `choices"),
        ("space: {model.embed_dim: {low: 3, high: 2}}\n", "model.embed_dim needs low < high, got low 3, high 2 ("),
        ("space: {model.embed_dim: {low: 2, high: 2}}\n", "model.embed_dim needs low < high, got low 2, high 2 ("),
        ("space: {--model.embed_dim: {low: 1, high: 2}}\n", "space keys are dotted config keys without dashes"),
        ("spaces: {}\n", "unknown keys"),
        ("space: {model.embed_dim: {low: 1, high: 2, lg: true}}\n", "model.embed_dim needs `choices"),
        ("space: {x.c: {choices: abc}}\n", "x.c: `choices` must be a non-empty list, got 'abc'"),
        ("space: {x.lr: {low: 1e-3, high: 1.0}}\n", "x.lr: `low` must be a number, got '1e-3'; YAML reads 1e-3 as"),
        ("space: {x.lr: {low: 0.1, high: 1.0, log: 1}}\n", "x.lr: `log` must be true or false, got 1"),
        ("space: {model.embed_dim: {low: 16, high: 32, step: 0.5}}\n", "model.embed_dim: low and high are ints"),
        (
            "space: {x.lr: {low: 1.0, high: 5.0, log: true, step: 1.0}}\n",
            "x.lr {'low': 1.0, 'high': 5.0, 'log': True, 'step': 1.0} is not a valid range: The parameter `step` is "
            "not supported when `log` is true. Change this entry.",
        ),
        ("space: {x.lr: {low: 0.0, high: 1.0, log: true}}\n", "x.lr {'low': 0.0, 'high': 1.0, 'log': True} is not a "
                                                              "valid range: `low > 0` must hold for `log=True`"),
        ("space: {model.embed_dim: {low: 16, high: 32, step: 0}}\n", "model.embed_dim {'low': 16, 'high': 32, 'step': "
                                                                     "0} is not a valid range: `step > 0` must hold"),
    ]:  # fmt: skip
        path.write_text(text)
        with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: {match}")):
            tune.load_space(path)


def test_a_space_that_optuna_refuses_stops_the_command_before_the_study_and_writes_nothing(
    tmp_path, monkeypatch, capsys
):
    space = tmp_path / "space.yaml"
    entry = {"low": 5.0, "high": 40.0, "log": True, "step": 1.0}
    spec = {**SPACE, "enqueue": [], "space": {"model.method.init_args.logit_scale": entry}}
    space.write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setattr("sys.argv", ["brokenbind", "tune", "--config", EXPERIMENT, "--space", str(space),
                                     "--out", str(tmp_path / "study")])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"brokenbind: ConfigError: {space}: model.method.init_args.logit_scale {entry} is not a valid range: The "
        "parameter `step` is not supported when `log` is true. Change this entry.\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]  # no study directory, no study.db


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
    # trials run in this process: DDP's other ranks would run the whole tune command again
    with pytest.raises(ConfigError, match=r"^brokenbind tune runs its trials in this process, but the trainer is DDP"):
        tune.main(["--config", experiment, "--space", str(space), "--out", str(tmp_path / "out"), "--",
                   "--hardware", "ddp_cpu"])  # fmt: skip
    assert not (tmp_path / "out" / "study.db").exists()
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


# Studies of trials that train nothing (``cheap_trials``): what is tested is the study around them.
TINY = {
    "method": "brokenbind",
    "objective": "mix",
    "class_weight": 0.25,
    "seeds": [0],
    "args": ["--trainer.max_epochs=2"],
    "space": {
        "model.embed_dim": {"low": 16, "high": 32, "step": 16},
        "data.init_args.batch_size": {"choices": [16, 32, 64]},
    },
}


@pytest.fixture
def cheap_trials(monkeypatch):
    """Each run's (instance, class) mAP is a function of its values; the runs are recorded as (trial, seed, values)."""
    runs = []

    def run_trial(configs, base, values, seed, out, number, callbacks=()):
        runs.append((number, seed, values))
        return values["model.embed_dim"] / 100, values["data.init_args.batch_size"] / 100

    monkeypatch.setattr(tune, "run_trial", run_trial)
    return runs


def tune_tiny(tmp_path, *args, space=TINY, config=EXPERIMENT):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    tune.main(["--config", config, "--space", str(path), "--out", str(tmp_path / "study"), *args])


def storage_of(tmp_path) -> str:
    return f"sqlite:///{(tmp_path / 'study' / 'study.db').resolve()}"


def read_trials(tmp_path) -> list[dict]:
    with (tmp_path / "study" / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def test_n_trials_0_rewrites_the_outputs_of_the_existing_study_and_runs_no_trial(tmp_path, cheap_trials):
    with pytest.raises(ConfigError) as info:
        tune_tiny(tmp_path, "--n_trials", "0")
    assert str(info.value) == (
        f"--n_trials 0 rewrites the outputs of an existing study, and {storage_of(tmp_path)} holds no study "
        "'two_dataset': give the --out (or --storage) and --study_name of the study, or a number of trials to run"
    )
    with pytest.raises(ConfigError, match=r"^n_trials \(--n_trials, or n_trials in .*space.yaml\) .*; got -1$"):
        tune_tiny(tmp_path, "--n_trials", "-1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]  # no study created to report on

    point = {"model.embed_dim": 32, "data.init_args.batch_size": 64}
    tune_tiny(tmp_path, "--n_trials", "1", space={**TINY, "enqueue": [point]})
    assert cheap_trials == [(0, 0, point)]
    for name in ("best.yaml", "trials.csv", "search.png"):
        (tmp_path / "study" / name).unlink()
    other = {"model.embed_dim": 16, "data.init_args.batch_size": 16}
    tune_tiny(tmp_path, "--n_trials", "0", space={**TINY, "enqueue": [point, other]})
    assert len(cheap_trials) == 1  # no run, and no point queued for later
    study = optuna.load_study(study_name="two_dataset", storage=storage_of(tmp_path))
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    assert [t["number"] for t in read_trials(tmp_path)] == ["0"]
    assert (tmp_path / "study" / "search.png").is_file()
    best = yaml.safe_load((tmp_path / "study" / "best.yaml").read_text())
    assert best["model"]["embed_dim"] == 32 and best["data"]["init_args"]["batch_size"] == 64


def test_a_study_refuses_a_run_that_searches_something_else(tmp_path, cheap_trials):
    tune_tiny(tmp_path, "--n_trials", "1")
    assert [(t["method"], t["objective"], t["seeds"]) for t in read_trials(tmp_path)] == [
        ("brokenbind", "mix (class weight 0.25)", "0")
    ]
    best = (tmp_path / "study" / "best.yaml").read_text()
    edited = tmp_path / "edited" / "two_dataset.yaml"  # the same experiment name, another content
    edited.parent.mkdir()
    edited.write_text(Path(EXPERIMENT).read_text() + "trainer: {gradient_clip_val: 1.0}\n")
    wider = {**TINY["space"], "model.embed_dim": {"low": 16, "high": 48, "step": 16}}
    for args, space, config, difference in [
        (["--method", "fabind"], TINY, EXPERIMENT, "method: study 'brokenbind', now 'fabind'"),
        (["--objective", "instance"], TINY, EXPERIMENT, "objective: study 'mix (class weight 0.25)', now 'instance'"),
        (["--", "--trainer.max_epochs=3"], TINY, EXPERIMENT, "args.trainer.max_epochs: study 2, now 3"),
        (["--", "--trainer.limit_train_batches=2"], TINY, EXPERIMENT,
         "args.trainer.limit_train_batches: study unset, now 2"),
        ([], {**TINY, "space": wider}, EXPERIMENT, "space.model.embed_dim.high: study 32, now 48"),
        ([], TINY, str(edited), "experiment.trainer: study unset, now {'gradient_clip_val': 1.0}"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as info:
            tune_tiny(tmp_path, "--n_trials", "1", *args, space=space, config=config)
        assert str(info.value) == (
            f"study 'two_dataset' in {storage_of(tmp_path)} searches something else than this command: {difference}. "
            "Its trials are not comparable with this search's and its best.yaml would mix them: give this search its "
            "own --out (or --study_name), or resume the study with the arguments, experiment and space it was made with"
        )
    assert len(cheap_trials) == 1 and (tmp_path / "study" / "best.yaml").read_text() == best
    # the same search resumes, with other seeds if need be
    tune_tiny(tmp_path, "--n_trials", "1", "--seeds", "1")
    assert [t["seeds"] for t in read_trials(tmp_path)] == ["0", "1"]


def test_a_study_without_a_record_of_its_search_is_refused(tmp_path, cheap_trials):
    (tmp_path / "study").mkdir()
    study = optuna.create_study(study_name="two_dataset", storage=storage_of(tmp_path), direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            value=0.5,
            params={"model.embed_dim": 16},
            distributions={"model.embed_dim": optuna.distributions.IntDistribution(16, 32, step=16)},
        )
    )
    with pytest.raises(ConfigError) as info:
        tune_tiny(tmp_path, "--n_trials", "1")
    assert str(info.value) == (
        f"study 'two_dataset' in {storage_of(tmp_path)} holds 1 trials but no record of what they search (an earlier "
        "brokenbind made it), so this run's could not be told apart from them: start a new study with another --out "
        "or --study_name"
    )
    assert cheap_trials == [] and len(study.trials) == 1 and study.user_attrs == {}


def test_enqueued_points_are_queued_until_evaluated_and_a_failed_one_runs_again(tmp_path, monkeypatch, capsys):
    pruned = {"model.embed_dim": 16, "data.init_args.batch_size": 64}
    failed = {"model.embed_dim": 32, "data.init_args.batch_size": 16}
    waiting = {"model.embed_dim": 16, "data.init_args.batch_size": 16}
    space = {**TINY, "enqueue": [pruned, failed, waiting]}
    broken = [True]

    def run_trial(configs, base, values, seed, out, number, callbacks=()):
        if broken[0] and values == pruned:
            raise optuna.TrialPruned()
        if broken[0] and values == failed:
            raise RuntimeError("the run broke")
        return 0.5, 0.5

    monkeypatch.setattr(tune, "run_trial", run_trial)
    with pytest.raises(RuntimeError, match="the run broke"):  # trial 2 (waiting) never starts
        tune_tiny(tmp_path, "--n_trials", "3", space=space)
    broken[0] = False
    capsys.readouterr()
    tune_tiny(tmp_path, "--n_trials", "2", space=space)
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"enqueue point {pruned}: trial 0 is PRUNED, not queued again",
        f"enqueue point {waiting}: trial 2 is WAITING, not queued again",
    ]
    tune_tiny(tmp_path, "--n_trials", "1", space=space)
    assert capsys.readouterr().out.splitlines()[:3] == [
        f"enqueue point {pruned}: trial 0 is PRUNED, not queued again",
        f"enqueue point {failed}: trial 3 is COMPLETE, not queued again",
        f"enqueue point {waiting}: trial 2 is COMPLETE, not queued again",
    ]
    study = optuna.load_study(study_name="two_dataset", storage=storage_of(tmp_path))
    assert [t.state.name for t in study.trials] == ["PRUNED", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    # the failed point ran again as trial 3, after the waiting one; trial 4 is the sampler's
    assert [t.system_attrs.get("fixed_params") for t in study.trials] == [pruned, failed, waiting, failed, None]
    assert [t.params for t in study.trials[2:4]] == [waiting, failed]
