"""Telemetry windows on real data (wine, digits, diabetes) against direct numpy computations."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from sklearn.datasets import load_diabetes, load_digits, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edgeops.core.profile import (
    CategoricalProfile,
    NumericProfile,
    Profile,
    TensorProfile,
    profile_categorical,
    profile_class_outputs,
    profile_numeric,
    profile_regression_outputs,
    profile_tensor,
)
from edgeops.core.stats import reduce_tensor
from edgeops.core.window.accumulator import Moment, WindowAccumulator, WindowStats, input_baselines
from edgeops.core.window.merge import (
    class_output_probs,
    merge_categorical,
    merge_class_output,
    merge_numeric,
    merge_windows,
    window_moments,
    window_probs,
)
from edgeops.core.wire import (
    CategoricalWindow,
    ClassOutputWindow,
    ModelRef,
    NumericWindow,
    Telemetry,
)

# --- data ---------------------------------------------------------------------------------------

_wine = load_wine()
WINE_NAMES = [n.replace("/", "_") for n in _wine.feature_names]
_order = np.random.default_rng(0).permutation(len(_wine.data))
TRAIN, LIVE = _order[:120], _order[120:]
LABELS = ["class_0", "class_1", "class_2"]


def hue_band(x: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
    """The hue measurement's tercile (on the training rows) as text, like samples.wine_csv."""
    hue = _wine.data[:, WINE_NAMES.index("hue")]
    cuts = np.quantile(hue[TRAIN], [1 / 3, 2 / 3])
    return np.array(["low", "mid", "high"], dtype=object)[np.searchsorted(cuts, x, side="right")]


def wine_columns(rows: npt.NDArray[np.intp]) -> dict[str, npt.NDArray[Any]]:
    cols: dict[str, npt.NDArray[Any]] = {
        n: _wine.data[rows, j].copy() for j, n in enumerate(WINE_NAMES)
    }
    cols["hue_band"] = hue_band(cols["hue"])
    return cols


_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
_model.fit(_wine.data[TRAIN], _wine.target[TRAIN])
_train = wine_columns(TRAIN)
WINE_PROFILE = Profile(
    (
        *(profile_numeric(n, _train[n]) for n in WINE_NAMES),
        profile_categorical("hue_band", _train["hue_band"]),
    ),
    (profile_class_outputs(_model.predict_proba(_wine.data[TRAIN]), LABELS),),
)


def live_wine() -> tuple[dict[str, npt.NDArray[Any]], npt.NDArray[np.float64]]:
    """The held-out rows, with missing values, values outside the training range, infinities,
    unseen and missing categories; and the model's probabilities, with a NaN row."""
    cols = wine_columns(LIVE)
    mg = cols["magnesium"].astype(object)
    mg[[0, 5, 9]] = None  # JSON nulls arrive as None in object arrays
    mg[11] = np.nan
    cols["magnesium"] = mg
    cols["alcohol"][[1, 2, 3]] *= 1.6  # above the training max
    cols["proline"][4] = -math.inf
    cols["proline"][6] = math.inf
    cols["color_intensity"][[7, 8]] = np.nan
    band = cols["hue_band"]
    band[[0, 1]] = "extreme"  # not a baseline category: other
    band[2], band[3], band[4] = None, "", np.nan  # missing
    probs = _model.predict_proba(_wine.data[LIVE])
    probs[10] = np.nan
    return cols, probs


# --- references, straight from numpy -----------------------------------------------------------


