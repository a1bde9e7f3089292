"""How far a converted model's outputs are from the source model's: pure functions over arrays."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from converters.config import Task

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class OutputError:
    """Per-output difference between converted and source outputs."""

    name: str
    max_abs_error: float
    mean_abs_error: float
    snr_db: float | None
    """Signal-to-noise ratio in dB; None when the outputs are identical."""


@dataclass(frozen=True)
class Fidelity:
    task: Task
    samples: int
    labelled: bool
    outputs: tuple[OutputError, ...]
    agreement: float | None = None
    """Top-1 agreement between converted and source predictions (classifiers)."""
    source_accuracy: float | None = None
    converted_accuracy: float | None = None
    source_mae: float | None = None
    converted_mae: float | None = None
    source_rmse: float | None = None
    converted_rmse: float | None = None

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.source_accuracy is None or self.converted_accuracy is None:
            return None
        return (self.source_accuracy - self.converted_accuracy) * 100.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["task"] = self.task.value
        d["accuracy_drop_points"] = self.accuracy_drop_points
        return d


def snr_db(reference: FloatArray, test: FloatArray) -> float | None:
    """10·log10(signal power / error power); None for identical arrays."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - test.astype(np.float64)) ** 2))
    if noise == 0.0:
        return None
    signal = float(np.sum(ref**2))
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def infer_task(output: FloatArray, labels: npt.NDArray[Any] | None) -> Task:
    """Classification when the output is a class-score vector or a [0, 1] score with 0/1 labels."""
    width = output.shape[-1] if output.ndim > 1 else 1
    if width > 1:
        return Task.CLASSIFICATION
    if labels is not None:
        binary = np.isin(labels, (0, 1)).all()
        scores = bool(((output >= 0) & (output <= 1)).all())
        if binary and scores:
            return Task.CLASSIFICATION
    return Task.REGRESSION


def predicted_class(output: FloatArray) -> npt.NDArray[np.int64]:
    if output.ndim > 1 and output.shape[-1] > 1:
        return np.asarray(np.argmax(output, axis=-1), dtype=np.int64)
    return np.asarray(output.reshape(len(output)) >= 0.5, dtype=np.int64)


def compare(
    names: list[str],
    source: list[FloatArray],
    converted: list[FloatArray],
    labels: npt.NDArray[Any] | None,
    task: Task = Task.AUTO,
) -> Fidelity:
    """Fidelity of ``converted`` against ``source`` outputs (same order), with optional labels."""
    if len(source) != len(converted):
        raise ValueError(f"{len(source)} source outputs but {len(converted)} converted outputs")
    errors = []
    for name, s, c in zip(names, source, converted, strict=True):
        c = c.reshape(s.shape)
        diff = np.abs(s.astype(np.float64) - c.astype(np.float64))
        errors.append(OutputError(name, float(diff.max()), float(diff.mean()), snr_db(s, c)))
    first_src, first_conv = source[0], converted[0].reshape(source[0].shape)
    if task is Task.AUTO:
        task = infer_task(first_src, labels)
    fid = Fidelity(
        task=task, samples=len(first_src), labelled=labels is not None, outputs=tuple(errors)
    )
    if task is Task.CLASSIFICATION:
        ps, pc = predicted_class(first_src), predicted_class(first_conv)
        agreement = float(np.mean(ps == pc))
        if labels is None:
            return replace(fid, agreement=agreement)
        y = np.asarray(labels).reshape(len(labels)).astype(np.int64)
        return replace(
            fid,
            agreement=agreement,
            source_accuracy=float(np.mean(ps == y)),
            converted_accuracy=float(np.mean(pc == y)),
        )
    if labels is None:
        return fid
    truth = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    src = first_src.astype(np.float64).reshape(len(truth), -1)
    conv = first_conv.astype(np.float64).reshape(len(truth), -1)
    return replace(
        fid,
        source_mae=float(np.mean(np.abs(src - truth))),
        converted_mae=float(np.mean(np.abs(conv - truth))),
        source_rmse=float(np.sqrt(np.mean((src - truth) ** 2))),
        converted_rmse=float(np.sqrt(np.mean((conv - truth) ** 2))),
    )
