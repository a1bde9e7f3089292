"""One telemetry window: what the device agent accumulates (the pure merges of windows are in
:mod:`edgeops.core.window.merge`).

:class:`WindowAccumulator` summarises a model's traffic against the bundle's baseline
(:class:`~edgeops.core.profile.Profile`) with the statistics of :mod:`edgeops.core.stats`: per
numeric feature the counts in the baseline's bins (open tails, ties go up), NaN as missing, the
values outside the baseline's [min, max] and mergeable moments; per categorical feature the counts
per baseline category, other and missing; per tensor input (an image) the same numeric summary of
each of its profile's reductions; the classifier's predicted classes and confidence in the
baseline's confidence edges, or the regressor's outputs in their baseline bins; latency in a
:class:`~edgeops.core.latency.LogHistogram`; errors, bad inputs and feedback.

Window names. A tabular feature and an output keep their baseline name. A tensor input's
reduction is named ``"{input}:{feature}"`` (:func:`window_name`), e.g. ``"image:mean[c0]"`` for
the feature ``mean[c0]`` of the tensor profile ``image``; :func:`input_baselines` maps every input
window name to its baseline profile.

The service merges windows over a sliding span with
:func:`~edgeops.core.window.merge.merge_windows`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from array import array
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any, Literal, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from edgeops.core.latency import LogHistogram
from edgeops.core.profile import (
    CategoricalProfile,
    ClassOutputProfile,
    NumericProfile,
    Profile,
    TensorProfile,
)
from edgeops.core.stats import (
    FloatArray,
    category_keys,
)
from edgeops.core.window.parts import (
    ABSENT,
    BACKGROUND_ROW_BYTES,
    MAX_BACKGROUND,
    QUEUE_BYTES,
    B,
    CategoricalState,
    ClassState,
    NumericState,
    Row,
    Step,
    check_count,
    check_tensor,
    log_failure,
    numeric_steps,
    single,
)
from edgeops.core.wire import (
    CategoricalWindow,
    ClassOutputWindow,
    Feedback,
    InputWindow,
    LatencyHistogram,
    NumericWindow,
    OutputWindow,
)

__all__ = [
    "Moment",
    "Task",
    "Window",
    "WindowAccumulator",
    "WindowStats",
    "input_baselines",
    "window_name",
]

log = logging.getLogger(__name__)

Task = Literal["classification", "regression"]
Window = NumericWindow | CategoricalWindow | ClassOutputWindow


def _elements_read(t: TensorProfile) -> int:
    """Elements of one sample of ``t`` that its reductions read."""
    channels = t.shape[-1] if t.channels_last and t.shape else 1
    length = math.prod(t.shape) // max(channels, 1)
    return channels * (length if t.sample is None else min(length, t.sample))


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


class Moment(NamedTuple):
    """One instant on a window's two clocks: where one window ends and the next opens."""

    wall: float
    """Unix time: what the window's start and end say."""
    mono: float
    """The monotonic clock's reading: what the window's length is measured on."""


