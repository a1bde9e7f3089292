"""A span of telemetry windows against a reference: per-feature spans, design effects, the
dataset verdict, and references built from a device's own windows. Pure functions.

Spans per feature. A span is read newest window first; each feature takes the newest windows
until it holds ``min_samples`` non-missing values, so a feature with missing values looks back
further than one without, and a window with one NaN does not leave a feature without a verdict.

Design effect. Rows of real streams are not independent (a household's members, a camera's
consecutive frames): the distances between a clustered span and its reference exceed the noise
floors that independent rows would give. The span's windows say by how much: the chi-square
statistic of homogeneity between them (``sum (c_kb - m_k p_b)^2 / (m_k p_b)`` over windows ``k``
and bins ``b``), divided by its degrees of freedom ``(K - 1)(B - 1)``, is about 1 for independent
rows and about the design effect for clustered ones (Rao and Scott's first-order correction).
:func:`design_effect` computes it (the upper end of its 90 % interval, at least 1); the floors
of :mod:`edgeops.drift.checks` are multiplied by it. A device's reference (its first healthy
windows, forty or more) estimates it better than a span of a few windows, and once it exists its
estimate is used instead. Without one, a span of one window assumes independent rows, and drift
that starts inside a span spreads its windows apart, so such a span is judged against wider
floors: detection waits until the drift fills the span (one span later at most).

References from windows. A device's first healthy windows after it starts a model version make
a per-device reference (:func:`reference_from_windows`): the same bins as the training baseline
with the device's own counts and moments, and its own design effects, so that "changed since
deploy" is judged against what this device saw, on data as clustered as its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from edgeops.core.profile import (
    CategoricalProfile,
    ClassOutputProfile,
    NumericProfile,
    Profile,
    TensorProfile,
)
from edgeops.core.window.accumulator import input_baselines
from edgeops.core.window.merge import merge_window, window_moments
from edgeops.core.wire import (
    CategoricalWindow,
    ClassOutputWindow,
    InputWindow,
    NumericWindow,
    OutputWindow,
)
from edgeops.drift.checks import (
    DEFAULT_THRESHOLDS,
    Baseline,
    Current,
    DriftThresholds,
    FeatureDrift,
    feature_drift,
)
from edgeops.drift.distances import chi2_quantile

__all__ = [
    "Picked",
    "Reference",
    "Span",
    "SpanDrift",
    "SpanWindow",
    "dataset_drift",
    "design_effect",
    "evaluate",
    "evaluate_span",
    "judge",
    "newest_span",
    "reference_from_windows",
]


T = TypeVar("T")

UPPER = 0.9
"""The design effect is the upper end of its one-sided ``UPPER`` confidence interval
(``X2 / chi2_quantile(dof, 1 - UPPER)``): a span of ten windows estimates it with few degrees
of freedom, and an estimate that falls short lets clustered rows alarm."""


class SpanWindow(Protocol):
    """What a span needs of a telemetry window (``wire.Telemetry`` has it)."""

    @property
    def inputs(self) -> Sequence[InputWindow]: ...

    @property
    def outputs(self) -> Sequence[OutputWindow]: ...


@dataclass(frozen=True)
class _Parts:
    inputs: Sequence[InputWindow]
    outputs: Sequence[OutputWindow]


def design_effect(counts: Sequence[Sequence[int]]) -> float:
    """The chi-square statistic of homogeneity between windows' bin counts over its degrees of
    freedom, at least 1; 1 for fewer than two windows with values or one filled bin."""
    c = np.asarray([row for row in counts if sum(row) > 0], dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 2:
        return 1.0
    c = c[:, c.sum(axis=0) > 0]
    if c.shape[1] < 2:
        return 1.0
    m = c.sum(axis=1, keepdims=True)
    p = c.sum(axis=0) / c.sum()
    expected = m * p
    x2 = float(np.sum((c - expected) ** 2 / expected))
    dof = (c.shape[0] - 1) * (c.shape[1] - 1)
    return float(max(x2 / chi2_quantile(dof, 1.0 - UPPER), 1.0))


def _bins(w: Current) -> list[int]:
    if isinstance(w, NumericWindow):
        return list(w.counts)
    if isinstance(w, CategoricalWindow):
        return [*w.counts, w.other]
    return list(w.class_counts)


def _values(w: Current) -> int:
    return sum(_bins(w))


@dataclass(frozen=True)
class SpanDrift:
    """The verdicts of one span: ``features`` in the baseline's input order, ``outputs`` in its
    output order (a baseline without a window in the span has 0 samples), the dataset-level
    verdict over the inputs with a verdict, ``samples`` (the rows seen: the largest
    values-plus-missing count of an input, or of an output when there are no inputs), the
    window names with no baseline, and the baseline's blind spots (name: reason)."""

    features: tuple[FeatureDrift, ...]
    outputs: tuple[FeatureDrift, ...]
    dataset_drifted: bool
    samples: int
    unknown: tuple[str, ...] = ()
    blind_spots: Mapping[str, str] = field(default_factory=dict)

    @property
    def dataset_verdict(self) -> bool | None:
        """The dataset verdict, or None when no input has a verdict."""
        if not any(f.evaluated for f in self.features):
            return None
        return self.dataset_drifted


