"""Evaluation metrics against scikit-learn's on real data, slices, and blessing decisions."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.datasets import load_diabetes, load_digits, load_wine
from sklearn.linear_model import Ridge
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    precision_recall_fscore_support,
    r2_score,
    root_mean_squared_error,
)
from sklearn.naive_bayes import GaussianNB

from edgeops.trainer.metrics import (
    MISSING_SLICE,
    NO_BASELINE,
    Blessing,
    BlessingThresholds,
    ClassificationMetrics,
    RegressionMetrics,
    bless,
    classification_metrics,
    metrics_from_dict,
    regression_metrics,
    slice_metrics,
    slice_rows,
)


def digits_predictions() -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
    """Labels, predicted classes and probabilities of a real (weak) digits classifier."""
    d = load_digits()
    model = GaussianNB().fit(d.data[::2], d.target[::2])
    probs = model.predict_proba(d.data[1::2])
    return d.target[1::2], probs.argmax(axis=1), probs


def diabetes_predictions() -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    x, y = load_diabetes(return_X_y=True)
    model = Ridge(alpha=0.1).fit(x[::2], y[::2])
    return y[1::2], model.predict(x[1::2])


def json_round_trip(d: dict[str, Any]) -> Any:
    return json.loads(json.dumps(d, allow_nan=False))


# --- classification ----------------------------------------------------------------------------


def assert_matches_sklearn(
    m: ClassificationMetrics, y: npt.NDArray[Any], p: npt.NDArray[Any], n: int
) -> None:
    labels = list(range(n))
    per = precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(y, p, average="macro", zero_division=0)
    assert m.count == len(y)
    assert m.accuracy == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert m.precision_macro == pytest.approx(macro[0], abs=1e-12)
    assert m.recall_macro == pytest.approx(macro[1], abs=1e-12)
    assert m.f1_macro == pytest.approx(macro[2], abs=1e-12)
    np.testing.assert_allclose([c.precision for c in m.per_class], per[0], atol=1e-12)
    np.testing.assert_allclose([c.recall for c in m.per_class], per[1], atol=1e-12)
    np.testing.assert_allclose([c.f1 for c in m.per_class], per[2], atol=1e-12)
    assert [c.support for c in m.per_class] == per[3].tolist()
    np.testing.assert_array_equal(m.confusion, confusion_matrix(y, p, labels=labels))


def test_classification_matches_sklearn_on_digits() -> None:
    y, p, probs = digits_predictions()
    m = classification_metrics(y, p)
    assert 0.6 < m.accuracy < 0.95  # a real model with real mistakes
    assert_matches_sklearn(m, y, p, 10)
    assert m.labels == tuple(str(i) for i in range(10))
    assert classification_metrics(y, probs) == m  # scores: the argmax is taken


def test_classification_matches_sklearn_on_wine_with_labels() -> None:
    x, y = load_wine(return_X_y=True)
    p = GaussianNB().fit(x[::3], y[::3]).predict(x)
    m = classification_metrics(y, p, labels=["barolo", "grignolino", "barbera"])
    assert_matches_sklearn(m, y, p, 3)
    assert m.per_class[2].label == "barbera"


def test_absent_classes_are_listed_but_not_averaged() -> None:
    y, p, _ = digits_predictions()
    keep = (y != 9) & (p != 9)  # class 9 neither occurs nor is predicted
    y, p = y[keep], p[keep]
    m = classification_metrics(y, p, n_classes=10)
    assert_matches_sklearn(m, y, p, 10)  # sklearn's macro default skips class 9 too
    assert m.per_class[9] == type(m.per_class[9])("9", 0.0, 0.0, 0.0, 0)


def test_zero_division_gives_zero_like_sklearn() -> None:
    y = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 0, 0, 0, 3])  # 1 and 2 never predicted; 3 predicted but never true
    m = classification_metrics(y, p, n_classes=4)
    assert_matches_sklearn(m, y, p, 4)
    assert m.per_class[3].precision == 0.0 and m.per_class[1].f1 == 0.0


def test_binary_probability_column() -> None:
    y = np.array([0, 1, 1, 0, 1])
    m = classification_metrics(y, np.array([[0.2], [0.5], [0.9], [0.7], [0.1]]))
    assert m.confusion == ((1, 1), (1, 2)) and m.accuracy == pytest.approx(3 / 5)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "kwargs", "message"),
    [
        ([0, 1], [0, 1, 1], {}, "as many predictions as labels"),
        ([], [], {}, "as many predictions as labels, and some"),
        ([0, 3], [0, 1], {"n_classes": 3}, "from 0 to 2"),
        ([0, -1], [0, 1], {}, "from 0 to"),
        ([0, 1], [0, 1], {"labels": ["a"], "n_classes": 2}, "disagree"),
        ([0, 1], [[0.1, 0.2, 0.7], [1, 0, 0]], {"n_classes": 2}, "disagree"),
        ([0.5, 1], [0, 1], {}, "integer class indices"),
        (["a", "b"], [0, 1], {}, "integer class indices"),
        ([[0, 1]], [[0, 1]], {}, r"class indices \[N\]"),
    ],
)
def test_classification_input_errors(
    y_true: Any, y_pred: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, y_pred, **kwargs)


def test_classification_round_trip() -> None:
    y, p, _ = digits_predictions()
    m = classification_metrics(y, p)
    d = json_round_trip(m.to_dict())
    assert d["kind"] == "classification" and len(d["confusion"]) == 10
    assert set(d["per_class"][0]) == {"label", "precision", "recall", "f1", "support"}
    assert ClassificationMetrics.from_dict(d) == m == metrics_from_dict(d)
    del d["kind"]  # the tag is optional when the caller knows the kind
    assert ClassificationMetrics.from_dict(d) == m
    d["confusion"] = d["confusion"][:3]
    with pytest.raises(ValueError, match="malformed classification metrics: the confusion"):
        ClassificationMetrics.from_dict(d)
    with pytest.raises(ValueError, match="malformed classification metrics"):
        ClassificationMetrics.from_dict({"count": 1})
    with pytest.raises(ValueError, match="expected classification metrics"):
        ClassificationMetrics.from_dict(RegressionMetrics(1, 0.0, 0.0, 1.0).to_dict())


# --- regression --------------------------------------------------------------------------------


def test_regression_matches_sklearn_on_diabetes() -> None:
    y, p = diabetes_predictions()
    m = regression_metrics(y, p)
    assert m.count == len(y)
    assert m.mae == pytest.approx(mean_absolute_error(y, p), rel=1e-12)
    assert m.rmse == pytest.approx(root_mean_squared_error(y, p), rel=1e-12)
    assert m.r2 == pytest.approx(r2_score(y, p), rel=1e-12)
    assert 0.3 < m.r2 < 0.7
    assert regression_metrics(y[:, None], p) == m  # [N, 1] against [N]


def test_multi_output_regression_is_averaged_uniformly_like_sklearn() -> None:
    y, p = diabetes_predictions()
    rng = np.random.default_rng(0)
    y2 = np.stack([y, y / 100, rng.normal(size=len(y))], axis=1)
    p2 = np.stack([p, p / 100 + 0.3, np.zeros(len(y))], axis=1)
    m = regression_metrics(y2, p2)
    assert m.mae == pytest.approx(mean_absolute_error(y2, p2), rel=1e-12)
    assert m.rmse == pytest.approx(root_mean_squared_error(y2, p2), rel=1e-12)
    assert m.r2 == pytest.approx(r2_score(y2, p2), rel=1e-12)


def test_r2_of_a_constant_target_is_finite_like_sklearn() -> None:
    y = np.full(5, 3.0)
    for p in (y, y + 1):
        assert regression_metrics(y, p).r2 == r2_score(y, p)  # 1.0 then 0.0
    both = np.stack([y, np.arange(5.0)], axis=1)
    shifted = both + np.array([1.0, 0.0])
    assert regression_metrics(both, shifted).r2 == pytest.approx(r2_score(both, shifted))
    assert regression_metrics([2.0], [2.0]).r2 == 1.0  # sklearn: NaN and a warning


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        ([1.0, 2.0], [1.0], "same non-empty shape"),
        ([], [], "same non-empty shape"),
        ([1.0, np.nan], [1.0, 2.0], "finite"),
        (np.ones((2, 2, 2)), np.ones((2, 2, 2)), r"\[N\] or \[N, K\]"),
    ],
)
def test_regression_input_errors(y_true: Any, y_pred: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        regression_metrics(y_true, y_pred)


def test_regression_round_trip() -> None:
    m = regression_metrics(*diabetes_predictions())
    d = json_round_trip(m.to_dict())
    assert d == {"kind": "regression", "count": m.count, "mae": m.mae, "rmse": m.rmse, "r2": m.r2}
    assert RegressionMetrics.from_dict(d) == m == metrics_from_dict(d)
    with pytest.raises(ValueError, match="malformed regression metrics"):
        RegressionMetrics.from_dict({"count": 3, "mae": "x", "rmse": 1, "r2": 0})
    with pytest.raises(ValueError, match="expected kind"):
        metrics_from_dict({"kind": "ranking"})


# --- slices ------------------------------------------------------------------------------------


def test_numeric_slices_are_quartile_buckets() -> None:
    x, y = load_wine(return_X_y=True)
    alcohol = x[:, 0]
    rows = slice_rows(alcohol)
    q = np.quantile(alcohol, [0.25, 0.5, 0.75], method="inverted_cdf")
    assert list(rows) == [
        f"[{alcohol.min():g}, {q[0]:g})",
        f"[{q[0]:g}, {q[1]:g})",
        f"[{q[1]:g}, {q[2]:g})",
        f"[{q[2]:g}, {alcohol.max():g}]",
    ]
    # The buckets partition the rows; ties go to the upper bucket.
    np.testing.assert_array_equal(np.sort(np.concatenate(list(rows.values()))), np.arange(len(y)))
    bucket = np.searchsorted(q, alcohol, side="right")
    for i, idx in enumerate(rows.values()):
        np.testing.assert_array_equal(idx, np.flatnonzero(bucket == i))
    # Metrics per slice are the metrics of the slice's rows.
    per = slice_metrics(alcohol, lambda r: classification_metrics(y[r], y[r], n_classes=3))
    assert [m.count for m in per.values()] == [len(r) for r in rows.values()]
    assert all(m.accuracy == 1.0 for m in per.values())


def test_few_valued_and_categorical_slices() -> None:
    _, y = load_wine(return_X_y=True)
    rows = slice_rows(y)  # three values: a slice each, by value
    assert list(rows) == ["0", "1", "2"]
    assert [len(r) for r in rows.values()] == np.bincount(y).tolist()
    halves = slice_rows(np.array([0.5, 1.5, 0.5, np.nan]))
    assert {k: v.tolist() for k, v in halves.items()} == {
        "0.5": [0, 2],
        "1.5": [1],
        MISSING_SLICE: [3],
    }
    cities = np.array(["rome", None, "oslo", "", "rome"], dtype=object)
    got = {k: v.tolist() for k, v in slice_rows(cities).items()}
    assert got == {"oslo": [2], "rome": [0, 4], MISSING_SLICE: [1, 3]}
    assert list(slice_rows(np.array([True, False, True]))) == ["False", "True"]
    assert slice_rows(np.array([], dtype=np.float64)) == {}
    with pytest.raises(ValueError, match="one value per row"):
        slice_rows(np.ones((2, 2)))


def test_slice_metrics_on_regression_with_many_values() -> None:
    x, y = load_diabetes(return_X_y=True)
    p = Ridge(alpha=0.1).fit(x, y).predict(x)
    age = x[:, 0]
    per = slice_metrics(age, lambda r: regression_metrics(y[r], p[r]))
    assert len(per) == 4 and sum(m.count for m in per.values()) == len(y)
    for name, idx in slice_rows(age).items():
        assert per[name].mae == pytest.approx(mean_absolute_error(y[idx], p[idx]))


# --- blessing ----------------------------------------------------------------------------------


def cls_metrics(accuracy: float) -> ClassificationMetrics:
    """Metrics of 100 binary predictions with the given accuracy."""
    correct = round(accuracy * 100)
    y = np.zeros(100, dtype=int)
    return classification_metrics(y, np.r_[np.zeros(correct), np.ones(100 - correct)].astype(int))


def reg_metrics(rmse: float) -> RegressionMetrics:
    return RegressionMetrics(10, rmse, rmse, 0.5)


def test_blessing_without_a_baseline_says_so() -> None:
    b = bless(cls_metrics(0.9), None)
    assert b == Blessing(True, (NO_BASELINE,), None)
    assert b.to_dict() == {"blessed": True, "reasons": [NO_BASELINE], "baseline_delta": None}
    b = bless(cls_metrics(0.9), None, BlessingThresholds(min_accuracy=0.95))
    assert not b.blessed
    assert b.reasons == ("accuracy 0.9000 is below the minimum of 0.9500", NO_BASELINE)


def test_classifier_blessing_against_a_baseline() -> None:
    th = BlessingThresholds(max_accuracy_drop=0.01)
    same_drop = bless(cls_metrics(0.94), cls_metrics(0.95), th)  # exactly the allowed drop
    assert same_drop.blessed and same_drop.reasons == ()
    assert same_drop.baseline_delta == pytest.approx(-0.01)
    better = bless(cls_metrics(0.97), cls_metrics(0.95), th)
    assert better.blessed and better.baseline_delta == pytest.approx(0.02)
    worse = bless(cls_metrics(0.92), cls_metrics(0.95), th)
    assert not worse.blessed and worse.baseline_delta == pytest.approx(-0.03)
    assert worse.reasons == (
        "accuracy 0.9200 is 0.0300 below the baseline's 0.9500; the most allowed is 0.0100",
    )
    both = bless(cls_metrics(0.92), cls_metrics(0.95), BlessingThresholds(min_accuracy=0.93))
    assert len(both.reasons) == 2 and not both.blessed


def test_regressor_blessing_against_a_baseline() -> None:
    th = BlessingThresholds(max_rmse_increase=0.05)
    ok = bless(reg_metrics(10.5), reg_metrics(10.0), th)  # exactly 5 % worse
    assert ok.blessed and ok.baseline_delta == pytest.approx(0.05)
    bad = bless(reg_metrics(12.0), reg_metrics(10.0), th)
    assert not bad.blessed and bad.baseline_delta == pytest.approx(0.2)
    assert bad.reasons == ("RMSE 12 is 20.0% above the baseline's 10; the most allowed is 5.0%",)
    capped = bless(reg_metrics(12.0), None, BlessingThresholds(max_rmse=11.0))
    assert capped.reasons == ("RMSE 12 is above the maximum of 11", NO_BASELINE)
    perfect_baseline = bless(reg_metrics(0.1), reg_metrics(0.0))
    assert not perfect_baseline.blessed and perfect_baseline.baseline_delta is None
    assert perfect_baseline.reasons == (
        "RMSE 0.1 is above the baseline's 0; the most allowed is 5.0%",
    )
    assert bless(reg_metrics(0.0), reg_metrics(0.0)).baseline_delta == 0.0


def test_blessing_on_real_models() -> None:
    y, p = diabetes_predictions()
    x, y_all = load_diabetes(return_X_y=True)
    weak = Ridge(alpha=10.0).fit(x[::2], y_all[::2]).predict(x[1::2])
    strong, weaker = regression_metrics(y, p), regression_metrics(y, weak)
    assert weaker.rmse > strong.rmse * 1.05
    assert bless(strong, weaker).blessed
    assert not bless(weaker, strong).blessed


def test_blessing_refuses_mixed_kinds_and_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="cannot compare classification metrics"):
        bless(cls_metrics(0.9), reg_metrics(1.0))
    with pytest.raises(ValueError, match="min_accuracy"):
        BlessingThresholds(min_accuracy=1.5)
    with pytest.raises(ValueError, match="max_rmse_increase"):
        BlessingThresholds(max_rmse_increase=-0.1)