class WindowStats(msgspec.Struct, frozen=True, kw_only=True):
    """One closed window, in the wire's parts.

    ``window_start`` is the Unix time at which the window opened (the accumulator's creation, its
    ``opens`` moment, or the previous snapshot that reset it) and ``window_end`` is
    ``window_start`` plus the time elapsed on the monotonic clock until the window was closed
    (the snapshot, or :meth:`WindowAccumulator.seal`), so consecutive windows tile without gaps or
    overlaps even when the wall clock is stepped. ``count`` is the predictions served (output
    rows).
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

    Times. A window opens at its creation, or at ``opens`` (the moment another window was sealed:
    the two then tile exactly), and closes at its snapshot, or at the moment :meth:`seal` fixed:
    a model switch seals the old model's window, opens the new one at that moment, and takes the
    old one's snapshot once the predictions under way on it have counted themselves in it.
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
        opens: Moment | None = None,
    ) -> None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if queue_rows < 1:
            raise ValueError(f"queue_rows must be at least 1, got {queue_rows}")
        input_baselines(profile)  # checks that the window names are unique
        self._numbers: list[NumericState] = []  # numeric tabular features
        self._texts: list[CategoricalState] = []  # categorical ones
        self._tensors: list[tuple[TensorProfile, list[NumericState]]] = []
        self._states: list[NumericState | CategoricalState] = []  # every input window, in order
        for p in profile.inputs:
            if isinstance(p, TensorProfile):
                states = [NumericState(window_name(p.name, f.name), f) for f in p.features]
                self._tensors.append((p, states))
                self._states += states
            elif isinstance(p, NumericProfile):
                self._numbers.append(NumericState(p.name, p))
                self._states.append(self._numbers[-1])
            else:
                self._texts.append(CategoricalState(p))
                self._states.append(self._texts[-1])
        self._number_names = [s.name for s in self._numbers]
        self._text_names = [s.name for s in self._texts]
        self._sample_shapes = [(1, *t.shape) for t, _ in self._tensors]
        self._classes: ClassState | None = None
        self._regression: list[NumericState] = []
        if task == "classification":
            found = [p for p in profile.outputs if isinstance(p, ClassOutputProfile)]
            if profile.outputs and not found:
                raise ValueError("a classifier's baseline needs a class_output profile")
            self._classes = ClassState(found[0]) if found else None
            output_bytes = 8 * self._classes.n_classes if self._classes else 0
        else:
            if any(isinstance(p, ClassOutputProfile) for p in profile.outputs):
                raise ValueError("a regressor's baseline has numeric outputs only")
            self._regression = [
                NumericState(p.name, p) for p in profile.outputs if isinstance(p, NumericProfile)
            ]
            output_bytes = 8 * len(self._regression)
        tensor_bytes = sum(8 * _elements_read(t) for t, _ in self._tensors)
        input_bytes = 8 * len(self._numbers) + 64 * len(self._texts) + tensor_bytes
        self._input_rows = max(1, min(queue_rows, QUEUE_BYTES // max(input_bytes, 1)))
        self._output_rows = max(1, min(queue_rows, QUEUE_BYTES // max(output_bytes, 1)))
        self._relative_accuracy = relative_accuracy
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._reducing = 0  # taken queues being reduced outside the lock
        # Only large tensors' reductions (mostly numpy work, which releases the GIL) go to the
        # executor: small ones are mostly Python, which would contend for the GIL with callers.
        self._executor = executor if tensor_bytes >= BACKGROUND_ROW_BYTES else None
        self._background = 0  # of them, those handed to the executor
        self._closing = False  # a snapshot waits for them: take no more
        self._queued_inputs: list[Row] = []
        self._queued_outputs: list[tuple[int, bytes]] = []  # (row width, float64 row)
        self._clock = clock
        if opens is None:
            opens = Moment(wall_clock(), clock())
        self._start_wall, self._start_mono = opens
        self._sealed: Moment | None = None
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
        row: Row | None = None
        if columns is not None and self._states:
            row = self._one_row(columns)
        if out is None or (row is None and columns is not None and self._states):
            self.observe_latency(latency_ms)
            self.observe_outputs(outputs)
            if columns is not None:
                self.observe_inputs(columns)
            return
        inputs: list[Row] = []
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
        check_count(n)
        with self._lock:
            self._errors += n

    def count_bad_input(self, n: int = 1) -> None:
        """``n`` calls were refused for their input."""
        check_count(n)
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

    def _one_row(self, columns: Mapping[str, Any]) -> Row | None:
        """One row of every input, validated and copied; None unless ``columns`` holds exactly
        one row of each (one-element arrays or lists, scalars, tensors ``[1, *shape]``)."""
        get = columns.get
        numbers = self._one_row_numbers([get(name, ABSENT) for name in self._number_names])
        if numbers is None:
            return None
        keys: list[str | None] = []
        for name in self._text_names:
            v = get(name, ABSENT)
            x = v.item() if type(v) is np.ndarray and v.shape == (1,) else single(v)
            if x is ABSENT:
                return None
            keys.append(x if type(x) is str and x else category_keys((x,))[0])
        samples: list[npt.NDArray[Any]] = []
        for (tensor, _), shape in zip(self._tensors, self._sample_shapes, strict=True):
            v = get(tensor.name, ABSENT)
            if v is ABSENT:
                return None
            a = np.asarray(v)
            if a.shape != shape or a.dtype.kind not in "biuf":
                return None
            rows = tensor.gather(a)  # a subset of a large tensor is a small copy
            # the caller may reuse its array: keep a copy, never a view of it
            samples.append(rows.copy() if np.may_share_memory(rows, a) else rows)
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
            x = single(v)
            if x is ABSENT:
                return None
            try:
                numbers.append(math.nan if x is None else float(x))
            except (TypeError, ValueError):
                raise ValueError(f"{name!r}: {x!r} is not a number") from None
        return numbers.tobytes()

    def _row_steps(self, batch: list[Row]) -> list[Step]:
        """The steps that add queued rows, reduced as one batch."""
        steps: list[Step] = []
        if self._numbers:
            x = np.frombuffer(b"".join([numbers for numbers, _, _ in batch]), dtype=np.float64)
            steps += numeric_steps(self._numbers, x.reshape(len(batch), -1))
        for j, text in enumerate(self._texts):
            steps.append((text.add_many, text.count([keys[j] for _, keys, _ in batch])))
        for i, (tensor, states) in enumerate(self._tensors):
            rows = np.concatenate([samples[i] for _, _, samples in batch])
            reduced = tensor.reduce_gathered(rows)
            steps += numeric_steps(states, np.column_stack(list(reduced.values())))
        return steps

    def _batch_steps(self, columns: Mapping[str, Any]) -> list[Step]:
        """The steps that add any batch of inputs (see :meth:`observe_inputs`)."""
        rows: int | None = None

        def same_rows(name: str, n: int) -> None:
            nonlocal rows
            if rows is not None and n != rows:
                raise ValueError(f"input {name!r} has {n} rows where others have {rows}")
            rows = n

        absent: list[NumericState | CategoricalState] = []
        numbers: list[tuple[NumericState, FloatArray]] = []
        for state in self._numbers:
            v = columns.get(state.name, ABSENT)
            if v is ABSENT:
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
        texts: list[tuple[CategoricalState, list[str | None]]] = []
        for text in self._texts:
            v = columns.get(text.name, ABSENT)
            if v is ABSENT:
                absent.append(text)
                continue
            if np.ndim(v) > 1:
                raise ValueError(f"{text.name!r}: expected one value per row")
            keys = category_keys(v if np.ndim(v) else [v])
            same_rows(text.name, len(keys))
            texts.append((text, keys))
        tensors: list[tuple[TensorProfile, list[NumericState], npt.NDArray[Any]]] = []
        for tensor, states in self._tensors:
            v = columns.get(tensor.name, ABSENT)
            if v is ABSENT:
                absent += states
                continue
            a = check_tensor(tensor, np.asarray(v))
            same_rows(tensor.name, a.shape[0])
            tensors.append((tensor, states, a))
        if rows is None:  # no baseline input given: count them all missing
            first = next(iter(columns.values()), ())
            rows = int(np.shape(first)[0]) if np.ndim(first) else 1
        steps: list[Step] = [(s.add_missing, rows) for s in absent]
        if numbers:
            x = np.column_stack([f for _, f in numbers])
            steps += numeric_steps([s for s, _ in numbers], x)
        steps += [(text.add_many, text.count(keys)) for text, keys in texts]
        for tensor, states, a in tensors:
            if rows:
                reduced = tensor.reduce(a)
                steps += numeric_steps(states, np.column_stack(list(reduced.values())))
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

    def _output_steps(self, batch: list[tuple[int, bytes]]) -> list[Step]:
        """The steps that add queued output rows, one batch per row width (a binary
        classifier's rows may be ``[p]`` or ``[1 - p, p]``)."""
        steps: list[Step] = []
        for width in sorted({w for w, _ in batch}):
            rows = b"".join([row for w, row in batch if w == width])
            a = np.frombuffer(rows, dtype=np.float64).reshape(-1, width)
            steps += self._output_array_steps(a)
        return steps

    def _output_array_steps(self, a: FloatArray) -> list[Step]:
        """The steps that add outputs ``[N, width]``."""
        if self._classes is not None:
            return [(self._classes.add_many, self._classes.count(a))]
        return numeric_steps(self._regression, a)

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

    def _hand_off(self, make_steps: Callable[[list[B]], list[Step]], batch: list[B]) -> None:
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
                    future.add_done_callback(log_failure)
                    return
        self._reduce(make_steps, batch)

    def _reduce(
        self,
        make_steps: Callable[[list[B]], list[Step]],
        batch: list[B],
        background: bool = False,
    ) -> None:
        """Reduce a taken queue outside the lock, then add it under the lock. (Its rows were
        validated when queued; should the reduction still fail, they are dropped and the error
        raised.)"""
        steps: list[Step] = []
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

    def age(self) -> float:
        """Seconds since the current window opened, on the monotonic clock."""
        with self._lock:
            return self._clock() - self._start_mono

    def seal(self) -> Moment:
        """Fix the window's end at this moment and return it (where the next window opens).

        Observations still count until the next snapshot, which ends at the sealed moment
        (and, with ``reset``, opens the next window there). Sealing again moves nothing.
        """
        with self._lock:
            if self._sealed is None:
                now = self._clock()
                self._sealed = Moment(self._start_wall + (now - self._start_mono), now)
            return self._sealed

    def snapshot(self, reset: bool = True) -> WindowStats:
        """The window so far; with ``reset`` a new window starts where this one ends.

        The window ends now, or at the moment :meth:`seal` fixed. Waits for the queues other
        threads are reducing (no new ones are taken meanwhile), then reduces what is still
        queued under the lock: about one queue of inputs and one of outputs, a fraction of a
        millisecond.
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
            if self._sealed is not None:
                end, now = self._sealed
            else:
                now = self._clock()
                end = self._start_wall + (now - self._start_mono)
            stats = WindowStats(
                window_start=self._start_wall,
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
                self._sealed = None
        return stats
