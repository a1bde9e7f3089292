"""Log output for long-running commands: JSON lines on request, and native libraries' own lines
(TensorFlow's, LiteRT's, absl's, written by C++ straight to file descriptor 2) routed through
:mod:`logging` so that they neither break a JSON log stream nor clutter a terminal.

:func:`route_native_stderr` points descriptor 2 at a pipe whose lines a thread logs on the
``native`` logger, at the level their own prefix says (``INFO:``, ``WARNING:``, absl's
``W0000 …``); known start-up chatter is logged at debug. Python's own ``sys.stderr`` is pointed
at the real stderr (unless it was redirected elsewhere already), so what Python writes (click's
messages, the log handler) is not affected.
Subprocesses started meanwhile inherit the pipe: their stderr is logged the same way.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

log = logging.getLogger("native")

_PREFIX = re.compile(r"^(INFO|WARNING|ERROR|FATAL)(?::| )\s*|^([IWEF])\d{4} [\d:.]+\s+\d+ \S+\] ")
_LEVELS = {
    "INFO": logging.INFO,
    "I": logging.INFO,
    "WARNING": logging.WARNING,
    "W": logging.WARNING,
    "ERROR": logging.ERROR,
    "E": logging.ERROR,
    "FATAL": logging.CRITICAL,
    "F": logging.CRITICAL,
}
NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "Created TensorFlow Lite XNNPACK delegate for CPU",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "could not open file to read NUMA node",
    "TF-TRT Warning",
    "failed call to cuInit",
    "Please consider to run pre-processing before quantization",
    "Please consider pre-processing before quantization",
)
"""Lines native libraries print on every start or conversion that tell a user nothing: logged
at debug (``-vv`` shows them)."""


class JsonLines(logging.Formatter):
    """One JSON object per log record: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def native_level(line: str) -> tuple[int, str]:
    """The logging level of one line a native library wrote, and the line without its prefix."""
    m = _PREFIX.match(line)
    level = logging.WARNING
    if m:
        level = _LEVELS[m.group(1) or m.group(2)]
        line = line[m.end() :]
    if any(n in line for n in NOISE):
        level = logging.DEBUG
    return level, line


class NativeStderr:
    """Descriptor 2 routed through logging until :meth:`close` (see the module's docstring)."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)
        self.real: TextIO = io.TextIOWrapper(
            io.FileIO(self._saved, "w", closefd=False),
            encoding="utf-8",
            errors="backslashreplace",
            line_buffering=True,
        )
        self._previous = sys.stderr
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        if _writes_to_fd2(sys.stderr):  # else it is redirected already (a capture): kept
            sys.stderr = self.real
        self._reader = threading.Thread(
            target=self._pump, args=(read,), name="native-stderr", daemon=True
        )
        self._reader.start()

    def _pump(self, fd: int) -> None:
        with open(fd, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "backslashreplace").rstrip()
                if line:
                    level, text = native_level(line)
                    log.log(level, "%s", text)

    def close(self) -> None:
        """Give descriptor 2 and ``sys.stderr`` back; the reader ends when no process holds
        the pipe any more (a subprocess may keep it)."""
        self.real.flush()
        os.dup2(self._saved, 2)
        if sys.stderr is self.real:
            sys.stderr = self._previous
        self._reader.join(timeout=1.0)
        self.real.close()  # the wrapper only: the descriptor is closed next
        os.close(self._saved)


def _writes_to_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


_capture_lock = threading.Lock()


@contextlib.contextmanager
def native_lines_logged() -> Iterator[None]:
    """What native code writes to descriptor 2 during the block, logged afterwards line by line
    on the ``native`` logger (known chatter at debug). For short calls that print on their own
    (a LiteRT interpreter announcing its XNNPACK delegate); one block at a time per process, as
    descriptor 2 is the process's. A debug-level root logger leaves descriptor 2 alone."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    with _capture_lock:
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        import tempfile

        with tempfile.TemporaryFile() as sink:
            sys.stderr.flush()
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                text = sink.read().decode("utf-8", "backslashreplace")
        for line in text.splitlines():
            if line.strip():
                level, message = native_level(line.rstrip())
                log.log(level, "%s", message)


@contextlib.contextmanager
def route_native_stderr() -> Iterator[NativeStderr]:
    """:class:`NativeStderr` for the duration of a ``with`` block."""
    routed = NativeStderr()
    try:
        yield routed
    finally:
        routed.close()


def configure(level: int | str, *, json_lines: bool, stream: TextIO | None = None) -> None:
    """The root logger at ``level``, one handler on ``stream`` (default: ``sys.stderr`` at the
    time of each record), JSON lines or plain text."""
    handler = _Stream(stream)
    handler.setFormatter(
        JsonLines()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)


class _Stream(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream or sys.stderr)
        self._fixed = stream

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = self._fixed or sys.stderr
        super().emit(record)
