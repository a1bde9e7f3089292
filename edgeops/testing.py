"""Testing helpers for fleets: a real mosquitto broker and a telemetry collector.

``Mosquitto`` starts the ``mosquitto`` binary on a free port with a generated config (persistence
on, so sessions and queued messages survive :meth:`Mosquitto.restart`); :class:`Collector`
subscribes to a fleet's device topics with a persistent MQTT 5 session and keeps every decoded
message, dropping QoS 1 duplicates by ``(device, boot, seq)``.

    with Mosquitto() as broker, Collector(broker.port) as seen:
        ...  # run agents against broker.port
        seen.wait_for(lambda c: len(c.telemetry) >= 3, timeout=30)

:func:`make_test_pki` writes a throwaway CA with a server certificate (valid for ``127.0.0.1``
and ``localhost``) and a client certificate; give it to the broker for a TLS listener, with
passwords and client certificates if wanted, and to the collector to connect to it:

    pki = make_test_pki(tmp_path / "pki")
    with Mosquitto(tls=pki, passwords={"agent": "pw", "ops": "pw2"}) as broker, Collector(
        broker.port, tls=pki, username="ops", password="pw2"
    ) as seen:
        ...  # agents use TlsConfig(ca=pki.ca) and username "agent"

:func:`window_order_problems` checks that each device's windows, in seq order, follow one
another in time without overlapping.

:func:`command` makes a command as the service sends it (numbered and signed by a command key)
and :func:`send_command` publishes one, for tests that play the service's part:

    cmd = command("pi-01", wire.PingArgs(), fleet="lab", key=load_signing_key("command.key"))
    send_command(broker.port, cmd)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgeops.core import topics, wire

MOSQUITTO_PATHS = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)
MOSQUITTO_PASSWD_PATHS = (
    "/usr/bin/mosquitto_passwd",
    "/usr/local/bin/mosquitto_passwd",
    "/opt/homebrew/bin/mosquitto_passwd",
)


def find_mosquitto() -> str | None:
    """The mosquitto binary, or None when it is not installed."""
    return shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_PATHS if Path(p).is_file()), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TestPki:
    """The PEM files of a throwaway PKI made by :func:`make_test_pki` (keys unencrypted)."""

    __test__ = False  # not a pytest test class, whatever its name says

    ca: Path
    """The CA certificate: the ``ca`` both sides trust."""
    server_cert: Path
    """Signed by the CA for ``127.0.0.1``, ``::1`` and ``localhost``."""
    server_key: Path
    client_cert: Path
    """Signed by the CA for client authentication."""
    client_key: Path


def make_test_pki(
    directory: Path, *, client_name: str = "edgeops-test-client", days: int = 2
) -> TestPki:
    """Write a new CA, a server certificate and a client certificate to ``directory``
    (:mod:`edgeops.service.pki`).

    Each call makes a different CA, so a broker given one :class:`TestPki` is not trusted by a
    client given another's ``ca``.
    """
    from edgeops.service import pki

    ca = pki.make_ca(directory, f"edgeops test CA {os.urandom(4).hex()}", days=days)
    server = pki.issue(ca, directory, "localhost", server_hosts=SERVER_HOSTS, days=days)
    client = pki.issue(ca, directory, client_name, days=days)
    return TestPki(ca.cert, server.cert, server.key, client.cert, client.key)


SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")
"""The names a test broker's certificate is valid for."""


