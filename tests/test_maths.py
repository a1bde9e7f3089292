"""Pure functions: quantization arithmetic, fidelity measures, latency summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from converters.config import Task
from converters.fidelity import compare, infer_task, snr_db
from device_agent.benchmark import LatencySummary
from edgeops.core.tensors import TensorInfo, dequantize, quantize


def test_quantize_round_trip_within_half_a_step() -> None:
    info = TensorInfo("x", (-1, 4), "int8", scale=0.05, zero_point=-10)
    x = np.linspace(-5, 5, 101, dtype=np.float32)
    back = dequantize(quantize(x, info), info)
    inside = (x >= info.scale * (-128 + 10)) & (x <= info.scale * (127 + 10))
    assert np.max(np.abs(back[inside] - x[inside])) <= info.scale / 2 + 1e-6
    assert quantize(np.array([1e6]), info)[0] == 127  # saturates


def test_snr() -> None:
    ref = np.ones(100, dtype=np.float32)
    assert snr_db(ref, ref) is None
    noisy = ref + 0.1
    assert snr_db(ref, noisy) == pytest.approx(20.0)


def test_compare_classifier() -> None:
    src = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
    conv = np.eye(4, dtype=np.float32)[[0, 1, 2, 0]]
    f = compare(["p"], [src], [conv], np.array([0, 1, 2, 3]))
    assert f.task is Task.CLASSIFICATION
    assert f.agreement == 0.75
    assert f.source_accuracy == 1.0 and f.converted_accuracy == 0.75
    assert f.accuracy_drop_points == pytest.approx(25.0)
    assert f.outputs[0].max_abs_error == 1.0


def test_compare_regressor() -> None:
    src = np.array([[1.0], [2.0]], dtype=np.float32)
    conv = np.array([[1.5], [2.0]], dtype=np.float32)
    f = compare(["y"], [src], [conv], np.array([1.0, 3.0]))
    assert f.task is Task.REGRESSION and f.agreement is None
    assert f.source_mae == pytest.approx(0.5) and f.converted_mae == pytest.approx(0.75)
    assert f.converted_rmse == pytest.approx(math.sqrt((0.25 + 1) / 2))


def test_binary_scores_with_01_labels_are_a_classifier() -> None:
    assert infer_task([np.array([[0.2], [0.9]])], np.array([0, 1]))[0] is Task.CLASSIFICATION
    assert infer_task([np.array([[0.2], [0.9]])], np.array([0.5, 3.0]))[0] is Task.REGRESSION


def test_latency_summary() -> None:
    s = LatencySummary.of([0.001] * 98 + [0.010, 0.020])
    assert s.count == 100 and s.p50_ms == pytest.approx(1.0)
    assert s.max_ms == pytest.approx(20.0) and s.p99_ms > s.p90_ms
