"""``brokenbind embed``: encode a user's manifests once with the frozen backbones (EfficientNet-Lite0, MiniLM), then
train on the arrays through the CLI; a stopped encode continues where it stopped; a mismatched reuse is refused."""

import csv
import os
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
    assert "stopped by SIGTERM after encoding 4 rows" in capsys.readouterr().err
    todo = np.load("stopped/captions/caption.todo.npy")
    assert todo.sum() == len(todo) - 4 and not todo[:4].any()  # loader order: the first batch is rows 0-3
    assert not yaml.safe_load(Path("stopped/embed.yaml").read_text())["datasets"]["captions"]["caption"]["complete"]

    assert brokenbind(monkeypatch, "embed", "--config", path, "--out", "stopped") == 0
    assert brokenbind(monkeypatch, "embed", "--config", path, "--out", "whole") == 0
    for name in ("captions/caption", "captions/photo", "sounds/photo"):
        np.testing.assert_array_equal(np.load(f"stopped/{name}.npy"), np.load(f"whole/{name}.npy"))
    assert not list((path.parent / "stopped").rglob("*.todo.npy"))

    # a finished encode is not redone (from Python: the library call behind the command)
    capsys.readouterr()
    again = embed(path, "whole")
    assert again.complete and again.rows_encoded == 0
    assert "captions/photo: 30 x 1280 float32 in whole/captions/photo.npy (complete)" in capsys.readouterr().out


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
