"""Drift maths against independent references (scipy, direct formulas) on real data.

Every dataset (wine, diabetes, digits) is split in halves with a fixed seed: the baseline is
profiled on the training half, current windows come from the held-out half, from the training
half's own rows, or from either with drift injected.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import binom, binomtest, wasserstein_distance
from sklearn.datasets import load_diabetes, load_digits, load_wine

from edgeops.core.latency import LogHistogram
from edgeops.core.profile import (
    ClassOutputProfile,
    NumericProfile,
    Profile,
    profile_categorical,
    profile_class_outputs,
    profile_numeric,
    profile_tensor,
)
from edgeops.core.stats import Moments, bin_counts
from edgeops.core.window.accumulator import WindowAccumulator
from edgeops.core.wire import (
    CategoricalWindow,
    ClassOutputWindow,
    InputWindow,
    NumericWindow,
    OutputWindow,
)
from edgeops.drift import (
    DEFAULT_THRESHOLDS,
    AlertState,
    DriftThresholds,
    FeatureDrift,
    Transition,
    accuracy_drop,
    bin_points,
    dataset_drift,
    evaluate,
    feature_drift,
    js_distance,
    latency_p95_over_budget,
    linf_distance,
    psi,
    step,
    wasserstein_binned,
    wilson_interval,
)

Floats = npt.NDArray[np.float64]

# --- data ---------------------------------------------------------------------------------------

LOADERS: dict[str, Callable[[], Floats]] = {
    "wine": lambda: np.asarray(load_wine().data, dtype=np.float64),
    "diabetes": lambda: np.asarray(load_diabetes().data, dtype=np.float64),
    "digits": lambda: np.asarray(load_digits().data, dtype=np.float64),
}


@dataclass(frozen=True)
class Split:
    train: Floats
    held: Floats
    profiles: tuple[NumericProfile, ...]
    """One baseline per column, profiled on ``train`` (10 quantile bins)."""


@cache
def split(name: str) -> Split:
    x = LOADERS[name]()
    order = np.random.default_rng(0).permutation(len(x))
    train, held = x[order[: len(x) // 2]], x[order[len(x) // 2 :]]
    profiles = tuple(profile_numeric(f"x{j}", train[:, j]) for j in range(x.shape[1]))
    return Split(train, held, profiles)


def counts(p: NumericProfile, values: Floats) -> list[int]:
    c, missing = bin_counts(values, p.edges)
    assert missing == 0
    return [int(v) for v in c]


def shifted(p: NumericProfile, values: Floats) -> Floats:
    """Drift injected: the feature scaled by 1.5 and moved up by half a baseline std."""
    return values * 1.5 + 0.5 * p.moments.std


# --- distances against scipy --------------------------------------------------------------------


def scipy_points(p: NumericProfile) -> Floats:
    """Bin points built independently: the baseline's min, inner midpoints, the baseline's max
    (or the outer edges, where a tie-aware edge lies beyond the values)."""
    e = list(p.edges)
    mids = [(a + b) / 2 for a, b in itertools.pairwise(e)]
    return np.array([min(p.moments.min, e[0]), *mids, max(p.moments.max, e[-1])])


def direct_psi(p_counts: Sequence[int], q_counts: Sequence[int], eps: float = 1e-4) -> float:
    sp, sq = sum(p_counts), sum(q_counts)
    total = 0.0
    for a, b in zip(p_counts, q_counts, strict=True):
        pa, qb = max(a / sp, eps), max(b / sq, eps)
        total += (qb - pa) * (math.log(qb) - math.log(pa))
    return total


@pytest.mark.parametrize("name", list(LOADERS))
def test_distances_match_scipy_on_real_data(name: str) -> None:
    s = split(name)
    clean_js: list[float] = []
    drifted_js: list[float] = []
    for j, p in enumerate(s.profiles):
        for values, seen in ((s.held[:, j], clean_js), (shifted(p, s.held[:, j]), drifted_js)):
            q = counts(p, values)
            pn, qn = np.array(p.counts) / sum(p.counts), np.array(q) / sum(q)
            js = js_distance(p.counts, q)
            # abs 1e-9: a near-zero divergence (a bin of 1e-6 width) rounds differently in sqrt
            assert js == pytest.approx(float(jensenshannon(pn, qn, base=2)), abs=1e-9)
            assert psi(p.counts, q) == pytest.approx(direct_psi(p.counts, q), rel=1e-12)
            assert linf_distance(p.counts, q) == pytest.approx(max(abs(pn - qn)), abs=1e-15)
            seen.append(js)
            fd = feature_drift(p, NumericWindow(name=p.name, counts=q))
            assert (fd.js, fd.psi, fd.linf) == (js, psi(p.counts, q), None)
            std = p.moments.std
            if std == 0:  # a constant pixel of digits: no scale, no Wasserstein
                assert fd.wasserstein is None
                continue
            x = scipy_points(p)
            expected = wasserstein_distance(x, x, p.counts, q) / std
            lo, hi = min(p.moments.min, p.edges[0]), max(p.moments.max, p.edges[-1])
            got = wasserstein_binned(p.edges, p.counts, q, std, lo=lo, hi=hi)
            assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)
            assert fd.wasserstein == pytest.approx(expected, rel=1e-6, abs=1e-12)
            x = bin_points(p.edges)  # default tails: one mean bin width beyond the outer edges
            expected = wasserstein_distance(x, x, p.counts, q) / std
            assert wasserstein_binned(p.edges, p.counts, q, std) == pytest.approx(expected)
    assert np.mean(drifted_js) > 2 * np.mean(clean_js)


def test_categorical_distances_on_digit_labels() -> None:
    digits = load_digits()
    labels = np.array([str(t) for t in digits.target], dtype=object)
    order = np.random.default_rng(0).permutation(len(labels))
    train, held = labels[order[:900]], labels[order[900:]]
    base = profile_categorical("digit", train, categories=[str(d) for d in range(8)])
    assert base.other > 0  # 8 and 9 count as other
    keep = held[(held != "3") | (np.arange(len(held)) % 4 == 0)]  # three quarters of 3s gone
    for current in (held, keep):
        window = _categorical(base.categories, current)
        assert window.other == np.sum(np.isin(current, ["8", "9"]))
        p = [*base.counts, base.other]
        q = [*window.counts, window.other]
        shares_p = [c / sum(p) for c in p]
        shares_q = [c / sum(q) for c in q]
        linf = max(abs(a - b) for a, b in zip(shares_p, shares_q, strict=True))
        fd = feature_drift(base, window)
        assert fd.kind == "categorical" and fd.wasserstein is None
        assert fd.samples == len(current) and fd.linf == pytest.approx(linf, abs=1e-15)
        assert fd.js == pytest.approx(float(jensenshannon(p, q, base=2)), abs=1e-12)
        assert fd.psi == pytest.approx(direct_psi(p, q))
    assert not feature_drift(base, _categorical(base.categories, held)).drifted
    by_linf = DriftThresholds(categorical_by=("linf",), linf=0.05)
    fd = feature_drift(base, _categorical(base.categories, keep), by_linf)
    assert fd.drifted and fd.reason.startswith("linf")


def _categorical(categories: Sequence[str], values: npt.NDArray[np.object_]) -> CategoricalWindow:
    return CategoricalWindow(
        name="digit",
        counts=[int(np.sum(values == c)) for c in categories],
        other=int(np.sum(~np.isin(values, list(categories)))),
    )


def test_distance_edge_cases() -> None:
    assert js_distance([5, 5, 0], [0, 0, 7]) == 1.0  # disjoint supports
    assert js_distance([1, 2, 3], [10, 20, 30]) == pytest.approx(0.0, abs=1e-6)
    assert linf_distance([50, 30, 20, 0], [40, 30, 20, 10]) == pytest.approx(0.1)
    # PSI smoothing: empty on both sides adds nothing; new mass in an empty bin adds q ln(q/eps)
    assert psi([5, 5, 0], [5, 5, 0]) == 0.0
    assert psi([50, 50, 0], [49, 50, 1]) == pytest.approx(direct_psi([50, 50, 0], [49, 50, 1]))
    assert psi([50, 50, 0], [49, 50, 1]) > 0.04
    assert psi([50, 50, 0], [49, 50, 1], eps=0.01) < 0.01
    with pytest.raises(ValueError):
        js_distance([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        psi([0, 0], [1, 1])
    with pytest.raises(ValueError):
        linf_distance([1, -1], [1, 1])
    with pytest.raises(ValueError):
        wasserstein_binned([0.0, 1.0], [1, 1, 1], [1, 1, 1], scale=0.0)
    with pytest.raises(ValueError):
        bin_points([0.0, 1.0], lo=0.5)


# --- verdicts -----------------------------------------------------------------------------------


def test_verdicts_follow_the_thresholds() -> None:
    p = split("wine").profiles[0]
    base = list(p.counts)
    small = NumericWindow(name="x0", counts=[c * 2 for c in base])  # 178 values, the same shape
    fd = feature_drift(p, small)
    assert fd.samples == 178 and not fd.evaluated and fd.verdict is None and not fd.drifted
    assert fd.reason == "no verdict: too few values (n=178 < 500)" and fd.js == 0.0
    assert fd.status == "no verdict"
    lower_half = [c * 20 if i < len(base) // 2 else 0 for i, c in enumerate(base)]
    moved = NumericWindow(name="x0", counts=lower_half)  # every value in the lower half
    fd = feature_drift(p, moved)
    assert fd.evaluated and fd.drifted and fd.verdict is True
    assert fd.js is not None and fd.js >= 0.1 and fd.psi is not None and fd.psi >= 0.25
    assert fd.reason.startswith("js ") and "; psi " in fd.reason  # both rules count
    # decided by JS only, with a JS threshold above the distance: no drift (PSI still warns)
    fd = feature_drift(p, moved, DriftThresholds(js=0.99, numeric_by=("js",)))
    assert not fd.drifted and fd.warning and "psi warning" in fd.reason
    fd = feature_drift(p, moved, DriftThresholds(numeric_by=("psi",)))
    assert fd.drifted and fd.reason.startswith("psi ")
    fd = feature_drift(p, moved, DriftThresholds(numeric_by=("wasserstein",)))
    assert fd.drifted and fd.wasserstein is not None and fd.reason.startswith("wasserstein ")
    with pytest.raises(ValueError):
        DriftThresholds(numeric_by=("linf",))
    with pytest.raises(ValueError):
        DriftThresholds(psi_warning=0.3, psi_alert=0.2)
    with pytest.raises(ValueError):
        feature_drift(p, NumericWindow(name="x0", counts=[1, 2]))
    with pytest.raises(ValueError):
        feature_drift(p, CategoricalWindow(name="x0", counts=[1, 2]))


def features(drifted: Sequence[bool | None]) -> list[FeatureDrift]:
    return [
        FeatureDrift(
            feature=f"f{i}",
            kind="numeric",
            samples=0 if d is None else 600,
            missing=0,
            js=0.0,
            psi=0.0,
            wasserstein=None,
            linf=None,
            drifted=bool(d),
            warning=False,
            evaluated=d is not None,
            reason="",
        )
        for i, d in enumerate(drifted)
    ]


def test_dataset_drift_share() -> None:
    assert dataset_drift(features([True, False]))  # 1 of 2 >= 0.5
    assert not dataset_drift(features([True, False, False]))
    assert dataset_drift(features([True, None, None, False]))  # too few samples do not count
    assert not dataset_drift(features([None, None]))
    assert not dataset_drift([])
    assert dataset_drift(features([True, False, False]), DriftThresholds(dataset_share=0.3))


# --- false alarms and detection on real data ------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    rate: list[float]
    """Per feature: the share of windows that feature_drift called drifted."""
    raised: list[int]
    """Per feature: alerts raised with the default hysteresis (K = 2)."""


def alarm_rates(
    name: str,
    source: str,
    *,
    windows: int,
    shift_std: float = 0.0,
    n: int = 500,
    t: DriftThresholds = DEFAULT_THRESHOLDS,
    pool_effect: bool = False,
) -> Rates:
    """Windows of ``n`` rows drawn with replacement from a half of ``name`` (``"held"`` or
    ``"train"``, the baseline's own rows), each feature optionally moved up by ``shift_std``
    baseline stds, judged with the default thresholds (bins and moments) and stepped through
    the hysteresis. With ``pool_effect`` the floors count the pool's own sampling error: a
    window resampled from ``M`` rows varies about the population as ``1/n + 1/M``, a design
    effect of ``1 + n/M``."""
    s = split(name)
    rows = s.held if source == "held" else s.train
    idx = np.random.default_rng(1).integers(0, len(rows), size=(windows, n))
    rate, raised = [], []
    for j, p in enumerate(s.profiles):
        values = rows[idx, j] + shift_std * p.moments.std
        bins = len(p.edges) + 1
        slot = np.searchsorted(p.edges, values, side="right") + bins * np.arange(windows)[:, None]
        per_window = np.bincount(slot.ravel(), minlength=bins * windows).reshape(windows, bins)
        assert per_window[0].tolist() == counts(p, values[0])  # the same as bin_counts
        state, drifted, alerts = AlertState(), 0, 0
        for c, v in zip(per_window.tolist(), values, strict=True):
            m = Moments.of(v)
            w = NumericWindow(
                name=p.name, counts=c, count=m.count, mean=m.mean, m2=m.m2, min=m.min, max=m.max
            )
            fd = feature_drift(p, w, t, design_effect=1 + n / len(rows) if pool_effect else 1)
            assert fd.evaluated
            drifted += fd.drifted
            state, transition = step(state, fd.verdict, t.k_raise, t.k_clear)
            alerts += transition == "raised"
        rate.append(drifted / windows)
        raised.append(alerts)
    return Rates(rate, raised)


@pytest.mark.parametrize(("name", "windows"), [("wine", 1000), ("diabetes", 500)])
def test_no_drift_false_alarm_rate(name: str, windows: int) -> None:
    """Windows drawn from the rows the baseline describes: the rule's own false-alarm rate.

    For k bins, ``8 ln 2 * n * JS^2`` is about chi-square with k - 1 degrees of freedom under no
    drift, so JS >= 0.1 at n = 500 and 10 bins needs chi2(9) >= 27.7: about 0.1 % of windows
    (PSI >= 0.25 is far rarer). Measured with 1000 windows: at most 0.4 % for any feature of
    wine and diabetes, 0.15 % on average. The bound of 1 % allows for the Monte Carlo error
    (about 0.1 to 0.2 % at these window counts). Three drifted windows in a row are needed to
    raise an alert: about 1e-9, none seen.
    """
    r = alarm_rates(name, "train", windows=windows)
    assert max(r.rate) < 0.01, r.rate
    assert sum(r.raised) == 0


def test_the_noise_floor_keeps_small_baselines_from_false_alarming() -> None:
    """The baseline's own sampling error adds to the window's: ``8 ln2 JS^2 ~ chi2(k - 1) *
    (1/n + 1/N)``. With fixed thresholds only (``noise_alpha=None``), 500-row windows of held-out
    data alarm in most windows when the baseline has 89 rows (wine) or 221 (diabetes), and in a
    few percent with 898 (digits). The default noise floor (alpha 0.001) brings every dataset
    down to a low rate without losing the detection of a one-std shift (next test), once the
    floors also count the held-out pool's own error (windows resampled from 89 rows are not
    independent draws: without it the mean check alarms on 3 of wine's 13 features)."""
    fixed = DriftThresholds(noise_alpha=None)
    wine_fixed = alarm_rates("wine", "held", windows=100, t=fixed)
    diabetes_fixed = alarm_rates("diabetes", "held", windows=100, t=fixed)
    assert min(wine_fixed.rate) > 0.9 and np.mean(diabetes_fixed.rate) > 0.5
    for name in ("wine", "diabetes", "digits"):
        r = alarm_rates(name, "held", windows=100, pool_effect=True)
        assert np.mean(r.rate) < 0.05, (name, r.rate)
    assert max(alarm_rates("wine", "held", windows=100).rate) > 0.5  # the pool unaccounted


@pytest.mark.parametrize("name", ["wine", "diabetes"])
def test_a_shift_of_one_std_is_detected_in_every_window(name: str) -> None:
    """Windows from the baseline's own rows (no help from the baseline's sampling error), every
    value moved up by one baseline std: every window of every feature is drifted. Diabetes'
    binary ``sex`` moves by less than the gap between its two values and stays in its bins
    (tie-aware bins: one per value); the mean check sees it."""
    s = split(name)
    r = alarm_rates(name, "train", windows=100, shift_std=1.0)
    assert r.rate == [1.0] * len(s.profiles)
    if name == "diabetes":
        sex = s.profiles[1]
        assert sex.counts == (0, 124, 97, 0)  # below, each value, above
        assert alarm_rates(name, "train", windows=20, shift_std=-1.0).rate[1] == 1.0


# --- concept drift ------------------------------------------------------------------------------


def test_wilson_matches_scipy() -> None:
    for total in (1, 7, 50, 100, 333, 1000):
        for correct in sorted({0, 1, total // 2, (9 * total) // 10, total - 1, total}):
            for confidence in (0.9, 0.95, 0.99):
                ci = binomtest(correct, total).proportion_ci(confidence, method="wilson")
                lo, hi = wilson_interval(correct, total, confidence)
                assert lo == pytest.approx(ci.low, abs=1e-12)
                assert hi == pytest.approx(ci.high, abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_accuracy_drop() -> None:
    c = accuracy_drop(80, 100, 0.95)
    assert c.accuracy == 0.8 and c.upper < 0.95 and c.drifted
    assert not accuracy_drop(85, 100, 0.9).drifted  # upper bound 0.91: not sure enough
    assert accuracy_drop(850, 1000, 0.9).drifted  # the same accuracy, more evidence
    # small samples never alarm, whatever they say
    assert not any(accuracy_drop(k, n, 1.0).drifted for n in range(1, 100) for k in range(n + 1))
    assert "too little feedback" in accuracy_drop(0, 99, 0.9).reason
    empty = accuracy_drop(0, 0, 0.9)
    assert empty.accuracy is None and not empty.drifted


@pytest.mark.parametrize("reference", [0.8, 0.9, 0.97])
def test_accuracy_false_alarm_rate_is_bounded(reference: float) -> None:
    """When the true accuracy equals the reference, the exact binomial probability that the
    upper bound falls below it stays near the one-sided 2.5 % of a two-sided 95 % interval.
    Wilson's coverage oscillates with n: measured from 2.5 % to 4.0 % (n = 100, reference 0.9)
    over these cases, hence the bound of 5 %. Hysteresis (K = 3) cuts it further."""
    for total in (100, 150, 300, 1000, 5000):
        k = np.arange(total + 1)
        alarms = [accuracy_drop(int(c), total, reference).drifted for c in k]
        p = float(binom.pmf(k, total, reference)[alarms].sum())
        assert p < 0.05, (total, p)


# --- hysteresis ---------------------------------------------------------------------------------


def run(verdicts: Sequence[bool | None], k: int = 3) -> tuple[list[Transition], AlertState]:
    state, out = AlertState(), []
    for v in verdicts:
        state, transition = step(state, v, k, k)
        out.append(transition)
    return out, state


def test_hysteresis() -> None:
    seq, state = run([True, True, True])
    assert seq == ["none", "none", "raised"] and state == AlertState(True, 3, 0)
    seq, state = run([True] * 3 + [False] * 3)
    assert seq[-1] == "cleared" and not state.active
    seq, _ = run([True, True, None, None, True])  # None keeps the run
    assert seq[-1] == "raised"
    seq, _ = run([True, True, False, True, True])  # a clean verdict breaks it
    assert "raised" not in seq
    seq, _ = run([True, False] * 20)  # alternating input never flaps
    assert set(seq) == {"none"}
    seq, state = run([True] * 3 + [False, True] * 10)  # raised once, never cleared
    assert seq.count("raised") == 1 and "cleared" not in seq and state.active
    seq, state = run([True] * 3 + [None] * 5)
    assert state == AlertState(True, 3, 0)
    assert run([True], k=1)[0] == ["raised"]
    with pytest.raises(ValueError):
        step(AlertState(), True, 0, 3)


# --- latency ------------------------------------------------------------------------------------


def test_latency_p95_from_merged_histograms() -> None:
    rng = np.random.default_rng(3)
    windows = [  # five windows of different loads: percentiles must not be averaged
        rng.lognormal(math.log(m), 0.3, size=size)
        for m, size in ((5.0, 2000), (6.0, 500), (20.0, 300), (5.5, 4000), (9.0, 800))
    ]
    wires = []
    for w in windows:
        h = LogHistogram(0.01)
        h.add(w)
        wires.append(h.to_wire())
    every = np.concatenate(windows)
    true_p95 = float(np.quantile(every, 0.95, method="lower"))
    check = latency_p95_over_budget(wires, budget_ms=20.0)
    assert check.p95 is not None and check.count == len(every)
    assert abs(check.p95 - true_p95) <= 0.01 * true_p95
    averaged = float(np.mean([np.quantile(w, 0.95) for w in windows]))
    assert abs(averaged - true_p95) > 0.05 * true_p95  # why averaging is wrong
    assert check.over == (check.p95 > 20.0) and check.budget == 20.0
    assert not latency_p95_over_budget(wires, budget_ms=None).over
    assert latency_p95_over_budget(wires, budget_ms=1.0).over
    none = latency_p95_over_budget([], budget_ms=1.0)
    assert none.p95 is None and not none.over
    # a histogram of another accuracy is left out (the parameters with the most values win)
    odd = LogHistogram(0.02)
    odd.add([1000.0] * 5)
    mixed = latency_p95_over_budget([*wires, odd.to_wire()], budget_ms=20.0)
    assert mixed.p95 == check.p95 and mixed.count == check.count


# --- a whole span -------------------------------------------------------------------------------


@cache
def digits_span() -> tuple[Profile, Floats, Floats, Floats, Floats]:
    """A digits baseline with a tensor input, a categorical input and a class output."""
    d = load_digits()
    images = np.asarray(d.images, dtype=np.float64)
    probs = np.full((len(images), 10), 0.01)
    probs[np.arange(len(images)), d.target] = 0.91  # the labels as a confident classifier
    order = np.random.default_rng(0).permutation(len(images))
    train, held = order[:899], order[899:]
    profile = Profile(
        inputs=(
            profile_tensor("image", images[train]),
            profile_categorical("ink", ink(images[train])),
        ),
        outputs=(profile_class_outputs(probs[train], [str(k) for k in range(10)]),),
    )
    return profile, images[held], probs[held], images[train], probs[train]


def ink(images: Floats) -> npt.NDArray[np.object_]:
    total = images.reshape(len(images), -1).sum(axis=1)
    return np.where(total > 300, "heavy", "light").astype(object)


def observe(
    profile: Profile, images: Floats, probs: Floats
) -> tuple[list[InputWindow], list[OutputWindow]]:
    acc = WindowAccumulator(profile, "classification")
    acc.observe_inputs({"image": images, "ink": ink(images)})
    acc.observe_outputs(probs)
    w = acc.snapshot()
    return list(w.inputs), list(w.outputs)


def test_evaluate_a_span() -> None:
    profile, images, probs, _, _ = digits_span()
    inputs, outputs = observe(profile, images, probs)
    extra = NumericWindow(name="not-in-the-baseline", counts=[1])
    span = evaluate(profile, [*inputs, extra], outputs)
    names = [f.feature for f in span.features]
    assert names == ["image:mean[c0]", "image:std[c0]", "ink"]
    assert span.unknown == ("not-in-the-baseline",) and span.samples == len(images)
    assert not span.dataset_drifted and not any(f.drifted for f in span.features)
    baselines = [*profile.inputs[0].features, profile.inputs[1]]  # type: ignore[union-attr]
    for f, base, w in zip(span.features, baselines, inputs, strict=True):
        assert f == feature_drift(base, w)
    (out,) = span.outputs
    assert out.kind == "output" and out.samples == len(images) and out.wasserstein is None
    base_out = profile.outputs[0]
    (w_out,) = outputs
    assert isinstance(base_out, ClassOutputProfile) and isinstance(w_out, ClassOutputWindow)
    js_classes = js_distance(base_out.class_counts, w_out.class_counts)
    js_confidence = js_distance(base_out.confidence_counts, w_out.confidence_counts)
    assert out.js == max(js_classes, js_confidence)

    # the same span sent as two telemetry windows gives the same verdicts
    half = len(images) // 2
    a_in, a_out = observe(profile, images[:half], probs[:half])
    b_in, b_out = observe(profile, images[half:], probs[half:])
    twice = evaluate(profile, [*a_in, *b_in], [*a_out, *b_out])
    for f, g in zip(twice.features, span.features, strict=True):
        assert f.js == pytest.approx(g.js) and f.samples == g.samples

    # brighter, higher-contrast images and a model that now predicts 1 for everything
    ones = np.full_like(probs, 0.01)
    ones[:, 1] = 0.91
    drifted = evaluate(profile, *observe(profile, images * 1.5 + 2.0, ones))
    assert drifted.dataset_drifted
    assert [f.drifted for f in drifted.features] == [True, True, True]
    assert drifted.outputs[0].drifted and "classes)" in drifted.outputs[0].reason

    # a baseline without a window in the span has no verdict
    empty = evaluate(profile, [], [])
    assert empty.samples == 0 and not any(f.evaluated for f in empty.features)
    assert [f.samples for f in empty.outputs] == [0]


def test_evaluate_refuses_windows_that_do_not_fit() -> None:
    profile, *_ = digits_span()
    with pytest.raises(ValueError):
        evaluate(profile, [NumericWindow(name="image:mean[c0]", counts=[1, 2])], [])
    with pytest.raises(ValueError):
        evaluate(profile, [NumericWindow(name="ink", counts=[1, 2])], [])
