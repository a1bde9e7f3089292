"""Drift maths: distances between a baseline and a span of telemetry, verdicts and hysteresis.

Pure functions over counts (numpy and the standard library only); the service wires storage and
MQTT to them. The reference is the baseline :class:`~edgeops.profile.Profile` of the bundle, the
current distribution a span of telemetry windows merged by
:func:`~edgeops.window_merge.merge_windows`.

Distances, on count vectors aligned bin for bin (a numeric feature's ``len(edges) + 1`` bins with
the open tails, or a categorical feature's categories then "other"), each normalised to shares:

- :func:`js_distance`: Jensen-Shannon distance, base 2 (the square root of the divergence), in
  [0, 1]. The same as ``scipy.spatial.distance.jensenshannon(p, q, base=2)``.
- :func:`psi`: population stability index ``sum((q - p) * ln(q / p))``, with shares below ``eps``
  raised to ``eps`` (see there for what that does to empty bins).
- :func:`wasserstein_binned`: the 1-D earth mover's distance between the binned distributions, each
  bin at one point (:func:`bin_points`), divided by the baseline's standard deviation.
- :func:`linf_distance`: the largest difference of one bin's share (TFDV's categorical measure).

Decision rule (:func:`feature_drift`). Raw distances are always computed and reported. A feature
gets a verdict only when the current span holds at least ``min_samples`` non-missing values; it
has drifted when ANY metric named for its kind reaches its threshold (``>=``). The defaults decide
with JS (``js >= 0.1``) or PSI (``psi >= psi_alert = 0.25``) for numeric features, categorical
features and outputs alike; ``psi >= psi_warning = 0.1`` only sets ``warning``. Wasserstein and
L-infinity are reported and decide only when named (``numeric_by``, ``categorical_by``,
``output_by`` in :class:`DriftThresholds`). A span drifts as a dataset (:func:`dataset_drift`)
when at least ``dataset_share`` of the features with a verdict have drifted. An alert is raised
after ``k_raise`` consecutive drifted verdicts and cleared after ``k_clear`` consecutive clean
ones (:func:`step`); an evaluation without a verdict leaves the counts as they are.

Concept drift (:func:`accuracy_drop`) compares the accuracy from feedback with the bundle's
evaluation accuracy through a Wilson score interval; latency (:func:`latency_p95_over_budget`)
takes the p95 of the merged histograms, never an average of percentiles.

Known limitations (measured in ``tests/test_drift.py`` on wine, diabetes and digits):

- Small baselines: without drift, ``8 ln 2 * JS^2`` is about chi-square with ``bins - 1``
  degrees of freedom times ``1/n + 1/N`` (``n`` current values, ``N`` baseline values). With
  fixed thresholds only, JS >= 0.1 flags nearly every 500-value window of held-out wine data
  against an 89-row baseline, about 80 % against diabetes' 221 rows and 5 % against digits' 898.
  ``DriftThresholds.noise_alpha`` (default 0.001) raises the JS and PSI thresholds to the
  sampling-noise floor of the two sample sizes, which brings those rates under 5 %; the price is
  less sensitivity when the baseline is small.
- Bins cannot see a shift inside a bin. A feature with few distinct values (a binary feature,
  a mostly-zero pixel) has bins ``[value, next value)``: moving every value up by less than
  the gap changes no count, so no binned distance moves (the window's moments would show it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from edgeops.latency import merge_wire
from edgeops.profile import CategoricalProfile, ClassOutputProfile, NumericProfile, Profile
from edgeops.stats import FloatArray, check_edges
from edgeops.window import input_baselines
from edgeops.window_merge import merge_window
from edgeops.wire import (
    CategoricalWindow,
    ClassOutputWindow,
    InputWindow,
    LatencyHistogram,
    NumericWindow,
    OutputWindow,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "AlertState",
    "ConceptDrift",
    "DriftThresholds",
    "FeatureDrift",
    "Kind",
    "LatencyCheck",
    "Metric",
    "SpanDrift",
    "Transition",
    "accuracy_drop",
    "bin_points",
    "dataset_drift",
    "evaluate",
    "feature_drift",
    "js_distance",
    "latency_p95_over_budget",
    "linf_distance",
    "psi",
    "step",
    "wasserstein_binned",
    "wilson_interval",
]

Metric = Literal["js", "psi", "wasserstein", "linf"]
Kind = Literal["numeric", "categorical", "output"]
Transition = Literal["none", "raised", "cleared"]

# --- distances ----------------------------------------------------------------------------------


def _shares(p_counts: npt.ArrayLike, q_counts: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Both count vectors as shares; ValueError unless they are 1-D, of one length, finite,
    non-negative and each with a positive total."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.ndim != 1 or p.shape != q.shape or p.size == 0:
        raise ValueError(f"need two 1-D count vectors of one length, got {p.shape} and {q.shape}")
    if not (np.isfinite(p).all() and np.isfinite(q).all() and p.min() >= 0 and q.min() >= 0):
        raise ValueError("counts must be finite and non-negative")
    p_total, q_total = p.sum(), q.sum()
    if p_total <= 0 or q_total <= 0:
        raise ValueError("each count vector needs a positive total")
    return p / p_total, q / q_total


def js_distance(p_counts: npt.ArrayLike, q_counts: npt.ArrayLike) -> float:
    """Jensen-Shannon distance, base 2: ``sqrt((KL(p||m) + KL(q||m)) / 2)``, ``m = (p + q) / 2``,
    in [0, 1] (1 for disjoint supports). Empty bins are fine (``0 log 0 = 0``)."""
    return _js(*_shares(p_counts, q_counts))


def _js(p: FloatArray, q: FloatArray) -> float:
    m = (p + q) / 2
    divergence = (_kl_bits(p, m) + _kl_bits(q, m)) / 2
    return math.sqrt(min(max(divergence, 0.0), 1.0))


def _kl_bits(a: FloatArray, m: FloatArray) -> float:
    """``sum(a * log2(a / m))`` with ``0 log 0 = 0`` (``m`` is positive wherever ``a`` is)."""
    ratio = np.divide(a, m, out=np.ones_like(a), where=a > 0)
    return float(a @ np.log2(ratio))


def psi(p_counts: npt.ArrayLike, q_counts: npt.ArrayLike, eps: float = 1e-4) -> float:
    """Population stability index ``sum((q - p) * ln(q / p))`` of the baseline shares ``p`` and the
    current shares ``q``.

    Smoothing: every share below ``eps`` is raised to ``eps`` (the shares are not renormalised).
    A bin empty on both sides adds nothing; a bin empty in the baseline that holds a share ``q``
    now adds about ``q * ln(q / eps)``: with the default ``eps = 1e-4``, 1 % of the values in a
    bin the baseline never saw adds 0.046 and 3 % adds 0.17. PSI therefore reacts strongly to
    values in bins the baseline left empty; a larger ``eps`` damps that. Every term is >= 0.
    """
    return _psi(*_shares(p_counts, q_counts), eps)


def _psi(p: FloatArray, q: FloatArray, eps: float) -> float:
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    p, q = np.maximum(p, eps), np.maximum(q, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def linf_distance(p_counts: npt.ArrayLike, q_counts: npt.ArrayLike) -> float:
    """The largest absolute difference of one bin's (or category's) share, in [0, 1]."""
    return _linf(*_shares(p_counts, q_counts))


def _linf(p: FloatArray, q: FloatArray) -> float:
    return float(np.max(np.abs(p - q)))


def bin_points(
    edges: npt.ArrayLike, lo: float | None = None, hi: float | None = None
) -> FloatArray:
    """One point per bin of ``edges`` (``len(edges) + 1`` bins, open tails): the midpoint of each
    inner bin, ``lo`` for the lower tail ``(-inf, e0)`` and ``hi`` for the upper one.

    :func:`feature_drift` passes the baseline's min and max, the farthest the baseline reached
    into each tail. Without them a tail sits one mean inner bin width beyond its outer edge (one
    unit with a single edge). With no edges the one bin is the point 0. ValueError unless
    ``lo <= edges[0]`` and ``hi >= edges[-1]``.
    """
    e = check_edges(edges)
    if e.size == 0:
        return np.zeros(1)
    width = float(e[-1] - e[0]) / (e.size - 1) if e.size > 1 else 1.0
    low = float(e[0]) - width if lo is None else float(lo)
    high = float(e[-1]) + width if hi is None else float(hi)
    if not (low <= e[0] and high >= e[-1]):
        raise ValueError(f"tail points must lie outside the edges, got lo={lo}, hi={hi}")
    return _points(e, low, high)


def _points(e: FloatArray, lo: float, hi: float) -> FloatArray:
    x = np.empty(e.size + 1)
    x[0], x[-1] = lo, hi
    x[1:-1] = (e[:-1] + e[1:]) / 2
    return x


def wasserstein_binned(
    edges: npt.ArrayLike,
    p_counts: npt.ArrayLike,
    q_counts: npt.ArrayLike,
    scale: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
) -> float:
    """The Wasserstein-1 distance between two binned distributions divided by ``scale``.

    Each bin is one point of :func:`bin_points` (``edges``, ``lo``, ``hi``): the distance is
    ``sum(|P_i - Q_i| * (x_{i+1} - x_i)) / scale`` over the cumulative shares ``P`` and ``Q``,
    equal to ``scipy.stats.wasserstein_distance(x, x, p, q) / scale``. Mass beyond the tails is
    not seen beyond their points, so the distance is a lower bound for far-away drift. ``scale``
    is the baseline's standard deviation; ValueError unless it is positive and finite.
    """
    p, q = _shares(p_counts, q_counts)
    return _wasserstein(bin_points(edges, lo, hi), p, q, scale)


def _wasserstein(x: FloatArray, p: FloatArray, q: FloatArray, scale: float) -> float:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    if x.size != p.size:
        raise ValueError(f"{p.size} counts for {x.size} bins")
    gap = np.abs(np.cumsum(p - q)[:-1])
    return float(gap @ (x[1:] - x[:-1])) / scale


# --- thresholds and per-feature verdicts ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DriftThresholds:
    """Every threshold of a model's drift checks, with the design's defaults."""

    js: float = 0.1
    """Jensen-Shannon distance (base 2) at or above which a distribution has drifted
    (Evidently's default)."""
    psi_warning: float = 0.1
    """PSI at or above which ``FeatureDrift.warning`` is set; it never decides alone."""
    psi_alert: float = 0.25
    """PSI at or above which a distribution has drifted (when ``"psi"`` is named below)."""
    wasserstein: float = 0.1
    """Wasserstein distance in baseline standard deviations (Evidently's default for it)."""
    linf: float = 0.2
    """L-infinity distance: one category's share moved by 20 percentage points. TFDV has no
    default; 0.2 is loose on purpose, since it decides only when named in ``categorical_by``."""
    numeric_by: tuple[Metric, ...] = ("js", "psi")
    """Metrics that decide for numeric inputs: drifted when any reaches its threshold. Not
    ``"linf"``."""
    categorical_by: tuple[Metric, ...] = ("js", "psi")
    """The same for categorical inputs. Not ``"wasserstein"``."""
    output_by: tuple[Metric, ...] = ("js", "psi")
    """The same for outputs; a metric a kind of output lacks (Wasserstein of a classifier,
    L-infinity of a regressor) is skipped."""
    psi_eps: float = 1e-4
    """Smallest share in :func:`psi`."""
    min_samples: int = 500
    """Non-missing values the span needs before a feature gets a verdict."""
    noise_alpha: float | None = 0.001
    """JS and PSI count only above the value that sampling noise alone (a baseline of N values,
    a window of n) exceeds with this probability: ``8 ln2 JS^2 ~ chi2(bins - 1) / n_eff`` and
    ``PSI ~ chi2(bins - 1) / n_eff`` with ``1/n_eff = 1/n + 1/N``. None compares with the fixed
    thresholds only."""
    k_raise: int = 3
    """Consecutive drifted verdicts that raise an alert."""
    k_clear: int = 3
    """Consecutive clean verdicts that clear it."""
    dataset_share: float = 0.5
    """The dataset has drifted when at least this share of the features with a verdict has."""
    accuracy_confidence: float = 0.95
    """Confidence of the (two-sided) Wilson interval of the accuracy from feedback."""
    min_feedback: int = 100
    """Labelled predictions needed before the accuracy gets a verdict."""
    latency_budget_ms: float | None = None
    """The p95 latency budget; None checks nothing."""

    def __post_init__(self) -> None:
        for name in ("js", "psi_warning", "psi_alert", "wasserstein", "linf", "dataset_share"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.psi_warning > self.psi_alert:
            raise ValueError("psi_warning must not exceed psi_alert")
        if self.dataset_share > 1 or not 0 < self.accuracy_confidence < 1:
            raise ValueError("dataset_share must be at most 1, accuracy_confidence in (0, 1)")
        if min(self.min_samples, self.min_feedback) < 0 or min(self.k_raise, self.k_clear) < 1:
            raise ValueError("min_samples and min_feedback must be >= 0, k_raise and k_clear >= 1")
        known = get_args(Metric)
        for name, by, lacks in (
            ("numeric_by", self.numeric_by, "linf"),
            ("categorical_by", self.categorical_by, "wasserstein"),
            ("output_by", self.output_by, None),
        ):
            if not by or any(m not in known or m == lacks for m in by):
                raise ValueError(f"{name}: expected some of {known} (not {lacks}), got {by!r}")

    def limit(self, metric: Metric) -> float:
        """The threshold at or above which ``metric`` says drift (PSI: ``psi_alert``)."""
        return {
            "js": self.js,
            "psi": self.psi_alert,
            "wasserstein": self.wasserstein,
            "linf": self.linf,
        }[metric]


DEFAULT_THRESHOLDS = DriftThresholds()


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's (or output's) distances and verdict over a span.

    ``samples`` is the number of non-missing values the distances are computed on (a
    categorical feature's "other" included, a classifier's predictions); ``missing`` is counted
    apart and never enters a distance. Distances are None only when either side has no values;
    ``wasserstein`` is None for categorical features, classifier outputs and a baseline with a
    standard deviation of 0, ``linf`` for numeric ones. A classifier output reports, per
    metric, the larger of its predicted-class and its confidence-histogram distance (the
    reason names which). ``evaluated`` is False below ``min_samples``: then ``drifted`` is False.
    """

    feature: str
    kind: Kind
    samples: int
    missing: int
    js: float | None
    psi: float | None
    wasserstein: float | None
    linf: float | None
    drifted: bool
    warning: bool
    """PSI at or above ``psi_warning`` (with or without a verdict)."""
    evaluated: bool
    reason: str

    @property
    def verdict(self) -> bool | None:
        """``drifted`` when the feature got a verdict, else None: the input of :func:`step`."""
        return self.drifted if self.evaluated else None


Baseline = NumericProfile | CategoricalProfile | ClassOutputProfile
Current = NumericWindow | CategoricalWindow | ClassOutputWindow


def feature_drift(
    baseline: Baseline,
    current: Current,
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
    *,
    output: bool = False,
) -> FeatureDrift:
    """Distances and verdict of one window (usually a merged span) against its baseline.

    Pairs: NumericProfile with NumericWindow, CategoricalProfile with CategoricalWindow,
    ClassOutputProfile with ClassOutputWindow; ValueError for another pair or counts that do not
    align. ``output`` marks a regressor's numeric output (kind ``"output"``, decided by
    ``output_by``). The result is named after the window.
    """
    t = thresholds
    if isinstance(baseline, NumericProfile) and isinstance(current, NumericWindow):
        _aligned(current.name, len(baseline.counts), len(current.counts), "bins")
        m, edges = baseline.moments, baseline.edges
        std = m.std if m.count else math.nan
        points = None
        if edges and math.isfinite(std) and std > 0:  # else Wasserstein is not defined
            e = np.asarray(edges)  # checked by NumericProfile
            points = _points(e, min(m.min, edges[0]), max(m.max, edges[-1]))
        d = _distances(baseline.counts, current.counts, t, points=points, scale=std, linf=False)
        kind: Kind = "output" if output else "numeric"
        by = t.output_by if output else t.numeric_by
        return _verdict(current.name, kind, sum(current.counts), current.missing, d, by, t)
    if isinstance(baseline, CategoricalProfile) and isinstance(current, CategoricalWindow):
        _aligned(current.name, len(baseline.counts), len(current.counts), "categories")
        base, now = [*baseline.counts, baseline.other], [*current.counts, current.other]
        d = _distances(base, now, t, linf=True)
        n = sum(now)
        return _verdict(current.name, "categorical", n, current.missing, d, t.categorical_by, t)
    if isinstance(baseline, ClassOutputProfile) and isinstance(current, ClassOutputWindow):
        _aligned(current.name, len(baseline.class_counts), len(current.class_counts), "classes")
        _aligned(
            current.name,
            len(baseline.confidence_counts),
            len(current.confidence_counts),
            "confidence bins",
        )
        classes = _distances(baseline.class_counts, current.class_counts, t, linf=True)
        confidence = _distances(baseline.confidence_counts, current.confidence_counts, t, linf=True)
        d = _larger({"classes": classes, "confidence": confidence})
        n = sum(current.class_counts)
        return _verdict(current.name, "output", n, 0, d, t.output_by, t)
    raise ValueError(
        f"{current.name!r}: a {type(current).__name__} does not match a "
        f"{type(baseline).__name__} baseline"
    )


_Values = dict[Metric, tuple[float, str, float]]
"""Metric to (value, the part of an output it comes from or "", its sampling-noise floor)."""


def _aligned(name: str, expected: int, got: int, what: str) -> None:
    if expected != got:
        raise ValueError(f"{name!r}: the window has {got} {what}, the baseline {expected}")


def _distances(
    base: Sequence[int],
    now: Sequence[int],
    t: DriftThresholds,
    *,
    points: FloatArray | None = None,
    scale: float = math.nan,
    linf: bool,
) -> _Values:
    """The distances that apply (Wasserstein with ``points``); none when a side has no values."""
    p_total, q_total = sum(base), sum(now)
    if p_total <= 0 or q_total <= 0:
        return {}
    p = np.asarray(base, dtype=np.float64) / p_total  # counts checked by profile and wire
    q = np.asarray(now, dtype=np.float64) / q_total
    js_floor = psi_floor = 0.0
    if t.noise_alpha is not None:
        bins = int(np.count_nonzero((p > 0) | (q > 0)))
        n_eff = p_total * q_total / (p_total + q_total)
        chi2 = _chi2_quantile(max(bins - 1, 1), 1.0 - t.noise_alpha)
        js_floor = math.sqrt(chi2 / (8 * math.log(2) * n_eff))
        psi_floor = chi2 / n_eff
    out: _Values = {
        "js": (_js(p, q), "", js_floor),
        "psi": (_psi(p, q, t.psi_eps), "", psi_floor),
    }
    if points is not None:
        out["wasserstein"] = (_wasserstein(points, p, q, scale), "", 0.0)
    if linf:
        out["linf"] = (_linf(p, q), "", 0.0)
    return out


def _chi2_quantile(dof: int, prob: float) -> float:
    """The chi-square quantile by the Wilson-Hilferty approximation (within 1 % for dof >= 3)."""
    z = _normal_quantile(prob)
    c = 2.0 / (9.0 * dof)
    return float(dof * max(1.0 - c + z * math.sqrt(c), 0.0) ** 3)


def _normal_quantile(prob: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, relative error < 1e-8)."""
    a = (
        -3.969683028665376e01,
        2.209460984245205e02,
        -2.759285104469687e02,
        1.383577518672690e02,
        -3.066479806614716e01,
        2.506628277459239e00,
    )
    b = (
        -5.447609879822406e01,
        1.615858368580409e02,
        -1.556989798598866e02,
        6.680131188771972e01,
        -1.328068155288572e01,
    )
    c = (
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e00,
        -2.549732539343734e00,
        4.374664141464968e00,
        2.938163982698783e00,
    )
    dd = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    if prob < 0.02425:
        r = math.sqrt(-2 * math.log(prob))
        num = ((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]
        return num / ((((dd[0] * r + dd[1]) * r + dd[2]) * r + dd[3]) * r + 1)
    if prob > 1 - 0.02425:
        return -_normal_quantile(1 - prob)
    r = prob - 0.5
    s2 = r * r
    num = (((((a[0] * s2 + a[1]) * s2 + a[2]) * s2 + a[3]) * s2 + a[4]) * s2 + a[5]) * r
    return num / (((((b[0] * s2 + b[1]) * s2 + b[2]) * s2 + b[3]) * s2 + b[4]) * s2 + 1)


def _larger(parts: Mapping[str, _Values]) -> _Values:
    """Per metric, the larger value over the parts, tagged with its part's name."""
    out: _Values = {}
    for part, values in parts.items():
        for metric, (value, _, floor) in values.items():
            if metric not in out or value > out[metric][0]:
                out[metric] = (value, part, floor)
    return out


def _verdict(
    feature: str,
    kind: Kind,
    samples: int,
    missing: int,
    d: _Values,
    by: Sequence[Metric],
    t: DriftThresholds,
) -> FeatureDrift:
    def value(metric: Metric) -> float | None:
        return d[metric][0] if metric in d else None

    psi_value = value("psi")
    warning = psi_value is not None and psi_value >= t.psi_warning
    over = [
        f"{m} {v:.3g} >= {max(t.limit(m), floor):.3g}"
        + (" (noise floor)" if floor > t.limit(m) else "")
        + (f" ({part})" if part else "")
        for m in by
        if m in d
        for v, part, floor in [d[m]]
        if v >= max(t.limit(m), floor)
    ]
    evaluated = samples >= t.min_samples and bool(d)
    if samples < t.min_samples:
        reason = f"too few samples (n={samples} < {t.min_samples})"
    elif not d:
        reason = "the baseline has no values"
    elif over:
        reason = "; ".join(over)
    else:
        reason = "no drift"
        if warning:
            reason += f"; psi warning {psi_value:.3g} >= {t.psi_warning:g}"
    return FeatureDrift(
        feature=feature,
        kind=kind,
        samples=samples,
        missing=missing,
        js=value("js"),
        psi=psi_value,
        wasserstein=value("wasserstein"),
        linf=value("linf"),
        drifted=evaluated and bool(over),
        warning=warning,
        evaluated=evaluated,
        reason=reason,
    )


def dataset_drift(
    features: Sequence[FeatureDrift], thresholds: DriftThresholds = DEFAULT_THRESHOLDS
) -> bool:
    """Whether at least ``dataset_share`` of the features with a verdict have drifted (False
    when none has a verdict)."""
    judged = [f for f in features if f.evaluated]
    if not judged:
        return False
    return sum(f.drifted for f in judged) >= thresholds.dataset_share * len(judged)


# --- a whole span --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpanDrift:
    """The verdicts of one span: ``features`` in the baseline's input order, ``outputs`` in its
    output order (a baseline without a window in the span has 0 samples), the dataset-level
    verdict over the inputs, ``samples`` (the rows seen: the largest values-plus-missing count of
    an input, or of an output when there are no inputs) and the window names with no baseline."""

    features: tuple[FeatureDrift, ...]
    outputs: tuple[FeatureDrift, ...]
    dataset_drifted: bool
    samples: int
    unknown: tuple[str, ...] = ()


def evaluate(
    profile: Profile,
    inputs: Sequence[InputWindow],
    outputs: Sequence[OutputWindow],
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
) -> SpanDrift:
    """Every input and output of ``profile`` against the span's windows.

    ``inputs`` and ``outputs`` are the windows of the span: merged already, or the windows of
    several telemetry messages one after another (windows of one name are merged here). Input
    windows are matched by their window name (:func:`~edgeops.window.input_baselines`: a tensor
    reduction is ``"image:mean[c0]"``), outputs by name. ValueError for windows that do not fit
    their baseline (another kind, other bins).
    """
    span_in = _merge(inputs)
    span_out = _merge(outputs)
    known_in = input_baselines(profile)
    known_out = {p.name: p for p in profile.outputs}
    unknown = [n for n in span_in if n not in known_in] + [
        n for n in span_out if n not in known_out
    ]
    features = tuple(
        feature_drift(base, _window(span_in, name, base), thresholds)
        for name, base in known_in.items()
    )
    outs = tuple(
        feature_drift(base, _window(span_out, name, base), thresholds, output=True)
        for name, base in known_out.items()
    )
    rows = [f.samples + f.missing for f in features] or [f.samples for f in outs]
    return SpanDrift(
        features=features,
        outputs=outs,
        dataset_drifted=dataset_drift(features, thresholds),
        samples=max(rows, default=0),
        unknown=tuple(unknown),
    )


def _merge(windows: Sequence[Current]) -> dict[str, Current]:
    merged: dict[str, Current] = {}
    for w in windows:
        prev = merged.get(w.name)
        merged[w.name] = w if prev is None else merge_window(prev, w)
    return merged


def _window(span: Mapping[str, Current], name: str, baseline: Baseline) -> Current:
    """The span's window of ``name``, or an empty one shaped like ``baseline``."""
    found = span.get(name)
    if found is not None:
        return found
    if isinstance(baseline, NumericProfile):
        return NumericWindow(name=name, counts=[0] * len(baseline.counts))
    if isinstance(baseline, CategoricalProfile):
        return CategoricalWindow(name=name, counts=[0] * len(baseline.counts))
    return ClassOutputWindow(
        name=name,
        class_counts=[0] * len(baseline.class_counts),
        confidence_counts=[0] * len(baseline.confidence_counts),
    )


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


@dataclass(frozen=True)
class ConceptDrift:
    """The accuracy from feedback (None without any), its Wilson interval, the reference."""

    accuracy: float | None
    lower: float
    upper: float
    reference: float
    total: int
    drifted: bool
    reason: str


def accuracy_drop(
    correct: int,
    total: int,
    reference_accuracy: float,
    confidence: float = 0.95,
    *,
    min_feedback: int = 100,
) -> ConceptDrift:
    """Whether the accuracy from feedback has dropped below the bundle's evaluation accuracy.

    Drifted only when ``total >= min_feedback`` and the UPPER bound of the Wilson interval is
    below ``reference_accuracy``: the accuracy is then lower than the reference with one-sided
    confidence ``(1 + confidence) / 2``, so a small or unlucky sample does not alarm. The
    reference is taken as exact (its own evaluation error is not accounted for).
    """
    if not 0 <= reference_accuracy <= 1:
        raise ValueError(f"reference_accuracy must be in [0, 1], got {reference_accuracy!r}")
    lower, upper = wilson_interval(correct, total, confidence)
    accuracy = correct / total if total else None
    drifted = False
    if total < min_feedback:
        reason = f"too little feedback (n={total} < {min_feedback})"
    elif upper < reference_accuracy:
        drifted = True
        reason = f"accuracy {accuracy:.3g}, upper bound {upper:.3g} < {reference_accuracy:.3g}"
    else:
        reason = f"no drop: upper bound {upper:.3g} >= {reference_accuracy:.3g}"
    return ConceptDrift(accuracy, lower, upper, reference_accuracy, total, drifted, reason)


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
    ``budget_ms``. Percentiles of separate windows are never averaged. ValueError for histograms
    of different accuracies."""
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
    state: AlertState, drifted: bool | None, k_raise: int = 3, k_clear: int = 3
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
