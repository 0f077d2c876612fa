"""Datasets stored as WebDataset shards: uncompressed tar files whose members are the modalities of each instance.

WebDataset's layout: the members of one instance share a key (the member name up to its first dot) and differ in
their extension, e.g. ``n1.rgb.png``, ``n1.depth.png``, ``n1.caption.txt``, ``n1.cls``. Here a member ``<key>.<m>.*``
(or ``<key>.<m>``) holds modality ``m``: an image, a WAV, a ``.npy`` vector or UTF-8 text; ``<key>.cls`` holds the
label (an integer class id or a class name). Shards are given per dataset, either per split::

    shards:
      nyu: {train: "data/nyu-train-{000..007}.tar", val: data/nyu-val-000.tar, test: data/nyu-test-000.tar}

or as one list split 60/20/20 by ``split_seed`` like a manifest without a ``split`` column. ``{000..007}`` ranges and
``*`` globs are expanded; relative paths start at the working directory.

Shards are indexed at ``setup`` (tar headers: key, member, offset, size; text and labels are read then) and each
member is read by offset when a batch asks for it, so nothing is unpacked to disk and images and audio are never all
in memory. The index then goes through the same validation as a manifest (every modality a split needs present in
every one of its instances, labels, files readable), and training is the manifest datamodule's: shuffled by (seed,
epoch), instances (not shards) split across DDP ranks and loader workers, resumable mid-epoch. This is random access
by offset: shards must be local (or on a file system) and uncompressed; it does not stream from object storage.
"""

import glob
import re
import tarfile
from pathlib import Path

import pandas as pd

from brokenbind.errors import ConfigError, DataError
from datamodules.base import SPLITS
from datamodules.loaders import Member
from datamodules.manifest import ManifestDataModule
from datamodules.manifest_rows import DatasetTable, Manifest

BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand(pattern: str) -> list[Path]:
    """``data/x-{000..003}.tar`` → four paths (zero padding kept); ``*`` globs → the matching files, sorted."""
    match = BRACES.search(pattern)
    if match:
        first, last = match.group(1), match.group(2)
        width = len(first) if first.startswith("0") else 0
        return [
            path
            for i in range(int(first), int(last) + 1)
            for path in expand(pattern[: match.start()] + str(i).zfill(width) + pattern[match.end() :])
        ]
    if any(c in pattern for c in "*?["):
        return [Path(p) for p in sorted(glob.glob(str(Path(pattern).expanduser())))]
    return [Path(pattern).expanduser()]


def tar_files(name: str, path: Path) -> list[tarfile.TarInfo]:
    """The regular-file members of an uncompressed tar (headers only: their data is read later, by offset)."""
    try:
        with tarfile.open(path, "r:") as archive:
            return [info for info in archive.getmembers() if info.isfile()]
    except tarfile.TarError as error:
        raise DataError(
            f"dataset {name!r}: cannot read shard {path} as an uncompressed tar ({error}); compressed shards "
            "(.tar.gz) cannot be read by offset: decompress them"
        ) from error


class ShardDataModule(ManifestDataModule):
    """Datasets read from WebDataset tar shards; see the module docstring for the layout.

    Args:
        shards: dataset name → shard paths: a pattern, a list of patterns, or ``{train: ..., val: ..., test: ...}``.
        modalities: modality → kind (image, audio, text, features); member ``<key>.<modality>.<ext>`` holds it.
        kwargs: ``ManifestDataModule``'s loading options (image_size, image_channels, sample_rate, audio_seconds,
            split_fractions, split_seed) and ``PairedDataModule``'s (datasets, pivot, flows, batch sizes, ...).
    """

    def __init__(
        self, shards: dict[str, str | list[str] | dict[str, str | list[str]]], modalities: dict[str, str], **kwargs
    ):
        self.shards = {name: self._shard_lists(name, spec) for name, spec in shards.items()}
        self._members: dict[str, dict[tuple[str, str], Member]] = {}  # dataset -> (key, modality) -> member
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

    def read_manifests(self) -> dict[str, Manifest]:
        return {name: self._index(name) for name in sorted(self.datasets)}

    def _index(self, name: str) -> Manifest:
        """One row per instance key: id, split (when given per split), label (``cls``), text cells, member names."""
        members: dict[tuple[str, str], Member] = {}
        rows: dict[str, dict[str, str]] = {}
        patterns = [p for ps in self.shards[name].values() for p in ps]
        for split, split_patterns in self.shards[name].items():
            paths = [p for pattern in split_patterns for p in expand(pattern)]
            if not paths:
                raise DataError(f"dataset {name!r}: shards {split_patterns} match no file (relative to {Path.cwd()})")
            for path in paths:
                if not path.is_file():
                    raise DataError(
                        f"dataset {name!r}: shard not found: {path}; fix data.init_args.shards.{name} (a relative "
                        f"path starts at the working directory, {Path.cwd()})"
                    )
                for info in tar_files(name, path):
                    self._add_member(name, rows, members, split, path, info)
        if not rows:
            raise DataError(f"dataset {name!r}: shards {patterns} hold no instance (members named <key>.<field>)")
        self._members[name] = members
        frame = pd.DataFrame(list(rows.values())).fillna("").astype(str)
        return Manifest(Path(", ".join(patterns)), frame)

    def _add_member(
        self,
        name: str,
        rows: dict[str, dict[str, str]],
        members: dict[tuple[str, str], Member],
        split: str | None,
        path: Path,
        info: tarfile.TarInfo,
    ) -> None:
        directory, _, base = info.name.rpartition("/")
        key, dot, field = base.partition(".")
        if not dot:
            return  # no extension: not an instance member
        key = f"{directory}/{key}" if directory else key
        row = rows.setdefault(key, {"id": key})
        if split is not None:
            if row.get("split", split) != split:
                raise DataError(f"dataset {name!r}: instance {key!r} is in both {row['split']} and {split} shards")
            row["split"] = split
        column = "label" if field == "cls" else field.split(".")[0]
        if column != "label" and column not in self.modalities:
            return  # a field no modality uses
        if column in row:
            raise DataError(f"dataset {name!r}: instance {key!r} has two {column!r} members (the second in {path})")
        member = Member(path, info.name, info.offset_data, info.size)
        if column == "label" or self.modalities[column] == "text":
            try:
                row[column] = member.read_bytes().decode("utf-8").strip()
            except UnicodeDecodeError as error:
                raise DataError(f"{member}: not UTF-8 text ({error})") from error
        else:
            row[column] = info.name
            members[(key, column)] = member

    def resolve_files(self, name: str, manifest: Manifest, modality: str) -> list[Member | None]:
        members = self._members[name]
        return [members.get((key, modality)) for key in manifest.column("id")]

    def manifest_digest(self, table: DatasetTable) -> bytes:
        shards = sorted({str(m.shard) for m in self._members[table.name].values()})
        return "\n".join(f"{s}\t{Path(s).stat().st_size}\t{Path(s).stat().st_mtime_ns}" for s in shards).encode()
