"""Datasets described by manifests: one CSV, JSONL or Parquet file per dataset (read by pandas), one row per instance.

A manifest has one column per modality, holding a file path (image, audio, features) or the text itself, and
optionally ``label`` (all integer class ids, or all class names numbered in sorted order; an empty cell: unlabelled),
``split`` (train/val/test) and ``id`` (unique per manifest). Other columns are ignored. Relative file paths in a
manifest resolve against ``root``, by default the manifest's own directory; the manifest paths themselves (and
``arrays`` paths) resolve against the working directory. A ``features`` modality may instead come from one
``.npy`` array per dataset (``arrays``), joined to the manifest by row or by id.

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

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset

from brokenbind.errors import ConfigError, DataError
from brokenbind.modality import ModalityInfo
from datamodules.arrays import ArrayFeatures, array_sources, feature_stats, join_array
from datamodules.base import SPLITS, PairedDataModule
from datamodules.loaders import FILE_KINDS, KINDS, FeatureArray, load_image, load_npy, load_text, load_wav, wav_seconds
from datamodules.manifest_rows import (
    MANIFEST_SUFFIXES,
    RESERVED_COLUMNS,
    DatasetTable,
    Manifest,
    check_ids,
    read_manifest,
)
from datamodules.splits import (
    LABEL_RULE,
    UNLABELLED,
    assign_splits,
    check_split_fractions,
    label_mapping,
    row_labels,
    row_splits,
)

__all__ = [  # the names this module defined before it was split by concern, importable from here as before
    "LABEL_RULE",
    "MANIFEST_SUFFIXES",
    "RESERVED_COLUMNS",
    "UNLABELLED",
    "ArrayFeatures",
    "DatasetTable",
    "Manifest",
    "ManifestDataModule",
    "ManifestDataset",
    "assign_splits",
    "feature_stats",
    "label_mapping",
    "read_manifest",
]


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

    def __getitems__(self, items: list[int]) -> list[dict]:
        """A batch of items (DataLoader asks for a batch when a dataset has this): an array modality is read for the
        whole batch in one call, not a file read per row; the rest item by item."""
        arrays = {m: f.batch(items) for m, f in self.features.items() if isinstance(f, ArrayFeatures)}
        return [
            {
                "x": {m: arrays[m][k] if m in arrays else self.load(m, i) for m in self.modalities},
                "index": self.index[i],
                "label": self.label[i],
            }
            for k, i in enumerate(items)
        ]


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
            read row by row as batches ask; instead of a manifest column of per-row files. A path alone: array row i
            is manifest row i. ``{path: emb.npy, ids: emb_ids.txt}``: the ids file names each array row's manifest
            ``id`` (one per line), and rows are joined by id. Relative paths start at the working directory, like
            ``manifests``.
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
        split_fractions = check_split_fractions(split_fractions)
        if image_size < 1 or sample_rate < 1 or audio_seconds <= 0:
            raise ConfigError("image_size, sample_rate and audio_seconds must be positive")
        if image_channels not in (None, 1, 3):
            raise ConfigError(f"image_channels must be 1, 3 or None (keep the files'), got {image_channels}")
        self.check_manifests(manifests)
        self.manifests = {name: str(path) for name, path in manifests.items()}
        self.modalities = dict(modalities)
        self.available_modalities = tuple(modalities)
        self.root = root
        self.split_fractions, self.split_seed = split_fractions, split_seed
        self.image_size, self.image_channels = image_size, image_channels
        self.sample_rate, self.audio_seconds = sample_rate, audio_seconds
        self.arrays = array_sources(arrays or {}, self.modalities)
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
        check_ids(name, manifest)
        labels = row_labels(manifest, mapping)
        splits = row_splits(name, manifest, labels, self.split_fractions, self.split_seed)
        table = DatasetTable(name, manifest, labels, splits, offset)
        for split in SPLITS:
            rows = table.rows(split)
            if not len(rows) and (split == "train" or name in self.eval_datasets):
                raise DataError(f"dataset {name!r}: manifest {path} has no {split} rows")
            for m in self.split_modalities(name, split):
                if m in arrays:
                    continue  # checked against the array's ids below
                empty = rows[manifest.stripped(m).eq("").to_numpy()[rows]]
                if len(empty):
                    row = int(empty[0])
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
        flows = {m for flow in self.flows if flow.dataset == name for m in flow.named_modalities}
        if not (self.oracle and split == "train" and modality in flows):
            return ""
        return (
            f"; the oracle (--method oracle, data.init_args.oracle: true) trains on each flow's query and target, so "
            f"{name!r}'s training rows must hold {modality!r} too: fill that column in or use another method"
        )

    def _array_rows(self, table: DatasetTable, m: str, path: Path, ids: Path | None) -> tuple[FeatureArray, np.ndarray]:
        """Open ``m``'s array and map every manifest row to its array row; every row a split needs must have one."""
        array, positions = join_array(table, m, path, ids)
        for split in SPLITS:
            if m not in self.split_modalities(table.name, split):
                continue
            rows = table.rows(split)
            absent = rows[positions[rows] < 0]
            if len(absent):
                raise DataError(
                    f"dataset {table.name!r}: {table.context(int(absent[0]))}: no row in array {path} (its id is not "
                    f"in {ids}), but every {split} row must carry {self.split_modalities(table.name, split)}"
                    f"{self._oracle_hint(table.name, split, m)}"
                )
        return array, positions

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
        return self.load_rows(dataset, self.tables()[dataset].rows(split), modalities)

    def load_rows(self, dataset: str, rows: np.ndarray, modalities: list[str]) -> ManifestDataset:
        """Manifest rows ``rows`` of ``dataset`` (in that order), carrying ``modalities``."""
        table = self.tables()[dataset]
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
        for m in sorted(self.graph.modalities()):
            kind = self.modalities[m]
            train = [s["train"] for s in self.splits.values() if m in s["train"].modalities]
            if kind == "text":
                info[m] = ModalityInfo(kind="text")
            elif kind == "features" and any(isinstance(d.features[m], ArrayFeatures) for d in train):
                # arrays stay on disk: backbones fitted to data get the statistics, not the rows
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
        index = index.numpy()
        out = index.astype(str).astype(object)
        for table in self.tables().values():
            mine = np.flatnonzero((index >= table.offset) & (index < table.offset + len(table.manifest)))
            if len(mine) and "id" in table.manifest.columns:
                out[mine] = table.manifest.stripped("id").to_numpy()[index[mine] - table.offset]
        return out.tolist()

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
