"""What the service's drift evaluation computes and stores: the two verdict kinds ("differs from
training data", "changed since deploy") against a device's own reference, the per-model policy of
which one alerts, alerts closed when a device leaves the version they were raised against, why
each verdict was reached, and databases made before these columns existed.

Windows come from a real agent (int8 TFLite) serving scikit-learn's digits, stored and evaluated
by a real service on SQLite (no broker needed: the engine is driven directly)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import sqlalchemy as sa

from device_agent.agent import Agent
from edgeops.core import wire
from edgeops.service import storage
from edgeops.service.config import ModelPolicy, ReferencePolicy, ServiceConfig
from edgeops.service.report import drift_report
from edgeops.service.server import Service
from edgeops.service.storage import schema
from tests.test_agent import make_config

FLEET = "refs"


@pytest.fixture(scope="module")
def windows(
    digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path_factory: Any
) -> dict[str, list[wire.Telemetry]]:
    """Windows of 300 predictions a real agent closed: held-out digits ("calm"), the same
    brightened by 4 ("bright"), and a device that sees only the dark half ("dark")."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    ink = images.reshape(len(images), -1).sum(axis=1)
    dark = images[ink < np.median(ink)]
    rng = np.random.default_rng(9)
    agent = Agent(
        make_config(tmp_path_factory.mktemp("agent"), 1, digits_bundles[0], signing_keys,
                    device="source"),
        mqtt=False,
        http=False,
    ).start()  # fmt: skip
    out: dict[str, list[wire.Telemetry]] = {"calm": [], "bright": [], "dark": []}
    try:
        for kind, source, shift in (("calm", images, 0.0), ("bright", images, 4.0),
                                    ("dark", dark, 0.0)):  # fmt: skip
            for _ in range(10):
                x = source[rng.integers(0, len(source), 300)]
                agent.predict(np.clip(x + shift, 0, 16))
                w = agent.flush_window()
                assert w is not None
                out[kind].append(w)
    finally:
        agent.stop()
    return out


@pytest.fixture
def make_service(
    digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path: Path
) -> Iterator[Callable[..., Service]]:
    made: list[Service] = []

    def make(policy: ModelPolicy | None = None, **kw: Any) -> Service:
        cfg = ServiceConfig(
            broker="mqtt://127.0.0.1:1",
            db=f"sqlite:///{tmp_path / 'service.db'}",
            http_port=0,
            bundles=(digits_bundles[0],),
            trusted_keys=(signing_keys[1],),
            fleet_interval=3600.0,
            default=policy or ModelPolicy(),
            **kw,
        )
        s = Service(cfg, http=False)
        for path in cfg.bundles:
            s.register_bundle(path)
        made.append(s)
        return s

    yield make
    for s in made:
        s.engine_db.dispose()


class Device:
    """Feeds one device's windows into the store and evaluates each, as the service does."""

    def __init__(self, service: Service, name: str) -> None:
        self.service = service
        self.name = name
        self.seq = 0

    def send(self, t: wire.Telemetry, version: str | None = None) -> None:
        now = time.time()
        model = t.model if version is None or t.model is None else replace_version(t, version)
        t = msgspec.structs.replace(
            t, device=self.name, boot="b", seq=self.seq, sent=now, window_start=now - 1,
            window_end=now, model=model,
        )  # fmt: skip
        self.seq += 1
        stored = self.service.store.telemetry.add_batch(
            [storage.NewWindow(FLEET, t, wire.encode(t))]
        )
        for w in stored.windows:
            self.service.engine.evaluate_device(w, {x.id: x for x in stored.windows})

    def latest(self, reference: str, kind: str = "dataset") -> list[dict[str, Any]]:
        rows = self.service.store.drift.rows(device=self.name)
        return [r for r in rows if r["reference"] == reference and r["kind"] == kind]

    def alerts(self) -> list[dict[str, Any]]:
        return self.service.store.alerts.active(device=self.name)


def replace_version(t: wire.Telemetry, version: str) -> wire.ModelRef:
    assert t.model is not None
    return msgspec.structs.replace(t.model, version=version)


SMALL = ReferencePolicy(rows=1200, min_windows=4)


