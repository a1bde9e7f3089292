"""One feature's drift checks: the thresholds, each test against its sampling-noise floor, and the
verdict. Pure functions over counts and moments (numpy and the standard library only).

A feature (or output) is compared with its reference, a baseline profile or a reference built
from a device's own windows (:mod:`edgeops.drift.span`), by several checks (:class:`Check`),
each a statistic in its own unit against a fixed threshold and a noise floor:

- ``js``, ``psi``: Jensen-Shannon distance and PSI on the reference's bins (:mod:`edgeops.
  distances`). Floor: without drift, ``8 ln2 JS^2`` and PSI are about ``chi2(bins - 1) / n_eff``
  with ``1/n_eff = 1/n + 1/N`` (``n`` current values, ``N`` reference values), times the design
  effect; the floor is that quantity's ``1 - noise_alpha`` quantile.
- ``wasserstein``, ``linf``: Wasserstein distance in reference stds, L-infinity on shares (no
  floor; they decide only when named).
- ``mean``: the shift of the mean in reference standard deviations, ``|mean_n - mean_N| /
  std_N``, from the window moments (count, mean, M2) that telemetry already carries. Floor: a
  two-sided Welch z-test at ``noise_alpha`` with the design effect, ``z * sqrt(deff * (var_N / N
  + var_n / n)) / std_N``. Sees what bins cannot: a shift inside a bin.
- ``std``: the change of scale, ``|ln(std_n / std_N)|``. Floor: the large-sample variance of a
  log sample variance, ``(kurtosis - 1) / n``, with the reference's kurtosis: ``z / 2 * sqrt(deff
  * (kurtosis - 1) * (1/N + 1/n))``. Not run without a kurtosis (profiles that predate it),
  with one above :data:`MAX_KURTOSIS`, or for a reference with two filled bins or fewer (a
  binary feature's spread follows from its mean).
- ``missing``: the change of the missing share of rows, ``|rate_n - rate_N|``, against a pooled
  two-proportion z-test at ``noise_alpha`` with the design effect.

A check is *over* when its value reaches ``max(threshold, floor)``; the feature has drifted
when any check named in the thresholds for its kind is over. Distribution checks need
``min_samples`` non-missing values on the current side; the missing check needs ``min_samples``
rows. A feature whose distribution could not be checked has no verdict (``verdict`` None),
unless its missing share alone has drifted: a feature without a verdict is never clean.

The design effect (``deff`` >= 1) widens every floor for rows that are not independent: a device
sees households, sessions or scenes, several rows each. :mod:`edgeops.drift.span` estimates it
from the spread between the windows of a span or of a reference.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from edgeops.core.profile import CategoricalProfile, ClassOutputProfile, NumericProfile
from edgeops.core.stats import Moments
from edgeops.core.window.merge import window_moments
from edgeops.core.wire import CategoricalWindow, ClassOutputWindow, NumericWindow
from edgeops.drift.distances import (
    _js,
    _linf,
    _psi,
    _wasserstein,
    chi2_quantile,
    normal_quantile,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Baseline",
    "Check",
    "Current",
    "DriftThresholds",
    "FeatureDrift",
    "Kind",
    "Metric",
    "feature_drift",
]

Metric = Literal["js", "psi", "wasserstein", "linf", "mean", "std", "missing"]
Kind = Literal["numeric", "categorical", "output"]
Baseline = NumericProfile | CategoricalProfile | ClassOutputProfile
Current = NumericWindow | CategoricalWindow | ClassOutputWindow

MAX_KURTOSIS = 10.0
"""The scale check runs only for a reference kurtosis up to this: beyond it (rare events, heavy
tails) a window's variance is too skewed for a normal floor, measured as false verdicts on
real data (benchmarks/drift.py); the bins still see changes of scale there."""

_NOT_FOR: dict[str, tuple[Metric, ...]] = {
    "numeric_by": ("linf",),
    "categorical_by": ("wasserstein", "mean", "std"),
    "output_by": ("missing",),
}


@dataclass(frozen=True, kw_only=True)
class DriftThresholds:
    """Every threshold of a model's drift checks, with the defaults."""

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
    mean: float = 0.1
    """The smallest shift of the mean, in reference standard deviations, that counts."""
    std: float = 0.1
    """The smallest change of the standard deviation that counts: a ratio of ``1 + std`` or
    ``1 / (1 + std)``."""
    missing: float = 0.05
    """The smallest change of the share of missing values (absolute) that counts."""
    numeric_by: tuple[Metric, ...] = ("js", "psi", "mean", "std", "missing")
    """Metrics that decide for numeric inputs: drifted when any is over. Not ``"linf"``."""
    categorical_by: tuple[Metric, ...] = ("js", "psi", "missing")
    """The same for categorical inputs. Not ``"wasserstein"``, ``"mean"`` or ``"std"``."""
    output_by: tuple[Metric, ...] = ("js", "psi", "mean", "std")
    """The same for outputs; a metric a kind of output lacks (Wasserstein, mean and std of a
    classifier, L-infinity of a regressor) is skipped. Not ``"missing"``."""
    psi_eps: float = 1e-4
    """Smallest share in :func:`~edgeops.drift.distances.psi`."""
    min_samples: int = 500
    """Non-missing values (rows, for the missing check) the span needs before a verdict."""
    noise_alpha: float | None = 0.001
    """The probability that sampling noise alone makes a feature drift: split evenly over the
    feature's deciding checks with a floor (Bonferroni), each of which counts only above the
    value that noise exceeds with its share. None compares with the fixed thresholds only."""
    design_effect: bool = True
    """Widen the floors by the design effect estimated from the spread between windows (see
    :mod:`edgeops.drift.span`); False assumes independent rows."""
    k_raise: int = 2
    """Consecutive drifted verdicts that raise an alert."""
    k_clear: int = 2
    """Consecutive clean verdicts that clear it."""
    dataset_share: float = 0.5
    """The dataset has drifted when at least this share of the features with a verdict has."""
    accuracy_confidence: float = 0.95
    """Confidence of the (two-sided) interval of the accuracy from feedback."""
    min_feedback: int = 100
    """Labelled predictions needed before the accuracy gets a verdict."""
    latency_budget_ms: float | None = None
    """The p95 latency budget; None checks nothing."""

    def __post_init__(self) -> None:
        positive = ("js", "psi_warning", "psi_alert", "wasserstein", "linf", "dataset_share")
        for name in (*positive, "mean", "std", "missing"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.psi_warning > self.psi_alert:
            raise ValueError("psi_warning must not exceed psi_alert")
        if self.dataset_share > 1 or not 0 < self.accuracy_confidence < 1:
            raise ValueError("dataset_share must be at most 1, accuracy_confidence in (0, 1)")
        if self.noise_alpha is not None and not 0 < self.noise_alpha < 1:
            raise ValueError(f"noise_alpha must be in (0, 1) or None, got {self.noise_alpha!r}")
        if min(self.min_samples, self.min_feedback) < 0 or min(self.k_raise, self.k_clear) < 1:
            raise ValueError("min_samples and min_feedback must be >= 0, k_raise and k_clear >= 1")
        known = get_args(Metric)
        for name, lacks in _NOT_FOR.items():
            by = getattr(self, name)
            if not by or any(m not in known or m in lacks for m in by):
                raise ValueError(f"{name}: expected some of {known} (not {lacks}), got {by!r}")

    def limit(self, metric: Metric) -> float:
        """The fixed threshold of ``metric`` in its check's unit (PSI: ``psi_alert``; std:
        ``ln(1 + std)``)."""
        if metric == "std":
            return math.log1p(self.std)
        return float(
            {
                "js": self.js,
                "psi": self.psi_alert,
                "wasserstein": self.wasserstein,
                "linf": self.linf,
                "mean": self.mean,
                "missing": self.missing,
            }[metric]
        )


DEFAULT_THRESHOLDS = DriftThresholds()


@dataclass(frozen=True)
class Check:
    """One test of one feature: its statistic, the fixed threshold, the noise floor (both in the
    statistic's unit), whether it decides for this feature's kind, and a note (the part of a
    classifier's output it comes from, or the signed change)."""

    test: Metric
    value: float
    threshold: float
    floor: float
    decides: bool
    note: str = ""
    limit: float = field(init=False, compare=False, repr=False)
    """The larger of the threshold and the floor."""
    over: bool = field(init=False, compare=False, repr=False)
    """The value reaches the limit."""
    drifted: bool = field(init=False, compare=False, repr=False)
    """Over, and the check decides for this feature."""

    def __post_init__(self) -> None:
        # computed once: a span's verdicts read them many times per feature
        limit = self.threshold if self.threshold >= self.floor else self.floor
        over = self.value >= limit
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "over", over)
        object.__setattr__(self, "drifted", self.decides and over)

    def describe(self) -> str:
        """``"js 0.142 >= 0.1 (floor 0.061)"`` or ``"mean 0.04 < 0.11 (floor 0.11)"``."""
        sign = ">=" if self.over else "<"
        note = f", {self.note}" if self.note else ""
        return (
            f"{self.test} {self.value:.3g} {sign} {self.limit:.3g} "
            f"(threshold {self.threshold:.3g}, floor {self.floor:.3g}{note})"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "test": self.test,
            "value": self.value,
            "threshold": self.threshold,
            "floor": self.floor,
            "decides": self.decides,
            "over": self.over,
            "note": self.note,
        }


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's (or output's) checks and verdict over a span.

    ``samples`` is the number of non-missing values the distribution checks use (a categorical
    feature's "other" included, a classifier's predictions); ``missing`` the missing ones.
    ``js``, ``psi``, ``wasserstein`` and ``linf`` repeat those checks' values (None where they do
    not apply or a side has no values; a classifier output reports, per metric, the larger of
    its predicted-class and confidence-histogram distance). ``mean_shift`` is the signed shift of
    the mean in reference stds, ``std_ratio`` the ratio of standard deviations,
    ``missing_rate`` the current share of missing rows (None without rows).
    ``evaluated`` is False when the feature has no verdict (``reason`` says why); then
    ``drifted`` is False and :attr:`verdict` None. ``design_effect`` is the factor the floors
    were widened by; ``windows`` the telemetry windows the span of this feature holds.
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
    checks: tuple[Check, ...] = ()
    mean_shift: float | None = None
    std_ratio: float | None = None
    missing_rate: float | None = None
    design_effect: float = 1.0
    windows: int = 1

    @property
    def verdict(self) -> bool | None:
        """``drifted`` when the feature got a verdict, else None: the input of ``step``."""
        return self.drifted if self.evaluated else None

    @property
    def status(self) -> Literal["drifted", "clean", "no verdict"]:
        if not self.evaluated:
            return "no verdict"
        return "drifted" if self.drifted else "clean"


