"""DigitsDataModule: images from load_digits, speech from espeak-ng, text from templates, generated into tmp_path."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from brokenbind.errors import ConfigError, DataError
from datamodules import DigitsDataModule
from datamodules.digits import WORDS
from datamodules.loaders import load_wav

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install -y espeak-ng): the digits audio is synthesised with it",
)
PER_CLASS = 4
DATASETS = {"speech": {"modalities": ["image", "audio"]}, "captions": {"modalities": ["image", "text"]}}
FLOWS = [{"dataset": "captions", "flow": "text->image->audio"}]


def make_digits(cache_dir: Path, **overrides) -> DigitsDataModule:
    args = {
        "cache_dir": str(cache_dir),
        "per_class": PER_CLASS,
        "datasets": DATASETS,
        "pivot": "image",
        "flows": FLOWS,
        "batch_size": 8,
        "image_size": 32,
    }
    return DigitsDataModule(**{**args, **overrides})


def read_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> DigitsDataModule:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
    dm = make_digits(tmp_path_factory.mktemp("digits"))
    dm.prepare_data()
    dm.setup()
    return dm


@needs_espeak
def test_manifests_hold_class_paired_triples(digits):
    images_per_dataset = {}
    for name, path in digits.manifests.items():
        rows = read_rows(path)
        assert len(rows) == 10 * PER_CLASS
        assert {"image", "audio", "text", "label"} <= set(rows[0])
        labels = [int(r["label"]) for r in rows]
        assert np.bincount(labels).tolist() == [PER_CLASS] * 10
        for r in rows:
            digit = int(r["label"])
            assert WORDS[digit] in r["text"] or str(digit) in r["text"]
            assert r["audio"].startswith(f"audio/{WORDS[digit]}_")
            assert load_digits().target[int(r["digits_index"])] == digit  # the image shows the row's digit
        assert len({r["image"] for r in rows}) == len(rows)  # no image repeats within a dataset
        assert len({r["audio"] for r in rows}) == len(rows)  # nor does a clip
        images_per_dataset[name] = {r["image"] for r in rows}
    assert not images_per_dataset["speech"] & images_per_dataset["captions"]  # disjoint while the pool allows


@needs_espeak
def test_images_are_upsampled_grayscale_digits(digits):
    source = load_digits()
    row = read_rows(digits.manifests["speech"])[0]
    with Image.open(digits.cache_dir / row["image"]) as image:
        assert (image.mode, image.size) == ("L", (32, 32))
        back = np.asarray(image.resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
    original = source.images[int(row["digits_index"])]
    assert np.corrcoef(back.ravel(), original.ravel())[0, 1] > 0.9


@needs_espeak
def test_audio_clips_are_spoken_not_silent(digits):
    rows = read_rows(digits.manifests["speech"])
    clips = [load_wav(digits.cache_dir / r["audio"], 16000, 1.0) for r in rows[:: PER_CLASS * 2]]
    for clip in clips:
        assert clip.shape == (16000,)
        assert clip.abs().max().item() > 0.1
        assert clip.pow(2).mean().sqrt().item() > 0.01
    assert not torch.equal(clips[0], clips[1])


@needs_espeak
def test_training_batch_and_modality_info(digits, seeded):
    info = digits.modality_info()
    assert {m: (i.kind, i.shape) for m, i in info.items()} == {
        "audio": ("audio", (16000,)),
        "image": ("image", (1, 32, 32)),
        "text": ("text", None),
    }
    assert {name: {s: len(d) for s, d in splits.items()} for name, splits in digits.splits.items()} == {
        name: {"train": 24, "val": 8, "test": 8} for name in DATASETS
    }
    batch, _, _ = next(iter(digits.train_dataloader()))
    assert batch["speech"]["x"]["audio"].shape == (8, 16000)
    assert batch["speech"]["x"]["image"].shape == (8, 1, 32, 32)
    texts, labels = batch["captions"]["x"]["text"], batch["captions"]["label"]
    assert isinstance(texts, list) and len(texts) == 8
    for text, label in zip(texts, labels.tolist(), strict=True):
        assert WORDS[label] in text or str(label) in text
    test = digits.splits["captions"]["test"]
    assert sorted(test.modalities) == ["audio", "image", "text"]  # the hidden target, for scoring only


@needs_espeak
def test_generation_is_deterministic_and_skips_what_exists(digits, tmp_path):
    manifest = Path(digits.manifests["speech"])
    stamp = manifest.stat().st_mtime_ns
    again = make_digits(digits.cache_dir)
    again.prepare_data()
    assert manifest.stat().st_mtime_ns == stamp  # present: nothing regenerated
    elsewhere = make_digits(tmp_path / "other")
    elsewhere.setup()  # setup alone generates when prepare_data was not called
    for name in DATASETS:
        assert Path(elsewhere.manifests[name]).read_text() == Path(digits.manifests[name]).read_text()
    reseeded = make_digits(digits.cache_dir, split_seed=1)
    assert reseeded.manifests["speech"] != digits.manifests["speech"]


def test_missing_espeak_gives_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr("datamodules.digits.shutil.which", lambda name: None)
    with pytest.raises(DataError, match=r"apt-get install -y espeak-ng"):
        make_digits(tmp_path, per_class=1).prepare_data()


@needs_espeak
def test_unknown_voice_is_reported(tmp_path):
    dm = make_digits(tmp_path, per_class=1, voices=("xx-nonexistent",), speeds=(150,), pitches=(50,), batch_size=2)
    with pytest.raises(DataError, match=r"espeak-ng failed.*xx-nonexistent"):
        dm.prepare_data()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"per_class": 175}, "per_class must lie in [1, 96]"),
        ({"per_class": 0}, "per_class must lie in"),
        ({"per_class": 3, "voices": ("en-us",), "speeds": (150,), "pitches": (40, 60)}, "2 voice × speed × pitch"),
        ({"manifests": {"speech": "x.csv"}}, "derives ['manifests']"),
        ({"pitches": (120,)}, "pitches in 0-99"),
    ],
)
def test_config_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as error:
        make_digits(tmp_path, **overrides)
    assert message in str(error.value)
