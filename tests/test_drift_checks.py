"""Drift checks beyond the binned distances, on real data, against independent references.

Tie-aware bins (scikit-learn's digits), missing values as a signal, the location and scale checks
(against scipy's Welch test), the design effect of clustered rows (against scipy's chi-square
test of homogeneity, on the RAND Health Insurance Experiment's person-years from statsmodels),
references built from a device's own windows, and concept drift with the test set's own
uncertainty (against statsmodels' Newcombe interval).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import numpy.typing as npt
import pytest
import statsmodels.api as sm
from scipy.stats import chi2, chi2_contingency, ttest_ind_from_stats
from sklearn.datasets import load_diabetes, load_digits
from statsmodels.stats.proportion import confint_proportions_2indep

from edgeops.core.profile import NumericProfile, Profile, profile_numeric
from edgeops.core.stats import Moments, baseline_edges, bin_counts, quantile_edges
from edgeops.core.wire import NumericWindow
from edgeops.drift import (
    DEFAULT_THRESHOLDS,
    AlertState,
    DriftThresholds,
    Reference,
    accuracy_drop,
    design_effect,
    evaluate_span,
    feature_drift,
    newcombe_interval,
    reference_from_windows,
    step,
)
from edgeops.service.config import DEFAULT_THRESHOLDS as SERVICE_THRESHOLDS

Floats = npt.NDArray[np.float64]


def window(p: NumericProfile, values: npt.ArrayLike, name: str = "x") -> NumericWindow:
    """A telemetry window of ``values`` in ``p``'s bins, with moments (as the agent sends it)."""
    counts, missing = bin_counts(values, p.edges)
    m = Moments.of(values)
    empty = m.count == 0
    return NumericWindow(
        name=name,
        counts=counts.tolist(),
        missing=missing,
        count=m.count,
        mean=None if empty else m.mean,
        m2=m.m2,
        min=None if empty else m.min,
        max=None if empty else m.max,
    )


@dataclass(frozen=True)
class Telemetry:
    """The parts of a telemetry message a span reads."""

    inputs: list[NumericWindow]
    outputs: list[NumericWindow] = field(default_factory=list)


def span(p: NumericProfile, values: Floats, rows: int = 50) -> list[Telemetry]:
    """``values`` as telemetry windows of ``rows`` rows, newest first."""
    parts = [Telemetry([window(p, values[i : i + rows])]) for i in range(0, len(values), rows)]
    return parts[::-1]


@cache
def digits() -> tuple[Floats, Floats]:
    x = np.asarray(load_digits().data, dtype=np.float64)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order[:898]], x[order[898:]]


@cache
def randhie() -> Floats:
    with np.errstate(all="ignore"):
        frame = sm.datasets.randhie.load_pandas().data
    return np.asarray(frame.to_numpy(dtype=np.float64))


# --- tie-aware bins -------------------------------------------------------------------------------


def test_tie_aware_edges_are_quantile_edges_without_repeated_values() -> None:
    x = np.asarray(load_diabetes().data, dtype=np.float64)
    checked = 0
    for j in range(x.shape[1]):
        _, counts = np.unique(x[:, j], return_counts=True)
        if counts.max() * 20 < len(x):  # no value holds 5 % of the rows
            np.testing.assert_array_equal(baseline_edges(x[:, j]), quantile_edges(x[:, j]))
            checked += 1
    assert checked >= 8


