import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks.progress.progress_bar import get_standard_metrics
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from brokenbind.cli import cli as main
from brokenbind.settings import config_differences, method_presets, with_checkpoint_config

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = {p.stem: p for p in sorted((ROOT / "experiments").glob("*.yaml"))}


@pytest.fixture(autouse=True)
def run_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # logs/ is relative to the working directory


# (method, experiment) pairs refused by design, with the start of the error: impute and brokenbind_kernel fit on
# frozen features (the digits' audio backbone trains; the default brokenbind extrapolates linearly there instead),
# transitive needs rows observing both pivot and target (a chain has none), and the extrapolating methods need a
# modality to extrapolate (a one-dataset experiment has none)
REFUSED = {
    ("impute", "digits_real"): "TrainableBackboneError: method 'impute' fits on backbone features before training",
    ("pivot_ceiling", "digits_real"): "TrainableBackboneError: method 'pivot_ceiling' fits on backbone features before "
    "training",
    (
        "brokenbind_kernel",
        "digits_real",
    ): "TrainableBackboneError: method 'brokenbind' fits on backbone features before training",
    ("transitive", "three_dataset"): "ConfigError: method 'transitive' retrieves through anchor rows",
}
# one fully paired dataset: nothing to extrapolate, and no pivot to retrieve through
for one_dataset in ("one_dataset", "synthetic"):
    REFUSED |= {
        ("brokenbind_paper", one_dataset): "ConfigError: MOX found no dataset with a modality to extrapolate",
        # the default's transition auto fits its map at fit start, and says so there
        **{(m, one_dataset): f"ConfigError: {name} found no dataset lacking a modality"
           for m, name in (("brokenbind", "MOX"), ("brokenbind_wo_cons", "MOX"), ("brokenbind_wo_fro", "MOX"),
                           ("brokenbind_kernel", "MOX"), ("cmcr", "cmcr"),
                           ("impute", "impute"), ("pivot_ceiling", "pivot_ceiling"))},
        ("transitive", one_dataset): "ConfigError: method 'transitive' retrieves through anchor rows observing a "
        "flow's pivot and target, and flow",
    }  # fmt: skip

# Experiments whose structure two_dataset lacks, with the presets run on them besides their own method (every one
# that runs a code path of its own there; see the test's docstring)
STRUCTURES = {
    # real encoders (timm, MiniLM) and a trainable backbone (the digits' log-mel audio CNN), DigitsDataModule
    "digits_real": ("brokenbind_paper", "centrobind", "cmcr", "fabind", "oracle", "transitive"),
    # a chain of three datasets and two pivots: pseudo embeddings over two steps, imputation chains
    "three_dataset": ("brokenbind_paper", "brokenbind_kernel", "centrobind", "cmcr", "fabind", "impute", "oracle",
                      "pivot_ceiling"),
    # one fully paired dataset, no pivot
    "one_dataset": ("brokenbind_wo_mox", "fabind", "oracle"),
    # other datamodules: the oracle's extra training modalities come from their own loading
    "synthetic": ("oracle",),
    "digit_views": ("oracle",),
    "fashion_views": ("oracle",),
}  # fmt: skip
CELLS = sorted(
    {("<default>", e) for e in EXPERIMENTS}
    | {(m, "two_dataset") for m in method_presets()}
    | {(m, e) for e, methods in STRUCTURES.items() for m in methods}
    | set(REFUSED)
)
# digits_real encodes its validation and test rows with EfficientNet at 128 px: 10 rows per class instead of 30 (still
# more training rows than a batch) make the same code run on fewer rows, and its fits are the slow ones of the matrix
FEWER_ROWS = {"digits_real": ["--data.init_args.per_class=10"]}
SLOW = {e for e, path in EXPERIMENTS.items() if "Digits" in path.read_text()}


def cell(method: str, experiment: str):
    slow = experiment in SLOW and (method, experiment) not in REFUSED
    return pytest.param(method, experiment, id=f"{experiment}-{method}", marks=[pytest.mark.slow] if slow else [])


def test_the_matrix_covers_every_preset_experiment_and_refusal():
    assert {m for m, _ in CELLS} == {"<default>", *method_presets()}
    assert {e for _, e in CELLS} == set(EXPERIMENTS) and set(STRUCTURES) <= set(EXPERIMENTS)
    assert {e for _, e in REFUSED} <= set(EXPERIMENTS) and {m for m, _ in REFUSED} <= set(method_presets())
    assert not {(m, e) for e, methods in STRUCTURES.items() for m in methods} & set(REFUSED)


