"""ManifestDataModule and the per-kind loaders, on small real files (PNG, WAV, .npy, CSV, JSONL) in tmp_path."""

import csv
import json
import os
import warnings
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from brokenbind.errors import ConfigError, DataError
from datamodules import ManifestDataModule
from datamodules.loaders import load_image, load_npy, load_wav

LABELS = ("cat", "dog", "bird")
ROWS = 30  # per dataset: 10 per label, split 18 / 6 / 6
# make_data's clips last 0.2-0.7 s and dm_args loads 0.5 s, so that both the crop and the padding are exercised: the
# warning that clips are cut is right, and beside the point of the tests that use these files
CUT_AUDIO = pytest.mark.filterwarnings(r"ignore:audio 'sound'. \d+ of \d+ clips")  # '.': ':' separates fields
pytestmark = CUT_AUDIO


# -- writing real files ----------------------------------------------------------------------------------------------
def write_png(path: Path, seed: int, mode: str = "RGB", size: tuple[int, int] = (20, 12)) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int = 2) -> Path:
    """``samples`` in [-1, 1], shape (n,) or (n, channels), stored as PCM of ``width`` bytes."""
    samples = samples.reshape(len(samples), -1)
    if width == 1:
        data = np.clip(np.round(samples * 127 + 128), 0, 255).astype(np.uint8)
    elif width == 2:
        data = np.round(samples * 32767).astype("<i2")
    else:
        data = np.round(samples * (2**31 - 1)).astype("<i4")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


