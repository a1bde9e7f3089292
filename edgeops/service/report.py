"""Terminal tables for ``edgeops fleet`` and ``edgeops drift``, from the REST API's JSON, and the
small HTTP client the CLI uses to get it (:class:`ServiceClient`).

The client sends a token (``Authorization: Bearer``) from, in order: ``--token``,
``--token-file``, ``EDGEOPS_TOKEN``, the file named by ``EDGEOPS_TOKEN_FILE``; and checks an
``https://`` service's certificate against ``--ca`` or ``EDGEOPS_API_CA`` (else the system's
CAs).
"""

from __future__ import annotations

import json
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
from edgeops.core.terminal import clip_words, render

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


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    s = max(0.0, now - t)
    return (
        f"{s:.0f} s ago"
        if s < 120
        else f"{s / 60:.0f} min ago"
        if s < 7200
        else f"{s / 3600:.1f} h ago"
    )


def fleet_table(data: dict[str, Any]) -> str:
    now = data.get("now", time.time())
    rows = [
        (
            d["fleet"],
            d["device"],
            "online" if d["online"] else "offline",
            f"{d.get('model_name') or '-'} {d.get('model_version') or ''}".strip(),
            d.get("agent_version") or "-",
            _ago(d.get("last_seen"), now),
            d.get("active_alerts", 0),
        )
        for d in data["devices"]
    ]
    out = render(("fleet", "device", "status", "model", "agent", "last seen", "alerts"), rows)
    if data.get("fleet_alerts"):
        out += "\n\nfleet-wide alerts:\n" + alerts_table(data["fleet_alerts"])
    return out


REFERENCE_NAMES = {"training": "training data", "deploy": "since deploy", "": "-"}
"""How the two verdict kinds read: "differs from training data", "changed since deploy"."""


def alerts_table(alerts: list[dict[str, Any]]) -> str:
    rows = [
        (
            a["fleet"],
            a["device"],
            f"{a['model_name']} {a['model_version']}",
            REFERENCE_NAMES.get(a.get("reference", "training"), "-"),
            a["kind"],
            a["feature"],
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["raised"])),
        )
        for a in alerts
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
        rows,
        key=lambda r: (
            r["scope"], r["device"], r.get("reference", ""), r["kind"], r["feature"]
        ),
    )  # fmt: skip
    body = [
        (
            r["scope"],
            r["device"] or "-",
            f"{r['model_name']} {r['model_version']}",
            REFERENCE_NAMES.get(r.get("reference", "training"), "-"),
            r["kind"],
            r["feature"],
            r["samples"],
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
        f"  {r['device'] or r['scope']} {r['feature']} "
        f"[{REFERENCE_NAMES.get(r.get('reference', 'training'), '-')}]: {_verdict(r)}: "
        f"{r['reason']}"
        for r in ordered
        if r.get("reason")
    ]
    return table + ("\n\nwhy:\n" + "\n".join(why) if why else "")


def drift_report(data: dict[str, Any]) -> str:
    """``edgeops drift report``: the verdicts, the baselines' blind spots, the references."""
    out = drift_table(data["drift"])
    blind = data.get("blind_spots") or {}
    if blind:
        out += "\n\nblind spots (drift that the bins cannot show; the moments still can):"
        for model, found in blind.items():
            for feature, reason in found.items():
                out += f"\n  {model} {feature}: {reason}"
    refs = data.get("references") or []
    if refs:
        out += "\n\nper-device references (first healthy windows on a version):\n"
        out += render(
            ("fleet", "device", "model", "state", "rows"),
            [
                (x["fleet"], x["device"], f"{x['model_name']} {x['model_version']}",
                 x["state"], x["rows"])
                for x in refs
            ],
        )  # fmt: skip
    return out


def device_report(data: dict[str, Any]) -> str:
    d = data["device"]
    lat = data.get("latency") or {}
    lines = [
        f"device   {d['fleet']}/{d['device']} ({'online' if d['online'] else 'offline'})",
        f"model    {d.get('model_name')} {d.get('model_version')} "
        f"(sha256 {str(d.get('model_sha256'))[:16]})",
        f"agent    {d.get('agent_version')}, boot {d.get('boot')}",
        f"served   {data['predictions']} predictions, {data['errors']} errors, "
        f"{data['bad_inputs']} bad inputs (last {lat.get('windows', 0)} windows)",
    ]
    if lat:
        lines.append(
            f"latency  p50 {lat['p50_ms']:.3f} ms, p95 {lat['p95_ms']:.3f} ms, "
            f"p99 {lat['p99_ms']:.3f} ms"
        )
    out = "\n".join(lines)
    if data["alerts"]:
        out += "\n\nactive alerts:\n" + alerts_table(data["alerts"])
    if data["drift"]:
        out += "\n\ndrift (latest evaluation):\n" + drift_table(data["drift"])
    return out


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


def deployments_table(rows: list[dict[str, Any]]) -> str:
    body = [
        (
            r["id"],
            r["fleet"],
            f"{r['model_name']} {r['model_version']}",
            r["state"],
            f"{r['stage'] + 1}/{len(r['stage_sizes'])}",
            " ".join(f"{k} {v}" for k, v in sorted(r["devices"].items())),
            _when(r["created"]),
            clip_words(r.get("reason") or "", 70),
        )
        for r in rows
    ]
    return render(("id", "fleet", "model", "state", "stage", "devices", "created", "reason"), body)


def deployment_report(d: dict[str, Any]) -> str:
    sizes = d["stage_sizes"]
    lines = [
        f"deployment {d['id']}: {d['model_name']} {d['model_version']} to fleet {d['fleet']}",
        f"state      {d['state']}" + (f" ({d['reason']})" if d.get("reason") else ""),
        f"stage      {d['stage'] + 1} of {len(sizes)} (cumulative devices {sizes})",
        f"trigger    {d['trigger']}",
        "devices    " + ", ".join(f"{k} {v}" for k, v in sorted(d["counts"].items())),
        "",
        "history:",
        *(f"  {_when(t)}  {what}" for t, _, what in d["history"]),
        "",
    ]
    rows = [
        (
            x["device"],
            x["stage"] + 1,
            x["state"],
            x.get("from_version") or "-",
            _when(x.get("sent")),
            _when(x.get("decided")),
            clip_words(x.get("reason") or "", 70),
        )
        for x in d["device_states"]
    ]
    return "\n".join(lines) + render(
        ("device", "stage", "state", "from", "sent", "decided", "reason"), rows
    )


def models_table(rows: list[dict[str, Any]]) -> str:
    body = [
        (
            r["name"],
            r["version"],
            (r["lineage"].get("parent") or "-"),
            r["lineage"].get("run") or "-",
            f"{r['lineage'].get('format') or '-'} {r['lineage'].get('mode') or ''}".strip(),
            r["lineage"].get("accuracy"),
            r.get("bundle_size") or "-",
            ", ".join(f"{f}: {n}" for f, n in sorted(r["devices"].items())) or "-",
        )
        for r in rows
    ]
    return render(
        ("model", "version", "parent", "run", "format", "accuracy", "bytes", "running on"), body
    )
