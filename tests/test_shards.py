"""WebDataset tar shards: the same instances as manifests, read by offset from tar members, validated the same way,
trained through the CLI."""

import functools
import gzip
import http.server
import io
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from brokenbind.cli import cli
from brokenbind.errors import ConfigError, DataError
from datamodules import ManifestDataModule, ShardDataModule
from datamodules.base import EpochShuffle
from datamodules.shards import cache_name, expand, expand_braces

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


def assert_same_items(a_dm: ManifestDataModule, b_dm: ManifestDataModule) -> None:
    """Both datamodules hold the same items, in the same order, in every split of both datasets."""
    for name in ("captions", "sounds"):
        for split in ("train", "val", "test"):
            a, b = a_dm.splits[name][split], b_dm.splits[name][split]
            assert len(a) == len(b) > 0
            for i in range(len(a)):
                x, y = a[i], b[i]
                assert x["label"] == y["label"] and x["x"].keys() == y["x"].keys()
                for m in x["x"]:
                    if isinstance(x["x"][m], str):
                        assert x["x"][m] == y["x"][m]
                    else:
                        torch.testing.assert_close(x["x"][m], y["x"][m])


def test_expand_braces_in_urls():
    assert expand_braces("pipe:cat d/x-{08..10}.tar > {local}") == [
        "pipe:cat d/x-08.tar > {local}", "pipe:cat d/x-09.tar > {local}", "pipe:cat d/x-10.tar > {local}"]  # fmt: skip


def test_shard_items_equal_the_manifest_items(tmp_path, files):
    rows = files
    manifests = {name: write_csv(tmp_path / f"{name}.csv", r) for name, r in rows.items()}
    from_manifests = ManifestDataModule(**dm_args(manifests))
    from_shards = ShardDataModule(**shard_args(write_shards(tmp_path, rows)))
    from_manifests.setup()
    from_shards.setup()
    assert_same_items(from_manifests, from_shards)
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


def test_shards_wids_would_misread_are_refused(tmp_path, files):
    rows = files
    shards = write_shards(tmp_path, rows)
    first = tmp_path / "sounds-train-000.tar"
    whole = first.read_bytes()
    first.write_bytes(gzip.compress(whole))
    with pytest.raises(DataError, match=r"cannot read shard .*sounds-train-000\.tar as an uncompressed tar"):
        ShardDataModule(**shard_args(shards)).setup()
    first.write_bytes(whole[:3000])  # a download cut short: wids' index alone would drop the rest silently
    with pytest.raises(DataError, match=r"shard .*sounds-train-000\.tar is truncated \(3000 bytes"):
        ShardDataModule(**shard_args(shards)).setup()
    # a PAX long name (the header keeps its first 100 bytes); a name split into a ustar prefix and the rest
    for fmt, name, read in [(tarfile.PAX_FORMAT, "k" * 116 + ".cls", "k" * 100),
                            (tarfile.USTAR_FORMAT, "d" * 40 + "/" + "k" * 70 + ".cls", "k" * 70 + ".cls")]:  # fmt: skip
        with tarfile.open(first, "w", format=fmt) as tar:
            add(tar, name, b"0")
        with pytest.raises(DataError, match=rf"member {read!r} has a name of 100 bytes or more .* wids reads only"):
            ShardDataModule(**shard_args(shards)).setup()


def local_to_urls(shards: dict, to_url) -> dict:
    """The same shards named by URL: ``to_url(path pattern)`` for every pattern."""
    return {name: {split: to_url(p) for split, p in by_split.items()} for name, by_split in shards.items()}


def test_url_shards_are_downloaded_once_into_cache_dir(tmp_path, files):
    rows = files
    local = write_shards(tmp_path, rows)
    count = tmp_path / "downloads.txt"
    piped = local_to_urls(local, lambda p: f"pipe:cat {p} > {{local}} && echo one >> {count}")
    cache = tmp_path / "cache"
    from_local = ShardDataModule(**shard_args(local))
    from_local.setup()
    first = ShardDataModule(**shard_args(piped), cache_dir=str(cache))
    first.setup()
    assert_same_items(from_local, first)
    n_shards = len(list(tmp_path.glob("*-*-*.tar")))
    assert len(count.read_text().splitlines()) == n_shards == len(list(cache.iterdir())) == 10
    cached = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    again = ShardDataModule(**shard_args(piped), cache_dir=str(cache))
    again.setup()
    assert len(count.read_text().splitlines()) == n_shards  # the second setup ran no command: it read the cache
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == cached
    assert_same_items(from_local, again)
    assert again.data_fingerprint() == first.data_fingerprint() != from_local.data_fingerprint()

    via_file = ShardDataModule(**shard_args(local_to_urls(local, lambda p: f"file://{p}")), cache_dir=str(cache))
    via_file.setup()
    assert_same_items(from_local, via_file)
    assert len(list(cache.iterdir())) == 2 * n_shards  # file:// URLs are other URLs: their own cache files


