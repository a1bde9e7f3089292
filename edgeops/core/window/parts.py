"""The parts of :class:`~edgeops.core.window.accumulator.WindowAccumulator`: per-feature states that
count a window's values in the baseline's bins (numeric, categorical, predicted classes), the row
format queued for them, and the small checks the accumulator runs on its input."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from edgeops.core.profile import (
    CategoricalProfile,
    ClassOutputProfile,
    NumericProfile,
    TensorProfile,
)
from edgeops.core.stats import FloatArray, Moments, class_output_counts, count_keys
from edgeops.core.wire import CategoricalWindow, ClassOutputWindow, NumericWindow

log = logging.getLogger(__name__)

ABSENT: Any = object()
QUEUE_BYTES = 1 << 20
MAX_BACKGROUND = 2
BACKGROUND_ROW_BYTES = 1 << 16
"""Full queues reduced on the executor at a time (which bounds the rows it holds in memory)."""
B = TypeVar("B")
Step = tuple[Callable[[Any], None], Any]


Row = tuple[bytes, list[str | None], list[npt.NDArray[Any]]]
"""One queued row of inputs (a plain tuple: cheaper to make than a NamedTuple): the numeric
features' values as float64 bytes, the categorical features' keys, and a copy of each tensor
sample ``[1, *shape]``."""


def log_failure(future: Future[None]) -> None:
    error = future.exception()
    if error is not None:
        log.error("a telemetry reduction failed; its rows are dropped", exc_info=error)


def check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"expected a count (a non-negative integer), got {n!r}")


def single(v: Any) -> Any:
    """The value of a one-row column (a one-element array or list, or a scalar); ``ABSENT``
    for anything else."""
    t = type(v)
    if t is np.ndarray:
        return v.item() if v.shape == (1,) or v.shape == () else ABSENT
    if t is list or t is tuple:
        return v[0] if len(v) == 1 else ABSENT
    if v is None or t is float or t is str or t is int or isinstance(v, np.generic):
        return v
    return ABSENT


def check_tensor(tensor: TensorProfile, a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    channels = a.shape[-1] if a.ndim else None
    if a.ndim != len(tensor.shape) + 1 or (tensor.channels_last and channels != tensor.shape[-1]):
        raise ValueError(
            f"{tensor.name!r}: expected a batch of samples like {tensor.shape}, got {a.shape}"
        )
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{tensor.name!r}: expected numbers, got dtype {a.dtype}")
    if a.size == 0 and a.shape[0]:
        raise ValueError(f"{tensor.name!r}: samples of shape {a.shape[1:]} have no elements")
    return a


def numeric_steps(states: Sequence[NumericState], x: FloatArray) -> list[Step]:
    """The steps that add column ``j`` of ``x`` ``[N, F]`` to ``states[j]``.

    Bins as :func:`~edgeops.core.stats.bin_counts` (``searchsorted(side="right")``; NaN, which sorts
    last, is taken out of the top bin and counted missing), out-of-range against the baseline's
    [min, max], and moments of the finite values as :meth:`Moments.of` (two passes), all the
    features at once.
    """
    if x.shape[0] == 0:
        return []
    finite = np.isfinite(x)
    count = finite.sum(axis=0)
    mean = np.where(finite, x, 0.0).sum(axis=0) / np.maximum(count, 1)
    dev = np.where(finite, x - mean, 0.0)
    m2 = np.einsum("ij,ij->j", dev, dev)
    lo = np.where(finite, x, np.inf).min(axis=0)
    hi = np.where(finite, x, -np.inf).max(axis=0)
    base_lo = np.array([s.lo for s in states])
    base_hi = np.array([s.hi for s in states])
    outside = ((x < base_lo) | (x > base_hi)).sum(axis=0).tolist()
    missing = np.isnan(x).sum(axis=0).tolist()
    stats = zip(count.tolist(), mean.tolist(), m2.tolist(), lo.tolist(), hi.tolist(), strict=True)
    steps: list[Step] = []
    for j, (state, (n, mu, sq, vmin, vmax)) in enumerate(zip(states, stats, strict=True)):
        idx = np.searchsorted(state.edges, x[:, j], side="right")
        counts = np.bincount(idx, minlength=len(state.edges) + 1).tolist()
        counts[-1] -= missing[j]
        m = Moments(n, mu, sq, vmin, vmax) if n else Moments.empty()
        steps.append((state.add_many, (counts, missing[j], outside[j], m)))
    return steps


_NumericDelta = tuple[list[int], int, int, Moments]


class NumericState:
    """Bins, missing, out-of-range count and moments of one numeric feature or output."""

    __slots__ = ("counts", "edges", "hi", "lo", "missing", "moments", "name", "out_of_range")

    def __init__(self, name: str, baseline: NumericProfile) -> None:
        self.name = name
        self.edges = np.asarray(baseline.edges, dtype=np.float64)
        m = baseline.moments
        self.lo, self.hi = (m.min, m.max) if m.count else (math.inf, -math.inf)
        self.clear()

    def clear(self) -> None:
        self.counts = [0] * (len(self.edges) + 1)
        self.missing = self.out_of_range = 0
        self.moments = Moments.empty()

    def add_missing(self, n: int) -> None:
        self.missing += n

    def add_many(self, delta: _NumericDelta) -> None:
        counts, missing, outside, m = delta
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.missing += missing
        self.out_of_range += outside
        self.moments = self.moments.merge(m)

    def window(self) -> NumericWindow:
        m = self.moments
        empty = m.count == 0
        return NumericWindow(
            name=self.name,
            counts=list(self.counts),
            missing=self.missing,
            out_of_range=self.out_of_range,
            count=m.count,
            mean=None if empty else m.mean,
            m2=m.m2,
            min=None if empty else m.min,
            max=None if empty else m.max,
        )


_CategoricalDelta = tuple[list[int], int, int]


class CategoricalState:
    """Counts per baseline category, other and missing of one categorical feature."""

    __slots__ = ("categories", "counts", "missing", "name", "other")

    def __init__(self, baseline: CategoricalProfile) -> None:
        self.name = baseline.name
        self.categories = baseline.categories
        self.clear()

    def clear(self) -> None:
        self.counts = [0] * len(self.categories)
        self.other = self.missing = 0

    def add_missing(self, n: int) -> None:
        self.missing += n

    def count(self, keys: Iterable[str | None]) -> _CategoricalDelta:
        """The counts of some :func:`~edgeops.core.stats.category_keys` (outside the lock)."""
        counts, other, missing = count_keys(keys, self.categories)
        return counts.tolist(), other, missing

    def add_many(self, delta: _CategoricalDelta) -> None:
        counts, other, missing = delta
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.other += other
        self.missing += missing

    def window(self) -> CategoricalWindow:
        return CategoricalWindow(
            name=self.name, counts=list(self.counts), other=self.other, missing=self.missing
        )


class ClassState:
    """A classifier's predicted-class counts and confidence counts in the baseline's edges."""

    __slots__ = ("class_counts", "confidence_counts", "edges", "n_classes", "name")

    def __init__(self, baseline: ClassOutputProfile) -> None:
        self.name = baseline.name
        self.n_classes = len(baseline.labels)
        self.edges = baseline.confidence_edges
        self.clear()

    def clear(self) -> None:
        self.class_counts = [0] * self.n_classes
        self.confidence_counts = [0] * (len(self.edges) + 1)

    def count(self, probs: npt.NDArray[Any]) -> tuple[list[int], list[int]]:
        """:func:`~edgeops.core.stats.class_output_counts` of some probabilities (outside the
        lock)."""
        classes, confidence = class_output_counts(probs, self.n_classes, self.edges)
        return classes.tolist(), confidence.tolist()

    def add_many(self, delta: tuple[list[int], list[int]]) -> None:
        classes, confidence = delta
        self.class_counts = [a + b for a, b in zip(self.class_counts, classes, strict=True)]
        self.confidence_counts = [
            a + b for a, b in zip(self.confidence_counts, confidence, strict=True)
        ]

    def window(self) -> ClassOutputWindow:
        return ClassOutputWindow(
            name=self.name,
            class_counts=list(self.class_counts),
            confidence_counts=list(self.confidence_counts),
        )
