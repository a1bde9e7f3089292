"""The rows simulated devices replay: a CSV or NPZ file, or the bundled sample a bundle came from.

Tabular models get the raw columns their preprocessing names (the agent encodes them, as it
does for a real caller); tensor models get their input array, reshaped to the model's sample
shape. The label column is kept aside for feedback. Without a data file, a bundle whose manifest
records that it was trained on one of the sample files :mod:`edgeops.trainer.samples` writes
(digits, wine, diabetes: the file's sha256) replays that file; scikit-learn loads it from its
package, without a download. Nothing is guessed from a target's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.core.columns import Table, read_table
from edgeops.core.errors import InputDataError, UsageError
from edgeops.core.files import sha256_file
from edgeops.core.manifest import Manifest
from edgeops.core.preprocessing import Preprocessing
from edgeops.simulate.inject import Array, Samples
from edgeops.trainer import samples

LABEL_COLUMNS = ("label", "target", "y")
"""Where labels are looked for when neither ``--target`` nor the bundle names a column."""

# The sample datasets edgeops.samples writes (the same bytes every time): a bundle trained on
# one of them records that file's sha256 in its manifest (training.data_sha256).
BUNDLED: Mapping[str, tuple[str, Callable[[Path], Path]]] = {
    "digits": ("digits.npz", samples.digits_npz),
    "wine": ("wine.csv", samples.wine_csv),
    "diabetes": ("diabetes.csv", samples.diabetes_csv),
}


def sample_file(manifest: Manifest, directory: Path) -> Path:
    """Write the sample dataset the bundle records it was trained on to ``directory``: the one
    whose sha256 is the manifest's ``training.data_sha256``. Nothing is guessed from names: a
    bundle trained on anything else needs its data file."""
    recorded = None if manifest.training is None else manifest.training.data_sha256
    directory.mkdir(parents=True, exist_ok=True)
    for file, write in BUNDLED.values():
        path = write(directory / file)
        if recorded is not None and sha256_file(path) == recorded:
            return path
        path.unlink()
    raise UsageError(
        f"bundle {manifest.name!r} was not trained on one of edgeops' sample datasets "
        "(digits.npz, wine.csv, diabetes.csv from `edgeops samples`): give --data FILE "
        "(CSV or NPZ) to replay"
    )


def load_samples(
    manifest: Manifest,
    data: Path | None = None,
    *,
    target: str | None = None,
    directory: Path,
    seed: int = 0,
) -> Samples:
    """The rows of ``data`` (or of the bundle's sample dataset, written to ``directory``) as
    the bundle's model takes them, shuffled with ``seed``, labels aside."""
    pre = Preprocessing.from_dict(manifest.require("preprocessing"))
    if pre.kind == "tensors":
        raise UsageError("the simulator feeds models with one input; this one takes several")
    path = data if data is not None else sample_file(manifest, directory)
    table = read_table(path)
    label_name = _label_column(table, manifest, target)
    features = _tabular(table, pre) if pre.kind == "tabular" else _tensor(table, pre, label_name)
    task = manifest.task or "classification"
    labels = None if label_name is None else _labels(table[label_name], task)
    out = Samples(pre.kind, features, labels)
    return out.take(np.random.default_rng(seed).permutation(len(out)).astype(np.intp))


def _label_column(table: Table, manifest: Manifest, target: str | None) -> str | None:
    if target is not None:
        if target not in table:
            raise UsageError(
                f"--target {target}: {table.source} has no such column "
                f"(columns: {', '.join(table.names)})"
            )
        return target
    trained = manifest.training_target
    candidates = ([str(trained)] if trained else []) + list(LABEL_COLUMNS)
    return next((c for c in candidates if c in table), None)


def _tabular(table: Table, pre: Preprocessing) -> dict[str, Array]:
    missing = [c.name for c in pre.columns if c.name not in table]
    if missing:
        raise InputDataError(
            f"{table.source}: no column(s) {', '.join(missing)}, which the model needs "
            f"(columns: {', '.join(table.names)})"
        )
    features: dict[str, Array] = {}
    for c in pre.columns:
        col = table[c.name]
        if col.ndim != 1:
            raise InputDataError(f"{table.source}: column '{c.name}' is not one value per row")
        if c.kind == "categorical" and col.dtype.kind != "U":  # categories written as numbers
            col = np.array(["" if np.isnan(v) else _text(v) for v in col], dtype=str)
        features[c.name] = col
    return features


def _tensor(table: Table, pre: Preprocessing, label_name: str | None) -> dict[str, Array]:
    size = int(np.prod(pre.shape))
    if pre.input_name in table:
        name = pre.input_name
    else:
        fits = [
            n
            for n in table.names
            if n != label_name
            and table[n].dtype.kind in "biuf"
            and int(np.prod(table[n].shape[1:])) == size
        ]
        if len(fits) != 1:
            raise InputDataError(
                f"{table.source}: no array '{pre.input_name}' of samples shaped {pre.shape} "
                f"(arrays: {', '.join(table.names)})"
            )
        name = fits[0]
    x = table[name]
    if x.dtype.kind not in "biuf" or int(np.prod(x.shape[1:])) != size:
        raise InputDataError(
            f"{table.source}: array '{name}' has samples shaped {tuple(x.shape[1:])}; "
            f"the model takes {pre.shape}"
        )
    x = np.ascontiguousarray(x.reshape(len(x), *pre.shape), dtype=np.float32)
    return {pre.input_name: x}


def _labels(col: Array, task: str) -> Array:
    """Labels as feedback takes them: class names as text (``""`` missing), targets as floats."""
    if task == "regression":
        try:
            return col.astype(np.float64)
        except ValueError:
            raise InputDataError("the target column of a regression model holds text") from None
    if col.dtype.kind == "U":
        return col
    return np.array(["" if np.isnan(v) else _text(v) for v in col.astype(np.float64)], dtype=str)


def _text(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else str(f)