def tone(seconds: float, rate: int, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make_data(root: Path) -> dict[str, list[dict]]:
    """Dataset ``captions`` (photo, caption; sound for evaluation) and ``sounds`` (photo, sound, emb), real files."""
    for folder in ("img", "wav", "npy"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    captions, sounds = [], []
    for i in range(ROWS):
        label = LABELS[i % 3]
        # clips of various lengths, rates, widths and channel counts: all must come out 0.5 s at 16 kHz
        rate, width = (8000, 16000, 22050)[i % 3], (1, 2, 4)[i % 3]
        clip = tone(0.2 + 0.1 * (i % 6), rate, hz=200 + 20 * i)
        for prefix in ("c", "s"):
            write_png(root / "img" / f"{prefix}{i}.png", seed=i if prefix == "c" else 100 + i)
            write_wav(root / "wav" / f"{prefix}{i}.wav", np.stack([clip, clip], 1) if i % 2 else clip, rate, width)
        np.save(root / "npy" / f"s{i}.npy", np.full(5, i, dtype=np.float64))
        captions.append(
            {"id": f"c{i}", "photo": f"img/c{i}.png", "caption": f"a {label} number {i}", "sound": f"wav/c{i}.wav",
             "label": label}
        )  # fmt: skip
        sounds.append(
            {"id": f"s{i}", "photo": f"img/s{i}.png", "sound": f"wav/s{i}.wav", "emb": f"npy/s{i}.npy",
             "label": "dog" if label == "cat" else label}
        )  # fmt: skip
    return {"captions": captions, "sounds": sounds}


MODALITIES = {"photo": "image", "caption": "text", "sound": "audio", "emb": "features"}
DATASETS = {"captions": {"modalities": ["photo", "caption"]}, "sounds": {"modalities": ["photo", "sound", "emb"]}}


def dm_args(manifests: dict[str, Path], **overrides) -> dict:
    """ManifestDataModule arguments for the files of ``make_data`` (also the e2e test's data config)."""
    args = {
        "manifests": {k: str(v) for k, v in manifests.items()},
        "modalities": MODALITIES,
        "datasets": DATASETS,
        "pivot": "photo",
        "flows": [{"dataset": "captions", "flow": "caption->photo->sound"}],
        "batch_size": 4,
        "image_size": 16,
        "audio_seconds": 0.5,
    }
    return {**args, **overrides}


def make_dm(manifests: dict[str, Path], **overrides) -> ManifestDataModule:
    return ManifestDataModule(**dm_args(manifests, **overrides))


@pytest.fixture
def data(tmp_path) -> tuple[dict[str, Path], dict[str, list[dict]]]:
    rows = make_data(tmp_path)
    return {name: write_csv(tmp_path / f"{name}.csv", r) for name, r in rows.items()}, rows


@pytest.fixture
def dm(data) -> ManifestDataModule:
    module = make_dm(data[0])
    module.setup()
    return module


# -- items, kinds, shapes --------------------------------------------------------------------------------------------
def test_items_follow_the_value_conventions(dm):
    train = dm.splits["sounds"]["train"]
    item = train[0]
    assert sorted(item["x"]) == ["emb", "photo", "sound"]
    photo, sound, emb = item["x"]["photo"], item["x"]["sound"], item["x"]["emb"]
    assert photo.dtype == torch.float32 and photo.shape == (3, 16, 16)
    assert photo.min() >= 0.0 and photo.max() <= 1.0
    assert sound.dtype == torch.float32 and sound.shape == (8000,)
    assert emb.dtype == torch.float32 and emb.shape == (5,)
    assert item["index"].dtype == torch.int64 and item["label"].dtype == torch.int64
    caption = dm.splits["captions"]["val"][0]["x"]["caption"]
    assert isinstance(caption, str) and caption.startswith("a ")


def test_hidden_target_only_in_evaluation_splits(dm):
    assert sorted(dm.splits["captions"]["train"].modalities) == ["caption", "photo"]
    assert sorted(dm.splits["captions"]["test"].modalities) == ["caption", "photo", "sound"]


def test_cut_clips_are_warned_once_with_their_share(data):
    """The clips of every split that carries audio, 0.2-0.7 s (make_data): those of 0.6 and 0.7 s are cut at 0.5 s;
    the numbers come from the WAV headers (15 of 42 clips, 0.8 of 6.6 s)."""
    module = make_dm(data[0])
    with pytest.warns(UserWarning) as warned:
        module.setup()
        module.setup()
    assert [str(w.message) for w in warned] == [
        "audio 'sound': 15 of 42 clips (36%) last longer than data.init_args.audio_seconds = 0.5 s (default 1.0) and "
        "are cut to their first 0.5 s, dropping 12% of the audio (the longest clip lasts 0.70 s); raise "
        "audio_seconds to keep more (every clip is padded or cut to that length, so time and memory grow with it)"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_dm(data[0], audio_seconds=0.7).setup()  # nothing is cut: no warning


def test_every_clip_has_the_fixed_length(dm):
    for split in dm.splits["sounds"].values():
        lengths = {split[i]["x"]["sound"].shape for i in range(len(split))}
        assert lengths == {(8000,)}


def test_modality_info(dm):
    info = dm.modality_info()
    assert sorted(info) == ["caption", "emb", "photo", "sound"]
    assert (info["photo"].kind, info["photo"].shape, info["photo"].train_inputs) == ("image", (3, 16, 16), None)
    assert (info["sound"].kind, info["sound"].shape, info["sound"].sample_rate) == ("audio", (8000,), 16000)
    assert (info["caption"].kind, info["caption"].shape) == ("text", None)
    assert info["emb"].kind == "features" and info["emb"].shape == (5,)
    assert info["emb"].train_inputs.shape == (len(dm.splits["sounds"]["train"]), 5)
    assert torch.equal(info["emb"].train_inputs, dm.splits["sounds"]["train"].features["emb"])


def test_combined_training_batch_has_text_lists_and_stacked_images(dm, seeded):
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert sorted(batch) == ["captions", "sounds"]
    captions, sounds = batch["captions"], batch["sounds"]
    assert isinstance(captions["x"]["caption"], list) and len(captions["x"]["caption"]) == 4
    assert all(isinstance(c, str) for c in captions["x"]["caption"])
    assert captions["x"]["photo"].shape == (4, 3, 16, 16)
    assert sounds["x"]["sound"].shape == (4, 8000) and sounds["x"]["emb"].shape == (4, 5)
    assert captions["index"].dtype == torch.int64 and captions["index"].shape == (4,)


# -- splits, ids, labels ---------------------------------------------------------------------------------------------
def test_split_is_deterministic_disjoint_and_stratified(data):
    manifests, _ = data
    a, b, c = make_dm(manifests), make_dm(manifests), make_dm(manifests, split_seed=1)
    for module in (a, b, c):
        module.setup()
    for name in ("captions", "sounds"):
        ids = {s: set(a.splits[name][s].index.tolist()) for s in ("train", "val", "test")}
        assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
        assert sum(len(v) for v in ids.values()) == ROWS
        assert {s: len(v) for s, v in ids.items()} == {"train": 18, "val": 6, "test": 6}
        every = np.bincount(torch.cat([d.label for d in a.splits[name].values()]).numpy(), minlength=3)
        for s, fraction in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert torch.equal(a.splits[name][s].index, b.splits[name][s].index)
            counts = np.bincount(a.splits[name][s].label.numpy(), minlength=3)
            assert counts.tolist() == (every * fraction).round().astype(int).tolist()  # stratified by label
    assert not torch.equal(a.splits["captions"]["train"].index, c.splits["captions"]["train"].index)
    everything = torch.cat([d.index for splits in a.splits.values() for d in splits.values()])
    assert len(torch.unique(everything)) == len(everything) == 2 * ROWS  # unique across datasets and splits


def test_split_column_is_respected_and_unknown_values_rejected(tmp_path, data):
    manifests, rows = data
    rows = {name: [dict(r) for r in r_] for name, r_ in rows.items()}
    for dataset_rows in rows.values():
        for i, row in enumerate(dataset_rows):
            row["split"] = ("train", "train", "train", "val", "test")[i % 5]
    manifests = {name: write_csv(tmp_path / f"{name}_split.csv", r) for name, r in rows.items()}
    module = make_dm(manifests)
    module.setup()
    assert module.splits["captions"]["val"].index.tolist() == [i for i in range(ROWS) if i % 5 == 3]
    rows["sounds"][7]["split"] = "validation"
    manifests["sounds"] = write_csv(tmp_path / "sounds_split.csv", rows["sounds"])
    with pytest.raises(DataError, match=r"data row 8 \(line 9\): unknown split value 'validation'"):
        make_dm(manifests).setup()


def test_string_labels_map_to_sorted_ints_consistently_across_datasets(dm):
    # captions holds cat, dog, bird; sounds holds dog, bird: one mapping over both, sorted: bird 0, cat 1, dog 2
    first = dm.splits["captions"]["train"]
    for i in range(len(first)):
        label = first.table.manifest.cell(int(first.rows[i]), "label")
        assert first.label[i].item() == {"bird": 0, "cat": 1, "dog": 2}[label]
    sounds = torch.cat([d.label for d in dm.splits["sounds"].values()])
    assert sorted(set(sounds.tolist())) == [0, 2]


def test_integer_labels_are_kept_and_missing_labels_are_minus_one(tmp_path, data):
    _, rows = data
    numbered = [{**r, "label": str(3 * (i % 2))} for i, r in enumerate(rows["captions"])]
    unlabelled = [{k: v for k, v in r.items() if k != "label"} for r in rows["sounds"]]
    module = make_dm(
        {"captions": write_csv(tmp_path / "n.csv", numbered), "sounds": write_csv(tmp_path / "u.csv", unlabelled)}
    )
    module.setup()
    assert set(torch.cat([d.label for d in module.splits["captions"].values()]).tolist()) == {0, 3}
    assert set(torch.cat([d.label for d in module.splits["sounds"].values()]).tolist()) == {-1}


MISSING_SPELLINGS = ["", "N/A", "NA", "null", "NaN", "None", "n/a", "<NA>"]


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_missing_value_spellings_are_unlabelled_and_whole_floats_are_ids(tmp_path, data, form):
    """What a spreadsheet or pandas writes for a missing label is an unlabelled row in every format; an integer
    column with a missing value, which pandas stores as floats (CSV "2.0", Parquet 2.0 and null), keeps its ids."""
    _, rows = data
    labels = [str(i % 3) + ".0" for i in range(len(rows["captions"]))]
    for i, spelling in enumerate(MISSING_SPELLINGS):
        labels[3 * i] = spelling
    captions = [{**r, "label": label} for r, label in zip(rows["captions"], labels, strict=True)]
    sounds = [{**r, "label": str(i % 2)} for i, r in enumerate(rows["sounds"])]
    if form == "csv":
        manifests = {"captions": write_csv(tmp_path / "c.csv", captions)}
        manifests["sounds"] = write_csv(tmp_path / "s.csv", sounds)
    else:  # typed columns, as pandas writes them: float labels with nulls, int labels
        frame = pd.DataFrame(captions)
        frame["label"] = [None if v in MISSING_SPELLINGS else float(v) for v in labels]
        frame.to_parquet(tmp_path / "c.parquet")
        typed = pd.DataFrame(sounds).astype({"label": "int64"})
        typed.to_parquet(tmp_path / "s.parquet")
        manifests = {"captions": tmp_path / "c.parquet", "sounds": tmp_path / "s.parquet"}
    module = make_dm(manifests)
    module.setup()
    got = {}
    for split in module.splits["captions"].values():
        for position, label in zip(split.rows.tolist(), split.label.tolist(), strict=True):
            got[position] = label
    expected = {i: -1 if label in MISSING_SPELLINGS else int(float(label)) for i, label in enumerate(labels)}
    assert got == expected
    assert sorted(set(torch.cat([d.label for d in module.splits["sounds"].values()]).tolist())) == [0, 1]


def test_jsonl_and_csv_manifests_give_the_same_items(tmp_path, data):
    manifests, rows = data
    jsonl = {name: write_jsonl(tmp_path / f"{name}.jsonl", r) for name, r in rows.items()}
    from_csv, from_jsonl = make_dm(manifests), make_dm(jsonl)
    from_csv.setup()
    from_jsonl.setup()
    for name, splits in from_csv.splits.items():
        for split, dataset in splits.items():
            other = from_jsonl.splits[name][split]
            assert len(dataset) == len(other)
            for i in range(len(dataset)):
                x, y = dataset[i], other[i]
                assert x["index"] == y["index"] and x["label"] == y["label"]
                for m, value in x["x"].items():
                    assert value == y["x"][m] if isinstance(value, str) else torch.equal(value, y["x"][m])


def test_relative_paths_resolve_against_root(tmp_path, data):
    _, rows = data
    elsewhere = tmp_path / "manifests"
    elsewhere.mkdir()
    manifests = {name: write_csv(elsewhere / f"{name}.csv", r) for name, r in rows.items()}
    with pytest.raises(DataError, match="file missing"):  # default: relative to the manifest's directory
        make_dm(manifests).setup()
    module = make_dm(manifests, root=str(tmp_path))
    module.setup()
    assert len(module.splits["sounds"]["train"]) == 18


# -- errors ----------------------------------------------------------------------------------------------------------
def test_missing_file_is_named_with_its_row(tmp_path, data):
    manifests, _ = data
    os.remove(tmp_path / "wav" / "s7.wav")
    with pytest.raises(DataError) as error:
        make_dm(manifests).setup()
    message = str(error.value)
    assert str(tmp_path / "wav" / "s7.wav") in message
    assert "row 8" in message and "id 's7'" in message and "sounds.csv" in message


def test_corrupt_png_names_file_and_row(tmp_path, data):
    manifests, _ = data
    (tmp_path / "img" / "c29.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    module = make_dm(manifests)
    module.setup()  # files are read lazily: the corrupt one is found when its item is loaded
    split = next(s for s in module.splits["captions"].values() if 29 in s.rows.tolist())
    with pytest.raises(DataError) as error:
        split[split.rows.tolist().index(29)]
    assert "cannot read image" in str(error.value)
    assert str(tmp_path / "img" / "c29.png") in str(error.value) and "data row 30 (line 31), id 'c29'" in str(
        error.value
    )


def test_missing_modality_column(tmp_path, data):
    _, rows = data
    no_caption = [{k: v for k, v in r.items() if k != "caption"} for r in rows["captions"]]
    manifests = {
        "captions": write_csv(tmp_path / "c.csv", no_caption),
        "sounds": write_csv(tmp_path / "s.csv", rows["sounds"]),
    }
    with pytest.raises(ConfigError, match=r"dataset 'captions': manifest .*c\.csv has no column 'caption'"):
        make_dm(manifests).setup()


def test_empty_cell_of_an_observed_modality_in_a_train_row(tmp_path, data):
    manifests, rows = data
    module = make_dm(manifests)
    module.setup()
    row = int(module.splits["captions"]["train"].rows[0])
    broken = [dict(r) for r in rows["captions"]]
    broken[row]["caption"] = ""
    manifests["captions"] = write_csv(tmp_path / "captions.csv", broken)
    empty = rf"data row {row + 1} \(line {row + 2}\), id 'c{row}': modality 'caption' is empty"
    with pytest.raises(DataError, match=empty + ".*; fill in the cell or remove the row$"):
        make_dm(manifests).setup()


def test_duplicate_ids(tmp_path, data):
    manifests, rows = data
    duplicated = [dict(r) for r in rows["sounds"]]
    duplicated[9]["id"] = "s2"
    manifests["sounds"] = write_csv(tmp_path / "sounds.csv", duplicated)
    with pytest.raises(DataError, match=r"duplicate id 's2' in data row 3 \(line 4\) and data row 10 \(line 11\)$"):
        make_dm(manifests).setup()


def test_missing_manifest(tmp_path, data):
    manifests, _ = data
    with pytest.raises(DataError, match="manifest not found"):
        make_dm({**manifests, "sounds": tmp_path / "nowhere.csv"}).setup()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"modalities": {**MODALITIES, "emb": "video"}}, "unknown kind 'video'"),
        ({"modalities": {**MODALITIES, "label": "text"}}, "are reserved"),
        ({"manifests": {"captions": "a.csv"}}, "missing ['sounds']"),
        ({"image_channels": 2}, "image_channels must be 1, 3 or None"),
        ({"split_fractions": (0.5, 0.5)}, "split_fractions must be three"),
        ({"datasets": {**DATASETS, "sounds": {"modalities": ["photo", "smell"]}}}, "unknown modalities ['smell']"),
    ],
)
def test_config_errors(data, overrides, message):
    overrides = dict(overrides)
    with pytest.raises(ConfigError) as error:
        make_dm(overrides.pop("manifests", data[0]), **overrides)
    assert message in str(error.value)


