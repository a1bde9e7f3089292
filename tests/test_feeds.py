"""Model inputs for many samples (edgeops.core.feeds) and task-aware fidelity
(converters.fidelity)."""

from __future__ import annotations

import numpy as np
import pytest

from converters.config import Task
from converters.fidelity import compare, cosine, infer_task, iou, snr_db
from edgeops.core.errors import InputDataError
from edgeops.core.feeds import bind, parse_shape, random_feeds
from edgeops.core.tensors import TensorInfo

VAD = (
    TensorInfo("input", (-1, -1), "float32"),
    TensorInfo("state", (2, -1, 128), "float32"),
    TensorInfo("sr", (), "int64"),
)


def _vad_arrays(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input": rng.random((n, 576), dtype=np.float32),
        "state": rng.random((n, 2, 1, 128), dtype=np.float32),
        "sr": np.array(16000, np.int64),
    }


def test_multi_input_samples_run_one_call_each() -> None:
    feeds = bind(_vad_arrays(3), VAD, "data")
    assert len(feeds) == 3 and feeds.whole == (False, True, True) and not feeds.batchable
    calls = list(feeds.calls())
    assert len(calls) == 3
    arrays, real = calls[1]
    assert [a.shape for a in arrays] == [(1, 576), (2, 1, 128), ()] and real == 1
    assert arrays[2].dtype == np.int64 and int(arrays[2]) == 16000
    outs = feeds.run(lambda a: [a[0].sum(keepdims=True), a[1] * 2])
    assert outs[0].shape == (3, 1, 1) and outs[1].shape == (3, 2, 1, 128)


def test_fixed_batch_runs_one_sample_per_call() -> None:
    info = (TensorInfo("x", (1, 3), "float32"),)
    feeds = bind({"x": np.arange(30, dtype=np.float32).reshape(10, 3)}, info, "data")
    assert feeds.fixed_batch == 1 and feeds.batchable
    assert [(a[0].shape, real) for a, real in feeds.calls()] == [((1, 3), 1)] * 10
    out = feeds.run(lambda a: [a[0] + 1])
    np.testing.assert_array_equal(out[0], np.arange(30).reshape(10, 3) + 1)
    free = bind({"x": np.zeros((300, 3))}, (TensorInfo("x", (-1, 3), "float32"),), "data")
    assert [a[0].shape[0] for a, _ in free.calls()] == [256, 44]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"input": np.zeros((3, 576))}, r"no array for input 'state', 'sr'"),
        (
            {"input": np.zeros((3, 576)), "state": np.zeros((2, 2, 1, 128)), "sr": np.zeros(3)},
            "different numbers of samples",
        ),
        (
            {"input": np.zeros((3, 576)), "state": np.zeros((3, 2, 128)), "sr": np.zeros(3)},
            r"input 'state' have shape \(2, 128\)",
        ),
        (
            {"input": np.zeros((3, 576)), "state": np.zeros((3, 2, 1, 128)), "sr": np.full(3, 0.5)},
            r"takes int64 values, the file holds fractions",
        ),
        (
            {"input": np.full((3, 576), np.nan), "state": np.zeros((3, 2, 1, 128)), "sr": 16000},
            "NaN",
        ),
        (
            {"input": np.array(["a", "b", "c"]), "state": np.zeros((3, 2, 1, 128)), "sr": 1},
            "not numbers",
        ),
    ],
)
def test_bad_multi_input_data_says_what_is_wrong(arrays: dict[str, object], message: str) -> None:
    with pytest.raises(InputDataError, match=message):
        bind({k: np.asarray(v) for k, v in arrays.items()}, VAD, "validation data")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("x=1x3x640x640", ("x", (1, 3, 640, 640))), ("sr=", ("sr", ())), (" a =2X3", ("a", (2, 3)))],
)
def test_parse_shape(text: str, expected: tuple[str, tuple[int, ...]]) -> None:
    assert parse_shape(text) == expected


@pytest.mark.parametrize(
    "text", ["x", "=1x2", "x=1x-3", "x=1xa", "x=0", "x=99999999", "x=" + "x".join(["2"] * 9)]
)
def test_parse_shape_refuses_hostile_values(text: str) -> None:
    with pytest.raises(InputDataError, match="--shape"):
        parse_shape(text)


def test_random_feeds_need_the_size_of_flexible_dimensions() -> None:
    det = (TensorInfo("x", (-1, 3, -1, -1), "float32"),)
    with pytest.raises(InputDataError, match=r"flexible dimensions.*--shape x=1x3xNxN"):
        random_feeds(det)
    feeds = random_feeds(det, {"x": (1, 3, 64, 32)})
    assert [a.shape for a in feeds.one_call(0)] == [(1, 3, 64, 32)]
    with pytest.raises(InputDataError, match="does not fit"):
        random_feeds(det, {"x": (1, 4, 64, 32)})
    with pytest.raises(InputDataError, match="names no input y"):
        random_feeds(det, {"y": (1,)})


def test_task_inference_fits_the_outputs() -> None:
    rng = np.random.default_rng(0)
    softmax = rng.random((5, 4, 10)).astype(np.float32)
    softmax /= softmax.sum(-1, keepdims=True)
    cases = [
        ([rng.random((5, 1, 32, 32), dtype=np.float32)], None, Task.DENSE),
        ([softmax], None, Task.CLASSIFICATION),
        ([rng.normal(size=(5, 8, 16)).astype(np.float32)], None, Task.DENSE),
        (
            [rng.normal(size=(5, 896, 16)).astype(np.float32), rng.normal(size=(5, 896, 1))],
            None,
            Task.DETECTION,
        ),
        ([rng.random((5, 10), dtype=np.float32)], np.arange(5), Task.CLASSIFICATION),
        ([rng.random((5, 1), dtype=np.float32)], None, Task.CLASSIFICATION),
        ([rng.normal(size=(5, 1)).astype(np.float32)], rng.normal(size=5), Task.REGRESSION),
    ]
    for outputs, labels, task in cases:
        found, reason = infer_task(outputs, labels)
        assert found is task and reason, (outputs[0].shape, found, reason)


def test_dense_fidelity_has_iou_and_no_agreement() -> None:
    rng = np.random.default_rng(1)
    ref = rng.random((4, 1, 16, 16)).astype(np.float32)
    noisy = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1).astype(np.float32)
    f = compare(["map"], [ref], [noisy], None)
    assert f.task is Task.DENSE and f.agreement is None and f.threshold == 0.5
    (o,) = f.outputs
    assert o.iou is not None and 0.8 < o.iou < 1.0
    assert o.cosine is not None and o.cosine > 0.98 and o.snr_db is not None and o.snr_db > 15


def test_measures_on_edge_cases() -> None:
    zeros = np.zeros((3, 4), np.float32)
    assert snr_db(zeros, zeros) is None and cosine(zeros, zeros) == 1.0
    assert snr_db(zeros, zeros + 1) == -100.0  # no signal left: the floor, not -inf
    assert snr_db(np.ones(3, np.float32), np.array([1, np.nan, 1], np.float32)) == -100.0
    empty = np.zeros((2, 2), bool)
    assert iou(empty, empty) == 1.0 and iou(empty, ~empty) == 0.0


def test_non_numeric_inputs_are_refused() -> None:
    for dtype in ("tensor(string)", "str"):
        info = (TensorInfo("text", (-1,), dtype),)
        with pytest.raises(InputDataError, match="edgeops feeds numbers"):
            bind({"text": np.zeros(3)}, info, "data")
