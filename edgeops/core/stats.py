"""Binning, counting, moments and reductions: the statistics shared by baselines and telemetry.

The trainer builds a baseline (:mod:`edgeops.core.profile`) with these functions; the device agent
summarises each telemetry window with the same functions and the baseline's parameters:
:func:`bin_counts` in a feature's edges, :func:`category_counts` over its categories,
:class:`Moments` (mergeable across windows), :func:`reduce_tensor` for inputs with many elements
and :func:`class_output_counts` for classifier outputs. Pure numpy.

Bins. ``edges`` are the inner cut points ``e0 < e1 < ... < e_last``; the bins are ``(-inf, e0)``,
``[e0, e1)``, ..., ``[e_last, +inf)``: ``len(edges) + 1`` bins, open at both ends, and a value equal
to an edge falls in the bin above it (``np.searchsorted(edges, v, side="right")``). NaN is missing
and never binned; ``-inf`` and ``+inf`` fall in the tails, so every value lands somewhere and values
outside the baseline's range show up as mass in the tail bins.

Missing values. Numeric: NaN (and None in object input). Categorical: None, ``""`` and NaN.
:class:`Moments` ignore every non-finite value (NaN and +-inf).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_BINS = 100
REDUCTIONS = ("mean", "std", "min", "max")
# Confidence (top class probability) bins of classifier outputs: (-inf, 0.1), [0.1, 0.2), ...
CONFIDENCE_EDGES: tuple[float, ...] = tuple(k / 10 for k in range(1, 10))

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def as_floats(values: npt.ArrayLike) -> FloatArray:
    """The values as a flat float64 array (None in object input becomes NaN)."""
    return np.asarray(values, dtype=np.float64).ravel()


def check_n_bins(n_bins: int) -> int:
    """``n_bins`` if it is an integer from 2 to :data:`MAX_BINS`; ValueError otherwise."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer):
        raise ValueError(f"n_bins must be an integer, got {n_bins!r}")
    if not 2 <= n_bins <= MAX_BINS:
        raise ValueError(f"n_bins must be from 2 to {MAX_BINS}, got {n_bins}")
    return int(n_bins)


def quantile_edges(values: npt.ArrayLike, n_bins: int = 10) -> FloatArray:
    """Inner bin edges at the quantiles ``k / n_bins`` (k = 1 .. n_bins-1) of the finite values.

    The quantiles are observed values (numpy's ``method="inverted_cdf"``: the k-th edge is the
    smallest value with at least ``k / n_bins`` of the values at or below it), so with ties going
    to the upper bin every bin between two edges holds at least its lower edge, and a feature with
    few distinct values gets one bin per value instead of empty bins between values. Duplicates
    are removed, so the edges are strictly increasing and such features get fewer bins: a constant
    feature gets one edge, its value (every sample lands in ``[value, +inf)``), and no finite
    values give no edges (one bin). Raises ValueError unless ``2 <= n_bins <= 100``.
    """
    check_n_bins(n_bins)
    v = as_floats(values)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.empty(0, dtype=np.float64)
    return np.unique(np.quantile(v, np.arange(1, n_bins) / n_bins, method="inverted_cdf"))


