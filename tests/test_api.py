"""``brokenbind.api`` from Python: a run's result rows, checkpoints and configuration come back as objects."""

import csv
import shutil
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Callback

from brokenbind import api
from brokenbind.errors import ConfigError, DataError
from brokenbind.results import ResultRow, identity
from brokenbind.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
TWO = ROOT / "experiments" / "two_dataset.yaml"
SHORT = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"]


@pytest.fixture(autouse=True)
def run_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_fit_returns_the_rows_it_scored_its_checkpoints_and_configuration_and_test_rescores_the_best(tmp_path):
    result = api.fit(TWO, [*SHORT, "--method=fabind", "--seed_everything=3"])
    assert result.run_dir == Path("logs/two_dataset/fabind/version_0")
    assert all(isinstance(row, ResultRow) for row in result.rows)
    assert [(r.stage, r.experiment, r.method, r.seed, r.dataset, r.flow) for r in result.rows] == [
        ("val", "two_dataset", "fabind", "3", "evaluation", "fou->pix->zer"),
        ("test", "two_dataset", "fabind", "3", "evaluation", "fou->pix->zer"),
    ]
    assert result.best_checkpoint is not None and result.best_checkpoint.parent == result.run_dir / "checkpoints"
    assert result.stage("test")[0].weights == result.best_checkpoint.name
    assert result.last_checkpoint == result.run_dir / "checkpoints" / "last.ckpt"
    assert result.config["method"] == "fabind" and result.config["trainer"]["max_epochs"] == 2
    # the returned rows are the rows results.csv holds
    with (result.run_dir / "results.csv").open() as f:
        written = list(csv.DictReader(f))
    assert [identity(r) for r in written] == [identity(vars(r)) for r in result.rows]
    assert [float(r["map_instance"]) for r in written] == [r.map_instance for r in result.rows]
    # testing the best checkpoint again: its test row, in the same run directory (replacing, not adding, the row)
    again = api.test(result.best_checkpoint, ["--trainer.enable_progress_bar=false"])
    assert again.run_dir == result.run_dir and [identity(vars(r)) for r in again.rows] == [
        identity(vars(r)) for r in result.stage("test")
    ]
    with (result.run_dir / "results.csv").open() as f:
        assert [float(r["map_instance"]) for r in csv.DictReader(f)] == [
            result.rows[0].map_instance,
            again.rows[0].map_instance,
        ]


def test_a_dict_config_and_a_list_of_layers_run_like_files():
    inline = {**yaml.safe_load(TWO.read_text()), "experiment": "inline"}
    result = api.fit([inline, {"trainer": {"max_epochs": 1}}], ["--trainer.limit_train_batches=2",
                                                                 "--test_after_fit=false"])  # fmt: skip
    assert result.run_dir == Path("logs/inline/version_0") and result.config["trainer"]["max_epochs"] == 1
    assert [(r.stage, r.experiment) for r in result.rows] == [("val", "inline")]


def test_rows_record_the_runs_own_seed_and_an_unseeded_run_is_refused(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # as an earlier seeded fit in this process leaves it
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--test_after_fit=false"]
    with pytest.raises(ConfigError, match="seed_everything: false leaves the run unseeded"):
        api.fit(TWO, [*short, "--seed_everything=false"])
    assert [r.seed for r in api.fit(TWO, [*short, "--seed_everything=4"]).rows] == ["4"]


def test_callbacks_given_to_fit_observe_the_run_and_stay_out_of_its_configuration():
    class ValidationEpochs(Callback):
        def __init__(self):
            self.seen: list[tuple[int, float]] = []

        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.seen.append((trainer.current_epoch, float(trainer.callback_metrics["val/mAP"])))

    epochs = ValidationEpochs()
    result = api.fit(TWO, [*SHORT, "--test_after_fit=false"], callbacks=[epochs])
    assert [epoch for epoch, _ in epochs.seen] == [0, 1] and epochs in result.trainer.callbacks
    # the validation row is the epoch that checkpoint selection picks: the best mAP the callback saw
    assert result.stage("val")[0].map_instance == pytest.approx(max(value for _, value in epochs.seen))
    assert (
        "ValidationEpochs" not in str(result.config)
        and "ValidationEpochs" not in (result.run_dir / "config.yaml").read_text()
    )


def test_a_configuration_error_raises_and_leaves_no_run_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs=0 trains nothing"):
        api.fit(TWO, ["--trainer.max_epochs=0"])
    with pytest.raises(ConfigError, match=r"^model.method: brokenbind.methods.BrokenBind takes no option 'bogus'"):
        api.fit(TWO, ["--model.method.init_args.bogus=1"])
    assert not (tmp_path / "logs").exists()


def test_check_returns_the_configuration_fit_would_run_with_and_builds_and_writes_nothing(tmp_path):
    config = api.check(TWO, ["--method=fabind", "--trainer.max_epochs=3"])
    assert (config["method"], config["experiment"], config["trainer"]["max_epochs"]) == ("fabind", "two_dataset", 3)
    assert config["model"]["method"]["class_path"] == "brokenbind.methods.FABind"
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs=0 trains nothing"):  # fit's checks, before building
        api.check(TWO, ["--trainer.max_epochs=0"])
    assert list(tmp_path.iterdir()) == []


def test_overrides_as_a_mapping_are_the_same_as_command_line_arguments(tmp_path):
    as_args = api.check(TWO, ["--method=fabind", "--trainer.max_epochs=3", "--evaluation.ks=[1, 20]",
                              "--experiment=two words"])  # fmt: skip
    as_mapping = api.check(TWO, {"method": "fabind", "trainer.max_epochs": 3, "evaluation.ks": [1, 20],
                                 "experiment": "two words"})  # fmt: skip
    assert as_mapping == as_args
    assert (as_mapping["trainer"]["max_epochs"], as_mapping["evaluation"]["ks"]) == (3, [1, 20])
    assert as_mapping["model"]["method"]["class_path"] == "brokenbind.methods.FABind"
    with pytest.raises(ConfigError, match=r"--trainer\.max_epochz=3 \(did you mean 'max_epochs'\?\)"):
        api.check(TWO, {"trainer.max_epochz": 3})
    assert list(tmp_path.iterdir()) == []


def test_a_run_directory_is_removed_after_a_failed_start_it_created_and_kept_otherwise(tmp_path):
    def start(created: bool, error: Exception, checkpoint: bool = False) -> bool:
        path = tmp_path / "logs" / "exp" / "version_0"
        path.mkdir(parents=True)
        if checkpoint:
            (path / "checkpoints").mkdir()
            (path / "checkpoints" / "last.ckpt").write_bytes(b"")
        with pytest.raises(type(error)), RunDir(path, created=tmp_path / "logs" if created else None):
            raise error
        kept = path.exists()
        shutil.rmtree(tmp_path / "logs", ignore_errors=True)
        return kept

    assert not start(created=True, error=DataError("bad rows"))  # an error a user can fix: nothing left
    assert not (tmp_path / "logs").exists()  # nor the directories above it that the start created
    assert start(created=True, error=RuntimeError("a bug"))  # a bug keeps what it wrote, for its traceback
    assert start(created=False, error=DataError("bad rows"))  # a directory it did not create (a resume) stays
    assert start(created=True, error=DataError("bad rows"), checkpoint=True)  # a checkpoint is never removed