class Mosquitto:
    """A mosquitto process on 127.0.0.1 and a free port, with its own config and data dir.

    By default the listener is plain MQTT and anonymous. With ``tls`` it speaks TLS only, with
    ``tls.server_cert``; ``require_certificate`` also makes clients present a certificate signed
    by ``tls.ca`` (the certificate does not name the user). ``passwords`` (user name to password)
    turns anonymous access off and writes a mosquitto password file. ``nodelay`` (default on, as
    the shipped config) sets TCP_NODELAY on the broker's sockets.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        directory: Path | None = None,
        tls: TestPki | None = None,
        passwords: Mapping[str, str] | None = None,
        require_certificate: bool = False,
        nodelay: bool = True,
    ) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        if require_certificate and tls is None:
            raise ValueError("require_certificate needs tls")
        self.binary = binary
        self.port = port or free_port()
        self.tls = tls
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="mosquitto-")
        self.directory = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.directory.mkdir(parents=True, exist_ok=True)
        listener = [f"listener {self.port} 127.0.0.1"]
        if tls is not None:
            listener += [
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
            ]
            if require_certificate:
                listener += ["require_certificate true", "use_identity_as_username false"]
        if passwords:
            access = ["allow_anonymous false", f"password_file {self._password_file(passwords)}"]
        else:
            access = ["allow_anonymous true"]
        # As root, mosquitto would switch to the "mosquitto" user, which cannot read or write
        # this private directory (log, persistence, password file): stay the test's user.
        user = ["user root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        self.config = self.directory / "mosquitto.conf"
        self.config.write_text(
            "\n".join(
                [
                    *listener,
                    *access,
                    *user,
                    "persistence true",
                    f"persistence_location {self.directory}/",
                    "autosave_interval 1",
                    "max_queued_messages 100000",
                    # the service acks a message after storing it: a batch is stored while
                    # the next one is in flight (the default, 20, starves a batched consumer)
                    "max_inflight_messages 1000",
                    *(["set_tcp_nodelay true"] if nodelay else []),
                    f"log_dest file {self.directory}/mosquitto.log",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def _password_file(self, passwords: Mapping[str, str]) -> Path:
        """Hash ``user:password`` lines in place with ``mosquitto_passwd -U``."""
        tool = shutil.which("mosquitto_passwd") or next(
            (p for p in MOSQUITTO_PASSWD_PATHS if Path(p).is_file()), "mosquitto_passwd"
        )
        if any(":" in user or "\n" in user + password for user, password in passwords.items()):
            raise ValueError("user names may not contain ':', nor passwords new lines")
        path = self.directory / "passwd"
        path.touch(mode=0o600)
        path.write_text("".join(f"{u}:{p}\n" for u, p in passwords.items()))
        try:
            subprocess.run([tool, "-U", str(path)], check=True, capture_output=True)
        except FileNotFoundError:
            raise RuntimeError(
                "mosquitto_passwd is not installed (apt-get install mosquitto)"
            ) from None
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"mosquitto_passwd failed: {e.stderr.decode().strip()}") from None
        return path

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM: it saves sessions and queued messages first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


SERVICE_ACCOUNT = "edgeops-service"
"""The service's broker account in the shipped ACL (``deploy/mosquitto.acl``)."""
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
"""The shipped broker configuration (a source checkout's ``deploy/``)."""


