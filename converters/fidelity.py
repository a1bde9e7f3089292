"""How far a converted model's outputs are from the source model's: pure functions over arrays.

Every output gets its error, signal-to-noise ratio and cosine similarity. What else is measured
depends on the task, given or inferred from the outputs (and labels) and always reported with why:

- classification: top-1 agreement (per position for sequences of class scores, at 0.5 for a single
  score), and accuracy against labels;
- regression: MAE and RMSE against labels;
- dense (maps, feature tensors): IoU of the maps thresholded at ``map_threshold`` for outputs whose
  values are probabilities;
- detection (boxes and scores per anchor): IoU of the anchors whose score passes the threshold
  (a sigmoid is applied first when the scores are logits).
"""

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
    cosine: float | None = None
    """Cosine similarity of the flattened outputs (1.0 is identical direction)."""
    iou: float | None = None
    """IoU of the thresholded maps or scores (dense and detection tasks)."""


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
    task_reason: str = ""
    """Why this task: 'given', or what in the outputs made it the inferred one."""
    threshold: float | None = None
    """The threshold of the IoU (dense and detection)."""

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.source_accuracy is None or self.converted_accuracy is None:
            return None
        return (self.source_accuracy - self.converted_accuracy) * 100.0

    @property
    def min_snr_db(self) -> float | None:
        """The lowest SNR over the outputs (None when every output is exact)."""
        found = [o.snr_db for o in self.outputs if o.snr_db is not None]
        return min(found) if found else None

    @property
    def min_iou(self) -> float | None:
        found = [o.iou for o in self.outputs if o.iou is not None]
        return min(found) if found else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["task"] = self.task.value
        d["accuracy_drop_points"] = self.accuracy_drop_points
        d["min_snr_db"] = self.min_snr_db
        return d


SNR_FLOOR_DB = -100.0
"""Reported for outputs with no signal left (an all-zero reference, NaN or infinite values)."""


