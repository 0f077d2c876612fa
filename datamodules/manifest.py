"""Datasets described by manifests: one CSV, JSONL or Parquet file per dataset (read by pandas), one row per instance.

A manifest has one column per modality, holding a file path (image, audio, features) or the text itself, and
optionally ``label`` (all integer class ids, or all class names numbered in sorted order; an empty cell: unlabelled),
``split`` (train/val/test) and ``id`` (unique per manifest). Other columns are ignored. Relative file paths in a
manifest resolve against ``root``, by default the manifest's own directory; the manifest paths themselves (and
``arrays`` paths) resolve against the working directory. A ``features`` modality may instead come from one
memory-mapped ``.npy`` array per dataset (``arrays``), joined to the manifest by row or by id.

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
empty cells in the modalities a split must carry, unknown split values, duplicate ids, every referenced file's
existence (the first missing one is named with its row: ``data row N (line L)``, the N-th row below the header on
line L of the file), and one width per features modality across datasets. Images and audio are read lazily in
``__getitem__`` (of audio, ``setup`` reads the WAV headers, to say how much ``audio_seconds`` cuts); features
(``.npy``) are read in ``setup`` because backbones fitted to data need the training inputs.
"""

import csv
import hashlib
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset

from brokenbind.backbones import ModalityInfo
from brokenbind.errors import ConfigError, DataError
from datamodules.base import SPLITS, PairedDataModule
from datamodules.loaders import (
    FILE_KINDS,
    KINDS,
    FeatureArray,
    load_image,
    load_npy,
    load_text,
    load_wav,
    wav_seconds,
)

RESERVED_COLUMNS = ("label", "split", "id")
UNLABELLED = -1
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")


@dataclass
class Manifest:
    """A manifest read by pandas: its columns (in file order) and its rows, every cell a str ("" when empty), and the
    line of the file each row starts on (None where lines mean nothing: Parquet, shards)."""

    path: Path
    frame: pd.DataFrame
    lines: list[int] | None = None
    _lists: dict[str, list[str]] = field(default_factory=dict, repr=False)  # columns as lists: fast cell access

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    def __len__(self) -> int:
        return len(self.frame)

    def column(self, name: str) -> list[str]:
        if name not in self.frame.columns:
            return [""] * len(self.frame)
        if name not in self._lists:
            self._lists[name] = self.frame[name].tolist()
        return self._lists[name]

    def cell(self, row: int, column: str) -> str:
        return self.column(column)[row] if column in self.frame.columns else ""

    def row_name(self, row: int) -> str:
        """``data row 6 (line 7)``: the 1-based row below the header (blank rows not counted) and its line in an
        editor."""
        return _row_name(row, self.lines)

    def where(self, row: int) -> str:
        """Where a row lives, for error messages: manifest, data row and line, id when the manifest has one."""
        where = f"manifest {self.path} {self.row_name(row)}"
        if "id" in self.frame.columns:
            where += f", id {self.cell(row, 'id').strip()!r}"
        return where


def _row_name(row: int, lines: list[int] | None) -> str:
    return f"data row {row + 1}" + (f" (line {lines[row]})" if lines is not None else "")