# -- fingerprint -----------------------------------------------------------------------------------------------------
def test_fingerprint_changes_when_a_referenced_file_changes(tmp_path, data):
    manifests, rows = data
    module = make_dm(manifests)
    before = {s: module.fingerprint("sounds", s) for s in ("train", "val", "test")}
    assert before == {s: make_dm(manifests).fingerprint("sounds", s) for s in ("train", "val", "test")}
    assert len(set(before.values())) == 3
    row = int(module.tables()["sounds"].rows("test")[0])
    path = tmp_path / "wav" / f"s{row}.wav"
    stat = path.stat()
    write_wav(path, tone(0.9, 16000, hz=880), 16000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = {s: make_dm(manifests).fingerprint("sounds", s) for s in ("train", "val", "test")}
    assert after["test"] != before["test"]
    assert after["train"] == before["train"]  # the file is not referenced by the training rows
    changed = [dict(r) for r in rows["sounds"]]
    changed[0]["label"] = "bird" if changed[0]["label"] != "bird" else "dog"
    write_csv(manifests["sounds"], changed)
    assert make_dm(manifests).fingerprint("sounds", "train") != after["train"]  # the manifest itself changed


# -- loaders ---------------------------------------------------------------------------------------------------------
def test_wav_formats_resampling_and_fixed_length(tmp_path):
    half = np.full(4000, 0.5, dtype=np.float32)
    for width in (1, 2, 4):
        stereo = write_wav(tmp_path / f"w{width}.wav", np.stack([half, -half / 2], 1), 8000, width)
        wave_ = load_wav(stereo, sample_rate=16000, seconds=1.0)
        assert wave_.shape == (16000,) and wave_.dtype == torch.float32
        assert wave_[:7990].mean().item() == pytest.approx(0.125, abs=0.01)  # mean of 0.5 and -0.25, resampled ×2
        assert torch.all(wave_[8000:] == 0)  # 0.5 s of audio, zero-padded at the end
    long = write_wav(tmp_path / "long.wav", tone(2.0, 22050), 22050)
    cropped = load_wav(long, sample_rate=16000, seconds=0.25)
    assert cropped.shape == (4000,)
    assert np.allclose(cropped.numpy(), tone(0.25, 16000), atol=0.01)  # linear interpolation of a 440 Hz tone


def test_image_channels_and_scaling(tmp_path):
    gray = write_png(tmp_path / "g.png", 0, mode="L", size=(8, 8))
    rgb = write_png(tmp_path / "c.png", 1, mode="RGB", size=(30, 10))
    assert load_image(gray, None, 8).shape == (1, 8, 8)
    assert load_image(gray, 3, 4).shape == (3, 4, 4)
    assert load_image(rgb, 1, (5, 15)).shape == (1, 5, 15)
    exact = load_image(gray, None, 8)
    assert torch.allclose(exact[0] * 255, torch.from_numpy(np.asarray(Image.open(gray), dtype=np.float32)))
    depth = tmp_path / "depth.png"
    Image.fromarray(np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)).save(depth)
    value = load_image(depth, None, 2)
    assert value.shape == (1, 2, 2) and value.max().item() == 1.0 and value.min().item() == 0.0


