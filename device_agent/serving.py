"""One installed model, ready to serve: its runtime, preprocessing, labels and baseline.

:meth:`ServedModel.prepare` turns what a caller sends (raw records or arrays) into the model's
input and the raw feature columns the telemetry window summarises; :meth:`ServedModel.run` runs the
runtime. Quantized inputs and outputs are converted with the manifest's scale and zero point, so
callers send and receive floats, unless they ask for raw tensors.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from device_agent.runtimes import Runtime, open_runtime
from device_agent.store import Installed
from edgeops.core.errors import BundleError, InputDataError, ModelError
from edgeops.core.preprocessing import Preprocessing
from edgeops.core.profile import Profile
from edgeops.core.tensors import dequantize, quantize
from edgeops.core.wire import ModelRef

_SUM_CHECK_ELEMENTS = 4096
"""Up to this many elements a sample's NaN check is a float64 sum (see :func:`_all_finite`)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A caller's batch: the model input and the raw columns for the telemetry window."""

    x: npt.NDArray[np.float32]
    columns: Mapping[str, Any]

    def __len__(self) -> int:
        return int(self.x.shape[0])


class ServedModel:
    """An installed bundle with an open runtime. Thread-safe: one inference at a time."""

    def __init__(self, entry: Installed, *, threads: int = 1) -> None:
        m = entry.info
        self.entry = entry
        if m.task is None:
            raise BundleError(f"{entry.id}: the manifest names no task")
        self.task: str = m.task
        self.labels: tuple[str | int, ...] = m.labels
        self.preprocessing = Preprocessing.from_dict(m.require("preprocessing"))
        self.baseline = Profile.from_dict(m.require("baseline"))
        self.ref = ModelRef(name=entry.name, version=entry.version, sha256=entry.model_sha256)
        self.runtime: Runtime = open_runtime(entry.model_path, threads=threads)
        if len(self.runtime.inputs) != 1:
            self.runtime.close()
            raise ModelError(f"{entry.id}: models with one input are supported")
        self.input = self.runtime.inputs[0]
        # Decided once: the per-call path neither re-reads the tensor infos nor converts floats.
        self._quantize_input = self.input.quantized
        self._input_dtype = np.dtype(self.input.dtype)
        self._float_outputs = all(
            not o.quantized and np.dtype(o.dtype) == np.float32 for o in self.runtime.outputs
        )
        self._sample_shape = (
            self.preprocessing.shape if self.preprocessing.kind != "tabular" else None
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> ServedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inputs -------------------------------------------------------------------------------

    def prepare(self, data: Any) -> Prepared:
        """Model input from records (list of dicts), columns (dict of lists) or an array.

        Tabular arrays hold raw values in the preprocessing's column order; image arrays may be one
        sample (without the batch dimension) or a batch. Raises :class:`InputDataError`.
        """
        pre = self.preprocessing
        if (
            type(data) is np.ndarray
            and data.dtype == np.float32
            and data.shape == self._sample_shape
        ):  # the usual call: one float32 sample, used as it is (a batch of one, no copy)
            if not _all_finite(data):
                raise InputDataError(f"input '{pre.input_name}' contains NaN or infinite values")
            x = data[None]
            return Prepared(x, {pre.input_name: x})
        if pre.kind == "tabular":
            names = [c.name for c in pre.columns]
            if isinstance(data, Mapping) and not _is_columns(data):
                data = [data]  # one record: {feature: value}
            if isinstance(data, Mapping):
                unknown = [str(k) for k in data if k not in names]
                if unknown:
                    raise InputDataError(
                        f"unknown feature{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(unknown[:5])} (the model takes {', '.join(names)})"
                    )
                pre.check_present(set(data))
                rows = _rows(data)
                columns = {n: np.asarray(data.get(n, [None] * rows)) for n in names}
            elif isinstance(data, Sequence) and data and isinstance(data[0], Mapping):
                columns = {n: np.asarray(v) for n, v in pre.columns_of(data).items()}
            else:
                arr = _array(data)
                if arr.ndim == 1:
                    arr = arr[None, :]
                if arr.ndim != 2 or arr.shape[1] != len(names):
                    raise InputDataError(
                        f"expected rows of {len(names)} features ({', '.join(names)}), "
                        f"got shape {arr.shape}"
                    )
                columns = {n: arr[:, i] for i, n in enumerate(names)}
            return Prepared(pre.encode(columns), columns)
        arr = _array(data)
        if tuple(arr.shape) == pre.shape:
            arr = arr[None, ...]
        if tuple(arr.shape[1:]) != pre.shape:
            raise InputDataError(
                f"input '{pre.input_name}' expects samples of shape {pre.shape}, got {arr.shape}"
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputDataError(f"input '{pre.input_name}' contains NaN or infinite values")
        x = arr.astype(np.float32, copy=False)
        return Prepared(x, {pre.input_name: x})

    # --- inference ----------------------------------------------------------------------------

    def run(self, x: npt.NDArray[np.float32], *, raw: bool = False) -> list[npt.NDArray[Any]]:
        """Run a prepared batch; float outputs unless ``raw`` (then the model's own tensors)."""
        if self._quantize_input:
            feed = quantize(x, self.input)
        else:
            feed = x.astype(self._input_dtype, copy=False)
        with self._lock:
            outs = self.runtime.run([feed])
        return outs if raw else self.to_float(outs)

    def to_float(self, outputs: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[np.float32]]:
        """The model's own output tensors as floats (dequantized where quantized)."""
        if self._float_outputs:  # what dequantize would return: the same float32 arrays
            return [np.asarray(o) for o in outputs]
        return [dequantize(o, i) for o, i in zip(outputs, self.runtime.outputs, strict=True)]

    def predicted(self, outputs: Sequence[npt.NDArray[Any]]) -> list[Any]:
        """Per sample: the class label (classifiers) or the first output value (regressors)."""
        first = np.asarray(outputs[0])
        if self.task == "classification":
            if len(first) == 1:
                i = int(first.argmax())
                return [self.labels[i] if i < len(self.labels) else i]
            idx = first.reshape(len(first), -1).argmax(axis=1)
            return [self.labels[i] if i < len(self.labels) else int(i) for i in idx]
        return [float(v) for v in first.reshape(len(first), -1)[:, 0]]

    def info(self) -> dict[str, Any]:
        m = self.entry.info
        return {
            "id": self.entry.id,
            "name": self.ref.name,
            "version": self.ref.version,
            "sha256": self.ref.sha256,
            "format": m.require_model().format,
            "task": self.task,
            "labels": list(self.labels),
            "inputs": [t.to_dict() for t in self.runtime.inputs],
            "outputs": [t.to_dict() for t in self.runtime.outputs],
            "preprocessing": m.preprocessing,
            "target": None if m.training is None else m.training.target,
        }


def _is_columns(data: Mapping[str, Any]) -> bool:
    """Whether a mapping holds columns (name -> sequence of values) rather than one record."""
    return any(
        isinstance(v, Sequence | np.ndarray) and not isinstance(v, str | bytes)
        for v in data.values()
    )


def _rows(data: Mapping[str, Any]) -> int:
    """The number of rows of columns; a column that is not a sequence is refused."""
    lengths = set()
    for name, v in data.items():
        if not isinstance(v, Sequence | np.ndarray) or isinstance(v, str | bytes):
            raise InputDataError(f"column '{name}': expected a list of values")
        lengths.add(len(v))
    if len(lengths) > 1:
        raise InputDataError("features differ in their number of rows")
    return lengths.pop() if lengths else 0


def _all_finite(a: npt.NDArray[np.float32]) -> bool:
    """Whether every element of a float32 sample is finite.

    Small samples: their float64 sum, one reduction without the temporary array of
    ``np.isfinite``, is NaN or infinite exactly when an element is: NaN and infinities propagate
    through additions, and float32 values (at most 3.4e38) cannot overflow a float64 sum of fewer
    than 1e269 of them. Large samples: ``np.isfinite`` is the faster, as the widening sum is slow.
    """
    if a.size <= _SUM_CHECK_ELEMENTS:
        return math.isfinite(a.sum(dtype=np.float64))
    return bool(np.isfinite(a).all())


def _array(data: Any) -> npt.NDArray[Any]:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as e:
        raise InputDataError(f"input is not an array of numbers ({e})") from None
    if arr.dtype.kind not in "biuf":
        raise InputDataError(f"input has dtype {arr.dtype}; expected numbers")
    return arr