def as_float(values: Sequence[Any] | npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def check_numeric(w: NumericWindow, values: npt.ArrayLike, baseline: NumericProfile) -> None:
    v = as_float(np.asarray(values, dtype=object).ravel())
    ok = v[~np.isnan(v)]
    bins = np.concatenate([[-np.inf], baseline.edges, [np.inf]])
    assert w.counts == np.histogram(ok, bins=bins)[0].tolist(), w.name
    assert w.missing == int(np.isnan(v).sum()), w.name
    lo, hi = baseline.moments.min, baseline.moments.max
    assert w.out_of_range == int(np.count_nonzero((ok < lo) | (ok > hi))), w.name
    finite = ok[np.isfinite(ok)]
    assert w.count == finite.size
    if finite.size:
        assert w.mean == pytest.approx(finite.mean(), rel=1e-12, abs=1e-12)
        assert w.m2 == pytest.approx(((finite - finite.mean()) ** 2).sum(), rel=1e-9, abs=1e-9)
        assert (w.min, w.max) == (finite.min(), finite.max())
    else:
        assert w.mean is None and w.min is None and w.max is None


def check_categorical(w: CategoricalWindow, values: Sequence[Any], p: CategoricalProfile) -> None:
    counts, other, missing = [0] * len(p.categories), 0, 0
    for v in values:
        if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
            missing += 1
        elif str(v) in p.categories:
            counts[p.categories.index(str(v))] += 1
        else:
            other += 1
    assert (w.counts, w.other, w.missing) == (counts, other, missing)


def check_classes(w: ClassOutputWindow, probs: npt.NDArray[np.float64], edges: Any) -> None:
    p = probs[~np.isnan(probs).any(axis=1)]
    if p.shape[1] == 1:
        pred, conf = (p[:, 0] >= 0.5).astype(int), np.maximum(p[:, 0], 1 - p[:, 0])
    else:
        pred, conf = p.argmax(axis=1), p.max(axis=1)
    assert w.class_counts == np.bincount(pred, minlength=len(w.class_counts)).tolist()
    bins = np.concatenate([[-np.inf], edges, [np.inf]])
    assert w.confidence_counts == np.histogram(conf, bins=bins)[0].tolist()


def check_wine(stats: WindowStats, cols: Mapping[str, Any], probs: Any) -> None:
    baselines = input_baselines(WINE_PROFILE)
    assert [w.name for w in stats.inputs] == list(baselines)
    for w in stats.inputs:
        b = baselines[w.name]
        if isinstance(w, NumericWindow):
            assert isinstance(b, NumericProfile)
            check_numeric(w, cols[w.name], b)
        else:
            assert isinstance(w, CategoricalWindow) and isinstance(b, CategoricalProfile)
            check_categorical(w, list(cols[w.name]), b)
    (out,) = stats.outputs
    assert isinstance(out, ClassOutputWindow)
    check_classes(out, probs, WINE_PROFILE.outputs[0].confidence_edges)  # type: ignore[union-attr]


def one_row(cols: Mapping[str, npt.NDArray[Any]], i: int) -> dict[str, npt.NDArray[Any]]:
    """Row ``i`` as the agent passes it: one-element arrays."""
    return {k: v[i : i + 1] for k, v in cols.items()}


def chunks(n: int, seed: int) -> Iterator[slice]:
    rng = np.random.default_rng(seed)
    start = 0
    while start < n:
        size = int(rng.choice([1, 1, 2, 5, 17]))
        yield slice(start, min(start + size, n))
        start += size


# --- tabular ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["rows", "rows-small-queue", "lists", "batch", "chunks"])
def test_wine_window_matches_numpy(how: str) -> None:
    cols, probs = live_wine()
    n = len(probs)
    acc = WindowAccumulator(
        WINE_PROFILE, "classification", queue_rows=5 if how == "rows-small-queue" else 256
    )
    if how in ("rows", "rows-small-queue"):
        for i in range(n):
            acc.observe_inputs(one_row(cols, i))
            acc.observe_outputs(probs[i : i + 1])
    elif how == "lists":  # one-element lists and bare scalars
        for i in range(n):
            acc.observe_inputs({k: [v[i]] if i % 2 else v[i] for k, v in cols.items()})
            acc.observe_outputs(probs[i : i + 1].tolist())
    elif how == "batch":
        acc.observe_inputs(cols)
        acc.observe_outputs(probs)
    else:
        for s in chunks(n, seed=1):
            acc.observe_inputs({k: v[s] for k, v in cols.items()})
            acc.observe_outputs(probs[s])
    stats = acc.snapshot()
    assert stats.count == n
    check_wine(stats, cols, probs)


def test_the_training_rows_reproduce_the_baseline() -> None:
    cols = wine_columns(TRAIN)
    acc = WindowAccumulator(WINE_PROFILE, "classification")
    for i in range(len(TRAIN)):
        acc.observe_inputs(one_row(cols, i))
    acc.observe_outputs(_model.predict_proba(_wine.data[TRAIN]))
    stats = acc.snapshot()
    for w, p in zip(stats.inputs, WINE_PROFILE.inputs, strict=True):
        if isinstance(w, NumericWindow):
            assert isinstance(p, NumericProfile)
            assert tuple(w.counts) == p.counts and w.missing == p.missing
            assert w.out_of_range == 0
            np.testing.assert_array_equal(window_probs(w), p.probs)
            m = window_moments(w)
            assert m.count == p.moments.count and m.mean == pytest.approx(p.moments.mean)
            assert m.std == pytest.approx(p.moments.std) and m.max == p.moments.max
        else:
            assert isinstance(w, CategoricalWindow) and isinstance(p, CategoricalProfile)
            assert (tuple(w.counts), w.other, w.missing) == (p.counts, p.other, p.missing)
            np.testing.assert_array_equal(window_probs(w), p.probs)
    (out,), (baseline,) = stats.outputs, WINE_PROFILE.outputs
    assert isinstance(out, ClassOutputWindow)
    assert tuple(out.class_counts) == baseline.class_counts  # type: ignore[union-attr]
    classes, confidence = class_output_probs(out)
    np.testing.assert_array_equal(classes, baseline.class_probs)  # type: ignore[union-attr]
    np.testing.assert_array_equal(confidence, baseline.confidence_probs)  # type: ignore[union-attr]


def test_absent_features_count_as_missing() -> None:
    acc = WindowAccumulator(WINE_PROFILE, "classification")
    acc.observe_inputs({"alcohol": [13.0, 14.0, None]})
    acc.observe_inputs({"alcohol": np.array([12.5]), "unknown": [1]})
    acc.observe_inputs({"unknown": [1, 2, 3, 4]})  # nothing of the baseline: 4 rows missing
    acc.observe_inputs({})
    by_name = {w.name: w for w in acc.snapshot().inputs}
    alcohol = by_name.pop("alcohol")
    assert isinstance(alcohol, NumericWindow)
    assert sum(alcohol.counts) == 3 and alcohol.missing == 5
    assert all(w.missing == 8 for w in by_name.values())


@pytest.mark.parametrize(
    "columns",
    [
        {"alcohol": ["a lot"]},
        {"alcohol": np.array(["1.0", "x"])},
        {"alcohol": [1.0, 2.0], "malic_acid": [1.0]},
        {"alcohol": np.ones((2, 2))},
        {"alcohol": [1.0], "hue_band": [["low"]]},
    ],
)
def test_bad_inputs_raise_and_count_nothing(columns: dict[str, Any]) -> None:
    acc = WindowAccumulator(WINE_PROFILE, "classification")
    with pytest.raises(ValueError):
        acc.observe_inputs(columns)
    stats = acc.snapshot()
    assert all(sum(w.counts) == 0 and w.missing == 0 for w in stats.inputs)


# --- images -------------------------------------------------------------------------------------

_digits = load_digits()
IMAGES = _digits.images  # [N, 8, 8], float64 pixel values 0..16
DIGITS_PROFILE = Profile(
    (profile_tensor("image", IMAGES[:1200], reductions=("mean", "std", "max")),),
    (profile_class_outputs(np.eye(10)[_digits.target[:1200]] * 0.9 + 0.01, list("0123456789")),),
)


def check_tensor(stats: WindowStats, profile: Profile, x: npt.NDArray[Any]) -> None:
    (tensor,) = profile.inputs
    assert isinstance(tensor, TensorProfile)
    reduced = reduce_tensor(x, tensor.reductions, channels_last=tensor.channels_last)
    assert [w.name for w in stats.inputs] == [f"{tensor.name}:{f.name}" for f in tensor.features]
    for w, f in zip(stats.inputs, tensor.features, strict=True):
        assert isinstance(w, NumericWindow)
        check_numeric(w, reduced[f.name], f)


@pytest.mark.parametrize("how", ["one", "batch", "chunks"])
def test_digits_window_matches_numpy(how: str) -> None:
    live = IMAGES[1200:].astype(np.float32)  # the agent's inputs are float32
    live[:40] *= 1.7  # brighter than anything in training
    live[40, 3, 3] = np.nan
    acc = WindowAccumulator(DIGITS_PROFILE, "classification", queue_rows=64)
    if how == "one":
        for i in range(len(live)):
            acc.observe_inputs({"image": live[i : i + 1]})
    elif how == "batch":
        acc.observe_inputs({"image": live})
    else:
        for s in chunks(len(live), seed=2):
            acc.observe_inputs({"image": live[s]})
    stats = acc.snapshot()
    check_tensor(stats, DIGITS_PROFILE, live)
    assert sum(w.out_of_range for w in stats.inputs if isinstance(w, NumericWindow)) > 0
    assert all(w.missing == 1 for w in stats.inputs)


def rgb(seed: int, dtype: str) -> npt.NDArray[Any]:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 40.0, size=(300, 6, 6, 3)) * np.array([1.0, 0.7, 1.3])
    return np.asarray(x.clip(0, 255).astype(np.uint8) if dtype == "uint8" else x.astype(dtype))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: IMAGES[:1200], id="digits-float64"),
        pytest.param(lambda: IMAGES[:1200].astype(np.float32), id="digits-float32"),
        pytest.param(lambda: rgb(0, "float32"), id="rgb-float32"),
        pytest.param(lambda: rgb(1, "uint8"), id="rgb-uint8"),
    ],
)
def test_the_training_images_reproduce_the_baseline_exactly(data: Any) -> None:
    """Edges are observed values: one sample at a time must land exactly where the baseline's
    batch put it, so the reductions must be computed the same way, bit for bit."""
    x = data()
    tensor = profile_tensor("x", x, reductions=("mean", "std", "min", "max"))
    acc = WindowAccumulator(Profile((tensor,)), "regression", queue_rows=37)
    buffer = np.empty_like(x[:1])
    for i in range(len(x)):
        buffer[...] = x[i : i + 1]  # the caller reuses its array: the window must copy it
        acc.observe_inputs({"x": buffer})
    stats = acc.snapshot()
    for w, f in zip(stats.inputs, tensor.features, strict=True):
        assert isinstance(w, NumericWindow)
        assert (tuple(w.counts), w.missing, w.out_of_range) == (f.counts, f.missing, 0), w.name
        assert w.count == f.moments.count and w.mean == pytest.approx(f.moments.mean)


