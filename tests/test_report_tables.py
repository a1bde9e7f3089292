"""The CLI's tables (edgeops.service.report) never end in a traceback: each is fed empty data,
the API's own answers for a device that never sent a window (over HTTP, through the real
``edgeops fleet`` commands), and odd values (missing keys, None, NaN and infinities, impossible
times, wrong types, terminal escapes in what a device sent)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeops.core import topics, wire
from edgeops.service.config import ServiceConfig
from edgeops.service.report import (
    alerts_table,
    deployment_report,
    deployments_table,
    device_report,
    drift_report,
    drift_table,
    fleet_table,
    models_table,
)
from edgeops.service.server import Service

TABLES: dict[str, Callable[[Any], str]] = {
    "fleet": fleet_table,
    "device": device_report,
    "drift": drift_report,
    "deployment": deployment_report,
    "alerts": alerts_table,
    "drift rows": drift_table,
    "deployments": deployments_table,
    "models": models_table,
}
TAKES_LIST = {"alerts", "drift rows", "deployments", "models"}

ESC = "\x1b[2J\x1b[31mred"
ODD_SCALARS: list[Any] = [
    None,
    float("nan"),
    float("inf"),
    -1e308,
    1e300,
    -5,
    "",
    ESC,
    True,
    [],
    {},
]


def _device(**kw: Any) -> dict[str, Any]:
    return {
        "fleet": "f",
        "device": "d",
        "online": True,
        "boot": "b",
        "model_name": None,
        "model_version": None,
        "model_sha256": None,
        "agent_version": None,
        "labels": None,
        "first_seen": 1.0,
        "last_seen": 2.0,
        "status_sent": None,
        **kw,
    }


def _alert(**kw: Any) -> dict[str, Any]:
    return {
        "fleet": "f", "device": "d", "model_name": "m", "model_version": "1", "kind": "input",
        "feature": "x", "raised": 1.0, "reference": "training", **kw,
    }  # fmt: skip


def _drift_row(**kw: Any) -> dict[str, Any]:
    return {
        "scope": "device", "device": "d", "model_name": "m", "model_version": "1",
        "reference": "deploy", "kind": "input", "feature": "x", "samples": 10, "js": 0.2,
        "psi": None, "wasserstein": None, "value": 0.2, "drifted": True, "reason": "js over",
        **kw,
    }  # fmt: skip


def _event(**kw: Any) -> dict[str, Any]:
    return {
        "id": 1, "fleet": "f", "device": "d", "boot": "b", "seq": 1, "sent": 1.0,
        "kind": "started", "level": "info", "message": "", "command_id": None,
        "data": {"agent_version": "0.1.0", "commands": "signed"}, **kw,
    }  # fmt: skip


def _deployment(**kw: Any) -> dict[str, Any]:
    return {
        "id": "d1", "fleet": "f", "model_name": "m", "model_version": "2", "state": "running",
        "stage": 0, "stage_sizes": [1, 4], "devices": {"sent": 1}, "created": 1.0,
        "reason": None, "trigger": "request", "counts": {"sent": 1},
        "history": [[1.0, "running", "stage 1 of 2"]],
        "device_states": [
            {"device": "d", "stage": 0, "state": "sent", "from_version": "1", "sent": 1.0,
             "decided": None, "reason": None},
        ],
        **kw,
    }  # fmt: skip


def _model(**kw: Any) -> dict[str, Any]:
    return {
        "name": "m", "version": "1", "bundle_size": 10, "devices": {"f": 2},
        "lineage": {"parent": None, "run": "r", "format": "tflite", "mode": "int8",
                    "accuracy": 0.9},
        **kw,
    }  # fmt: skip


GOOD: dict[str, Any] = {
    "fleet": {"devices": [_device()], "fleet_alerts": [_alert(device="_fleet")], "now": 3.0},
    "device": {
        "device": _device(model_name="m", model_version="1", model_sha256="ab" * 32),
        "latency": {"windows": 3, "count": 9, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0},
        "predictions": 9,
        "errors": 0,
        "bad_inputs": 0,
        "alerts": [_alert()],
        "drift": [_drift_row()],
        "events": [_event(), _event(kind="update-failed", level="error", message="a\nb " * 40)],
    },
    "drift": {
        "drift": [_drift_row()],
        "blind_spots": {"m 1": {"x": "one bin"}},
        "references": [
            {
                "fleet": "f",
                "device": "d",
                "model_name": "m",
                "model_version": "1",
                "state": "ready",
                "rows": 5,
            },
        ],
    },
    "deployment": _deployment(),
    "alerts": [_alert()],
    "drift rows": [_drift_row()],
    "deployments": [_deployment()],
    "models": [_model()],
}
EMPTY: dict[str, Any] = {
    "fleet": {"devices": [], "fleet_alerts": [], "now": time.time()},
    "device": {
        "device": _device(),
        "latency": None,
        "predictions": 0,
        "errors": 0,
        "bad_inputs": 0,
        "alerts": [],
        "drift": [],
        "events": [],
    },
    "drift": {"drift": [], "blind_spots": {}, "references": []},
    "deployment": _deployment(history=[], device_states=[], counts={}, stage_sizes=[]),
    "alerts": [],
    "drift rows": [],
    "deployments": [],
    "models": [],
}


def _mutations(value: Any) -> list[Any]:
    """``value`` with each key of each object in it, in turn, removed or set to each odd
    scalar (one change at a time), plus the whole value as an odd scalar."""
    out: list[Any] = [None, "", 0, [], {}, ESC, [None, 3, "x"]]

    def walk(v: Any, rebuild: Callable[[Any], Any]) -> None:
        if isinstance(v, dict):
            for k in list(v):
                rest = {kk: vv for kk, vv in v.items() if kk != k}
                out.append(rebuild(rest))
                for odd in ODD_SCALARS:
                    out.append(rebuild({**v, k: odd}))
                walk(v[k], lambda new, k=k: rebuild({**v, k: new}))
        elif isinstance(v, list):
            for i, item in enumerate(v):
                walk(item, lambda new, i=i: rebuild([*v[:i], new, *v[i + 1 :]]))

    walk(value, lambda x: x)
    return out


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_reads_empty_data(name: str) -> None:
    text = TABLES[name](EMPTY[name])
    assert isinstance(text, str) and text


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_survives_odd_values_one_at_a_time(name: str) -> None:
    cases = _mutations(GOOD[name])
    assert len(cases) > 50
    for case in cases:
        if name not in TAKES_LIST and not isinstance(case, dict):
            continue  # the CLI hands these a decoded JSON object, never anything else
        if name in TAKES_LIST and not isinstance(case, list):
            continue
        try:
            text = TABLES[name](case)
        except Exception as e:  # the failure names the input that caused it
            raise AssertionError(f"{name} failed on {case!r}: {type(e).__name__}: {e}") from e
        assert isinstance(text, str)
        assert "\x1b" not in text, case  # escaped, never sent to the terminal raw


def test_a_device_that_never_sent_a_window_reads_as_a_report(
    cli,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The service answers for a device it knows only from its status message; the real
    commands print a report with dashes, not a traceback."""
    cfg = ServiceConfig(
        broker="mqtt://127.0.0.1:1",  # no broker: the API answers from the database
        db=f"sqlite:///{tmp_path / 'service.db'}",
        http_port=0,
        group=f"g{uuid.uuid4().hex[:6]}",
        fleet_interval=3600.0,
    )
    with Service(cfg) as service:
        token = service.tokens.create("reader", "read")
        status = wire.Status(
            device="quiet-1", boot="b1", seq=1, sent=time.time(), online=True,
            agent_version="0.1\x1b[2J",
        )  # fmt: skip
        service.handle(topics.status("f1", "quiet-1"), wire.encode(status))
        url = service.http.address
        result = cli("fleet", "device", "quiet-1", "--url", url, "--token", token)
        assert result.code == 0, result.err
        assert "quiet-1" in result.out and "0 predictions" in result.out
        assert "latency  -" in result.out and "\x1b" not in result.out
        for args in (
            ("fleet", "status"),
            ("drift", "report"),
            ("deploy", "list"),
            ("models", "list"),
        ):
            result = cli(*args, "--url", url, "--token", token)
            assert result.code == 0, (args, result.err)
            assert "Traceback" not in result.out + result.err


def test_the_device_report_lists_recent_events_one_line_each() -> None:
    """What a device wrote in an event's message is one clipped line of the table, escaped."""
    text = device_report(GOOD["device"])
    events = text.split("recent events:\n", 1)[1].splitlines()
    assert events[0].split() == ["sent", "kind", "level", "command", "message"]
    rows = events[2:]  # under the header's rule
    assert len(rows) == 2 and "started" in rows[0]
    assert "update-failed" in rows[1] and rows[1].endswith("…")
    assert len(rows[1]) < 160
    hostile = device_report({**GOOD["device"], "events": [_event(message="\x1b[2Jx\ry")]})
    assert "\x1b" not in hostile and "\r" not in hostile and "\\x1b[2Jx y" in hostile
    assert "recent events" not in device_report(EMPTY["device"])
