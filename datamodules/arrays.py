"""Feature arrays: one ``.npy`` array (N, D) per dataset and features modality, instead of a manifest
column of per-row files, joined to the manifest by row or, with an ids file, by ``id``. Rows are read when a batch
asks for them; statistics are computed chunk by chunk, so an array larger than memory is fine."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from torch import Tensor

from brokenbind.errors import ConfigError, DataError
from datamodules.loaders import FeatureArray
from datamodules.manifest_rows import DatasetTable

ArraySources = dict[str, dict[str, tuple[Path, Path | None]]]  # dataset -> modality -> (array, ids file or None)
EMBED_RECORD = "embed.yaml"  # brokenbind embed's record of its output OUT (arrays: OUT/<dataset>/<modality>.npy)


def array_sources(arrays: dict, modalities: dict[str, str]) -> ArraySources:
    """``arrays`` (dataset → modality → a path or ``{path, ids}``) checked for shape, not for files."""
    sources: ArraySources = {}
    for name, by_modality in arrays.items():
        for m, spec in (by_modality or {}).items():
            where = f"data.init_args.arrays.{name}.{m}"
            if modalities.get(m) != "features":
                raise ConfigError(f"{where}: arrays hold features modalities; {m!r} is {modalities.get(m)!r}")
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


def join_array(table: DatasetTable, m: str, path: Path, ids: Path | None) -> tuple[FeatureArray, np.ndarray]:
    """``m``'s array, opened, and the array row of every manifest row (-1 where the row's id is not in the ids file):
    row i is row i without an ids file, else rows are joined by ``id``."""
    name, manifest = table.name, table.manifest
    where = f"data.init_args.arrays.{name}.{m}"
    if not path.is_file():
        raise DataError(
            f"{where}: array not found: {path} (a relative path starts at the working directory, {Path.cwd()})"
        )
    check_finished(path, where)
    array = FeatureArray(path, where)
    if ids is None:
        if array.shape[0] != len(manifest):
            raise DataError(
                f"{where}: array {path} has {array.shape[0]} rows, manifest {manifest.path} has {len(manifest)}: "
                "without an ids file, array row i is manifest row i; give {path: ..., ids: <file of the array "
                "rows' ids, one per line>} to join by id"
            )
        return array, np.arange(len(manifest))
    if "id" not in manifest.columns:
        raise ConfigError(f"{where}: ids join the array to the manifest by id, but {manifest.path} has no id column")
    if not ids.is_file():
        raise DataError(
            f"{where}: ids file not found: {ids} (a relative path starts at the working directory, {Path.cwd()})"
        )
    names = pd.read_csv(ids, header=None, dtype=str, na_filter=False, skip_blank_lines=True)[0].str.strip()
    if len(names) != array.shape[0]:
        raise DataError(f"{where}: {ids} names {len(names)} ids for the {array.shape[0]} rows of {path}")
    duplicated = names[names.duplicated()]
    if len(duplicated):
        raise DataError(f"{where}: {ids} names id {duplicated.iloc[0]!r} twice")
    return array, pd.Index(names).get_indexer(manifest.stripped("id"))


def check_finished(path: Path, where: str) -> None:
    """Refuse an array that ``brokenbind embed`` has not finished (it was stopped): the rows it has not encoded yet
    are zeros, which would train and score as features. Read from embed's record next to the array, so the refusal
    holds whichever configuration names the array."""
    resolved = path.resolve()
    record_file = resolved.parent.parent / EMBED_RECORD
    if not record_file.is_file():
        return
    record = yaml.safe_load(record_file.read_text())
    stored = (record.get("datasets") or {}) if isinstance(record, dict) else {}  # another program's embed.yaml
    entry = stored.get(resolved.parent.name, {}).get(resolved.stem)
    if entry is None or entry["complete"]:
        return
    command = record.get("command")
    finish = f"`{command}` again in {record['directory']}" if command else "the brokenbind embed command that wrote it"
    raise DataError(
        f"{where}: {path} is unfinished: brokenbind embed was stopped before it encoded every row ({record_file} "
        f"records it incomplete), and the rows not encoded yet are zeros. Finish it: run {finish} (it keeps the rows "
        "already encoded), then train"
    )


class ArrayFeatures:
    """The features of one split read from an array file: item ``i`` is array row ``array_rows[i]``."""

    def __init__(self, array: FeatureArray, array_rows: np.ndarray, table: DatasetTable, rows: np.ndarray, m: str):
        self.array, self.array_rows, self.table, self.rows, self.modality = array, array_rows, table, rows, m

    def __len__(self) -> int:
        return len(self.array_rows)

    def __getitem__(self, i: int) -> Tensor:
        return self.batch([i])[0]

    def batch(self, items: list[int]) -> Tensor:
        """Items ``items`` in one read of the array (one ``preadv`` per run of consecutive rows)."""
        return self.array.rows(
            self.array_rows[items], lambda k: self.table.context(int(self.rows[items[k]]), self.modality)
        )

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
