"""Drift maths: distances between a reference and a span of telemetry, verdicts and hysteresis.

Pure functions over counts (numpy and the standard library only); the service wires storage and
MQTT to them. The reference is the baseline :class:`~edgeops.core.profile.Profile` of the bundle, or
a reference built from a device's own first windows (:func:`reference_from_windows`); the
current side is a span of telemetry windows.

This package's ``__init__`` gathers the public names of its parts:

- :mod:`edgeops.drift.distances`: Jensen-Shannon distance (base 2), PSI, binned Wasserstein,
  L-infinity, each tested against scipy.
- :mod:`edgeops.drift.checks`: one feature's checks (distances on the reference's bins; a shift
  of the mean and a change of the standard deviation from the window moments; the missing
  share), each against a fixed threshold and a sampling-noise floor, and the verdict;
  :class:`DriftThresholds`.
- :mod:`edgeops.drift.span`: spans chosen per feature by non-missing counts, the design effect
  of clustered rows, the dataset verdict, references from windows.
- :mod:`edgeops.drift.concept`, :mod:`edgeops.drift.latency`, :mod:`edgeops.drift.hysteresis`:
  concept drift (:func:`accuracy_drop`, the accuracy from feedback against the bundle's
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

from edgeops.drift.checks import (
    DEFAULT_THRESHOLDS,
    Check,
    DriftThresholds,
    FeatureDrift,
    Kind,
    Metric,
    feature_drift,
)
from edgeops.drift.concept import ConceptDrift, accuracy_drop, newcombe_interval, wilson_interval
from edgeops.drift.distances import (
    bin_points,
    js_distance,
    linf_distance,
    psi,
    wasserstein_binned,
)
from edgeops.drift.hysteresis import AlertState, Transition, step
from edgeops.drift.latency import LatencyCheck, latency_p95_over_budget
from edgeops.drift.span import (
    Reference,
    Span,
    SpanDrift,
    SpanWindow,
    dataset_drift,
    design_effect,
    evaluate,
    evaluate_span,
    judge,
    newest_span,
    reference_from_windows,
)
from edgeops.drift.verdict import Verdict, VerdictKind, span_verdicts

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
    "Span",
    "SpanDrift",
    "SpanWindow",
    "Transition",
    "Verdict",
    "VerdictKind",
    "accuracy_drop",
    "bin_points",
    "dataset_drift",
    "design_effect",
    "evaluate",
    "evaluate_span",
    "feature_drift",
    "js_distance",
    "judge",
    "latency_p95_over_budget",
    "linf_distance",
    "newcombe_interval",
    "newest_span",
    "psi",
    "reference_from_windows",
    "span_verdicts",
    "step",
    "wasserstein_binned",
    "wilson_interval",
]