def dataset_drift(
    features: Sequence[FeatureDrift], thresholds: DriftThresholds = DEFAULT_THRESHOLDS
) -> bool:
    """Whether at least ``dataset_share`` of the features with a verdict have drifted (False
    when none has a verdict)."""
    judged = [f for f in features if f.evaluated]
    if not judged:
        return False
    return sum(f.drifted for f in judged) >= thresholds.dataset_share * len(judged)


def newest_span(
    windows: Iterable[T], rows: Callable[[T], int], *, min_samples: int, limit: int
) -> list[T]:
    """The rule that chooses a span, wherever its windows come from: of ``windows`` given
    NEWEST FIRST, the newest ones that together hold ``min_samples`` rows (``rows(w)`` each),
    at most ``limit``."""
    span: list[T] = []
    total = 0
    for w in windows:
        span.append(w)
        total += rows(w)
        if total >= min_samples or len(span) >= limit:
            break
    return span


@dataclass(frozen=True)
class Picked:
    """One feature's part of a span: its newest windows merged into one (None when the span
    has none), how many windows that took, and the design effect of their rows."""

    window: Current | None
    windows: int
    design_effect: float


@dataclass(frozen=True)
class Span:
    """A span merged once per feature: what every reference of a device (the training data,
    the device's own since deploy) is judged against.

    Built by :meth:`of` from telemetry windows, NEWEST FIRST: each feature takes the newest
    windows until it holds ``min_samples`` values. Input windows are matched by window name
    (:func:`~edgeops.core.window.accumulator.input_baselines`: a tensor reduction is
    ``"image:mean[c0]"``), outputs by name.
    """

    inputs: Mapping[str, Picked]
    outputs: Mapping[str, Picked]
    unknown: tuple[str, ...] = ()

    @classmethod
    def of(cls, profile: Profile, windows: Sequence[SpanWindow], min_samples: int) -> Span:
        """ValueError for windows that do not fit their baseline (another kind, other bins) or
        a window list naming a feature twice."""
        known = {
            "inputs": set(input_baselines(profile)),
            "outputs": {p.name for p in profile.outputs},
        }
        unknown: list[str] = []
        by_name: dict[str, list[dict[str, Current]]] = {"inputs": [], "outputs": []}
        for w in windows:
            for part in ("inputs", "outputs"):
                ws: Sequence[Current] = getattr(w, part)
                named = {x.name: x for x in ws}
                if len(named) != len(ws):
                    raise ValueError(f"a window list names a feature twice: {[x.name for x in ws]}")
                by_name[part].append(named)
                unknown += [n for n in named if n not in known[part]]

        def pick(name: str, part: str) -> Picked:
            picked: list[Current] = []
            values = 0
            for named in by_name[part]:
                found = named.get(name)
                if found is None:
                    continue
                picked.append(found)
                values += _values(found)
                if values >= min_samples:
                    break
            if not picked:
                return Picked(None, 0, 1.0)
            merged = picked[0]
            for x in picked[1:]:
                merged = merge_window(merged, x)
            return Picked(merged, len(picked), design_effect([_bins(x) for x in picked]))

        return cls(
            inputs={n: pick(n, "inputs") for n in sorted(known["inputs"])},
            outputs={n: pick(n, "outputs") for n in sorted(known["outputs"])},
            unknown=tuple(dict.fromkeys(unknown)),
        )