def baseline_edges(values: npt.ArrayLike, n_bins: int = 10) -> FloatArray:
    """Tie-aware bin edges: one bin per value that repeats, quantile bins on the rest.

    Quantile edges (:func:`quantile_edges`) collapse where values repeat: a pixel that is 0 in
    95 % of the samples gets one edge at 0, so every value lands in ``[0, +inf)`` and no binned
    distance can ever move. Here every value holding at least ``1 / (2 * n_bins)`` of the values
    is an *atom* with its own bin ``[value, next)``, ``next`` the next distinct value of the
    data, so the bin holds that value alone and no bin is left empty between values (an empty
    baseline bin would make PSI explode on the first unseen value in it). The largest value, when
    it is an atom, gets ``[value, value + 1e-6 * max(|value|, 1))``: a value above every value
    seen is a change. The other values get quantile edges with the bins left over (``n_bins``
    minus the atoms). Without such repeated values this is :func:`quantile_edges`. A shift
    smaller than the gap between two atoms stays in its bin: the moment checks of
    :mod:`edgeops.drift.checks` see it. Edges are strictly increasing; no finite values give no
    edges.
    """
    check_n_bins(n_bins)
    v = as_floats(values)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.empty(0, dtype=np.float64)
    distinct, counts = np.unique(v, return_counts=True)
    atom = counts * (2 * n_bins) >= v.size
    edges: list[float] = []
    for i in np.flatnonzero(atom).tolist():
        value = float(distinct[i])
        if i + 1 < distinct.size:
            upper = float(distinct[i + 1])
        else:
            upper = value + 1e-6 * max(abs(value), 1.0)
        edges += [value, upper]
    left = n_bins - int(atom.sum())
    rest = v[~np.isin(v, distinct[atom])]
    if rest.size and left >= 2:
        edges += np.quantile(rest, np.arange(1, left) / left, method="inverted_cdf").tolist()
    return np.unique(np.asarray(edges, dtype=np.float64))


def check_edges(edges: npt.ArrayLike) -> FloatArray:
    """``edges`` as a float64 array; ValueError unless 1-D, finite and strictly increasing."""
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ValueError("edges must be a 1-D sequence of finite, strictly increasing numbers")
    return e


def kurtosis(values: npt.ArrayLike) -> float | None:
    """The (non-excess) kurtosis ``m4 / m2**2`` of the finite values, 3 for a normal
    distribution; None for fewer than two distinct values."""
    v = as_floats(values)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return None
    dev = v - v.mean()
    m2 = float(np.mean(dev * dev))
    if m2 <= 0:
        return None
    return float(np.mean(dev**4)) / (m2 * m2)


def bin_counts(values: npt.ArrayLike, edges: npt.ArrayLike) -> tuple[IntArray, int]:
    """Counts of the values in the ``len(edges) + 1`` bins of ``edges``, and the NaN count."""
    e = check_edges(edges)
    v = as_floats(values)
    nan = np.isnan(v)
    idx = np.searchsorted(e, v[~nan], side="right")
    return np.bincount(idx, minlength=e.size + 1).astype(np.int64), int(nan.sum())