def test_tensor_inputs_of_the_wrong_shape() -> None:
    acc = WindowAccumulator(DIGITS_PROFILE, "classification")
    for bad in (IMAGES[0], IMAGES[:2, :, :, None], np.full((1, 8, 8), "x")):
        with pytest.raises(ValueError):
            acc.observe_inputs({"image": bad})
    acc.observe_inputs({"image": np.ones((1, 9, 9))})  # another size, same rank: reduced alone
    acc.observe_inputs({"other": np.ones((3, 8, 8))})  # the image absent: 3 missing
    stats = acc.snapshot()
    assert all(sum(w.counts) == 1 and w.missing == 3 for w in stats.inputs)


# --- outputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("one", [True, False])
def test_classifier_outputs_match_numpy(one: bool) -> None:
    model = LogisticRegression(max_iter=2000).fit(
        IMAGES[:1200].reshape(1200, -1) / 16, _digits.target[:1200]
    )
    probs = model.predict_proba(IMAGES[1200:].reshape(-1, 64) / 16).astype(np.float32)
    probs[5] = np.nan
    acc = WindowAccumulator(DIGITS_PROFILE, "classification", queue_rows=50)
    if one:
        for i in range(len(probs)):
            acc.observe_outputs(probs[i : i + 1])
    else:
        acc.observe_outputs(probs)
    stats = acc.snapshot()
    assert stats.count == len(probs)
    (out,) = stats.outputs
    assert isinstance(out, ClassOutputWindow)
    check_classes(out, probs.astype(np.float64), DIGITS_PROFILE.outputs[0].confidence_edges)  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        acc.observe_outputs(probs[:, :9])
    with pytest.raises(ValueError):
        acc.observe_outputs(probs[0])


