"""Terminal tables for ``edgeops fleet`` and ``edgeops drift``, from the REST API's JSON, and the
small HTTP client the CLI uses to get it (:class:`ServiceClient`).

The client sends a token (``Authorization: Bearer``) from, in order: ``--token``,
``--token-file``, ``EDGEOPS_TOKEN``, the file named by ``EDGEOPS_TOKEN_FILE``; and checks an
``https://`` service's certificate against ``--ca`` or ``EDGEOPS_API_CA`` (else the system's
CAs).
"""

from __future__ import annotations

import json
import math
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeops.core.broker import read_secret
from edgeops.core.errors import AccessDenied, EdgeOpsError, UsageError
from edgeops.core.terminal import clean, clip_words, fmt, render

DEFAULT_URL = "http://127.0.0.1:8480"
TOKEN_ENV = "EDGEOPS_TOKEN"
TOKEN_FILE_ENV = "EDGEOPS_TOKEN_FILE"
CA_ENV = "EDGEOPS_API_CA"


@dataclass(frozen=True)
class ServiceClient:
    """The service's REST API, as the CLI calls it: JSON in and out, one-line errors."""

    url: str = DEFAULT_URL
    token: str | None = None
    ca: Path | None = None
    """CA certificate(s) of an ``https://`` service (default: the system's)."""
    timeout: float = 60.0

    @classmethod
    def resolve(
        cls,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        ca: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ServiceClient:
        """A client with the token and CA the options give, else the environment's."""
        env = os.environ if env is None else env
        if token is None and token_file is not None:
            token = read_secret(token_file, "--token-file")
        if token is None and env.get(TOKEN_ENV):
            token = env[TOKEN_ENV].strip()
        if token is None and env.get(TOKEN_FILE_ENV):
            token = read_secret(Path(env[TOKEN_FILE_ENV]), TOKEN_FILE_ENV)
        if ca is None and env.get(CA_ENV):
            ca = Path(env[CA_ENV])
        return cls(url, token=token, ca=ca)

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params`` (None values left out); the decoded JSON."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self._send(self._request(path + (f"?{query}" if query else "")))

    def post(self, path: str, body: bytes | dict[str, Any] | None = None) -> Any:
        """POST raw bytes (a bundle) or a JSON object to ``path``; the decoded JSON."""
        data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        kind = "application/json" if isinstance(body, dict) else "application/octet-stream"
        return self._send(self._request(path, data=data, content_type=kind))

    def upload(self, path: str, file: Path) -> Any:
        """POST a file's bytes to ``path``, streamed from disk; the decoded JSON."""
        try:
            size = file.stat().st_size
            with file.open("rb") as f:
                req = self._request(path, data=f, content_type="application/octet-stream")
                req.add_header("Content-Length", str(size))
                return self._send(req)
        except OSError as e:  # the file (the request's own errors are EdgeOpsErrors)
            raise UsageError(f"{file}: {e.strerror or e}") from None

    def _request(
        self, path: str, *, data: Any = None, content_type: str | None = None
    ) -> urllib.request.Request:
        headers = {} if content_type is None else {"Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        method = "GET" if data is None else "POST"
        return urllib.request.Request(
            self.url.rstrip("/") + path, data=data, method=method, headers=headers
        )

    def _context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https://"):
            return None
        try:
            return ssl.create_default_context(cafile=None if self.ca is None else str(self.ca))
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"--ca {self.ca}: {getattr(e, 'strerror', None) or e}") from None

    def _send(self, req: urllib.request.Request) -> Any:
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._context()) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                message = str(json.loads(e.read()).get("error", ""))
            except (ValueError, AttributeError):
                message = ""
            message = message or f"{req.full_url}: HTTP {e.code}"
            if e.code == 401:
                hint = "the token was refused" if self.token else "no token was given"
                raise AccessDenied(
                    f"{message} ({hint}: pass --token, --token-file or {TOKEN_ENV})"
                ) from None
            if e.code == 403:
                raise AccessDenied(message) from None
            error = UsageError if 400 <= e.code < 500 else EdgeOpsError  # the request was refused
            raise error(message) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise EdgeOpsError(f"cannot reach the service at {self.url}: {reason}") from None


def get(url: str, path: str, **params: Any) -> Any:
    """GET ``url + path`` with query ``params`` (None values left out), with the environment's
    token (:meth:`ServiceClient.resolve`); the decoded JSON."""
    return ServiceClient.resolve(url).get(path, **params)


