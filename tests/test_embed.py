"""``brokenbind embed``: encode a user's manifests once with the frozen backbones (EfficientNet-Lite0, MiniLM), then
train on the arrays through the CLI; a stopped encode continues where it stopped, and a fit refuses its arrays until
then; a mismatched reuse, a directory of other files and an experiment without files to encode are refused."""

import csv
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from brokenbind.backbones import build_backbone
from brokenbind.cli import main
from brokenbind.embed import ArrayWriter, embed
from datamodules import ManifestDataModule

from .test_manifest import dm_args, make_data, write_csv
from .test_shards import SPLIT_OF_ROW, shard_args, write_shards

IMAGE = {"name": "timm", "model": "tf_efficientnet_lite0", "weights": "efficientnet_lite0_wheel", "image_size": 32}
ROOT = Path(__file__).resolve().parents[1]


def brokenbind(monkeypatch, *args: str) -> int:
    """``brokenbind ARGS`` through the console entry point; its exit code."""
    monkeypatch.setattr(sys, "argv", ["brokenbind", *map(str, args)])
    try:
        main()
    except SystemExit as stop:
        return stop.code
    return 0


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """A user's manifests (captions: photo, caption; sounds: photo, sound, emb) and an experiment over them."""
    monkeypatch.chdir(tmp_path)
    rows = make_data(tmp_path / "files")
    manifests = {name: write_csv(tmp_path / "files" / f"{name}.csv", r) for name, r in rows.items()}
    config = {
        "data": {
            "class_path": "datamodules.ManifestDataModule",
            "init_args": dm_args(manifests, batch_size=6, eval_batch_size=4, image_size=32, audio_seconds=0.7),
        },
        "model": {"backbones": {"photo": IMAGE, "caption": "minilm", "sound": "logmel_cnn", "emb": "standardize"}},
        "trainer": {"max_epochs": 2, "enable_progress_bar": False},
    }
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


