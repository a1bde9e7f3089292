"""Terminal tables for ``edgeops fleet`` and ``edgeops drift``, from the REST API's JSON, and the
small HTTP client the CLI uses to get it."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from edgeops.errors import EdgeOpsError, UsageError
from edgeops.tables import render

DEFAULT_URL = "http://127.0.0.1:8480"


def get(url: str, path: str, **params: Any) -> Any:
    """GET ``url + path`` with query ``params`` (None values left out); the decoded JSON."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return _request(url, url.rstrip("/") + path + (f"?{query}" if query else ""))


def post(url: str, path: str, body: bytes | dict[str, Any] | None = None) -> Any:
    """POST raw bytes (a bundle) or a JSON object to ``url + path``; the decoded JSON."""
    data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    kind = "application/json" if isinstance(body, dict) else "application/octet-stream"
    req = urllib.request.Request(
        url.rstrip("/") + path, data=data, method="POST", headers={"Content-Type": kind}
    )
    return _request(url, req)


def _request(url: str, req: str | urllib.request.Request) -> Any:
    full = req if isinstance(req, str) else req.full_url
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", "")
        except ValueError:
            message = ""
        error = UsageError if 400 <= e.code < 500 else EdgeOpsError  # the request was refused
        raise error(message or f"{full}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise EdgeOpsError(f"cannot reach the service at {url}: {e}") from None


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
            r.get("reason") or "",
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
            (x.get("reason") or "")[:70],
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
