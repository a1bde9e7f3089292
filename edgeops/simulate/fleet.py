"""A simulated fleet: N real agents in one process, fed real rows, drift switched on and off.

Each device is a :class:`device_agent.agent.Agent` with its own model store, SQLite outbox, MQTT
link and telemetry window (its HTTP API off), so what reaches the broker is what real devices
send. A few feeder threads (not one per device) call :meth:`Agent.predict` round-robin at the
requested rate per device, and send the true label back through :meth:`Agent.feedback` for a
fraction of the predictions. Drift changes the rows a device replays: each combination of drifts
is computed once (:func:`edgeops.simulate.inject.apply_drift`) and shared by the devices it is
on, so switching drift costs nothing on the prediction path.

    with Fleet(FleetConfig(devices=20, bundle=path, broker="mqtt://localhost:1883",
                           allow_unsigned=True)) as fleet:
        time.sleep(30)
        fleet.inject("kind=covariate,amount=2,devices=0-4")
        time.sleep(30)
        print(summary_table(fleet.stats()))  # from edgeops.simulate
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from edgeops.core.bundle import Bundle
from edgeops.core.errors import EdgeOpsError, UsageError
from edgeops.core.latency import LogHistogram
from edgeops.core.manifest import Manifest
from edgeops.core.optional import require
from edgeops.core.signing import load_verify_keys
from edgeops.simulate import pollselect
from edgeops.simulate.config import FleetConfig
from edgeops.simulate.data import load_samples
from edgeops.simulate.inject import Samples, Scale, apply_drift, reference_scales
from edgeops.simulate.spec import DriftSpec, parse_devices, parse_drift
from edgeops.simulate.stats import DeviceStats, FleetStats

if TYPE_CHECKING:
    from device_agent.agent import Agent

log = logging.getLogger(__name__)

_MAX_LAG = 1.0
"""A feeder this many seconds behind its schedule skips the backlog instead of bursting."""
_T = TypeVar("_T")


class _Rows:
    """Rows in the form a device sends them: inputs for ``Agent.predict``, labels for feedback."""

    __slots__ = ("inputs", "labels", "n")

    def __init__(self, samples: Samples) -> None:
        self.inputs: Sequence[Any] | npt.NDArray[np.float32]
        if samples.kind == "tensor":
            (x,) = samples.features.values()
            self.inputs = np.ascontiguousarray(x, dtype=np.float32)  # x[i]: one sample, no copy
        else:
            names = list(samples.features)
            columns = [samples.features[n].tolist() for n in names]
            self.inputs = [
                [{n: _plain(v) for n, v in zip(names, row, strict=True)}]
                for row in zip(*columns, strict=True)
            ]
        self.labels = None if samples.labels is None else [_plain(v) for v in samples.labels]
        self.n = len(samples)


def _plain(v: Any) -> Any:
    """A cell as a caller sends it: Python scalars, None for missing."""
    item = v.item() if hasattr(v, "item") else v
    if item == "" or (isinstance(item, float) and math.isnan(item)):
        return None
    return item


class _Device:
    __slots__ = (
        "agent",
        "drifts",
        "errors",
        "feedback",
        "id",
        "last_error",
        "latency",
        "lock",
        "position",
        "rows",
        "sent",
    )

    def __init__(self, device_id: str, agent: Agent, rows: _Rows, position: int) -> None:
        self.id = device_id
        self.agent = agent
        self.rows = rows
        self.position = position
        self.drifts: tuple[DriftSpec, ...] = ()
        self.lock = threading.Lock()  # the feeder writes the counters, stats() reads them
        self.latency = LogHistogram()
        self.sent = self.errors = self.feedback = 0
        self.last_error: str | None = None


class Fleet:
    """N simulated devices and the threads that feed them; ``start()``/``stop()`` or ``with``."""

    def __init__(self, config: FleetConfig, *, samples: Samples | None = None) -> None:
        """``samples`` replaces the rows read from ``config.data`` (tests, generated data)."""
        self.config = config.checked()
        self._given = samples
        self._devices: list[_Device] = []
        self._feeders: list[threading.Thread] = []
        self._skipped: list[int] = []
        self._timers: list[threading.Timer] = []
        self._stopping = threading.Event()
        self._lock = threading.RLock()  # drift state: the rows per drift set, devices' drifts
        self._rows: dict[tuple[DriftSpec, ...], _Rows] = {}
        self._base: Samples | None = None
        self._scales: Mapping[str, Scale] = {}
        self._tmp: str | None = None
        self._work: Path | None = None
        self._t0 = 0.0
        self.startup_seconds: float | None = None
        """How long :meth:`start` took to bring every agent up."""

    # --- lifecycle ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Verify the bundle, load the rows and check the drift specs against them, before
        any agent starts (:meth:`start` does this when it has not been done)."""
        if self._base is not None:
            return
        cfg = self.config
        work = self._workdir()
        try:
            manifest = self._verified_manifest()
            base = self._given
            if base is None:
                base = load_samples(
                    manifest, cfg.data, target=cfg.target, directory=work / "data", seed=cfg.seed
                )
            if cfg.feedback > 0 and base.labels is None:
                raise UsageError("--feedback needs labels: give --data with a --target column")
            self._base, self._scales = base, reference_scales(base)
            for spec in cfg.drift:
                self._rows_for((spec,))
        except BaseException:
            self._base, self._rows = None, {}
            self._remove_workdir()
            raise
        self._work = work

    def start(self, *, connect_timeout: float = 10.0) -> Fleet:
        """Start every agent, then the feeders; wait up to ``connect_timeout`` s for the
        devices to connect to the broker (see :attr:`online`; they keep trying after)."""
        if self._devices:
            raise RuntimeError("the fleet is already started")
        require("paho.mqtt", "agent")
        pollselect.install()  # past ~140 devices, MQTT sockets get descriptors select() refuses
        t0 = time.monotonic()
        self.prepare()
        cfg = self.config
        assert self._work is not None
        try:
            self._devices = self._start_agents(self._work, self._rows_for(()))
        except BaseException:
            self._remove_workdir()
            raise
        self.startup_seconds = time.monotonic() - t0
        self._t0 = time.monotonic()
        for spec in cfg.drift:
            self.inject(spec)
        n = cfg.feeders or min(4, math.ceil(len(self._devices) / 50))
        self._skipped = [0] * n
        for j in range(n):
            t = threading.Thread(
                target=self._feed, args=(j, self._devices[j::n]), name=f"sim-feeder-{j}"
            )
            t.daemon = True
            t.start()
            self._feeders.append(t)
        deadline = time.monotonic() + connect_timeout
        for d in self._devices:
            if d.agent.link is not None:
                d.agent.link.wait_connected(max(0.0, deadline - time.monotonic()))
        return self

    def stop(self) -> None:
        """Stop feeding, then stop every agent (each flushes its last window and publishes its
        offline status), then remove a temporary workdir."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._lock:
            for timer in self._timers:
                timer.cancel()
        for t in self._feeders:
            t.join()
        _parallel(
            [d.agent.stop for d in self._devices], max(self.config.start_workers, 32), "sim-stop"
        )
        self._remove_workdir()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _workdir(self) -> Path:
        if self.config.workdir is not None:
            work = self.config.workdir
        else:
            self._tmp = tempfile.mkdtemp(prefix="edgeops-sim-")
            work = Path(self._tmp)
        try:
            (work / "devices").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--workdir {work}: cannot create it ({e.strerror})") from None
        return work

    def _remove_workdir(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _verified_manifest(self) -> Manifest:
        """The bundle checked once here, so a bad one is one error rather than N."""
        cfg = self.config
        keys = load_verify_keys(cfg.trusted_keys)
        if cfg.command_keys:  # a bad key file is one error here, not one per device
            load_verify_keys(cfg.command_keys)
        with Bundle.open(cfg.bundle) as b:
            b.verify(keys, allow_unsigned=cfg.allow_unsigned)
            return b.info

    def _start_agents(self, work: Path, rows: _Rows) -> list[_Device]:
        from device_agent.agent import Agent
        from device_agent.config import (
            AgentConfig,
            CommandsConfig,
            DeviceConfig,
            HttpConfig,
            ModelConfig,
            MqttConfig,
            TelemetryConfig,
            TlsConfig,
            UpdateConfig,
        )

        cfg = self.config
        host, port = cfg.broker_address()
        broker = cfg.mqtt
        agents = []
        for device_id in cfg.device_ids():
            home = work / "devices" / device_id
            username, password, cert, key = cfg.device_account(device_id)
            tls = (
                TlsConfig(ca=broker.ca, cert=cert, key=key, insecure=broker.insecure)
                if broker.tls
                else None
            )
            agents.append(
                Agent(
                    AgentConfig(
                        device=DeviceConfig(id=device_id, fleet=cfg.fleet, labels=dict(cfg.labels)),
                        model=ModelConfig(
                            store=home / "store",
                            bundle=cfg.bundle,
                            trusted_keys=cfg.trusted_keys,
                            allow_unsigned=cfg.allow_unsigned,
                        ),
                        telemetry=TelemetryConfig(window_seconds=cfg.window_seconds),
                        mqtt=MqttConfig(
                            host=host,
                            port=port,
                            username=username,
                            password=password,
                            tls=tls,
                            outbox=home / "outbox.db",
                        ),
                        http=HttpConfig(enabled=False),
                        commands=CommandsConfig(
                            trusted_keys=cfg.command_keys,
                            allow_unsigned=cfg.allow_unsigned_commands,
                        ),
                        update=UpdateConfig(
                            service_url=cfg.service_url,
                            health_predictions=cfg.health_predictions,
                            health_seconds=cfg.health_seconds,
                        ),
                    ),
                    http=False,
                )
            )
        results = _parallel([a.start for a in agents], cfg.start_workers, "sim-start")
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            _parallel([a.stop for a in agents], max(cfg.start_workers, 32), "sim-stop")
            raise failed[0]
        rng = np.random.default_rng(cfg.seed)
        starts = rng.integers(0, rows.n, size=len(agents)).tolist()
        return [
            _Device(device_id, agent, rows, start)
            for device_id, agent, start in zip(cfg.device_ids(), agents, starts, strict=True)
        ]

    # --- feeding ------------------------------------------------------------------------------

    def _feed(self, feeder: int, devices: list[_Device]) -> None:
        """Round-robin over ``devices``, ``rate`` predictions per second each."""
        cfg = self.config
        period = 1.0 / (cfg.rate * len(devices))
        rng = np.random.default_rng([cfg.seed, feeder])
        due = time.monotonic()
        k = 0
        while not self._stopping.is_set():
            now = time.monotonic()
            if due > now:
                if self._stopping.wait(due - now):
                    return
            elif now - due > _MAX_LAG:
                self._skipped[feeder] += int((now - due) / period)
                due = now
            device = devices[k % len(devices)]
            k += 1
            due += period
            self._predict(device, rng)

    def _predict(self, device: _Device, rng: np.random.Generator) -> None:
        rows = device.rows  # drift may swap it meanwhile: this call uses one set
        i = device.position % rows.n
        device.position += 1
        try:
            p = device.agent.predict(rows.inputs[i])
            fed = False
            label = None if rows.labels is None else rows.labels[i]
            if label is not None and rng.random() < self.config.feedback:
                fed = device.agent.feedback(p.ids[0], label)
        except Exception as e:
            with device.lock:
                device.errors += 1
                first, device.last_error = device.last_error is None, str(e)
            if not isinstance(e, EdgeOpsError):
                log.exception("%s: prediction failed", device.id)
            elif first:
                log.warning("%s: prediction failed: %s", device.id, e)
            return
        with device.lock:
            device.sent += 1
            device.latency.add(p.latency_ms)
            device.feedback += fed

    # --- drift --------------------------------------------------------------------------------

    def inject(self, spec: DriftSpec | str) -> tuple[str, ...]:
        """Switch ``spec``'s drift on for its devices (on top of drifts they have), now, or at
        ``spec.after`` seconds after the start when that is still ahead. Returns their ids."""
        self._require_started()
        spec = parse_drift(spec) if isinstance(spec, str) else spec
        indices = spec.device_indices(self.config.devices)
        self._rows_for((spec,))  # a spec that cannot apply fails here, not in a timer
        delay = self._t0 + spec.after - time.monotonic()
        if delay > 0:
            timer = threading.Timer(delay, self._apply, args=(spec, indices))
            timer.daemon = True
            with self._lock:
                if not self._stopping.is_set():
                    self._timers.append(timer)
                    timer.start()
        else:
            self._apply(spec, indices)
        return tuple(self._devices[i].id for i in indices)

    def clear(self, devices: str | Iterable[int] | None = None) -> tuple[str, ...]:
        """Switch every drift off on ``devices`` (a selection such as ``0-4``, or indices);
        with None, on every device, and drifts scheduled for later are cancelled too."""
        self._require_started()
        if devices is None:
            indices: Iterable[int] = range(len(self._devices))
        elif isinstance(devices, str):
            indices = parse_devices(devices, len(self._devices))
        else:
            indices = list(devices)
        plain = self._rows_for(())
        with self._lock:
            if devices is None:
                for timer in self._timers:
                    timer.cancel()
            for i in indices:
                self._devices[i].drifts = ()
                self._devices[i].rows = plain
        return tuple(self._devices[i].id for i in indices)

    def _apply(self, spec: DriftSpec, indices: Sequence[int]) -> None:
        if self._stopping.is_set():
            return
        for i in indices:
            device = self._devices[i]
            with self._lock:
                drifts = (*device.drifts, spec)
                device.rows = self._rows_for(drifts)
                device.drifts = drifts
        log.info("drift on %d device(s): %s", len(indices), spec)

    def _rows_for(self, drifts: tuple[DriftSpec, ...]) -> _Rows:
        """The rows with ``drifts`` applied in order, computed once per combination."""
        with self._lock:
            rows = self._rows.get(drifts)
            if rows is None:
                assert self._base is not None
                samples = self._base
                for n, spec in enumerate(drifts):
                    rng = np.random.default_rng([self.config.seed, n, *str(spec).encode()])
                    samples = apply_drift(samples, spec, rng, self._scales)
                rows = self._rows[drifts] = _Rows(samples)
            return rows

    def _require_started(self) -> None:
        if not self._devices:
            raise RuntimeError("start the fleet first")

    # --- stats --------------------------------------------------------------------------------

    @property
    def device_ids(self) -> tuple[str, ...]:
        return tuple(self.config.device_ids())

    @property
    def agents(self) -> tuple[Agent, ...]:
        """The running agents, in device order (for commands, or a look inside)."""
        return tuple(d.agent for d in self._devices)

    @property
    def online(self) -> int:
        """Devices whose MQTT link is connected now."""
        return sum(1 for d in self._devices if d.agent.link is not None and d.agent.link.connected)

    @property
    def connect_problem(self) -> str | None:
        """Why a device's last connection attempt failed (the first found), or None."""
        for d in self._devices:
            link = d.agent.link
            if link is not None and link.problem is not None:
                return link.problem
        return None

    def stats(self) -> list[DeviceStats]:
        out = []
        for d in self._devices:
            agent = d.agent
            model = agent.model
            link, outbox = agent.link, agent.outbox
            with d.lock:
                p50, p95 = d.latency.quantile(0.5), d.latency.quantile(0.95)
                sent, errors, fed, last = d.sent, d.errors, d.feedback, d.last_error
            out.append(
                DeviceStats(
                    device=d.id,
                    online=link is not None and link.connected,
                    predictions=sent,
                    errors=errors,
                    feedback=fed,
                    model=None if model is None else f"{model.ref.name} {model.ref.version}",
                    latency_p50_ms=p50,
                    latency_p95_ms=p95,
                    drift=tuple(str(s) for s in d.drifts),
                    outbox_pending=0 if outbox is None else outbox.stats().pending,
                    last_error=last,
                )
            )
        return out

    def summary(self, devices: Sequence[DeviceStats] | None = None) -> FleetStats:
        """Totals over :meth:`stats` (or over ``devices``, stats taken before)."""
        rows = self.stats() if devices is None else devices
        merged = LogHistogram()
        for d in self._devices:
            with d.lock:
                merged.merge(d.latency)
        models: dict[str, int] = {}
        for r in rows:
            if r.model is not None:
                models[r.model] = models.get(r.model, 0) + 1
        return FleetStats(
            devices=len(rows),
            online=sum(r.online for r in rows),
            predictions=sum(r.predictions for r in rows),
            errors=sum(r.errors for r in rows),
            feedback=sum(r.feedback for r in rows),
            drifting=sum(1 for r in rows if r.drift),
            skipped=sum(self._skipped),
            latency_p95_ms=merged.quantile(0.95),
            elapsed=time.monotonic() - self._t0 if self._t0 else 0.0,
            models=models,
        )


def _parallel(calls: Sequence[Callable[[], _T]], workers: int, name: str) -> list[_T | Exception]:
    """Run ``calls`` on up to ``workers`` threads; each result, or the exception it raised."""

    def run(call: Callable[[], _T]) -> _T | Exception:
        try:
            return call()
        except Exception as e:
            return e

    if not calls:
        return []
    with ThreadPoolExecutor(min(workers, len(calls)), thread_name_prefix=name) as pool:
        return list(pool.map(run, calls))
