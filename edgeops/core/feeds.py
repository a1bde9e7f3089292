"""Model inputs for many samples, and how they are split into runtime calls. Pure numpy.

A :class:`Feeds` holds one array per model input, samples along axis 0 (every array has the same
number of samples). A sample of an input is either

- *batched*: the input's shape without its leading batch dimension (``x`` of shape ``(N, 3, 48,
  320)`` for an input ``(-1, 3, 48, 320)``); samples of batched inputs can be stacked into one call;
- *whole*: the whole tensor of one call (``state`` of shape ``(N, 2, 1, 128)`` for an input
  ``(2, -1, 128)``, ``sr`` of shape ``(N,)`` for a scalar input). A model with a whole input runs
  one sample per call: the recurrent state of stateful models lives there.

A 0-d array for a scalar input is one value shared by every sample.

Only a leading dimension that is free (-1) or 1 is a batch axis. Models whose batch is fixed at 1
(the usual export) run one sample per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeops.core.errors import InputDataError
from edgeops.core.tensors import TensorInfo

Array = npt.NDArray[Any]

MAX_BATCH = 256
"""Samples per call for models with a free batch dimension."""


def _fits(shape: Sequence[int], expected: Sequence[int]) -> bool:
    return len(shape) == len(expected) and all(
        e < 0 or s == e for s, e in zip(shape, expected, strict=True)
    )


def _dims(shape: Sequence[int]) -> str:
    return "(" + ", ".join("?" if s < 0 else str(s) for s in shape) + ")"


@dataclass(frozen=True)
class Feeds:
    """Inputs of ``len(self)`` samples for a model with ``infos`` inputs (see the module doc)."""

    infos: tuple[TensorInfo, ...]
    arrays: tuple[Array, ...]
    """One per input, in ``infos`` order, samples along axis 0."""
    whole: tuple[bool, ...]
    """Per input: True when a sample is a whole call tensor (not batchable)."""

    def __len__(self) -> int:
        return int(self.arrays[0].shape[0]) if self.arrays else 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.infos)

    @property
    def batchable(self) -> bool:
        """Whether samples can be stacked into one call (no whole-tensor input)."""
        return not any(self.whole)

    @property
    def fixed_batch(self) -> int | None:
        """1 when the model fixes its batch at one sample per call."""
        if not self.batchable:
            return None
        return 1 if any(i.shape and i.shape[0] == 1 for i in self.infos) else None

    def take(self, index: npt.NDArray[np.intp] | slice) -> Feeds:
        return Feeds(self.infos, tuple(a[index] for a in self.arrays), self.whole)

    def as_dict(self) -> dict[str, Array]:
        return dict(zip(self.names, self.arrays, strict=True))

    def call_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each input in a call with one sample."""
        return {n: tuple(a.shape) for n, a in zip(self.names, self.one_call(0), strict=True)}

    def one_call(self, i: int) -> list[Array]:
        """Sample ``i`` as the arrays of one call."""
        return [
            np.asarray(a[i] if w else a[i : i + 1], order="C")
            for a, w in zip(self.arrays, self.whole, strict=True)
        ]

    def calls(self, max_batch: int = MAX_BATCH) -> Iterator[tuple[list[Array], int]]:
        """The arrays of each call and how many samples it holds."""
        n = len(self)
        if not self.batchable:
            for i in range(n):
                yield self.one_call(i), 1
            return
        size = self.fixed_batch or max(1, max_batch)
        for start in range(0, n, size):
            part = [np.asarray(a[start : start + size], order="C") for a in self.arrays]
            yield part, int(part[0].shape[0])

    def run(self, fn: Callable[[list[Array]], Sequence[Array]]) -> list[Array]:
        """Outputs of ``fn`` (one call) over every sample, samples along axis 0.

        Batched models' outputs are concatenated along their batch axis; models run one sample
        per call with a whole-tensor input have each call's outputs stacked along a new axis.
        """
        parts = [fn(arrays) for arrays, _ in self.calls()]
        if not parts:
            raise InputDataError("no samples to run")
        if len(parts) == 1:  # one call (a single sample's, as a device serves it): no copy
            return [np.asarray(o) if self.batchable else np.asarray(o)[None] for o in parts[0]]
        join = np.concatenate if self.batchable else np.stack
        return [join([np.asarray(p) for p in col], axis=0) for col in zip(*parts, strict=True)]


