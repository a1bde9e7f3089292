"""Reading arrays for calibration, validation and benchmarks from .npz, .npy and .csv files.

Conventions, the same for every command:

- ``.npz``: inputs under ``x`` (or ``inputs``), labels, if any, under ``y`` (or ``labels``); a file
  with a single array holds inputs only. For a model with several inputs, one array per input
  name (samples along axis 0, see :mod:`edgeops.core.feeds`), and labels under ``y``.
- ``.npy``: inputs only.
- ``.csv``: a header row; a column named ``label``, ``target`` or ``y`` holds labels, every other
  column is a numeric input feature, in file order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeops.core import feeds
from edgeops.core.columns import data_file, load_npz, read_csv
from edgeops.core.errors import InputDataError
from edgeops.core.feeds import Feeds
from edgeops.core.tensors import TensorInfo, shape_matches

LABEL_COLUMNS = ("label", "target", "y")
_X_KEYS = ("x", "inputs")
_Y_KEYS = ("y", "labels")


@dataclass(frozen=True)
class Dataset:
    """Inputs, and labels when the file has them."""

    x: npt.NDArray[Any]
    """The inputs of a one-input model; for a file of named arrays, the first of them."""
    y: npt.NDArray[Any] | None
    source: str
    named: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    """Every input array of a ``.npz`` by its name (labels excluded)."""

    def __len__(self) -> int:
        return int(self.x.shape[0]) if self.x.ndim else 1

    def head(self, n: int) -> Dataset:
        return Dataset(
            self.x[:n],
            None if self.y is None else self.y[:n],
            self.source,
            {k: v[:n] if v.ndim else v for k, v in self.named.items()},
        )


def load(path: str | Path) -> Dataset:
    """Load a dataset file; raise :class:`InputDataError` naming the problem."""
    p, suffix = data_file(path, (".npz", ".npy", ".csv"))
    if suffix == ".npz":
        ds = _load_npz(p)
    elif suffix == ".npy":
        ds = Dataset(_np_load(p), None, str(p))
    else:
        ds = _load_csv(p)
    if (ds.x.ndim == 0 and not ds.named) or len(ds) == 0:
        raise InputDataError(f"{p}: holds no samples")
    if ds.y is not None and ds.y.shape[0] != ds.x.shape[0]:
        raise InputDataError(f"{p}: {ds.x.shape[0]} inputs but {ds.y.shape[0]} labels")
    if ds.x.dtype.kind not in "biuf":
        raise InputDataError(f"{p}: inputs have dtype {ds.x.dtype}, expected numbers")
    return ds


def _np_load(p: Path) -> npt.NDArray[Any]:
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputDataError(f"{p}: not a readable .npy file ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise InputDataError(f"{p}: not a .npy array")
    return arr


def _load_npz(p: Path) -> Dataset:
    arrays = load_npz(p)
    y_key = next((k for k in _Y_KEYS if k in arrays), None)
    named = {k: v for k, v in arrays.items() if k != y_key}
    if not named:
        raise InputDataError(f"{p}: holds labels only; inputs go under 'x' or the input names")
    x_key = next((k for k in _X_KEYS if k in named), next(iter(named)))
    for k, v in named.items():
        if v.dtype.kind not in "biuf":
            raise InputDataError(f"{p}: array '{k}' has dtype {v.dtype}, expected numbers")
    return Dataset(named[x_key], None if y_key is None else arrays[y_key], str(p), named)


def _load_csv(p: Path) -> Dataset:
    """The CSV as :func:`~edgeops.core.columns.read_csv` reads it: the label column by name,
    every other column a number (missing cells are NaN)."""
    table = read_csv(p)
    label = next((n for n in table.names if n.lower() in LABEL_COLUMNS), None)
    columns: dict[str, npt.NDArray[np.float32]] = {}
    for name in table.names:
        col = table[name]
        if col.dtype.kind not in "biuf":
            bad = next(((i + 2, c) for i, c in enumerate(col) if c and not _is_number(c)), None)
            if bad is not None:
                line, cell = bad
                raise InputDataError(f"{p}: line {line}, column '{name}': '{cell}' is not a number")
            col = np.full(len(col), np.nan)  # every cell missing
        columns[name] = col.astype(np.float32)
    features = [c for n, c in columns.items() if n != label]
    if not features:
        raise InputDataError(f"{p}: holds labels only; every other column is an input feature")
    x = np.stack(features, axis=1)
    return Dataset(x, None if label is None else columns[label], str(p))


def _is_number(cell: str) -> bool:
    try:
        return bool(np.isfinite(float(cell)))
    except ValueError:
        return False


def check_inputs(ds: Dataset, info: TensorInfo, what: str) -> npt.NDArray[np.float32]:
    """Check that ``ds`` fits the model input ``info`` and return its inputs as float32."""
    sample = tuple(int(s) for s in ds.x.shape[1:])
    if not shape_matches(sample, info.sample_shape):
        expected = ", ".join("N" if s < 0 else str(s) for s in info.sample_shape)
        raise InputDataError(
            f"{what} {ds.source}: samples have shape {sample}, "
            f"model input '{info.name}' expects ({expected})"
        )
    x = ds.x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InputDataError(f"{what} {ds.source}: contains NaN or infinite values")
    return x


def model_feeds(ds: Dataset, infos: tuple[TensorInfo, ...], what: str) -> Feeds:
    """The model's inputs from ``ds``: its arrays by input name, or ``x`` for a one-input model."""
    label = f"{what} {ds.source}"
    if len(infos) == 1 and infos[0].name not in ds.named:
        found = feeds.bind({infos[0].name: ds.x}, infos, label)
    else:
        found = feeds.bind(ds.named, infos, label)
    if ds.y is not None and ds.y.shape[0] != len(found):
        raise InputDataError(f"{label}: {len(found)} samples but {ds.y.shape[0]} labels")
    return found