def judge(
    profile: Profile,
    span: Span,
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
    *,
    design_effects: Mapping[str, float] | None = None,
) -> SpanDrift:
    """Every input and output of ``profile`` against a merged ``span``. ``design_effects``
    (name: factor, a reference's, estimated on more windows than a span holds) replace the
    span's own estimates for the names they hold."""
    given = design_effects or {}

    def one(name: str, base: Baseline, part: str, picks: Mapping[str, Picked]) -> FeatureDrift:
        p = picks.get(name) or Picked(None, 0, 1.0)
        return feature_drift(
            base,
            _empty(name, base) if p.window is None else p.window,
            thresholds,
            output=part == "outputs",
            design_effect=given.get(name, p.design_effect),
            windows=p.windows,
        )

    features = tuple(one(n, b, "inputs", span.inputs) for n, b in input_baselines(profile).items())
    outs = tuple(one(p.name, p, "outputs", span.outputs) for p in profile.outputs)
    rows = [f.samples + f.missing for f in features] or [f.samples for f in outs]
    return SpanDrift(
        features=features,
        outputs=outs,
        dataset_drifted=dataset_drift(features, thresholds),
        samples=max(rows, default=0),
        unknown=span.unknown,
        blind_spots=profile.blind_spots(),
    )


def evaluate_span(
    profile: Profile,
    windows: Sequence[SpanWindow],
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
    *,
    design_effects: Mapping[str, float] | None = None,
) -> SpanDrift:
    """:func:`judge` of :meth:`Span.of`: every input and output of ``profile`` against a span of
    telemetry ``windows``, NEWEST FIRST."""
    span = Span.of(profile, windows, thresholds.min_samples)
    return judge(profile, span, thresholds, design_effects=design_effects)


def evaluate(
    profile: Profile,
    inputs: Sequence[InputWindow],
    outputs: Sequence[OutputWindow],
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
) -> SpanDrift:
    """Every input and output of ``profile`` against windows merged into one (windows of one
    name are merged here): :func:`evaluate_span` of a one-window span, without a design
    effect."""
    return evaluate_span(profile, [_Parts(_merge(inputs), _merge(outputs))], thresholds)


def _merge(windows: Sequence[Current]) -> list[Any]:
    merged: dict[str, Current] = {}
    for w in windows:
        prev = merged.get(w.name)
        merged[w.name] = w if prev is None else merge_window(prev, w)
    return list(merged.values())


def _empty(name: str, baseline: Baseline) -> Current:
    """An empty window shaped like ``baseline``."""
    if isinstance(baseline, NumericProfile):
        return NumericWindow(name=name, counts=[0] * len(baseline.counts))
    if isinstance(baseline, CategoricalProfile):
        return CategoricalWindow(name=name, counts=[0] * len(baseline.counts))
    return ClassOutputWindow(
        name=name,
        class_counts=[0] * len(baseline.class_counts),
        confidence_counts=[0] * len(baseline.confidence_counts),
    )