def feature_drift(
    baseline: Baseline,
    current: Current,
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
    *,
    output: bool = False,
    design_effect: float = 1.0,
    windows: int = 1,
) -> FeatureDrift:
    """Checks and verdict of one window (usually a merged span) against its reference.

    Pairs: NumericProfile with NumericWindow, CategoricalProfile with CategoricalWindow,
    ClassOutputProfile with ClassOutputWindow; ValueError for another pair or counts that do not
    align. ``output`` marks a regressor's numeric output (kind ``"output"``, decided by
    ``output_by``). ``design_effect`` (>= 1) widens the floors. The result is named after the
    window.
    """
    t = thresholds
    deff = max(float(design_effect), 1.0) if t.design_effect else 1.0
    if not math.isfinite(deff):
        raise ValueError(f"design_effect must be finite, got {design_effect!r}")
    if isinstance(baseline, NumericProfile) and isinstance(current, NumericWindow):
        _aligned(current.name, len(baseline.counts), len(current.counts), "bins")
        kind: Kind = "output" if output else "numeric"
        by = t.output_by if output else t.numeric_by
        checks = _numeric_checks(baseline, current, t, deff, by)
        samples = sum(current.counts)
        if not output:
            checks += _missing_check(
                sum(baseline.counts), baseline.missing, samples, current.missing, t, deff, by
            )
        now = window_moments(current)
        base_m = baseline.moments
        shift = ratio = None
        if now.count and base_m.count and base_m.std > 0:
            shift = (now.mean - base_m.mean) / base_m.std
            ratio = now.std / base_m.std
        return _verdict(
            current.name, kind, samples, current.missing, checks, t, deff, windows, shift, ratio
        )
    if isinstance(baseline, CategoricalProfile) and isinstance(current, CategoricalWindow):
        _aligned(current.name, len(baseline.counts), len(current.counts), "categories")
        base, now_c = [*baseline.counts, baseline.other], [*current.counts, current.other]
        by = t.categorical_by
        checks = _binned(base, now_c, t, deff, by, linf=True)
        n = sum(now_c)
        checks += _missing_check(sum(base), baseline.missing, n, current.missing, t, deff, by)
        return _verdict(current.name, "categorical", n, current.missing, checks, t, deff, windows)
    if isinstance(baseline, ClassOutputProfile) and isinstance(current, ClassOutputWindow):
        _aligned(current.name, len(baseline.class_counts), len(current.class_counts), "classes")
        _aligned(
            current.name,
            len(baseline.confidence_counts),
            len(current.confidence_counts),
            "confidence bins",
        )
        by = t.output_by
        classes = _binned(baseline.class_counts, current.class_counts, t, deff, by, linf=True)
        confidence = _binned(
            baseline.confidence_counts, current.confidence_counts, t, deff, by, linf=True
        )
        checks = _larger({"classes": classes, "confidence": confidence})
        n = sum(current.class_counts)
        return _verdict(current.name, "output", n, 0, checks, t, deff, windows)
    raise ValueError(
        f"{current.name!r}: a {type(current).__name__} does not match a "
        f"{type(baseline).__name__} baseline"
    )