def snr_db(reference: FloatArray, test: FloatArray) -> float | None:
    """10·log10(signal power / error power); None for identical arrays."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - test.astype(np.float64)) ** 2))
    if noise == 0.0:
        return None
    signal = float(np.sum(ref**2))
    if not math.isfinite(noise) or signal <= 0:
        return SNR_FLOOR_DB
    return max(SNR_FLOOR_DB, 10.0 * math.log10(signal / noise))


def cosine(reference: FloatArray, test: FloatArray) -> float | None:
    a = reference.astype(np.float64).ravel()
    b = test.astype(np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0 or not (math.isfinite(na) and math.isfinite(nb)):
        return 1.0 if na == nb == 0.0 else None
    return float(np.dot(a, b) / (na * nb))


def iou(reference: npt.NDArray[np.bool_], test: npt.NDArray[np.bool_]) -> float:
    """Intersection over union of two masks; 1.0 when both are empty."""
    union = int(np.count_nonzero(reference | test))
    return 1.0 if union == 0 else int(np.count_nonzero(reference & test)) / union


def _is_probability(a: FloatArray) -> bool:
    return bool(a.size) and float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def _is_distribution(a: FloatArray) -> bool:
    """Rows along the last axis are non-negative and sum to one (a softmax)."""
    if a.ndim < 2 or a.shape[-1] < 2 or not a.size or float(a.min()) < 0.0:
        return False
    return bool(np.allclose(a.sum(axis=-1), 1.0, atol=1e-3))


def _detection_pair(outputs: list[FloatArray]) -> tuple[int, int] | None:
    """(boxes, scores) output indices: two (N, anchors, k) outputs over the same anchors, the
    scores narrower than the boxes."""
    shaped = [(i, o) for i, o in enumerate(outputs) if o.ndim == 3 and o.shape[1] > 1]
    for i, boxes in shaped:
        for j, scores in shaped:
            same_anchors = boxes.shape[1] == scores.shape[1]
            if i != j and same_anchors and scores.shape[2] < boxes.shape[2] and boxes.shape[2] >= 4:
                return i, j
    return None


def infer_task(outputs: list[FloatArray], labels: npt.NDArray[Any] | None) -> tuple[Task, str]:
    """The task the source outputs (and labels) suggest, and why."""
    first = outputs[0]
    width = first.shape[-1] if first.ndim > 1 else 1
    if labels is not None:
        y = np.asarray(labels)
        integral = y.dtype.kind in "biu" or bool(np.all(np.round(y) == y))
        if width > 1 and first.ndim == 2 and integral:
            return Task.CLASSIFICATION, f"class scores {_shape(first)} and integer labels"
        if width == 1 and np.isin(y, (0, 1)).all() and _is_probability(first):
            return Task.CLASSIFICATION, "a score in [0, 1] and 0/1 labels"
        if first.ndim <= 2:
            return Task.REGRESSION, "numeric labels"
    if first.ndim >= 4:
        return Task.DENSE, f"a map per sample {_shape(first)}"
    if _detection_pair(outputs) is not None:
        b, s = _detection_pair(outputs) or (0, 0)
        return Task.DETECTION, (
            f"boxes {_shape(outputs[b])} and scores {_shape(outputs[s])} over the same anchors"
        )
    if first.ndim == 3:
        if _is_distribution(first):
            return Task.CLASSIFICATION, f"class probabilities per position {_shape(first)}"
        return Task.DENSE, f"a tensor per sample {_shape(first)}"
    if width > 1:
        return Task.CLASSIFICATION, f"class scores {_shape(first)}"
    if _is_probability(first):
        return Task.CLASSIFICATION, "a score in [0, 1] per sample (decision at 0.5)"
    return Task.REGRESSION, "one value per sample"


def _shape(a: FloatArray) -> str:
    return "(N, " + ", ".join(str(s) for s in a.shape[1:]) + ")"


def predicted_class(output: FloatArray) -> npt.NDArray[np.int64]:
    if output.ndim > 1 and output.shape[-1] > 1:
        return np.asarray(np.argmax(output, axis=-1), dtype=np.int64)
    return np.asarray(output.reshape(len(output)) >= 0.5, dtype=np.int64)


def _sigmoid(a: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(a.astype(np.float64), -60, 60))), np.float32)


def compare(
    names: list[str],
    source: list[FloatArray],
    converted: list[FloatArray],
    labels: npt.NDArray[Any] | None,
    task: Task = Task.AUTO,
    threshold: float = 0.5,
) -> Fidelity:
    """Fidelity of ``converted`` against ``source`` outputs (same order), with optional labels."""
    if len(source) != len(converted):
        raise ValueError(f"{len(source)} source outputs but {len(converted)} converted outputs")
    converted = [c.reshape(s.shape) for s, c in zip(source, converted, strict=True)]
    if task is Task.AUTO:
        task, reason = infer_task(source, labels)
        reason = f"inferred: {reason}"
    else:
        reason = "given"
    masks: dict[int, tuple[FloatArray, FloatArray]] = {}
    if task is Task.DENSE:
        masks = {
            i: (s, c)
            for i, (s, c) in enumerate(zip(source, converted, strict=True))
            if _is_probability(s)
        }
    elif task is Task.DETECTION:
        pair = _detection_pair(source)
        j = pair[1] if pair is not None else len(source) - 1
        s, c = source[j], converted[j]
        if not _is_probability(s):
            s, c = _sigmoid(s), _sigmoid(c)
            reason += "; scores are logits, sigmoid applied"
        masks = {j: (s, c)}
    errors = []
    for i, (name, s, c) in enumerate(zip(names, source, converted, strict=True)):
        diff = np.abs(s.astype(np.float64) - c.astype(np.float64))
        overlap = None
        if i in masks:
            ms, mc = masks[i]
            overlap = iou(ms >= threshold, mc >= threshold)
        errors.append(
            OutputError(
                name,
                float(diff.max()) if diff.size else 0.0,
                float(diff.mean()) if diff.size else 0.0,
                snr_db(s, c),
                cosine(s, c),
                overlap,
            )
        )
    first_src, first_conv = source[0], converted[0]
    fid = Fidelity(
        task=task,
        samples=len(first_src),
        labelled=labels is not None,
        outputs=tuple(errors),
        task_reason=reason,
        threshold=threshold if masks else None,
    )
    if task is Task.CLASSIFICATION:
        ps, pc = predicted_class(first_src), predicted_class(first_conv)
        agreement = float(np.mean(ps == pc))
        if labels is None or np.asarray(labels).size != ps.size:
            return replace(fid, agreement=agreement)
        y = np.asarray(labels).reshape(ps.shape).astype(np.int64)
        return replace(
            fid,
            agreement=agreement,
            source_accuracy=float(np.mean(ps == y)),
            converted_accuracy=float(np.mean(pc == y)),
        )
    if labels is None or task is not Task.REGRESSION:
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