def _cell(value: object, path: Path, row: int, column: str, lines: list[int] | None) -> str:
    """One JSONL or Parquet value as the str a CSV would hold: missing values are "", booleans lower case."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, str | int | float | np.integer | np.floating):
        return str(value)
    raise DataError(
        f"manifest {path} {_row_name(row, lines)}: column {column!r} holds a {type(value).__name__}; expected a string "
        "or number"
    )


def _as_strings(frame: pd.DataFrame, path: Path, lines: list[int] | None) -> pd.DataFrame:
    frame = frame.astype(object)
    for column in frame.columns:
        frame[column] = [_cell(v, path, row, column, lines) for row, v in enumerate(frame[column].tolist())]
    return frame


def _record_lines(path: Path, suffix: str) -> list[int] | None:
    """The line each record pandas reads starts on, as pandas skips blank lines: the data records of a CSV (after its
    header; a quoted cell may span lines), every non-blank line of JSON lines; None for Parquet."""
    if suffix == ".parquet":
        return None
    if suffix != ".csv":
        with path.open(encoding="utf-8") as f:
            return [number for number, line in enumerate(f, 1) if line.strip()]
    starts, end = [], 0
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for record in reader:
                if len(record) > 1 or (record and record[0].strip()):
                    starts.append(end + 1)
                end = reader.line_num
    except (csv.Error, UnicodeDecodeError):  # pandas read it: rows are then named without their lines
        return None
    return starts[1:]


def _read_frame(path: Path, suffix: str) -> tuple[pd.DataFrame, list[int] | None]:
    """The file as a frame of str cells, columns named by its header (CSV) or keys (JSONL, Parquet), and the line each
    row starts on (``_record_lines``; None when Python's csv reader and pandas disagree on the records)."""
    if suffix == ".csv":
        try:  # header=None: the header row is read as data, so duplicate names are seen rather than renamed
            raw = pd.read_csv(path, header=None, dtype=str, na_filter=False, encoding="utf-8-sig")
        except pd.errors.EmptyDataError as error:
            raise DataError(f"manifest {path} is empty: expected a header row naming the columns") from error
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise DataError(f"manifest {path}: cannot parse it as CSV: {str(error).strip()}") from error
        columns = [str(c).strip() for c in raw.iloc[0]]
        frame = raw.iloc[1:].set_axis(columns, axis=1)
        lines = _record_lines(path, suffix)
    else:
        try:
            if suffix == ".parquet":
                frame = pd.read_parquet(path, dtype_backend="numpy_nullable")
            else:
                frame = pd.read_json(path, lines=True, dtype=False, dtype_backend="numpy_nullable")
        except ValueError as error:
            kind = "Parquet" if suffix == ".parquet" else "JSON lines (one JSON object per line)"
            raise DataError(f"manifest {path}: cannot parse it as {kind}: {error}") from error
        lines = _record_lines(path, suffix)
        lines = lines if lines is None or len(lines) == len(frame) else None
        frame = _as_strings(frame.rename(columns=lambda c: str(c).strip()), path, lines)
        columns = list(frame.columns)
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated or "" in columns:
        raise DataError(f"manifest {path}: header has duplicate or empty column names {duplicated or ['']}")
    if not len(frame):
        return frame, None
    lines = lines if lines is not None and len(lines) == len(frame) else None
    kept = ~np.asarray((frame.apply(lambda col: col.str.strip()) == "").all(axis=1), dtype=bool)  # not a blank row
    return frame[kept].reset_index(drop=True), None if lines is None else np.asarray(lines)[kept].tolist()


def read_manifest(path: str | Path) -> Manifest:
    """A CSV (``.csv``), JSON-lines (``.jsonl``, ``.ndjson``) or Parquet (``.parquet``) manifest, read by pandas."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ConfigError(f"manifest {path}: unknown format {suffix!r}; use one of {list(MANIFEST_SUFFIXES)}")
    return Manifest(path, *_read_frame(path, suffix))


LABEL_RULE = (
    "labels must be all integer class ids (0, 1, 2, ...) or all class names (cat, dog, ...); an empty cell marks an "
    "unlabelled row"
)


def _label_kind(value: str) -> str:
    """``id`` (an integer), ``number`` (any other number: 3.0, NaN, inf, 1e3) or ``name``."""
    for kind, parse in (("id", int), ("number", float)):
        try:
            parse(value)
            return kind
        except ValueError:
            pass
    return "name"


def label_mapping(manifests: list[Manifest]) -> dict[str, int] | None:
    """One label numbering for all ``manifests``: None when every label is an integer class id (kept as is), else the
    sorted distinct class names numbered from 0. Labels must be all ids or all names: a number that is not an integer
    (``3.0``, ``NaN``: what a spreadsheet or pandas writes for a missing value) or a mix of ids and names is a
    ``DataError`` naming the value, the manifest and the row, instead of new classes and a silent renumbering."""
    first: dict[str, tuple[str, Manifest, int]] = {}  # kind -> value, manifest and row of its first label
    for manifest in manifests:
        if "label" not in manifest.columns:
            continue
        for row, value in enumerate(manifest.column("label")):
            value = value.strip()
            if value and _label_kind(value) not in first:
                first[_label_kind(value)] = (value, manifest, row)
    first = {kind: (value, manifest.where(row)) for kind, (value, manifest, row) in first.items()}
    if "number" in first:
        value, where = first["number"]
        raise DataError(f"label {value!r} in {where} is a number but not an integer class id: {LABEL_RULE}")
    if "id" in first and "name" in first:
        (name, name_at), (id_, id_at) = first["name"], first["id"]
        raise DataError(
            f"label {name!r} in {name_at} is a class name, but label {id_!r} in {id_at} is an integer class id: "
            f"{LABEL_RULE}"
        )
    if "name" not in first:
        return None
    names = sorted({v.strip() for m in manifests if "label" in m.columns for v in m.column("label") if v.strip()})
    return {v: i for i, v in enumerate(names)}


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
    # modality -> (its array, the array row of every manifest row; -1: the row's id is not in the array)
    arrays: dict[str, tuple[FeatureArray, np.ndarray]] = field(default_factory=dict)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def context(self, row: int, column: str | None = None) -> str:
        """Where a cell lives, for error messages: manifest, 1-based row, id when the manifest has one."""
        return self.manifest.where(row) + (f", column {column!r}" if column else "")


class ArrayFeatures:
    """The features of one split read from a memory-mapped array: item ``i`` is array row ``array_rows[i]``."""

    def __init__(self, array: FeatureArray, array_rows: np.ndarray, table: "DatasetTable", rows: np.ndarray, m: str):
        self.array, self.array_rows, self.table, self.rows, self.modality = array, array_rows, table, rows, m

    def __len__(self) -> int:
        return len(self.array_rows)

    def __getitem__(self, i: int) -> Tensor:
        return self.array.rows(
            self.array_rows[i : i + 1], lambda: self.table.context(int(self.rows[i]), self.modality)
        )[0]

    def chunks(self, size: int = 65536) -> Iterator[Tensor]:
        """All rows, ``size`` at a time (array order within a chunk, for sequential reads)."""
        for start in range(0, len(self.array_rows), size):
            part = np.sort(self.array_rows[start : start + size])
            yield self.array.rows(part, f"dataset {self.table.name!r}, modality {self.modality!r}")


def feature_stats(parts: list[Tensor | ArrayFeatures]) -> tuple[Tensor, Tensor]:
    """Per-feature mean and standard deviation (unbiased, as ``Tensor.std``) over every row of ``parts``, in float64,
    chunk by chunk: an array's rows are never all in memory."""
    total, total_sq, count = None, None, 0
    for part in parts:
        for chunk in part.chunks() if isinstance(part, ArrayFeatures) else [part]:
            x = chunk.flatten(1).double()
            total = x.sum(0) if total is None else total + x.sum(0)
            total_sq = x.square().sum(0) if total_sq is None else total_sq + x.square().sum(0)
            count += len(x)
    mean = total / count
    var = (total_sq - count * mean.square()) / max(count - 1, 1)
    return mean, var.clamp_min(0).sqrt()


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
            return load_text(self.table.manifest.cell(row, modality), context)
        path = self.table.paths[modality][row]
        if kind == "image":
            return load_image(path, self.image_channels.get(modality), self.image_size, context)
        return load_wav(path, self.sample_rate, self.audio_seconds, context)

    def __getitem__(self, i: int) -> dict:
        return {"x": {m: self.load(m, i) for m in self.modalities}, "index": self.index[i], "label": self.label[i]}


class ManifestDataModule(PairedDataModule):
    """Datasets read from manifests (one CSV, JSONL or Parquet per dataset); see the module docstring for the format.

    Args:
        manifests: dataset name → manifest path, one per configured dataset.
        modalities: modality column → kind (image, audio, text, features). These are the available modalities.
        root: directory that relative file paths resolve against; default: each manifest's directory.
        split_fractions: train/val/test fractions for manifests without a ``split`` column (stratified by label).
        split_seed: seed of that split (independent of the training seed).
        image_size: images are loaded at image_size × image_size (the one size setting: timm backbones take it unless
            their spec names another; open_clip and hf resize to their model's own input size).
        image_channels: 1 or 3 to force grayscale or RGB; None keeps the channel count of the modality's first
            training file (other files of that modality are converted to it, so batches always stack).
        sample_rate, audio_seconds: audio is resampled to ``sample_rate`` and cropped or zero-padded to
            ``audio_seconds``.
        arrays: dataset → features modality → one ``.npy`` array (N, D) holding that modality for the whole dataset,
            read memory-mapped; instead of a manifest column of per-row files. A path alone: array row i is manifest
            row i. ``{path: emb.npy, ids: emb_ids.txt}``: the ids file names each array row's manifest ``id`` (one per
            line), and rows are joined by id. Relative paths start at the working directory, like ``manifests``.
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
        arrays: dict[str, dict[str, str | dict[str, str]]] | None = None,
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
        if abs(sum(split_fractions) - 1) > 1e-3:
            raise ConfigError(
                f"split_fractions {list(split_fractions)} sum to {sum(split_fractions):g}; give train/val/test "
                "fractions that sum to 1, e.g. [0.6, 0.2, 0.2]"
            )
        if image_size < 1 or sample_rate < 1 or audio_seconds <= 0:
            raise ConfigError("image_size, sample_rate and audio_seconds must be positive")
        if image_channels not in (None, 1, 3):
            raise ConfigError(f"image_channels must be 1, 3 or None (keep the files'), got {image_channels}")
        self.check_manifests(manifests)
        self.manifests = {name: str(path) for name, path in manifests.items()}
        self.modalities = dict(modalities)
        self.available_modalities = tuple(modalities)
        self.root = root
        self.split_fractions, self.split_seed = tuple(split_fractions), split_seed
        self.image_size, self.image_channels = image_size, image_channels
        self.sample_rate, self.audio_seconds = sample_rate, audio_seconds
        self.arrays = self._array_sources(arrays or {})
        super().__init__(**kwargs)
        missing, extra = set(self.datasets) - set(self.manifests), set(self.manifests) - set(self.datasets)
        if missing or extra:
            raise ConfigError(
                f"manifests must name exactly the configured datasets {sorted(self.datasets)}: "
                f"missing {sorted(missing)}, unknown {sorted(extra)}"
            )
        for name, sources in self.arrays.items():
            if name not in self.datasets:
                raise ConfigError(f"arrays: unknown dataset {name!r}; have {sorted(self.datasets)}")
            for m in sources:
                if m not in self.needed_modalities(name):
                    raise ConfigError(
                        f"arrays.{name}.{m}: dataset {name!r} does not use modality {m!r}; it uses "
                        f"{self.needed_modalities(name)}"
                    )
        self._tables: dict[str, DatasetTable] | None = None
        self._channels: dict[str, int | None] = {}
        self._class_names: dict[int, str] | None = None  # class id -> the manifests' class name (names only)

    def check_manifests(self, manifests: dict[str, str]) -> None:
        for name, path in manifests.items():
            if Path(path).suffix.lower() not in MANIFEST_SUFFIXES:
                raise ConfigError(f"manifest of {name!r}: {path} must end in one of {list(MANIFEST_SUFFIXES)}")

    def _array_sources(self, arrays: dict) -> dict[str, dict[str, tuple[Path, Path | None]]]:
        """``arrays`` as dataset → modality → (array path, ids path or None), checked for shape (not for files)."""
        sources: dict[str, dict[str, tuple[Path, Path | None]]] = {}
        for name, by_modality in arrays.items():
            for m, spec in (by_modality or {}).items():
                where = f"data.init_args.arrays.{name}.{m}"
                if self.modalities.get(m) != "features":
                    raise ConfigError(f"{where}: arrays hold features modalities; {m!r} is {self.modalities.get(m)!r}")
                if isinstance(spec, str):
                    spec = {"path": spec}
                if not isinstance(spec, dict) or "path" not in spec or set(spec) - {"path", "ids"}:
                    raise ConfigError(f"{where}: give a .npy path, or {{path: emb.npy, ids: emb_ids.txt}}")
                if Path(spec["path"]).suffix.lower() != ".npy":
                    raise ConfigError(f"{where}: {spec['path']} must be a .npy array (numpy.save)")
                ids = spec.get("ids")
                sources.setdefault(name, {})[m] = (
                    Path(spec["path"]).expanduser(),
                    Path(ids).expanduser() if ids else None,
                )
        return sources

    # -- manifests -------------------------------------------------------------------------------------------------
    def needed_modalities(self, dataset: str) -> list[str]:
        """Every modality column some split of ``dataset`` carries."""
        return sorted({m for split in SPLITS for m in self.split_modalities(dataset, split)})

    def tables(self) -> dict[str, DatasetTable]:
        """The parsed and validated manifests (cached): raises on the first problem, before any training."""
        if self._tables is None:
            manifests = self.read_manifests()
            mapping = label_mapping(list(manifests.values()))
            self._class_names = None if mapping is None else {i: name for name, i in mapping.items()}
            tables, offset = {}, 0
            for name, manifest in manifests.items():
                tables[name] = self._table(name, manifest, mapping, offset)
                offset += len(manifest)
            self._tables = tables
        return self._tables

    def read_manifests(self) -> dict[str, Manifest]:
        """Every dataset's manifest, in sorted dataset order."""
        for name in sorted(self.datasets):
            path = Path(self.manifests[name]).expanduser()
            if not path.is_file():
                raise DataError(
                    f"dataset {name!r}: manifest not found: {path}; fix data.init_args.manifests.{name} "
                    f"(a relative path starts at the working directory, {Path.cwd()})"
                )
        return {name: read_manifest(self.manifests[name]) for name in sorted(self.datasets)}

    def file_base(self, manifest: Manifest) -> Path:
        """Where relative file paths in ``manifest`` start: ``root``, by default the manifest's directory."""
        return Path(self.root).expanduser() if self.root is not None else manifest.path.parent

    def resolve_files(self, name: str, manifest: Manifest, modality: str) -> list[Path | None]:
        """The file of every row of a file-kind ``modality`` column (None for an empty cell), relative paths from
        ``file_base``."""
        base = self.file_base(manifest)
        return [base / Path(cell.strip()).expanduser() if cell.strip() else None for cell in manifest.column(modality)]

    def manifest_digest(self, table: DatasetTable) -> bytes:
        """What of the manifest itself goes into the data fingerprint: its bytes."""
        return table.manifest.path.read_bytes()

    def _table(self, name: str, manifest: Manifest, mapping: dict[str, int] | None, offset: int) -> DatasetTable:
        path = manifest.path
        if not len(manifest):
            raise DataError(f"dataset {name!r}: manifest {path} has no rows")
        arrays = self.arrays.get(name, {})
        for m in self.needed_modalities(name):
            if m in arrays and m in manifest.columns:
                raise ConfigError(
                    f"dataset {name!r}: modality {m!r} comes from data.init_args.arrays.{name}.{m}, and manifest "
                    f"{path} has a column {m!r} too; remove one of them"
                )
            if m not in manifest.columns and m not in arrays:
                raise ConfigError(
                    f"dataset {name!r}: manifest {path} has no column {m!r} (a {self.modalities[m]} modality the "
                    f"dataset needs); its columns: {manifest.columns}"
                )
        if "id" in manifest.columns:
            seen: dict[str, int] = {}
            for row, value in enumerate(manifest.column("id")):
                value = value.strip()
                if not value:
                    raise DataError(f"dataset {name!r}: manifest {path} {manifest.row_name(row)} has an empty id")
                if value in seen:
                    raise DataError(
                        f"dataset {name!r}: manifest {path} has duplicate id {value!r} in "
                        f"{manifest.row_name(seen[value])} and {manifest.row_name(row)}"
                    )
                seen[value] = row
        labels = np.full(len(manifest), UNLABELLED, dtype=np.int64)
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
                if m in arrays:
                    continue  # checked against the array's ids below
                for row in rows:
                    if not manifest.cell(row, m).strip():
                        raise DataError(
                            f"dataset {name!r}: {table.context(row)}: modality {m!r} is empty, but every {split} row "
                            f"must carry {self.split_modalities(name, split)}"
                            f"{self._oracle_hint(name, split, m) or '; fill in the cell or remove the row'}"
                        )
        for m, source in arrays.items():
            table.arrays[m] = self._array_rows(table, m, *source)
        for m in self.needed_modalities(name):
            if self.modalities[m] in FILE_KINDS and m not in arrays:
                table.paths[m] = self.resolve_files(name, manifest, m)
        for row in range(len(manifest)):  # manifest order: the first missing file is named
            for m, paths in table.paths.items():
                if paths[row] is not None and not paths[row].is_file():
                    raise DataError(
                        f"dataset {name!r}: {self.modalities[m]} file missing: {paths[row]} ({table.context(row, m)}); "
                        f"restore the file, correct its path (relative paths start at {self.file_base(manifest)}) or "
                        "remove the row"
                    )
        return table

    def _oracle_hint(self, name: str, split: str, modality: str) -> str:
        """Why a training row needs a modality its dataset does not observe: the oracle trains on the flows'."""
        flows = {m for flow in self.flows if flow.dataset == name for m in flow.modalities}
        if not (self.oracle and split == "train" and modality in flows):
            return ""
        return (
            f"; the oracle (--method oracle, data.init_args.oracle: true) trains on each flow's query and target, so "
            f"{name!r}'s training rows must hold {modality!r} too: fill that column in or use another method"
        )

    def _array_rows(self, table: DatasetTable, m: str, path: Path, ids: Path | None) -> tuple[FeatureArray, np.ndarray]:
        """Open ``m``'s array and map every manifest row to its array row; every row a split needs must have one."""
        name, manifest = table.name, table.manifest
        where = f"data.init_args.arrays.{name}.{m}"
        if not path.is_file():
            raise DataError(
                f"{where}: array not found: {path} (a relative path starts at the working directory, {Path.cwd()})"
            )
        array = FeatureArray(path, where)
        if ids is None:
            if array.shape[0] != len(manifest):
                raise DataError(
                    f"{where}: array {path} has {array.shape[0]} rows, manifest {manifest.path} has {len(manifest)}: "
                    "without an ids file, array row i is manifest row i; give {path: ..., ids: <file of the array "
                    "rows' ids, one per line>} to join by id"
                )
            positions = np.arange(len(manifest))
        else:
            if "id" not in manifest.columns:
                raise ConfigError(
                    f"{where}: ids join the array to the manifest by id, but {manifest.path} has no id column"
                )
            if not ids.is_file():
                raise DataError(
                    f"{where}: ids file not found: {ids} (a relative path starts at the working directory, "
                    f"{Path.cwd()})"
                )
            names = pd.read_csv(ids, header=None, dtype=str, na_filter=False, skip_blank_lines=True)[0].str.strip()
            if len(names) != array.shape[0]:
                raise DataError(f"{where}: {ids} names {len(names)} ids for the {array.shape[0]} rows of {path}")
            duplicated = names[names.duplicated()]
            if len(duplicated):
                raise DataError(f"{where}: {ids} names id {duplicated.iloc[0]!r} twice")
            positions = pd.Index(names).get_indexer([v.strip() for v in manifest.column("id")])
        for split in SPLITS:
            if m not in self.split_modalities(name, split):
                continue
            rows = table.rows(split)
            absent = rows[positions[rows] < 0]
            if len(absent):
                raise DataError(
                    f"dataset {name!r}: {table.context(int(absent[0]))}: no row in array {path} (its id is not in "
                    f"{ids}), but every {split} row must carry {self.split_modalities(name, split)}"
                    f"{self._oracle_hint(name, split, m)}"
                )
        return array, positions

    def _splits(self, name: str, manifest: Manifest, labels: np.ndarray) -> np.ndarray:
        if "split" not in manifest.columns:
            return assign_splits(labels, self.split_fractions, self.split_seed, name)
        splits = np.array([v.strip().lower() for v in manifest.column("split")], dtype=object)
        for row, value in enumerate(splits):
            if value not in SPLITS:
                raise DataError(
                    f"dataset {name!r}: manifest {manifest.path} {manifest.row_name(row)}: unknown split value "
                    f"{manifest.cell(row, 'split')!r}; expected one of {list(SPLITS)}"
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
        if self.splits:
            return
        self.tables()
        super().setup(stage)
        self._check_feature_widths()
        self._warn_cut_audio()

    def _check_feature_widths(self) -> None:
        """A features modality has one width in every dataset and split: one head embeds all of its rows."""
        for m in (m for m, kind in self.modalities.items() if kind == "features"):
            first: tuple[int, str] | None = None
            for name, splits in self.splits.items():
                for data in splits.values():
                    if m not in data.features or not len(data):
                        continue
                    values = data.features[m]
                    if isinstance(values, ArrayFeatures):
                        width = values.array.shape[1]
                        source = f"array {values.array.path} (data.init_args.arrays.{name}.{m})"
                    else:
                        row = int(data.rows[0])
                        width, source = values.shape[1], f"{data.table.paths[m][row]} ({data.table.context(row, m)})"
                    if first is None:
                        first = (width, source)
                    elif width != first[0]:
                        raise DataError(
                            f"features of {m!r} have {width} values per row in {source} but {first[0]} in {first[1]}; "
                            "one modality has one width in every dataset (one head embeds it): make them match (the "
                            "same encoder) or name them as two modalities"
                        )

    def _warn_cut_audio(self) -> None:
        """Clips are cut to ``audio_seconds``: say once how much of the audio that drops (from the WAV headers)."""
        for m in (m for m, kind in self.modalities.items() if kind == "audio"):
            seconds = [
                wav_seconds(data.table.paths[m][row], data.table.context(row, m))
                for splits in self.splits.values()
                for data in splits.values()
                if m in data.modalities
                for row in data.rows.tolist()
            ]
            cut = [s for s in seconds if s > self.audio_seconds]
            if cut:
                lost = sum(s - self.audio_seconds for s in cut) / sum(seconds)
                rank_zero_warn(
                    f"audio {m!r}: {len(cut)} of {len(seconds)} clips ({len(cut) / len(seconds):.0%}) last longer than "
                    f"data.init_args.audio_seconds = {self.audio_seconds:g} s (default 1.0) and are cut to their first "
                    f"{self.audio_seconds:g} s, dropping {lost:.0%} of the audio (the longest clip lasts "
                    f"{max(cut):.2f} s); raise audio_seconds to keep more (every clip is padded or cut to that length, "
                    "so time and memory grow with it)"
                )

    def load_split(self, dataset: str, split: str, modalities: list[str]) -> ManifestDataset:
        table = self.tables()[dataset]
        rows = table.rows(split)
        kinds = {m: self.modalities[m] for m in modalities}
        features = {}
        for m in (m for m, kind in kinds.items() if kind == "features"):
            if m in table.arrays:
                array, positions = table.arrays[m]
                features[m] = ArrayFeatures(array, positions[rows], table, rows, m)
                continue
            vectors = [load_npy(table.paths[m][row], table.context(row, m)) for row in rows]
            for row, vector in zip(rows, vectors, strict=True):
                if vector.shape != vectors[0].shape:
                    raise DataError(
                        f"dataset {dataset!r}: features of {m!r} have {vector.numel()} values in "
                        f"{table.context(row, m)} but {vectors[0].numel()} in {table.context(rows[0], m)}; every "
                        f"row's .npy must hold the same number of values: fix or remove that row"
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
            elif kind == "features" and any(isinstance(d.features[m], ArrayFeatures) for d in train):
                # memory-mapped arrays stay on disk: backbones fitted to data get the statistics, not the rows
                mean, std = feature_stats([d.features[m] for d in train])
                info[m] = ModalityInfo(kind="features", shape=tuple(mean.shape), train_stats=(mean, std))
            elif kind == "features":
                inputs = torch.cat([d.features[m] for d in train])
                info[m] = ModalityInfo(kind="features", shape=tuple(inputs.shape[1:]), train_inputs=inputs)
            else:
                shape = tuple(train[0].load(m, 0).shape)
                rate = self.sample_rate if kind == "audio" else None
                info[m] = ModalityInfo(kind=kind, shape=shape, sample_rate=rate)
        return info

    def class_names(self, labels: Tensor) -> list[str]:
        """The class names the manifests used (their integer class ids where they used ids); "" when unlabelled."""
        self.tables()
        if self._class_names is None:
            return super().class_names(labels)
        return [self._class_names[label] if label >= 0 else "" for label in labels.tolist()]

    def instance_ids(self, index: Tensor) -> list[str]:
        """The manifest's own ``id`` of each instance (global index = the dataset's offset + its manifest row); the
        global index where a manifest has no id column."""
        tables = sorted(self.tables().values(), key=lambda t: t.offset)
        out = []
        for i in index.tolist():
            table = next(t for t in reversed(tables) if t.offset <= i)
            ids = table.manifest.column("id") if "id" in table.manifest.columns else None
            out.append(ids[i - table.offset].strip() if ids else str(i))
        return out

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
        for m in modalities:  # an array is named once, with the ids file that joins it
            if m in table.arrays:
                files = [p for p in self.arrays[dataset][m] if p is not None]
                settings.setdefault("arrays", {})[m] = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        digest.update(self.manifest_digest(table))
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
