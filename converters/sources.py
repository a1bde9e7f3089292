"""Loading what is being converted: a Keras file, a SavedModel, an ONNX or a TFLite file.

A :class:`Source` knows its kind, size and signature, runs the reference (unconverted) model on
float inputs, and, for TensorFlow sources, offers a SavedModel directory to convert from.
"""

from __future__ import annotations

import shutil
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from device_agent.runtimes import Runtime, open_runtime, run_float
from edgeops.core.errors import ModelError, first_line
from edgeops.core.feeds import Feeds
from edgeops.core.optional import require
from edgeops.core.tensors import TensorInfo


class SourceKind(StrEnum):
    KERAS = "keras"
    SAVED_MODEL = "saved_model"
    ONNX = "onnx"
    TFLITE = "tflite"


def detect_kind(path: Path) -> SourceKind:
    if not path.exists():
        raise ModelError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return SourceKind.SAVED_MODEL
        raise ModelError(f"{path}: a directory without saved_model.pb is not a SavedModel")
    kinds = {".keras": SourceKind.KERAS, ".onnx": SourceKind.ONNX, ".tflite": SourceKind.TFLITE}
    kind = kinds.get(path.suffix.lower())
    if kind is None:
        raise ModelError(
            f"{path}: unsupported model type '{path.suffix}' "
            "(expected .keras, a SavedModel directory, .onnx or .tflite)"
        )
    return kind


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


class Source:
    """A model to convert. Use as a context manager; it may own a temporary export directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.kind = detect_kind(self.path)
        self.size_bytes = _size(self.path)
        self._tmp: Path | None = None
        self._signature: Any = None
        self._runtime: Runtime | None = None
        self._saved_model: Path | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        if self.kind in (SourceKind.ONNX, SourceKind.TFLITE):
            self._runtime = open_runtime(self.path)
            self.inputs: tuple[TensorInfo, ...] = self._runtime.inputs
            self.outputs: tuple[TensorInfo, ...] = self._runtime.outputs
            return
        tf = require("tensorflow", "convert")
        if self.kind is SourceKind.KERAS:
            keras = require("keras", "convert")
            try:
                model = keras.models.load_model(self.path, compile=False)
            except Exception as e:  # keras raises many kinds for a bad file
                raise ModelError(
                    f"{self.path}: not a loadable Keras model ({first_line(e)})"
                ) from None
            self._tmp = Path(tempfile.mkdtemp(prefix="edgeops-export-"))
            self._saved_model = self._tmp / "saved_model"
            try:
                model.export(str(self._saved_model), verbose=False)
            except Exception as e:
                raise ModelError(f"{self.path}: Keras export failed ({first_line(e)})") from None
        else:
            self._saved_model = self.path
        try:
            loaded = tf.saved_model.load(str(self._saved_model))
        except Exception as e:
            raise ModelError(f"{self.path}: not a loadable SavedModel ({first_line(e)})") from None
        sig = getattr(loaded, "signatures", {}).get("serving_default")
        if sig is None:
            raise ModelError(f"{self.path}: the SavedModel has no 'serving_default' signature")
        self._loaded = loaded  # keeps the signature's variables alive
        self._signature = sig
        _, kw = sig.structured_input_signature
        self._input_names = list(kw)
        self.inputs = tuple(_tf_info(n, s) for n, s in kw.items())
        self._output_names = sorted(sig.structured_outputs)
        self.outputs = tuple(_tf_info(n, sig.structured_outputs[n]) for n in self._output_names)

    @property
    def is_tensorflow(self) -> bool:
        return self.kind in (SourceKind.KERAS, SourceKind.SAVED_MODEL)

    @property
    def saved_model_dir(self) -> Path:
        if self._saved_model is None:
            raise ModelError(f"{self.path}: a {self.kind} model has no SavedModel form")
        return self._saved_model

    @property
    def signature(self) -> Any:
        """The SavedModel's serving signature (TensorFlow sources only)."""
        return self._signature

    def predict(self, feeds: Feeds) -> list[npt.NDArray[np.float32]]:
        """Float outputs of the unconverted model for every sample, in ``outputs`` order."""
        runtime = self._runtime
        if runtime is not None:
            return feeds.run(lambda arrays: run_float(runtime, arrays))

        def call(arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[np.float32]]:
            res = self._signature(**dict(zip(self._input_names, arrays, strict=True)))
            return [np.asarray(res[n], dtype=np.float32) for n in self._output_names]

        return feeds.run(call)

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tf_info(name: str, spec: Any) -> TensorInfo:
    shape = tuple(-1 if d is None else int(d) for d in spec.shape)
    return TensorInfo(name=name, shape=shape, dtype=spec.dtype.name)
