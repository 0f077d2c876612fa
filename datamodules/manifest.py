"""Datasets described by manifests: one CSV or JSONL file per dataset, one row per instance.

A manifest has one column per modality, holding a file path (image, audio, features) or the text itself, and
optionally ``label`` (int, or strings mapped to ints), ``split`` (train/val/test) and ``id`` (unique per manifest).
Other columns are ignored. Relative paths resolve against ``root``, by default the manifest's own directory.

Example (``pairs.csv``)::

    id,photo,caption,label
    a1,img/cat1.png,a cat on a sofa,cat
    a2,img/dog7.png,a dog in the park,dog

with the datamodule configured as::

    data:
      class_path: datamodules.ManifestDataModule
      init_args:
        manifests: {captions: data/pairs.csv, sounds: data/sounds.jsonl}
        modalities: {photo: image, caption: text, sound: audio}
        datasets:
          captions: {modalities: [photo, caption]}
          sounds: {modalities: [photo, sound]}
        pivot: photo
        flows: [{dataset: sounds, flow: caption->photo->sound}]

Everything is validated before training: missing manifests, modality columns a dataset needs but its manifest lacks,
empty cells in the modalities a split must carry, unknown split values, duplicate ids, and every referenced file's
existence (the first missing one is named with its row). Images and audio are read lazily in ``__getitem__``;
features (``.npy``) are read in ``setup`` because backbones fitted to data need the training inputs.
"""

import csv
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from brokenbind.backbones import ModalityInfo
from brokenbind.errors import ConfigError, DataError
from datamodules.base import SPLITS, PairedDataModule
from datamodules.loaders import FILE_KINDS, KINDS, load_image, load_npy, load_text, load_wav

RESERVED_COLUMNS = ("label", "split", "id")
UNLABELLED = -1
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")


@dataclass
class Manifest:
    """A parsed manifest: its columns (in file order) and its rows, every cell a str ("" when empty)."""

    path: Path
    columns: list[str]
    rows: list[dict[str, str]]

    def column(self, name: str) -> list[str]:
        return [row.get(name, "") for row in self.rows]


def _cell(value: object, path: Path, row: int, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float):
        return str(value)
    raise DataError(f"{path} row {row}: column {column!r} holds a {type(value).__name__}; expected a string or number")


def _read_csv(path: Path) -> Manifest:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError(f"manifest {path} is empty: expected a header row naming the columns")
        columns = [c.strip() for c in header]
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated or "" in columns:
            raise DataError(f"manifest {path}: header has duplicate or empty column names {duplicated or ['']}")
        rows = []
        for values in reader:
            if not any(v.strip() for v in values):
                continue  # blank line
            if len(values) != len(columns):
                raise DataError(
                    f"{path} row {len(rows) + 1} (line {reader.line_num}): {len(values)} fields, the header has "
                    f"{len(columns)}"
                )
            rows.append(dict(zip(columns, values, strict=True)))
    return Manifest(path, columns, rows)


def _read_jsonl(path: Path) -> Manifest:
    columns: dict[str, None] = {}  # ordered set: first appearance
    records = []
    with path.open(encoding="utf-8-sig") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path} line {line_number}: invalid JSON: {error}") from error
            if not isinstance(record, dict):
                raise DataError(f"{path} line {line_number}: expected a JSON object, got {type(record).__name__}")
            columns.update(dict.fromkeys(k.strip() for k in record))
            records.append(record)
    rows = [{k.strip(): _cell(v, path, i, k) for k, v in record.items()} for i, record in enumerate(records, start=1)]
    return Manifest(path, list(columns), rows)


def read_manifest(path: str | Path) -> Manifest:
    """A CSV (``.csv``) or JSON-lines (``.jsonl``, ``.ndjson``) manifest."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    raise ConfigError(f"manifest {path}: unknown format {suffix!r}; use .csv or .jsonl")


def label_mapping(raw: list[str]) -> dict[str, int] | None:
    """None when every label is an integer (kept as is); otherwise the sorted distinct strings numbered from 0."""
    values = sorted({v for v in raw if v != ""})
    try:
        [int(v) for v in values]
        return None
    except ValueError:
        return {v: i for i, v in enumerate(values)}


def assign_splits(labels: np.ndarray, fractions: tuple[float, ...], seed: int, name: str) -> np.ndarray:
    """Train/val/test per row from the seed only, stratified by label (unlabelled rows form their own stratum).

    The rows are laid out class after class (each class shuffled) and the split boundaries are rounded on that
    global layout, so each class gets its share to within one row and the split sizes match the fractions exactly
    (a per-class rounding would leave a split empty when every class is small).
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    cumulative = np.cumsum(np.asarray(fractions, dtype=np.float64))
    cumulative /= cumulative[-1]
    out = np.empty(len(labels), dtype=object)
    start = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        end = start + len(members)
        cuts = np.round(cumulative * end).astype(int) - np.round(cumulative * start).astype(int)
        for split, part in zip(SPLITS, np.split(members, cuts[:-1]), strict=True):
            out[part] = split
        start = end
    return out