def test_every_digits_pixel_with_a_spread_can_show_drift() -> None:
    """Quantile edges left 16 pixels with one filled bin (an open tail): nothing could move.
    Tie-aware edges give every pixel that varies one bin per frequent value, and a profile made
    the old way is flagged as a blind spot."""
    train, _ = digits()
    old_blind = new_blind = 0
    for j in range(train.shape[1]):
        v = train[:, j]
        p = profile_numeric(f"p{j}", v)
        assert p.blind_spot is None
        if v.std() > 0:
            assert np.count_nonzero(p.counts) >= 2
        edges = quantile_edges(v, 10)
        counts, missing = bin_counts(v, edges)
        old = NumericProfile(
            "old", tuple(edges.tolist()), tuple(counts.tolist()), missing, Moments.of(v)
        )
        old_blind += old.blind_spot == "one open bin"
        new_blind += p.blind_spot is not None
    assert old_blind >= 14 and new_blind == 0
    profile = Profile((NumericProfile("x", (0.0,), (0, 10), 0, Moments.of(np.zeros(10))),))
    assert profile.blind_spots() == {"x": "one open bin"}
    assert evaluate_span(profile, []).blind_spots == {"x": "one open bin"}


def test_a_change_of_a_tie_heavy_pixel_is_detected() -> None:
    """The pixels whose quantile edges held everything in one bin, moved up by one std: every
    window drifts (by the bins where the move leaves a value's bin, by the mean otherwise)."""
    train, held = digits()
    rng = np.random.default_rng(2)
    seen = 0
    for j in range(train.shape[1]):
        v = train[:, j]
        counts, _ = bin_counts(v, quantile_edges(v, 10))
        if v.std() == 0 or np.count_nonzero(counts) > 1:
            continue
        p = profile_numeric("x", v)
        for _ in range(3):
            w = held[rng.integers(0, len(held), 500), j] + v.std()
            f = evaluate_span(Profile((p,)), span(p, w)).features[0]
            assert f.drifted, (j, f.reason)
        seen += 1
    assert seen >= 10


# --- missing values -----------------------------------------------------------------------------


def test_missing_values_are_a_signal_and_never_blind_a_feature() -> None:
    train, held = digits()
    p = profile_numeric("x", train[:, 20])
    profile = Profile((p,))
    rng = np.random.default_rng(3)
    clean = held[rng.integers(0, len(held), 500), 20]
    # one NaN in a 500-row window: the span takes the next window too, and the verdict is clean
    one = clean.copy()
    one[7] = np.nan
    older = held[rng.integers(0, len(held), 500), 20]
    f = evaluate_span(profile, [*span(p, one), *span(p, older)]).features[0]
    assert f.evaluated and not f.drifted and f.samples >= 500 and f.missing == 1
    assert f.windows == 11 and f.status == "clean"
    # 10 % missing: the missing share drifts, with or without a shift of the values
    for shift in (0.0, 0.5):
        blanked = clean + shift * p.moments.std
        blanked[rng.random(500) < 0.1] = np.nan
        f = evaluate_span(profile, span(p, blanked)).features[0]
        missing = next(c for c in f.checks if c.test == "missing")
        assert f.drifted and missing.drifted, f.reason
        assert missing.note == f"0 -> {f.missing_rate:.3g}"
    # only a few values, all the rest missing: drifted by the missing share alone
    mostly = np.full(500, np.nan)
    mostly[:30] = clean[:30]
    f = evaluate_span(profile, span(p, mostly)).features[0]
    assert f.drifted and "too few values for the distribution" in f.reason
    # too few values and no change of the missing share: no verdict, never clean
    f = evaluate_span(profile, span(p, clean[:300])).features[0]
    assert not f.evaluated and f.verdict is None and f.status == "no verdict"
    assert f.reason.startswith("no verdict")


# --- location and scale --------------------------------------------------------------------------


def test_the_mean_check_is_welchs_test() -> None:
    train, held = digits()
    p = profile_numeric("x", train[:, 36])
    base = p.moments
    for shift in (0.0, 0.1, 0.3):
        values = held[:500, 36] + shift * base.std
        now = Moments.of(values)
        f = feature_drift(p, window(p, values))
        check = next(c for c in f.checks if c.test == "mean")
        t = ttest_ind_from_stats(
            now.mean, now.std, now.count, base.mean, base.std, base.count, equal_var=False
        ).statistic
        alpha = DEFAULT_THRESHOLDS.noise_alpha
        assert alpha is not None
        quantile = float(chi2.ppf(1 - alpha / 5, 1)) ** 0.5  # alpha split over 5 checks
        assert check.value / (check.floor / quantile) == pytest.approx(abs(t), rel=1e-6)
        assert check.value == pytest.approx(abs(now.mean - base.mean) / base.std)
        assert f.mean_shift == pytest.approx((now.mean - base.mean) / base.std)


