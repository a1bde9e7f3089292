"""Representative data for calibration: which samples, and in which form each library wants them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeops.core.feeds import Feeds


def pick_samples(feeds: Feeds, n: int, seed: int = 0) -> Feeds:
    """Up to ``n`` samples drawn without replacement by a seeded shuffle.

    A shuffle rather than the first ``n`` rows: files are often sorted by class or time, and
    calibrating on one class gives ranges that clip the others.
    """
    idx = np.random.default_rng(seed).permutation(len(feeds))[: min(n, len(feeds))]
    return feeds.take(np.sort(idx))


def calls(feeds: Feeds) -> Iterator[list[npt.NDArray[Any]]]:
    """One sample per call, as the arrays of that call (in input order)."""
    for arrays, _ in feeds.calls(max_batch=1):
        yield arrays


class OnnxCalibrationReader:
    """onnxruntime's ``CalibrationDataReader`` protocol over feeds, one sample per call."""

    def __init__(self, feeds: Feeds) -> None:
        self._feeds = feeds
        self._it = calls(feeds)

    def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
        arrays = next(self._it, None)
        return None if arrays is None else dict(zip(self._feeds.names, arrays, strict=True))

    def rewind(self) -> None:
        self._it = calls(self._feeds)
