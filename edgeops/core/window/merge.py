"""Pure merges of telemetry windows, for the service: a span of a device's (or a fleet's)
windows becomes one window per feature (counts add up, moments merge by Chan et al.'s parallel
update), and :func:`window_probs` gives the distribution compared with the baseline's ``probs``,
aligned bin for bin."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar, cast

import numpy as np

from edgeops.core.stats import FloatArray, Moments
from edgeops.core.wire import CategoricalWindow, ClassOutputWindow, NumericWindow

Window = NumericWindow | CategoricalWindow | ClassOutputWindow
W = TypeVar("W", bound=Window)

__all__ = [
    "class_output_probs",
    "merge_categorical",
    "merge_class_output",
    "merge_numeric",
    "merge_window",
    "merge_windows",
    "window_moments",
    "window_probs",
]


def window_moments(w: NumericWindow) -> Moments:
    """The moments of a numeric window; ValueError when they are inconsistent."""
    if w.count == 0:
        return Moments.empty()
    if w.mean is None or w.min is None or w.max is None:
        raise ValueError(f"{w.name!r}: count {w.count} without mean, min and max")
    return Moments(w.count, w.mean, w.m2, w.min, w.max)


def _check(name_a: str, name_b: str, what: str, len_a: int, len_b: int) -> None:
    if name_a != name_b:
        raise ValueError(f"cannot merge windows {name_a!r} and {name_b!r}")
    if len_a != len_b:
        raise ValueError(f"{name_a!r}: {len_a} and {len_b} {what} do not merge")


def _add(a: Sequence[int], b: Sequence[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


def merge_numeric(a: NumericWindow, b: NumericWindow) -> NumericWindow:
    """Both windows of one numeric feature as one (same name and bin count, else ValueError)."""
    _check(a.name, b.name, "bins", len(a.counts), len(b.counts))
    m = window_moments(a).merge(window_moments(b))
    empty = m.count == 0
    return NumericWindow(
        name=a.name,
        counts=_add(a.counts, b.counts),
        missing=a.missing + b.missing,
        out_of_range=a.out_of_range + b.out_of_range,
        count=m.count,
        mean=None if empty else m.mean,
        m2=m.m2,
        min=None if empty else m.min,
        max=None if empty else m.max,
    )


def merge_categorical(a: CategoricalWindow, b: CategoricalWindow) -> CategoricalWindow:
    """Both windows of one categorical feature as one (same name and categories count)."""
    _check(a.name, b.name, "categories", len(a.counts), len(b.counts))
    return CategoricalWindow(
        name=a.name,
        counts=_add(a.counts, b.counts),
        other=a.other + b.other,
        missing=a.missing + b.missing,
    )


def merge_class_output(a: ClassOutputWindow, b: ClassOutputWindow) -> ClassOutputWindow:
    """Both windows of one classifier output as one (same name, class and bin counts)."""
    _check(a.name, b.name, "classes", len(a.class_counts), len(b.class_counts))
    _check(a.name, b.name, "confidence bins", len(a.confidence_counts), len(b.confidence_counts))
    return ClassOutputWindow(
        name=a.name,
        class_counts=_add(a.class_counts, b.class_counts),
        confidence_counts=_add(a.confidence_counts, b.confidence_counts),
    )


def merge_window(a: W, b: W) -> W:
    """Two windows of one name and kind as one; ValueError when they do not match."""
    if isinstance(a, NumericWindow) and isinstance(b, NumericWindow):
        return cast(W, merge_numeric(a, b))
    if isinstance(a, CategoricalWindow) and isinstance(b, CategoricalWindow):
        return cast(W, merge_categorical(a, b))
    if isinstance(a, ClassOutputWindow) and isinstance(b, ClassOutputWindow):
        return cast(W, merge_class_output(a, b))
    raise ValueError(f"{a.name!r}: cannot merge a {type(a).__name__} and a {type(b).__name__}")


def merge_windows(windows: Iterable[Sequence[W]]) -> list[W]:
    """Several telemetry windows' input (or output) lists as one list, merged by name, in the
    order names are first seen. ValueError for a name twice in one list or windows that do not
    match (another kind, another number of bins)."""
    merged: dict[str, W] = {}
    for ws in windows:
        names = [w.name for w in ws]
        if len(set(names)) != len(names):
            raise ValueError(f"a window list names a feature twice: {names}")
        for w in ws:
            prev = merged.get(w.name)
            merged[w.name] = w if prev is None else merge_window(prev, w)
    return list(merged.values())


def _probs(counts: Sequence[int]) -> FloatArray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else np.zeros_like(c)


def window_probs(window: NumericWindow | CategoricalWindow) -> FloatArray:
    """Shares of the non-missing values, aligned with the baseline's ``probs``: every bin with
    the open tails (numeric), or every category then other (categorical); zeros when empty."""
    if isinstance(window, NumericWindow):
        return _probs(window.counts)
    return _probs([*window.counts, window.other])


def class_output_probs(window: ClassOutputWindow) -> tuple[FloatArray, FloatArray]:
    """Shares of the predicted classes and of the confidence bins, aligned with the baseline's
    ``class_probs`` and ``confidence_probs``; zeros when empty."""
    return _probs(window.class_counts), _probs(window.confidence_counts)