def bind(arrays: Mapping[str, Array], infos: Sequence[TensorInfo], what: str) -> Feeds:
    """Check ``arrays`` (input name -> samples) against the model's inputs; raise
    :class:`InputDataError` naming what does not fit."""
    infos = tuple(infos)
    missing = [i.name for i in infos if i.name not in arrays]
    if missing:
        raise InputDataError(
            f"{what}: no array for input {', '.join(repr(m) for m in missing)} "
            f"(found {', '.join(repr(k) for k in arrays) or 'none'}; "
            "a file for a model with several inputs holds one array per input name)"
        )
    counts = {
        i.name: int(np.asarray(arrays[i.name]).shape[0])
        for i in infos
        if np.asarray(arrays[i.name]).ndim > 0
    }
    if not counts:
        raise InputDataError(f"{what}: every array is a single value; no samples")
    n = max(counts.values())
    uneven = {k: v for k, v in counts.items() if v != n}
    if uneven:
        listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise InputDataError(f"{what}: the inputs have different numbers of samples ({listed})")
    out: list[Array] = []
    whole: list[bool] = []
    for info in infos:
        a = np.asarray(arrays[info.name])
        if a.dtype.kind not in "biuf":
            raise InputDataError(f"{what}: input '{info.name}' has dtype {a.dtype}, not numbers")
        if a.ndim == 0 and len(info.shape) == 0:
            a = np.repeat(a[None], n)
        sample = tuple(int(s) for s in a.shape[1:])
        # Only a leading dimension that is free or 1 is a batch axis (an LSTM state's leading
        # 2 is its directions, not a batch).
        has_batch = len(info.shape) >= 1 and info.shape[0] in (-1, 1)
        if has_batch and _fits(sample, info.shape[1:]):
            whole.append(False)
        elif _fits(sample, info.shape):
            whole.append(True)
        else:
            raise InputDataError(
                f"{what}: samples of input '{info.name}' have shape {sample}; the model input "
                f"expects {_dims(info.shape[1:])} per sample, or {_dims(info.shape)} per call"
            )
        try:
            dtype = np.dtype(info.dtype)
        except TypeError:
            raise InputDataError(
                f"{what}: input '{info.name}' takes {info.dtype}; edgeops feeds numbers"
            ) from None
        if dtype.kind not in "biuf":
            raise InputDataError(
                f"{what}: input '{info.name}' takes {dtype}; edgeops feeds numbers"
            )
        finite = a.dtype.kind != "f" or bool(np.isfinite(a).all())
        if (
            dtype.kind in "iub"
            and a.dtype.kind == "f"
            and not (finite and np.array_equal(a, np.round(a)))
        ):
            raise InputDataError(
                f"{what}: input '{info.name}' takes {dtype} values, the file holds fractions"
            )
        if not finite:
            raise InputDataError(f"{what}: input '{info.name}' contains NaN or infinite values")
        # Quantized inputs stay float here; run_float quantizes them with their scale.
        target = np.float32 if (info.quantized or dtype.kind == "f") else dtype
        out.append(np.asarray(a, dtype=target, order="C"))
    return Feeds(infos, tuple(out), tuple(whole))


def single(x: Array, infos: Sequence[TensorInfo], what: str) -> Feeds:
    """Feeds for a one-input model from one array of samples."""
    if len(infos) != 1:
        names = ", ".join(i.name for i in infos)
        raise InputDataError(
            f"{what}: the model has {len(infos)} inputs ({names}); give one array per input name"
        )
    return bind({infos[0].name: x}, infos, what)


def random_feeds(
    infos: Sequence[TensorInfo],
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    batch: int = 1,
) -> Feeds:
    """One random sample (a call of ``batch``) for benchmarks.

    ``shapes`` gives a call's full shape per input name; for other inputs every flexible
    dimension must be the batch (set to ``batch``), else the caller must say the shape.
    """
    rng = np.random.default_rng(seed)
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - {i.name for i in infos})
    if unknown:
        names = ", ".join(i.name for i in infos)
        raise InputDataError(f"--shape names no input {', '.join(unknown)} (inputs: {names})")
    arrays: dict[str, Array] = {}
    for info in infos:
        if info.name in shapes:
            shape = tuple(int(s) for s in shapes[info.name])
            if not _fits(shape, info.shape):
                raise InputDataError(
                    f"--shape {info.name}={'x'.join(map(str, shape))} does not fit the "
                    f"model's input {_dims(info.shape)}"
                )
        else:
            flexible = [k for k, s in enumerate(info.shape) if s < 0]
            if any(k > 0 for k in flexible):
                example = "x".join("N" if s < 0 else str(s) for s in info.shape)
                raise InputDataError(
                    f"input '{info.name}' {_dims(info.shape)} has flexible dimensions: give "
                    f"its real size with --shape {info.name}={example.replace('N', '1', 1)} "
                    "(N: your size) or an input data file"
                )
            shape = tuple(batch if s < 0 else s for s in info.shape)
        dt = np.dtype(info.dtype)
        if dt.kind == "f":
            value: Array = rng.random(shape, dtype=np.float32).astype(dt)
        elif dt.kind in "iu":
            lim = np.iinfo(dt)
            value = rng.integers(lim.min, lim.max, size=shape, endpoint=True).astype(dt)
        elif dt.kind == "b":
            value = rng.integers(0, 1, size=shape, endpoint=True).astype(bool)
        else:
            raise InputDataError(f"cannot make inputs of dtype {dt} for '{info.name}'")
        arrays[info.name] = value[None]
    return Feeds(tuple(infos), tuple(arrays[i.name] for i in infos), (True,) * len(infos))


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME=1x3x640x640`` to ``("NAME", (1, 3, 640, 640))``; ``NAME=`` is a scalar."""
    name, sep, dims = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise InputDataError(f"--shape {text!r}: expected NAME=DxDxD (e.g. x=1x3x640x640)")
    if not dims.strip():
        return name, ()
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise InputDataError(
            f"--shape {text!r}: dimensions are whole numbers, e.g. 1x3x640x640"
        ) from None
    if any(d < 1 or d > 1_000_000 for d in shape) or len(shape) > 8:
        raise InputDataError(f"--shape {text!r}: each dimension is between 1 and 1000000")
    return name, shape