def test_a_device_reference_gives_a_second_verdict_and_the_policy_says_which_alerts(
    make_service: Callable[..., Service], windows: dict[str, list[wire.Telemetry]]
) -> None:
    """A device that sees only dark digits differs from the training data in every window; with
    ``alert_on = ["deploy"]`` that is stored and shown, not alerted. Its first four windows are
    its reference; against it the same data is clean, and brightened images alert."""
    s = make_service(ModelPolicy(alert_on=("deploy",), reference=SMALL))
    dev = Device(s, "dark-1")
    for t in windows["dark"][:4]:
        dev.send(t)
    (ref,) = s.store.references.all(device="dark-1")
    assert ref["state"] == "ready" and ref["rows"] == 1200
    assert dev.latest("training")[0]["drifted"] is True  # differs from the training data
    for t in windows["dark"][4:8]:
        dev.send(t)
    since = dev.latest("deploy")
    assert since and since[0]["drifted"] is False
    assert dev.alerts() == []  # training verdicts do not alert under this policy
    for t in windows["bright"][:3]:
        dev.send(t)
    active = dev.alerts()
    assert active and {a["reference"] for a in active} == {"deploy"}
    assert ("input", "image:mean[c0]") in {(a["kind"], a["feature"]) for a in active}
    mean = next(a for a in active if a["feature"] == "image:mean[c0]")
    assert "threshold" in mean["detail"]["reason"] and "floor" in mean["detail"]["reason"]


def test_by_default_both_verdicts_alert_and_unhealthy_spans_stay_out_of_the_reference(
    make_service: Callable[..., Service], windows: dict[str, list[wire.Telemetry]]
) -> None:
    s = make_service(ModelPolicy(reference=SMALL))
    dev = Device(s, "calm-1")
    for t in windows["calm"][:2]:
        dev.send(t)
    for t in windows["bright"][:3]:  # drifted from the training data: not a healthy span
        dev.send(t)
    active = dev.alerts()
    assert active and {a["reference"] for a in active} == {"training"}
    (ref,) = s.store.references.all(device="calm-1")
    assert ref["state"] == "collecting" and ref["rows"] == 600
    for t in windows["calm"][2:8]:
        dev.send(t)
    (ref,) = s.store.references.all(device="calm-1")
    assert ref["state"] == "ready"
    assert dev.alerts() == []  # cleared after two clean verdicts
    assert dev.latest("deploy")[0]["drifted"] is False


def test_alerts_close_with_a_reason_when_the_device_leaves_their_version(
    make_service: Callable[..., Service], windows: dict[str, list[wire.Telemetry]]
) -> None:
    s = make_service(ModelPolicy(reference=SMALL))
    dev = Device(s, "moving-1")
    for t in windows["bright"][:3]:
        dev.send(t)
    raised = dev.alerts()
    assert raised and {a["model_version"] for a in raised} == {"1.0.0"}
    dev.send(windows["calm"][0], version="1.1.0")  # not registered: stored, not evaluated
    assert dev.alerts() == []
    closed = [a for a in s.store.alerts.all() if a["device"] == "moving-1"]
    assert all(a["cleared"] is not None for a in closed)
    assert {a["cleared_reason"] for a in closed} == {
        "the device no longer runs the model it was raised against (now digits 1.1.0)"
    }
    # back on 1.0.0 (a rollback) the alert states start afresh: one drifted span is not enough
    dev.send(windows["bright"][3])
    assert dev.alerts() == []


def test_the_report_says_why_each_verdict_was_reached(
    make_service: Callable[..., Service], windows: dict[str, list[wire.Telemetry]]
) -> None:
    s = make_service(ModelPolicy(reference=SMALL))
    dev = Device(s, "why-1")
    for t in [*windows["calm"][:4], *windows["bright"][:2]]:
        dev.send(t)
    rows = s.store.drift.rows(device="why-1")
    inputs = [r for r in rows if r["kind"] == "input"]
    assert {r["reference"] for r in inputs} == {"training", "deploy"}
    for r in inputs:
        assert r["checks"] and r["reason"]
        tests = {c["test"] for c in r["checks"]}
        assert {"js", "psi", "mean", "missing"} <= tests
        for c in r["checks"]:
            assert c["over"] == (c["value"] >= max(c["threshold"], c["floor"]))
    text = drift_report({"drift": rows, "blind_spots": {}, "references": s.store.references.all()})
    print(text)
    assert "why:" in text and "since deploy" in text and "training data" in text
    assert "floor" in text and "threshold" in text and "DRIFT" in text
    concept = [r for r in rows if r["kind"] == "concept"]
    for r in concept:  # the bundle's test set is a sample too
        assert "test rows" in r["reason"] or r["reason"].startswith("no verdict")


