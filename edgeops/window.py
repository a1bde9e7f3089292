"""One telemetry window: what the device agent accumulates, and the pure merges of windows.

:class:`WindowAccumulator` summarises a model's traffic against the bundle's baseline
(:class:`~edgeops.profile.Profile`) with the statistics of :mod:`edgeops.stats`: per numeric
feature the counts in the baseline's bins (open tails, ties go up), NaN as missing, the values
outside the baseline's [min, max] and mergeable moments; per categorical feature the counts per
baseline category, other and missing; per tensor input (an image) the same numeric summary of
each of its profile's reductions; the classifier's predicted classes and confidence in the
baseline's confidence edges, or the regressor's outputs in their baseline bins; latency in a
:class:`~edgeops.latency.LogHistogram`; errors, bad inputs and feedback.

Window names. A tabular feature and an output keep their baseline name. A tensor input's
reduction is named ``"{input}:{feature}"`` (:func:`window_name`), e.g. ``"image:mean[c0]"`` for
the feature ``mean[c0]`` of the tensor profile ``image``; :func:`input_baselines` maps every input
window name to its baseline profile.

The service merges windows over a sliding span with :func:`merge_windows` (counts add up,
moments merge by Chan et al.'s parallel update) and compares :func:`window_probs` with the
baseline's ``probs``, which are aligned bin for bin.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from typing import Any, Literal, TypeVar, cast

import msgspec
import numpy as np
import numpy.typing as npt

from edgeops.latency import LogHistogram
from edgeops.profile import (
    CategoricalProfile,
    ClassOutputProfile,
    NumericProfile,
    Profile,
    TensorProfile,
)
from edgeops.stats import (
    FloatArray,
    Moments,
    category_keys,
    class_output_counts,
    count_keys,
)
from edgeops.wire import (
    CategoricalWindow,
    ClassOutputWindow,
    Feedback,
    InputWindow,
    LatencyHistogram,
    NumericWindow,
    OutputWindow,
)

__all__ = [
    "Task",
    "Window",
    "WindowAccumulator",
    "WindowStats",
    "class_output_probs",
    "input_baselines",
    "merge_categorical",
    "merge_class_output",
    "merge_numeric",
    "merge_window",
    "merge_windows",
    "window_moments",
    "window_name",
    "window_probs",
]

log = logging.getLogger(__name__)

Task = Literal["classification", "regression"]
Window = NumericWindow | CategoricalWindow | ClassOutputWindow
W = TypeVar("W", bound=Window)


def window_name(tensor: str, feature: str) -> str:
    """The window name of a tensor input's reduction feature: ``"image:mean[c0]"``."""
    return f"{tensor}:{feature}"


def input_baselines(profile: Profile) -> dict[str, NumericProfile | CategoricalProfile]:
    """Every input window name of ``profile`` (in window order) and its baseline profile."""
    out: dict[str, NumericProfile | CategoricalProfile] = {}
    for p in profile.inputs:
        parts = (
            [(window_name(p.name, f.name), f) for f in p.features]
            if isinstance(p, TensorProfile)
            else [(p.name, p)]
        )
        for name, baseline in parts:
            if name in out:
                raise ValueError(f"two profile inputs give the window name {name!r}")
            out[name] = baseline
    return out


class WindowStats(msgspec.Struct, frozen=True, kw_only=True):
    """One closed window, in the wire's parts.

    ``window_start`` is the Unix time at which the window opened (the accumulator's creation, or
    the previous snapshot that reset it) and ``window_end`` is ``window_start`` plus the time
    elapsed on the monotonic clock, so consecutive windows tile without gaps or overlaps even
    when the wall clock is stepped. ``count`` is the predictions served (output rows).
    """

    window_start: float
    window_end: float
    count: int
    errors: int
    bad_inputs: int
    latency: LatencyHistogram
    inputs: list[InputWindow]
    outputs: list[OutputWindow]
    feedback: Feedback