def _aligned(name: str, expected: int, got: int, what: str) -> None:
    if expected != got:
        raise ValueError(f"{name!r}: the window has {got} {what}, the baseline {expected}")


def _alpha(t: DriftThresholds, by: Sequence[Metric]) -> float | None:
    """Each check's share of ``noise_alpha``: the feature's false-verdict probability is split
    evenly over the checks that decide (Bonferroni), so that it stays at most ``noise_alpha``."""
    if t.noise_alpha is None:
        return None
    floored = [m for m in by if m in ("js", "psi", "mean", "std", "missing")]
    return t.noise_alpha / max(len(floored), 1)


def _z(alpha: float | None) -> float:
    """The two-sided normal quantile of ``alpha`` (0 without a floor)."""
    return 0.0 if alpha is None else normal_quantile(1.0 - alpha / 2)


def _binned(
    base: Sequence[int],
    now: Sequence[int],
    t: DriftThresholds,
    deff: float,
    by: Sequence[Metric],
    *,
    points: list[float] | None = None,
    scale: float = math.nan,
    linf: bool,
) -> tuple[Check, ...]:
    """JS and PSI with their floors, Wasserstein with ``points``, L-infinity with ``linf``;
    nothing when a side has no values."""
    p_total, q_total = sum(base), sum(now)
    if p_total <= 0 or q_total <= 0:
        return ()
    p = [c / p_total for c in base]  # counts checked by profile and wire
    q = [c / q_total for c in now]
    js_floor = psi_floor = 0.0
    alpha = _alpha(t, by)
    if alpha is not None:
        bins = sum(1 for a, b in zip(p, q, strict=True) if a > 0 or b > 0)
        n_eff = p_total * q_total / (p_total + q_total)
        chi2 = chi2_quantile(max(bins - 1, 1), 1.0 - alpha) * deff
        js_floor = math.sqrt(chi2 / (8 * math.log(2) * n_eff))
        psi_floor = chi2 / n_eff
    out = [
        Check("js", _js(p, q), t.js, js_floor, "js" in by),
        Check("psi", _psi(p, q, t.psi_eps), t.psi_alert, psi_floor, "psi" in by),
    ]
    if points is not None:
        value = _wasserstein(points, p, q, scale)
        out.append(Check("wasserstein", value, t.wasserstein, 0.0, "wasserstein" in by))
    if linf:
        out.append(Check("linf", _linf(p, q), t.linf, 0.0, "linf" in by))
    return tuple(out)


