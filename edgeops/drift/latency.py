"""Latency against its budget: the p95 of merged histograms (never an average of percentiles)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgeops.core.latency import merge_wire
from edgeops.core.wire import LatencyHistogram


@dataclass(frozen=True)
class LatencyCheck:
    """The span's latency quantile (None without calls) against the budget (None: no budget)."""

    p95: float | None
    budget: float | None
    over: bool
    count: int


def latency_p95_over_budget(
    histograms: Sequence[LatencyHistogram], budget_ms: float | None, *, q: float = 0.95
) -> LatencyCheck:
    """The ``q`` quantile (p95 by default) of the merged histograms and whether it exceeds
    ``budget_ms``. Percentiles of separate windows are never averaged; histograms of another
    accuracy than most are left out (:func:`~edgeops.core.latency.merge_wire`)."""
    if not histograms:
        return LatencyCheck(None, budget_ms, False, 0)
    merged = merge_wire(histograms)
    value = merged.quantile(q)
    over = value is not None and budget_ms is not None and value > budget_ms
    return LatencyCheck(value, budget_ms, over, merged.count)
