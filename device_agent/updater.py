"""Over-the-air model updates on the device: download, verify, stage, switch, watch, commit.

::

    downloading -> verifying -> staged -> switching -> health -> committed
                                                              -> rolled-back
    failed (at any step before health: the current model is left untouched)

An update command reaches the updater only once the agent's guard has admitted it (signed,
for this device, in time, a new counter: :mod:`device_agent.guard`). Before anything is
downloaded it is checked against the device's own update policy (:mod:`device_agent.policy`:
versions forward, the same model, allowed hosts, the health gate tightened to the device's
floors); a refusal is ``update-failed`` with ``at: request`` and ``data.reason``.

Each state is written to ``STORE/update.json`` (write, fsync, rename) *before* it is acted on,
and published as an ``update-<state>`` event carrying the command's id. :meth:`Updater.recover`,
called when the agent starts, finishes an update that a crash interrupted: before the switch
completed, the downloaded and staged files are discarded and the pointer restored
(``update-failed``, "interrupted at <state>"); during the health window, the previous model is
made current again (``update-rolled-back``, "interrupted during health window"). A terminal state
is written with ``"reported": false``, acted on (pointer, files), published, then marked
reported, so a kill between any two of these steps is finished on the next start as well.

The state file::

    {"command_id": "3f2a...", "state": "health", "reported": false,
     "url": "https://...", "sha256": "...", "size": 123456, "name": "digits",
     "version": "1.1.0",
     "health": {"predictions": 100, "seconds": null, "max_error_rate": 0.05, ...},
     "download": "downloads/<sha256>.part", "entry": "digits-1.1.0-0123456789ab",
     "before": {"current": "digits-1.0.0-...", "previous": null},
     "at": null, "reason": null, "updated": 1700000000.0,
     "history": [["downloading", 1700000000.0], ...]}

The health window counts the new model's predictions and inference errors and its latency
(:class:`~edgeops.core.latency.LogHistogram`). The p95 budget is checked against the window's
traffic (or, with fewer than :data:`MIN_TRAFFIC` predictions, the new model's p95 on the bundle's
sample inputs); the ratio against the previous model compares the traffic of the telemetry window
before the switch with the health window's, or, where either saw too little traffic, both models'
latency on the sample inputs, measured one after the other while staging.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
import numpy as np

from device_agent import policy
from device_agent.config import UpdateConfig
from device_agent.download import download
from device_agent.policy import HealthGate
from device_agent.serving import ServedModel
from device_agent.store import ModelStore
from edgeops.core import events, wire
from edgeops.core.bundle import Bundle
from edgeops.core.errors import DownloadFailed, EdgeOpsError, PolicyRefusal, first_line
from edgeops.core.feeds import Feeds
from edgeops.core.files import atomic_write, sha256_file
from edgeops.core.latency import LogHistogram
from edgeops.core.manifest import Manifest

log = logging.getLogger(__name__)

STATE_FILE = "update.json"
DOWNLOADS = "downloads"
ACTIVE = ("downloading", "verifying", "staged", "switching", "health")
TERMINAL = ("committed", "rolled-back", "failed")
MIN_TRAFFIC = 10
"""Fewer predictions than this in a window: latency is compared on the sample inputs instead."""

# The runtimes a model format needs, by top-level module (found without importing them).
_RUNTIMES = {
    "tflite": ("ai_edge_litert", "tflite_runtime", "tensorflow"),
    "onnx": ("onnxruntime",),
}


class UpdateHost(Protocol):
    """What the updater needs from the agent."""

    @property
    def model(self) -> ServedModel | None: ...

    def event(
        self,
        data: events.EventData,
        *,
        level: Literal["info", "warning", "error"] = "info",
        message: str = "",
        command_id: str | None = None,
    ) -> None: ...

    def switch_to(self, model: ServedModel | None) -> wire.LatencyHistogram | None:
        """Serve ``model`` from now on; the latency of the window that served the old one."""
        ...

    def local_api(self) -> tuple[str, int] | None:
        """The host and port of the agent's own local API (downloads from it are refused)."""
        ...


UpdateProgress = (
    events.UpdateDownloading
    | events.UpdateVerifying
    | events.UpdateStaged
    | events.UpdateSwitching
    | events.UpdateHealth
)
"""The events of the states an update goes through before its outcome."""


class _Failed(Exception):
    """An update step failed; the message is the reason reported. Never leaves this module."""


