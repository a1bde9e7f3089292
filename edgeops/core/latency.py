"""A mergeable latency histogram with bounded relative error (DDSketch's logarithmic mapping).

Values are milliseconds. With ``gamma = (1 + a) / (1 - a)`` for a relative accuracy ``a``, bucket
``i`` holds the values in ``(gamma ** (i - 1), gamma ** i]``, that is ``i = ceil(log_gamma(v))``,
and stands for ``2 * gamma ** i / (gamma + 1)``, which is within ``a`` (relative) of every value
in the bucket. Values at or below ``min_value`` are counted in a zero bucket. Histograms with the
same accuracy merge by adding counts, so a percentile over many windows or devices is computed
from their merged histogram, never by averaging their percentiles.

:meth:`LogHistogram.quantile` estimates the order statistic of rank ``floor(q * (count - 1))``
(numpy's ``method="lower"``) within the relative accuracy, clamped to the exact min and max.
The store is a dict of bucket index to count: at 1 % accuracy the values from 1 microsecond to
1000 seconds span at most 1,037 buckets, so it needs no collapsing.

A value within rounding of a bucket boundary may land in either neighbour (the scalar path uses
:func:`math.log`, the vector path :func:`numpy.log`); the error bound holds either way.
:class:`LogHistogram` is not thread-safe: its owner serialises access (the window accumulator
holds its lock around it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from edgeops.core.wire import LatencyHistogram

__all__ = ["LogHistogram", "merge_wire"]


class LogHistogram:
    """Counts of latencies (ms) in log-spaced buckets; see the module docstring."""

    __slots__ = (
        "_buckets",
        "_count",
        "_gamma",
        "_inv_log_gamma",
        "_max",
        "_min",
        "_min_value",
        "_relative_accuracy",
        "_sum",
        "_zero",
    )

    def __init__(self, relative_accuracy: float = 0.01, min_value: float = 1e-6) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        if not 0.0 < min_value < math.inf:
            raise ValueError(f"min_value must be positive and finite, got {min_value!r}")
        self._relative_accuracy = float(relative_accuracy)
        self._min_value = float(min_value)
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        self._buckets: dict[int, int] = {}
        self._zero = 0
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf

    # --- adding -------------------------------------------------------------------------------

    def add(self, values_ms: float | npt.ArrayLike) -> None:
        """Count one value or an array of values; ValueError for negative or non-finite ones
        (nothing is counted then)."""
        if isinstance(values_ms, float | int):
            v = float(values_ms)
            if not 0.0 <= v < math.inf:
                raise ValueError(f"latency must be a finite, non-negative number, got {v!r}")
            if v > self._min_value:
                k = math.ceil(math.log(v) * self._inv_log_gamma)
                self._buckets[k] = self._buckets.get(k, 0) + 1
            else:
                self._zero += 1
            self._count += 1
            self._sum += v
            if v < self._min:
                self._min = v
            if v > self._max:
                self._max = v
            return
        a = np.asarray(values_ms, dtype=np.float64).ravel()
        if a.size == 0:
            return
        lo, hi = float(a.min()), float(a.max())
        if not (lo >= 0.0 and hi < math.inf):  # NaN fails both comparisons
            raise ValueError("latencies must be finite, non-negative numbers")
        above = a[a > self._min_value]
        keys = np.ceil(np.log(above) * self._inv_log_gamma).astype(np.int64)
        uniq, counts = np.unique(keys, return_counts=True)
        buckets = self._buckets
        for k, c in zip(uniq.tolist(), counts.tolist(), strict=True):
            buckets[k] = buckets.get(k, 0) + c
        self._zero += a.size - above.size
        self._count += a.size
        self._sum += float(a.sum())
        self._min = min(self._min, lo)
        self._max = max(self._max, hi)

    def merge(self, other: LogHistogram) -> None:
        """Add ``other``'s counts to this histogram; ValueError unless both have the same
        relative accuracy and min_value."""
        if (other._relative_accuracy, other._min_value) != (
            self._relative_accuracy,
            self._min_value,
        ):
            raise ValueError(
                "cannot merge latency histograms with different settings: "
                f"relative_accuracy {self._relative_accuracy} and {other._relative_accuracy}, "
                f"min_value {self._min_value} and {other._min_value}"
            )
        buckets = self._buckets
        for k, c in other._buckets.items():
            buckets[k] = buckets.get(k, 0) + c
        self._zero += other._zero
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    # --- reading ------------------------------------------------------------------------------

    @property
    def relative_accuracy(self) -> float:
        return self._relative_accuracy

    @property
    def min_value(self) -> float:
        return self._min_value

    @property
    def gamma(self) -> float:
        return self._gamma

    @property
    def count(self) -> int:
        return self._count

    @property
    def sum(self) -> float:
        return self._sum

    @property
    def min(self) -> float | None:
        """The exact smallest value; None when empty."""
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        """The exact largest value; None when empty."""
        return self._max if self._count else None

    @property
    def mean(self) -> float | None:
        """The exact mean (sum over count); None when empty."""
        return self._sum / self._count if self._count else None

    @property
    def buckets(self) -> dict[int, int]:
        """A copy of the bucket counts (index to count; the zero bucket is not included)."""
        return dict(self._buckets)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (``0 <= q <= 1``) within the relative accuracy; None when empty.

        Estimates the value of rank ``floor(q * (count - 1))`` in sorted order (numpy's
        ``method="lower"``). The first and last ranks give the exact min and max, a rank in the
        zero bucket the exact min (at most ``min_value``), and any other the representative
        value of its bucket, clamped to [min, max].
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be from 0 to 1, got {q!r}")
        if self._count == 0:
            return None
        rank = math.floor(q * (self._count - 1))
        if rank == self._count - 1:
            return self._max
        if rank < self._zero or rank == 0:
            return self._min
        seen = self._zero
        for k in sorted(self._buckets):
            seen += self._buckets[k]
            if seen > rank:
                value = 2.0 * self._gamma**k / (self._gamma + 1.0)
                return min(max(value, self._min), self._max)
        return self._max  # not reached while the counts are consistent

    # --- wire -----------------------------------------------------------------------------------

    def to_wire(self) -> LatencyHistogram:
        return LatencyHistogram(
            relative_accuracy=self._relative_accuracy,
            buckets=dict(self._buckets),
            zero=self._zero,
            count=self._count,
            sum=self._sum,
            min=self.min,
            max=self.max,
            min_value=self._min_value,
        )

    @classmethod
    def from_wire(cls, h: LatencyHistogram) -> LogHistogram:
        """The histogram of a wire message; ValueError when its counts are inconsistent."""
        out = cls(h.relative_accuracy, h.min_value)
        if h.zero < 0 or any(c < 0 for c in h.buckets.values()):
            raise ValueError("latency histogram: counts must not be negative")
        if h.count != h.zero + sum(h.buckets.values()):
            raise ValueError(
                f"latency histogram: count {h.count} is not zero + bucket counts "
                f"({h.zero + sum(h.buckets.values())})"
            )
        if h.count and (h.min is None or h.max is None or not h.min <= h.max):
            raise ValueError("latency histogram: min and max must be set, min <= max")
        out._buckets = {int(k): int(c) for k, c in h.buckets.items() if c}
        out._zero = h.zero
        out._count = h.count
        out._sum = float(h.sum)
        if h.count and h.min is not None and h.max is not None:
            out._min, out._max = float(h.min), float(h.max)
        return out

    def __repr__(self) -> str:
        return (
            f"LogHistogram(relative_accuracy={self._relative_accuracy}, count={self._count}, "
            f"buckets={len(self._buckets)})"
        )


def merge_wire(histograms: Iterable[LatencyHistogram]) -> LogHistogram:
    """One histogram holding ``histograms`` (ValueError when there are none, as their accuracy
    is then unknown).

    Histograms merge only with the same ``relative_accuracy`` and ``min_value``. When they
    differ (a device configured otherwise, or a message that says so), the parameters holding
    the most values win and the others are left out: one odd window never makes a span, a
    device page or a rollout gate unreadable.
    """
    groups: dict[tuple[float, float], LogHistogram] = {}
    for h in histograms:
        one = LogHistogram.from_wire(h)
        key = (one.relative_accuracy, one.min_value)
        merged = groups.get(key)
        if merged is None:
            groups[key] = one
        else:
            merged.merge(one)
    if not groups:
        raise ValueError("no latency histograms to merge")
    return max(groups.values(), key=lambda g: g.count)