@pytest.mark.skipif(shutil.which("curl") is None, reason="wids downloads http URLs with curl")
def test_http_shards_come_through_the_cache(tmp_path, files):
    rows = files
    local = write_shards(tmp_path, rows)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        urls = local_to_urls(local, lambda p: p.replace(str(tmp_path), base))
        from_http = ShardDataModule(**shard_args(urls), cache_dir=str(tmp_path / "cache"))
        from_http.setup()
        server.shutdown()
    from_local = ShardDataModule(**shard_args(local))
    from_local.setup()
    assert_same_items(from_local, from_http)
    again = ShardDataModule(**shard_args(urls), cache_dir=str(tmp_path / "cache"))
    again.setup()  # the server is down: only the cache can serve this
    assert_same_items(from_local, again)


def test_bad_urls_are_named(tmp_path, files):
    rows = files
    local = write_shards(tmp_path, rows)
    piped = local_to_urls(local, lambda p: f"pipe:cat {p} > {{local}}")
    with pytest.raises(ConfigError, match=r"shards.captions: pipe:cat .* is a URL: set data.init_args.cache_dir"):
        ShardDataModule(**shard_args(piped))
    with pytest.raises(ConfigError, match=r"a pipe: command writes the shard to \{local\}"):
        ShardDataModule(**shard_args({**local, "sounds": "pipe:cat x.tar"}), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"wids downloads only \[.*'s3'\] URLs, not hdfs://"):
        ShardDataModule(**shard_args({**local, "sounds": "hdfs://x.tar"}), cache_dir=str(tmp_path))
    cache = tmp_path / "cache"
    failing = {**local, "sounds": {**piped["sounds"], "val": "pipe:cat nowhere.tar > {local}"}}
    with pytest.raises(DataError, match=r"cannot download shard pipe:cat nowhere.tar > \{local\} to .*cache"):
        ShardDataModule(**shard_args(failing), cache_dir=str(cache)).setup()
    silent = {**local, "sounds": {**piped["sounds"], "val": "pipe:true {local}"}}
    with pytest.raises(DataError, match=r"cannot download shard pipe:true \{local\} .*FileNotFoundError"):
        ShardDataModule(**shard_args(silent), cache_dir=str(cache)).setup()
    # sounds' train shards (fetched before val failed), and no partial file left by either failure
    assert sorted(p.name for p in cache.iterdir()) == sorted(map(cache_name, expand_braces(piped["sounds"]["train"])))
    assert len(list(cache.iterdir())) == 3


@pytest.mark.slow  # a spawned loader worker imports torch anew
def test_a_spawned_worker_resumes_mid_epoch_on_shard_instances(tmp_path, files):
    """Members pickle as (shard, offset, size): a spawned loader worker reads them, and a loader resumed mid-epoch
    yields exactly the rest of the uninterrupted epoch's instances."""
    dm = ShardDataModule(**shard_args(write_shards(tmp_path, files)))
    dm.setup()
    train = dm.splits["sounds"]["train"]

    def epoch(start: int, workers: int) -> tuple[list[int], torch.Tensor]:
        sampler = EpochShuffle(train, seed=3)
        sampler.set_epoch(2)
        sampler.start = start
        context = "spawn" if workers else None
        batches = list(DataLoader(train, batch_size=3, sampler=sampler, num_workers=workers,
                                  multiprocessing_context=context))  # fmt: skip
        return torch.cat([b["index"] for b in batches]).tolist(), torch.cat([b["x"]["photo"] for b in batches])

    whole, photos = epoch(0, 0)
    rest, rest_photos = epoch(6, 1)
    assert sorted(whole) == train.index.tolist() and len(whole) == 18
    assert rest == whole[6:]
    torch.testing.assert_close(rest_photos, photos[6:])


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