class FleetBroker:
    """mosquitto running the shipped fleet configuration (``deploy/mosquitto.conf`` and
    ``deploy/mosquitto.acl``, verbatim but for the file locations and the two ports) with a
    throwaway CA (:mod:`edgeops.service.pki`): a TLS listener with passwords and an mTLS listener
    whose client certificates name the user.

    ``accounts`` (user name to password) go to the password file; the service's account
    (:data:`SERVICE_ACCOUNT`) gets a random password unless given. :meth:`settings` gives the
    :class:`~edgeops.core.broker.BrokerSettings` of an account, :meth:`issue` a client certificate
    for the mTLS listener.

        with FleetBroker(tmp_path / "broker", {"dev-1": "pw"}) as b:
            Service(ServiceConfig(broker=b.settings(SERVICE_ACCOUNT), ...))
    """

    def __init__(self, directory: Path, accounts: Mapping[str, str] | None = None) -> None:
        from edgeops.service import pki

        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        for name in ("mosquitto.conf", "mosquitto.acl"):
            if not (DEPLOY / name).is_file():
                raise RuntimeError(f"{DEPLOY / name}: the shipped broker configuration is missing")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = pki.make_ca(directory / "certs", f"edgeops test fleet CA {os.urandom(4).hex()}")
        server = pki.issue(self.ca, directory / "certs", "broker", server_hosts=SERVER_HOSTS)
        self.accounts = dict(accounts or {})
        self.accounts.setdefault(SERVICE_ACCOUNT, os.urandom(12).hex())
        self.tls_port, self.mtls_port = free_port(), free_port()
        self._broker = Mosquitto(directory=directory, port=self.tls_port)
        root = f"{directory}/"
        text = (DEPLOY / "mosquitto.conf").read_text()
        text = text.replace("/etc/mosquitto/certs/broker.crt", str(server.cert))
        text = text.replace("/etc/mosquitto/certs/broker.key", str(server.key))
        text = text.replace("/etc/mosquitto/", root).replace("/var/lib/mosquitto/", root)
        text = text.replace("listener 8883", f"listener {self.tls_port} 127.0.0.1")
        text = text.replace("listener 8884", f"listener {self.mtls_port} 127.0.0.1")
        user = ["user root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        extra = [*user, f"log_dest file {directory}/mosquitto.log", "log_type all", ""]
        (directory / "mosquitto.conf").write_text(text + "\n" + "\n".join(extra))
        (directory / "mosquitto.acl").write_text((DEPLOY / "mosquitto.acl").read_text())
        self._broker._password_file(self.accounts)  # directory/passwd, as the config names it

    def url(self, *, mtls: bool = False) -> str:
        return f"mqtts://127.0.0.1:{self.mtls_port if mtls else self.tls_port}"

    def settings(self, user: str, *, password: str | None = None) -> Any:
        """The :class:`~edgeops.core.broker.BrokerSettings` of ``user`` over TLS with its password
        (``password`` overrides the account's, for a wrong one)."""
        from edgeops.core.broker import BrokerSettings

        return BrokerSettings(
            self.url(), username=user, password=password or self.accounts[user], ca=self.ca.cert
        )

    def mtls_settings(self, user: str) -> Any:
        """The settings of ``user`` on the mTLS listener, with a new client certificate."""
        from edgeops.core.broker import BrokerSettings

        cert = self.issue(user)
        return BrokerSettings(self.url(mtls=True), ca=self.ca.cert, cert=cert.cert, key=cert.key)

    def issue(self, name: str) -> Any:
        """A client certificate for ``name`` (its common name), signed by this broker's CA."""
        from edgeops.service import pki

        return pki.issue(self.ca, self.directory / "clients", name)

    def start(self) -> FleetBroker:
        self._broker.start()
        return self

    def stop(self) -> None:
        self._broker.stop()

    def restart(self) -> None:
        self._broker.restart()

    def __enter__(self) -> FleetBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text() if path.exists() else ""


def command(
    device: str,
    args: wire.CommandArgs,
    *,
    fleet: str,
    key: Any = None,
    counter: int | None = None,
    issued: float | None = None,
    lifetime: float = 120.0,
    id: str | None = None,
) -> wire.Command:
    """A command to ``device`` as the service makes it: issued now (or at ``issued``), valid for
    ``lifetime`` seconds, numbered with the time in microseconds unless ``counter`` is given (the
    service's counters are at least that), signed by ``key`` (a
    :class:`~edgeops.core.signing.SigningKey`; None: unsigned)."""
    from edgeops.core.commands import sign

    now = time.time() if issued is None else issued
    cmd = wire.Command(
        id=id or os.urandom(6).hex(),
        fleet=fleet,
        device=device,
        issued=now,
        deadline=now + lifetime,
        counter=time.time_ns() // 1000 if counter is None else counter,
        args=args,
    )
    return cmd if key is None else sign(cmd, key)


def send_command(
    broker: Any, cmd: wire.Command | bytes, *, fleet: str = "", device: str = ""
) -> None:
    """Publish ``cmd`` (QoS 1) to the command topic of ``fleet`` and ``device`` (by default the
    ones ``cmd`` names) and wait for the broker's acknowledgement. ``broker``: a port on 127.0.0.1,
    or :class:`~edgeops.core.broker.BrokerSettings` (an account allowed to publish commands)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edgeops.core.broker import BrokerSettings

    settings = broker if isinstance(broker, BrokerSettings) else None
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if settings is not None:
        settings.configure(c)
        host, port = settings.address
    else:
        host, port = "127.0.0.1", int(broker)
    c.connect(host, port)
    c.loop_start()
    try:
        if isinstance(cmd, wire.Command):
            topic = topics.cmd(fleet or cmd.fleet, device or cmd.device)
            payload = wire.encode(cmd)
        else:
            topic, payload = topics.cmd(fleet, device), cmd
        c.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


class Collector:
    """Collects the device messages of a fleet from a broker, deduplicated, in arrival order.

    For a TLS broker pass its :class:`TestPki`: the collector trusts ``tls.ca`` and presents
    ``tls.client_cert``. ``username`` and ``password`` are for brokers with a password file.
    """

    def __init__(
        self,
        port: int,
        *,
        fleet: str = "+",
        host: str = "127.0.0.1",
        client_id: str = "edgeops-test-collector",
        tls: TestPki | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.telemetry: list[wire.Telemetry] = []
        self.events: list[wire.Event] = []
        self.status: list[wire.Status] = []
        self.duplicates = 0
        self.rejected: list[str] = []
        self.refused: str | None = None
        """The broker's reason when it refused the last connection attempt."""
        self._dedup = wire.Dedup()
        self._lock = threading.RLock()  # conditions given to wait_for may call events_of
        self._changed = threading.Condition(self._lock)
        kinds: tuple[topics.Kind, ...] = ("telemetry", "events", "status")
        self._filters = [topics.device_filter(fleet, kind=k) for k in kinds]
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            c.username_pw_set(username, password)
        if tls is not None:
            c.tls_set(
                ca_certs=str(tls.ca), certfile=str(tls.client_cert), keyfile=str(tls.client_key)
            )
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.reconnect_delay_set(min_delay=1, max_delay=2)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self._connected = threading.Event()
        c.connect_async(host, port, keepalive=10, clean_start=False, properties=props)
        self.client = c

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            return
        for f in self._filters:
            client.subscribe(f, qos=1)
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            m = wire.decode(msg.payload)
        except wire.WireError as e:
            with self._changed:
                self.rejected.append(str(e))
                self._changed.notify_all()
            return
        with self._changed:
            if isinstance(m, wire.Status):
                self.status.append(m)  # retained presence: keep every one, no dedup
            elif not isinstance(m, wire.Telemetry | wire.Event):  # commands, alerts: not devices'
                self.rejected.append(f"a {type(m).__name__.lower()} on {msg.topic}")
            elif self._dedup.seen(m):
                self.duplicates += 1
            elif isinstance(m, wire.Telemetry):
                self.telemetry.append(m)
            else:
                self.events.append(m)
            self._changed.notify_all()

    def start(self, timeout: float = 10.0) -> Collector:
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            why = f" (refused: {self.refused})" if self.refused else ""
            raise RuntimeError(f"the collector could not connect to the broker{why}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, condition: Callable[[Collector], bool], timeout: float = 30.0) -> bool:
        """Wait until ``condition(self)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def events_of(self, kind: str) -> list[wire.Event]:
        with self._lock:
            return [e for e in self.events if e.kind == kind]


POSTGRES_BIN_DIRS = (
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
    "/usr/local/bin",
    "/usr/bin",
)


class Postgres:
    """A throwaway PostgreSQL server (initdb + pg_ctl) on a free port, for tests.

    PostgreSQL refuses to run as root; as root the server runs as the ``postgres`` user (via
    ``runuser``). ``url`` is a ``postgresql://`` URL for :func:`edgeops.service.db.connect`.
    """

    def __init__(self) -> None:
        import os
        import pwd

        bindir = next((d for d in POSTGRES_BIN_DIRS if Path(d, "initdb").is_file()), None)
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = Path(bindir)
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="edgeops-pg-", dir="/tmp"))
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.directory, pw.pw_uid, pw.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]
        self.data = self.directory / "data"
        self.user = "postgres" if self._prefix else pwd_name()
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> Postgres:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user)
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "log"),
            "-o",
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1",
            "-w",
            "start",
        )

    def halt(self) -> None:
        """Stop the server, keeping its data (a database outage); :meth:`resume` restarts it."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")

    def resume(self) -> None:
        self._pg_ctl_start()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WindowTimes(Protocol):
    """A telemetry window as stored or received: :class:`edgeops.core.wire.Telemetry` is one."""

    @property
    def device(self) -> str: ...
    @property
    def boot(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def window_start(self) -> float: ...
    @property
    def window_end(self) -> float: ...


def window_order_problems(windows: Iterable[WindowTimes]) -> list[str]:
    """What breaks the order of devices' windows, one line each (empty when nothing does).

    Per device and boot, in seq order, every window must end no earlier than it starts and start
    no earlier than the one before it ended: times never decrease and windows never overlap.
    """
    runs: dict[tuple[str, str], list[WindowTimes]] = {}
    for w in windows:
        runs.setdefault((w.device, w.boot), []).append(w)
    problems = []
    for (device, boot), ws in sorted(runs.items()):
        ws.sort(key=lambda w: w.seq)
        for w in ws:
            if not w.window_end >= w.window_start:
                problems.append(
                    f"{device} boot {boot}: seq {w.seq} ends at {w.window_end:.6f}, "
                    f"before it starts at {w.window_start:.6f}"
                )
        for a, b in itertools.pairwise(ws):
            if not b.window_start >= a.window_end:
                problems.append(
                    f"{device} boot {boot}: seq {a.seq} spans [{a.window_start:.6f}, "
                    f"{a.window_end:.6f}] and seq {b.seq} starts at {b.window_start:.6f}"
                )
    return problems


def pwd_name() -> str:
    import getpass

    return getpass.getuser()


def write_bad_bundles(
    root: Path, good: Path, signing_keys: tuple[Path, Path], keys_dir: Path
) -> tuple[Path, Path]:
    """Two bad variants of the bundle ``good`` in ``root``, for tests of updates and rollouts:
    ``rogue.bundle`` (the same contents signed by a new key, ``keys_dir/rogue.key``, that no
    device trusts) and ``corrupt.bundle`` (version 1.1.1, signed with ``signing_keys[0]``, whose
    sample outputs are wrong, so it fails a device's sample check). ``signing_keys`` is the
    (private, public) pair that signed ``good``."""
    import io

    import numpy as np

    from edgeops.core.bundle import RESERVED_KEYS, Bundle, write_bundle
    from edgeops.core.signing import generate_keypair, load_signing_key, load_verify_keys

    trusted = load_verify_keys([signing_keys[1]])
    with Bundle.open(good) as b:
        b.verify(trusted)
        manifest = {k: v for k, v in b.manifest.items() if k not in RESERVED_KEYS}
        contents = {n: b.read(n) for n in b.files}
    rogue, _ = generate_keypair(keys_dir, "rogue")
    write_bundle(root / "rogue.bundle", manifest, contents, key=load_signing_key(rogue))
    with np.load(io.BytesIO(contents["samples.npz"])) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["output_0"] = np.roll(arrays["output_0"], 1, axis=-1)  # the wrong answers
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bundle(
        root / "corrupt.bundle",
        {**manifest, "version": "1.1.1"},
        {**contents, "samples.npz": buf.getvalue()},
        key=load_signing_key(signing_keys[0]),
    )
    return root / "rogue.bundle", root / "corrupt.bundle"


def make_api_token(db_url: str, role: str = "admin", name: str | None = None) -> str:
    """A REST API token made directly in a service's database, as ``edgeops tokens create``
    does (the tables are made when missing); a running service accepts it at once."""
    from edgeops.service import db
    from edgeops.service.auth import Tokens

    engine = db.connect(db_url)
    try:
        return Tokens(db.Store(engine)).create(name or f"test-{role}-{os.urandom(3).hex()}", role)
    finally:
        engine.dispose()