def results(path: str) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def files_under(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.filterwarnings("ignore:embeddings of modality")  # two epochs on six rows: the collapse alarm is right
def test_embed_writes_the_arrays_of_the_frozen_backbones_and_fit_trains_on_them(experiment, monkeypatch, capsys):
    path, config = experiment
    assert brokenbind(monkeypatch, "embed", "--config", path, "--out", "emb") == 0
    printed = capsys.readouterr().out
    assert "sound: not encoded (its backbone trains" in printed
    assert "emb: not encoded (a features modality is features already)" in printed
    arrays = yaml.safe_load(printed[printed.index("\narrays:") :])["arrays"]
    encoded = {"captions": ["caption", "photo"], "sounds": ["photo"]}
    assert arrays == {
        name: {m: {"path": f"emb/{name}/{m}.npy", "ids": f"emb/{name}/{m}_ids.txt"} for m in modalities}
        for name, modalities in encoded.items()
    }
    record = yaml.safe_load(Path("emb/embed.yaml").read_text())["datasets"]
    assert record["captions"]["photo"]["complete"] and record["captions"]["photo"]["width"] == 1280
    assert not list((experiment[0].parent / "emb").rglob("*.todo.npy"))

    # every array row is its backbone's output on that manifest row, named by the manifest's id
    dm = ManifestDataModule(**config["data"]["init_args"])
    dm.setup()
    info = dm.modality_info()
    specs = {"photo": IMAGE, "caption": "minilm"}
    for dataset, modality in [("captions", "photo"), ("sounds", "photo"), ("captions", "caption")]:
        table = dm.tables()[dataset]
        ids = Path(f"emb/{dataset}/{modality}_ids.txt").read_text().split()
        assert ids == [c.strip() for c in table.manifest.column("id")]
        data = dm.load_rows(dataset, np.arange(len(ids)), [modality])
        inputs = [data.load(modality, i) for i in range(len(ids))]
        with torch.no_grad():
            backbone = build_backbone(specs[modality], info[modality])
            expected = backbone(torch.stack(inputs) if modality == "photo" else inputs)
        np.testing.assert_allclose(np.load(f"emb/{dataset}/{modality}.npy"), expected.numpy(), rtol=1e-4, atol=1e-5)
    # the manifests keep each row's split and label, and the raw modalities' files as absolute paths
    written = results("emb/captions/manifest.csv")
    table = dm.tables()["captions"]
    assert [r["split"] for r in written] == list(table.splits)
    assert [r["label"] for r in written] == [c for c in table.manifest.column("label")]
    assert [r["sound"] for r in written] == [str(p.resolve()) for p in table.paths["sound"]]

    # the experiment trained on the arrays scores exactly as the one that encodes in the run (the same fp32 features)
    assert brokenbind(monkeypatch, "fit", "--config", path) == 0
    on_arrays = ["--config", "emb/arrays.yaml", "--experiment", "arrays"]
    assert brokenbind(monkeypatch, "fit", "--config", path, *on_arrays) == 0
    direct, trained = results("logs/mine/version_0/results.csv"), results("logs/arrays/version_0/results.csv")
    assert [r["stage"] for r in trained] == ["val", "test"]
    metrics = ("map_instance", "map_class", "r1", "r5", "r10")
    assert [[r[k] for k in metrics] for r in trained] == [[r[k] for k in metrics] for r in direct]


def test_a_stopped_embed_continues_and_ends_as_an_uninterrupted_one(experiment, monkeypatch, capsys):
    path, _ = experiment
    write = ArrayWriter.write_on_batch_end

    def stop_after_first_batch(self, trainer, *args, **kwargs):
        if self.rows_encoded == 0:  # a preemption arrives while the first batch (eval_batch_size 4) is encoded
            os.kill(os.getpid(), signal.SIGTERM)
        write(self, trainer, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ArrayWriter, "write_on_batch_end", stop_after_first_batch)
        assert brokenbind(monkeypatch, "embed", "--config", path, "--out", "stopped") == 128 + signal.SIGTERM
    command = shlex.join(["brokenbind", "embed", "--config", str(path), "--out", "stopped"])
    stopped = f"brokenbind: stopped by SIGTERM after encoding 4 rows into stopped; resume with `{command}`"
    assert stopped in capsys.readouterr().err.splitlines()
    todo = np.load("stopped/captions/caption.todo.npy")
    assert todo.sum() == len(todo) - 4 and not todo[:4].any()  # loader order: the first batch is rows 0-3
    assert not yaml.safe_load(Path("stopped/embed.yaml").read_text())["datasets"]["captions"]["caption"]["complete"]

    # a fit on the unfinished arrays (zeros where not encoded yet) is refused, naming the command that finishes them
    on_arrays = ["--config", path, "--config", "stopped/arrays.yaml", "--trainer.fast_dev_run=true"]
    assert brokenbind(monkeypatch, "fit", *on_arrays) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "brokenbind: DataError: data.init_args.arrays.captions.caption: stopped/captions/caption.npy is unfinished: "
        f"brokenbind embed was stopped before it encoded every row ({Path.cwd() / 'stopped' / 'embed.yaml'} records "
        f"it incomplete), and the rows not encoded yet are zeros. Finish it: run `{command}` again in {Path.cwd()} (it "
        "keeps the rows already encoded), then train"
    )
    assert not Path("logs").exists()  # the refused start left no run directory

    assert brokenbind(monkeypatch, "embed", "--config", path, "--out", "stopped") == 0
    assert brokenbind(monkeypatch, "fit", *on_arrays) == 0
    assert brokenbind(monkeypatch, "embed", "--config", path, "--out", "whole") == 0
    for name in ("captions/caption", "captions/photo", "sounds/photo"):
        np.testing.assert_array_equal(np.load(f"stopped/{name}.npy"), np.load(f"whole/{name}.npy"))
    assert not list((path.parent / "stopped").rglob("*.todo.npy"))

    # a finished encode is not redone (from Python: the library call behind the command)
    capsys.readouterr()
    again = embed(path, "whole")
    assert again.complete and again.rows_encoded == 0
    assert "captions/photo: 30 x 1280 float32 in whole/captions/photo.npy (complete)" in capsys.readouterr().out


