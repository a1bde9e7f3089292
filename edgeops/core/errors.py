"""The one error tree of edgeops.

Every error a user can cause derives from :class:`EdgeOpsError` and carries the exit code the CLI
returns for it. The CLI prints ``error: <message>`` on one line, then ``details`` (such as a list
of schema anomalies) when there are any, and exits with that code; it never shows a traceback for
these.

::

    EdgeOpsError (1)
    ├── UsageError (2)               bad option values or impossible combinations
    │   ├── RolloutError (2)           a deployment cannot be created or changed as asked
    │   └── PolicyRefusal (2)          a device's policy refuses an update or a rollback
    ├── MissingExtraError (3)        an optional dependency group is not installed
    ├── InputDataError (4)           a data file is missing, malformed, or has the wrong shape/dtype
    │   ├── BodyTooLarge (19)          a request body over its cap (HTTP 413)
    │   └── WireError (4)              a payload that is not a valid message (also a ValueError)
    ├── ModelError (5)               a model file is missing, corrupt or of an unsupported kind
    ├── ConversionError (6)          the converter or quantizer failed
    ├── GateError (7)                the converted model fell short of a fidelity gate
    ├── OutputError (8)              the output location cannot be written
    ├── RuntimeBackendError (9)      no inference runtime can run the model
    ├── SchemaError (10)             data breaks its schema; carries the list of anomalies
    ├── PipelineError (11)           a training pipeline step failed
    ├── KeyFileError (12)            a signing or verification key cannot be read
    ├── BundleError (13)             a bundle is malformed or fails verification
    │   ├── BundleIntegrityError (14)  a file's size or sha256 differs from the manifest
    │   └── SignatureError (15)        unsigned, signed by an untrusted key, or a bad signature
    ├── DeploymentAborted (16)       a staged rollout was stopped by its gates or on request
    ├── ServiceFailed (17)           the central service cannot go on (a worker died or stalled)
    ├── DownloadFailed (1)           an update's bundle could not be downloaded
    ├── BrokerError (18)             the MQTT broker cannot be reached or refused the credentials
    └── AccessDenied (20)            the service refused the REST token: missing, unknown,
                                     revoked (HTTP 401) or of too low a role (HTTP 403)
"""

from __future__ import annotations


class EdgeOpsError(Exception):
    """Base of every error edgeops raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # Lines the CLI prints under the one-line message, such as a list of anomalies.
        self.details: list[str] = []

    def __str__(self) -> str:
        return self.message


class UsageError(EdgeOpsError):
    """Options that are invalid or cannot be combined."""

    exit_code = 2


class MissingExtraError(EdgeOpsError):
    """An optional dependency is missing; the message names the extra to install."""

    exit_code = 3

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"this needs the '{module}' package: pip install 'edgeops[{extra}]'")
        self.module = module
        self.extra = extra


class InputDataError(EdgeOpsError):
    """A data file (calibration, validation, benchmark input) cannot be used."""

    exit_code = 4


class BodyTooLarge(InputDataError):
    """A request body is larger than its cap (found while it streams in, or from its declared
    length); APIs answer 413."""

    exit_code = 19

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over the limit of {limit} bytes")
        self.limit = limit


class ModelError(EdgeOpsError):
    """A model file is missing, corrupt, or of a kind that cannot be used here."""

    exit_code = 5


class ConversionError(EdgeOpsError):
    """Conversion or quantization failed inside the converter."""

    exit_code = 6


class GateError(EdgeOpsError):
    """The converted model was written but rejected by a fidelity gate."""

    exit_code = 7


class OutputError(EdgeOpsError):
    """An output file or directory cannot be written."""

    exit_code = 8


class RuntimeBackendError(EdgeOpsError):
    """No installed inference runtime can load or run the model."""

    exit_code = 9


class SchemaError(EdgeOpsError):
    """Data that breaks its schema. ``anomalies`` lists every problem found, one line each."""

    exit_code = 10

    def __init__(self, message: str, anomalies: list[str] | None = None) -> None:
        super().__init__(message)
        self.anomalies = list(anomalies or [])
        self.details = self.anomalies


class PipelineError(EdgeOpsError):
    """A training pipeline step failed or its run directory is inconsistent."""

    exit_code = 11


class KeyFileError(EdgeOpsError):
    """A signing or verification key file is missing, malformed, or of the wrong kind."""

    exit_code = 12


class BundleError(EdgeOpsError):
    """A bundle file is not a well-formed bundle, or fails verification."""

    exit_code = 13


class BundleIntegrityError(BundleError):
    """A file inside the bundle does not match the size or sha256 in its manifest."""

    exit_code = 14


class SignatureError(BundleError):
    """The bundle is unsigned, signed by a key that is not trusted, or its signature is invalid."""

    exit_code = 15


class DeploymentAborted(EdgeOpsError):
    """A deployment that was followed to its end was aborted (its devices are rolled back)."""

    exit_code = 16


class ServiceFailed(EdgeOpsError):
    """The central service stopped itself: a worker thread died more often than it may be
    restarted, or stalled for longer than it may; a supervisor (systemd) should restart it."""

    exit_code = 17


class BrokerError(EdgeOpsError):
    """The MQTT broker cannot be reached (TCP, TLS) or refused this client's credentials."""

    exit_code = 18


class RolloutError(UsageError):
    """A deployment cannot be created or changed as asked."""


class PolicyRefusal(UsageError):
    """The device's policy refuses an update or a rollback; the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """A short kind: "downgrade", "version", "model", "host", "local api"."""


class WireError(InputDataError, ValueError):
    """A payload that is not a valid message; ``reason`` is one of
    :data:`edgeops.core.wire.REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DownloadFailed(EdgeOpsError):
    """A download did not complete; the message says why (a device reports it in
    ``update-failed``)."""


class AccessDenied(EdgeOpsError):
    """The service's REST API refused the request's credentials: no token, an unknown or revoked
    one (HTTP 401), or a token whose role may not do this (HTTP 403)."""

    exit_code = 20


class CommandFailed(EdgeOpsError):
    """A device answered a command with ``KIND-failed`` or ``command-rejected``, or did not
    answer in the time it was given."""

    exit_code = 21


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text, for wrapping third-party errors in one line."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def error_class(exit_code: int) -> type[EdgeOpsError]:
    """The error class of an exit code (for errors passed between processes as JSON)."""
    stack: list[type[EdgeOpsError]] = [EdgeOpsError]
    while stack:
        cls = stack.pop()
        if cls.exit_code == exit_code and cls is not MissingExtraError:
            return cls
        stack.extend(cls.__subclasses__())
    return EdgeOpsError


def cause(e: BaseException, limit: int = 600, *, hide: tuple[str, ...] = ()) -> str:
    """An exception's whole text on one line (its lines joined by ' | '), for wrapping
    third-party errors without losing the reason; each path in ``hide`` is replaced by '…'
    (temporary and staging directories mean nothing to a user)."""
    text = str(e).strip()
    for path in hide:
        if path:
            text = text.replace(path.rstrip("/") + "/", "").replace(path, "…")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    joined = " | ".join(lines) if lines else ""
    name = type(e).__name__
    if not joined:
        return name
    plain = ("Exception", "RuntimeError", "ValueError")
    if not isinstance(e, EdgeOpsError) and name not in plain and not joined.startswith(name):
        joined = f"{name}: {joined}"
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"
