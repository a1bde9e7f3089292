"""One installed model, ready to serve: its runtime, preprocessing, labels and baseline.

:meth:`ServedModel.prepare` turns what a caller sends (raw records or arrays) into the model's
input and the raw feature columns the telemetry window summarises; :meth:`ServedModel.run` runs the
runtime. Quantized inputs and outputs are converted with the manifest's scale and zero point, so
callers send and receive floats, unless they ask for raw tensors.

A model with several inputs (preprocessing kind ``tensors``) takes a mapping of input name to
array: samples along axis 0, or one sample without that axis, each of the sample shape the
preprocessing lists (the packaged data's); a scalar input may be one value for every sample. The
inputs are checked (:func:`edgeops.core.feeds.bind`) into a :class:`~edgeops.core.feeds.Feeds`,
which runs one call per sample when the model fixes its batch at one or takes a whole tensor (a
recurrent state) per call, else batches.
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
from edgeops.core.errors import BundleError, InputDataError
from edgeops.core.feeds import Feeds, bind
from edgeops.core.preprocessing import Preprocessing
from edgeops.core.profile import Profile
from edgeops.core.tensors import dequantize, quantize, shape_matches
from edgeops.core.wire import ModelRef

_SUM_CHECK_ELEMENTS = 4096
"""Up to this many elements a sample's NaN check is a float64 sum (see :func:`_all_finite`)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A caller's batch: the model input and the raw columns for the telemetry window."""

    x: npt.NDArray[np.float32] | Feeds
    """One input's batch, or the named inputs of a model with several."""
    columns: Mapping[str, Any]

    def __len__(self) -> int:
        return len(self.x) if isinstance(self.x, Feeds) else int(self.x.shape[0])


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
        self.named = self.preprocessing.kind == "tensors"
        """Whether the model takes its inputs by name (a model with several)."""
        expected = [t.name for t in self.preprocessing.tensors]
        got = [i.name for i in self.runtime.inputs]
        if self.named and expected != got:
            self.runtime.close()
            raise BundleError(
                f"{entry.id}: the preprocessing names inputs {expected}, the model has {got}"
            )
        if not self.named and len(got) != 1:
            self.runtime.close()
            raise BundleError(f"{entry.id}: {len(got)} model inputs, and no preprocessing by name")
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
        sample (without the batch dimension) or a batch. A model with several inputs takes a
        mapping of input name to array (see the module doc). Raises :class:`InputDataError`.
        """
        pre = self.preprocessing
        if self.named:
            return self._prepare_named(data)
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

    def _prepare_named(self, data: Any) -> Prepared:
        names = [t.name for t in self.preprocessing.tensors]
        listed = ", ".join(names)
        if not isinstance(data, Mapping):
            raise InputDataError(f"this model takes its inputs by name: send an object of {listed}")
        extra = [str(k) for k in data if k not in names]
        if extra:
            raise InputDataError(
                f"unknown input {', '.join(repr(k) for k in extra)} (the model's inputs: {listed})"
            )
        missing = [n for n in names if n not in data]
        if missing:
            absent = ", ".join(repr(m) for m in missing)
            raise InputDataError(f"missing input {absent} (the model's inputs: {listed})")
        arrays: dict[str, npt.NDArray[Any]] = {}
        for t in self.preprocessing.tensors:
            a = _array(data[t.name], t.name)
            if a.ndim == 0 and t.shape == ():  # one value for every sample
                arrays[t.name] = a
                continue
            if a.ndim == len(t.shape):
                a = a[None]  # one sample
            if a.shape[1:] != t.shape:
                raise InputDataError(
                    f"input '{t.name}' takes samples of shape {t.shape} (or a batch of them), "
                    f"got shape {a.shape}"
                )
            arrays[t.name] = a
        feeds = bind(arrays, self.runtime.inputs, "request")
        return Prepared(feeds, feeds.as_dict())

    def bind(self, named: Mapping[str, npt.NDArray[Any]]) -> Feeds:
        """Samples by input name, checked against the model's inputs (the update's samples)."""
        return bind(named, self.runtime.inputs, "samples")

    def takes(self, samples: npt.NDArray[Any] | Feeds) -> bool:
        """Whether ``samples`` (a prepared one-input batch, or feeds) fit this model's inputs."""
        if isinstance(samples, Feeds):
            return self.named and samples.infos == tuple(self.runtime.inputs)
        return not self.named and shape_matches(
            tuple(int(s) for s in samples.shape[1:]), self.input.sample_shape
        )

    # --- inference ----------------------------------------------------------------------------

    def run(
        self, x: npt.NDArray[np.float32] | Feeds, *, raw: bool = False
    ) -> list[npt.NDArray[Any]]:
        """Run a prepared batch; float outputs unless ``raw`` (then the model's own tensors).

        Feeds run as the model needs (one call per sample, or batches); a model that takes a
        whole tensor per call has each call's outputs stacked along a new first axis."""
        if isinstance(x, Feeds):
            with self._lock:
                outs = x.run(self._call)
            return outs if raw else self.to_float(outs)
        if self._quantize_input:
            feed = quantize(x, self.input)
        else:
            feed = x.astype(self._input_dtype, copy=False)
        with self._lock:
            outs = self.runtime.run([feed])
        return outs if raw else self.to_float(outs)

    def _call(self, arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """One runtime call on the float (or integer) inputs of one call."""
        feed = [
            quantize(a, i) if i.quantized else np.asarray(a, dtype=i.dtype)
            for a, i in zip(arrays, self.runtime.inputs, strict=True)
        ]
        return self.runtime.run(feed)

    def to_float(self, outputs: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[np.float32]]:
        """The model's own output tensors as floats (dequantized where quantized)."""
        if self._float_outputs:  # what dequantize would return: the same float32 arrays
            return [np.asarray(o) for o in outputs]
        return [dequantize(o, i) for o, i in zip(outputs, self.runtime.outputs, strict=True)]

    def predicted(self, outputs: Sequence[npt.NDArray[Any]]) -> list[Any]:
        """Per sample: the class label (classifiers) or the first output value (regressors)."""
        first = np.asarray(outputs[0])
        if self.task == "classification":
            if len(first) == 1 and first.size > 1:
                i = int(first.argmax())
                return [self.labels[i] if i < len(self.labels) else i]
            rows = first.reshape(len(first), -1)
            # one column: a binary classifier's probability of class 1
            idx = (rows[:, 0] >= 0.5) if rows.shape[1] == 1 else rows.argmax(axis=1)
            return [self.labels[i] if i < len(self.labels) else int(i) for i in idx.astype(int)]
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


def _array(data: Any, name: str | None = None) -> npt.NDArray[Any]:
    what = "input" if name is None else f"input '{name}'"
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as e:
        raise InputDataError(f"{what} is not an array of numbers ({e})") from None
    if arr.dtype.kind not in "biuf":
        raise InputDataError(f"{what} has dtype {arr.dtype}; expected numbers")
    return arr
