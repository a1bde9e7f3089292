"""Evaluation metrics, metrics per slice of the data, and blessing a model against a baseline.

Pure functions over labels and predictions (numpy only: the agent imports this module too).

- Classification: accuracy, precision, recall and F1 per class and macro-averaged, and the
  confusion matrix, as scikit-learn computes them with ``zero_division=0``. Macro averages run over
  the classes that occur in the labels or the predictions, like scikit-learn's default; a class
  that never occurs is listed in ``per_class`` with zeros but does not lower the averages.
- Regression: MAE, RMSE and R², each computed per output column and averaged uniformly, like
  scikit-learn's ``multioutput="uniform_average"``. R² of a constant target is 1.0 for a perfect
  prediction and 0.0 otherwise (scikit-learn's ``force_finite``), also for a single sample, where
  scikit-learn returns NaN.
- :func:`slice_metrics` computes any metrics per value (or quartile bucket) of a column.
- :func:`bless` decides whether a model is good enough to ship, with human-readable reasons.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from edgeops.core.stats import category_keys, quantile_edges

M = TypeVar("M")
IndexArray = npt.NDArray[np.intp]
MISSING_SLICE = "(missing)"
# Slack for comparing a difference of metrics with a threshold: 0.95 - 0.94 > 0.01 in floats.
_EPS = 1e-9


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int
    """How many samples have this true class."""


@dataclass(frozen=True)
class ClassificationMetrics:
    """Metrics of a classifier; ``confusion[i][j]`` counts samples of true class i predicted j.

    ``to_dict()``: ``{"kind": "classification", "count", "accuracy", "precision_macro",
    "recall_macro", "f1_macro", "per_class": [{"label", "precision", "recall", "f1", "support"}],
    "confusion": [[int]]}``.
    """

    KIND: ClassVar[str] = "classification"
    count: int
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    per_class: tuple[ClassMetrics, ...]
    confusion: tuple[tuple[int, ...], ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(c.label for c in self.per_class)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.KIND} | asdict(self)
        d["per_class"] = [asdict(c) for c in self.per_class]
        d["confusion"] = [list(row) for row in self.confusion]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassificationMetrics:
        """The inverse of :meth:`to_dict`; ValueError on a malformed dict."""
        return _read(cls.KIND, d, cls._from_dict)

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any]) -> ClassificationMetrics:
        per_class = tuple(
            ClassMetrics(
                str(c["label"]),
                float(c["precision"]),
                float(c["recall"]),
                float(c["f1"]),
                int(c["support"]),
            )
            for c in d["per_class"]
        )
        confusion = tuple(tuple(int(v) for v in row) for row in d["confusion"])
        if len(confusion) != len(per_class) or any(len(r) != len(per_class) for r in confusion):
            raise ValueError("the confusion matrix must have a row and a column per class")
        return cls(
            int(d["count"]),
            float(d["accuracy"]),
            float(d["precision_macro"]),
            float(d["recall_macro"]),
            float(d["f1_macro"]),
            per_class,
            confusion,
        )


@dataclass(frozen=True)
class RegressionMetrics:
    """Metrics of a regressor, averaged uniformly over output columns.

    ``to_dict()``: ``{"kind": "regression", "count", "mae", "rmse", "r2"}``.
    """

    KIND: ClassVar[str] = "regression"
    count: int
    mae: float
    rmse: float
    r2: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND} | asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RegressionMetrics:
        """The inverse of :meth:`to_dict`; ValueError on a malformed dict."""
        return _read(
            cls.KIND,
            d,
            lambda d: cls(int(d["count"]), float(d["mae"]), float(d["rmse"]), float(d["r2"])),
        )


Metrics = ClassificationMetrics | RegressionMetrics


def metrics_from_dict(d: Mapping[str, Any]) -> Metrics:
    """Either kind of metrics from its ``to_dict()``, told apart by ``"kind"``."""
    kind = d.get("kind") if isinstance(d, Mapping) else None
    if kind == RegressionMetrics.KIND:
        return RegressionMetrics.from_dict(d)
    if kind == ClassificationMetrics.KIND:
        return ClassificationMetrics.from_dict(d)
    raise ValueError(f"metrics: expected kind 'classification' or 'regression', got {kind!r}")


def _read(kind: str, d: Any, make: Callable[[Mapping[str, Any]], M]) -> M:
    """``make(d)``, with any error of reading a malformed metrics dict as one ValueError."""
    if not isinstance(d, Mapping) or d.get("kind", kind) != kind:
        raise ValueError(f"expected {kind} metrics, got {d!r:.80}")
    try:
        return make(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed {kind} metrics: {e!s}") from e


def _class_indices(a: npt.NDArray[Any], what: str) -> npt.NDArray[np.int64]:
    if a.ndim != 1:
        raise ValueError(f"{what}: expected class indices [N], got shape {a.shape}")
    if a.dtype.kind not in "biuf" or (
        a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a)))
    ):
        raise ValueError(f"{what}: expected integer class indices, got dtype {a.dtype}")
    return a.astype(np.int64)


def _ratio(num: npt.NDArray[Any], den: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """num / den, and 0.0 where den is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_metrics(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    *,
    labels: Sequence[str] | None = None,
    n_classes: int | None = None,
) -> ClassificationMetrics:
    """Metrics of predicted class indices against true ones, both 0 .. n_classes-1.

    ``y_pred`` may also be scores ``[N, K]`` (the argmax is taken) or a binary classifier's
    probability of class 1 ``[N, 1]`` (class 1 when at least 0.5). ``n_classes`` defaults to
    ``len(labels)``, else K for scores, else the largest index + 1; ``labels`` default to
    ``"0", "1", ...``. Raises ValueError on empty or mismatched inputs and out-of-range indices.
    """
    t = _class_indices(np.asarray(y_true), "y_true")
    scores = np.asarray(y_pred)
    k = None
    if scores.ndim == 2:
        k = max(scores.shape[1], 2)
        scores = scores[:, 0] >= 0.5 if scores.shape[1] == 1 else np.argmax(scores, axis=1)
    p = _class_indices(scores, "y_pred")
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"need as many predictions as labels, and some: {t.size} and {p.size}")
    if n_classes is not None:
        n = n_classes
    elif labels is not None:
        n = len(labels)
    else:
        n = k or int(max(t.max(), p.max())) + 1
    names = tuple(labels) if labels is not None else tuple(str(i) for i in range(n))
    if len(names) != n or (k is not None and k != n):
        raise ValueError(f"{n} classes, {len(names)} labels and scores for {k} classes disagree")
    if min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n:
        raise ValueError(f"class indices must be from 0 to {n - 1}")

    confusion = np.bincount(t * n + p, minlength=n * n).reshape(n, n)
    tp = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    present = (support + predicted) > 0
    return ClassificationMetrics(
        count=int(t.size),
        accuracy=float(tp.sum() / t.size),
        precision_macro=float(precision[present].mean()),
        recall_macro=float(recall[present].mean()),
        f1_macro=float(f1[present].mean()),
        per_class=tuple(
            ClassMetrics(names[i], float(precision[i]), float(recall[i]), float(f1[i]), int(s))
            for i, s in enumerate(support)
        ),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
    )