def test_scale_check_sees_a_wider_spread_and_old_profiles_skip_it() -> None:
    train, held = digits()
    p = profile_numeric("x", train[:, 20])
    assert p.kurtosis is not None and p.kurtosis < 10
    values = held[:500, 20]
    wide = p.moments.mean + (values - p.moments.mean) * 1.5
    f = feature_drift(p, window(p, wide))
    std = next(c for c in f.checks if c.test == "std")
    assert std.drifted and f.std_ratio == pytest.approx(1.5 * values.std() / p.moments.std)
    old = NumericProfile(p.name, p.edges, p.counts, p.missing, p.moments)  # no kurtosis
    assert all(c.test != "std" for c in feature_drift(old, window(p, wide)).checks)


# --- the design effect of clustered rows ----------------------------------------------------------


def test_design_effect_is_the_homogeneity_statistic_over_its_upper_quantile() -> None:
    x = randhie()
    p = profile_numeric("x", x[:1000, 3])
    counts = [bin_counts(x[i : i + 50, 3], p.edges)[0].tolist() for i in range(0, 500, 50)]
    table = np.asarray(counts)
    table = table[:, table.sum(axis=0) > 0]
    stat, _, dof, _ = chi2_contingency(table, correction=False)
    expected = max(stat / chi2.ppf(0.1, dof), 1.0)
    assert design_effect(counts) == pytest.approx(expected, rel=1e-9)
    assert design_effect([counts[0]]) == 1.0 and design_effect([[3, 0], [5, 0]]) == 1.0