@dataclass(frozen=True)
class Moments:
    """Count, mean, sum of squared deviations from the mean (``m2``), min and max of finite values.

    Mergeable: ``a.merge(b)`` equals ``Moments.of`` on the concatenation up to rounding (Chan et
    al.'s parallel update). The empty value has count 0, mean and m2 0, min +inf and max -inf.
    """

    count: int
    mean: float
    m2: float
    min: float
    max: float

    @classmethod
    def empty(cls) -> Moments:
        return cls(0, 0.0, 0.0, math.inf, -math.inf)

    @classmethod
    def of(cls, values: npt.ArrayLike) -> Moments:
        v = as_floats(values)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return cls.empty()
        mean = float(v.mean())
        m2 = float(np.sum(np.square(v - mean)))
        return cls(int(v.size), mean, m2, float(v.min()), float(v.max()))

    def merge(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        return Moments(
            count=n,
            mean=self.mean + delta * (other.count / n),
            m2=self.m2 + other.m2 + delta * delta * (self.count * other.count / n),
            min=min(self.min, other.min),
            max=max(self.max, other.max),
        )

    @property
    def variance(self) -> float:
        """Population variance (``m2 / count``); NaN when empty."""
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation; NaN when empty."""
        return math.sqrt(self.variance)

    def to_dict(self) -> dict[str, Any]:
        """``{"count", "mean", "m2", "min", "max"}``; mean, min and max are None when empty."""
        empty = self.count == 0
        return {
            "count": self.count,
            "mean": None if empty else self.mean,
            "m2": self.m2,
            "min": None if empty else self.min,
            "max": None if empty else self.max,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "moments") -> Moments:
        """The inverse of :meth:`to_dict`; ValueError naming the bad field."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
        count = d.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{where}.count: expected a non-negative integer, got {count!r}")
        if count == 0:
            return cls.empty()
        fields = []
        for key in ("mean", "m2", "min", "max"):
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{where}.{key}: expected a finite number, got {v!r}")
            fields.append(float(v))
        if fields[1] < 0 or fields[2] > fields[3]:
            raise ValueError(f"{where}: m2 must not be negative and min must not exceed max")
        return cls(count, *fields)


def category_keys(values: Iterable[Any]) -> list[str | None]:
    """Each value as ``str(v)``, or None when it is missing (None, ``""`` or NaN)."""
    items = values.ravel().tolist() if isinstance(values, np.ndarray) else values
    keys: list[str | None] = []
    for v in items:
        missing = v is None or (isinstance(v, str) and not v)
        missing = missing or (isinstance(v, float | np.floating) and math.isnan(v))
        keys.append(None if missing else str(v))
    return keys


def count_keys(keys: Iterable[str | None], categories: Sequence[str]) -> tuple[IntArray, int, int]:
    """Counts per category of :func:`category_keys`' result, then the other and missing counts."""
    seen = Counter(keys)
    counts = np.array([seen.pop(c, 0) for c in categories], dtype=np.int64)
    missing = seen.pop(None, 0)
    return counts, sum(seen.values()), missing


def category_counts(values: Iterable[Any], categories: Sequence[str]) -> tuple[IntArray, int, int]:
    """Counts per category (values compared as ``str(v)``), then the other and missing counts."""
    return count_keys(category_keys(values), categories)


def check_reductions(reductions: Sequence[str]) -> None:
    if not reductions or any(r not in REDUCTIONS for r in reductions):
        raise ValueError(f"reductions must be some of {list(REDUCTIONS)}, got {list(reductions)}")


def reduced_names(reductions: Sequence[str], n_channels: int) -> tuple[str, ...]:
    """The names :func:`reduce_tensor` gives its results, in its order."""
    return tuple(f"{r}[c{c}]" for c in range(n_channels) for r in reductions)


def resolve_channels_last(shape: tuple[int, ...], channels_last: bool | None) -> bool:
    """Whether a batch of ``shape`` is reduced per channel (see :func:`reduce_tensor`)."""
    if len(shape) < 2:
        raise ValueError(f"expected a batch [N, ...] of rank 2 or more, got shape {shape}")
    if channels_last is None:
        return len(shape) >= 4
    if channels_last and len(shape) < 3:
        raise ValueError("channels_last needs a batch of rank 3 or more")
    return channels_last


TENSOR_SAMPLE = 4096
"""Elements per channel that tensor reductions read (a fixed, seeded subset) when a sample has
more: a 224x224 image's mean and std from 4,096 of its 50,176 pixels per channel, the same
pixels in the baseline and on the device, at a twelfth of the cost."""


def sample_indices(length: int, sample: int | None) -> npt.NDArray[np.intp] | None:
    """The fixed subset of ``sample`` of ``length`` positions that :func:`reduce_tensor` reads
    (sorted; the same for the same arguments everywhere), or None to read them all."""
    if sample is None or length <= sample:
        return None
    return _sample_indices(length, sample)


@functools.lru_cache(maxsize=32)
def _sample_indices(length: int, sample: int) -> npt.NDArray[np.intp]:
    rng = np.random.default_rng([0x5EED, length, sample])  # the same on every machine
    idx = np.sort(rng.choice(length, size=sample, replace=False)).astype(np.intp)
    idx.setflags(write=False)
    return idx


def reduce_tensor(
    x: npt.ArrayLike,
    reductions: Sequence[str] = ("mean", "std"),
    *,
    channels_last: bool | None = None,
    sample: int | None = None,
) -> dict[str, FloatArray]:
    """Per-sample scalars of a batch: each reduction over each channel, computed in float64.

    The result maps ``"mean[c0]", "std[c0]", "mean[c1]", ...`` (see :func:`reduced_names`) to
    arrays ``[N]``. Reductions are some of :data:`REDUCTIONS`; ``std`` is the population std.

    ``x`` is a batch ``[N, ...]``. With ``channels_last`` its last axis holds channels and each
    one is reduced over all the other sample axes (``[N, H, W, C]``, ``[N, L, C]``,
    ``[N, D, H, W, C]``); without, each whole sample is one channel ``c0``. The default (None)
    is channels-last for rank 4 and more, and one channel for rank 2 (``[N, L]``) and rank 3
    (read as ``[N, H, W]``): pass ``channels_last=True`` for a sequence ``[N, L, C]``. A NaN
    element makes its sample's results NaN, which :func:`bin_counts` counts as missing. Rank 1 and
    samples without elements raise ValueError.

    With ``sample``, a channel of more elements than that is reduced over the fixed subset
    :func:`sample_indices` picks (the same positions for every sample), read before anything
    is widened: an estimate of the whole channel's reductions at a fraction of the cost.
    """
    check_reductions(reductions)
    a = np.asarray(x)
    return reduce_rows(gather_rows(a, channels_last=channels_last, sample=sample), reductions)


def gather_rows(
    x: npt.NDArray[Any], *, channels_last: bool | None = None, sample: int | None = None
) -> npt.NDArray[Any]:
    """A batch ``[N, ...]`` as ``[N, L, C]`` (elements, channels: see :func:`reduce_tensor`),
    only the :func:`sample_indices` subset of its elements when a channel has more than
    ``sample``; in the input's own dtype, a copy when a subset is taken."""
    channels_last = resolve_channels_last(x.shape, channels_last)
    n_channels = x.shape[-1] if channels_last else 1
    size = math.prod(x.shape[1:])
    if size == 0:
        raise ValueError(f"samples of shape {x.shape[1:]} have no elements to reduce")
    length = size // n_channels
    rows = x.reshape(x.shape[0], length, n_channels)
    idx = sample_indices(length, sample)
    return rows if idx is None else rows[:, idx, :]


def reduce_rows(rows: npt.NDArray[Any], reductions: Sequence[str]) -> dict[str, FloatArray]:
    """:func:`reduce_tensor`'s results from the ``[N, L, C]`` rows of :func:`gather_rows`."""
    n, length, n_channels = rows.shape
    # One pass transposes to [N, C, L] and widens to float64, so that every reduction runs over
    # contiguous rows (numpy's pairwise sums, the same for a sample alone or in any batch).
    t = np.empty((n, n_channels, length), dtype=np.float64)
    t[...] = rows.transpose(0, 2, 1)
    found: dict[str, FloatArray] = {}
    if "min" in reductions:
        found["min"] = t.min(axis=2)
    if "max" in reductions:
        found["max"] = t.max(axis=2)
    if "mean" in reductions or "std" in reductions:
        found["mean"] = mean = t.mean(axis=2)
        if "std" in reductions:  # population std, two passes, in place (t is ours)
            t -= mean[..., None]
            np.square(t, out=t)
            found["std"] = np.sqrt(t.mean(axis=2))
    return {f"{r}[c{c}]": found[r][:, c].copy() for c in range(n_channels) for r in reductions}


def class_output_counts(
    probs: npt.ArrayLike, n_classes: int, confidence_edges: Sequence[float] = CONFIDENCE_EDGES
) -> tuple[IntArray, IntArray]:
    """Predicted-class counts and confidence bin counts of class probabilities ``[N, K]``.

    The predicted class is the argmax and the confidence the max probability. One column
    ``[N, 1]`` is a binary classifier's probability of class 1 (``n_classes`` 2): class 1 when it is
    at least 0.5, confidence ``max(p, 1 - p)``. Rows with NaN are skipped.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or max(p.shape[1], 2) != n_classes:
        raise ValueError(f"expected probabilities [N, {n_classes}], got shape {p.shape}")
    p = p[~np.isnan(p).any(axis=1)]
    if p.shape[1] == 1:
        pred = (p[:, 0] >= 0.5).astype(np.intp)
        conf = np.maximum(p[:, 0], 1 - p[:, 0])
    else:
        pred, conf = np.argmax(p, axis=1), np.max(p, axis=1)
    classes = np.bincount(pred, minlength=n_classes).astype(np.int64)
    return classes, bin_counts(conf, confidence_edges)[0]
