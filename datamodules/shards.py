"""Datasets stored as WebDataset shards: uncompressed tar files whose members are the modalities of each instance.

WebDataset's layout: the members of one instance share a key (the member name up to the first dot of its base name)
and differ in their extension, e.g. ``n1.rgb.png``, ``n1.depth.png``, ``n1.caption.txt``, ``n1.cls``. Here a member
``<key>.<m>.*`` (or ``<key>.<m>``) holds modality ``m``: an image, a WAV, a ``.npy`` vector or UTF-8 text;
``<key>.cls`` holds the label (an integer class id or a class name). Shards are given per dataset, either per split::

    shards:
      nyu: {train: "data/nyu-train-{000..007}.tar", val: data/nyu-val-000.tar, test: data/nyu-test-000.tar}

or as one list split 60/20/20 by ``split_seed`` like a manifest without a ``split`` column. ``{000..007}`` ranges are
expanded everywhere, ``*`` globs in local paths; relative paths start at the working directory.

A shard is a local path or a URL that WebDataset's ``wids`` library downloads: ``http(s)://``, ``ftp(s)://``,
``file://``, ``gs://``, ``s3://`` (through curl, gsutil or the aws CLI), or ``pipe:<command>``, a shell command that
writes the shard to ``{local}`` (e.g. ``pipe:aws s3 cp s3://b/x.tar {local}``). URLs need ``cache_dir``: each shard
is downloaded there once, at ``setup``, through ``wids``' cache (a lock per shard, so DDP ranks sharing a file system
download it once), and read from there; a shard already in the cache is not fetched again (delete it to refetch).

At ``setup`` every shard is indexed by ``wids`` (its memory-mapped tar index: member, offset, size; text and labels
are read then) and each image, WAV or ``.npy`` member is read by its offset when a batch asks for it, so nothing is
unpacked and images and audio are never all in memory. (``wids``' own reader, ``ShardListDataset``, keeps a few
indexed shards open and indexes a shard again on every miss: under the instance-level shuffle below that is a miss
on nearly every read.) The index then goes through the same validation as a manifest (every modality a split needs
present in every one of its instances, labels, files readable), and training is the manifest datamodule's: shuffled
by (seed, epoch), instances (not shards) split across DDP ranks and loader workers, resumable mid-epoch.

Not supported: compressed shards (``.tar.gz``: members cannot be read by offset; decompress them), member names of
100 bytes or more or split by a ustar prefix (``wids`` reads only the header's 100-byte name field, so such a name
would be cut: both are refused), streaming without a local copy, and globs in URLs.
"""

import glob
import hashlib
import re
import struct
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from wids.wids import splitname
from wids.wids_dl import default_cmds, download_and_open
from wids.wids_mmtar import MMIndexedTar, parse_tar_header

from brokenbind.errors import ConfigError, DataError
from datamodules.base import SPLITS
from datamodules.loaders import Member
from datamodules.manifest import ManifestDataModule
from datamodules.manifest_rows import DatasetTable, Manifest

BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
REMOTE_SCHEMES = sorted(set(default_cmds) - {"posixpath"})  # what wids downloads ("posixpath": a local path)
TAR_BLOCK = 512  # a tar header, and the unit a member's data and the whole archive are padded to
HEADER_FIELDS = 500  # the bytes of a header wids' parser unpacks (the rest of the block is padding)


def expand_braces(pattern: str) -> list[str]:
    """``x-{000..003}.tar`` → four names (zero padding kept)."""
    match = BRACES.search(pattern)
    if not match:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") else 0
    return [
        name
        for i in range(int(first), int(last) + 1)
        for name in expand_braces(pattern[: match.start()] + str(i).zfill(width) + pattern[match.end() :])
    ]


def expand(pattern: str) -> list[Path]:
    """``data/x-{000..003}.tar`` → four paths (zero padding kept); ``*`` globs → the matching files, sorted."""
    paths = []
    for name in expand_braces(pattern):
        if any(c in name for c in "*?["):
            paths += [Path(p) for p in sorted(glob.glob(str(Path(name).expanduser())))]
        else:
            paths.append(Path(name).expanduser())
    return paths


def url_scheme(pattern: str) -> str | None:
    """The download scheme of a shard URL (``pipe`` for ``pipe:`` commands); None for a local path."""
    if pattern.startswith("pipe:"):
        return "pipe"
    match = URL_SCHEME.match(pattern)
    return match.group(1).lower() if match else None


def cache_name(url: str) -> str:
    """The file a URL is downloaded to in ``cache_dir``: a hash of the whole URL (two URLs never share a file) and,
    for reading the directory, the URL's file name."""
    tail = "pipe" if url.startswith("pipe:") else Path(urlparse(url).path).name
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{re.sub(r'[^A-Za-z0-9_.-]', '_', tail)}"


