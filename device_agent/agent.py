"""The on-device agent: serves the current bundle and reports how that goes.

An :class:`Agent` owns its model store, the served model, the telemetry window, the outbox, the
MQTT link, the local HTTP server and its threads; ``start()`` and ``stop()`` (or ``with``) bound
their lives. The in-process API is :meth:`Agent.predict` and :meth:`Agent.feedback`. A command
is carried out only once its :class:`~device_agent.guard.CommandGuard` admits it (signed by a
trusted command key, for this device, in time, with a new counter); update commands go to its
:class:`~device_agent.updater.Updater`, which finishes an interrupted update before the model is
loaded at start.

Every telemetry window and event becomes a typed message (:mod:`edgeops.core.wire`) in the disk
outbox before anything is sent, so a broker outage or an agent restart loses nothing.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from threading import get_ident
from typing import Any, Literal, cast

import numpy.typing as npt

from device_agent.config import AgentConfig
from device_agent.guard import CommandGuard
from device_agent.link import MqttLink
from device_agent.metrics import AgentMetrics
from device_agent.outbox import Outbox
from device_agent.serving import ServedModel
from device_agent.store import ModelStore
from device_agent.updater import Updater
from edgeops import __version__
from edgeops.core import events, topics, wire
from edgeops.core.errors import (
    EdgeOpsError,
    InputDataError,
    ModelError,
    RuntimeBackendError,
    WireError,
)
from edgeops.core.profile import Profile
from edgeops.core.signing import load_verify_keys
from edgeops.core.window.accumulator import WindowAccumulator, WindowStats

log = logging.getLogger(__name__)

_FEEDBACK_MEMORY = 10_000


class _Refused(InputDataError):
    """A rollback is refused; ``data`` (the reason, the previous version) goes in the failure
    event."""

    def __init__(self, message: str, data: events.RollbackFailed) -> None:
        super().__init__(message)
        self.data = data


@dataclass(frozen=True, slots=True)
class Prediction:
    """The result of one :meth:`Agent.predict` call (one entry per sample)."""

    ids: list[str]
    """Ids to send feedback for, one per sample."""
    outputs: list[npt.NDArray[Any]]
    """The model's outputs, floats unless ``raw`` was asked for."""
    predicted: list[Any]
    """Class labels (classifiers) or values (regressors)."""
    model: wire.ModelRef
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "predicted": self.predicted,
            "outputs": [o.tolist() for o in self.outputs],
            "model": {"name": self.model.name, "version": self.model.version},
            "latency_ms": self.latency_ms,
        }


class _Serving:
    """The model and window predictions run on, and the threads running on them now."""

    __slots__ = ("active", "model", "window")

    def __init__(self, model: ServedModel | None, window: WindowAccumulator | None) -> None:
        self.model = model
        self.window = window
        self.active: set[int] = set()