def test_binary_classifier_with_one_or_two_columns() -> None:
    rng = np.random.default_rng(7)
    p = np.concatenate([rng.random(500), [0.5, 0.5, 0.0, 1.0]])[:, None]
    profile = Profile((), (profile_class_outputs(rng.random((200, 1)), ["no", "yes"]),))
    acc = WindowAccumulator(profile, "classification", queue_rows=64)
    for i in range(len(p)):  # the same predictions as [p] and as [1 - p, p], interleaved
        acc.observe_outputs(p[i : i + 1] if i % 3 else np.hstack([1 - p, p])[i : i + 1])
    (out,) = acc.snapshot().outputs
    assert isinstance(out, ClassOutputWindow)
    edges = profile.outputs[0].confidence_edges  # type: ignore[union-attr]
    one, two = p[[i for i in range(len(p)) if i % 3]], p[[i for i in range(len(p)) if not i % 3]]
    ref_one = ClassOutputWindow(name="x", class_counts=[0, 0], confidence_counts=[0] * 10)
    for part, as_two in ((one, False), (two, True)):
        probs = np.hstack([1 - part, part]) if as_two else part
        w = WindowAccumulator(profile, "classification")
        w.observe_outputs(probs)
        (o,) = w.snapshot().outputs
        assert isinstance(o, ClassOutputWindow)
        check_classes(o, probs, edges)
        ref_one = merge_class_output(
            ref_one,
            ClassOutputWindow(
                name="x", class_counts=o.class_counts, confidence_counts=o.confidence_counts
            ),
        )
    assert out.class_counts == ref_one.class_counts
    assert out.confidence_counts == ref_one.confidence_counts