def test_a_database_made_before_the_new_columns_gets_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = storage.connect(url)
    with engine.begin() as conn:  # as a database of the first release: without the columns
        for table, columns in schema.COLUMNS_ADDED.items():
            for column in columns:
                conn.execute(sa.text(f'ALTER TABLE {table} DROP COLUMN "{column}"'))
    engine.dispose()
    engine = storage.connect(url)
    inspector = sa.inspect(engine)
    for table, columns in schema.COLUMNS_ADDED.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        assert set(columns) <= have
    engine.dispose()


def test_reference_policy_from_the_config_file(tmp_path: Path) -> None:
    from edgeops.core.errors import UsageError
    from edgeops.service.config import load_service_config

    path = tmp_path / "serve.toml"
    path.write_text(
        'alert_on = ["training"]\n'
        "[models.digits]\n"
        'alert_on = ["deploy"]\n'
        "reference = { rows = 400, min_windows = 3 }\n"
    )
    cfg = load_service_config(path)
    assert cfg.policy("digits").alert_on == ("deploy",)
    assert cfg.policy("digits").reference == ReferencePolicy(rows=400, min_windows=3)
    assert cfg.policy("other").alert_on == ("training",)
    for bad in ('alert_on = ["nothing"]\n', "reference = { rows = 0 }\n",
                "reference = { size = 3 }\n"):  # fmt: skip
        path.write_text(bad)
        with pytest.raises(UsageError):
            load_service_config(path)
    assert replace(ModelPolicy(), alert_on=("training", "deploy")).alert_on


def test_an_unreadable_stored_reference_is_collected_again(
    make_service: Callable[..., Service], windows: dict[str, list[wire.Telemetry]]
) -> None:
    s = make_service(ModelPolicy(reference=SMALL))
    dev = Device(s, "hostile-1")
    for t in windows["calm"][:4]:
        dev.send(t)
    assert s.store.references.all(device="hostile-1")[0]["state"] == "ready"
    for bad in ({"profile": {"version": 99}}, {"design_effects": {"x": -1}}, [1, 2]):
        with s.store.begin() as conn:
            conn.execute(sa.update(schema.device_references).values(data=bad))
        s.engine._references.clear()  # as a process that has not read it yet
        dev.send(windows["calm"][4])
        (ref,) = s.store.references.all(device="hostile-1")
        assert ref["state"] == "collecting" and ref["rows"] == 300
        for t in windows["calm"][5:8]:
            dev.send(t)
        assert s.store.references.all(device="hostile-1")[0]["state"] == "ready"


def test_a_latency_budget_is_a_verdict_stored_and_alerted_like_the_others(
    windows: dict[str, list[wire.Telemetry]], make_service: Callable[..., Service]
) -> None:
    """p95 of the span's merged histograms against the budget: over a budget far below the
    real latency, an alert after ``k_raise`` windows; under a generous one, clean rows."""
    tight = make_service(ModelPolicy(latency_budget_ms=1e-6))
    d = Device(tight, "slow")
    for t in windows["calm"][:3]:
        d.send(t)
    rows = d.latest("", "latency")
    assert rows and all(r["feature"] == "p95" and r["drifted"] for r in rows)
    assert all(r["value"] > 1e-6 and "against a budget of 1e-06 ms" in r["reason"] for r in rows)
    (alert,) = [a for a in d.alerts() if a["kind"] == "latency"]
    assert alert["detail"]["budget_ms"] == 1e-6 and alert["detail"]["p95_ms"] > 1e-6
    assert alert["reference"] == ""
    tight.engine_db.dispose()

    generous = make_service(ModelPolicy(latency_budget_ms=1e6))
    d = Device(generous, "fast")
    for t in windows["calm"][:3]:
        d.send(t)
    rows = d.latest("", "latency")
    assert rows and not any(r["drifted"] for r in rows)
    assert not [a for a in d.alerts() if a["kind"] == "latency"]