def post(url: str, path: str, body: bytes | dict[str, Any] | None = None) -> Any:
    """POST raw bytes (a bundle) or a JSON object to ``url + path``, with the environment's
    token; the decoded JSON."""
    return ServiceClient.resolve(url).post(path, body)


def command_device(
    client: ServiceClient,
    device: str,
    body: dict[str, Any],
    *,
    fleet: str | None = None,
    wait: float = 30.0,
    poll: float = 0.25,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Send ``device`` a command (``POST /v1/devices/{device}/commands``) and wait up to ``wait``
    seconds for the event that answers it (one carrying its id); ``(sent, answer)``, the answer
    None when none came (or ``wait`` is 0)."""
    path = f"/v1/devices/{urllib.parse.quote(device, safe='')}"
    query = f"?{urllib.parse.urlencode({'fleet': fleet})}" if fleet is not None else ""
    sent: dict[str, Any] = client.post(f"{path}/commands{query}", body)
    deadline = time.monotonic() + wait
    while wait > 0:
        found = client.get(path, fleet=sent.get("fleet"))
        events = found.get("events") if isinstance(found, dict) else None
        for event in events if isinstance(events, list) else ():
            if isinstance(event, dict) and event.get("command_id") == sent.get("id"):
                return sent, event
        if time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return sent, None


def answer_line(sent: Mapping[str, Any], answer: Mapping[str, Any] | None, waited: float) -> str:
    """One line for the CLI: the command and the device's answer to it (its kind, message and
    data, escaped and clipped: a device wrote them)."""
    what = f"{sent.get('kind')} {sent.get('id')} to {sent.get('fleet')}/{sent.get('device')}"
    if answer is None:
        until = _stamp(sent.get("deadline"))
        return f"{what}: sent, no answer in {waited:g} s (the device may act on it until {until})"
    data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
    assert isinstance(data, dict)
    detail = ", ".join(f"{k} {fmt(v)}" for k, v in data.items() if not isinstance(v, dict | list))
    message = str(answer.get("message") or "")
    text = f"{what}: {answer.get('kind')}" + (f": {message}" if message else "")
    return clip_words(fmt(text + (f" ({detail})" if detail else "")), 300)


def answered(answer: Mapping[str, Any] | None) -> bool:
    """Whether ``answer`` says the device carried the command out."""
    return answer is not None and str(answer.get("kind", "")).endswith("-done")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """``30m``, ``2h``, ``1d`` ago, or a unix time."""
    if text is None:
        return None
    m = _DURATION.match(text.strip())
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return (now or time.time()) - seconds
    try:
        return float(text)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: use a duration such as 30m, 2h, 1d, or a unix time"
        ) from None


def _ago(t: Any, now: float) -> str:
    if not _finite(t):
        return "-"
    s = max(0.0, now - float(t))
    return (
        f"{s:.0f} s ago"
        if s < 120
        else f"{s / 60:.0f} min ago"
        if s < 7200
        else f"{s / 3600:.1f} h ago"
    )


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _stamp(t: Any, pattern: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A local time, or a dash for a missing or impossible one."""
    if not _finite(t):
        return "-"
    try:
        return time.strftime(pattern, time.localtime(float(t)))
    except (OverflowError, OSError, ValueError):
        return "-"


def _ms(x: Any) -> str:
    return f"{float(x):.3f} ms" if _finite(x) else "-"


def _model(name: Any, version: Any) -> str:
    """``NAME VERSION``, or a dash when the device has not said."""
    return " ".join(str(p) for p in (name, version) if p) or "-"


def _list(data: Any, key: str) -> list[dict[str, Any]]:
    """``data[key]`` as a list of objects (anything else in it left out)."""
    found = data.get(key) if isinstance(data, dict) else None
    return [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []


def _pairs(counts: Any) -> str:
    if not isinstance(counts, dict) or not counts:
        return "-"
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0])))


def fleet_table(data: dict[str, Any]) -> str:
    now = float(data["now"]) if _finite(data.get("now")) else time.time()
    rows = [
        (
            d.get("fleet"),
            d.get("device"),
            "online" if d.get("online") else "offline",
            _model(d.get("model_name"), d.get("model_version")),
            d.get("agent_version") or "-",
            _ago(d.get("last_seen"), now),
            d.get("active_alerts", 0),
        )
        for d in _list(data, "devices")
    ]
    out = render(("fleet", "device", "status", "model", "agent", "last seen", "alerts"), rows)
    if _list(data, "fleet_alerts"):
        out += "\n\nfleet-wide alerts:\n" + alerts_table(_list(data, "fleet_alerts"))
    return out


