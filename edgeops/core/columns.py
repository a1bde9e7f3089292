"""Columns of training data, read from CSV (tabular) or NPZ (arrays such as images).

A :class:`Table` maps column names to numpy arrays that share their first dimension:

- numeric columns are ``float64`` with NaN for a missing value;
- categorical (text) columns are unicode arrays with ``""`` for a missing value;
- tensor columns (from NPZ files) keep their dtype and per-sample shape.

CSV cells that are empty or one of :data:`MISSING_TOKENS` are missing. A CSV column is numeric when
every present cell parses as a number, categorical otherwise.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeops.core.errors import InputDataError

MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


@dataclass(frozen=True)
class Table:
    """Named columns of equal length; ``source`` names the file they came from."""

    columns: Mapping[str, npt.NDArray[Any]]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        lengths = {name: len(col) for name, col in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise InputDataError(f"{self.source}: columns differ in length: {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        return self.columns[name]

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def take(self, index: npt.NDArray[np.integer[Any]]) -> Table:
        """The rows at ``index``, in that order."""
        return Table({k: v[index] for k, v in self.columns.items()}, self.source)

    def without(self, name: str) -> Table:
        return Table({k: v for k, v in self.columns.items() if k != name}, self.source)

    def save(self, path: Path) -> None:
        """Write the columns to an .npz file (no pickled objects)."""
        arrays: dict[str, Any] = dict(self.columns)
        np.savez(path, **arrays)


def is_numeric(col: npt.NDArray[Any]) -> bool:
    return col.dtype.kind in "biuf"


def is_categorical(col: npt.NDArray[Any]) -> bool:
    return col.dtype.kind == "U"


def missing_mask(col: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """True where a value is missing (NaN, or an empty string), one flag per row."""
    if col.dtype.kind == "f":
        flat = np.isnan(col.reshape(len(col), -1))
        return np.asarray(flat.any(axis=1))
    if col.dtype.kind == "U":
        return np.asarray(col == "")
    return np.zeros(len(col), dtype=bool)


def data_file(path: str | Path, kinds: tuple[str, ...]) -> tuple[Path, str]:
    """A data file that exists and is of one of ``kinds`` (suffixes such as ``.csv``), and its
    suffix; :class:`InputDataError` naming the problem otherwise."""
    p = Path(path)
    names = ", ".join(kinds[:-1]) + f" or {kinds[-1]}" if len(kinds) > 1 else kinds[0]
    if not p.exists():
        raise InputDataError(f"{p}: no such file")
    if p.is_dir():
        raise InputDataError(f"{p}: is a directory, expected a {names} file")
    suffix = p.suffix.lower()
    if suffix not in kinds:
        raise InputDataError(f"{p}: unsupported data file type '{suffix}' (use {names})")
    return p, suffix


def read_table(path: str | Path) -> Table:
    """Read a .csv or .npz file; raise :class:`InputDataError` naming the problem."""
    p, suffix = data_file(path, (".csv", ".npz"))
    table = read_csv(p) if suffix == ".csv" else read_npz(p)
    if len(table) == 0:
        raise InputDataError(f"{p}: holds no rows")
    return table


def read_csv(p: Path) -> Table:
    """The one CSV reader: a header row of unique names, then rows of as many fields; a column
    is numeric (NaN where missing) when every present cell is a finite number, else text."""
    try:
        with p.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputDataError(f"{p}: cannot read CSV ({e})") from None
    rows = [r for r in rows if r]  # blank lines
    if len(rows) < 2:
        raise InputDataError(f"{p}: CSV needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if any(not h for h in header):
        raise InputDataError(f"{p}: the header has an empty column name")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputDataError(f"{p}: duplicate column names in the header: {', '.join(dupes)}")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputDataError(
                f"{p}: line {line} has {len(row)} fields, header has {len(header)}"
            )
    cells = list(zip(*rows[1:], strict=True))
    return Table({name: _column(col) for name, col in zip(header, cells, strict=True)}, str(p))


def _column(cells: tuple[str, ...]) -> npt.NDArray[Any]:
    stripped = [c.strip() for c in cells]
    present = [c for c in stripped if c.lower() not in MISSING_TOKENS]
    try:
        numbers = [float(c) for c in present]
    except ValueError:
        numbers = None
    if numbers is not None and present and all(np.isfinite(numbers)):
        return np.array(
            [np.nan if c.lower() in MISSING_TOKENS else float(c) for c in stripped],
            dtype=np.float64,
        )
    return np.array(["" if c.lower() in MISSING_TOKENS else c for c in stripped], dtype=str)


def load_npz(p: Path) -> dict[str, npt.NDArray[Any]]:
    """Every array of an .npz file (no pickles); :class:`InputDataError` when it cannot be
    read. The one NPZ reader: :func:`read_npz` and :mod:`edgeops.core.datafiles` view it."""
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputDataError(f"{p}: not a readable .npz file ({e})") from None


def read_npz(p: Path) -> Table:
    """Arrays of an .npz file as columns. 2-D numeric arrays become one column per feature."""
    arrays = load_npz(p)
    if not arrays:
        raise InputDataError(f"{p}: the .npz file holds no arrays")
    columns: dict[str, npt.NDArray[Any]] = {}
    for name, arr in arrays.items():
        if arr.ndim == 0:
            raise InputDataError(f"{p}: array '{name}' is a scalar, expected one row per sample")
        if arr.dtype.kind not in "biufU":
            raise InputDataError(f"{p}: array '{name}' has unsupported dtype {arr.dtype}")
        if arr.ndim == 2 and arr.dtype.kind in "biuf" and len(arrays) > 1:
            # A matrix of features: one numeric column each, like a CSV.
            for j in range(arr.shape[1]):
                columns[f"{name}[{j}]"] = arr[:, j].astype(np.float64)
        elif arr.ndim == 1 and arr.dtype.kind in "biuf":
            columns[name] = arr.astype(np.float64)
        else:
            columns[name] = arr
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InputDataError(f"{p}: arrays differ in their number of rows: {lengths}")
    return Table(columns, str(p))