def clustered(block: int, rng: np.random.Generator) -> Floats:
    """randhie cut into blocks of consecutive rows (a person's years, a family), shuffled."""
    x = randhie()
    order = rng.permutation(len(x) // block)
    return np.concatenate([x[i * block : (i + 1) * block] for i in order])


def test_clustered_rows_do_not_alarm_with_the_design_effect() -> None:
    """Consecutive person-years: without the design effect most windows of some features drift
    against a random baseline; with it, few do."""
    rng = np.random.default_rng(4)
    x = clustered(20, rng)
    pick = rng.choice(len(x), 1000, replace=False)
    mask = np.zeros(len(x), dtype=bool)
    mask[pick] = True
    base, rest = x[mask], x[~mask]
    rates = {True: 0, False: 0}
    total = 0
    for j in range(x.shape[1]):
        p = profile_numeric("x", base[:, j])
        for i in range(0, 8000, 500):
            parts = span(p, rest[i : i + 500, j])
            total += 1
            for deff in rates:
                t = DriftThresholds(design_effect=deff)
                rates[deff] += evaluate_span(Profile((p,)), parts, t).features[0].drifted
    assert rates[False] / total > 0.2, rates
    assert rates[True] / total < 0.03, rates


# --- references from a device's windows ----------------------------------------------------------


def test_a_device_reference_fits_a_one_population_device_and_still_sees_drift() -> None:
    """A baseline of originals plus copies moved up by one std (a retrained model's mixture)
    against a device that sees originals only: the training verdict drifts in every window,
    the device's own reference (its first windows) does not, and a later shift is seen."""
    x = randhie()
    rng = np.random.default_rng(5)
    j = 3
    std = x[:, j].std()
    mix = np.concatenate([x[:500, j], x[500:1000, j] + std])
    p = profile_numeric("x", mix)
    profile = Profile((p,))
    device = x[rng.integers(1000, len(x), 4000), j]
    first = [w for i in range(0, 2000, 500) for w in span(p, device[i : i + 500])]
    ref = reference_from_windows(profile, first)
    assert ref.windows == 40 and ref.profile.inputs[0].moments.count == 2000
    again = Reference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert again == ref
    state = AlertState()
    for i in range(2000, 4000, 500):
        parts = span(p, device[i : i + 500])
        assert evaluate_span(profile, parts).features[0].drifted
        since = evaluate_span(ref.profile, parts, design_effects=ref.design_effects)
        state, _ = step(state, since.features[0].verdict)
        assert since.features[0].evaluated and not since.features[0].drifted
    assert not state.active
    moved = device[2000:2500] + 0.5 * std
    since = evaluate_span(ref.profile, span(p, moved), design_effects=ref.design_effects)
    assert since.features[0].drifted


def test_malformed_references_are_refused() -> None:
    p = profile_numeric("x", np.arange(100.0))
    good = reference_from_windows(Profile((p,)), span(p, np.arange(100.0))).to_dict()
    for bad in (
        [],
        {**good, "design_effects": {"x": 0.5}},
        {**good, "design_effects": {"x": "big"}},
        {**good, "windows": -1},
        {**good, "rows": "many"},
        {**good, "windows": True},
        {**good, "profile": {"version": 99}},
    ):
        with pytest.raises(ValueError):
            Reference.from_dict(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        feature_drift(p, window(p, np.arange(10.0)), design_effect=math.inf)


# --- concept drift and hysteresis -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "n", "b", "m"), [(56, 70, 48, 80), (990, 1000, 23, 23), (5, 100, 9, 20), (0, 10, 0, 5)]
)
def test_newcombe_matches_statsmodels(a: int, n: int, b: int, m: int) -> None:
    expected = confint_proportions_2indep(a, n, b, m, method="newcomb", compare="diff")
    assert newcombe_interval(a, n, b, m) == pytest.approx(expected, abs=1e-9)


def test_a_small_test_set_is_not_taken_as_exact() -> None:
    """A 23-row test set at 100 %: 99 % from 1,000 labels is no drop; 80 % is."""
    assert not accuracy_drop(990, 1000, 1.0, reference_count=23).drifted
    assert accuracy_drop(990, 1000, 1.0).drifted  # the same taken as exact
    c = accuracy_drop(800, 1000, 1.0, reference_count=23)
    assert c.drifted and c.difference_upper is not None and c.difference_upper < 0
    little = accuracy_drop(10, 50, 1.0, reference_count=23, min_feedback=100)
    assert little.verdict is None and little.reason.startswith("no verdict")


def test_hysteresis_defaults_are_the_same_in_the_library_and_the_service() -> None:
    assert (DEFAULT_THRESHOLDS.k_raise, DEFAULT_THRESHOLDS.k_clear) == (2, 2)
    assert (SERVICE_THRESHOLDS.k_raise, SERVICE_THRESHOLDS.k_clear) == (2, 2)
    assert step(step(AlertState(), True)[0], True)[1] == "raised"


def test_checks_say_why() -> None:
    train, held = digits()
    p = profile_numeric("x", train[:, 20])
    f = feature_drift(p, window(p, held[:500, 20] + p.moments.std))
    assert f.drifted
    for c in f.checks:
        d = c.to_dict()
        assert set(d) == {"test", "value", "threshold", "floor", "decides", "over", "note"}
        assert d["over"] == (c.value >= max(c.threshold, c.floor))
    assert "threshold" in f.reason and "floor" in f.reason


def test_one_rule_chooses_a_span() -> None:
    """Newest first, until the rows reach the minimum or the windows the limit."""
    from edgeops.drift import newest_span

    rows = [300, 100, 400, 50]
    take = lambda **kw: newest_span(rows, lambda r: r, **kw)  # noqa: E731
    assert take(min_samples=500, limit=10) == [300, 100, 400]
    assert take(min_samples=300, limit=10) == [300]
    assert take(min_samples=10_000, limit=2) == [300, 100]
    assert take(min_samples=10_000, limit=10) == rows
    assert newest_span([], lambda r: r, min_samples=1, limit=1) == []
