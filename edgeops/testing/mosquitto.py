"""A real mosquitto broker on a free port with a generated configuration (persistence on, so
sessions and queued messages survive :meth:`Mosquitto.restart`), optionally with TLS, passwords and
client certificates."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from edgeops.testing.pki import TestPki
from edgeops.testing.ports import free_port

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
