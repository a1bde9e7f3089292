"""Inference runtimes behind one small protocol.

A runtime is anything with ``inputs``, ``outputs`` and ``run(arrays) -> arrays``. ``.tflite`` models
run on ai-edge-litert, else tflite-runtime, else ``tensorflow.lite`` (imported only when nothing
lighter is installed); ``.onnx`` models run on onnxruntime's CPU provider.

``run`` takes and returns the model's own tensors (integers for a quantized input); callers that
want float in and float out use :func:`edgeops.core.tensors.quantize` and ``dequantize`` with the
tensor's scale and zero point, as :func:`run_float` does.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edgeops.core.errors import ModelError, RuntimeBackendError, first_line
from edgeops.core.feeds import Feeds
from edgeops.core.logstream import native_lines_logged
from edgeops.core.tensors import TensorInfo, dequantize, quantize

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]

# Module paths of the .tflite interpreters, lightest first.
TFLITE_BACKENDS = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite"),
)


class Runtime(Protocol):
    """What the rest of edgeops needs from an inference engine."""

    backend: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def run(self, arrays: Sequence[Array]) -> list[Array]:
        """Run one batch; one array per input, in ``inputs`` order."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Runtime: ...

    def __exit__(self, *exc: object) -> None: ...


def open_runtime(path: str | Path, *, threads: int | None = None) -> Runtime:
    """Open a ``.tflite`` or ``.onnx`` model with the lightest runtime installed."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such model file")
    suffix = p.suffix.lower()
    runtime = RUNTIMES.get(suffix)
    if runtime is None:
        expected = " or ".join(RUNTIMES)
        raise ModelError(f"{p}: unsupported model type '{suffix}' (expected {expected})")
    return runtime(p, threads=threads)


def run_float(runtime: Runtime, x: Array | Sequence[Array]) -> list[npt.NDArray[np.float32]]:
    """Run one call on float inputs (an array, or one per input) and return float outputs.

    Quantized inputs are quantized with their scale and zero point, quantized outputs dequantized;
    integer inputs (such as a sample rate) are passed as they are.
    """
    arrays = [x] if isinstance(x, np.ndarray) else list(x)
    if len(arrays) != len(runtime.inputs):
        raise ValueError(f"model takes {len(runtime.inputs)} inputs, got {len(arrays)}")
    feed = [
        quantize(a, info) if info.quantized else np.asarray(a, dtype=info.dtype)
        for a, info in zip(arrays, runtime.inputs, strict=True)
    ]
    outs = runtime.run(feed)
    return [
        dequantize(o, i) if np.asarray(o).dtype.kind in "fiu" else np.asarray(o, np.float32)
        for o, i in zip(outs, runtime.outputs, strict=True)
    ]


def run_feeds(runtime: Runtime, feeds: Feeds) -> list[npt.NDArray[np.float32]]:
    """Float outputs for every sample of ``feeds``, calls split as the model needs them."""
    return feeds.run(lambda arrays: run_float(runtime, arrays))


def fixed_batch_split(infos: Sequence[TensorInfo], arrays: Sequence[Array]) -> bool:
    """Whether a call must be split into one call per sample: every input has a batch fixed at
    one and the arrays hold several samples along that axis."""
    if not infos or any(len(i.shape) == 0 or i.shape[0] != 1 for i in infos):
        return False
    sizes = {int(np.asarray(a).shape[0]) if np.ndim(a) else 0 for a in arrays}
    return len(sizes) == 1 and sizes.pop() > 1


def split_run(run: Any, arrays: Sequence[Array]) -> list[Array]:
    """Run a batch one sample at a time and stack the outputs along the batch axis."""
    parts = [run([a[i : i + 1] for a in arrays]) for i in range(int(arrays[0].shape[0]))]
    return [np.concatenate(p, axis=0) for p in zip(*parts, strict=True)]


def tflite_interpreter_class() -> tuple[str, Any]:
    """The first importable TFLite interpreter class and the name of its package."""
    for name, module in TFLITE_BACKENDS:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        return name, mod.Interpreter
    raise RuntimeBackendError(
        "no TFLite runtime installed: pip install 'edgeops[agent]' (ai-edge-litert)"
    )


def _tflite_info(d: dict[str, Any]) -> TensorInfo:
    shape = d.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = d["shape"]
    scale, zero = d.get("quantization", (0.0, 0))
    quantized = bool(scale) and np.dtype(d["dtype"]).kind in "iu"
    return TensorInfo(
        name=str(d["name"]),
        shape=tuple(int(s) for s in shape),
        dtype=np.dtype(d["dtype"]).name,
        scale=float(scale) if quantized else None,
        zero_point=int(zero) if quantized else None,
    )


class TFLiteRuntime:
    """A ``.tflite`` model on the lightest installed LiteRT interpreter."""

    def __init__(
        self, path: str | Path, *, threads: int | None = None, default_delegates: bool = True
    ) -> None:
        """``default_delegates=False`` keeps XNNPACK from replacing nodes (to list real ops)."""
        self.path = Path(path)
        self.backend, interpreter_cls = tflite_interpreter_class()
        kwargs: dict[str, Any] = {"model_path": str(self.path), "num_threads": threads}
        if not default_delegates:
            module = importlib.import_module(interpreter_cls.__module__)
            kwargs["experimental_op_resolver_type"] = (
                module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        try:
            with native_lines_logged():  # its "Created ... XNNPACK delegate" line: a log record
                self._interp = interpreter_cls(**kwargs)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(
                f"{self.path}: not a loadable TFLite model ({first_line(e)})"
            ) from None
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        self.inputs = tuple(_tflite_info(d) for d in self._in)
        self.outputs = tuple(_tflite_info(d) for d in self._out)
        self._shapes = [tuple(int(v) for v in d["shape"]) for d in self._in]

    def run(self, arrays: Sequence[Array]) -> list[Array]:
        if len(arrays) != len(self._in):
            raise ValueError(f"model takes {len(self._in)} inputs, got {len(arrays)}")
        shapes = [tuple(int(v) for v in np.shape(a)) for a in arrays]
        if shapes != self._shapes:
            if fixed_batch_split(self.inputs, arrays):
                # A fixed-batch model: run sample by sample and stack.
                return split_run(self.run, arrays)
            for d, shape in zip(self._in, shapes, strict=True):
                self._interp.resize_tensor_input(d["index"], list(shape))
            self._interp.allocate_tensors()
            self._shapes = shapes
        for d, a in zip(self._in, arrays, strict=True):
            self._interp.set_tensor(d["index"], a)
        self._interp.invoke()
        return [self._interp.get_tensor(d["index"]) for d in self._out]

    def ops(self) -> list[tuple[str, bool]]:
        """(operator, computes in float) for every node, in execution order.

        Open the runtime with ``default_delegates=False`` to see the model's own operators rather
        than the delegate nodes that replace them.
        """
        floats = {
            t["index"]: np.dtype(t["dtype"]).kind == "f" for t in self._interp.get_tensor_details()
        }
        result = []
        for op in self._interp._get_ops_details():
            tensors = [i for i in (*op["inputs"], *op["outputs"]) if i >= 0]
            result.append((str(op["op_name"]), any(floats.get(i, False) for i in tensors)))
        return result

    def boundary_quantization(self) -> list[dict[str, Any]]:
        """Scale and zero point where float inputs are quantized and outputs dequantized.

        For a quantized input or output that is the tensor itself; for a float one it is the
        tensor on the other side of the QUANTIZE or DEQUANTIZE op at the boundary.
        """
        tensors = {t["index"]: t for t in self._interp.get_tensor_details()}
        ops = self._interp._get_ops_details()
        found = []
        for role, details in (("input", self._in), ("output", self._out)):
            for d in details:
                idx = d["index"]
                inner = idx
                if np.dtype(d["dtype"]).kind == "f":
                    for op in ops:
                        if role == "input" and op["op_name"] == "QUANTIZE" and idx in op["inputs"]:
                            inner = int(op["outputs"][0])
                        if (
                            role == "output"
                            and op["op_name"] == "DEQUANTIZE"
                            and idx in op["outputs"]
                        ):
                            inner = int(op["inputs"][0])
                t = tensors[inner]
                scale, zero = t["quantization"]
                if scale:
                    found.append(
                        {
                            "role": role,
                            "name": d["name"],
                            "dtype": np.dtype(t["dtype"]).name,
                            "scale": float(scale),
                            "zero_point": int(zero),
                        }
                    )
        return found

    def close(self) -> None:
        self._interp = None

    def __enter__(self) -> TFLiteRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _ort_info(arg: Any) -> TensorInfo:
    shape = tuple(s if isinstance(s, int) else -1 for s in (arg.shape or ()))
    return TensorInfo(name=arg.name, shape=shape, dtype=_ORT_TYPES.get(arg.type, arg.type))


class OnnxRuntime:
    """A ``.onnx`` model on onnxruntime's CPU execution provider."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeBackendError(
                "onnxruntime is not installed: pip install 'edgeops[agent]'"
            ) from None
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"{self.path}: not a loadable ONNX model ({first_line(e)})") from None
        self.inputs = tuple(_ort_info(a) for a in self._session.get_inputs())
        self.outputs = tuple(_ort_info(a) for a in self._session.get_outputs())
        self._names = [i.name for i in self.inputs]

    def run(self, arrays: Sequence[Array]) -> list[Array]:
        if len(arrays) != len(self._names):
            raise ValueError(f"model takes {len(self._names)} inputs, got {len(arrays)}")
        if fixed_batch_split(self.inputs, arrays):
            # A model exported with batch 1: run sample by sample and stack.
            return split_run(self.run, arrays)
        feed = dict(zip(self._names, arrays, strict=True))
        return list(self._session.run(None, feed))

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> OnnxRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Opener(Protocol):
    def __call__(self, path: str | Path, *, threads: int | None = None) -> Runtime: ...


RUNTIMES: dict[str, _Opener] = {".tflite": TFLiteRuntime, ".onnx": OnnxRuntime}
"""The runtime of each model file type, by suffix (:func:`open_runtime`). A new runtime: a
class with the :class:`Runtime` protocol above, and its suffix here."""