@pytest.fixture
def terminal_ctrl_c():
    """Python's own Ctrl-C handler, as in a terminal, whatever launched pytest (a background job ignores SIGINT)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("terminal_ctrl_c")
def test_ctrl_c_stops_an_embed_with_exit_code_130_and_the_same_command_continues(experiment, monkeypatch, capsys):
    path, _ = experiment
    encode = ["embed", "--config", path, "--modalities=[caption]", "--out"]
    write = ArrayWriter.write_on_batch_end

    def ctrl_c_at_second_batch(self, trainer, *args, **kwargs):
        if self.rows_encoded == 4:  # KeyboardInterrupt at once: the first batch is written, the second is not
            os.kill(os.getpid(), signal.SIGINT)
        write(self, trainer, *args, **kwargs)

    handler = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as patch:
        patch.setattr(ArrayWriter, "write_on_batch_end", ctrl_c_at_second_batch)
        assert brokenbind(monkeypatch, *encode, "stopped") == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning set it to ignore Ctrl-C; embed gives it back
    command = shlex.join(["brokenbind", "embed", "--config", str(path), "--modalities=[caption]", "--out", "stopped"])
    stopped = f"brokenbind: stopped by SIGINT after encoding 4 rows into stopped; resume with `{command}`"
    assert stopped in capsys.readouterr().err.splitlines()
    todo = np.load("stopped/captions/caption.todo.npy")
    assert todo.sum() == len(todo) - 4 and not todo[:4].any()

    assert brokenbind(monkeypatch, *encode, "stopped") == 0
    assert brokenbind(monkeypatch, *encode, "whole") == 0
    np.testing.assert_array_equal(np.load("stopped/captions/caption.npy"), np.load("whole/captions/caption.npy"))
    assert not list((path.parent / "stopped").rglob("*.todo.npy"))


def test_reusing_an_output_directory_with_another_encoder_or_dtype_is_refused(experiment, monkeypatch, capsys):
    path, _ = experiment
    encode = ["embed", "--config", path, "--out", "emb"]
    assert brokenbind(monkeypatch, *encode, "--modalities=[caption]") == 0
    before = np.load("emb/captions/caption.npy")
    assert brokenbind(monkeypatch, *encode, "--modalities=[caption]", "--dtype=float16") == 2
    assert "emb/captions/caption.npy was encoded with other settings: dtype differ" in capsys.readouterr().err
    bigger = f"--model.backbones.photo={yaml.safe_dump({**IMAGE, 'image_size': 48}, default_flow_style=True)}"
    assert brokenbind(monkeypatch, *encode, "--modalities=[photo]") == 0
    assert brokenbind(monkeypatch, *encode, "--modalities=[photo]", bigger) == 2
    refused = "emb/captions/photo.npy was encoded with other settings: backbone, fingerprint differ"
    assert refused in capsys.readouterr().err
    np.testing.assert_array_equal(np.load("emb/captions/caption.npy"), before)

    # OUT is this experiment's: another experiment file, or another layer on top of this one, is refused untouched
    written = files_under(Path("emb"))
    Path("theirs.yaml").write_text(path.read_text())
    Path("more.yaml").write_text("trainer: {max_epochs: 3}\n")
    for configs in (["theirs.yaml"], [path, "more.yaml"]):
        given = [a for config in configs for a in ("--config", config)]
        assert brokenbind(monkeypatch, "embed", *given, "--out", "emb", "--modalities=[caption]") == 2
        this_run = ", ".join(str(Path(config).resolve()) for config in configs)
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"brokenbind: ConfigError: --out emb is the embed output of another experiment: emb/embed.yaml names "
            f"{path.resolve()}, this run {this_run}; its arrays.yaml and manifests are that experiment's. Name another "
            "--out for this one (or delete emb to encode this one there)"
        )
    assert files_under(Path("emb")) == written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--modalities=[sound]"], "--modalities: 'sound' cannot be encoded once: its backbone trains"),
        (["--modalities=[nope]"], "--modalities: no dataset uses ['nope']"),
        (["--dtype=int8"], "dtype"),
    ],
)
def test_embed_refuses_what_it_cannot_encode(experiment, monkeypatch, capsys, args, message):
    path, _ = experiment
    assert brokenbind(monkeypatch, "embed", "--config", path, "--out", "emb", *args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (
            "emb",
            "--out emb holds files that brokenbind embed did not write (arrays.yaml, captions, notes.txt; no "
            "embed.yaml of its own), and embed would replace any <dataset>/manifest.csv and arrays.yaml there; name a "
            "new or empty directory for the arrays",
        ),
        ("emb/notes.txt", "--out emb/notes.txt: emb/notes.txt is a file, not a directory; name a directory for the "
         "arrays (it is created if missing)"),
        ("emb/notes.txt/arrays", "--out emb/notes.txt/arrays: emb/notes.txt is a file, not a directory; name a "
         "directory for the arrays (it is created if missing)"),
    ],
)  # fmt: skip
def test_embed_refuses_an_out_of_other_files_and_writes_nothing(experiment, monkeypatch, capsys, out, message):
    path, _ = experiment
    mine = {"captions/manifest.csv": "id,label\nx,1\n", "arrays.yaml": "data: {}\n", "notes.txt": "my notes\n"}
    for name, text in mine.items():
        (Path("emb") / name).parent.mkdir(parents=True, exist_ok=True)
        (Path("emb") / name).write_text(text)
    before = files_under(path.parent)
    assert brokenbind(monkeypatch, "embed", "--config", path, "--out", out) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"brokenbind: ConfigError: {message}"
    assert files_under(path.parent) == before


def test_embed_of_an_experiment_without_files_to_encode_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert brokenbind(monkeypatch, "embed", "--config", ROOT / "experiments" / "two_dataset.yaml", "--out", "emb") == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "brokenbind" in line or "Union" in line] == [
        "brokenbind: ConfigError: data.class_path is MfeatDataModule, which holds its inputs in memory as features "
        "already: brokenbind embed encodes the files of a ManifestDataModule (manifests, shards, the built-in "
        "digits); train this experiment with brokenbind fit as it is"
    ]
    assert not Path("emb").exists()


class ClipEnergy(torch.nn.Module):
    """A frozen audio encoder without weights that names its function (so embed may store its output): the energy of
    each of 16 stretches of a clip."""

    out_dim = 16

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return clips.flatten(1).unflatten(1, (16, -1)).square().mean(-1)

    def fingerprint(self) -> str:
        return "clip-energy-16"


@pytest.fixture
def shards(tmp_path, monkeypatch) -> tuple[dict[str, list[dict]], dict]:
    """``make_data``'s rows as shards (captions: photo, caption; sounds: photo, sound) and ShardDataModule's args."""
    monkeypatch.chdir(tmp_path)
    rows = make_data(tmp_path)
    for dataset_rows in rows.values():
        for i, row in enumerate(dataset_rows):
            row["split"] = SPLIT_OF_ROW[i % 5]
    datasets = {"captions": {"modalities": ["photo", "caption"]}, "sounds": {"modalities": ["photo", "sound"]}}
    return rows, shard_args(write_shards(tmp_path, rows), datasets=datasets, eval_batch_size=4, audio_seconds=0.8)


@pytest.mark.filterwarnings("ignore:embeddings of modality")
def test_shards_are_encoded_and_the_arrays_train_as_the_shards_do(shards, monkeypatch):
    rows, args = shards
    sound = {"name": "import", "class_path": "tests.test_embed.ClipEnergy", "init_args": {}}
    config = {
        "data": {"class_path": "datamodules.ShardDataModule", "init_args": args},
        "model": {"backbones": {"photo": IMAGE, "caption": "minilm", "sound": sound}},
        "trainer": {"max_epochs": 2, "enable_progress_bar": False},
    }
    Path("shards.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert brokenbind(monkeypatch, "embed", "--config", "shards.yaml", "--out", "emb") == 0
    ids = Path("emb/sounds/sound_ids.txt").read_text().split()
    assert sorted(ids) == sorted(r["id"] for r in rows["sounds"])  # the shard keys
    assert brokenbind(monkeypatch, "fit", "--config", "shards.yaml") == 0
    on_arrays = ["--config", "emb/arrays.yaml", "--experiment", "arrays"]
    assert brokenbind(monkeypatch, "fit", "--config", "shards.yaml", *on_arrays) == 0
    direct, trained = results("logs/shards/version_0/results.csv"), results("logs/arrays/version_0/results.csv")
    metrics = ("map_instance", "map_class", "r1", "r5", "r10")
    assert [[r[k] for k in metrics] for r in trained] == [[r[k] for k in metrics] for r in direct]


def test_a_shard_modality_left_raw_is_refused(shards, monkeypatch, capsys):
    config = {
        "data": {"class_path": "datamodules.ShardDataModule", "init_args": shards[1]},
        "model": {"backbones": {"photo": IMAGE, "caption": "minilm", "sound": "logmel_cnn"}},
    }
    Path("shards.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert brokenbind(monkeypatch, "embed", "--config", "shards.yaml", "--out", "emb") == 2
    assert "modality 'sound' is read from shards and is not encoded" in capsys.readouterr().err


def test_arrays_the_experiment_reads_already_stay_in_the_config_layer(experiment, monkeypatch):
    _, config = experiment
    sounds = Path(config["data"]["init_args"]["manifests"]["sounds"])
    manifest = pd.read_csv(sounds, dtype=str)
    np.save("emb_rows.npy", np.stack([np.load(sounds.parent / cell) for cell in manifest["emb"]]))
    manifest.drop(columns="emb").to_csv(sounds, index=False)  # emb now comes from the array, row i = manifest row i
    init_args = {**config["data"]["init_args"], "arrays": {"sounds": {"emb": "emb_rows.npy"}}}
    Path("given.yaml").write_text(yaml.safe_dump({**config, "data": {**config["data"], "init_args": init_args}}))
    assert brokenbind(monkeypatch, "embed", "--config", "given.yaml", "--out", "emb", "--modalities=[caption]") == 0
    layer = yaml.safe_load(Path("emb/arrays.yaml").read_text())
    assert layer["data"]["init_args"]["arrays"]["sounds"] == {"emb": {"path": str(Path("emb_rows.npy").resolve())}}
    assert "emb" not in results("emb/sounds/manifest.csv")[0]
    on_arrays = ["--config", "emb/arrays.yaml", "--trainer.fast_dev_run=true"]
    assert brokenbind(monkeypatch, "fit", "--config", "given.yaml", *on_arrays) == 0


@pytest.mark.slow
def test_embed_under_ddp_splits_the_rows_and_writes_what_one_process_writes(experiment, monkeypatch):
    path, _ = experiment
    assert brokenbind(monkeypatch, "embed", "--config", path, "--out", "one") == 0
    command = [sys.executable, "-m", "brokenbind.cli", "embed", "--config", str(path), "--out", "two",
               "--hardware", "ddp_cpu", "--trainer.enable_progress_bar=false"]  # fmt: skip
    done = subprocess.run(command, cwd=path.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("(complete)") == 3  # global rank 0 reports
    for name in ("captions/caption", "captions/photo", "sounds/photo"):  # batches of other rows: float rounding
        np.testing.assert_allclose(np.load(f"two/{name}.npy"), np.load(f"one/{name}.npy"), rtol=1e-4, atol=1e-5)
    assert not list((path.parent / "two").rglob("*.todo.npy"))
