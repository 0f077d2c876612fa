"""Labels and splits: one class numbering across manifests, and the stratified train/val/test assignment shared by
every datamodule that splits its instances itself (manifests without a ``split`` column, shards, mfeat)."""

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from brokenbind.errors import ConfigError, DataError
from datamodules.base import SPLITS
from datamodules.manifest_rows import Manifest

UNLABELLED = -1
SPLIT_DTYPE = f"<U{max(map(len, SPLITS))}"  # a split name per row as fixed-width chars, not a Python object
# The missing-value spellings of pandas' readers (``na_values``), compared without case: a spreadsheet or a pandas
# export writes them for an empty cell, and a CSV is read verbatim (``na_filter=False``), so a label cell holding one
# is an unlabelled row, as an empty cell is, in every manifest format (a Parquet or JSON null arrives as "").
MISSING_LABELS = frozenset(
    s.lower() for s in ("", "N/A", "NA", "NaN", "-NaN", "null", "None", "<NA>", "#N/A", "#NA", "#N/A N/A", "n/a")
)
LABEL_RULE = (
    "labels must be all integer class ids (0, 1, 2, ...; 3.0 counts as 3, as pandas writes an integer column that "
    "has a missing value) or all class names (cat, dog, ...); an empty cell, or N/A, NA, NaN, null or None, marks an "
    "unlabelled row"
)


def check_split_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three positive train/val/test fractions summing to 1 (to within 1e-3), as a tuple."""
    if len(fractions) != 3 or min(fractions) <= 0:
        raise ConfigError(f"split_fractions must be three positive train/val/test fractions, got {fractions}")
    if abs(sum(fractions) - 1) > 1e-3:
        raise ConfigError(
            f"split_fractions {list(fractions)} sum to {sum(fractions):g}; give train/val/test fractions that sum to "
            "1, e.g. [0.6, 0.2, 0.2]"
        )
    return tuple(fractions)


def cut_stratum(members: np.ndarray, fractions: Sequence[float], start: int = 0) -> list[np.ndarray]:
    """``members`` cut into one part per fraction, as the stratum at positions [start, start + len) of a layout of
    strata: the layout is cut where its cumulative fractions fall, rounded. Laying several strata out one after
    another gives each stratum its share to within one member and the parts summed over strata their exact share
    (a stratum laid out alone, ``start`` 0, is rounded on its own)."""
    fractions = np.asarray(fractions, dtype=np.float64)
    cumulative = np.cumsum(fractions) / fractions.sum()
    end = start + len(members)
    cuts = np.round(cumulative * end).astype(int) - np.round(cumulative * start).astype(int)
    return np.split(members, cuts[:-1])


def assign_splits(labels: np.ndarray, fractions: tuple[float, ...], seed: int, name: str) -> np.ndarray:
    """Train/val/test per row from the seed only, stratified by label (unlabelled rows form their own stratum).

    The classes (each shuffled) are laid out one after another and cut together (``cut_stratum``), so each class gets
    its share to within one row and the split sizes match the fractions exactly (a per-class rounding would leave a
    split empty when every class is small).
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    out = np.empty(len(labels), dtype=SPLIT_DTYPE)
    start = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        for split, part in zip(SPLITS, cut_stratum(members, fractions, start), strict=True):
            out[part] = split
        start += len(members)
    return out


def labels_of(manifest: Manifest) -> pd.Series:
    """A manifest's label cells, stripped, with every missing-value spelling (``MISSING_LABELS``) as ""."""
    labels = manifest.stripped("label")
    return labels.mask(labels.str.lower().isin(MISSING_LABELS), "")


def class_id(value: str) -> int | None:
    """The integer class id a label cell spells (``3``, or a whole number written as a float: ``3.0``, ``3e0``),
    else None."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _label_kind(value: str) -> str:
    """``id`` (an integer class id, ``class_id``), ``number`` (any other number: 3.5, inf) or ``name``."""
    if class_id(value) is not None:
        return "id"
    try:
        float(value)
    except ValueError:
        return "name"
    return "number"


def label_mapping(manifests: list[Manifest]) -> dict[str, int] | None:
    """One label numbering for all ``manifests``: None when every label is an integer class id (kept as is), else the
    sorted distinct class names numbered from 0. Labels must be all ids or all names: a number that is not a whole
    number (``3.5``, ``inf``) or a mix of ids and names is a ``DataError`` naming the value, the manifest and the row,
    instead of new classes and a silent renumbering. Missing-value spellings are unlabelled rows (``labels_of``)."""
    first: dict[str, tuple[str, Manifest, int]] = {}  # kind -> value, manifest and row of its first label
    names: set[str] = set()
    for manifest in manifests:
        if "label" not in manifest.columns:
            continue
        labels = labels_of(manifest)
        kinds = {value: _label_kind(value) for value in labels.unique() if value}  # each distinct label once
        names.update(kinds)
        for kind in sorted(set(kinds.values()) - set(first)):
            row = int(np.flatnonzero(labels.isin([v for v, k in kinds.items() if k == kind]).to_numpy())[0])
            first[kind] = (labels.iat[row], manifest, row)
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
    return {v: i for i, v in enumerate(sorted(names))}


def row_labels(manifest: Manifest, mapping: dict[str, int] | None) -> np.ndarray:
    """The class id of every row under ``mapping`` (``label_mapping``'s); ``UNLABELLED`` for an empty cell."""
    labels = np.full(len(manifest), UNLABELLED, dtype=np.int64)
    if "label" in manifest.columns:
        values = labels_of(manifest)
        codes = {v: mapping[v] if mapping is not None else class_id(v) for v in values.unique() if v}
        filled = values.ne("").to_numpy()
        labels[filled] = values[filled].map(codes).to_numpy(dtype=np.int64)
    return labels


def row_splits(
    name: str, manifest: Manifest, labels: np.ndarray, fractions: tuple[float, ...], seed: int
) -> np.ndarray:
    """The split of every row: the manifest's ``split`` column when it has one, else ``assign_splits``."""
    if "split" not in manifest.columns:
        return assign_splits(labels, fractions, seed, name)
    splits = manifest.stripped("split").str.lower()
    unknown = np.flatnonzero(~splits.isin(SPLITS).to_numpy())
    if len(unknown):
        row = int(unknown[0])
        raise DataError(
            f"dataset {name!r}: manifest {manifest.path} {manifest.row_name(row)}: unknown split value "
            f"{manifest.cell(row, 'split')!r}; expected one of {list(SPLITS)}"
        )
    return splits.to_numpy(dtype=SPLIT_DTYPE)