def _numeric_checks(
    baseline: NumericProfile,
    current: NumericWindow,
    t: DriftThresholds,
    deff: float,
    by: Sequence[Metric],
) -> tuple[Check, ...]:
    m, edges = baseline.moments, baseline.edges
    std = m.std if m.count else math.nan
    points = None
    if edges and math.isfinite(std) and std > 0:  # else Wasserstein is not defined
        mids = [(a + b) / 2 for a, b in itertools.pairwise(edges)]  # edges checked by profile
        points = [min(m.min, edges[0]), *mids, max(m.max, edges[-1])]
    checks = _binned(
        baseline.counts, current.counts, t, deff, by, points=points, scale=std, linf=False
    )
    # two values or fewer: the spread is a function of the mean (a binary feature's p(1 - p)),
    # and a second test of it would only double the false verdicts
    kurtosis = baseline.kurtosis if sum(c > 0 for c in baseline.counts) > 2 else None
    return checks + _moment_checks(m, kurtosis, window_moments(current), t, deff, by)


def _moment_checks(
    base: Moments,
    kurtosis: float | None,
    now: Moments,
    t: DriftThresholds,
    deff: float,
    by: Sequence[Metric],
) -> tuple[Check, ...]:
    """The location and scale checks; none without two values a side or a spread in the
    reference."""
    if base.count < 2 or now.count < 2 or not base.variance > 0:
        return ()
    z = _z(_alpha(t, by))
    big_n, n = base.count, now.count
    sd = base.std
    shift = (now.mean - base.mean) / sd
    se = math.sqrt(deff * (base.variance / big_n + now.variance / n)) / sd
    out = [Check("mean", abs(shift), t.mean, z * se, "mean" in by, f"{shift:+.3g} std")]
    if kurtosis is not None and kurtosis <= MAX_KURTOSIS and now.variance > 0:
        log_ratio = 0.5 * math.log(now.variance / base.variance)
        se_log = 0.5 * math.sqrt(deff * max(kurtosis - 1.0, 0.0) * (1 / big_n + 1 / n))
        note = f"ratio {math.exp(log_ratio):.3g}"
        out.append(Check("std", abs(log_ratio), t.limit("std"), z * se_log, "std" in by, note))
    return tuple(out)