@dataclass
class DatasetTable:
    """One dataset's manifest, resolved: labels, split per row, global ids, file paths per file-kind column."""

    name: str
    manifest: Manifest
    labels: np.ndarray
    splits: np.ndarray
    offset: int
    paths: dict[str, list[Path | None]] = field(default_factory=dict)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def context(self, row: int, column: str | None = None) -> str:
        """Where a cell lives, for error messages: manifest, 1-based row, id when the manifest has one."""
        where = f"manifest {self.manifest.path} row {row + 1}"
        if "id" in self.manifest.columns:
            where += f", id {self.manifest.rows[row]['id'].strip()!r}"
        return where + (f", column {column!r}" if column else "")


class ManifestDataset(Dataset):
    """The rows of one dataset split: ``{"x": {modality: value}, "index": global id, "label": class}``.

    Images and audio are loaded from their files on access; features are held in memory (``features``); text is
    the manifest cell.
    """

    def __init__(
        self,
        table: DatasetTable,
        rows: np.ndarray,
        modalities: dict[str, str],
        features: dict[str, Tensor],
        image_size: int,
        image_channels: dict[str, int | None],
        sample_rate: int,
        audio_seconds: float,
    ):
        self.table, self.rows, self.modalities = table, rows, modalities
        self.features = features
        self.index = torch.as_tensor(table.offset + rows, dtype=torch.int64)
        self.label = torch.as_tensor(table.labels[rows], dtype=torch.int64)
        self.image_size, self.image_channels = image_size, image_channels
        self.sample_rate, self.audio_seconds = sample_rate, audio_seconds

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, modality: str, i: int) -> Tensor | str:
        """The value of ``modality`` for item ``i`` of this split."""
        kind, row = self.modalities[modality], int(self.rows[i])
        if kind == "features":
            return self.features[modality][i]
        context = self.table.context(row, modality)
        if kind == "text":
            return load_text(self.table.manifest.rows[row][modality], context)
        path = self.table.paths[modality][row]
        if kind == "image":
            return load_image(path, self.image_channels.get(modality), self.image_size, context)
        return load_wav(path, self.sample_rate, self.audio_seconds, context)

    def __getitem__(self, i: int) -> dict:
        return {"x": {m: self.load(m, i) for m in self.modalities}, "index": self.index[i], "label": self.label[i]}