@pytest.mark.parametrize(("method", "experiment"), [cell(m, e) for m, e in CELLS])
def test_experiments_x_methods_with_fast_dev_run(method, experiment, capsys):
    """What the experiment x method matrix proves, and why its cells suffice (each one is a whole `brokenbind fit`
    with ``fast_dev_run``: one training, validation and test batch):

    * every experiment file trains with its own method (``<default>``: no ``--method``, as ``make train EXP=...``);
    * every method preset parses, builds and trains on two_dataset, which every preset accepts;
    * every refusal by design (``REFUSED``) stops with exit code 2 and its message;
    * every method that accepts it runs on each structure two_dataset lacks (``STRUCTURES``): real encoders with a
      trainable backbone (digits_real, whose fits are marked slow), a chain of three datasets (three_dataset), one
      fully paired dataset (one_dataset), and the other datamodules' oracle rows.

    The cells left out of the full product run nothing that a kept cell does not run on the same data:
    brokenbind_only_clip, _wo_cons, _wo_fro and _wo_mox are BrokenBind with some loss weights at 0, a subset of the
    terms that brokenbind (the default method) computes with MOX from the first step (brokenbind_wo_mox stays on
    one_dataset, where brokenbind is refused); the brokenbind preset spells out the defaults of the default method;
    frozen is fabind with ``max_epochs: 0``, which ``fast_dev_run`` overrides (one epoch of one batch, as fabind);
    the two_dataset_* variants are two_dataset (the same datamodule, standardize backbones, two datasets and one
    pivot) with other mfeat views, whose widths only the backbones see; digit_views, fashion_views and synthetic
    differ from two_dataset and one_dataset only in their datamodule, which their own method and the oracle (the one
    preset that changes the data) load.
    """
    path = EXPERIMENTS[experiment]
    if "Digits" in path.read_text() and shutil.which("espeak-ng") is None:
        pytest.skip("the built-in spoken digits need espeak-ng: make system-deps")
    preset = [] if method == "<default>" else ["--method", method]
    preset += FEWER_ROWS.get(experiment, [])
    refused = REFUSED.get((method, experiment))
    if refused is not None:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(path), *preset, "--trainer.fast_dev_run=true"])
        assert exit_info.value.code == 2 and f"brokenbind: {refused}" in capsys.readouterr().err
        return
    config = yaml.safe_load(path.read_text())
    named = config.get("model", {}).get("method", {}).get("class_path", "brokenbind.methods.BrokenBind")
    brokenbind = method.startswith("brokenbind") or (method == "<default>" and named.endswith(".BrokenBind"))
    # MOX from the first step, so that fast_dev_run exercises every term of every preset
    mox_now = ["--model.method.consistency_epochs=0"] if brokenbind else []
    cli = main(["fit", "--config", str(path), *preset, "--trainer.fast_dev_run=true", *mox_now])
    assert cli.trainer.state.finished
    assert cli.config.get("method") == (None if method == "<default>" else method)  # the dump leaves out None
    if method == "<default>":
        assert type(cli.model.method).__name__ == named.rpartition(".")[2]