def check_index(name: str, source: str, tar: MMIndexedTar) -> None:
    """What ``wids``' index does not check itself: a truncated file (it stops at the end of the file, dropping the rest
    silently) and names it would read cut (it reads neither PAX/GNU long names nor the ustar prefix)."""
    size = len(tar.mmapped_file)
    for member, offset, length in tar.by_index:
        if size % TAR_BLOCK or offset + TAR_BLOCK + length > size:
            raise DataError(
                f"dataset {name!r}: shard {source} is truncated ({size} bytes; member {member} ends past it or the "
                "archive is not padded to 512-byte blocks); write or download it again"
            )
        header = parse_tar_header(tar.mmapped_file[offset : offset + HEADER_FIELDS])
        if header.prefix.strip(b"\0") or b"\0" not in header.name:
            raise DataError(
                f"dataset {name!r}: shard {source}: member {member!r} has a name of 100 bytes or more (or one split "
                "into a ustar prefix): wids reads only the header's 100-byte name field, so it may be cut; shorten "
                "the member names to 99 bytes at most"
            )


class ShardDataModule(ManifestDataModule):
    """Datasets read from WebDataset tar shards; see the module docstring for the layout.

    Args:
        shards: dataset name → shards: a path or URL pattern, a list of them, or ``{train: ..., val: ..., test: ...}``.
        modalities: modality → kind (image, audio, text, features); member ``<key>.<modality>.<ext>`` holds it.
        cache_dir: where shards given as URLs are downloaded (once; needed only for URLs). Relative: from the working
            directory.
        kwargs: ``ManifestDataModule``'s loading options (image_size, image_channels, sample_rate, audio_seconds,
            split_fractions, split_seed) and ``PairedDataModule``'s (datasets, pivot, flows, batch sizes, ...).
    """

    def __init__(
        self,
        shards: dict[str, str | list[str] | dict[str, str | list[str]]],
        modalities: dict[str, str],
        cache_dir: str | None = None,
        **kwargs,
    ):
        self.shards = {name: self._shard_lists(name, spec) for name, spec in shards.items()}
        self.cache_dir = cache_dir
        for name, by_split in self.shards.items():
            for pattern in (p for ps in by_split.values() for p in ps):
                self._check_url(name, pattern)
        self._members: dict[str, dict[tuple[str, str], Member]] = {}  # dataset -> (key, modality) -> member
        self._shard_files: dict[str, list[tuple[str, Path]]] = {}  # dataset -> (source, local file) of each shard
        super().__init__(manifests={name: f"shards of {name}" for name in shards}, modalities=modalities, **kwargs)
        if self.root is not None:
            raise ConfigError("root applies to manifests; shard members are named inside their shards")

    def check_manifests(self, manifests: dict[str, str]) -> None:
        """Shards replace manifests: nothing to check here (``_shard_lists`` checked the configuration)."""

    @staticmethod
    def _shard_lists(name: str, spec: object) -> dict[str | None, list[str]]:
        """split (None: not given) → shard patterns."""
        if isinstance(spec, str):
            return {None: [spec]}
        if isinstance(spec, list) and spec and all(isinstance(p, str) for p in spec):
            return {None: list(spec)}
        if isinstance(spec, dict) and spec and set(spec) <= set(SPLITS):
            return {split: [v] if isinstance(v, str) else list(v) for split, v in spec.items()}
        raise ConfigError(
            f"shards.{name}: give a shard pattern (data/{name}-{{000..009}}.tar), a list of them, or "
            f"{{train: ..., val: ..., test: ...}}"
        )

    def _check_url(self, name: str, pattern: str) -> None:
        scheme = url_scheme(pattern)
        if scheme is None:
            return
        if scheme not in REMOTE_SCHEMES:
            raise ConfigError(f"shards.{name}: {pattern}: wids downloads only {REMOTE_SCHEMES} URLs, not {scheme}://")
        if scheme == "pipe" and "{local}" not in pattern:
            raise ConfigError(
                f"shards.{name}: {pattern}: a pipe: command writes the shard to {{local}} (wids fills in the cache "
                "file), e.g. pipe:aws s3 cp s3://bucket/x.tar {local}"
            )
        if self.cache_dir is None:
            raise ConfigError(
                f"shards.{name}: {pattern} is a URL: set data.init_args.cache_dir, the directory it is downloaded to"
            )

    def read_manifests(self) -> dict[str, Manifest]:
        return {name: self._index(name) for name in sorted(self.datasets)}

    def _shard_sources(self, name: str, patterns: list[str]) -> list[tuple[str, Path]]:
        """(source, local file) of every shard the patterns name, URLs downloaded to ``cache_dir`` first."""
        local = [p for pattern in patterns if url_scheme(pattern) is None for p in expand(pattern)]
        urls = [url for pattern in patterns if url_scheme(pattern) is not None for url in expand_braces(pattern)]
        if not local and not urls:
            raise DataError(f"dataset {name!r}: shards {patterns} match no file (relative to {Path.cwd()})")
        for path in local:
            if not path.is_file():
                raise DataError(
                    f"dataset {name!r}: shard not found: {path}; fix data.init_args.shards.{name} (a relative "
                    f"path starts at the working directory, {Path.cwd()})"
                )
        return [(str(path), path) for path in local] + [(url, self._download(name, url)) for url in urls]

    def _download(self, name: str, url: str) -> Path:
        """The cached copy of ``url`` in ``cache_dir``, downloaded now if it is not there yet."""
        cache = Path(self.cache_dir).expanduser()
        cache.mkdir(parents=True, exist_ok=True)
        local = cache / cache_name(url)
        try:
            with download_and_open(url, str(local)):
                pass
        # wids reports a failed download command by AssertionError ("Command failed"), a missing output as OSError
        except (AssertionError, OSError, ValueError, KeyError) as error:
            local.unlink(missing_ok=True)  # a partial download must not be taken for a cached shard next time
            raise DataError(
                f"dataset {name!r}: cannot download shard {url} to {local} ({type(error).__name__}: {error}); check "
                f"the URL in data.init_args.shards.{name} (a pipe: command must write the shard to {{local}})"
            ) from error
        return local

    def _index(self, name: str) -> Manifest:
        """One row per instance key: id, split (when given per split), label (``cls``), text cells, member names."""
        members: dict[tuple[str, str], Member] = {}
        rows: dict[str, dict[str, str]] = {}
        files: list[tuple[str, Path]] = []
        for split, split_patterns in self.shards[name].items():
            for source, path in self._shard_sources(name, split_patterns):
                files.append((source, path))
                self._add_shard(name, rows, members, split, source, path)
        patterns = [p for ps in self.shards[name].values() for p in ps]
        if not rows:
            raise DataError(f"dataset {name!r}: shards {patterns} hold no instance (members named <key>.<field>)")
        self._members[name], self._shard_files[name] = members, files
        frame = pd.DataFrame(list(rows.values())).fillna("").astype(str)
        return Manifest(Path(", ".join(patterns)), frame)

    def _add_shard(
        self,
        name: str,
        rows: dict[str, dict[str, str]],
        members: dict[tuple[str, str], Member],
        split: str | None,
        source: str,
        path: Path,
    ) -> None:
        """Every member of one shard, from ``wids``' index: into its instance's row (text, label) or ``members``."""
        with path.open("rb") as stream:
            try:
                tar = MMIndexedTar(stream)
            except (ValueError, struct.error) as error:  # what wids' header parser raises on a file that is no tar
                raise DataError(
                    f"dataset {name!r}: cannot read shard {source} as an uncompressed tar ({error}); compressed shards "
                    "(.tar.gz) cannot be read by offset: decompress them"
                ) from error
            try:
                check_index(name, source, tar)
                for index, (member_name, offset, size) in enumerate(tar.by_index):
                    if "." not in member_name.rpartition("/")[2]:
                        continue  # no extension: not an instance member
                    key, extension = splitname(member_name)
                    field = extension[1:]
                    row = rows.setdefault(key, {"id": key})
                    if split is not None:
                        if row.get("split", split) != split:
                            raise DataError(
                                f"dataset {name!r}: instance {key!r} is in both {row['split']} and {split} shards"
                            )
                        row["split"] = split
                    column = "label" if field == "cls" else field.split(".")[0]
                    if column != "label" and column not in self.modalities:
                        continue  # a field no modality uses
                    if column in row:
                        raise DataError(
                            f"dataset {name!r}: instance {key!r} has two {column!r} members (the second in {source})"
                        )
                    member = Member(path, member_name, offset + TAR_BLOCK, size, source)
                    if column == "label" or self.modalities[column] == "text":
                        try:
                            row[column] = bytes(tar.get_at_index(index)[1]).decode("utf-8").strip()
                        except UnicodeDecodeError as error:
                            raise DataError(f"{member}: not UTF-8 text ({error})") from error
                    else:
                        row[column] = member_name
                        members[(key, column)] = member
            finally:
                tar.close()

    def resolve_files(self, name: str, manifest: Manifest, modality: str) -> list[Member | None]:
        members = self._members[name]
        return [members.get((key, modality)) for key in manifest.column("id")]

    def manifest_digest(self, table: DatasetTable) -> bytes:
        """Every shard of the dataset: its source and the size and modification time of its local file."""
        files = sorted(self._shard_files[table.name])
        return "\n".join(f"{s}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}" for s, p in files).encode()