@pytest.mark.parametrize("one", [True, False])
def test_regressor_outputs_match_numpy(one: bool) -> None:
    d = load_diabetes()
    a = Ridge().fit(d.data[:300], d.target[:300]).predict(d.data)
    b = Ridge(alpha=10).fit(d.data[:300], d.target[:300]).predict(d.data)
    single = Profile((), profile_regression_outputs("prediction", a[:300]))
    double = Profile((), profile_regression_outputs("prediction", np.c_[a, b][:300]))
    assert [p.name for p in double.outputs] == ["prediction[0]", "prediction[1]"]
    live = np.c_[a, b][300:] * 1.2
    live[3, 1] = np.nan
    for profile, outputs in ((single, live[:, 0]), (double, live)):
        acc = WindowAccumulator(profile, "regression", queue_rows=40)
        if one:
            for i in range(len(outputs)):
                acc.observe_outputs(outputs[i : i + 1])
        else:
            acc.observe_outputs(outputs)
        stats = acc.snapshot()
        assert stats.count == len(outputs)
        for j, (w, p) in enumerate(zip(stats.outputs, profile.outputs, strict=True)):
            assert isinstance(w, NumericWindow) and isinstance(p, NumericProfile)
            check_numeric(w, outputs.reshape(len(outputs), -1)[:, j], p)
    with pytest.raises(ValueError):
        WindowAccumulator(double, "regression").observe_outputs(live[:, 0])


def test_task_and_baseline_must_agree() -> None:
    with pytest.raises(ValueError):
        WindowAccumulator(DIGITS_PROFILE, "regression")
    with pytest.raises(ValueError):
        WindowAccumulator(
            Profile((), profile_regression_outputs("y", [1.0, 2.0])), "classification"
        )
    with pytest.raises(ValueError):
        WindowAccumulator(WINE_PROFILE, "ranking")  # type: ignore[arg-type]


def test_an_empty_baseline_counts_predictions_only() -> None:
    acc = WindowAccumulator(Profile((), (), 10), "classification")
    acc.observe_inputs({"x": [1.0, 2.0]})
    acc.observe_outputs(np.zeros((3, 4)))
    acc.observe_outputs(np.zeros((1, 4)))
    stats = acc.snapshot()
    assert stats.count == 4 and stats.inputs == [] and stats.outputs == []


def test_empty_batches_count_nothing() -> None:
    acc = WindowAccumulator(DIGITS_PROFILE, "classification")
    acc.observe_inputs({"image": np.zeros((0, 8, 8))})
    acc.observe_outputs(np.zeros((0, 10)))
    reg = WindowAccumulator(Profile((), profile_regression_outputs("y", [1.0, 2.0])), "regression")
    reg.observe_outputs(np.zeros(0))
    reg.observe_outputs(np.zeros((0, 1)))
    stats = acc.snapshot()
    assert stats.count == 0 and all(sum(w.counts) + w.missing == 0 for w in stats.inputs)
    (out,) = stats.outputs
    assert isinstance(out, ClassOutputWindow) and sum(out.class_counts) == 0
    (y,) = reg.snapshot().outputs
    assert isinstance(y, NumericWindow) and sum(y.counts) == 0 and y.count == 0


