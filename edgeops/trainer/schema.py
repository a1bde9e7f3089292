"""Data schemas: the types and domains of a dataset's columns, inferred once and checked ever after.

A :class:`Schema` records, for each column, its kind and domain:

- ``numeric``: whether values are integers, and the range [min, max] seen when it was inferred;
- ``categorical``: the vocabulary;
- ``tensor``: the per-sample shape and the value range.

:func:`validate` lists every :class:`Anomaly` in a table: a missing or unexpected column, a wrong
type, values out of the numeric domain, unknown categories, missing values where none were seen,
or a wrong shape. The inferred ranges are those of the data the schema was inferred from; edit the
schema file to widen them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgeops.core.columns import Table, is_categorical, is_numeric, missing_mask
from edgeops.core.errors import InputDataError, SchemaError

SCHEMA_VERSION = 1
Kind = Literal["numeric", "categorical", "tensor"]
Task = Literal["classification", "regression"]
_EXAMPLES = 3


@dataclass(frozen=True)
class Feature:
    """One column's type and domain."""

    name: str
    kind: Kind
    integer: bool = False
    min: float | None = None
    max: float | None = None
    vocabulary: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    dtype: str = ""
    allow_missing: bool = False


@dataclass(frozen=True)
class Schema:
    """Every column of a dataset, which one is the target, and the task."""

    features: tuple[Feature, ...]
    target: str
    task: Task
    classes: tuple[str, ...] = field(default=())

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def inputs(self) -> tuple[Feature, ...]:
        """Every feature but the target, in file order."""
        return tuple(f for f in self.features if f.name != self.target)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "target": self.target,
            "task": self.task,
            "classes": list(self.classes),
            "features": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(f).items()}
                for f in self.features
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {d.get('schema_version')!r}")
        features = tuple(
            Feature(
                name=str(f["name"]),
                kind=f["kind"],
                integer=bool(f.get("integer", False)),
                min=f.get("min"),
                max=f.get("max"),
                vocabulary=tuple(str(v) for v in f.get("vocabulary", ())),
                shape=tuple(int(s) for s in f.get("shape", ())),
                dtype=str(f.get("dtype", "")),
                allow_missing=bool(f.get("allow_missing", False)),
            )
            for f in d["features"]
        )
        for f in features:
            if f.kind not in ("numeric", "categorical", "tensor"):
                raise ValueError(f"feature '{f.name}': unknown kind {f.kind!r}")
        task = d["task"]
        if task not in ("classification", "regression"):
            raise ValueError(f"unknown task {task!r}")
        schema = cls(features, str(d["target"]), task, tuple(str(c) for c in d.get("classes", ())))
        schema.feature(schema.target)
        return schema

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except FileNotFoundError:
            raise InputDataError(f"{p}: no such schema file") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputDataError(f"{p}: not a valid schema file ({e})") from None


@dataclass(frozen=True)
class Anomaly:
    """One way in which data breaks its schema."""

    feature: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.feature}: {self.kind}: {self.message}"


def infer_task(col: npt.NDArray[Any], max_classes: int = 20) -> Task:
    """Classification for text labels or few distinct integers, regression otherwise."""
    if is_categorical(col):
        return "classification"
    values = col[~np.isnan(col)] if col.dtype.kind == "f" else col
    integral = bool(np.all(np.mod(values, 1) == 0))
    return "classification" if integral and len(np.unique(values)) <= max_classes else "regression"


