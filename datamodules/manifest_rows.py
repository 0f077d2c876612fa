"""Reading manifests: one CSV, JSON-lines or Parquet file per dataset (read by pandas), one row per instance, every
cell a str; and each dataset's rows once resolved (``DatasetTable``). Errors name the manifest and the row: ``data row
N (line L)``, the N-th row below the header on line L of the file, and the row's id when the manifest has one.
"""

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brokenbind.errors import ConfigError, DataError
from datamodules.loaders import FeatureArray, Member

RESERVED_COLUMNS = ("label", "split", "id")
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


def check_ids(name: str, manifest: Manifest) -> None:
    """Every ``id`` cell filled and unique within the manifest (ids name rows in errors, exports and array joins)."""
    if "id" not in manifest.columns:
        return
    seen: dict[str, int] = {}
    for row, value in enumerate(manifest.column("id")):
        value = value.strip()
        if not value:
            raise DataError(f"dataset {name!r}: manifest {manifest.path} {manifest.row_name(row)} has an empty id")
        if value in seen:
            raise DataError(
                f"dataset {name!r}: manifest {manifest.path} has duplicate id {value!r} in "
                f"{manifest.row_name(seen[value])} and {manifest.row_name(row)}"
            )
        seen[value] = row


@dataclass
class DatasetTable:
    """One dataset's manifest, resolved: labels, split per row, global ids, file paths per file-kind column."""

    name: str
    manifest: Manifest
    labels: np.ndarray
    splits: np.ndarray
    offset: int
    paths: dict[str, list[Path | Member | None]] = field(default_factory=dict)
    # modality -> (its array, the array row of every manifest row; -1: the row's id is not in the array)
    arrays: dict[str, tuple[FeatureArray, np.ndarray]] = field(default_factory=dict)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def context(self, row: int, column: str | None = None) -> str:
        """Where a cell lives, for error messages: manifest, 1-based row, id when the manifest has one."""
        return self.manifest.where(row) + (f", column {column!r}" if column else "")