class Agent:
    """The device daemon's core, usable in-process (tests, or an application embedding it)."""

    def __init__(self, config: AgentConfig, *, mqtt: bool | None = None, http: bool | None = None):
        self.config = config.checked()
        self.boot = uuid.uuid4().hex[:16]
        self.started = time.time()
        self._seq = itertools.count(1)
        self._seq_lock = threading.Lock()
        self._prediction_ids = itertools.count(1)  # next() is atomic under the GIL
        self._use_mqtt = config.mqtt.enabled if mqtt is None else mqtt
        self._use_http = config.http.enabled if http is None else http
        # Held by whoever closes a window (the timer's flush, a model switch) from the moment
        # its end is fixed until its telemetry is in the outbox: window seqs follow window times.
        self._window_lock = threading.Lock()
        # The model and window predictions use, with the threads predicting on them: a model
        # switch closes the old window only once those have counted themselves in it.
        self._serving = _Serving(None, None)
        self._reducer: ThreadPoolExecutor | None = None  # the window's background reductions
        self._sample_counter = 0
        self._recent: OrderedDict[str, Any] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._stop = threading.Event()
        self._retime = threading.Event()  # the window timer: stopping, or the length changed
        self._commands: queue.Queue[bytes | None] = queue.Queue(maxsize=100)
        self._threads: list[threading.Thread] = []
        self.store: ModelStore | None = None
        self.outbox: Outbox | None = None
        self.link: MqttLink | None = None
        self.http: Any = None
        self.updater: Updater | None = None
        self.guard: CommandGuard | None = None
        self.on_window: Callable[[wire.Telemetry], None] | None = None
        self.metrics = AgentMetrics(self)
        """Its Prometheus metrics (``GET /metrics`` on the local API)."""

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Agent:
        """Open the store and outbox, load the current model, start the HTTP API, the MQTT link
        and the threads. A failure part way releases what was opened, then raises."""
        try:
            return self._start()
        except BaseException:
            self._release_partial()
            raise

    def _release_partial(self) -> None:
        self._stop.set()
        parts: list[Callable[[], object]] = []
        if self.http is not None:
            parts.append(self.http.stop)
        if self.link is not None:
            parts.append(self.link.stop)
        if self._reducer is not None:
            parts.append(self._reducer.shutdown)
        if self._model is not None:
            parts.append(self._model.close)
        if self.outbox is not None:
            parts.append(self.outbox.close)
        for close in parts:
            try:
                close()
            except Exception:
                log.exception("releasing a partly started agent")

    def _start(self) -> Agent:
        cfg = self.config
        keys = load_verify_keys(cfg.model.trusted_keys) if cfg.model.trusted_keys else []
        self.store = ModelStore(
            cfg.model.store, trusted_keys=keys, allow_unsigned=cfg.model.allow_unsigned
        )
        self.outbox = Outbox(
            cfg.mqtt.outbox,
            max_messages=cfg.mqtt.outbox_max_messages,
            max_bytes=cfg.mqtt.outbox_max_bytes,
        )
        self.guard = CommandGuard(
            cfg.commands,
            fleet=cfg.device.fleet,
            device=cfg.device.id,
            state_dir=cfg.model.store,
            bundle_keys=keys,
        )
        self._reducer = ThreadPoolExecutor(1, thread_name_prefix="telemetry-reduce")
        self.updater = Updater(self.store, cfg.update, self, threads=cfg.model.threads)
        self.updater.recover()  # the model loaded below is a committed one
        if self.store.current() is None and cfg.model.bundle is not None:
            self.store.activate(self.store.install_file(cfg.model.bundle).id)
        current = self.store.current()
        if current is not None:
            self._swap_model(ServedModel(current, threads=cfg.model.threads))
        else:
            log.warning("no model installed; predictions fail until one is")
            self._swap_model(None)
        if self._use_http:  # before the birth message, which tells the fleet the device serves
            from device_agent.http_api import HttpServer

            self.http = HttpServer(self, cfg.http)
            self.http.start()
        if self._use_mqtt:
            dev = cfg.device
            self.link = MqttLink(
                cfg.mqtt,
                self.outbox,
                client_id=f"edgeops-{dev.fleet}-{dev.id}",
                command_topic=topics.cmd(dev.fleet, dev.id),
                status_topic=topics.status(dev.fleet, dev.id),
                birth=lambda: wire.encode(self._status(online=True)),
                will=wire.encode(self._status(online=False)),
                on_command=self.submit_command,
            )
            self.link.start()
        self._spawn(self._window_loop, "telemetry-window")
        self._spawn(self._command_loop, "commands")
        self.event(events.Started(agent_version=__version__, commands=self.guard.mode))
        return self

    def stop(self) -> None:
        """Close the window, publish offline, drain what the broker will take, release all."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._retime.set()
        if self.http is not None:
            self.http.stop()
        self._commands.put(None)
        if self.updater is not None:
            self.updater.stop()
        for t in self._threads:
            t.join(timeout=5)
        self.flush_window()
        if self._reducer is not None:
            self._reducer.shutdown()  # idle: the flush waited for its reductions
        self.event(events.Stopped())
        if self.link is not None:
            self.link.stop(offline=wire.encode(self._status(online=False)))
        if self._model is not None:
            self._model.close()
        if self.outbox is not None:
            self.outbox.close()

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # --- serving ------------------------------------------------------------------------------

    @property
    def model(self) -> ServedModel | None:
        return self._serving.model

    @property
    def _model(self) -> ServedModel | None:
        return self._serving.model

    @property
    def _window(self) -> WindowAccumulator | None:
        return self._serving.window

    def predict(self, data: Any, *, raw: bool = False) -> Prediction:
        """Run the current model on ``data`` (records, columns, or an array; one sample or a
        batch; for a model with several inputs, a mapping of input name to array). Raises
        :class:`InputDataError` for bad input, :class:`ModelError` when no model is loaded,
        :class:`RuntimeBackendError` when inference fails."""
        me = get_ident()  # no lock on this path: set.add and set.discard are atomic
        while True:
            serving = self._serving
            serving.active.add(me)
            if self._serving is serving:  # not switched before we registered: it waits for us
                break
            serving.active.discard(me)
        try:
            return self._predict(serving.model, serving.window, data, raw)
        finally:
            serving.active.discard(me)

    def _predict(
        self,
        model: ServedModel | None,
        window: WindowAccumulator | None,
        data: Any,
        raw: bool,
    ) -> Prediction:
        if model is None or window is None:
            raise ModelError("no model is loaded")
        watch = self.updater.watch if self.updater is not None else None
        if watch is not None and watch.model is not model:
            watch = None
        t0 = time.perf_counter()
        try:
            prepared = model.prepare(data)
        except InputDataError:
            window.count_bad_input(1)
            self.metrics.bad_inputs.inc()
            raise
        n = len(prepared)
        try:
            tensors = model.run(prepared.x, raw=True)
            floats = model.to_float(tensors)
        except Exception as e:
            window.count_error(n)
            self.metrics.errors.inc(n)
            if watch is not None:
                watch.error(n)
            raise RuntimeBackendError(f"inference failed: {e}") from None
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        self.metrics.predictions.inc(n)
        self.metrics.latency.observe(elapsed_ms / 1000.0)
        if watch is not None:
            watch.observe(elapsed_ms)
        predicted = model.predicted(floats)
        first = floats[0]
        if first.ndim > 2:  # a whole tensor per call (a stateful model's): one row per sample
            first = first.reshape(n, -1)
        window.observe_prediction(elapsed_ms, first, prepared.columns if self._sampled() else None)
        ids = [f"{self.boot}-{next(self._prediction_ids)}" for _ in range(n)]
        recent = self._recent
        with self._recent_lock:
            if n == 1:
                recent[ids[0]] = predicted[0]
            else:
                recent.update(zip(ids, predicted, strict=True))
            while len(recent) > _FEEDBACK_MEMORY:
                recent.popitem(last=False)
        return Prediction(ids, tensors if raw else floats, predicted, model.ref, elapsed_ms)

    def _sampled(self) -> bool:
        rate = self.config.telemetry.sample_rate
        if rate >= 1.0:
            return True
        self._sample_counter += 1
        return (self._sample_counter * rate) % 1.0 < rate

    def feedback(self, prediction_id: str, label: Any) -> bool:
        """Record the true label of an earlier prediction; False if the id is unknown."""
        with self._recent_lock:
            predicted = self._recent.pop(prediction_id, None)
        window = self._window
        if predicted is None or window is None:
            return False
        if isinstance(predicted, float):
            tol = self.config.model.feedback_tolerance
            try:
                truth = float(label)
            except (TypeError, ValueError):
                raise InputDataError(f"label {label!r} is not a number") from None
            correct = abs(predicted - truth) <= tol * max(abs(truth), 1e-9)
        else:
            correct = str(predicted) == str(label)
        window.observe_feedback(correct)
        return True

    def health(self) -> dict[str, Any]:
        out = self.outbox.stats() if self.outbox is not None else None
        return {
            "status": "ok" if self._model is not None else "no-model",
            "device": self.config.device.id,
            "boot": self.boot,
            "uptime_s": round(time.time() - self.started, 3),
            "mqtt_connected": bool(self.link and self.link.connected),
            "outbox_pending": None if out is None else out.pending,
            "outbox_dropped": None if out is None else out.dropped,
        }

    def model_info(self) -> dict[str, Any]:
        if self._model is None:
            raise ModelError("no model is loaded")
        return self._model.info()

    def local_api(self) -> tuple[str, int] | None:
        """The local HTTP API's host and port, when it listens on TCP."""
        if self.http is None or self.config.http.unix_socket is not None:
            return None
        address = urllib.parse.urlsplit(self.http.address)
        return self.config.http.host, int(address.port or self.config.http.port)

    def switch_to(self, model: ServedModel | None) -> wire.LatencyHistogram | None:
        """Serve ``model`` from now on and tell the fleet (the updater's switch and rollback).
        Returns the latency histogram of the window the previous model served, if it served."""
        closed = self._swap_model(model)
        if self.link is not None:
            self.link.publish_status(wire.encode(self._status(online=True)))
        return closed.latency if closed is not None and closed.latency.count else None

    def _swap_model(self, model: ServedModel | None) -> wire.Telemetry | None:
        """Serve ``model`` from now on; the previous model's window is closed (and returned)
        once every prediction that started on it has been counted in it.

        The old window is sealed and the new one opens at that moment, under the window lock,
        which is held until the old window's telemetry is in the outbox: the timer cannot close
        the new window (and take a seq) before the old one is out."""
        profile = model.baseline if model is not None else Profile((), (), 10)
        task: Literal["classification", "regression"] = (
            "regression" if model is not None and model.task == "regression" else "classification"
        )
        with self._window_lock:
            before = self._serving
            opens = None if before.window is None else before.window.seal()
            window = WindowAccumulator(profile, task, executor=self._reducer, opens=opens)
            self._serving = _Serving(model, window)  # new predictions get the new pair
            deadline = time.monotonic() + 30.0
            while before.active and time.monotonic() < deadline:  # predictions under way
                time.sleep(0.0005)
            if before.active:
                log.error("predictions on the previous model did not finish; its window closed")
            closed = None
            if before.window is not None:
                closed = self._emit(before.window.snapshot(reset=False), before.model)
        if before.model is not None:
            before.model.close()
        return closed

    # --- telemetry ----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        with self._seq_lock:
            return next(self._seq)

    def _header(self) -> dict[str, Any]:
        return {
            "device": self.config.device.id,
            "boot": self.boot,
            "seq": self._next_seq(),
            "sent": time.time(),
        }

    def _status(self, *, online: bool) -> wire.Status:
        return wire.Status(
            **self._header(),
            online=online,
            model=None if self._model is None else self._model.ref,
            agent_version=__version__,
            started=self.started,
            labels=dict(self.config.device.labels),
        )

    def _enqueue(self, topic: str, msg: wire.Message) -> None:
        if self.outbox is None:
            return
        self.outbox.put(topic, wire.encode(msg))
        if self.link is not None:
            self.link.wake()

    def event(
        self,
        data: events.EventData,
        *,
        level: Literal["info", "warning", "error"] = "info",
        message: str = "",
        command_id: str | None = None,
    ) -> None:
        """Publish an event of ``data``'s kind (through the outbox)."""
        dev = self.config.device
        kind = events.kind_of(data)
        ev = wire.Event(
            **self._header(),
            kind=kind,
            level=level,
            message=message,
            command_id=command_id,
            data=events.to_data(data),
        )
        log.log(logging.ERROR if level == "error" else logging.INFO, "event %s %s", kind, message)
        self._enqueue(topics.events(dev.fleet, dev.id), ev)

    def flush_window(self) -> wire.Telemetry | None:
        """Close the current window now and put its telemetry in the outbox."""
        with self._window_lock:
            serving = self._serving
            if serving.window is None:
                return None
            return self._emit(serving.window.snapshot(reset=True), serving.model)

    def _emit(self, stats: WindowStats, model: ServedModel | None) -> wire.Telemetry:
        """Put one closed window's telemetry in the outbox (under the window lock: its seq,
        taken here, follows the seq of every window that closed before it)."""
        outbox = self.outbox.stats() if self.outbox is not None else None
        msg = wire.Telemetry(
            **self._header(),
            window_start=stats.window_start,
            window_end=stats.window_end,
            model=None if model is None else model.ref,
            count=stats.count,
            errors=stats.errors,
            bad_inputs=stats.bad_inputs,
            latency=stats.latency,
            inputs=list(stats.inputs),
            outputs=list(stats.outputs),
            feedback=stats.feedback,
            process=_process_stats(),
            outbox=wire.OutboxStats(
                pending=0 if outbox is None else outbox.pending,
                dropped=0 if outbox is None else outbox.dropped,
            ),
        )
        dev = self.config.device
        self._enqueue(topics.telemetry(dev.fleet, dev.id), msg)
        if self.on_window is not None:
            self.on_window(msg)
        return msg

    def _window_loop(self) -> None:
        while not self._stop.is_set():
            self._retime.wait(self._seconds_left())
            self._retime.clear()
            if self._stop.is_set():
                return
            if self._seconds_left() > 0:  # a switch opened a new window, or set-config
                continue
            try:
                self.flush_window()
            except Exception:
                log.exception("telemetry window failed")

    def _seconds_left(self) -> float:
        """Until the current window is due to close."""
        length = self.config.telemetry.window_seconds
        window = self._window
        return length if window is None else max(0.0, length - window.age())

    # --- commands -----------------------------------------------------------------------------

    def submit_command(self, payload: bytes) -> None:
        """Queue a command payload (from MQTT) for the command thread."""
        try:
            self._commands.put_nowait(payload)
        except queue.Full:
            self.event(events.CommandRejected(), level="error", message="command queue full")

    def _command_loop(self) -> None:
        while True:
            payload = self._commands.get()
            if payload is None:
                return
            self.handle_command(payload)

    def handle_command(self, payload: bytes) -> None:
        """Carry out one command; anything wrong with it becomes an error event.

        In order: the payload must be a valid command (:mod:`edgeops.core.wire`); the guard must
        admit it (signature, fleet and device, deadline, counter: ``command-rejected`` with the
        reason otherwise); then its kind is carried out and answered with ``KIND-done`` or
        ``KIND-failed`` (an update with its ``update-<state>`` events)."""
        try:
            cmd = wire.decode(payload, expected=wire.Command)
        except WireError as e:
            rejected = events.CommandRejected(reason=cast(wire.Reason, e.reason))
            self.event(rejected, level="error", message=str(e))
            return
        assert self.guard is not None
        try:
            refused = self.guard.admit(cmd)
        except OSError as e:  # the counter could not be recorded: not acted on
            log.error("command %s: recording its counter failed: %s", cmd.id, e)
            self.event(
                events.CommandRejected(reason="not recorded", kind=cmd.kind),
                level="error",
                message=f"{cmd.kind}: the command's counter could not be recorded ({e.strerror})",
                command_id=cmd.id,
            )
            return
        if refused is not None:
            self.event(
                events.CommandRejected(reason=refused.reason, kind=cmd.kind),
                level="error",
                message=f"{cmd.kind} refused: {refused.message}",
                command_id=cmd.id,
            )
            return
        if isinstance(cmd.args, wire.UpdateArgs):  # the updater publishes update-<state> events
            assert self.updater is not None
            self.updater.run(cmd)
            return
        try:
            result = self._run_command(cmd.args)
        except EdgeOpsError as e:
            data = e.data if isinstance(e, _Refused) else events.failed(cmd.kind)
            self.event(data, level="error", message=str(e), command_id=cmd.id)
            return
        except Exception as e:
            log.exception("command %s failed", cmd.kind)
            self.event(events.failed(cmd.kind), level="error", message=repr(e), command_id=cmd.id)
            return
        self.event(result, command_id=cmd.id)

    def _run_command(
        self, args: wire.CommandArgs
    ) -> events.PingDone | events.SetConfigDone | events.RollbackDone:
        if isinstance(args, wire.PingArgs):
            return events.PingDone(pong=time.time(), boot=self.boot)
        if isinstance(args, wire.SetConfigArgs):
            return self._set_config(args)
        if isinstance(args, wire.RollbackArgs):
            return self._rollback(args)
        raise ModelError(f"command '{args}' is not supported by this agent")

    def _rollback(self, args: wire.RollbackArgs) -> events.RollbackDone:
        """Serve the previous model again, when it is the version the command names."""
        assert self.store is not None
        if self.updater is not None and self.updater.busy:
            raise ModelError("an update is in progress; it rolls back itself if it fails")
        current = self.store.current()
        if args.from_sha256 is not None and (
            current is None or current.model_sha256 != args.from_sha256
        ):
            # Conditional (a rollout's): the model to undo is not current; nothing to do.
            return events.RollbackDone(
                changed=False,
                model=None if current is None else current.name,
                version=None if current is None else current.version,
            )
        previous = self.store.previous()
        if previous is None:
            raise _Refused(
                "no previous model to roll back to",
                events.RollbackFailed(reason="no previous model"),
            )
        if previous.version != args.version:
            raise _Refused(
                f"the previous model is {previous.name} {previous.version}, not {args.version}",
                events.RollbackFailed(reason="not the previous version", previous=previous.version),
            )
        entry = self.store.rollback()
        self._swap_model(ServedModel(entry, threads=self.config.model.threads))
        if self.link is not None:
            self.link.publish_status(wire.encode(self._status(online=True)))
        return events.RollbackDone(changed=True, model=entry.name, version=entry.version)

    def _set_config(self, args: wire.SetConfigArgs) -> events.SetConfigDone:
        """Apply a ``set-config`` command (its values are bounded by its type). A new window
        length applies to the window open now."""
        values = {
            k: v
            for k, v in (("window_seconds", args.window_seconds), ("sample_rate", args.sample_rate))
            if v is not None
        }
        telemetry = replace(self.config.telemetry, **values)
        self.config = replace(self.config, telemetry=telemetry).checked()
        self._retime.set()
        return events.SetConfigDone(
            window_seconds=telemetry.window_seconds, sample_rate=telemetry.sample_rate
        )


def _process_stats() -> wire.ProcessStats:
    try:
        import psutil

        p = psutil.Process()
        return wire.ProcessStats(
            cpu_percent=float(p.cpu_percent(interval=None)), rss_bytes=int(p.memory_info().rss)
        )
    except Exception:  # psutil missing or the platform refuses: report zeros, keep serving
        return wire.ProcessStats()