# --- the command ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateRequest:
    """An update command's arguments, admitted by the device's policy."""

    url: str
    sha256: str
    size: int
    name: str
    version: str
    health: HealthGate
    """The command's gate, tightened to the device's floors."""
    clamped: tuple[str, ...]
    """The command's health settings that were looser than the device's floors."""


# --- pure parts: the health verdict -----------------------------------------------------------


@dataclass(frozen=True)
class HealthReport:
    """What the health window saw, and the latencies it is judged on."""

    predictions: int
    errors: int
    p95_ms: float | None
    """The new model's p95: the window's traffic, else the sample inputs."""
    latency_ratio: float | None
    """The new model's p95 over the previous model's, on ``ratio_basis``."""
    ratio_basis: Literal["traffic", "samples"]

    @property
    def error_rate(self) -> float:
        total = self.predictions + self.errors
        return self.errors / total if total else 0.0

    def outcome(self) -> events.HealthOutcome:
        """The report as update events carry it."""
        return events.HealthOutcome(
            predictions=self.predictions,
            errors=self.errors,
            p95_ms=self.p95_ms,
            latency_ratio=self.latency_ratio,
            ratio_basis=self.ratio_basis,
            error_rate=self.error_rate,
        )


def health_report(
    *,
    predictions: int,
    errors: int,
    new_traffic: LogHistogram,
    old_traffic: LogHistogram | None,
    new_samples: LogHistogram,
    old_samples: LogHistogram | None,
) -> HealthReport:
    """Choose the latencies to judge on: traffic where there was enough, else sample inputs."""
    enough_new = new_traffic.count >= MIN_TRAFFIC
    p95 = (new_traffic if enough_new else new_samples).quantile(0.95)
    ratio: float | None = None
    basis: Literal["traffic", "samples"] = "samples"
    if enough_new and old_traffic is not None and old_traffic.count >= MIN_TRAFFIC:
        new, old, basis = new_traffic.quantile(0.95), old_traffic.quantile(0.95), "traffic"
    else:
        new = new_samples.quantile(0.95)
        old = None if old_samples is None else old_samples.quantile(0.95)
    if new is not None and old:
        ratio = new / old
    return HealthReport(predictions, errors, p95, ratio, basis)


def judge(gate: HealthGate, report: HealthReport) -> str | None:
    """Why the new model fails the gate, or None when it passes."""
    if gate.max_error_rate is not None and report.error_rate > gate.max_error_rate:
        return f"error rate {report.error_rate:.3f} is above {gate.max_error_rate}"
    p95, budget = report.p95_ms, gate.max_p95_ms
    if budget is not None and p95 is not None and p95 > budget:
        return f"p95 latency {p95:.3f} ms is above the budget {budget} ms"
    ratio, most = report.latency_ratio, gate.max_latency_ratio
    if most is not None and ratio is not None and ratio > most:
        return (
            f"p95 latency is {ratio:.2f}x the previous model's "
            f"({report.ratio_basis}); at most {most}x allowed"
        )
    return None


class HealthWatch:
    """Counts the new model's predictions and errors during the health window. Thread-safe."""

    def __init__(self, model: ServedModel, predictions: int | None) -> None:
        self.model = model
        self._target = predictions
        self._lock = threading.Lock()
        self._latency = LogHistogram()
        self._errors = 0
        self.done = threading.Event()

    def observe(self, latency_ms: float) -> None:
        with self._lock:
            self._latency.add(latency_ms)
            if self._target is not None and self._latency.count >= self._target:
                self.done.set()

    def error(self, n: int = 1) -> None:
        with self._lock:
            self._errors += n

    def snapshot(self) -> tuple[int, int, LogHistogram]:
        with self._lock:
            copy = LogHistogram()
            copy.merge(self._latency)
            return self._latency.count, self._errors, copy


def runtime_available(fmt: str) -> str | None:
    """The installed runtime package for a model format, or None."""
    for module in _RUNTIMES.get(fmt, ()):
        if importlib.util.find_spec(module) is not None:
            return module
    return None


def bench(model: ServedModel, x: np.ndarray[Any, Any] | Feeds, runs: int) -> LogHistogram:
    """Latency of single-sample runs over ``x`` (after a short warm-up)."""
    h = LogHistogram()
    for i in range(runs + 3):
        k = i % len(x)
        sample = x.take(slice(k, k + 1)) if isinstance(x, Feeds) else x[k][None]
        t0 = time.perf_counter()
        model.run(sample, raw=True)
        if i >= 3:
            h.add((time.perf_counter() - t0) * 1000.0)
    return h


