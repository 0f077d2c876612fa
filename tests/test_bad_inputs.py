"""Bad input, as a user meets it: every case runs the real CLI and must end in exit code 2 with one line
``brokenbind: <ErrorType>: <message>`` naming the offending key or file (path and manifest row) and what to do; never a
traceback, and never a run directory left behind under ``logs/``.

``CASES`` below is the table (id, setup, the error type and the key fragments of the message the user sees: the words
brokenbind writes naming the key, file or cause and the fix, not the text it passes on from a library); the README's
"Bad input" section points here.
Manifest cases run in a temporary working directory holding ``files/`` (written by ``test_manifest.make_data``: PNG
photos, WAV sounds, ``.npy`` features) with the manifests ``files/captions.csv`` and ``files/sounds.csv`` (rows i % 5 =
0, 1, 2 train, 3 val, 4 test) and the experiment ``my_data.yaml``; mfeat cases use ``experiments/two_dataset.yaml``.
"""

import wave
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

from brokenbind.cli import cli
from brokenbind.settings import method_presets

from .test_manifest import CUT_AUDIO, dm_args, make_data, write_csv

pytestmark = CUT_AUDIO

ROOT = Path(__file__).resolve().parents[1]
TWO_DATASET = str(ROOT / "experiments" / "two_dataset.yaml")
FOU_FAC_ZER = str(ROOT / "experiments" / "two_dataset_fou_fac_zer.yaml")
THREE_DATASET = str(ROOT / "experiments" / "three_dataset.yaml")
ONE_DATASET = str(ROOT / "experiments" / "one_dataset.yaml")
MFEAT = ["fit", "--config", TWO_DATASET, "--trainer.fast_dev_run=true"]
SPLIT_OF_ROW = ("train", "train", "train", "val", "test")  # row i of every manifest: SPLIT_OF_ROW[i % 5]

Rows = dict[str, list[dict]]  # dataset name -> manifest rows (``make_data``'s)