def _missing_check(
    base_values: int,
    base_missing: int,
    values: int,
    missing: int,
    t: DriftThresholds,
    deff: float,
    by: Sequence[Metric],
) -> tuple[Check, ...]:
    """The change of the missing share of rows; none without rows on a side."""
    big_n, n = base_values + base_missing, values + missing
    if big_n == 0 or n == 0:
        return ()
    rate_n, rate_big = missing / n, base_missing / big_n
    pooled = (missing + base_missing) / (n + big_n)
    se = math.sqrt(deff * pooled * (1 - pooled) * (1 / n + 1 / big_n))
    note = f"{rate_big:.3g} -> {rate_n:.3g}"
    z = _z(_alpha(t, by))
    return (Check("missing", abs(rate_n - rate_big), t.missing, z * se, "missing" in by, note),)


def _larger(parts: Mapping[str, Sequence[Check]]) -> tuple[Check, ...]:
    """Per metric, the check with the larger value over the parts, noted with its part."""
    out: dict[Metric, Check] = {}
    for part, checks in parts.items():
        for c in checks:
            if c.test not in out or c.value > out[c.test].value:
                out[c.test] = Check(c.test, c.value, c.threshold, c.floor, c.decides, part)
    return tuple(out.values())


_DISTRIBUTION: tuple[Metric, ...] = ("js", "psi", "wasserstein", "linf", "mean", "std")


def _verdict(
    feature: str,
    kind: Kind,
    samples: int,
    missing: int,
    checks: tuple[Check, ...],
    t: DriftThresholds,
    deff: float,
    windows: int,
    shift: float | None = None,
    ratio: float | None = None,
) -> FeatureDrift:
    values = {c.test: c.value for c in checks}
    value = values.get

    rows = samples + missing
    enough_values = samples >= t.min_samples
    enough_rows = rows >= t.min_samples
    valid = tuple(
        c
        for c in checks
        if (enough_rows if c.test == "missing" else enough_values and c.test in _DISTRIBUTION)
    )
    distribution = any(c.test != "missing" and c.decides for c in valid)
    over = [c for c in valid if c.drifted]
    drifted = bool(over)
    evaluated = distribution or drifted
    psi_value = value("psi")
    warning = psi_value is not None and psi_value >= t.psi_warning
    if drifted:
        reason = "; ".join(c.describe() for c in over)
        if not distribution:
            reason += f" (too few values for the distribution: n={samples} < {t.min_samples})"
    elif not evaluated:
        if not checks:
            reason = "no verdict: no values on one side"
        elif not enough_values:
            reason = f"no verdict: too few values (n={samples} < {t.min_samples})"
        else:
            reason = "no verdict: no check that decides applies"
    else:
        closest = max((c for c in valid if c.decides), key=lambda c: c.value / c.limit)
        reason = f"no drift (closest: {closest.describe()})"
        if warning:
            reason += f"; psi warning {psi_value:.3g} >= {t.psi_warning:g}"
    if evaluated and deff > 1:
        reason += f"; noise variance x{deff:.3g} (design effect of clustered rows)"
    return FeatureDrift(
        feature=feature,
        kind=kind,
        samples=samples,
        missing=missing,
        js=value("js"),
        psi=psi_value,
        wasserstein=value("wasserstein"),
        linf=value("linf"),
        drifted=evaluated and drifted,
        warning=warning,
        evaluated=evaluated,
        reason=reason,
        checks=checks,
        mean_shift=shift,
        std_ratio=ratio,
        missing_rate=missing / rows if rows else None,
        design_effect=deff,
        windows=windows,
    )