REFERENCE_NAMES = {"training": "training data", "deploy": "since deploy", "": "-"}
"""How the two verdict kinds read: "differs from training data", "changed since deploy"."""


def _against(reference: Any) -> str:
    return REFERENCE_NAMES.get(reference if isinstance(reference, str) else "", "-")


def alerts_table(alerts: list[dict[str, Any]]) -> str:
    rows = [
        (
            a.get("fleet"),
            a.get("device"),
            _model(a.get("model_name"), a.get("model_version")),
            _against(a.get("reference", "training")),
            a.get("kind"),
            a.get("feature"),
            _stamp(a.get("raised")),
        )
        for a in alerts
        if isinstance(a, dict)
    ]
    return render(("fleet", "device", "model", "against", "kind", "feature", "raised"), rows)


def _verdict(r: dict[str, Any]) -> str:
    if r.get("drifted") is None:
        return "no verdict"
    return "DRIFT" if r["drifted"] else "ok"


def drift_table(rows: list[dict[str, Any]]) -> str:
    """Every verdict: what it compared with, the distances, and why it was reached (the checks
    over their limit, or the closest one, each with its value, threshold, floor and test)."""
    ordered = sorted(
        (r for r in rows if isinstance(r, dict)),
        key=lambda r: tuple(
            str(r.get(k) or "") for k in ("scope", "device", "reference", "kind", "feature")
        ),
    )
    body = [
        (
            r.get("scope"),
            r.get("device") or "-",
            _model(r.get("model_name"), r.get("model_version")),
            _against(r.get("reference", "training")),
            r.get("kind"),
            r.get("feature"),
            r.get("samples"),
            r.get("js"),
            r.get("psi"),
            r.get("wasserstein"),
            r.get("value"),
            _verdict(r),
        )
        for r in ordered
    ]
    table = render(
        (
            "scope",
            "device",
            "model",
            "against",
            "kind",
            "feature",
            "n",
            "JS",
            "PSI",
            "W1/std",
            "value",
            "verdict",
        ),
        body,
    )
    why = [
        clean(
            f"  {r.get('device') or r.get('scope') or '-'} {r.get('feature') or '-'} "
            f"[{_against(r.get('reference', 'training'))}]: {_verdict(r)}: {r['reason']}"
        )
        for r in ordered
        if r.get("reason")
    ]
    return table + ("\n\nwhy:\n" + "\n".join(why) if why else "")


def drift_report(data: dict[str, Any]) -> str:
    """``edgeops drift report``: the verdicts, the baselines' blind spots, the references."""
    out = drift_table(_list(data, "drift"))
    blind = data.get("blind_spots") or {}
    if isinstance(blind, dict) and blind:
        out += "\n\nblind spots (drift that the bins cannot show; the moments still can):"
        for model, found in blind.items():
            for feature, reason in (found or {}).items() if isinstance(found, dict) else ():
                out += f"\n  {clean(str(model))} {clean(str(feature))}: {clean(str(reason))}"
    refs = _list(data, "references")
    if refs:
        out += "\n\nper-device references (first healthy windows on a version):\n"
        out += render(
            ("fleet", "device", "model", "state", "rows"),
            [
                (x.get("fleet"), x.get("device"),
                 _model(x.get("model_name"), x.get("model_version")),
                 x.get("state"), x.get("rows"))
                for x in refs
            ],
        )  # fmt: skip
    return out


def device_report(data: dict[str, Any]) -> str:
    """``edgeops fleet device``: a device with no window yet, no model, no latency or odd
    values still reads as a report (dashes where there is nothing to show). Then its active
    alerts, its latest drift rows and its recent events, each where there is any."""
    d = data.get("device") if isinstance(data.get("device"), dict) else {}
    assert isinstance(d, dict)
    lat = data.get("latency") if isinstance(data.get("latency"), dict) else {}
    assert isinstance(lat, dict)
    sha = d.get("model_sha256")
    lines = [
        f"device   {d.get('fleet') or '-'}/{d.get('device') or '-'} "
        f"({'online' if d.get('online') else 'offline'})",
        f"model    {_model(d.get('model_name'), d.get('model_version'))}"
        + (f" (sha256 {str(sha)[:16]})" if sha else ""),
        f"agent    {d.get('agent_version') or '-'}, boot {d.get('boot') or '-'}",
        f"served   {data.get('predictions', 0)} predictions, {data.get('errors', 0)} errors, "
        f"{data.get('bad_inputs', 0)} bad inputs (last {lat.get('windows', 0)} windows)",
    ]
    if lat:
        lines.append(
            f"latency  p50 {_ms(lat.get('p50_ms'))}, p95 {_ms(lat.get('p95_ms'))}, "
            f"p99 {_ms(lat.get('p99_ms'))}"
        )
    else:
        lines.append("latency  - (no prediction in the recent windows)")
    out = clean("\n".join(lines), keep_newlines=True)
    if _list(data, "alerts"):
        out += "\n\nactive alerts:\n" + alerts_table(_list(data, "alerts"))
    if _list(data, "drift"):
        out += "\n\ndrift (latest evaluation):\n" + drift_table(_list(data, "drift"))
    if _list(data, "events"):
        out += "\n\nrecent events:\n" + events_table(_list(data, "events"))
    return out


