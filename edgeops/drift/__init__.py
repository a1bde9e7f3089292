"""Drift maths: distances between a reference and a span of telemetry, verdicts and hysteresis.

Pure functions over counts (numpy and the standard library only); the service wires storage and
MQTT to them. The reference is the baseline :class:`~edgeops.core.profile.Profile` of the bundle, or
a reference built from a device's own first windows (:func:`reference_from_windows`); the
current side is a span of telemetry windows.

This module gathers the parts:

- :mod:`edgeops.drift.distances`: Jensen-Shannon distance (base 2), PSI, binned Wasserstein,
  L-infinity, each tested against scipy.
- :mod:`edgeops.drift.checks`: one feature's checks (distances on the reference's bins; a shift
  of the mean and a change of the standard deviation from the window moments; the missing
  share), each against a fixed threshold and a sampling-noise floor, and the verdict;
  :class:`DriftThresholds`.
- :mod:`edgeops.drift.span`: spans chosen per feature by non-missing counts, the design effect
  of clustered rows, the dataset verdict, references from windows.
- Here: concept drift (:func:`accuracy_drop`, the accuracy from feedback against the bundle's
  test accuracy, both with their sampling uncertainty), latency (:func:`latency_p95_over_budget`,
  the p95 of merged histograms, never an average of percentiles) and hysteresis (:func:`step`:
  an alert is raised after ``k_raise`` consecutive drifted verdicts and cleared after
  ``k_clear`` clean ones, 2 and 2 by default in the library and the service alike; an evaluation
  without a verdict leaves the counts as they are).

Decision rule. Raw distances are always computed and reported. A feature has drifted when any
check named for its kind reaches ``max(threshold, floor)``; by default JS >= 0.1, PSI >= 0.25,
a mean shift of 0.1 std, a std ratio beyond 1.1, or 5 points of missing share, each also above
its 99.9 % noise quantile (``noise_alpha``) for the sample sizes and the design effect. A
feature whose distribution could not be checked (too few values, no values in the reference)
has no verdict, which is never shown as clean. A span drifts as a dataset (:func:`dataset_drift`)
when at least ``dataset_share`` of the features with a verdict have drifted.

Known limitations (measured in ``benchmarks/drift.py`` and ``tests/test_drift.py``):

- Small baselines: the floors grow with ``1/N``; with 89 baseline rows (wine) a shift of 0.25
  std is rarely significant in a 500-row window.
- The design effect is estimated from the windows of one span (or of a reference): a span of
  one window assumes independent rows unless a reference gives one, and drift that begins inside
  a span widens the floors until it fills the span.
- The scale check uses the reference's kurtosis; bundles made before it was recorded have none,
  and their features get no scale check (the bins still see most scale changes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from edgeops.core.latency import merge_wire
from edgeops.core.wire import LatencyHistogram
from edgeops.drift.checks import (
    DEFAULT_THRESHOLDS,
    Check,
    DriftThresholds,
    FeatureDrift,
    Kind,
    Metric,
    feature_drift,
)
from edgeops.drift.distances import (
    bin_points,
    js_distance,
    linf_distance,
    psi,
    wasserstein_binned,
)
from edgeops.drift.span import (
    Reference,
    SpanDrift,
    SpanWindow,
    dataset_drift,
    design_effect,
    evaluate,
    evaluate_span,
    reference_from_windows,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "AlertState",
    "Check",
    "ConceptDrift",
    "DriftThresholds",
    "FeatureDrift",
    "Kind",
    "LatencyCheck",
    "Metric",
    "Reference",
    "SpanDrift",
    "SpanWindow",
    "Transition",
    "accuracy_drop",
    "bin_points",
    "dataset_drift",
    "design_effect",
    "evaluate",
    "evaluate_span",
    "feature_drift",
    "js_distance",
    "latency_p95_over_budget",
    "linf_distance",
    "newcombe_interval",
    "psi",
    "reference_from_windows",
    "step",
    "wasserstein_binned",
    "wilson_interval",
]

Transition = Literal["none", "raised", "cleared"]


# --- concept drift ------------------------------------------------------------------------------


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided Wilson score interval of a proportion (no continuity correction); (0, 1)
    when ``total`` is 0."""
    if not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total, got {correct} and {total}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if total == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = correct / total, z * z
    denominator = 1 + z2 / total
    center = (p + z2 / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return max(center - half, 0.0), min(center + half, 1.0)


def newcombe_interval(
    correct_a: int, total_a: int, correct_b: int, total_b: int, confidence: float = 0.95
) -> tuple[float, float]:
    """The interval of the difference of two proportions ``a - b`` by Newcombe's hybrid score
    method (his method 10: the Wilson intervals of each combined), in [-1, 1]."""
    pa = correct_a / total_a if total_a else 0.0
    pb = correct_b / total_b if total_b else 0.0
    la, ua = wilson_interval(correct_a, total_a, confidence)
    lb, ub = wilson_interval(correct_b, total_b, confidence)
    diff = pa - pb
    lower = diff - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    upper = diff + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return max(lower, -1.0), min(upper, 1.0)


@dataclass(frozen=True)
class ConceptDrift:
    """The accuracy from feedback (None without any) and its Wilson interval; the reference
    accuracy and the size of the test set it was measured on (None: taken as exact); the upper
    bound of ``accuracy - reference`` (Newcombe, or the Wilson upper bound minus the reference
    when the reference is exact); the verdict (None below ``min_feedback``)."""

    accuracy: float | None
    lower: float
    upper: float
    reference: float
    total: int
    drifted: bool
    reason: str
    reference_count: int | None = None
    difference_upper: float | None = None
    evaluated: bool = True

    @property
    def verdict(self) -> bool | None:
        return self.drifted if self.evaluated else None


def accuracy_drop(
    correct: int,
    total: int,
    reference_accuracy: float,
    confidence: float = 0.95,
    *,
    min_feedback: int = 100,
    reference_count: int | None = None,
) -> ConceptDrift:
    """Whether the accuracy from feedback has dropped below the bundle's test accuracy.

    No verdict below ``min_feedback`` labelled predictions. With ``reference_count`` (the test
    set's size) the reference is itself a sample: drifted only when the upper bound of Newcombe's
    interval of ``accuracy - reference`` is below 0, so a 23-row test set at 100 % does not make
    99 % from feedback an alert. Without it the reference is taken as exact: drifted when the
    Wilson upper bound of the accuracy is below it. Either way the accuracy is lower than the
    reference with one-sided confidence of at least ``(1 + confidence) / 2``.
    """
    if not 0 <= reference_accuracy <= 1:
        raise ValueError(f"reference_accuracy must be in [0, 1], got {reference_accuracy!r}")
    if reference_count is not None and reference_count < 1:
        raise ValueError(f"reference_count must be positive, got {reference_count!r}")
    lower, upper = wilson_interval(correct, total, confidence)
    accuracy = correct / total if total else None
    if reference_count is None:
        diff_upper = upper - reference_accuracy
        against = f"{reference_accuracy:.3g} (taken as exact)"
    else:
        ref_correct = round(reference_accuracy * reference_count)
        diff_upper = newcombe_interval(correct, total, ref_correct, reference_count, confidence)[1]
        against = f"{reference_accuracy:.3g} of {reference_count} test rows"
    evaluated = total >= min_feedback and total > 0
    drifted = evaluated and diff_upper < 0
    if not evaluated:
        reason = f"no verdict: too little feedback (n={total} < {max(min_feedback, 1)})"
    elif drifted:
        reason = (
            f"accuracy {accuracy:.3g} of {total} < {against}: upper bound of the drop "
            f"{diff_upper:+.3g} < 0"
        )
    else:
        reason = (
            f"no drop: accuracy {accuracy:.3g} of {total} against {against}, upper bound of "
            f"the difference {diff_upper:+.3g} >= 0"
        )
    return ConceptDrift(
        accuracy,
        lower,
        upper,
        reference_accuracy,
        total,
        drifted,
        reason,
        reference_count,
        diff_upper,
        evaluated,
    )


# --- latency ------------------------------------------------------------------------------------


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


# --- hysteresis ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertState:
    """Whether an alert is active, and the current run of drifted (``over``) or clean
    (``under``) verdicts; one of the two is always 0."""

    active: bool = False
    over: int = 0
    under: int = 0


def step(
    state: AlertState, drifted: bool | None, k_raise: int = 2, k_clear: int = 2
) -> tuple[AlertState, Transition]:
    """The state after one evaluation: raised after ``k_raise`` consecutive drifted verdicts,
    cleared after ``k_clear`` consecutive clean ones. None (no verdict, e.g. too few samples)
    changes nothing and does not break a run."""
    if k_raise < 1 or k_clear < 1:
        raise ValueError("k_raise and k_clear must be at least 1")
    if drifted is None:
        return state, "none"
    if drifted:
        over = state.over + 1
        if not state.active and over >= k_raise:
            return AlertState(True, over, 0), "raised"
        return AlertState(state.active, over, 0), "none"
    under = state.under + 1
    if state.active and under >= k_clear:
        return AlertState(False, 0, under), "cleared"
    return AlertState(state.active, 0, under), "none"