def class_name(value: Any) -> str:
    """A class label as text: ``3.0`` becomes ``"3"``."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def infer_schema(table: Table, target: str, task: Task | None = None) -> Schema:
    """Infer a schema from ``table``; ``target`` names the label column."""
    if target not in table:
        raise InputDataError(
            f"{table.source}: no target column '{target}' (columns: {', '.join(table.names)})"
        )
    y = table[target]
    if y.ndim != 1:
        raise InputDataError(f"{table.source}: target '{target}' must hold one value per row")
    if missing_mask(y).any():
        raise InputDataError(
            f"{table.source}: target '{target}' has {int(missing_mask(y).sum())} missing values"
        )
    task = task or infer_task(y)
    classes: tuple[str, ...] = ()
    if task == "classification":
        uniq = np.unique(y)
        if len(uniq) < 2:
            raise InputDataError(
                f"{table.source}: target '{target}' has a single class "
                f"({class_name(uniq[0])!r}); classification needs at least two"
            )
        classes = tuple(class_name(v) for v in uniq)
    elif not is_numeric(y):
        raise InputDataError(
            f"{table.source}: target '{target}' holds text; regression needs numbers"
        )
    if len(table.names) < 2:
        raise InputDataError(f"{table.source}: no feature columns besides the target")
    features = tuple(_infer_feature(name, table[name]) for name in table.names)
    flips = [
        a
        for f in features
        if f.kind == "categorical" and f.name != target
        for a in _stray_text(f.name, table[f.name])
    ]
    raise_for_anomalies(flips, table.source)
    return Schema(features, target, task, classes)


NUMERIC_SHARE = 0.9
"""A text column whose non-empty cells are at least this share numbers is a numeric column with
stray text (a typo such as "abc" or "12,5"), not a categorical one: read as categories, every
distinct number would become a category and the model would learn nothing from its order."""


def _stray_text(name: str, col: npt.NDArray[Any]) -> list[Anomaly]:
    values = [str(v) for v in col if v != ""]
    if not values:
        return []
    text = sorted({v for v in values if not _is_number(v)})
    numbers = len(values) - sum(1 for v in values if not _is_number(v))
    if not text or numbers < NUMERIC_SHARE * len(values):
        return []
    return [
        Anomaly(
            name,
            "wrong type",
            f"{numbers} of {len(values)} values are numbers, the rest text such as {_ex(text)}: "
            "fix those cells (or give --schema to declare the column categorical)",
        )
    ]


def _infer_feature(name: str, col: npt.NDArray[Any]) -> Feature:
    missing = bool(missing_mask(col).any())
    if col.ndim > 1:
        finite = col[np.isfinite(col)] if col.dtype.kind == "f" else col
        return Feature(
            name,
            "tensor",
            min=float(finite.min()) if finite.size else None,
            max=float(finite.max()) if finite.size else None,
            shape=tuple(int(s) for s in col.shape[1:]),
            dtype=str(col.dtype),
            allow_missing=missing,
        )
    if is_categorical(col):
        vocab = tuple(sorted({str(v) for v in col if v != ""}))
        return Feature(name, "categorical", vocabulary=vocab, allow_missing=missing)
    values = col[~np.isnan(col)] if col.dtype.kind == "f" else col
    if values.size == 0:
        return Feature(name, "numeric", allow_missing=True)
    return Feature(
        name,
        "numeric",
        integer=bool(np.all(np.mod(values, 1) == 0)),
        min=float(values.min()),
        max=float(values.max()),
        allow_missing=missing,
    )


def validate(table: Table, schema: Schema, *, require_target: bool = True) -> list[Anomaly]:
    """Every anomaly of ``table`` against ``schema``; an empty list means the data conform."""
    anomalies: list[Anomaly] = []
    expected = [f for f in schema.features if require_target or f.name != schema.target]
    known = {f.name for f in schema.features}
    for f in expected:
        if f.name not in table:
            anomalies.append(Anomaly(f.name, "missing column", "the column is not in the data"))
            continue
        if f.name == schema.target and schema.task == "classification":
            continue  # checked against the classes below
        anomalies.extend(_check(f, table[f.name]))
    for name in table.names:
        if name not in known:
            anomalies.append(Anomaly(name, "unexpected column", "the schema has no such column"))
    if require_target and schema.target in table and schema.task == "classification":
        labels = {class_name(v) for v in np.unique(table[schema.target])}
        unknown = sorted(labels - set(schema.classes))
        if unknown:
            anomalies.append(
                Anomaly(schema.target, "unknown class", f"labels not in the schema: {_ex(unknown)}")
            )
    return anomalies


def raise_for_anomalies(anomalies: Sequence[Anomaly], where: str) -> None:
    """Raise :class:`SchemaError` listing ``anomalies``, if there are any."""
    if anomalies:
        raise SchemaError(
            f"{where}: {len(anomalies)} schema anomal{'y' if len(anomalies) == 1 else 'ies'}",
            [str(a) for a in anomalies],
        )


def _ex(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(v) for v in values[:_EXAMPLES])
    return shown + (f" and {len(values) - _EXAMPLES} more" if len(values) > _EXAMPLES else "")


def _check(f: Feature, col: npt.NDArray[Any]) -> list[Anomaly]:
    out: list[Anomaly] = []
    missing = missing_mask(col)
    if missing.any() and not f.allow_missing:
        out.append(Anomaly(f.name, "missing values", f"{int(missing.sum())} rows have no value"))
    if f.kind == "tensor":
        shape = tuple(int(s) for s in col.shape[1:])
        if shape != f.shape:
            out.append(
                Anomaly(f.name, "wrong shape", f"samples have shape {shape}, expected {f.shape}")
            )
            return out
        if not is_numeric(col):
            out.append(Anomaly(f.name, "wrong type", f"dtype {col.dtype}, expected {f.dtype}"))
            return out
        return out + _range(f, col[np.isfinite(col)] if col.dtype.kind == "f" else col)
    if col.ndim != 1:
        out.append(
            Anomaly(f.name, "wrong shape", f"samples have shape {col.shape[1:]}, expected scalars")
        )
        return out
    if f.kind == "categorical":
        if not is_categorical(col):
            col = np.array([class_name(v) if v == v else "" for v in col], dtype=str)
        unknown = sorted({str(v) for v in col if v != ""} - set(f.vocabulary))
        if unknown:
            out.append(
                Anomaly(f.name, "unknown category", f"values not in the vocabulary: {_ex(unknown)}")
            )
        return out
    if not is_numeric(col):
        bad = sorted({str(v) for v in col if v != "" and not _is_number(str(v))})
        out.append(
            Anomaly(f.name, "wrong type", f"expected numbers, found text such as {_ex(bad)}")
        )
        return out
    values = col[~missing]
    if f.integer and values.size and not np.all(np.mod(values, 1) == 0):
        frac = sorted({float(v) for v in values if v % 1})
        out.append(Anomaly(f.name, "wrong type", f"expected integers, found {_ex(frac)}"))
    return out + _range(f, values)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _range(f: Feature, values: npt.NDArray[Any]) -> list[Anomaly]:
    if f.min is None or f.max is None or values.size == 0:
        return []
    outside = values[(values < f.min) | (values > f.max)]
    if outside.size == 0:
        return []
    shown = sorted({float(v) for v in outside.ravel()})
    return [
        Anomaly(
            f.name,
            "out of domain",
            f"{outside.size} values outside [{f.min:g}, {f.max:g}], such as {_ex(shown)}",
        )
    ]