def regression_metrics(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> RegressionMetrics:
    """MAE, RMSE and R² of ``[N]`` or ``[N, K]`` predictions (``[N]`` and ``[N, 1]`` match).

    Raises ValueError on empty, mismatched or non-finite inputs.
    """
    t, p = (np.asarray(a, dtype=np.float64) for a in (y_true, y_pred))
    if t.ndim not in (1, 2) or p.ndim not in (1, 2):
        raise ValueError(f"expected targets [N] or [N, K], got {t.shape} and {p.shape}")
    flat_t, flat_p = (a.reshape(len(a), -1) if a.size else a for a in (t, p))
    if t.size == 0 or flat_t.shape != flat_p.shape:
        raise ValueError(
            f"y_true {t.shape} and y_pred {p.shape} must have the same non-empty shape"
        )
    t, p = flat_t, flat_p
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
        raise ValueError("y_true and y_pred must be finite")
    err = p - t
    ss_res = np.sum(err**2, axis=0)
    ss_tot = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
    r2 = np.where(ss_res == 0, 1.0, 1.0 - _ratio(ss_res, ss_tot))
    r2 = np.where((ss_tot == 0) & (ss_res > 0), 0.0, r2)
    return RegressionMetrics(
        count=len(t),
        mae=float(np.mean(np.abs(err), axis=0).mean()),
        rmse=float(np.sqrt(ss_res / len(t)).mean()),
        r2=float(r2.mean()),
    )


def _number_names(values: Sequence[float]) -> list[str]:
    """Short names of numbers (``"3"``, ``"0.25"``), as many digits as keep distinct ones apart."""
    for digits in range(6, 18):
        names = [f"{v:.{digits}g}" for v in values]
        if len(set(names)) == len(set(values)):
            return names
    return [repr(v) for v in values]


def slice_rows(keys: npt.ArrayLike, *, max_values: int = 10) -> dict[str, IndexArray]:
    """The row indices of each slice of ``keys`` (one value per row); empty slices are left out.

    - Numeric keys (int or float arrays) with at most ``max_values`` distinct values: a slice per
      value, named by it (``"3"``, ``"0.5"``), in increasing order.
    - Numeric keys with more: quartile buckets ``"[min, q1)"``, ``"[q1, q2)"``, ``"[q2, q3)"``,
      ``"[q3, max]"`` (quartiles as in :func:`edgeops.core.stats.quantile_edges`; ties fall in the
      upper bucket; buckets whose quartiles coincide merge).
    - Anything else (strings, bools, objects): a slice per ``str(value)``, sorted by name.

    Missing keys (NaN, None, ``""``) form the slice ``"(missing)"``, last.
    """
    a = np.asarray(keys)
    if a.ndim != 1:
        raise ValueError(f"slice keys must be one value per row, got shape {a.shape}")
    groups: dict[str, IndexArray] = {}
    if a.dtype.kind in "iuf":
        v = a.astype(np.float64)
        present = ~np.isnan(v)
        distinct = np.unique(v[present])
        if distinct.size <= max_values:
            codes, names = np.searchsorted(distinct, v), _number_names(distinct.tolist())
        else:
            edges = quantile_edges(v, 4)
            bounds = _number_names([distinct[0], *edges.tolist(), distinct[-1]])
            names = [f"[{lo}, {hi})" for lo, hi in pairwise(bounds)]
            names[-1] = names[-1][:-1] + "]"
            codes = np.searchsorted(edges, v, side="right")
        for i, name in enumerate(names):
            groups[name] = np.flatnonzero(present & (codes == i))
        groups[MISSING_SLICE] = np.flatnonzero(~present)
    else:
        rows: dict[str, list[int]] = {}
        missing: list[int] = []
        for i, key in enumerate(category_keys(a)):
            (missing if key is None else rows.setdefault(key, [])).append(i)
        groups = {k: np.array(rows[k], dtype=np.intp) for k in sorted(rows)}
        groups[MISSING_SLICE] = np.array(missing, dtype=np.intp)
    return {name: idx for name, idx in groups.items() if idx.size}


def slice_metrics(
    keys: npt.ArrayLike, compute: Callable[[IndexArray], M], *, max_values: int = 10
) -> dict[str, M]:
    """``compute(rows)`` for the row indices of each slice of ``keys`` (see :func:`slice_rows`).

    For example ``slice_metrics(city, lambda rows: classification_metrics(y[rows], p[rows],
    n_classes=k))``; pass ``n_classes`` so that every slice has every class.
    """
    return {name: compute(rows) for name, rows in slice_rows(keys, max_values=max_values).items()}


@dataclass(frozen=True)
class BlessingThresholds:
    """When a model is good enough to ship.

    A classifier needs accuracy of at least ``min_accuracy`` (when set) and at most
    ``max_accuracy_drop`` below the baseline's (absolute: 0.01 is one percentage point). A
    regressor needs RMSE of at most ``max_rmse`` (when set) and at most ``max_rmse_increase`` above
    the baseline's, relative to it (0.05 is 5 % worse).
    """

    min_accuracy: float | None = None
    max_accuracy_drop: float = 0.01
    max_rmse: float | None = None
    max_rmse_increase: float = 0.05

    def __post_init__(self) -> None:
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise ValueError(f"min_accuracy must be from 0 to 1, got {self.min_accuracy}")
        for name in ("max_accuracy_drop", "max_rmse", "max_rmse_increase"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value}")


@dataclass(frozen=True)
class Blessing:
    """Whether a model may ship, and why not.

    ``reasons`` holds a sentence per failed check, and the note ``"no baseline to compare with"``
    when there was no baseline (which does not by itself withhold the blessing).
    ``baseline_delta`` is the change against the baseline: accuracy minus the baseline's for a
    classifier (negative is worse), the relative RMSE change for a regressor (positive is worse).
    """

    blessed: bool
    reasons: tuple[str, ...]
    baseline_delta: float | None

    def to_dict(self) -> dict[str, Any]:
        """``{"blessed": bool, "reasons": [str], "baseline_delta": float | None}``."""
        return {
            "blessed": self.blessed,
            "reasons": list(self.reasons),
            "baseline_delta": self.baseline_delta,
        }


NO_BASELINE = "no baseline to compare with"


def bless(
    current: Metrics,
    baseline: Metrics | None = None,
    thresholds: BlessingThresholds | None = None,
) -> Blessing:
    """Check ``current`` against the thresholds (the defaults when None) and the baseline's."""
    if baseline is not None and type(baseline) is not type(current):
        raise ValueError(f"cannot compare {current.KIND} metrics with a {baseline.KIND} baseline")
    reasons: list[str] = []
    delta: float | None = None
    th = thresholds or BlessingThresholds()
    if isinstance(current, ClassificationMetrics):
        acc = current.accuracy
        if th.min_accuracy is not None and acc < th.min_accuracy - _EPS:
            reasons.append(f"accuracy {acc:.4f} is below the minimum of {th.min_accuracy:.4f}")
        if isinstance(baseline, ClassificationMetrics):
            delta = acc - baseline.accuracy
            if -delta > th.max_accuracy_drop + _EPS:
                reasons.append(
                    f"accuracy {acc:.4f} is {-delta:.4f} below the baseline's "
                    f"{baseline.accuracy:.4f}; the most allowed is {th.max_accuracy_drop:.4f}"
                )
    else:
        rmse = current.rmse
        if th.max_rmse is not None and rmse > th.max_rmse + _EPS:
            reasons.append(f"RMSE {rmse:.4g} is above the maximum of {th.max_rmse:.4g}")
        if isinstance(baseline, RegressionMetrics):
            if baseline.rmse > 0:
                delta = rmse / baseline.rmse - 1
            elif rmse == 0:
                delta = 0.0
            if delta is None or delta > th.max_rmse_increase + _EPS:
                worse = "" if delta is None else f"{delta:.1%} "
                reasons.append(
                    f"RMSE {rmse:.4g} is {worse}above the baseline's {baseline.rmse:.4g}; "
                    f"the most allowed is {th.max_rmse_increase:.1%}"
                )
    blessed = not reasons
    if baseline is None:
        reasons.append(NO_BASELINE)
    return Blessing(blessed, tuple(reasons), delta)