# --- counters, snapshots, threads ---------------------------------------------------------------


def test_counters_feedback_and_latency() -> None:
    acc = WindowAccumulator(WINE_PROFILE, "classification", relative_accuracy=0.02)
    acc.count_error()
    acc.count_error(3)
    acc.count_bad_input()
    acc.observe_feedback(True)
    acc.observe_feedback(False)
    acc.observe_feedback(np.array([True, True, False]))
    acc.observe_feedback([1, 0, 1])
    with pytest.raises(ValueError):
        acc.observe_feedback([2])
    with pytest.raises(ValueError):
        acc.count_error(-1)
    for ms in (1.0, 2.0, 3.0):
        acc.observe_latency(ms)
    acc.observe_latency(np.array([4.0, 5.0]))
    stats = acc.snapshot()
    assert (stats.errors, stats.bad_inputs) == (4, 1)
    assert (stats.feedback.correct, stats.feedback.total) == (5, 8)
    assert stats.latency.count == 5 and stats.latency.relative_accuracy == 0.02
    assert (stats.latency.min, stats.latency.max, stats.latency.sum) == (1.0, 5.0, 15.0)


def test_snapshot_reset_and_window_times() -> None:
    mono, wall = [100.0], [1_700_000_000.0]
    acc = WindowAccumulator(
        WINE_PROFILE, "classification", clock=lambda: mono[0], wall_clock=lambda: wall[0]
    )
    cols, probs = live_wine()
    acc.observe_inputs(one_row(cols, 0))
    acc.observe_outputs(probs[:1])
    acc.observe_latency(2.0)
    mono[0] += 10.0
    wall[0] += 3600.0  # the wall clock is stepped: windows follow the monotonic clock
    peek = acc.snapshot(reset=False)
    first = acc.snapshot()
    assert peek.count == first.count == 1 and peek.inputs == first.inputs
    assert (first.window_start, first.window_end) == (1_700_000_000.0, 1_700_000_010.0)
    mono[0] += 5.0
    second = acc.snapshot()
    assert (second.window_start, second.window_end) == (first.window_end, first.window_end + 5)
    assert second.count == 0 and second.latency.count == 0 and second.latency.buckets == {}
    assert all(sum(w.counts) == 0 and w.missing == 0 for w in second.inputs)
    (out,) = second.outputs
    assert isinstance(out, ClassOutputWindow) and sum(out.class_counts) == 0


def test_a_sealed_window_ends_where_the_next_opens() -> None:
    """A model switch: the old window is sealed, the new one opens at that moment, and a
    prediction that started on the old model still counts in the old window after that."""
    mono, wall = [50.0], [1_700_000_000.0]

    def window(opens: Moment | None = None) -> WindowAccumulator:
        return WindowAccumulator(
            WINE_PROFILE,
            "classification",
            clock=lambda: mono[0],
            wall_clock=lambda: wall[0],
            opens=opens,
        )

    old = window()
    _, probs = live_wine()
    old.observe_outputs(probs[:1])
    mono[0] += 2.0
    moment = old.seal()
    assert moment == Moment(1_700_000_002.0, 52.0)
    mono[0] += 1.0
    assert old.seal() == moment  # sealing again moves nothing
    new = window(opens=moment)
    assert new.age() == 1.0
    old.observe_outputs(probs[1:2])  # under way on the old model when it was sealed
    new.observe_outputs(probs[2:5])
    wall[0] += 100.0  # a wall-clock step changes neither window
    mono[0] += 3.0
    second = new.snapshot()  # the timer closes the new window first
    first = old.snapshot(reset=False)
    assert (first.window_start, first.window_end) == (1_700_000_000.0, 1_700_000_002.0)
    assert (second.window_start, second.window_end) == (1_700_000_002.0, 1_700_000_006.0)
    assert (first.count, second.count) == (2, 3)
    # A sealed window that is reset opens the next one at the sealed moment.
    again = window()
    sealed = again.seal()
    mono[0] += 5.0
    assert again.snapshot().window_end == sealed.wall
    assert again.snapshot().window_start == sealed.wall