# -- setups ----------------------------------------------------------------------------------------------------------
def manifest_run(
    edit_rows: Callable[[Rows], None] | None = None,
    edit_files: Callable[[Path], None] | None = None,
    backbones: dict | None = None,
    **data: object,
) -> Callable[[Path], list[str]]:
    """Setup of a manifest case: write ``files/`` and the manifests, break them with ``edit_rows`` / ``edit_files``,
    write ``my_data.yaml`` (photo: timm resnet10t, random init, 16 px; sound: log-mel CNN; emb: standardised .npy;
    datasets captions (photo, sound) and sounds (photo, emb), flow emb->photo->sound on sounds) and return the CLI
    arguments (``fast_dev_run``: one training batch, one validation batch)."""

    def setup(tmp: Path) -> list[str]:
        rows = make_data(Path("files"))
        for dataset_rows in rows.values():
            for i, row in enumerate(dataset_rows):
                row["split"] = SPLIT_OF_ROW[i % 5]
        if edit_rows is not None:
            edit_rows(rows)
        manifests = {name: write_csv(Path("files") / f"{name}.csv", r) for name, r in rows.items()}
        if edit_files is not None:
            edit_files(Path("files"))
        args = dm_args(
            manifests,
            datasets={"captions": {"modalities": ["photo", "sound"]}, "sounds": {"modalities": ["photo", "emb"]}},
            flows=[{"dataset": "sounds", "flow": "emb->photo->sound"}],
        )
        config = {
            "data": {"class_path": "datamodules.ManifestDataModule", "init_args": {**args, **data}},
            "model": {
                "backbones": {
                    "photo": {"name": "timm", "model": "resnet10t", "image_size": 16},
                    "sound": "logmel_cnn",
                    "emb": "standardize",
                    **(backbones or {}),
                }
            },
        }
        Path("my_data.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return ["fit", "--config", "my_data.yaml", "--trainer.fast_dev_run=true"]

    return setup


def mfeat_run(*args: str) -> Callable[[Path], list[str]]:
    """Setup of an mfeat case: ``brokenbind fit --config experiments/two_dataset.yaml --trainer.fast_dev_run=true`` and
    ``args``."""
    return lambda tmp: [*MFEAT, *args]


def experiment_file(text: str, *args: str) -> Callable[[Path], list[str]]:
    """Setup: an experiment file ``exp.yaml`` holding ``text``, run with ``args``."""

    def setup(tmp: Path) -> list[str]:
        Path("exp.yaml").write_text(text)
        return ["fit", "--config", "exp.yaml", "--trainer.fast_dev_run=true", *args]

    return setup


def rows_of(dataset: str, **changes: dict) -> Callable[[Rows], None]:
    """Edit of manifest rows: ``changes`` maps row ``r<i>`` (0-based) to the cells to overwrite."""

    def edit(rows: Rows) -> None:
        for key, cells in changes.items():
            rows[dataset][int(key[1:])].update(cells)

    return edit


def integer_labels(then: Callable[[Rows], None]) -> Callable[[Rows], None]:
    """Edit: labels as integer class ids (cat 0, dog 1, bird 2), then ``then``."""

    def edit(rows: Rows) -> None:
        ids = {"cat": "0", "dog": "1", "bird": "2"}
        for dataset_rows in rows.values():
            for row in dataset_rows:
                row["label"] = ids[row["label"]]
        then(rows)

    return edit


def drop_column(dataset: str, column: str) -> Callable[[Rows], None]:
    def edit(rows: Rows) -> None:
        for row in rows[dataset]:
            del row[column]

    return edit


def write_empty_wav(path: Path) -> None:
    """A valid WAV header (mono, 16-bit, 16 kHz) and no samples."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"")


def file_then(name: str, content: bytes | Callable[[Path], None], *args: str) -> Callable[[Path], list[str]]:
    """Setup: a file ``name`` holding ``content`` (bytes, or written by a function of its path), then ``args``."""

    def setup(tmp: Path) -> list[str]:
        if callable(content):
            content(Path(name))
        else:
            Path(name).write_bytes(content)
        return list(args)

    return setup


def truncated_checkpoint(path: Path) -> None:
    """A torch.save file cut in half, as a copy interrupted mid-way leaves it."""
    torch.save({"state_dict": {"w": torch.ones(64)}, "epoch": 3}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def feature_arrays(widths: dict[str, int]) -> Callable[[Path], None]:
    """Edit of files: ``<dataset>_emb.npy`` of shape (30, width) per dataset."""

    def edit(files: Path) -> None:
        for name, width in widths.items():
            np.save(files / f"{name}_emb.npy", np.ones((30, width), dtype=np.float32))

    return edit


def caption_features(width: int) -> tuple[Callable[[Rows], None], Callable[[Path], None]]:
    """Edits of rows and files: captions get an 'emb' column of per-row .npy files of ``width`` values."""

    def rows(rows: Rows) -> None:
        for i, row in enumerate(rows["captions"]):
            row["emb"] = f"npy/c{i}.npy"

    def files(files: Path) -> None:
        for i in range(30):
            np.save(files / "npy" / f"c{i}.npy", np.zeros(width))

    return rows, files


ARRAYS_OF_TWO_WIDTHS = {
    "datasets": {"captions": {"modalities": ["photo", "sound", "emb"]}, "sounds": {"modalities": ["photo", "emb"]}},
    "arrays": {"captions": {"emb": "files/captions_emb.npy"}, "sounds": {"emb": "files/sounds_emb.npy"}},
}
EMB_AS_PIVOT_TOO = {
    "datasets": {"captions": {"modalities": ["photo", "sound", "emb"]}, "sounds": {"modalities": ["photo", "emb"]}},
    "pivot": ["photo", "emb"],
}
HAS_GPU = CUDAAccelerator.is_available() or MPSAccelerator.is_available()


def foreign_checkpoint(tmp: Path) -> list[str]:
    """A checkpoint of experiments/two_dataset.yaml given to a run of experiments/two_dataset_fou_fac_zer.yaml."""
    return ["fit", "--config", FOU_FAC_ZER, "--ckpt_path", str(TRAINED["last"]), "--trainer.fast_dev_run=true"]


TRAINED: dict[str, Path] = {}  # filled by the ``trained_two_dataset`` fixture


# -- the table -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One bad input: ``setup`` writes what it needs into the working directory and returns the CLI arguments; the
    one line on stderr reads ``brokenbind: <error>: <message>``, and ``says`` are the key fragments of the message:
    the parts brokenbind writes that name the key, file (path and manifest row) or cause, and the fix. Text that
    brokenbind passes on from a library (jsonargparse's, YAML's, PIL's, SciPy's, torch's and timm's words, timm's
    suggestions of close model names) is not asserted: it changes with their versions. ``{ckpt}`` and ``{cwd}`` stand
    for the case's checkpoint and working directory. ``skip``: why the case cannot arise on this machine, if it
    cannot."""

    id: str
    setup: Callable[[Path], list[str]]
    error: str
    says: tuple[str, ...]
    skip: str | None = None


BROKEN_PNG = b"\x89PNG\r\n\x1a\nnot an image"
TWO_DATASET_TEXT = Path(TWO_DATASET).read_text()
# the rows of the manifest cases, as the messages name them
S3_PHOTO = "files/img/s3.png (manifest files/sounds.csv data row 4 (line 5), id 's3', column 'photo')"
S3_SOUND = "files/wav/s3.wav (manifest files/sounds.csv data row 4 (line 5), id 's3', column 'sound')"
LABELS = "labels must be all integer class ids (0, 1, 2, ...; 3.0 counts as 3"
WIDTHS_FIX = "one modality has one width in every dataset (one head embeds it): make them match"

CASES = [
    # -- command line and experiment files -----------------------------------------------------------------------------
    Case("unknown_cli_key", mfeat_run("--model.method.init_args.mox_wieght=2"), "ConfigError",
         ("model.method: brokenbind.methods.BrokenBind takes no option 'mox_wieght'", "(did you mean 'mox_weight'?)",
          "`brokenbind fit --model.method.help brokenbind.methods.BrokenBind` lists its options")),
    Case("unknown_trainer_key", mfeat_run("--trainer.max_epoks=3"), "ConfigError",
         ("--trainer.max_epoks=3", "(did you mean 'max_epochs'?)", "`brokenbind fit --help` lists the accepted keys")),
    Case("unknown_yaml_trainer_key", experiment_file(TWO_DATASET_TEXT + "trainer: {max_epoch: 3}\n"), "ConfigError",
         ("'trainer.max_epoch'", "(did you mean 'max_epochs'?)", "`brokenbind fit --help` lists the accepted keys")),
    Case("unknown_yaml_key", experiment_file(TWO_DATASET_TEXT.replace("    pivot:", "    batchsize: 8\n    pivot:")),
         "ConfigError",
         ("data: datamodules.MfeatDataModule takes no option 'batchsize'", "(did you mean 'batch_size'?)",
          "`brokenbind fit --data.help datamodules.MfeatDataModule` lists its options")),
    Case("yaml_key_beside_init_args", experiment_file(TWO_DATASET_TEXT + "  batch_size: 8\n"), "ConfigError",
         ("data: unknown keys ['batch_size'] next to class_path and init_args",
          "the class's options go under init_args")),
    Case("yaml_syntax_error", experiment_file("data:\n  class_path: datamodules.MfeatDataModule\n   init_args: {}\n"),
         "ConfigError",
         ("experiment file exp.yaml: YAML syntax error at line 3, column 13",
          "fix the file (nesting is by indentation")),
    Case("experiment_file_not_found", lambda tmp: ["fit", "--config", "experiments/two_datset.yaml"], "ConfigError",
         ('"config"', "'{cwd}/experiments/two_datset.yaml'")),
    Case("misspelt_method_preset", mfeat_run("--method", "brokenbnd"), "ConfigError",
         ("unknown method preset 'brokenbnd'; available: [", "'brokenbind',")),
    Case("misspelt_hardware_preset", mfeat_run("--hardware", "gpux"), "ConfigError",
         ("unknown hardware preset 'gpux'; available: [", "'gpu',")),
    Case("empty_experiment_file", experiment_file("# nothing yet\n"), "ConfigError",
         ("experiment file exp.yaml is empty (or holds only comments)",
          "at least data (its class_path, datasets, pivot and flows), as experiments/two_dataset.yaml does")),
    Case("experiment_file_not_a_mapping", experiment_file("- data\n- model\n"), "ConfigError",
         ("experiment file exp.yaml holds a list, not a mapping of settings",
          "(as in experiments/two_dataset.yaml)")),
    Case("gpu_preset_without_gpu", mfeat_run("--hardware", "gpu"), "ConfigError",
         ("trainer.accelerator is 'gpu' (--hardware gpu, ddp and multinode set it), but torch finds no GPU",
          "Run on the CPU with --hardware cpu (or --trainer.accelerator=cpu)"),
         skip="this machine has a GPU" if HAS_GPU else None),
    Case("cuda_accelerator_without_gpu", mfeat_run("--trainer.accelerator=cuda"), "ConfigError",
         ("trainer.accelerator is 'cuda', but torch finds no CUDA GPU",
          "Run on the CPU with --hardware cpu (or --trainer.accelerator=cpu)"),
         skip="this machine has a GPU" if HAS_GPU else None),
    Case("unknown_accelerator", mfeat_run("--trainer.accelerator=gpus"), "ConfigError",
         ("trainer.accelerator 'gpus' is unknown; use one of [", "'cpu'")),
    Case("logger_save_dir_is_a_file", file_then("runs", b"", *MFEAT, "--trainer.logger.init_args.save_dir=runs"),
         "ConfigError",
         ("trainer.logger.init_args.save_dir is 'runs', but runs is a file, not a directory",
          "name a directory for the runs")),
    # -- pairing -------------------------------------------------------------------------------------------------------
    Case("pivot_not_shared", mfeat_run("--data.init_args.pivot=fou"), "ConfigError",
         ("pivot 'fou' must be observed by every dataset it links", "observed by ['evaluation']")),
    Case("flow_with_four_parts", mfeat_run("--data.init_args.flows=[{dataset: evaluation, flow: fou->pix->zer->kar}]"),
         "ConfigError", ("flow 'fou->pix->zer->kar' must read 'query->pivot->target'", "or 'query->target'")),
    Case("pivot_in_one_dataset", lambda tmp: ["fit", "--config", ONE_DATASET, "--data.init_args.pivot=pix"],
         "ConfigError",
         ("pivot 'pix': a pivot links datasets, and this experiment has one ('paired')",
          "leave data.init_args.pivot out")),
    Case("extrapolation_method_on_one_dataset", lambda tmp: ["fit", "--config", ONE_DATASET, "--method=brokenbind",
                                                              "--trainer.fast_dev_run=true"], "ConfigError",
         ("MOX found no dataset lacking a modality that a shared pivot links it to",
          "bind it with --method fabind or centrobind")),
    Case("flow_whose_query_is_its_target",
         mfeat_run("--data.init_args.flows=[{dataset: evaluation, flow: fou->pix->fou}]"), "ConfigError",
         ("flow 'fou->pix->fou' retrieves 'fou' from itself",)),
    Case("flow_names_unknown_modality",
         mfeat_run("--data.init_args.flows=[{dataset: evaluation, flow: fou->pix->xyz}]"), "ConfigError",
         ("flow 'fou->pix->xyz': unknown modality 'xyz'; available: [", "'zer'")),
    Case("flow_names_unobserved_modality",
         mfeat_run("--data.init_args.flows=[{dataset: evaluation, flow: fou->pix->kar}]"), "ConfigError",
         ("flow 'fou->pix->kar': modality 'kar' is observed by no training dataset",
          "add it to a dataset's modalities (data.init_args.datasets)")),
    Case("batch_larger_than_dataset", mfeat_run("--data.init_args.batch_size=5000"), "ConfigError",
         ("dataset 'support' has 600 training instances, fewer than batch_size 5000",
          "lower data.init_args.batch_size")),
    Case("class_shift_out_of_range", mfeat_run("--data.init_args.class_shift=1.5"), "ConfigError",
         ("class_shift must lie in [0, 1], got 1.5",)),
    Case("negative_num_workers", mfeat_run("--data.init_args.num_workers=-1"), "ConfigError",
         ("data.init_args.num_workers must be 0 (load in the main process) or a number of loader processes, got -1",)),
    # -- training settings ---------------------------------------------------------------------------------------------
    Case("negative_learning_rate", mfeat_run("--model.optimizer.init_args.lr=-0.001"), "ConfigError",
         ("model.optimizer.init_args.lr must be positive, got -0.001",)),
    Case("negative_weight_decay", mfeat_run("--model.optimizer.init_args.weight_decay=-1"), "ConfigError",
         ("model.optimizer.init_args.weight_decay must be 0 or positive, got -1.0",)),
    Case("embed_dim_zero", mfeat_run("--model.embed_dim=0"), "ConfigError",
         ("model.embed_dim must be a positive number of dimensions, got 0",)),
    Case("negative_head_hidden_dim", mfeat_run("--model.head_hidden_dim=-8"), "ConfigError",
         ("model.head_hidden_dim must be a positive number of dimensions, got -8",)),
    Case("max_epochs_zero", mfeat_run("--trainer.max_epochs=0", "--trainer.fast_dev_run=false"), "ConfigError",
         ("trainer.max_epochs=0 trains nothing", "for the untrained reference use --method frozen")),
    Case("logit_scale_too_large", mfeat_run("--model.method.init_args.logit_scale=1e9"), "ConfigError",
         ("logit_scale must lie in (0, 100]", "got 1e+09")),
    Case("negative_loss_weight", mfeat_run("--model.method.init_args.mox_weight=-1"), "ConfigError",
         ("mox_weight must be non-negative, got -1.0",)),
    Case("transitive_on_a_three_dataset_chain",
         lambda tmp: ["fit", "--config", THREE_DATASET, "--trainer.fast_dev_run=true", "--method", "transitive"],
         "ConfigError",
         ("method 'transitive' retrieves through anchor rows observing both 'pix' and 'zer' (flow 'fou->pix->zer')",
          "no training dataset observes both", "use another method for them")),
    Case("impute_with_a_trainable_backbone", lambda tmp: [*manifest_run()(tmp), "--method", "impute"],
         "TrainableBackboneError",
         ("method 'impute' fits on backbone features before training",
          "the backbones of ['sound'] are trainable or adapted (LoRA): freeze them or use another method")),
    # -- checkpoints ---------------------------------------------------------------------------------------------------
    Case("predict_without_checkpoint", lambda tmp: ["predict", "--config", TWO_DATASET], "ConfigError",
         ("predict needs --ckpt_path",)),
    Case("checkpoint_not_found", mfeat_run("--ckpt_path", "logs/two_dataset/version_0/checkpoints/last.ckpt"),
         "ConfigError",
         ("checkpoint not found: logs/two_dataset/version_0/checkpoints/last.ckpt",
          "pass the path of a .ckpt file or 'last'")),
    Case("checkpoint_last_without_runs", mfeat_run("--ckpt_path", "last"), "ConfigError",
         ("--ckpt_path last: no run under logs/two_dataset has checkpoints/last.ckpt",)),
    Case("text_file_as_checkpoint", file_then("t.ckpt", b"epoch: 3\nlr: 0.001\n", "test", "--ckpt_path", "t.ckpt"),
         "ConfigError",
         ("checkpoint t.ckpt is not a PyTorch checkpoint", "it holds text",
          "pass a .ckpt file that brokenbind wrote (logs/<experiment>/<version>/checkpoints/*.ckpt) or 'last'")),
    Case("random_bytes_as_checkpoint",
         file_then("r.ckpt", np.random.default_rng(0).bytes(4096), *MFEAT, "--ckpt_path", "r.ckpt"), "ConfigError",
         ("checkpoint r.ckpt is not a PyTorch checkpoint", "it does not start like one",
          "pass a .ckpt file that brokenbind wrote (logs/<experiment>/<version>/checkpoints/*.ckpt) or 'last'")),
    Case("truncated_checkpoint", file_then("cut.ckpt", truncated_checkpoint, "predict", "--ckpt_path", "cut.ckpt"),
         "ConfigError",
         ("checkpoint cut.ckpt is truncated or corrupt", "copy it again, or use another checkpoint of the run")),
    Case("empty_checkpoint", file_then("e.ckpt", b"", *MFEAT, "--ckpt_path", "e.ckpt"), "ConfigError",
         ("checkpoint e.ckpt is truncated or corrupt", "copy it again, or use another checkpoint of the run")),
    Case("checkpoint_with_python_objects",
         file_then("o.ckpt", lambda path: torch.save({"lr": Fraction(1, 3)}, path), "test", "--ckpt_path", "o.ckpt"),
         "ConfigError",
         ("checkpoint o.ckpt holds Python objects besides tensors and plain containers",
          "pass a checkpoint of a brokenbind run")),
    Case("checkpoint_of_another_experiment", foreign_checkpoint, "ConfigError",
         ("checkpoint {ckpt} was written by experiment 'two_dataset'",
          "than this run, experiment 'two_dataset_fou_fac_zer'",
          "data.init_args.datasets.evaluation.modalities, data.init_args.datasets.support.modalities, "
          "data.init_args.flows, data.init_args.pivot differ",
          "`brokenbind fit --ckpt_path {ckpt}` (no --config)")),
    # -- manifests -----------------------------------------------------------------------------------------------------
    Case("missing_manifest", manifest_run(manifests={"captions": "files/captions.csv", "sounds": "files/sound.csv"}),
         "DataError",
         ("dataset 'sounds': manifest not found: files/sound.csv", "fix data.init_args.manifests.sounds",
          "(a relative path starts at the working directory, {cwd})")),
    Case("split_fractions_not_summing_to_one", manifest_run(split_fractions=[0.9, 0.2, 0.2]), "ConfigError",
         ("split_fractions [0.9, 0.2, 0.2] sum to 1.3", "give train/val/test fractions that sum to 1")),
    Case("empty_manifest", manifest_run(edit_files=lambda files: (files / "sounds.csv").write_text("")), "DataError",
         ("manifest files/sounds.csv is empty", "expected a header row naming the columns")),
    Case("manifest_with_header_only", manifest_run(edit_files=lambda f: (f / "sounds.csv").write_text("id,photo\n")),
         "DataError", ("dataset 'sounds': manifest files/sounds.csv has no rows",)),
    Case("manifest_without_needed_column", manifest_run(edit_rows=drop_column("sounds", "emb")), "ConfigError",
         ("dataset 'sounds': manifest files/sounds.csv has no column 'emb' (a features modality the dataset needs)",
          "its columns: ['id', 'photo', 'sound', 'label', 'split']")),
    Case("duplicate_id", manifest_run(edit_rows=rows_of("sounds", r9={"id": "s2"})), "DataError",
         ("dataset 'sounds': manifest files/sounds.csv has duplicate id 's2'",
          "in data row 3 (line 4) and data row 10 (line 11)")),
    Case("unknown_split_value", manifest_run(edit_rows=rows_of("sounds", r7={"split": "validation"})), "DataError",
         ("dataset 'sounds': manifest files/sounds.csv data row 8 (line 9): unknown split value 'validation'",
          "expected one of ['train', 'val', 'test']")),
    Case("fractional_label", manifest_run(edit_rows=rows_of("sounds", r5={"label": "2.5"})), "DataError",
         ("label '2.5' in manifest files/sounds.csv data row 6 (line 7), id 's5' is a number but not an integer class "
          "id", LABELS, "or all class names")),
    Case("infinite_label_among_integers",
         manifest_run(edit_rows=integer_labels(rows_of("captions", r3={"label": "inf"}))), "DataError",
         ("label 'inf' in manifest files/captions.csv data row 4 (line 5), id 'c3' is a number but not an integer "
          "class id", LABELS, "or all class names")),
    Case("one_row_val_gallery",
         manifest_run(edit_rows=rows_of("sounds", **{f"r{i}": {"split": "train"} for i in (8, 13, 18, 23, 28)})),
         "DataError",
         ("dataset 'sounds' has 1 val instance(s)",
          "Give its val split two or more rows (the manifest's split column, or split_fractions)")),
    Case("batch_of_one", mfeat_run("--data.init_args.batch_size=1"), "ConfigError",
         ("data.init_args.batch_size is 1", "with one row there is no negative",
          "Use a batch of 2 rows or more")),
    Case("class_name_among_integers", manifest_run(edit_rows=integer_labels(rows_of("sounds", r6={"label": "cat"}))),
         "DataError",
         ("label 'cat' in manifest files/sounds.csv data row 7 (line 8), id 's6' is a class name",
          "label '0' in manifest files/captions.csv data row 1 (line 2), id 'c0' is an integer class id", LABELS)),
    Case("empty_modality_cell", manifest_run(edit_rows=rows_of("sounds", r3={"emb": ""})), "DataError",
         ("dataset 'sounds': manifest files/sounds.csv data row 4 (line 5), id 's3': modality 'emb' is empty",
          "every val row must carry ['emb', 'photo', 'sound']; fill in the cell or remove the row")),
    Case("feature_arrays_of_two_widths",
         manifest_run(edit_rows=drop_column("sounds", "emb"), edit_files=feature_arrays({"captions": 10, "sounds": 64}),
                      **ARRAYS_OF_TWO_WIDTHS), "DataError",
         ("features of 'emb' have 64 values per row in array files/sounds_emb.npy (data.init_args.arrays.sounds.emb)",
          "but 10 in array files/captions_emb.npy (data.init_args.arrays.captions.emb)", WIDTHS_FIX)),
    Case("pivot_features_of_two_widths", manifest_run(*caption_features(3), **EMB_AS_PIVOT_TOO), "DataError",
         ("features of 'emb' have 5 values per row in files/npy/s0.npy (manifest files/sounds.csv data row 1 (line "
          "2), id 's0', column 'emb')",
          "but 3 in files/npy/c0.npy (manifest files/captions.csv data row 1 (line 2), id 'c0', column 'emb')",
          WIDTHS_FIX)),
    # -- files (s3 is a val row of sounds, the evaluated dataset: fast_dev_run's validation batch reads it) ------------
    Case("missing_image", manifest_run(edit_files=lambda f: (f / "img" / "c7.png").unlink()), "DataError",
         ("dataset 'captions': image file missing: files/img/c7.png (manifest files/captions.csv data row 8 (line 9), "
          "id 'c7', column 'photo')",
          "restore the file, correct its path (relative paths start at files) or remove the row")),
    Case("corrupt_image", manifest_run(edit_files=lambda f: (f / "img" / "s3.png").write_bytes(BROKEN_PNG)),
         "DataError", (f"cannot read image {S3_PHOTO}: ", "; replace the file or remove its row")),
    Case("corrupt_image_in_a_loader_worker",
         manifest_run(edit_files=lambda f: (f / "img" / "s3.png").write_bytes(BROKEN_PNG), num_workers=1),
         "DataError", (f"cannot read image {S3_PHOTO}: ", "; replace the file or remove its row")),
    Case("missing_npy", manifest_run(edit_files=lambda f: (f / "npy" / "s12.npy").unlink()), "DataError",
         ("dataset 'sounds': features file missing: files/npy/s12.npy (manifest files/sounds.csv data row 13 (line "
          "14), id 's12', column 'emb')",
          "restore the file, correct its path (relative paths start at files) or remove the row")),
    Case("npy_of_wrong_shape", manifest_run(edit_files=lambda f: np.save(f / "npy" / "s11.npy", np.zeros(3))),
         "DataError",
         ("dataset 'sounds': features of 'emb' have 3 values in manifest files/sounds.csv data row 12 (line 13), id "
          "'s11', column 'emb'",
          "but 5 in manifest files/sounds.csv data row 1 (line 2), id 's0', column 'emb'",
          "every row's .npy must hold the same number of values: fix or remove that row")),
    Case("corrupt_npy", manifest_run(edit_files=lambda f: (f / "npy" / "s11.npy").write_bytes(b"garbage")),
         "DataError",
         ("cannot read features files/npy/s11.npy (manifest files/sounds.csv data row 12 (line 13), id 's11', column "
          "'emb'): not a .npy file (no NumPy header)", "write it with numpy.save")),
    Case("missing_audio", manifest_run(edit_files=lambda f: (f / "wav" / "s3.wav").unlink()), "DataError",
         ("dataset 'sounds': audio file missing: files/wav/s3.wav (manifest files/sounds.csv data row 4 (line 5), id "
          "'s3', column 'sound')",
          "restore the file, correct its path (relative paths start at files) or remove the row")),
    Case("zero_length_audio", manifest_run(edit_files=lambda f: write_empty_wav(f / "wav" / "s3.wav")), "DataError",
         (f"WAV {S3_SOUND} holds no audio (zero samples)", "replace the file or remove its row")),
    Case("corrupt_audio", manifest_run(edit_files=lambda f: (f / "wav" / "s3.wav").write_bytes(b"RIFF0000WAVEjunk")),
         "DataError",
         (f"cannot read WAV {S3_SOUND}: ",
          "; PCM WAV files (uint8, int16, int24, int32) are supported: convert the file or remove its row")),
    # -- backbones -----------------------------------------------------------------------------------------------------
    Case("unknown_backbone", manifest_run(backbones={"emb": "standardise"}), "ConfigError",
         ("unknown backbone 'standardise' in model.backbones; available: [", "'standardize'")),
    Case("timm_model_does_not_exist", manifest_run(backbones={"photo": {"name": "timm", "model": "resnet10"}}),
         "ConfigError",
         ("timm backbone: timm ", " has no model 'resnet10'",
          "`python -c \"import timm; print(timm.list_models('resnet*'))\"` lists the names")),
    Case("unknown_backbone_option",
         manifest_run(backbones={"photo": {"name": "timm", "model": "resnet10t", "size": 16}}), "ConfigError",
         ("backbone 'timm': unknown options ['size'] in model.backbones",
          "it takes ['model', 'weights', 'channels', 'image_size']")),
]  # fmt: skip


@pytest.fixture
def trained_two_dataset(two_dataset_run) -> Path:
    """``last.ckpt`` of a short run of experiments/two_dataset.yaml, in its own working directory (conftest's)."""
    TRAINED["last"] = two_dataset_run
    return two_dataset_run


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.skip(reason=c.skip)) if c.skip else c for c in CASES], ids=lambda c: c.id
)
def test_bad_input_exits_2_with_one_clear_line(case, tmp_path, monkeypatch, capsys, request):
    ckpt = request.getfixturevalue("trained_two_dataset") if case.setup is foreign_checkpoint else None
    before = files_under(ckpt.parents[1]) if ckpt else None
    monkeypatch.chdir(tmp_path)
    args = case.setup(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("brokenbind: ")]
    assert len(lines) == 1, err  # one line, whatever else a library printed before it
    error, _, message = lines[0].removeprefix("brokenbind: ").partition(": ")
    assert error == case.error, lines[0]
    for fragment in case.says:
        fragment = fragment.replace("{ckpt}", str(ckpt)).replace("{cwd}", str(tmp_path))
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert files_under(tmp_path / "logs") == []  # no run directory left behind
    if ckpt is not None:
        assert files_under(ckpt.parents[1]) == before  # the checkpoint's own run directory is untouched


def test_the_table_covers_the_required_cases():
    assert len(CASES) >= 60 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("method", method_presets())
def test_a_batch_of_one_is_refused_for_every_method(method, tmp_path, monkeypatch, capsys):
    """With one row a batch has no negative: every method's contrastive terms would be exactly 0."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli([*MFEAT, f"--method={method}", "--data.init_args.batch_size=1"])
    assert exit_info.value.code == 2
    assert "brokenbind: ConfigError: data.init_args.batch_size is 1" in capsys.readouterr().err
    assert files_under(tmp_path / "logs") == []