class UpdateRecord(msgspec.Struct, kw_only=True):
    """The state of one update, persisted in ``STORE/update.json`` before it is acted on."""

    command_id: str | None
    state: str | None
    """None until the first state is persisted; then the state entered last (one of
    :data:`ACTIVE`, then one of :data:`TERMINAL`)."""
    reported: bool
    """Whether the terminal state's event was published."""
    url: str
    sha256: str
    size: int
    name: str
    version: str
    health: dict[str, Any]
    download: str | None
    """The partial download, relative to the store."""
    entry: str | None
    """The store entry installed, once staged."""
    before: dict[str, str | None]
    """The store's pointer before the update: what an undo restores."""
    at: str | None = None
    """The state a failure or rollback happened in."""
    reason: str | None = None
    history: list[tuple[str, float]] = msgspec.field(default_factory=list)
    health_report: events.HealthOutcome | None = None
    updated: float | None = None


# --- the updater ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Switched:
    """An update that switched models: what its health window judges on."""

    rec: UpdateRecord
    gate: HealthGate
    watch: HealthWatch
    old_traffic: LogHistogram | None
    """The previous model's latency in the telemetry window before the switch."""
    new_samples: LogHistogram
    old_samples: LogHistogram | None
    """Both models' latency on the bundle's sample inputs."""