# --- references from a device's own windows ------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A reference built from telemetry windows: ``profile`` has the training baseline's bins,
    categories and kurtosis (at least 3) with the windows' counts and moments;
    ``design_effects`` the spread between the windows per window name; ``windows`` and ``rows``
    what it was built from.

    ``to_dict()``: ``{"profile": Profile.to_dict(), "design_effects": {name: float},
    "windows": int, "rows": int}``.
    """

    profile: Profile
    design_effects: Mapping[str, float]
    windows: int
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.to_dict(),
            "design_effects": dict(self.design_effects),
            "windows": self.windows,
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reference:
        """The inverse of :meth:`to_dict`; ValueError on a malformed dict."""
        if not isinstance(d, Mapping):
            raise ValueError("reference: expected an object")
        effects = d.get("design_effects")
        if not isinstance(effects, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int | float) and v >= 1 for k, v in effects.items()
        ):
            raise ValueError("reference.design_effects: expected names and factors >= 1")
        windows, rows = d.get("windows"), d.get("rows")
        if not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in (windows, rows)
        ):
            raise ValueError("reference: windows and rows must be non-negative integers")
        assert isinstance(windows, int) and isinstance(rows, int)
        profile = Profile.from_dict(d.get("profile", {}))
        return cls(profile, {k: float(v) for k, v in effects.items()}, windows, rows)


def reference_from_windows(
    baseline: Profile, windows: Sequence[SpanWindow], rows: int | None = None
) -> Reference:
    """A reference with ``baseline``'s bins and the merged counts and moments of ``windows``
    (every window of a feature, in any order); ValueError for windows that do not fit."""
    parts: list[tuple[str, Sequence[Current], dict[str, Baseline]]] = [
        ("inputs", [x for w in windows for x in w.inputs], dict(input_baselines(baseline))),
        ("outputs", [x for w in windows for x in w.outputs], {p.name: p for p in baseline.outputs}),
    ]
    merged: dict[str, Current] = {}
    effects: dict[str, float] = {}
    for _, found, known in parts:
        by_name: dict[str, list[Current]] = {}
        for x in found:
            if x.name in known:
                by_name.setdefault(x.name, []).append(x)
        for name, ws in by_name.items():
            m = ws[0]
            for x in ws[1:]:
                m = merge_window(m, x)
            feature_drift(known[name], m)  # raises ValueError for a window that does not fit
            merged[name] = m
            effects[name] = design_effect([_bins(x) for x in ws])

    def rebuilt(name: str, p: Baseline) -> Baseline:
        w = merged.get(name) or _empty(name, p)
        if isinstance(p, NumericProfile) and isinstance(w, NumericWindow):
            # windows carry no fourth moment: the training data's kurtosis, but at least a
            # normal distribution's, so that a training mixture of two populations (kurtosis
            # near 1) does not make the scale check of a one-population device too tight
            kurtosis = None if p.kurtosis is None else max(p.kurtosis, 3.0)
            return NumericProfile(
                p.name, p.edges, tuple(w.counts), w.missing, window_moments(w), kurtosis
            )
        if isinstance(p, CategoricalProfile) and isinstance(w, CategoricalWindow):
            return CategoricalProfile(p.name, p.categories, tuple(w.counts), w.other, w.missing)
        assert isinstance(p, ClassOutputProfile) and isinstance(w, ClassOutputWindow)
        return ClassOutputProfile(
            p.name, p.labels, tuple(w.class_counts), p.confidence_edges, tuple(w.confidence_counts)
        )

    inputs: list[NumericProfile | CategoricalProfile | TensorProfile] = []
    for p in baseline.inputs:
        if isinstance(p, TensorProfile):
            feats = tuple(
                rebuilt(f"{p.name}:{f.name}", f) for f in p.features
            )  # window names as edgeops.core.window.accumulator.window_name
            inputs.append(
                TensorProfile(
                    p.name,
                    p.shape,
                    p.reductions,
                    p.channels_last,
                    tuple(f for f in feats if isinstance(f, NumericProfile)),
                )
            )
        else:
            r = rebuilt(p.name, p)
            assert isinstance(r, NumericProfile | CategoricalProfile)
            inputs.append(r)
    outputs: list[ClassOutputProfile | NumericProfile] = []
    for o in baseline.outputs:
        r = rebuilt(o.name, o)
        assert isinstance(r, ClassOutputProfile | NumericProfile)
        outputs.append(r)
    if rows is None:
        rows = sum(getattr(w, "count", 0) for w in windows)
    return Reference(
        Profile(tuple(inputs), tuple(outputs), baseline.n_bins), effects, len(windows), rows
    )