def test_first_training_file_decides_channels_and_other_files_follow(tmp_path, data):
    manifests, rows = data
    for name in ("captions", "sounds"):
        for r in rows[name]:
            write_png(tmp_path / r["photo"], 5, mode="L")
    write_png(tmp_path / rows["sounds"][0]["photo"], 6, mode="RGB")  # one colour file among gray ones
    module = make_dm(manifests)
    module.setup()
    assert module.modality_info()["photo"].shape == (1, 16, 16)
    assert {d[i]["x"]["photo"].shape[0] for d in module.splits["sounds"].values() for i in range(len(d))} == {1}
    forced = make_dm(manifests, image_channels=3)
    forced.setup()
    assert forced.modality_info()["photo"].shape == (3, 16, 16)


def test_corrupt_wav_and_npy(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    with pytest.raises(DataError, match=r"cannot read WAV .*bad\.wav \(manifest x row 3\)"):
        load_wav(bad, 16000, 1.0, context="manifest x row 3")
    npy = tmp_path / "bad.npy"
    npy.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read features .*bad\.npy"):
        load_npy(npy)
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan]))
    with pytest.raises(DataError, match="NaN"):
        load_npy(tmp_path / "nan.npy")
    with pytest.raises(DataError, match=r"file missing: .*absent\.wav \(row 9\)"):
        load_wav(tmp_path / "absent.wav", 16000, 1.0, context="row 9")
