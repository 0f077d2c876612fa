"""Reading manifests: one CSV, JSON-lines or Parquet file per dataset (read by pandas), one row per instance, every
cell a str; and each dataset's rows once resolved (``DatasetTable``). Errors name the manifest and the row: ``data row
N (line L)``, the N-th row below the header on line L of the file, and the row's id when the manifest has one.
"""

import csv
import math
from array import array
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
    line of the file each row starts on (None where lines mean nothing: Parquet, shards).

    Cells stay in pandas' Arrow-backed string columns, a few bytes each; checks run on whole columns (``stripped``),
    so a million rows cost tens of MB, where a Python str per cell cost hundreds."""

    path: Path
    frame: pd.DataFrame
    lines: np.ndarray | None = None

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    def __len__(self) -> int:
        return len(self.frame)

    def column(self, name: str) -> list[str]:
        """Every cell of a column as a new list (a Python str per row: for per-row paths and exports)."""
        return self.frame[name].tolist() if name in self.frame.columns else [""] * len(self.frame)

    def stripped(self, name: str) -> pd.Series:
        """A column's cells without surrounding blanks ("" throughout for a column the manifest lacks)."""
        if name not in self.frame.columns:
            return pd.Series([""] * len(self.frame), dtype="str")
        return self.frame[name].str.strip()

    def cell(self, row: int, column: str) -> str:
        return self.frame[column].iat[row] if column in self.frame.columns else ""

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


def _row_name(row: int, lines: np.ndarray | None) -> str:
    return f"data row {row + 1}" + (f" (line {lines[row]})" if lines is not None else "")


def _cell(value: object, path: Path, row: int, column: str, lines: np.ndarray | None) -> str:
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


def _as_strings(frame: pd.DataFrame, path: Path, lines: np.ndarray | None) -> pd.DataFrame:
    cells = {  # by position: two keys may strip to one name (reported as a duplicate column by the caller)
        i: pd.array([_cell(v, path, row, name, lines) for row, v in enumerate(frame.iloc[:, i].tolist())], dtype="str")
        for i, name in enumerate(frame.columns)
    }
    return pd.DataFrame(cells).set_axis(frame.columns, axis=1)


def _record_lines(path: Path, suffix: str) -> np.ndarray | None:
    """The line each record pandas reads starts on, as pandas skips blank lines: the data records of a CSV (after its
    header; a quoted cell may span lines), every non-blank line of JSON lines; None for Parquet."""
    if suffix == ".parquet":
        return None
    if suffix != ".csv":
        with path.open(encoding="utf-8") as f:
            return np.frombuffer(array("q", (number for number, line in enumerate(f, 1) if line.strip())), np.int64)
    starts, end = array("q"), 0  # 8 bytes a record, not a Python int
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for record in reader:
                if len(record) > 1 or (record and record[0].strip()):
                    starts.append(end + 1)
                end = reader.line_num
    except (csv.Error, UnicodeDecodeError):  # pandas read it: rows are then named without their lines
        return None
    return np.frombuffer(starts, dtype=np.int64)[1:]


def _read_frame(path: Path, suffix: str) -> tuple[pd.DataFrame, np.ndarray | None]:
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
    return frame[kept].reset_index(drop=True), None if lines is None else lines[kept]


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
    ids = manifest.stripped("id")
    empty, repeated = ids.eq("").to_numpy(), ids.duplicated().to_numpy()
    bad = np.flatnonzero(empty | repeated)
    if not len(bad):
        return
    row = int(bad[0])
    if empty[row]:
        raise DataError(f"dataset {name!r}: manifest {manifest.path} {manifest.row_name(row)} has an empty id")
    first = int(np.flatnonzero(ids.eq(ids.iat[row]).to_numpy())[0])
    raise DataError(
        f"dataset {name!r}: manifest {manifest.path} has duplicate id {ids.iat[row]!r} in "
        f"{manifest.row_name(first)} and {manifest.row_name(row)}"
    )


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