def events_table(rows: list[dict[str, Any]]) -> str:
    """A device's events, newest first: when it sent each, its kind and level, the command it
    answers and its message (one line, clipped; a device wrote it)."""
    body = [
        (
            _stamp(r.get("sent")),
            r.get("kind"),
            r.get("level"),
            r.get("command_id"),
            clip_words(str(r.get("message") or ""), 70),
        )
        for r in rows
        if isinstance(r, dict)
    ]
    return render(("sent", "kind", "level", "command", "message"), body)


def _when(t: Any) -> str:
    return _stamp(t, "%H:%M:%S")


def deployments_table(rows: list[dict[str, Any]]) -> str:
    body = [
        (
            r.get("id"),
            r.get("fleet"),
            _model(r.get("model_name"), r.get("model_version")),
            r.get("state"),
            _stage(r),
            _pairs(r.get("devices")),
            _when(r.get("created")),
            clip_words(str(r.get("reason") or ""), 70),
        )
        for r in rows
        if isinstance(r, dict)
    ]
    return render(("id", "fleet", "model", "state", "stage", "devices", "created", "reason"), body)


def _stage(d: dict[str, Any]) -> str:
    sizes = d.get("stage_sizes")
    stage = d.get("stage")
    total = len(sizes) if isinstance(sizes, list) else 0
    return f"{stage + 1}/{total}" if isinstance(stage, int) and total else "-"


def deployment_report(d: dict[str, Any]) -> str:
    sizes = d.get("stage_sizes")
    sizes = sizes if isinstance(sizes, list) else []
    history = d.get("history")
    history = history if isinstance(history, list) else []
    lines = [
        f"deployment {d.get('id') or '-'}: {_model(d.get('model_name'), d.get('model_version'))} "
        f"to fleet {d.get('fleet') or '-'}",
        f"state      {d.get('state') or '-'}" + (f" ({d['reason']})" if d.get("reason") else ""),
        f"stage      {_stage(d).replace('/', ' of ')} (cumulative devices {sizes})",
        f"trigger    {d.get('trigger') or '-'}",
        f"devices    {_pairs(d.get('counts'))}",
        "",
        "history:",
        *(
            f"  {_when(h[0])}  {h[2]}"
            for h in history
            if isinstance(h, list | tuple) and len(h) >= 3
        ),
        "",
    ]
    rows = [
        (
            x.get("device"),
            x["stage"] + 1 if isinstance(x.get("stage"), int) else "-",
            x.get("state"),
            x.get("from_version") or "-",
            _when(x.get("sent")),
            _when(x.get("decided")),
            clip_words(str(x.get("reason") or ""), 70),
        )
        for x in _list(d, "device_states")
    ]
    return clean("\n".join(lines), keep_newlines=True) + render(
        ("device", "stage", "state", "from", "sent", "decided", "reason"), rows
    )


def models_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        if not isinstance(r, dict):
            continue
        lineage = r.get("lineage") if isinstance(r.get("lineage"), dict) else {}
        assert isinstance(lineage, dict)
        devices = r.get("devices")
        body.append(
            (
                r.get("name"),
                r.get("version"),
                lineage.get("parent") or "-",
                lineage.get("run") or "-",
                _model(lineage.get("format"), lineage.get("mode")),
                lineage.get("accuracy"),
                r.get("bundle_size") or "-",
                ", ".join(f"{f}: {n}" for f, n in sorted(devices.items()))
                if isinstance(devices, dict) and devices
                else "-",
            )
        )
    return render(
        ("model", "version", "parent", "run", "format", "accuracy", "bytes", "running on"), body
    )