class Updater:
    """Carries out update commands one at a time, each in a thread of its own (download,
    verification, staging, switch and health window), and finishes interrupted ones at start."""

    def __init__(
        self, store: ModelStore, config: UpdateConfig, host: UpdateHost, *, threads: int = 1
    ) -> None:
        self.store = store
        self.config = config
        self.host = host
        self.threads = threads
        self.state_path = store.root / STATE_FILE
        self.downloads = store.root / DOWNLOADS
        self.watch: HealthWatch | None = None
        """The running health window, fed by the agent's predictions."""
        self._lock = threading.Lock()
        self._busy = False
        self._running: str | None = None  # the id of the command being carried out
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._allowed = policy.allowed_hosts(config)
        self._own_names: set[str] | None = None  # this machine's names, found at first use

    @property
    def busy(self) -> bool:
        return self._busy

    def state(self) -> UpdateRecord | None:
        """The state file's record, or None when there is none (or it is unreadable)."""
        try:
            return msgspec.json.decode(self.state_path.read_bytes(), type=UpdateRecord)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as e:
            log.warning("update state unreadable (%s); ignored", e)
            return None

    def stop(self) -> None:
        """Stop the update under way: a download or staging fails ("the agent is stopping"); a
        health window stops without a verdict, and the next start rolls the update back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- recovery -----------------------------------------------------------------------------

    def recover(self) -> None:
        """Finish an update a crash or stop interrupted (call before loading the model)."""
        rec = self.state()
        if rec is None:
            return
        state = rec.state
        if state in TERMINAL:
            if not rec.reported:
                self._finish(rec, str(state), rec.reason or "", interrupted=True)
            return
        if state == "health":
            self._finish(rec, "rolled-back", "interrupted during health window", interrupted=True)
        else:
            self._finish(rec, "failed", f"interrupted at {state}", interrupted=True)
        self._clean_downloads()

    # --- the command --------------------------------------------------------------------------

    def run(self, cmd: wire.Command) -> None:
        """Start an update command and return at once, so the command thread stays free (ping
        and rollback are answered during a slow download); never raises. The update runs in a
        thread of its own. A command id already handled (the one in the state file) or under way
        is ignored: a rollout publishes unanswered commands again. Another update while one runs
        is refused."""
        with self._lock:
            last = self.state()
            if cmd.id == self._running or (last is not None and last.command_id == cmd.id):
                log.info("update %s: already handled or under way; repeat ignored", cmd.id)
                return
            if self._busy:
                self.host.event(
                    events.UpdateFailed(at="request"),
                    level="error",
                    message="another update is in progress",
                    command_id=cmd.id,
                )
                return
            previous = self._thread
            if previous is not None:  # reported its end; writing its state file, if anything
                previous.join(timeout=30)
                if previous.is_alive():
                    log.error("update thread still finishing; update %s refused", cmd.id)
                    self.host.event(
                        events.UpdateFailed(at="request"),
                        level="error",
                        message="the previous update is still finishing",
                        command_id=cmd.id,
                    )
                    return
            thread = threading.Thread(target=self._work, args=(cmd,), name="update", daemon=True)
            self._busy, self._running, self._thread = True, cmd.id, thread
            try:
                thread.start()
            except RuntimeError as e:  # the process can start no more threads
                self._busy, self._running = False, None
                self.host.event(
                    events.UpdateFailed(at="request"),
                    level="error",
                    message=f"cannot start the update: {e}",
                    command_id=cmd.id,
                )

    def _work(self, cmd: wire.Command) -> None:
        try:
            switched = self._run(cmd)
            if switched is not None:
                self._health(switched)
        except Exception:  # reporting failed (the agent stopping): the next start finishes it
            log.exception("update %s failed", cmd.id)
        finally:
            self._release()

    def _release(self) -> None:
        """The update is over: called before its last event is published, so that a command
        sent in answer to that event finds the updater free (:meth:`run` waits for the thread
        to write its state file before it starts another)."""
        self.watch = None
        self._running = None
        self._busy = False

    def _run(self, cmd: wire.Command) -> _Switched | None:
        """Download, verify, stage and switch; what the health window needs, or None when the
        update failed (and was reported) before the switch."""
        try:
            req = self._request(cmd)
        except (_Failed, PolicyRefusal) as e:
            self._release()
            data = events.UpdateFailed(
                at="request", reason=e.reason if isinstance(e, PolicyRefusal) else None
            )
            self.host.event(data, level="error", message=str(e), command_id=cmd.id)
            return None
        self.downloads.mkdir(parents=True, exist_ok=True)
        rec = UpdateRecord(
            command_id=cmd.id,
            state=None,
            reported=False,
            url=req.url,
            sha256=req.sha256,
            size=req.size,
            name=req.name,
            version=req.version,
            health=asdict(req.health),
            download=f"{DOWNLOADS}/{req.sha256}.part",
            entry=None,
            before=self.store.pointer(),
        )
        new: ServedModel | None = None
        try:
            path = self.store.root / f"{DOWNLOADS}/{req.sha256}.part"
            self._enter(
                rec,
                events.UpdateDownloading(
                    version=rec.version, url=req.url, size=req.size, clamped=list(req.clamped)
                ),
            )
            download(
                req.url,
                path,
                size=req.size,
                ca=self.config.ca,
                max_bytes=self.config.max_bytes,
                timeout=self.config.timeout,
                attempts=self.config.attempts,
                seconds=self.config.download_seconds,
                stop=self._stop,
                check=self._check_redirect,
            )
            self._enter(rec, events.UpdateVerifying(version=rec.version, bytes=path.stat().st_size))
            with self._verify(path, req) as verified:
                rec.entry = ModelStore.entry_id(verified.manifest)
                rec.version = verified.info.version
                self._enter(rec, events.UpdateStaged(version=rec.version, entry=rec.entry))
                new, samples = self._stage(verified, rec.entry)
            old = self.host.model
            old_bench = (
                bench(old, samples, self.config.bench_runs)
                if old is not None and old.takes(samples)
                else None
            )
            new_bench = bench(new, samples, self.config.bench_runs)
            if self._stop.is_set():
                raise _Failed("the agent is stopping")
            self._enter(
                rec,
                events.UpdateSwitching(
                    version=rec.version,
                    from_=None if old is None else old.ref.version,
                    to=new.ref.version,
                    samples_p95_ms=events.SamplesP95(
                        previous=None if old_bench is None else old_bench.quantile(0.95),
                        new=new_bench.quantile(0.95),
                    ),
                ),
            )
            watch = HealthWatch(new, req.health.predictions)
            self.watch = watch
            self.store.activate(rec.entry)
            served, new = new, None  # the agent owns it now
            old_window = self.host.switch_to(served)
        except (_Failed, DownloadFailed) as e:
            self._fail(rec, str(e), new)
            return None
        except EdgeOpsError as e:
            self._fail(rec, str(e), new)
            return None
        except Exception as e:  # a bug or an unforeseen failure: the current model stays
            log.exception("update failed")
            self._fail(rec, first_line(e), new)
            return None
        old_traffic = None if old_window is None else LogHistogram.from_wire(old_window)
        gate = req.health
        self._enter(
            rec,
            events.UpdateHealth(
                version=rec.version,
                predictions=gate.predictions,
                seconds=gate.seconds,
                max_error_rate=gate.max_error_rate,
                max_p95_ms=gate.max_p95_ms,
                max_latency_ratio=gate.max_latency_ratio,
            ),
        )
        return _Switched(rec, req.health, watch, old_traffic, new_bench, old_bench)

    def _request(self, cmd: wire.Command) -> UpdateRequest:
        """The command's arguments, checked against the device's policy
        (:mod:`device_agent.policy`): :class:`PolicyRefusal` or :class:`_Failed` when refused."""
        args = cmd.args
        if not isinstance(args, wire.UpdateArgs):
            raise _Failed(f"not an update command: {cmd.kind}")
        if args.size > self.config.max_bytes:
            raise _Failed(
                f"the bundle ({args.size} bytes) is larger than the limit {self.config.max_bytes}"
            )
        current = self.store.current()
        policy.check_model(
            None if current is None else current.name, args.name, self.config.allowed_models
        )
        policy.check_forward(None if current is None else current.version, args.version)
        policy.check_url(args.url, self._allowed, self._own())
        gate, clamped = policy.health_gate(args.health, self.config)
        if clamped:
            log.warning(
                "update %s: health settings looser than this device's floors clamped: %s",
                cmd.id,
                ", ".join(clamped),
            )
        return UpdateRequest(
            args.url, args.sha256, args.size, args.name, args.version, gate, tuple(clamped)
        )

    def _own(self) -> tuple[set[str], int] | None:
        """This machine's names and the local API's port, when it listens on TCP."""
        api = self.host.local_api()
        if api is None:
            return None
        if self._own_names is None:
            self._own_names = policy.own_addresses(api[0])
        return self._own_names, api[1]

    def _check_redirect(self, url: str) -> None:
        """A redirect must lead to an allowed host too."""
        try:
            policy.check_url(url, self._allowed, self._own())
        except PolicyRefusal as e:
            raise DownloadFailed(f"redirected: {e}") from None

    def _verify(self, path: Path, req: UpdateRequest) -> Bundle:
        """The downloaded bundle, open and verified by the store, if it is the one the command
        named and the device may run it; the caller closes it."""
        got = path.stat().st_size
        if got != req.size:
            raise _Failed(f"size {got} differs from the expected {req.size} bytes")
        if sha256_file(path) != req.sha256:
            raise _Failed("sha256 differs from the command's")
        b = self.store.verify(path)
        try:
            self._check_manifest(b.info, ModelStore.entry_id(b.manifest), req)
        except BaseException:
            b.close()
            raise
        return b

    def _check_manifest(self, manifest: Manifest, entry_id: str, req: UpdateRequest) -> None:
        if (manifest.name, manifest.version) != (req.name, req.version):
            raise _Failed(
                f"the bundle is {manifest.name} {manifest.version}, not {req.name} {req.version}"
            )
        current = self.store.current()
        try:  # again, on the signed manifest: the current model may have changed meanwhile
            policy.check_forward(None if current is None else current.version, req.version)
        except PolicyRefusal as e:
            raise _Failed(str(e)) from None
        fmt = manifest.runtime_format
        if runtime_available(fmt) is None:
            raise _Failed(f"no runtime for {fmt or 'an unknown'} models is installed")
        if entry_id == self.store.pointer()["current"]:
            raise _Failed(f"{manifest.name} {manifest.version} is already current")

    def _stage(
        self, verified: Bundle, entry_id: str
    ) -> tuple[ServedModel, np.ndarray[Any, Any] | Feeds]:
        entry = self.store.install(verified)
        assert entry.id == entry_id
        try:
            model = ServedModel(entry, threads=self.threads)
        except EdgeOpsError as e:
            raise _Failed(f"the model does not load: {e}") from None
        try:
            spec = entry.info.require_samples()
            x: np.ndarray[Any, Any] | Feeds
            with np.load(entry.samples_path) as z:
                if model.named:  # one array per input, in the model's order
                    infos = model.runtime.inputs
                    x = model.bind({i.name: z[f"input_{k}"] for k, i in enumerate(infos)})
                else:
                    x = z["inputs"].astype(np.float32)
                expected = [z[f"output_{i}"] for i in range(len(model.runtime.outputs))]
            got = model.run(x)
            atol, rtol = spec.atol, spec.rtol
            for i, (g, want) in enumerate(zip(got, expected, strict=True)):
                same_shape = g.shape == want.shape
                if not same_shape or not np.allclose(g, want, atol=atol, rtol=rtol):
                    worst = float(np.max(np.abs(g - want))) if same_shape else float("nan")
                    raise _Failed(
                        f"sample outputs differ from the bundle's expected outputs "
                        f"(output {i}: max difference {worst:.4g}, atol {atol}, rtol {rtol})"
                    )
        except _Failed:
            model.close()
            raise
        except Exception as e:
            model.close()
            raise _Failed(f"the sample check failed: {first_line(e)}") from None
        return model, x

    def _health(self, s: _Switched) -> None:
        rec, gate, watch = s.rec, s.gate, s.watch
        try:
            deadline = time.monotonic() + gate.seconds
            while not watch.done.is_set() and time.monotonic() < deadline:
                if self._stop.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                    log.info("agent stopping during the health window; rolled back at restart")
                    return
            predictions, errors, latency = watch.snapshot()
            report = health_report(
                predictions=predictions,
                errors=errors,
                new_traffic=latency,
                old_traffic=s.old_traffic,
                new_samples=s.new_samples,
                old_samples=s.old_samples,
            )
            rec.health_report = report.outcome()
            reason = judge(gate, report)
            if reason is None:
                self._finish(rec, "committed", "")
            else:
                self._finish(rec, "rolled-back", reason)
        except Exception as e:
            log.exception("health window failed")
            try:
                self._finish(rec, "rolled-back", f"health window failed: {first_line(e)}")
            except Exception:
                log.exception("rollback failed; the next start finishes it")

    # --- state --------------------------------------------------------------------------------

    def _persist(self, rec: UpdateRecord) -> None:
        rec.updated = time.time()
        atomic_write(self.state_path, msgspec.json.format(msgspec.json.encode(rec), indent=2))

    def _enter(self, rec: UpdateRecord, data: UpdateProgress) -> None:
        """Persist the state ``data`` reports (``update-<state>``), then publish it; the caller
        acts on it after."""
        state = events.kind_of(data).removeprefix("update-")
        rec.state = state
        rec.history.append((state, time.time()))
        self._persist(rec)
        self.host.event(data, command_id=rec.command_id)

    def _fail(self, rec: UpdateRecord, reason: str, model: ServedModel | None) -> None:
        if model is not None:
            model.close()
        self.watch = None
        if rec.state is None:  # nothing persisted yet
            self._release()
            self.host.event(
                events.UpdateFailed(), level="error", message=reason, command_id=rec.command_id
            )
            return
        self._finish(rec, "failed", reason)

    def _finish(
        self, rec: UpdateRecord, state: str, reason: str, *, interrupted: bool = False
    ) -> None:
        """Enter a terminal state: persist it, act (pointer, files), publish, mark reported."""
        if rec.state not in TERMINAL:
            rec.at = rec.state
            rec.reason = reason or None
            rec.state = state
            rec.reported = False
            rec.history.append((state, time.time()))
            self._persist(rec)
        if state == "committed":
            pruned = self.store.prune()
            if pruned:
                log.info("pruned old models: %s", ", ".join(pruned))
        else:
            self._undo(rec, serve=not interrupted)
        if rec.download:
            (self.store.root / rec.download).unlink(missing_ok=True)
        data: events.UpdateOutcome
        health = rec.health_report
        if state == "committed":
            data = events.UpdateCommitted(version=rec.version, at=rec.at, health=health)
        else:
            current = self.store.current()
            serving = None if current is None else current.version
            outcome = events.UpdateRolledBack if state == "rolled-back" else events.UpdateFailed
            data = outcome(
                version=rec.version, at=rec.at, reason=reason, serving=serving, health=health
            )
        self._release()
        self.host.event(
            data,
            level="info" if state == "committed" else "error",
            message=reason,
            command_id=rec.command_id,
        )
        rec.reported = True
        self._persist(rec)

    def _undo(self, rec: UpdateRecord, *, serve: bool) -> None:
        """Restore the pointer from before the update and delete what it installed."""
        before = rec.before
        entry = rec.entry
        if entry is not None and self.store.pointer()["current"] == entry:
            self.store.set_pointer(before.get("current"), before.get("previous"))
            if serve:
                current = self.store.current()
                model = None if current is None else ServedModel(current, threads=self.threads)
                self.host.switch_to(model)
        if entry is not None and entry not in before.values():
            self.store.remove(entry)

    def _clean_downloads(self) -> None:
        shutil.rmtree(self.downloads, ignore_errors=True)
