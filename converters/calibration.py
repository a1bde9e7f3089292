"""Representative data for calibration: which samples, and in which form each library wants them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt


def pick_samples(x: npt.NDArray[Any], n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """Up to ``n`` samples drawn without replacement by a seeded shuffle.

    A shuffle rather than the first ``n`` rows: files are often sorted by class or time, and
    calibrating on one class gives ranges that clip the others.
    """
    idx = np.random.default_rng(seed).permutation(len(x))[: min(n, len(x))]
    return np.ascontiguousarray(x[np.sort(idx)], dtype=np.float32)


def batches(x: npt.NDArray[np.float32], size: int = 1) -> Iterator[npt.NDArray[np.float32]]:
    for start in range(0, len(x), size):
        yield x[start : start + size]


class OnnxCalibrationReader:
    """onnxruntime's ``CalibrationDataReader`` protocol over an array, one sample per batch."""

    def __init__(self, input_name: str, x: npt.NDArray[np.float32]) -> None:
        self._name = input_name
        self._x = x
        self._it = batches(x)

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        batch = next(self._it, None)
        return None if batch is None else {self._name: batch}

    def rewind(self) -> None:
        self._it = batches(self._x)