def test_fit_writes_run_directory_with_results_tensorboard_and_checkpoints(tmp_path, capsys, recwarn):
    config = ROOT / "experiments" / "two_dataset.yaml"
    # epochs of 2 batches, fewer than log_every_n_steps (5)
    cli = main(["fit", "--config", str(config), "--trainer.max_epochs=2", "--trainer.limit_train_batches=2"])
    run = tmp_path / "logs" / "two_dataset" / "version_0"
    assert Path(cli.trainer.log_dir).resolve() == run
    assert get_standard_metrics(cli.trainer) == {"v_num": 0}  # the progress bar's version: version_0
    out = capsys.readouterr().out  # the results table and the run's paths, with Lightning's tables
    assert "test retrieval (best-epoch" in out and f"run directory: {Path('logs/two_dataset/version_0')}" in out
    assert not [w for w in recwarn if "logging interval" in str(w.message)]
    assert (run / "config.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    with (run / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], r["dataset"], r["flow"], r["emergent"]) for r in rows] == [
        ("val", "evaluation", "fou->pix->zer", "True"),
        ("test", "evaluation", "fou->pix->zer", "True"),
    ]
    assert rows[0]["experiment"] == "two_dataset" and rows[0]["method"] == "brokenbind" and rows[0]["seed"] == "0"
    assert rows[1]["weights"].startswith("best-epoch") and rows[1]["weights"].endswith(".ckpt")
    assert 0 < float(rows[1]["map_instance"]) <= 1 and 0 < float(rows[1]["map_class"]) <= 1

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert not [k for k in checkpoint["state_dict"] if k.startswith("model.backbones.")]  # frozen: rebuilt on load
    assert [k for k in checkpoint["state_dict"] if k.startswith("model.heads.")]

    events = [EventAccumulator(str(f)).Reload() for f in sorted(run.glob("events.out.tfevents.*"))]
    cond = [(e.step, e.value > 1) for e in events[0].Scalars("train/cond/evaluation/pix")]
    assert cond == [(1, True), (3, True)]  # once per epoch (the largest of its batches), though epochs are short
    images = {t for e in events for t in e.Tags()["images"]}
    assert {"figures/val_map", "figures/loss_terms"} <= images  # fit and test write one events file each
    assert "val_embeddings" in (run / "projector_config.pbtxt").read_text()  # TensorBoard's embedding projector

    validated = main(["validate", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert validated.trainer.state.finished and Path(validated.trainer.log_dir).resolve() == run

    # the checkpoint alone rebuilds the run (its configuration travels with it); outputs go to its run directory
    main(["predict", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    embeddings = run / "embeddings"
    written = sorted(p.relative_to(embeddings).as_posix() for p in embeddings.rglob("*"))
    assert "evaluation/test/zer.npy" in written and "evaluation/train/fou.npy" in written
    assert "evaluation/train/zer.npy" not in written  # hidden in training, so absent from the train split
    test_dir = embeddings / "evaluation" / "test"
    fou = np.load(test_dir / "fou.npy")
    with (test_dir / "index.csv").open() as f:
        index = list(csv.DictReader(f))
    assert fou.shape == (200, 128) and fou.dtype == np.float32 and len(index) == 200
    assert list(index[0]) == ["row", "id", "label", "class"]
    assert index[0]["class"] == index[0]["label"]  # mfeat's classes are the digits: named by their ids
    np.testing.assert_allclose(np.linalg.norm(fou, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.init_args.pivot=fou"], "pivot 'fou' must be observed by every dataset it links"),
        (["--data.init_args.batch_size=5000"], "fewer than batch_size 5000"),
    ],
)
def test_bad_configs_exit_with_a_clear_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "experiments" / "two_dataset.yaml"), "--trainer.fast_dev_run=true", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_keys_are_errors(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "experiments" / "two_dataset.yaml"), "--model.method.bogus=1"])
    assert "bogus" in capsys.readouterr().err


def test_unknown_method_preset_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "experiments" / "two_dataset.yaml"), "--method", "nope"])
    assert exit_info.value.code == 2
    assert "unknown method preset 'nope'" in capsys.readouterr().err


def test_report_aggregates_seeds(tmp_path):
    from benchmarks.report import collect, summarise
    from brokenbind.results import ResultRow, write_csv

    for seed, value in (("0", 0.2), ("1", 0.4)):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        row = ResultRow("exp", "fabind", seed, "test", "last.ckpt", "s→e", "e", "a->b->c", True, value, 0.5, 0, 0, 0)
        write_csv(run / "results.csv", [row])
    table = summarise(collect(tmp_path), "test")
    assert "| exp | s→e | a->b->c* | fabind | 0,1 | 0.300 ± 0.141 | 0.500 ± 0.000 |" in table


def test_a_checkpoint_alone_rebuilds_its_datasets_in_their_order(tmp_path):
    """The order of the datasets decides which classes each one gets (mfeat's class_shift blocks) and so every split:
    a run rebuilt from a checkpoint alone must keep it (a sorted dump once re-split the data of a standalone
    `brokenbind test --ckpt_path`, which then scored other test rows than the fit's own test)."""
    ckpt = tmp_path / "run.ckpt"
    datasets = {"support": {"modalities": ["pix", "zer"]}, "evaluation": {"modalities": ["fou", "pix"]}}
    torch.save({"config": {"data": {"init_args": {"datasets": datasets}}}}, ckpt)
    args = with_checkpoint_config(["test", f"--ckpt_path={ckpt}"])
    config = yaml.safe_load(args[1].removeprefix("--config="))
    assert list(config["data"]["init_args"]["datasets"]) == ["support", "evaluation"]


@pytest.fixture
def three_epoch_run(two_dataset_run) -> Path:
    """``last.ckpt`` of three short epochs of experiments/two_dataset.yaml (saved in epoch 3), in its own directory."""
    return two_dataset_run


