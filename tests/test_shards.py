"""WebDataset tar shards: the same instances as manifests, read by offset from tar members, validated the same way,
trained through the CLI."""

import io
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from brokenbind.cli import cli
from brokenbind.errors import ConfigError, DataError
from datamodules import ManifestDataModule, ShardDataModule
from datamodules.shards import expand

from .test_manifest import CUT_AUDIO, dm_args, make_data, write_csv

pytestmark = CUT_AUDIO

SPLIT_OF_ROW = ("train", "train", "train", "val", "test")
EXT = {"photo": "png", "sound": "wav", "emb": "npy"}


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, rows: dict[str, list[dict]], per_shard: int = 8, skip: tuple = ()) -> dict:
    """Each dataset's rows as WebDataset shards ``<name>-<split>-NNN.tar`` (members ``<id>.<modality>.<ext>``,
    ``<id>.cls``); returns the ``shards`` option, per split. ``skip`` lists (id, modality) members to leave out."""
    shards = {}
    for name, dataset_rows in rows.items():
        shards[name] = {}
        for split in ("train", "val", "test"):
            split_rows = [r for i, r in enumerate(dataset_rows) if SPLIT_OF_ROW[i % 5] == split]
            for start in range(0, len(split_rows), per_shard):
                path = root / f"{name}-{split}-{start // per_shard:03d}.tar"
                with tarfile.open(path, "w") as tar:
                    for row in split_rows[start : start + per_shard]:
                        for column, value in row.items():
                            if column in ("id", "label") or (row["id"], column) in skip:
                                continue
                            if column in EXT:
                                add(tar, f"{row['id']}.{column}.{EXT[column]}", (root / value).read_bytes())
                            else:
                                add(tar, f"{row['id']}.{column}.txt", value.encode())
                        add(tar, f"{row['id']}.cls", row["label"].encode())
            shards[name][split] = f"{root}/{name}-{split}-{{000..{(len(split_rows) - 1) // per_shard:03d}}}.tar"
    return shards


def shard_args(shards: dict, **overrides) -> dict:
    args = dm_args({}, **overrides)
    del args["manifests"]
    return {**args, "shards": shards}


@pytest.fixture
def files(tmp_path) -> dict[str, list[dict]]:
    rows = make_data(tmp_path)
    for dataset_rows in rows.values():
        for i, row in enumerate(dataset_rows):
            row["split"] = SPLIT_OF_ROW[i % 5]
    return rows


def test_expand_braces_and_globs(tmp_path):
    assert [p.name for p in expand(f"{tmp_path}/x-{{008..011}}.tar")] == ["x-008.tar", "x-009.tar", "x-010.tar",
                                                                          "x-011.tar"]  # fmt: skip
    (tmp_path / "b.tar").touch()
    (tmp_path / "a.tar").touch()
    assert [p.name for p in expand(f"{tmp_path}/*.tar")] == ["a.tar", "b.tar"]


def test_shard_items_equal_the_manifest_items(tmp_path, files):
    rows = files
    manifests = {name: write_csv(tmp_path / f"{name}.csv", r) for name, r in rows.items()}
    from_manifests = ManifestDataModule(**dm_args(manifests))
    from_shards = ShardDataModule(**shard_args(write_shards(tmp_path, rows)))
    from_manifests.setup()
    from_shards.setup()
    for name in ("captions", "sounds"):
        for split in ("train", "val", "test"):
            a, b = from_manifests.splits[name][split], from_shards.splits[name][split]
            assert len(a) == len(b) > 0
            for i in range(len(a)):
                x, y = a[i], b[i]
                assert x["label"] == y["label"] and x["x"].keys() == y["x"].keys()
                for m in x["x"]:
                    if isinstance(x["x"][m], str):
                        assert x["x"][m] == y["x"][m]
                    else:
                        torch.testing.assert_close(x["x"][m], y["x"][m])
    assert from_shards.modality_info().keys() == from_manifests.modality_info().keys()
    assert from_shards.data_fingerprint() != from_manifests.data_fingerprint()


def test_a_missing_member_is_named_like_an_empty_cell(tmp_path, files):
    rows = files
    shards = write_shards(tmp_path, rows, skip=(("s5", "emb"),))  # s5: row 6 of sounds, a train row
    with pytest.raises(DataError, match=r"id 's5': modality 'emb' is empty, but every train row must carry"):
        ShardDataModule(**shard_args(shards)).setup()


def test_broken_shards_are_named(tmp_path, files):
    rows = files
    shards = write_shards(tmp_path, rows)
    first = tmp_path / "sounds-train-000.tar"
    first.write_bytes(b"not a tar archive at all" * 40)
    with pytest.raises(DataError, match=r"cannot read shard .*sounds-train-000\.tar as an uncompressed tar"):
        ShardDataModule(**shard_args(shards)).setup()
    shards["sounds"]["train"] = f"{tmp_path}/nothing-*.tar"
    with pytest.raises(DataError, match=r"match no file"):
        ShardDataModule(**shard_args(shards)).setup()
    with pytest.raises(ConfigError, match=r"shards.sounds: give a shard pattern"):
        ShardDataModule(**shard_args({**shards, "sounds": {"training": "x.tar"}}))


def test_corrupt_member_is_named_when_read(tmp_path, files):
    rows = files
    (tmp_path / "img" / "s3.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")  # s3: a val row
    dm = ShardDataModule(**shard_args(write_shards(tmp_path, rows)))
    dm.setup()
    with pytest.raises(
        DataError, match=r"cannot read image .*sounds-val-000\.tar:s3\.photo\.png \(manifest .* id 's3'"
    ):
        dm.splits["sounds"]["val"][0]


def test_unsplit_shards_are_split_by_seed(tmp_path, files):
    rows = files
    for dataset_rows in rows.values():
        for row in dataset_rows:
            del row["split"]
    shards = write_shards(tmp_path, rows)
    flat = {name: [p for p in by_split.values()] for name, by_split in shards.items()}
    dm = ShardDataModule(**shard_args(flat))
    dm.setup()
    assert [len(dm.splits["sounds"][s]) for s in ("train", "val", "test")] == [18, 6, 6]


# Random encoders and one training batch: the collapse alarm is right, and beside the point of this plumbing test.
@pytest.mark.filterwarnings(r"ignore:embeddings of modality .* collapsing towards one point")
def test_cli_trains_on_shards(tmp_path, files, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = files
    config = {
        "data": {"class_path": "datamodules.ShardDataModule", "init_args": shard_args(write_shards(tmp_path, rows))},
        "model": {"backbones": {"photo": {"name": "timm", "model": "resnet10t"}, "caption": {"name": "import",
                  "class_path": "tests.test_shards.BagOfBytes", "init_args": {}}, "sound": "logmel_cnn"}},
    }  # fmt: skip
    (tmp_path / "shards.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    fitted = cli(["fit", "--config", "shards.yaml", "--trainer.fast_dev_run=true"])
    assert fitted.trainer.state.finished
    assert fitted.trainer.global_step == 1  # fast_dev_run: one training batch of every dataset, read from the shards


class BagOfBytes(torch.nn.Module):
    """A text encoder without weights for the CLI test: byte histogram of each string."""

    out_dim = 256

    def forward(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([torch.bincount(torch.tensor(list(t.encode())), minlength=256).float() for t in texts])