class ManifestDataModule(PairedDataModule):
    """Datasets read from manifests (one CSV or JSONL per dataset); see the module docstring for the format.

    Args:
        manifests: dataset name → manifest path, one per configured dataset.
        modalities: modality column → kind (image, audio, text, features). These are the available modalities.
        root: directory that relative file paths resolve against; default: each manifest's directory.
        split_fractions: train/val/test fractions for manifests without a ``split`` column (stratified by label).
        split_seed: seed of that split (independent of the training seed).
        image_size: images are resized to image_size × image_size.
        image_channels: 1 or 3 to force grayscale or RGB; None keeps the channel count of the modality's first
            training file (other files of that modality are converted to it, so batches always stack).
        sample_rate, audio_seconds: audio is resampled to ``sample_rate`` and cropped or zero-padded to
            ``audio_seconds``.
        kwargs: ``PairedDataModule``'s (datasets, pivot, flows, batch sizes, sampling, ...).
    """

    def __init__(
        self,
        manifests: dict[str, str],
        modalities: dict[str, str],
        root: str | None = None,
        split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
        image_size: int = 224,
        image_channels: int | None = None,
        sample_rate: int = 16000,
        audio_seconds: float = 1.0,
        **kwargs,
    ):
        if not modalities:
            raise ConfigError("no modality columns configured (modalities: {column: image|audio|text|features})")
        for column, kind in modalities.items():
            if kind not in KINDS:
                raise ConfigError(f"modality {column!r}: unknown kind {kind!r}; use one of {list(KINDS)}")
            if column in RESERVED_COLUMNS:
                raise ConfigError(f"modality {column!r}: the column names {list(RESERVED_COLUMNS)} are reserved")
        if len(split_fractions) != 3 or min(split_fractions) <= 0:
            raise ConfigError(f"split_fractions must be three positive train/val/test fractions, got {split_fractions}")
        if image_size < 1 or sample_rate < 1 or audio_seconds <= 0:
            raise ConfigError("image_size, sample_rate and audio_seconds must be positive")
        if image_channels not in (None, 1, 3):
            raise ConfigError(f"image_channels must be 1, 3 or None (keep the files'), got {image_channels}")
        for name, path in manifests.items():
            if Path(path).suffix.lower() not in MANIFEST_SUFFIXES:
                raise ConfigError(f"manifest of {name!r}: {path} must end in one of {list(MANIFEST_SUFFIXES)}")
        self.manifests = {name: str(path) for name, path in manifests.items()}
        self.modalities = dict(modalities)
        self.available_modalities = tuple(modalities)
        self.root = root
        self.split_fractions, self.split_seed = tuple(split_fractions), split_seed
        self.image_size, self.image_channels = image_size, image_channels
        self.sample_rate, self.audio_seconds = sample_rate, audio_seconds
        super().__init__(**kwargs)
        missing, extra = set(self.datasets) - set(self.manifests), set(self.manifests) - set(self.datasets)
        if missing or extra:
            raise ConfigError(
                f"manifests must name exactly the configured datasets {sorted(self.datasets)}: "
                f"missing {sorted(missing)}, unknown {sorted(extra)}"
            )
        self._tables: dict[str, DatasetTable] | None = None
        self._channels: dict[str, int | None] = {}

    # -- manifests -------------------------------------------------------------------------------------------------
    def needed_modalities(self, dataset: str) -> list[str]:
        """Every modality column some split of ``dataset`` carries."""
        return sorted({m for split in SPLITS for m in self.split_modalities(dataset, split)})

    def tables(self) -> dict[str, DatasetTable]:
        """The parsed and validated manifests (cached): raises on the first problem, before any training."""
        if self._tables is None:
            manifests = {name: read_manifest(self.manifests[name]) for name in sorted(self.datasets)}
            raw = [v.strip() for m in manifests.values() if "label" in m.columns for v in m.column("label")]
            mapping = label_mapping(raw)
            tables, offset = {}, 0
            for name, manifest in manifests.items():
                tables[name] = self._table(name, manifest, mapping, offset)
                offset += len(manifest.rows)
            self._tables = tables
        return self._tables

    def _table(self, name: str, manifest: Manifest, mapping: dict[str, int] | None, offset: int) -> DatasetTable:
        path = manifest.path
        if not manifest.rows:
            raise DataError(f"dataset {name!r}: manifest {path} has no rows")
        for m in self.needed_modalities(name):
            if m not in manifest.columns:
                raise ConfigError(
                    f"dataset {name!r}: manifest {path} has no column {m!r} (a {self.modalities[m]} modality the "
                    f"dataset needs); its columns: {manifest.columns}"
                )
        if "id" in manifest.columns:
            seen: dict[str, int] = {}
            for row, value in enumerate(manifest.column("id")):
                value = value.strip()
                if not value:
                    raise DataError(f"dataset {name!r}: manifest {path} row {row + 1} has an empty id")
                if value in seen:
                    raise DataError(
                        f"dataset {name!r}: manifest {path} has duplicate id {value!r} in rows {seen[value] + 1} and "
                        f"{row + 1}"
                    )
                seen[value] = row
        labels = np.full(len(manifest.rows), UNLABELLED, dtype=np.int64)
        if "label" in manifest.columns:
            for row, value in enumerate(manifest.column("label")):
                value = value.strip()
                if value:
                    labels[row] = mapping[value] if mapping is not None else int(value)
        table = DatasetTable(name, manifest, labels, self._splits(name, manifest, labels), offset)
        for split in SPLITS:
            rows = table.rows(split)
            if not len(rows) and (split == "train" or name in self.eval_datasets):
                raise DataError(f"dataset {name!r}: manifest {path} has no {split} rows")
            for m in self.split_modalities(name, split):
                for row in rows:
                    if not manifest.rows[row][m].strip():
                        raise DataError(
                            f"dataset {name!r}: {table.context(row)}: modality {m!r} is empty, but every {split} row "
                            f"must carry {self.split_modalities(name, split)}"
                        )
        base = Path(self.root).expanduser() if self.root is not None else path.parent
        for m in self.needed_modalities(name):
            if self.modalities[m] in FILE_KINDS:
                cells = [cell.strip() for cell in manifest.column(m)]
                table.paths[m] = [base / Path(cell).expanduser() if cell else None for cell in cells]
        for row in range(len(manifest.rows)):  # manifest order: the first missing file is named
            for m, paths in table.paths.items():
                if paths[row] is not None and not paths[row].is_file():
                    raise DataError(
                        f"dataset {name!r}: {self.modalities[m]} file missing: {paths[row]} ({table.context(row, m)})"
                    )
        return table

    def _splits(self, name: str, manifest: Manifest, labels: np.ndarray) -> np.ndarray:
        if "split" not in manifest.columns:
            return assign_splits(labels, self.split_fractions, self.split_seed, name)
        splits = np.array([v.strip().lower() for v in manifest.column("split")], dtype=object)
        for row, value in enumerate(splits):
            if value not in SPLITS:
                raise DataError(
                    f"dataset {name!r}: manifest {manifest.path} row {row + 1}: unknown split value "
                    f"{manifest.rows[row]['split']!r}; expected one of {list(SPLITS)}"
                )
        return splits

    def resolved_image_channels(self, modality: str) -> int | None:
        """``image_channels``, or else the channel count of the modality's first training file (config order)."""
        if self.image_channels is not None or self.modalities.get(modality) != "image":
            return self.image_channels
        if modality not in self._channels:
            tables = self.tables()
            holders = [n for n in self.datasets if modality in self.split_modalities(n, "train")]
            holders += [n for n in self.datasets if n not in holders and modality in self.needed_modalities(n)]
            table = tables[holders[0]]
            row = int(table.rows("train")[0]) if modality in self.split_modalities(holders[0], "train") else 0
            first = load_image(table.paths[modality][row], None, self.image_size, table.context(row, modality))
            self._channels[modality] = first.shape[0]
        return self._channels[modality]

    # -- data ------------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.tables()
        super().setup(stage)

    def load_split(self, dataset: str, split: str, modalities: list[str]) -> ManifestDataset:
        table = self.tables()[dataset]
        rows = table.rows(split)
        kinds = {m: self.modalities[m] for m in modalities}
        features = {}
        for m in (m for m, kind in kinds.items() if kind == "features"):
            vectors = [load_npy(table.paths[m][row], table.context(row, m)) for row in rows]
            for row, vector in zip(rows, vectors, strict=True):
                if vector.shape != vectors[0].shape:
                    raise DataError(
                        f"dataset {dataset!r}: features of {m!r} have {vector.numel()} values in "
                        f"{table.context(row, m)} but {vectors[0].numel()} in {table.context(rows[0], m)}"
                    )
            features[m] = torch.stack(vectors)
        channels = {m: self.resolved_image_channels(m) for m, kind in kinds.items() if kind == "image"}
        return ManifestDataset(
            table, rows, kinds, features, self.image_size, channels, self.sample_rate, self.audio_seconds
        )

    def modality_info(self) -> dict[str, ModalityInfo]:
        """Kind and per-sample shape of every trained modality (from its first training row); features also carry
        their stacked training inputs (for backbones fitted to data), audio its sample rate."""
        self.setup()
        info = {}
        for m in sorted(self.trained_modalities()):
            kind = self.modalities[m]
            train = [s["train"] for s in self.splits.values() if m in s["train"].modalities]
            if kind == "text":
                info[m] = ModalityInfo(kind="text")
            elif kind == "features":
                inputs = torch.cat([d.features[m] for d in train])
                info[m] = ModalityInfo(kind="features", shape=tuple(inputs.shape[1:]), train_inputs=inputs)
            else:
                shape = tuple(train[0].load(m, 0).shape)
                rate = self.sample_rate if kind == "audio" else None
                info[m] = ModalityInfo(kind=kind, shape=shape, sample_rate=rate)
        return info

    def data_fingerprint(self) -> str:
        """The feature cache's data key: the fingerprints of every split of every dataset."""
        parts = [self.fingerprint(name, split) for name in sorted(self.datasets) for split in SPLITS]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def fingerprint(self, dataset: str, split: str, modalities: list[str] | None = None) -> str:
        """sha256 naming the inputs of one dataset split: loader settings, the manifest's bytes, and the path, size
        and modification time of every file the split's rows reference in ``modalities`` (default: the split's).
        Any edit to the manifest or to a referenced file changes it; the feature cache keys on it."""
        if dataset not in self.datasets:
            raise ConfigError(f"unknown dataset {dataset!r}; have {sorted(self.datasets)}")
        table = self.tables()[dataset]
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        modalities = sorted(modalities if modalities is not None else self.split_modalities(dataset, split))
        unknown = set(modalities) - set(self.needed_modalities(dataset))
        if unknown:
            raise ConfigError(f"dataset {dataset!r} has no modalities {sorted(unknown)} in its manifest")
        settings = {
            "version": 1,
            "dataset": dataset,
            "split": split,
            "modalities": {m: self.modalities[m] for m in modalities},
            "image_size": self.image_size,
            "image_channels": {m: self.resolved_image_channels(m) for m in modalities},
            "sample_rate": self.sample_rate,
            "audio_seconds": self.audio_seconds,
            "split_fractions": list(self.split_fractions),
            "split_seed": self.split_seed,
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        digest.update(table.manifest.path.read_bytes())
        for row in table.rows(split):
            for m in modalities:
                path = table.paths[m][row] if m in table.paths else None
                if path is None:
                    continue
                try:
                    stat = path.stat()
                except OSError as error:
                    raise DataError(f"cannot read {path} ({table.context(row, m)}): {error}") from error
                digest.update(f"{row}\t{m}\t{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()