def test_concurrent_observers_lose_nothing() -> None:
    cols, _ = live_wine()
    probs = _model.predict_proba(_wine.data[LIVE])
    rows = [one_row(cols, i) for i in range(len(probs))]
    acc = WindowAccumulator(WINE_PROFILE, "classification", queue_rows=16)
    threads, calls = 6, 1500
    snapshots: list[WindowStats] = []
    done = threading.Event()

    def observe(t: int) -> None:
        for i in range(calls):
            k = (t * calls + i) % len(rows)
            acc.observe_latency(1.0 + k)
            acc.observe_inputs(rows[k])
            acc.observe_outputs(probs[k : k + 1])
            if i % 100 == 0:
                acc.observe_inputs(cols)  # a batch now and then

    def snap() -> None:
        while not done.wait(0.002):
            snapshots.append(acc.snapshot())

    snapper = threading.Thread(target=snap)
    snapper.start()
    workers = [threading.Thread(target=observe, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    snapper.join()
    snapshots.append(acc.snapshot())
    total = threads * calls
    rows_seen = total + threads * (calls // 100) * len(probs)
    assert len(snapshots) > 2
    assert sum(s.count for s in snapshots) == total
    assert sum(s.latency.count for s in snapshots) == total
    for name in ("alcohol", "hue_band", "magnesium"):
        windows = [w for s in snapshots for w in s.inputs if w.name == name]
        seen = sum(sum(w.counts) + w.missing + getattr(w, "other", 0) for w in windows)
        assert seen == rows_seen, name
    for s in snapshots:  # each prediction's output is counted in the window that served it
        (out,) = s.outputs
        assert isinstance(out, ClassOutputWindow) and sum(out.class_counts) == s.count
    for a, b in itertools.pairwise(snapshots):
        assert b.window_start == a.window_end


# --- merging ------------------------------------------------------------------------------------


def test_merged_windows_equal_one_window_over_everything() -> None:
    cols, probs = live_wine()
    n = len(probs)
    whole = WindowAccumulator(WINE_PROFILE, "classification")
    whole.observe_inputs(cols)
    whole.observe_outputs(probs)
    everything = whole.snapshot()
    parts = WindowAccumulator(WINE_PROFILE, "classification", queue_rows=4)
    windows: list[WindowStats] = []
    for cut in (slice(0, 9), slice(9, 10), slice(10, 10), slice(10, 40), slice(40, n)):
        for i in range(cut.start, cut.stop):
            parts.observe_inputs(one_row(cols, i))
            parts.observe_outputs(probs[i : i + 1])
        windows.append(parts.snapshot())
    # through the wire and back, as the service receives them
    telemetry = [
        msgspec.json.decode(msgspec.json.encode(telemetry_of(w, seq)), type=Telemetry)
        for seq, w in enumerate(windows)
    ]
    inputs = merge_windows([t.inputs for t in telemetry])
    outputs = merge_windows([t.outputs for t in telemetry])
    assert [w.name for w in inputs] == [w.name for w in everything.inputs]
    for got, want in zip(
        [*inputs, *outputs], [*everything.inputs, *everything.outputs], strict=True
    ):
        if isinstance(got, NumericWindow):
            assert isinstance(want, NumericWindow)
            assert (got.counts, got.missing, got.out_of_range) == (
                want.counts,
                want.missing,
                want.out_of_range,
            )
            assert (got.count, got.min, got.max) == (want.count, want.min, want.max)
            assert got.mean == pytest.approx(want.mean, rel=1e-12)
            assert got.m2 == pytest.approx(want.m2, rel=1e-9)
        else:
            assert got == want
    check_wine(
        WindowStats(
            window_start=0,
            window_end=1,
            count=n,
            errors=0,
            bad_inputs=0,
            latency=everything.latency,
            inputs=inputs,
            outputs=outputs,
            feedback=everything.feedback,
        ),
        cols,
        probs,
    )


def telemetry_of(w: WindowStats, seq: int) -> Telemetry:
    return Telemetry(
        device="dev-1",
        boot="b1",
        seq=seq,
        sent=w.window_end,
        window_start=w.window_start,
        window_end=w.window_end,
        model=ModelRef(name="wine", version="1", sha256="0" * 64),
        count=w.count,
        errors=w.errors,
        bad_inputs=w.bad_inputs,
        latency=w.latency,
        inputs=w.inputs,
        outputs=w.outputs,
        feedback=w.feedback,
    )


def test_merges_refuse_windows_that_do_not_match() -> None:
    a = NumericWindow(name="x", counts=[1, 2, 3])
    with pytest.raises(ValueError, match="bins"):
        merge_numeric(a, NumericWindow(name="x", counts=[1, 2]))
    with pytest.raises(ValueError, match="cannot merge"):
        merge_numeric(a, NumericWindow(name="y", counts=[1, 2, 3]))
    with pytest.raises(ValueError):
        merge_categorical(
            CategoricalWindow(name="c", counts=[1]), CategoricalWindow(name="c", counts=[1, 2])
        )
    with pytest.raises(ValueError, match="confidence"):
        merge_class_output(
            ClassOutputWindow(name="k", class_counts=[1, 2], confidence_counts=[1]),
            ClassOutputWindow(name="k", class_counts=[1, 2], confidence_counts=[1, 2]),
        )
    with pytest.raises(ValueError, match="NumericWindow and a CategoricalWindow"):
        mixed: list[list[NumericWindow | CategoricalWindow]] = [
            [a],
            [CategoricalWindow(name="x", counts=[1, 2, 3])],
        ]
        merge_windows(mixed)
    with pytest.raises(ValueError, match="twice"):
        merge_windows([[a, a]])
    with pytest.raises(ValueError, match="needs mean, min and max"):  # cannot even be made
        merge_numeric(a, NumericWindow(name="x", counts=[1, 2, 3], count=2))


def test_merge_of_moments_is_chans() -> None:
    rng = np.random.default_rng(8)
    values = [rng.normal(5, 2, n) for n in (1, 10, 1000, 3)]
    windows = [
        NumericWindow(
            name="x",
            counts=[len(v)],
            count=len(v),
            mean=float(v.mean()),
            m2=float(((v - v.mean()) ** 2).sum()),
            min=float(v.min()),
            max=float(v.max()),
        )
        for v in values
    ]
    (merged,) = merge_windows([[w] for w in [NumericWindow(name="x", counts=[0]), *windows]])
    assert isinstance(merged, NumericWindow)
    everything = np.concatenate(values)
    assert merged.counts == [everything.size] and merged.count == everything.size
    assert merged.mean == pytest.approx(everything.mean(), rel=1e-12)
    assert merged.m2 == pytest.approx(((everything - everything.mean()) ** 2).sum(), rel=1e-12)
    assert (merged.min, merged.max) == (everything.min(), everything.max())
    assert window_moments(merged).std == pytest.approx(everything.std(), rel=1e-12)


def test_window_probs() -> None:
    assert window_probs(NumericWindow(name="x", counts=[1, 0, 3], missing=7)).tolist() == [
        0.25,
        0.0,
        0.75,
    ]
    assert window_probs(
        CategoricalWindow(name="c", counts=[1, 1], other=2, missing=5)
    ).tolist() == [
        0.25,
        0.25,
        0.5,
    ]
    assert window_probs(NumericWindow(name="x", counts=[0, 0], missing=3)).tolist() == [0.0, 0.0]
    classes, confidence = class_output_probs(
        ClassOutputWindow(name="k", class_counts=[3, 1], confidence_counts=[0, 2, 2])
    )
    assert classes.tolist() == [0.75, 0.25] and confidence.tolist() == [0.0, 0.5, 0.5]


def test_input_baselines_name_tensor_features() -> None:
    baselines = input_baselines(DIGITS_PROFILE)
    assert list(baselines) == ["image:mean[c0]", "image:std[c0]", "image:max[c0]"]
    clash = Profile(
        (profile_numeric("image:mean[c0]", [1.0, 2.0]), profile_tensor("image", IMAGES[:10]))
    )
    with pytest.raises(ValueError, match="image:mean"):
        input_baselines(clash)
    with pytest.raises(ValueError):
        WindowAccumulator(clash, "classification")
