"""Baseline profiles and their statistics, against numpy's quantile, histogram, mean and var."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from functools import reduce
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.datasets import load_diabetes, load_digits, load_wine
from sklearn.naive_bayes import GaussianNB

from edgeops.core.profile import (
    CategoricalProfile,
    ClassOutputProfile,
    NumericProfile,
    Profile,
    TensorProfile,
    profile_categorical,
    profile_class_outputs,
    profile_numeric,
    profile_regression_outputs,
    profile_tensor,
)
from edgeops.core.stats import (
    CONFIDENCE_EDGES,
    Moments,
    bin_counts,
    category_counts,
    class_output_counts,
    quantile_edges,
    reduce_tensor,
)

WINE = load_wine().data
DIABETES = load_diabetes().data
DIGITS = load_digits()


def reference_counts(values: npt.NDArray[Any], edges: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """np.histogram with finite outer edges: its bins are [a, b) but the last is [a, b]."""
    v = values[~np.isnan(values)]
    lo, hi = min(v.min(), edges[0]) - 1, max(v.max(), edges[-1]) + 1
    return np.histogram(v, bins=np.concatenate([[lo], edges, [hi]]))[0]


def json_round_trip(d: dict[str, Any]) -> Any:
    return json.loads(json.dumps(d, allow_nan=False))


# --- quantile edges and bins -------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [2, 4, 10, 100])
def test_quantile_edges_and_bins_match_numpy_on_real_features(n_bins: int) -> None:
    for x in [*WINE.T, *DIABETES.T]:
        edges = quantile_edges(x, n_bins)
        # The k-th quantile is the smallest value with at least k/n of the values at or below it:
        # the order statistic number ceil(N k / n) (one-based).
        order = np.sort(x)[[-(-len(x) * k // n_bins) - 1 for k in range(1, n_bins)]]
        np.testing.assert_array_equal(edges, np.unique(order))
        ref = np.quantile(x, [k / n_bins for k in range(1, n_bins)], method="inverted_cdf")
        np.testing.assert_array_equal(edges, np.unique(ref))
        assert np.all(np.diff(edges) > 0)
        counts, missing = bin_counts(x, edges)
        assert counts.dtype == np.int64 and len(counts) == len(edges) + 1 and missing == 0
        np.testing.assert_array_equal(counts, reference_counts(x, edges))


def test_continuous_feature_fills_bins_evenly() -> None:
    x = np.random.default_rng(0).normal(size=10_000)
    counts, _ = bin_counts(x, quantile_edges(x, 10))
    assert len(counts) == 10 and np.all(np.abs(counts - 1000) <= 1)


def test_a_value_equal_to_an_edge_falls_in_the_upper_bin() -> None:
    counts, missing = bin_counts([0.0, 1.0, 1.5, 2.0, 3.0], [1.0, 2.0])
    assert counts.tolist() == [1, 2, 2] and missing == 0


def test_ties_give_fewer_bins() -> None:
    # A three-valued feature gets three edges (four bins, the lowest empty), not nine.
    x = np.repeat([1.0, 2.0, 3.0], [50, 30, 20])
    edges = quantile_edges(x, 10)
    assert edges.tolist() == [1.0, 2.0, 3.0]  # observed values, never 1.5
    counts, _ = bin_counts(x, edges)
    assert counts.tolist() == [0, 50, 30, 20]
    np.testing.assert_array_equal(counts, reference_counts(x, edges))
    # A real feature with ties: every bin between two edges holds at least its lower edge.
    magnesium = WINE[:, 4]
    edges = quantile_edges(magnesium, 20)
    assert len(edges) < 19 and set(edges) <= set(magnesium)
    assert np.all(bin_counts(magnesium, edges)[0][1:] > 0)


def test_constant_feature_has_its_own_narrow_bin() -> None:
    """A constant feature gets ``[value, value + 1e-6)``: any other value is a change in the
    bins (with quantile edges alone everything above it stayed in one open bin)."""
    p = profile_numeric("c", np.full(50, 7.5), n_bins=10)
    assert p.edges == (7.5, 7.5 + 7.5e-6) and p.counts == (0, 50, 0)
    assert p.moments.count == 50 and p.moments.variance == 0.0 and p.moments.std == 0.0
    assert p.probs.tolist() == [0.0, 1.0, 0.0] and p.blind_spot is None and p.kurtosis is None


def test_nan_is_missing_and_infinities_fall_in_the_tails() -> None:
    x = DIABETES[:, 2].copy()
    clean_edges = quantile_edges(x, 10)
    x[::7] = np.nan
    x[1], x[2] = np.inf, -np.inf
    edges = quantile_edges(x, 10)
    finite = x[np.isfinite(x)]
    np.testing.assert_allclose(edges, quantile_edges(finite, 10))
    assert not np.allclose(edges, clean_edges)  # the NaN rows really were left out
    counts, missing = bin_counts(x, edges)
    assert missing == int(np.isnan(x).sum()) and counts.sum() + missing == len(x)
    assert counts[0] == reference_counts(finite, edges)[0] + 1  # -inf
    assert counts[-1] == reference_counts(finite, edges)[-1] + 1  # +inf
    p = profile_numeric("bmi", x)
    assert p.missing == missing and p.moments.count == finite.size
    assert p.moments.mean == pytest.approx(np.mean(finite))


def test_no_finite_values_give_one_bin_and_empty_moments() -> None:
    p = profile_numeric("empty", [np.nan, np.nan])
    assert p.edges == () and p.counts == (0,) and p.missing == 2
    assert p.probs.tolist() == [0.0] and p.moments == Moments.empty()
    assert math.isnan(p.moments.std)
    d = json_round_trip(p.to_dict())
    assert d["moments"] == {"count": 0, "mean": None, "m2": 0.0, "min": None, "max": None}
    assert NumericProfile.from_dict(d) == p


@pytest.mark.parametrize("n_bins", [1, 0, 101, 2.5, True, "10"])
def test_n_bins_is_checked(n_bins: Any) -> None:
    with pytest.raises(ValueError, match="n_bins"):
        quantile_edges([1.0, 2.0], n_bins)


@pytest.mark.parametrize("edges", [[2.0, 1.0], [1.0, 1.0], [[1.0]], [np.nan], [np.inf]])
def test_bad_edges_are_rejected(edges: Any) -> None:
    with pytest.raises(ValueError, match="edges"):
        bin_counts([1.0], edges)


# --- moments -----------------------------------------------------------------------------------


def assert_moments_of(m: Moments, x: npt.NDArray[Any]) -> None:
    assert m.count == x.size
    assert m.mean == pytest.approx(np.mean(x), rel=1e-12, abs=1e-12)
    assert m.variance == pytest.approx(np.var(x), rel=1e-9, abs=1e-12)
    assert m.std == pytest.approx(np.std(x), rel=1e-9, abs=1e-12)
    assert (m.min, m.max) == (np.min(x), np.max(x))


def test_moments_match_numpy() -> None:
    for x in [*WINE.T, *DIABETES.T]:
        assert_moments_of(Moments.of(x), x)


def test_merging_random_splits_matches_the_concatenation() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([WINE[:, 12], 1e6 + rng.normal(size=300)])  # large offset: needs Chan
    for _ in range(20):
        cuts = np.sort(rng.integers(0, x.size + 1, size=rng.integers(1, 12)))
        parts = [np.empty(0), *np.split(rng.permutation(x), cuts), np.empty(0)]
        merged = reduce(Moments.merge, (Moments.of(p) for p in parts), Moments.empty())
        assert_moments_of(merged, x)
        # Merging is order-independent up to rounding.
        backwards = reduce(Moments.merge, (Moments.of(p) for p in reversed(parts)))
        assert backwards.mean == pytest.approx(merged.mean, rel=1e-12)
        assert backwards.m2 == pytest.approx(merged.m2, rel=1e-9)


def test_merging_with_empty_is_exact() -> None:
    m = Moments.of(WINE[:, 0])
    assert m.merge(Moments.empty()) is m and Moments.empty().merge(m) is m
    assert Moments.of([]) == Moments.of([np.nan, np.inf]) == Moments.empty()
    assert Moments.empty().merge(Moments.empty()).count == 0
    single = Moments.of([3.0]).merge(Moments.of([5.0]))
    assert (single.count, single.mean, single.m2, single.min, single.max) == (2, 4.0, 2.0, 3, 5)


def test_moments_round_trip_and_validation() -> None:
    m = Moments.of(DIABETES[:, 0])
    assert Moments.from_dict(json_round_trip(m.to_dict())) == m
    assert Moments.from_dict(json_round_trip(Moments.empty().to_dict())) == Moments.empty()
    with pytest.raises(ValueError, match=r"moments\.mean"):
        Moments.from_dict({"count": 3, "mean": None, "m2": 1.0, "min": 0.0, "max": 1.0})
    with pytest.raises(ValueError, match=r"moments\.count"):
        Moments.from_dict({"count": -1})


# --- categorical -------------------------------------------------------------------------------


def test_categorical_profile_orders_by_frequency_then_name() -> None:
    values = ["b", "a", "c", "a", None, "", float("nan"), "b", "c", "d", np.float64("nan")]
    p = profile_categorical("city", values)
    assert p.categories == ("a", "b", "c", "d") and p.counts == (2, 2, 2, 1)
    assert (p.other, p.missing) == (0, 4)
    np.testing.assert_allclose(p.probs, [2 / 7, 2 / 7, 2 / 7, 1 / 7, 0.0])


def test_categorical_profile_with_given_categories_counts_the_rest_as_other() -> None:
    wine_class = load_wine().target  # numbers count as their str()
    p = profile_categorical("class", wine_class, categories=["0", "1"])
    assert p.counts == tuple(np.bincount(wine_class)[:2].tolist())
    assert p.other == int(np.sum(wine_class == 2)) and p.missing == 0
    assert p.probs.sum() == pytest.approx(1.0)
    counts, other, missing = category_counts(np.array(["1", "7", None], dtype=object), ["0", "1"])
    assert counts.tolist() == [0, 1] and (other, missing) == (1, 1)
    top = profile_categorical("class", wine_class, max_categories=1)
    assert top.categories == ("1",) and top.other == len(wine_class) - top.counts[0]


def test_categorical_profile_rejects_bad_categories() -> None:
    with pytest.raises(ValueError, match="unique"):
        profile_categorical("x", ["a"], categories=["a", "a"])
    with pytest.raises(ValueError, match="counts"):
        CategoricalProfile("x", ("a",), (1, 2), 0, 0)
    empty = profile_categorical("x", [None, ""])
    assert empty.categories == () and empty.missing == 2 and empty.probs.tolist() == [0.0]


# --- tensors -----------------------------------------------------------------------------------


def test_reduce_tensor_grey_images_as_one_channel() -> None:
    images = DIGITS.images  # [N, 8, 8]
    r = reduce_tensor(images)
    assert list(r) == ["mean[c0]", "std[c0]"]
    np.testing.assert_allclose(r["mean[c0]"], images.reshape(len(images), -1).mean(axis=1))
    np.testing.assert_allclose(r["std[c0]"], images.reshape(len(images), -1).std(axis=1))
    # [N, H, W, 1] channels-last gives the same numbers under the same names.
    r4 = reduce_tensor(images[..., None].astype(np.uint8))
    assert list(r4) == list(r)
    for k in r:
        np.testing.assert_allclose(r4[k], r[k])


def test_reduce_tensor_per_channel() -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(20, 6, 5, 3), dtype=np.uint8)
    r = reduce_tensor(rgb, ("mean", "std", "min", "max"))
    assert list(r)[:5] == ["mean[c0]", "std[c0]", "min[c0]", "max[c0]", "mean[c1]"]
    for c in range(3):
        plane = rgb[..., c].reshape(20, -1).astype(np.float64)
        np.testing.assert_allclose(r[f"mean[c{c}]"], plane.mean(axis=1))
        np.testing.assert_allclose(r[f"std[c{c}]"], plane.std(axis=1))
        np.testing.assert_array_equal(r[f"min[c{c}]"], plane.min(axis=1))
        np.testing.assert_array_equal(r[f"max[c{c}]"], plane.max(axis=1))
    seq = rng.normal(size=(10, 7, 2))  # [N, L, C] must say it is channels-last
    r3 = reduce_tensor(seq, ("mean",), channels_last=True)
    np.testing.assert_allclose(r3["mean[c1]"], seq[:, :, 1].mean(axis=1))
    assert list(reduce_tensor(seq, ("mean",))) == ["mean[c0]"]  # default: one channel
    flat = reduce_tensor(DIABETES, ("max",))  # [N, L]
    np.testing.assert_array_equal(flat["max[c0]"], DIABETES.max(axis=1))


def test_reduce_tensor_nan_and_bad_input() -> None:
    x = np.ones((3, 4, 4, 1))
    x[1, 0, 0, 0] = np.nan
    r = reduce_tensor(x)
    assert np.isnan(r["mean[c0]"][1]) and r["mean[c0]"][0] == 1.0
    assert bin_counts(r["mean[c0]"], [0.5])[1] == 1
    with pytest.raises(ValueError, match="rank"):
        reduce_tensor(np.ones(5))
    with pytest.raises(ValueError, match="channels_last"):
        reduce_tensor(np.ones((5, 3)), channels_last=True)
    with pytest.raises(ValueError, match="no elements"):
        reduce_tensor(np.ones((5, 0, 3)))
    with pytest.raises(ValueError, match="reductions"):
        reduce_tensor(np.ones((5, 3)), ("median",))


def test_tensor_profile_bins_new_inputs_with_its_edges() -> None:
    images = DIGITS.images[..., None].astype(np.float32)
    p = profile_tensor("image", images, n_bins=8)
    assert p.shape == (8, 8, 1) and p.channels_last and p.reductions == ("mean", "std")
    assert [f.name for f in p.features] == ["mean[c0]", "std[c0]"]
    reduced = p.reduce(images)  # the agent's view of the same data
    for f in p.features:
        counts, missing = bin_counts(reduced[f.name], f.edges)
        assert tuple(counts.tolist()) == f.counts and missing == f.missing == 0
    assert p.feature("std[c0]").moments.count == len(images)
    with pytest.raises(ValueError, match="expected samples"):
        p.reduce(np.ones((2, 8, 8, 3)))
    with pytest.raises(KeyError, match="no profile named"):
        p.feature("max[c0]")
    with pytest.raises(ValueError, match="features must be named"):
        TensorProfile("image", (8, 8, 3), ("mean",), True, p.features[:1])


# --- outputs -----------------------------------------------------------------------------------


def digits_probabilities() -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    x, y = DIGITS.data, DIGITS.target
    model = GaussianNB().fit(x[::2], y[::2])
    return model.predict_proba(x[1::2]), y[1::2]


def test_class_output_profile_matches_argmax_and_histogram() -> None:
    probs, _ = digits_probabilities()
    labels = [str(i) for i in range(10)]
    p = profile_class_outputs(probs, labels)
    assert p.labels == tuple(labels) and p.confidence_edges == CONFIDENCE_EDGES
    assert CONFIDENCE_EDGES == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert p.class_counts == tuple(np.bincount(probs.argmax(axis=1), minlength=10).tolist())
    hist = np.histogram(probs.max(axis=1), bins=[0.0, *CONFIDENCE_EDGES, 1.0])[0]
    assert p.confidence_counts == tuple(hist.tolist())
    assert p.class_probs.sum() == pytest.approx(1.0)
    assert p.confidence_probs.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="probabilities"):
        profile_class_outputs(probs, labels[:3])


def test_binary_single_column_outputs() -> None:
    p1 = np.array([[0.05], [0.5], [0.7], [0.95], [np.nan]])
    classes, confidence = class_output_counts(p1, 2)
    assert classes.tolist() == [1, 3]  # the NaN row is skipped
    # confidences 0.95, 0.5, 0.7, 0.95
    assert confidence.tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 0, 2]
    assert profile_class_outputs(p1, ["no", "yes"]).class_counts == (1, 3)


def test_regression_output_profiles() -> None:
    y = load_diabetes().target
    (one,) = profile_regression_outputs("prediction", y[:, None], 5)
    assert one.name == "prediction" and one == profile_numeric("prediction", y, 5)
    two = profile_regression_outputs("y", np.stack([y, -y], axis=1), 5)
    assert [p.name for p in two] == ["y[0]", "y[1]"]
    assert two[1].moments.mean == pytest.approx(-np.mean(y))
    with pytest.raises(ValueError, match="regression outputs"):
        profile_regression_outputs("y", np.ones((2, 2, 2)))


# --- the whole profile -------------------------------------------------------------------------


def full_profile() -> Profile:
    probs, _ = digits_probabilities()
    wine_class = np.array(["a", "b", "c"], dtype=object)[load_wine().target]
    inputs = (
        profile_numeric("alcohol", WINE[:, 0]),
        profile_numeric("empty", np.full(10, np.nan)),
        profile_categorical("class", wine_class),
        profile_tensor("image", DIGITS.images, 10, ("mean", "std", "max")),
    )
    outputs = (
        profile_class_outputs(probs, [str(i) for i in range(10)]),
        *profile_regression_outputs("y", DIABETES[:, :2]),
    )
    return Profile(inputs, outputs, n_bins=10)


def test_profile_round_trips_through_json() -> None:
    p = full_profile()
    d = json_round_trip(p.to_dict())  # allow_nan=False: every float is finite
    assert Profile.from_dict(d) == p
    assert d["version"] == 1 and d["n_bins"] == 10
    assert [e["kind"] for e in d["inputs"]] == ["numeric", "numeric", "categorical", "tensor"]
    assert [e["kind"] for e in d["outputs"]] == ["class_output", "numeric", "numeric"]
    assert d["inputs"][1]["moments"]["mean"] is None
    keys = {"kind", "name", "edges", "counts", "missing", "moments", "kurtosis"}
    assert set(d["inputs"][0]) == keys
    del d["inputs"][0]["kurtosis"]  # a profile written before the kurtosis was recorded
    old = Profile.from_dict(d)
    assert old.inputs[0] == replace(p.inputs[0], kurtosis=None)
    assert set(d["outputs"][0]) == {
        "kind",
        "name",
        "labels",
        "class_counts",
        "confidence_edges",
        "confidence_counts",
    }
    assert isinstance(p.input("alcohol"), NumericProfile)
    assert isinstance(p.output("class"), ClassOutputProfile)
    with pytest.raises(KeyError, match="no profile named 'nope'"):
        p.input("nope")


def broken(path: str, value: Any) -> dict[str, Any]:
    """The full profile's dict with the entry at a dotted path replaced (deleted for ``...``)."""
    d = json_round_trip(full_profile().to_dict())
    *parents, last = path.split(".")
    node = d
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return dict(d)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("version", 2, r"profile\.version: expected 1, got 2"),
        ("inputs", {}, r"profile\.inputs: expected a list"),
        ("inputs.0", [], r"profile\.inputs\[0\]: expected an object"),
        ("inputs.0.kind", "histogram", r"profile\.inputs\[0\]\.kind: expected one of"),
        ("outputs.0.kind", "categorical", r"profile\.outputs\[0\]\.kind: expected one of"),
        ("inputs.0.edges", ..., r"profile\.inputs\[0\]: missing \['edges'\]"),
        ("inputs.0.counts.3", -1, r"profile\.inputs\[0\]\.counts\[3\]: expected a non-negative"),
        ("inputs.0.counts.3", 1.5, r"counts\[3\]: expected a non-negative integer"),
        ("inputs.0.counts", [1, 2], r"profile\.inputs\[0\]: 2 counts for 9 edges"),
        ("inputs.0.edges.0", None, r"edges\[0\]: expected a finite number"),
        ("inputs.0.edges.0", 99.0, r"profile\.inputs\[0\]: edges must be .* increasing"),
        ("inputs.0.moments.m2", "x", r"profile\.inputs\[0\]\.moments\.m2: expected a finite"),
        ("inputs.2.categories.0", 3, r"categories\[0\]: expected a string"),
        ("inputs.3.channels_last", 1, r"channels_last: expected true or false"),
        ("inputs.3.features.1.name", "max[c0]", r"inputs\[3\]: features must be named"),
        ("inputs.3.features.0.missing", None, r"inputs\[3\]\.features\[0\]\.missing"),
        ("inputs.1.name", "alcohol", r"profile: profile names must be unique"),
        ("outputs.0.labels", ["a"], r"outputs\[0\]: need two or more labels"),
        ("n_bins", 1, r"profile: n_bins must be from 2 to 100"),
    ],
)
def test_malformed_profiles_are_rejected_with_a_clear_message(
    path: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Profile.from_dict(broken(path, value))


def test_profile_from_dict_rejects_non_objects() -> None:
    with pytest.raises(ValueError, match="profile: expected an object"):
        Profile.from_dict([])  # type: ignore[arg-type]