class WindowAccumulator:
    """The statistics of one telemetry window of a model, built from its baseline and task.

    Thread-safe: request threads call the ``observe_*`` and ``count_*`` methods while a timer
    thread calls :meth:`snapshot`. A call validates its data before it counts anything, so one
    that raises ValueError counts nothing.

    Batches are reduced with numpy outside the lock and added under it. A one-row call (the
    agent's usual case) only validates its row and queues a copy of it; when the queue holds
    ``queue_rows`` rows (fewer for large tensors: a queue holds about 1 MiB at most), the call
    that filled it reduces the queue as one batch, outside the lock, so that numpy's per-call
    overhead is paid once per batch rather than once per prediction. With an ``executor`` (the
    agent passes a single-thread one it owns), full queues of inputs with large tensors (at
    least 64 KiB a row) are reduced on it instead, at most
    ``MAX_BACKGROUND`` at a time (beyond that, and once the executor is shut down, the caller
    reduces them as without one). :meth:`snapshot` waits for those reductions and adds what is
    queued, so every observation lands in its own window.

    ``observe_outputs`` counts the predictions served, so call it for every successful
    prediction; ``observe_inputs`` may see only a sample of them.
    """

    def __init__(
        self,
        profile: Profile,
        task: Task,
        *,
        relative_accuracy: float = 0.01,
        queue_rows: int = 256,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        executor: Executor | None = None,
    ) -> None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if queue_rows < 1:
            raise ValueError(f"queue_rows must be at least 1, got {queue_rows}")
        input_baselines(profile)  # checks that the window names are unique
        self._numbers: list[_Numeric] = []  # numeric tabular features
        self._texts: list[_Categorical] = []  # categorical ones
        self._tensors: list[tuple[TensorProfile, list[_Numeric]]] = []
        self._states: list[_Numeric | _Categorical] = []  # every input window, in order
        for p in profile.inputs:
            if isinstance(p, TensorProfile):
                states = [_Numeric(window_name(p.name, f.name), f) for f in p.features]
                self._tensors.append((p, states))
                self._states += states
            elif isinstance(p, NumericProfile):
                self._numbers.append(_Numeric(p.name, p))
                self._states.append(self._numbers[-1])
            else:
                self._texts.append(_Categorical(p))
                self._states.append(self._texts[-1])
        self._number_names = [s.name for s in self._numbers]
        self._text_names = [s.name for s in self._texts]
        self._sample_shapes = [(1, *t.shape) for t, _ in self._tensors]
        self._classes: _Classes | None = None
        self._regression: list[_Numeric] = []
        if task == "classification":
            found = [p for p in profile.outputs if isinstance(p, ClassOutputProfile)]
            if profile.outputs and not found:
                raise ValueError("a classifier's baseline needs a class_output profile")
            self._classes = _Classes(found[0]) if found else None
            output_bytes = 8 * self._classes.n_classes if self._classes else 0
        else:
            if any(isinstance(p, ClassOutputProfile) for p in profile.outputs):
                raise ValueError("a regressor's baseline has numeric outputs only")
            self._regression = [
                _Numeric(p.name, p) for p in profile.outputs if isinstance(p, NumericProfile)
            ]
            output_bytes = 8 * len(self._regression)
        tensor_bytes = sum(8 * math.prod(t.shape) for t, _ in self._tensors)
        input_bytes = 8 * len(self._numbers) + 64 * len(self._texts) + tensor_bytes
        self._input_rows = max(1, min(queue_rows, _QUEUE_BYTES // max(input_bytes, 1)))
        self._output_rows = max(1, min(queue_rows, _QUEUE_BYTES // max(output_bytes, 1)))
        self._relative_accuracy = relative_accuracy
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._reducing = 0  # taken queues being reduced outside the lock
        # Only large tensors' reductions (mostly numpy work, which releases the GIL) go to the
        # executor: small ones are mostly Python, which would contend for the GIL with callers.
        self._executor = executor if tensor_bytes >= _BACKGROUND_ROW_BYTES else None
        self._background = 0  # of them, those handed to the executor
        self._closing = False  # a snapshot waits for them: take no more
        self._queued_inputs: list[_Row] = []
        self._queued_outputs: list[tuple[int, bytes]] = []  # (row width, float64 row)
        self._clock = clock
        self._start_mono = clock()
        self._start_wall = wall_clock()
        self._clear()

    def _clear(self) -> None:
        self._count = self._errors = self._bad_inputs = 0
        self._correct = self._total = 0
        self._latency = LogHistogram(self._relative_accuracy)
        for s in (*self._states, *self._regression):
            s.clear()
        if self._classes is not None:
            self._classes.clear()

    # --- observing ------------------------------------------------------------------------------

    def observe_prediction(
        self,
        latency_ms: float,
        outputs: npt.ArrayLike,
        columns: Mapping[str, Any] | None = None,
    ) -> None:
        """One served call: :meth:`observe_latency`, :meth:`observe_outputs` and (unless
        ``columns`` is None, for a call not sampled) :meth:`observe_inputs` in one.

        A call of one row (the agent's usual case) takes the lock once for all three; any other
        is passed on to the three methods in turn.
        """
        out = self._output_row(outputs)
        row: _Row | None = None
        if columns is not None and self._states:
            row = self._one_row(columns)
        if out is None or (row is None and columns is not None and self._states):
            self.observe_latency(latency_ms)
            self.observe_outputs(outputs)
            if columns is not None:
                self.observe_inputs(columns)
            return
        inputs: list[_Row] = []
        with self._lock:
            self._latency.add(latency_ms)  # first: a bad latency counts nothing
            self._count += 1
            if out:
                self._queued_outputs.append(out)
                outputs_batch = self._take(self._queued_outputs, self._output_rows)
            else:
                outputs_batch = []
            if row is not None:
                self._queued_inputs.append(row)
                inputs = self._take(self._queued_inputs, self._input_rows)
        if outputs_batch:
            self._reduce(self._output_steps, outputs_batch)
        if inputs:
            self._hand_off(self._row_steps, inputs)

    def _output_row(self, outputs: npt.ArrayLike) -> tuple[int, bytes] | tuple[()] | None:
        """Validated and copied, the queue entry of one row of outputs: ``()`` when the window
        keeps no output statistics, None unless ``outputs`` is one row of floats."""
        if self._classes is None and not self._regression:
            return ()
        a = outputs if type(outputs) is np.ndarray else np.asarray(outputs)
        if a.dtype.kind != "f" or a.ndim != 2 or a.shape[0] != 1:
            return None
        width = a.shape[1]
        if self._classes is not None:
            if max(width, 2) != self._classes.n_classes:
                return None
        elif width != len(self._regression):
            return None
        return width, a.astype(np.float64, copy=False).tobytes()

    def observe_latency(self, ms: float | npt.ArrayLike) -> None:
        """One call's latency in milliseconds (or an array of them)."""
        with self._lock:
            self._latency.add(ms)

    def count_error(self, n: int = 1) -> None:
        """``n`` predictions failed inside the runtime."""
        _check_count(n)
        with self._lock:
            self._errors += n

    def count_bad_input(self, n: int = 1) -> None:
        """``n`` calls were refused for their input."""
        _check_count(n)
        with self._lock:
            self._bad_inputs += n

    def observe_feedback(self, correct: bool | npt.ArrayLike) -> None:
        """Whether earlier predictions were right: one bool, or an array of bools (or 0/1)."""
        if isinstance(correct, bool):
            right, total = int(correct), 1
        else:
            a = np.asarray(correct).ravel()
            if a.dtype.kind not in "bui" or not np.isin(a, (0, 1)).all():
                raise ValueError("feedback must be booleans (or 0 and 1)")
            right, total = int(np.count_nonzero(a)), int(a.size)
        with self._lock:
            self._correct += right
            self._total += total

    def observe_inputs(self, columns: Mapping[str, Any]) -> None:
        """The raw inputs of some predictions.

        Tabular features: one 1-D array-like of raw values per baseline feature name (numbers,
        with NaN or None missing; text for categorical features), or one scalar for one row.
        Tensor inputs: ``{input name: batch [N, *shape]}``, reduced by the TensorProfile.
        Baseline inputs absent from ``columns`` count as missing; other names are ignored.
        ValueError for columns of different lengths, non-numbers in a numeric feature, or a
        tensor of the wrong rank, channels or dtype.
        """
        if not self._states:
            return
        row = self._one_row(columns)
        if row is None:
            steps = self._batch_steps(columns)
            with self._lock:
                for add, arg in steps:
                    add(arg)
            return
        with self._lock:
            self._queued_inputs.append(row)
            batch = self._take(self._queued_inputs, self._input_rows)
        if batch:
            self._hand_off(self._row_steps, batch)

    def _one_row(self, columns: Mapping[str, Any]) -> _Row | None:
        """One row of every input, validated and copied; None unless ``columns`` holds exactly
        one row of each (one-element arrays or lists, scalars, tensors ``[1, *shape]``)."""
        get = columns.get
        numbers = self._one_row_numbers([get(name, _ABSENT) for name in self._number_names])
        if numbers is None:
            return None
        keys: list[str | None] = []
        for name in self._text_names:
            v = get(name, _ABSENT)
            x = v.item() if type(v) is np.ndarray and v.shape == (1,) else _single(v)
            if x is _ABSENT:
                return None
            keys.append(x if type(x) is str and x else category_keys((x,))[0])
        samples: list[npt.NDArray[Any]] = []
        for (tensor, _), shape in zip(self._tensors, self._sample_shapes, strict=True):
            v = get(tensor.name, _ABSENT)
            if v is _ABSENT:
                return None
            a = np.asarray(v)
            if a.shape != shape or a.dtype.kind not in "biuf":
                return None
            samples.append(a.copy())  # the caller may reuse its array
        return numbers, keys, samples

    def _one_row_numbers(self, values: list[Any]) -> bytes | None:
        """The numeric features' values of one row as float64 bytes (None and NaN missing);
        None unless each value is one element (or a scalar)."""
        if not values:
            return b""
        try:  # the agent's columns: one-element arrays of numbers
            return array("d", [v.item() for v in values]).tobytes()
        except (AttributeError, TypeError, ValueError):
            pass  # not arrays, longer ones, absent, None or text: one by one
        numbers = array("d")
        for name, v in zip(self._number_names, values, strict=True):
            x = _single(v)
            if x is _ABSENT:
                return None
            try:
                numbers.append(math.nan if x is None else float(x))
            except (TypeError, ValueError):
                raise ValueError(f"{name!r}: {x!r} is not a number") from None
        return numbers.tobytes()

    def _row_steps(self, batch: list[_Row]) -> list[_Step]:
        """The steps that add queued rows, reduced as one batch."""
        steps: list[_Step] = []
        if self._numbers:
            x = np.frombuffer(b"".join([numbers for numbers, _, _ in batch]), dtype=np.float64)
            steps += _numeric_steps(self._numbers, x.reshape(len(batch), -1))
        for j, text in enumerate(self._texts):
            steps.append((text.add_many, text.count([keys[j] for _, keys, _ in batch])))
        for i, (tensor, states) in enumerate(self._tensors):
            reduced = tensor.reduce(np.concatenate([samples[i] for _, _, samples in batch]))
            steps += _numeric_steps(states, np.column_stack(list(reduced.values())))
        return steps

    def _batch_steps(self, columns: Mapping[str, Any]) -> list[_Step]:
        """The steps that add any batch of inputs (see :meth:`observe_inputs`)."""
        rows: int | None = None

        def same_rows(name: str, n: int) -> None:
            nonlocal rows
            if rows is not None and n != rows:
                raise ValueError(f"input {name!r} has {n} rows where others have {rows}")
            rows = n

        absent: list[_Numeric | _Categorical] = []
        numbers: list[tuple[_Numeric, FloatArray]] = []
        for state in self._numbers:
            v = columns.get(state.name, _ABSENT)
            if v is _ABSENT:
                absent.append(state)
                continue
            try:
                f = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{state.name!r}: expected numbers") from None
            if f.ndim > 1:
                raise ValueError(f"{state.name!r}: expected one value per row, got {f.shape}")
            same_rows(state.name, f.size)
            numbers.append((state, f.reshape(-1)))
        texts: list[tuple[_Categorical, list[str | None]]] = []
        for text in self._texts:
            v = columns.get(text.name, _ABSENT)
            if v is _ABSENT:
                absent.append(text)
                continue
            if np.ndim(v) > 1:
                raise ValueError(f"{text.name!r}: expected one value per row")
            keys = category_keys(v if np.ndim(v) else [v])
            same_rows(text.name, len(keys))
            texts.append((text, keys))
        tensors: list[tuple[TensorProfile, list[_Numeric], npt.NDArray[Any]]] = []
        for tensor, states in self._tensors:
            v = columns.get(tensor.name, _ABSENT)
            if v is _ABSENT:
                absent += states
                continue
            a = _check_tensor(tensor, np.asarray(v))
            same_rows(tensor.name, a.shape[0])
            tensors.append((tensor, states, a))
        if rows is None:  # no baseline input given: count them all missing
            first = next(iter(columns.values()), ())
            rows = int(np.shape(first)[0]) if np.ndim(first) else 1
        steps: list[_Step] = [(s.add_missing, rows) for s in absent]
        if numbers:
            x = np.column_stack([f for _, f in numbers])
            steps += _numeric_steps([s for s, _ in numbers], x)
        steps += [(text.add_many, text.count(keys)) for text, keys in texts]
        for tensor, states, a in tensors:
            if rows:
                reduced = tensor.reduce(a)
                steps += _numeric_steps(states, np.column_stack(list(reduced.values())))
        return steps

    def observe_outputs(self, outputs: npt.ArrayLike) -> None:
        """The outputs of some predictions, one row each; counts them as served.

        Classifier: probabilities ``[N, K]`` (``[N, 1]``: a binary classifier's probability of
        class 1); rows with NaN are counted as served but not in the class counts. Regressor:
        ``[N]`` or ``[N, 1]`` for one output, ``[N, K]`` for K outputs, in the baseline's order.
        """
        a = np.asarray(outputs)
        n = a.shape[0] if a.ndim else 1
        if self._classes is not None:
            k = self._classes.n_classes
            if a.ndim != 2 or max(a.shape[1], 2) != k:
                raise ValueError(f"expected probabilities [N, {k}], got shape {a.shape}")
        elif self._regression:
            k = len(self._regression)
            if not (a.ndim == 2 and a.shape[1] == k) and not (a.ndim == 1 and k == 1):
                raise ValueError(f"expected {k} regression output(s) [N, {k}], got {a.shape}")
        else:
            with self._lock:
                self._count += n
            return
        try:
            f = a.astype(np.float64, copy=False)
        except (TypeError, ValueError):
            raise ValueError("outputs must be numbers") from None
        if n == 1:
            row = (f.shape[-1] if f.ndim == 2 else 1, f.tobytes())  # a copy of the row
            with self._lock:
                self._count += 1
                self._queued_outputs.append(row)
                batch = self._take(self._queued_outputs, self._output_rows)
            if batch:
                self._reduce(self._output_steps, batch)
            return
        steps = self._output_array_steps(f.reshape(n, f.shape[-1] if f.ndim == 2 else 1))
        with self._lock:
            self._count += n
            for add, arg in steps:
                add(arg)

    def _output_steps(self, batch: list[tuple[int, bytes]]) -> list[_Step]:
        """The steps that add queued output rows, one batch per row width (a binary
        classifier's rows may be ``[p]`` or ``[1 - p, p]``)."""
        steps: list[_Step] = []
        for width in sorted({w for w, _ in batch}):
            rows = b"".join([row for w, row in batch if w == width])
            a = np.frombuffer(rows, dtype=np.float64).reshape(-1, width)
            steps += self._output_array_steps(a)
        return steps

    def _output_array_steps(self, a: FloatArray) -> list[_Step]:
        """The steps that add outputs ``[N, width]``."""
        if self._classes is not None:
            return [(self._classes.add_many, self._classes.count(a))]
        return _numeric_steps(self._regression, a)

    # --- the queues -----------------------------------------------------------------------------

    def _take(self, queue: list[B], at_least: int) -> list[B]:
        """Under the lock: the items of ``queue`` (which is emptied) when it holds ``at_least``
        and no snapshot is waiting, counted as being reduced; else nothing."""
        if len(queue) < at_least or self._closing:
            return []
        batch = queue.copy()
        queue.clear()
        self._reducing += 1
        return batch

    def _hand_off(self, make_steps: Callable[[list[B]], list[_Step]], batch: list[B]) -> None:
        """Reduce a taken queue of inputs on the executor if there is one with room, else here."""
        if self._executor is not None:
            with self._lock:
                room = self._background < MAX_BACKGROUND
                self._background += room
            if room:
                try:
                    future = self._executor.submit(self._reduce, make_steps, batch, True)
                except RuntimeError:  # shut down: reduce here
                    with self._lock:
                        self._background -= 1
                else:
                    future.add_done_callback(_log_failure)
                    return
        self._reduce(make_steps, batch)

    def _reduce(
        self,
        make_steps: Callable[[list[B]], list[_Step]],
        batch: list[B],
        background: bool = False,
    ) -> None:
        """Reduce a taken queue outside the lock, then add it under the lock. (Its rows were
        validated when queued; should the reduction still fail, they are dropped and the error
        raised.)"""
        steps: list[_Step] = []
        try:
            steps = make_steps(batch)
        finally:
            with self._lock:
                for add, arg in steps:
                    add(arg)
                self._reducing -= 1
                self._background -= background
                if not self._reducing:
                    self._settled.notify_all()

    # --- closing ------------------------------------------------------------------------------

    def snapshot(self, reset: bool = True) -> WindowStats:
        """The window so far; with ``reset`` a new window starts where this one ends.

        Waits for the queues other threads are reducing (no new ones are taken meanwhile), then
        reduces what is still queued under the lock: about one queue of inputs and one of
        outputs, a fraction of a millisecond.
        """
        with self._settled:
            self._closing = True
            while self._reducing:
                self._settled.wait()
            self._closing = False
            steps = self._row_steps(self._queued_inputs) if self._queued_inputs else []
            if self._queued_outputs:
                steps += self._output_steps(self._queued_outputs)
            self._queued_inputs.clear()
            self._queued_outputs.clear()
            for add, arg in steps:
                add(arg)
            now = self._clock()
            start = self._start_wall
            end = start + (now - self._start_mono)
            stats = WindowStats(
                window_start=start,
                window_end=end,
                count=self._count,
                errors=self._errors,
                bad_inputs=self._bad_inputs,
                latency=self._latency.to_wire(),
                inputs=[s.window() for s in self._states],
                outputs=(
                    [self._classes.window()]
                    if self._classes is not None
                    else [r.window() for r in self._regression]
                ),
                feedback=Feedback(correct=self._correct, total=self._total),
            )
            if reset:
                self._clear()
                self._start_wall, self._start_mono = end, now
        return stats


# --- accumulator parts ------------------------------------------------------------------------

_ABSENT: Any = object()
_QUEUE_BYTES = 1 << 20
MAX_BACKGROUND = 2
_BACKGROUND_ROW_BYTES = 1 << 16
"""Full queues reduced on the executor at a time (which bounds the rows it holds in memory)."""
B = TypeVar("B")
_Step = tuple[Callable[[Any], None], Any]


_Row = tuple[bytes, list[str | None], list[npt.NDArray[Any]]]
"""One queued row of inputs (a plain tuple: cheaper to make than a NamedTuple): the numeric
features' values as float64 bytes, the categorical features' keys, and a copy of each tensor
sample ``[1, *shape]``."""


def _log_failure(future: Future[None]) -> None:
    error = future.exception()
    if error is not None:
        log.error("a telemetry reduction failed; its rows are dropped", exc_info=error)


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"expected a count (a non-negative integer), got {n!r}")


def _single(v: Any) -> Any:
    """The value of a one-row column (a one-element array or list, or a scalar); ``_ABSENT``
    for anything else."""
    t = type(v)
    if t is np.ndarray:
        return v.item() if v.shape == (1,) or v.shape == () else _ABSENT
    if t is list or t is tuple:
        return v[0] if len(v) == 1 else _ABSENT
    if v is None or t is float or t is str or t is int or isinstance(v, np.generic):
        return v
    return _ABSENT


def _check_tensor(tensor: TensorProfile, a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    channels = a.shape[-1] if a.ndim else None
    if a.ndim != len(tensor.shape) + 1 or (tensor.channels_last and channels != tensor.shape[-1]):
        raise ValueError(
            f"{tensor.name!r}: expected a batch of samples like {tensor.shape}, got {a.shape}"
        )
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{tensor.name!r}: expected numbers, got dtype {a.dtype}")
    if a.size == 0 and a.shape[0]:
        raise ValueError(f"{tensor.name!r}: samples of shape {a.shape[1:]} have no elements")
    return a


def _numeric_steps(states: Sequence[_Numeric], x: FloatArray) -> list[_Step]:
    """The steps that add column ``j`` of ``x`` ``[N, F]`` to ``states[j]``.

    Bins as :func:`~edgeops.stats.bin_counts` (``searchsorted(side="right")``; NaN, which sorts
    last, is taken out of the top bin and counted missing), out-of-range against the baseline's
    [min, max], and moments of the finite values as :meth:`Moments.of` (two passes), all the
    features at once.
    """
    if x.shape[0] == 0:
        return []
    finite = np.isfinite(x)
    count = finite.sum(axis=0)
    mean = np.where(finite, x, 0.0).sum(axis=0) / np.maximum(count, 1)
    dev = np.where(finite, x - mean, 0.0)
    m2 = np.einsum("ij,ij->j", dev, dev)
    lo = np.where(finite, x, np.inf).min(axis=0)
    hi = np.where(finite, x, -np.inf).max(axis=0)
    base_lo = np.array([s.lo for s in states])
    base_hi = np.array([s.hi for s in states])
    outside = ((x < base_lo) | (x > base_hi)).sum(axis=0).tolist()
    missing = np.isnan(x).sum(axis=0).tolist()
    stats = zip(count.tolist(), mean.tolist(), m2.tolist(), lo.tolist(), hi.tolist(), strict=True)
    steps: list[_Step] = []
    for j, (state, (n, mu, sq, vmin, vmax)) in enumerate(zip(states, stats, strict=True)):
        idx = np.searchsorted(state.edges, x[:, j], side="right")
        counts = np.bincount(idx, minlength=len(state.edges) + 1).tolist()
        counts[-1] -= missing[j]
        m = Moments(n, mu, sq, vmin, vmax) if n else Moments.empty()
        steps.append((state.add_many, (counts, missing[j], outside[j], m)))
    return steps


_NumericDelta = tuple[list[int], int, int, Moments]


class _Numeric:
    """Bins, missing, out-of-range count and moments of one numeric feature or output."""

    __slots__ = ("counts", "edges", "hi", "lo", "missing", "moments", "name", "out_of_range")

    def __init__(self, name: str, baseline: NumericProfile) -> None:
        self.name = name
        self.edges = np.asarray(baseline.edges, dtype=np.float64)
        m = baseline.moments
        self.lo, self.hi = (m.min, m.max) if m.count else (math.inf, -math.inf)
        self.clear()

    def clear(self) -> None:
        self.counts = [0] * (len(self.edges) + 1)
        self.missing = self.out_of_range = 0
        self.moments = Moments.empty()

    def add_missing(self, n: int) -> None:
        self.missing += n

    def add_many(self, delta: _NumericDelta) -> None:
        counts, missing, outside, m = delta
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.missing += missing
        self.out_of_range += outside
        self.moments = self.moments.merge(m)

    def window(self) -> NumericWindow:
        m = self.moments
        empty = m.count == 0
        return NumericWindow(
            name=self.name,
            counts=list(self.counts),
            missing=self.missing,
            out_of_range=self.out_of_range,
            count=m.count,
            mean=None if empty else m.mean,
            m2=m.m2,
            min=None if empty else m.min,
            max=None if empty else m.max,
        )


_CategoricalDelta = tuple[list[int], int, int]


class _Categorical:
    """Counts per baseline category, other and missing of one categorical feature."""

    __slots__ = ("categories", "counts", "missing", "name", "other")

    def __init__(self, baseline: CategoricalProfile) -> None:
        self.name = baseline.name
        self.categories = baseline.categories
        self.clear()

    def clear(self) -> None:
        self.counts = [0] * len(self.categories)
        self.other = self.missing = 0

    def add_missing(self, n: int) -> None:
        self.missing += n

    def count(self, keys: Iterable[str | None]) -> _CategoricalDelta:
        """The counts of some :func:`~edgeops.stats.category_keys` (outside the lock)."""
        counts, other, missing = count_keys(keys, self.categories)
        return counts.tolist(), other, missing

    def add_many(self, delta: _CategoricalDelta) -> None:
        counts, other, missing = delta
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.other += other
        self.missing += missing

    def window(self) -> CategoricalWindow:
        return CategoricalWindow(
            name=self.name, counts=list(self.counts), other=self.other, missing=self.missing
        )


class _Classes:
    """A classifier's predicted-class counts and confidence counts in the baseline's edges."""

    __slots__ = ("class_counts", "confidence_counts", "edges", "n_classes", "name")

    def __init__(self, baseline: ClassOutputProfile) -> None:
        self.name = baseline.name
        self.n_classes = len(baseline.labels)
        self.edges = baseline.confidence_edges
        self.clear()

    def clear(self) -> None:
        self.class_counts = [0] * self.n_classes
        self.confidence_counts = [0] * (len(self.edges) + 1)

    def count(self, probs: npt.NDArray[Any]) -> tuple[list[int], list[int]]:
        """:func:`~edgeops.stats.class_output_counts` of some probabilities (outside the lock)."""
        classes, confidence = class_output_counts(probs, self.n_classes, self.edges)
        return classes.tolist(), confidence.tolist()

    def add_many(self, delta: tuple[list[int], list[int]]) -> None:
        classes, confidence = delta
        self.class_counts = [a + b for a, b in zip(self.class_counts, classes, strict=True)]
        self.confidence_counts = [
            a + b for a, b in zip(self.confidence_counts, confidence, strict=True)
        ]

    def window(self) -> ClassOutputWindow:
        return ClassOutputWindow(
            name=self.name,
            class_counts=list(self.class_counts),
            confidence_counts=list(self.confidence_counts),
        )


# --- merging windows (pure) -------------------------------------------------------------------


def window_moments(w: NumericWindow) -> Moments:
    """The moments of a numeric window; ValueError when they are inconsistent."""
    if w.count == 0:
        return Moments.empty()
    if w.mean is None or w.min is None or w.max is None:
        raise ValueError(f"{w.name!r}: count {w.count} without mean, min and max")
    return Moments(w.count, w.mean, w.m2, w.min, w.max)


def _check(name_a: str, name_b: str, what: str, len_a: int, len_b: int) -> None:
    if name_a != name_b:
        raise ValueError(f"cannot merge windows {name_a!r} and {name_b!r}")
    if len_a != len_b:
        raise ValueError(f"{name_a!r}: {len_a} and {len_b} {what} do not merge")


def _add(a: Sequence[int], b: Sequence[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


def merge_numeric(a: NumericWindow, b: NumericWindow) -> NumericWindow:
    """Both windows of one numeric feature as one (same name and bin count, else ValueError)."""
    _check(a.name, b.name, "bins", len(a.counts), len(b.counts))
    m = window_moments(a).merge(window_moments(b))
    empty = m.count == 0
    return NumericWindow(
        name=a.name,
        counts=_add(a.counts, b.counts),
        missing=a.missing + b.missing,
        out_of_range=a.out_of_range + b.out_of_range,
        count=m.count,
        mean=None if empty else m.mean,
        m2=m.m2,
        min=None if empty else m.min,
        max=None if empty else m.max,
    )


def merge_categorical(a: CategoricalWindow, b: CategoricalWindow) -> CategoricalWindow:
    """Both windows of one categorical feature as one (same name and categories count)."""
    _check(a.name, b.name, "categories", len(a.counts), len(b.counts))
    return CategoricalWindow(
        name=a.name,
        counts=_add(a.counts, b.counts),
        other=a.other + b.other,
        missing=a.missing + b.missing,
    )


def merge_class_output(a: ClassOutputWindow, b: ClassOutputWindow) -> ClassOutputWindow:
    """Both windows of one classifier output as one (same name, class and bin counts)."""
    _check(a.name, b.name, "classes", len(a.class_counts), len(b.class_counts))
    _check(a.name, b.name, "confidence bins", len(a.confidence_counts), len(b.confidence_counts))
    return ClassOutputWindow(
        name=a.name,
        class_counts=_add(a.class_counts, b.class_counts),
        confidence_counts=_add(a.confidence_counts, b.confidence_counts),
    )


def merge_window(a: W, b: W) -> W:
    """Two windows of one name and kind as one; ValueError when they do not match."""
    if isinstance(a, NumericWindow) and isinstance(b, NumericWindow):
        return cast(W, merge_numeric(a, b))
    if isinstance(a, CategoricalWindow) and isinstance(b, CategoricalWindow):
        return cast(W, merge_categorical(a, b))
    if isinstance(a, ClassOutputWindow) and isinstance(b, ClassOutputWindow):
        return cast(W, merge_class_output(a, b))
    raise ValueError(f"{a.name!r}: cannot merge a {type(a).__name__} and a {type(b).__name__}")


def merge_windows(windows: Iterable[Sequence[W]]) -> list[W]:
    """Several telemetry windows' input (or output) lists as one list, merged by name, in the
    order names are first seen. ValueError for a name twice in one list or windows that do not
    match (another kind, another number of bins)."""
    merged: dict[str, W] = {}
    for ws in windows:
        names = [w.name for w in ws]
        if len(set(names)) != len(names):
            raise ValueError(f"a window list names a feature twice: {names}")
        for w in ws:
            prev = merged.get(w.name)
            merged[w.name] = w if prev is None else merge_window(prev, w)
    return list(merged.values())


def _probs(counts: Sequence[int]) -> FloatArray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else np.zeros_like(c)


def window_probs(window: NumericWindow | CategoricalWindow) -> FloatArray:
    """Shares of the non-missing values, aligned with the baseline's ``probs``: every bin with
    the open tails (numeric), or every category then other (categorical); zeros when empty."""
    if isinstance(window, NumericWindow):
        return _probs(window.counts)
    return _probs([*window.counts, window.other])


def class_output_probs(window: ClassOutputWindow) -> tuple[FloatArray, FloatArray]:
    """Shares of the predicted classes and of the confidence bins, aligned with the baseline's
    ``class_probs`` and ``confidence_probs``; zeros when empty."""
    return _probs(window.class_counts), _probs(window.confidence_counts)