def files_under(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*")}


def test_a_resume_with_max_epochs_below_the_checkpoints_epoch_is_refused_and_leaves_the_run_untouched(
    three_epoch_run, capsys
):
    run = three_epoch_run.parents[1]
    before = files_under(run)
    # 1: Lightning's traceback (current_epoch 2 > max_epochs); 2: Lightning stops at once, silently
    for max_epochs in (1, 2):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--ckpt_path", str(three_epoch_run), f"--trainer.max_epochs={max_epochs}"])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"brokenbind: ConfigError: trainer.max_epochs is {max_epochs}, but checkpoint {three_epoch_run} was saved "
            "in epoch 3 of its run: a fit from it continues from there, so it would train nothing and leave a run "
            "longer than its configuration says. Resume with --trainer.max_epochs=3 or more, or start a new run "
            "without --ckpt_path"
        )
    assert files_under(run) == before


def test_a_finished_run_resumed_writes_its_projector_once(three_epoch_run, capsys, monkeypatch):
    """Resumed at its end (to test it, or a requeued job), a run has the weights its projector shows already."""
    monkeypatch.chdir(three_epoch_run.parents[4])  # where the run was started
    main(["fit", "--ckpt_path", str(three_epoch_run), "--trainer.max_epochs=3", "--trainer.enable_progress_bar=false"])
    assert "Embedding dir exists" not in capsys.readouterr().out
    projected = three_epoch_run.parents[1] / "00006" / "val_embeddings"  # 3 epochs x 2 batches
    assert projected.is_dir()


def test_a_checkpoint_whose_datasets_come_in_another_order_is_refused(three_epoch_run, tmp_path, capsys):
    """The datasets' order divides mfeat's instances among them: the same datasets in another order are other data."""
    config = yaml.safe_load((ROOT / "experiments" / "two_dataset.yaml").read_text())
    datasets = config["data"]["init_args"]["datasets"]
    config["data"]["init_args"]["datasets"] = {"evaluation": datasets["evaluation"], "support": datasets["support"]}
    reordered = tmp_path / "two_dataset.yaml"
    reordered.write_text(yaml.safe_dump(config, sort_keys=False))
    for subcommand in ("fit", "test"):
        with pytest.raises(SystemExit) as exit_info:
            main([subcommand, "--config", str(reordered), "--ckpt_path", str(three_epoch_run)])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"brokenbind: ConfigError: checkpoint {three_epoch_run} was written by experiment 'two_dataset' (method "
            "None) with other settings than this run, experiment 'two_dataset' (method None): data.init_args.datasets "
            "(the order: support, evaluation in the checkpoint) differ. Load it with its own configuration: "
            f"`brokenbind {subcommand} --ckpt_path {three_epoch_run}` (no --config)"
        )
    assert not (tmp_path / "logs").exists()


def test_a_checkpoint_saved_before_an_argument_existed_runs_as_saved(three_epoch_run, tmp_path, monkeypatch):
    """A stored configuration lacks the arguments added since; re-parsed, they would take today's defaults, and the
    run would differ from the checkpoint's configuration (refused) or score otherwise than it was saved."""
    state = torch.load(three_epoch_run, weights_only=True)
    init_args = state["config"]["model"]["method"]["init_args"]
    assert (init_args["transitive_weight"], init_args["sym_centring"]) == (0.25, True)  # today's defaults
    del init_args["transitive_weight"], init_args["sym_centring"]
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    monkeypatch.chdir(tmp_path)
    method = main(["test", "--ckpt_path", str(old), "--trainer.enable_progress_bar=false"]).model.method
    assert (method.transitive_weight, method.sym_centring) == (0.0, False)
    assert method.transition == "auto"  # stored: kept as saved

    with pytest.raises(SystemExit):  # a class that cannot be imported is the parser's to name
        main(["test", "--ckpt_path", str(with_class_path(state, "nowhere.Mine", tmp_path))])


def with_class_path(state: dict, class_path: str, tmp_path: Path) -> Path:
    state["config"]["model"]["method"]["class_path"] = class_path
    path = tmp_path / "renamed.ckpt"
    torch.save(state, path)
    return path


def test_only_the_datasets_mapping_compares_its_order():
    stored = {
        "init_args": {"datasets": {"a": {"modalities": ["x"]}, "b": {"modalities": ["y"]}}},
        "z": {"p": 1, "q": 2},
    }
    swapped = {
        "init_args": {"datasets": {"b": {"modalities": ["y"]}, "a": {"modalities": ["x"]}}},
        "z": {"q": 2, "p": 1},
    }
    assert config_differences(stored, swapped, "data.") == [
        "data.init_args.datasets (the order: a, b in the checkpoint)"
    ]
    assert config_differences(stored["z"], swapped["z"], "model.backbones.") == []
