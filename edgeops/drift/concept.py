"""Concept drift: the accuracy from feedback labels against the bundle's test accuracy, both with
their sampling uncertainty (Wilson intervals, and Newcombe's interval of their difference)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


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
