"""Drift injection: pure functions from rows to drifted rows, seeded and deterministic.

Rows are :class:`Samples`: raw tabular columns (numbers as float64 with NaN missing, text with
``""`` missing) or one tensor column (images), plus the true labels when known. Each function
returns new arrays and leaves its input alone; :func:`apply_drift` applies one
:class:`~edgeops.simulate.spec.DriftSpec` to a whole :class:`Samples`.

Scales come from the undrifted data (:func:`reference_scales`), so drifts compose: noise on top
of a covariate shift is measured in the original standard deviations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgeops.core.errors import UsageError
from edgeops.simulate.spec import DriftSpec

Array = npt.NDArray[Any]
QUARTILE_CLASSES_ABOVE = 20
"""A numeric target with more distinct values than this is treated as continuous: label drift
then picks one of its quartiles (``q1`` … ``q4``) instead of a value."""


@dataclass(frozen=True)
class Samples:
    """Rows a simulated device replays.

    ``features`` maps a tabular feature to its column of raw values, or the model's input name to
    a ``(rows, *shape)`` float32 array for a tensor model. ``labels`` holds one true label per
    row (text for classes, floats for a regression target), or None when the data has none.
    """

    kind: Literal["tabular", "tensor"]
    features: Mapping[str, Array]
    labels: Array | None = None

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))

    def take(self, index: npt.NDArray[np.intp]) -> Samples:
        """The rows at ``index``, in that order."""
        return Samples(
            self.kind,
            {k: v[index] for k, v in self.features.items()},
            None if self.labels is None else self.labels[index],
        )


@dataclass(frozen=True)
class Scale:
    """The spread and range of one numeric feature (or of all of an image's pixels)."""

    std: float
    lo: float
    hi: float


def reference_scales(samples: Samples) -> dict[str, Scale]:
    """Standard deviation and range of every numeric feature, NaN ignored (text has none)."""
    out: dict[str, Scale] = {}
    for name, col in samples.features.items():
        if col.dtype.kind not in "biuf":
            continue
        values = col.astype(np.float64, copy=False)
        present = values[~np.isnan(values)] if values.dtype.kind == "f" else values
        if present.size == 0:
            continue
        std = float(present.std())
        out[name] = Scale(std if std > 0 else 1.0, float(present.min()), float(present.max()))
    return out


def shift(values: Array, amount: float, scale: Scale, *, clip: bool = False) -> Array:
    """``values + amount * scale.std`` (NaN stays NaN); clipped to the range when ``clip``,
    as a brightened image saturates."""
    out = values.astype(np.float64) + amount * scale.std
    if clip:
        out = np.clip(out, scale.lo, scale.hi)
    return out.astype(values.dtype, copy=False)


def add_noise(
    values: Array, amount: float, scale: Scale, rng: np.random.Generator, *, clip: bool = False
) -> Array:
    """Gaussian noise of ``amount * scale.std`` added to every cell (NaN stays NaN)."""
    out = values.astype(np.float64) + rng.normal(0.0, amount * scale.std, values.shape)
    if clip:
        out = np.clip(out, scale.lo, scale.hi)
    return out.astype(values.dtype, copy=False)


def blank(values: Array, fraction: float, rng: np.random.Generator, fill: Any = None) -> Array:
    """A copy with a ``fraction`` of its cells (exactly, rounded) set to ``fill``: by default NaN
    for numbers and ``""`` for text."""
    if fill is None:
        fill = "" if values.dtype.kind == "U" else np.nan
    nan = isinstance(fill, float) and np.isnan(fill)
    out = values.astype(np.float64) if nan and values.dtype.kind != "f" else values.copy()
    flat = out.reshape(-1)
    n = round(fraction * flat.size)
    flat[rng.choice(flat.size, size=n, replace=False)] = fill
    return out


def label_classes(labels: Array) -> Array:
    """The class of each row for label drift: the label as text, or for a continuous numeric
    target (more than :data:`QUARTILE_CLASSES_ABOVE` values) its quartile ``q1`` … ``q4``."""
    if labels.dtype.kind in "biuf" and len(np.unique(labels)) > QUARTILE_CLASSES_ABOVE:
        cuts = np.quantile(labels, [0.25, 0.5, 0.75])
        return np.array(["q1", "q2", "q3", "q4"])[np.searchsorted(cuts, labels, side="right")]
    return np.array([_text(v) for v in labels], dtype=str)


def dominant_rows(
    classes: Array, dominant: str, fraction: float, rng: np.random.Generator
) -> npt.NDArray[np.intp]:
    """Row indices, as many as ``classes``, of which ``round(fraction * n)`` have class
    ``dominant`` (drawn with replacement) and the rest the other classes, shuffled."""
    n = len(classes)
    mine = np.flatnonzero(classes == dominant)
    rest = np.flatnonzero(classes != dominant)
    if mine.size == 0:
        known = ", ".join(sorted(set(classes.tolist()))[:12])
        raise UsageError(f"label drift: no rows of class {dominant!r} (classes: {known})")
    k = n if rest.size == 0 else round(fraction * n)
    index = np.concatenate([rng.choice(mine, size=k), rng.choice(rest, size=n - k)])
    return rng.permutation(index).astype(np.intp)


def apply_drift(
    samples: Samples, spec: DriftSpec, rng: np.random.Generator, scales: Mapping[str, Scale]
) -> Samples:
    """``samples`` with ``spec``'s drift applied; ``scales`` from the undrifted data."""
    if spec.kind == "label":
        if samples.labels is None:
            raise UsageError("label drift needs labels: give --data with a --target column")
        classes = label_classes(samples.labels)
        dominant = spec.label if spec.label is not None else str(sorted(set(classes.tolist()))[0])
        return samples.take(dominant_rows(classes, dominant, spec.amount, rng))
    names = _features(samples, spec)
    image = samples.kind == "tensor"
    features = dict(samples.features)
    for name in names:
        col = samples.features[name]
        scale = scales.get(name)
        if spec.kind == "missing":
            features[name] = blank(col, spec.amount, rng, 0.0 if image else None)
        elif scale is None:  # text: no mean to shift, no spread to add noise to
            continue
        elif spec.kind == "covariate":
            features[name] = shift(col, spec.amount, scale, clip=image)
        else:
            features[name] = add_noise(col, spec.amount, scale, rng, clip=image)
    return replace(samples, features=features)


def _features(samples: Samples, spec: DriftSpec) -> list[str]:
    if not spec.features:
        return list(samples.features)
    if samples.kind == "tensor":
        raise UsageError(f"{spec.kind} drift: 'features' is for tabular models only")
    unknown = [f for f in spec.features if f not in samples.features]
    if unknown:
        raise UsageError(
            f"{spec.kind} drift: unknown feature(s) {', '.join(unknown)} "
            f"(features: {', '.join(samples.features)})"
        )
    return list(spec.features)


def _text(v: Any) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)
