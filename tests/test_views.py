"""The dashboard's data endpoints (/v1/views/...) on a service fed real windows by a real agent:
percentiles from merged histograms, drift series thinned per time bucket, windows stored before
the latency column, empty devices, and the refusals."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from litestar.testing import TestClient

from device_agent.agent import Agent
from edgeops.core import topics, wire
from edgeops.core.latency import merge_wire
from edgeops.service.api import make_app
from edgeops.service.config import ServiceConfig
from edgeops.service.server import Service
from edgeops.service.storage import schema
from edgeops.service.views import MAX_POINTS
from tests.test_agent import FLEET, make_config


@pytest.fixture
def fed(
    digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path: Path
) -> Iterator[tuple[Service, TestClient, str, list[wire.Telemetry]]]:
    from sklearn.datasets import load_digits

    cfg = ServiceConfig(
        broker="mqtt://127.0.0.1:1",
        db=f"sqlite:///{tmp_path / 'service.db'}",
        http_port=0,
        group=f"g{uuid.uuid4().hex[:6]}",
        bundles=(digits_bundles[0],),
        trusted_keys=(signing_keys[1],),
        fleet_interval=3600.0,
    )
    service = Service(cfg, http=False)
    service.register_bundle(digits_bundles[0])
    images = load_digits().images.astype(np.float32)
    rng = np.random.default_rng(0)
    device = f"view-{uuid.uuid4().hex[:6]}"
    sent: list[wire.Telemetry] = []
    agent_cfg = make_config(
        tmp_path / "a", 1, digits_bundles[0], signing_keys, device=device, window=3600
    )
    with Agent(agent_cfg, mqtt=False, http=False) as agent:
        for shift in (0.0, 0.0, 0.0, 5.0, 5.0):
            x = images[rng.integers(0, len(images), 600)]
            agent.predict(np.clip(x + shift, 0, 16))
            t = agent.flush_window()
            assert t is not None
            sent.append(t)
            service.handle(topics.telemetry(FLEET, device), wire.encode(t))
    token = service.tokens.create("viewer", "read")
    client = TestClient(make_app(service))
    client.headers["Authorization"] = f"Bearer {token}"
    with client:
        yield service, client, device, sent
    service.engine_db.dispose()


def test_the_device_view_merges_histograms_and_draws_checks(fed) -> None:  # type: ignore[no-untyped-def]
    service, client, device, sent = fed
    r = client.get(f"/v1/views/devices/{device}", params={"hours": 1})
    assert r.status_code == 200, r.text
    v = r.json()
    a = v["activity"]
    assert len(a["t"]) == len(a["p50_ms"]) == MAX_POINTS
    assert sum(a["predictions_per_s"]) * v["bucket_s"] == pytest.approx(600 * len(sent))
    filled = [i for i, p in enumerate(a["p95_ms"]) if p is not None]
    assert len(filled) == 1  # every window arrived within one bucket
    merged = merge_wire([t.latency for t in sent])
    assert a["p50_ms"][filled[0]] == pytest.approx(merged.quantile(0.5))
    assert a["p95_ms"][filled[0]] == pytest.approx(merged.quantile(0.95))
    series = {(s["feature"], s["kind"], s["reference"]): s for s in v["drift"]}
    assert series and all(len(s["t"]) == 1 for s in series.values())  # the newest per bucket
    stored = service.store.drift.rows(device=device, latest=True)
    checked = 0
    for row in stored:
        if row["scope"] != "device" or not row["checks"]:
            continue
        checked += 1
        s = series[(row["feature"], row["kind"], row["reference"])]
        assert s["drifted"] == [row["drifted"]]
        deciding = {c["test"]: c for c in row["checks"] if c["decides"]}
        assert {t["test"] for t in s["tests"]} == set(deciding)
        for t in s["tests"]:
            c = deciding[t["test"]]
            assert t["value"] == [pytest.approx(c["value"])]
            assert t["threshold"] == [pytest.approx(c["threshold"])]
            assert t["floor"] == [pytest.approx(c["floor"])]
    assert checked >= 3  # inputs, outputs and the dataset at least
    assert any(s["drifted"] == [True] for s in series.values())  # the last windows were shifted
    assert [m["model_version"] for m in v["models"]] == ["1.0.0"]
    assert v["models"][0]["windows"] == len(sent)


def test_windows_stored_before_the_latency_column_read_from_their_payload(fed) -> None:  # type: ignore[no-untyped-def]
    service, client, device, _ = fed
    before = client.get(f"/v1/views/devices/{device}").json()["activity"]
    with service.store.begin() as conn:
        conn.execute(sa.update(schema.windows).values(latency=None))
    after = client.get(f"/v1/views/devices/{device}").json()["activity"]
    assert after["p95_ms"] == before["p95_ms"] and after["p50_ms"] == before["p50_ms"]
    assert any(p is not None for p in after["p95_ms"])


def test_views_of_a_quiet_device_and_the_refusals(fed) -> None:  # type: ignore[no-untyped-def]
    service, client, device, _ = fed
    status = wire.Status(device="quiet", boot="b", seq=1, sent=time.time(), online=False)
    service.handle(topics.status(FLEET, "quiet"), wire.encode(status))
    v = client.get("/v1/views/devices/quiet").json()
    assert v["drift"] == [] and v["models"] == [] and v["alerts"] == []
    assert all(p is None for p in v["activity"]["p95_ms"])
    assert sum(v["activity"]["predictions_per_s"]) == 0
    o = client.get("/v1/views/fleet").json()
    assert {d["device"] for d in o["devices"]} == {device, "quiet"}
    assert (o["online"], o["offline"]) == (0, 2)  # windows alone do not say a device is online
    assert {(x["model_name"], x["devices"]) for x in o["versions"]} == {("digits", 1), (None, 1)}
    m = client.get("/v1/views/models/digits").json()
    assert [x["version"] for x in m["versions"]] == ["1.0.0"]
    assert m["versions"][0]["running_on"] == [f"{FLEET}/{device}"]
    for path, code in (
        ("/v1/views/devices/nobody", 404),
        ("/v1/views/models/nothing", 404),
        (f"/v1/views/devices/{device}?hours=0", 400),
        (f"/v1/views/devices/{device}?hours=1e9", 400),
        (f"/v1/views/devices/{device}?hours=nan", 400),
        (f"/v1/views/devices/{device}?fleet=other", 404),
    ):
        r = client.get(path)
        assert r.status_code == code, (path, r.text)
        assert set(r.json()) == {"error"}
    del client.headers["Authorization"]
    assert client.get("/v1/views/fleet").status_code == 401
    page = client.get("/ui/")
    assert (
        page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    )
    assert client.get("/ui/../api.py").status_code == 404
    assert client.get("/ui/secret.txt").status_code == 404
    assert client.get("/").status_code == 200  # redirected to /ui/


def test_merged_latencies_match_merge_wire_per_slot() -> None:
    """The dashboard's merge of many windows at once gives merge_wire's histogram per slot:
    same counts, same percentiles; a slot of another accuracy's minority is left out as
    merge_wire leaves it out; a slot of zeros only or of empty windows works."""
    import msgspec

    from edgeops.core.latency import LogHistogram
    from edgeops.service.views import _Latency, merged_latencies

    rng = np.random.default_rng(3)

    def hist(values: np.ndarray, accuracy: float = 0.01) -> wire.LatencyHistogram:
        h = LogHistogram(accuracy)
        if len(values):
            h.add(values)
        return h.to_wire()

    slots: dict[int, list[wire.LatencyHistogram]] = {
        0: [hist(rng.lognormal(0, 1, n)) for n in (5, 50, 500)],
        1: [hist(rng.lognormal(2, 0.5, 40)), hist(rng.lognormal(2, 0.5, 10), accuracy=0.02)],
        2: [hist(np.zeros(7))],  # every value at or below min_value
        3: [hist(np.array([]))],  # a window that served nothing
    }
    slotted = [(i, _Latency(**msgspec.structs.asdict(h))) for i, hs in slots.items() for h in hs]
    got = merged_latencies(slotted)
    assert set(got) == {0, 1, 2}
    for i in (0, 1, 2):
        want = merge_wire(slots[i])
        assert got[i].to_wire() == want.to_wire()
        for q in (0.0, 0.5, 0.95, 1.0):
            assert got[i].quantile(q) == want.quantile(q)


def test_the_model_view_reads_fidelity_from_the_conversion_report(fed) -> None:  # type: ignore[no-untyped-def]
    """A bundle whose conversion measured fidelity (labelled validation data) shows it: the
    report's own dictionary (converters.fidelity.Fidelity.to_dict) as the manifest keeps it."""
    from converters.config import Task
    from converters.fidelity import Fidelity, OutputError

    service, client, _, _ = fed
    fid = Fidelity(
        task=Task.CLASSIFICATION,
        samples=300,
        labelled=True,
        outputs=(OutputError("probs", 0.02, 0.004, 31.5, 0.999),),
        agreement=0.99,
        source_accuracy=0.97,
        converted_accuracy=0.965,
    ).to_dict()
    with service.store.begin() as conn:
        (manifest,) = conn.execute(sa.select(schema.models.c.manifest)).scalars()
        conn.execute(sa.update(schema.models).values(manifest={**manifest, "fidelity": fid}))
    (version,) = client.get("/v1/views/models/digits").json()["versions"]
    got = version["fidelity"]
    assert got["agreement"] == 0.99 and got["samples"] == 300
    assert got["accuracy_drop_points"] == pytest.approx(0.5)
    assert got["min_snr_db"] == pytest.approx(31.5)


def test_every_page_is_served_whole_in_the_shared_frame(fed) -> None:  # type: ignore[no-untyped-def]
    """Each page is its body set in one frame: a whole document with the sign-in form, and every
    script and style it names is served too. The frame and the bodies are not files of /ui/."""
    import re

    from edgeops.service.dashboard import PAGES

    _, client, _, _ = fed
    del client.headers["Authorization"]
    for name, spec in PAGES.items():
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.headers["cache-control"] == "no-cache"
        text = r.text
        assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
        assert f"<title>{spec.title} · edgeops</title>" in text
        assert text.count('id="login-form"') == 1 and text.count("<main") == 1
        assert "$" not in text  # every slot of the frame filled
        assets = re.findall(r'(?:src|href)="/ui/([^"]+)"', text)
        assert assets[-2:] == ["app.js", spec.script]
        for asset in assets:
            assert client.get(f"/ui/{asset}").status_code == 200, (name, asset)
    for hidden in ("frame.html", "pages/index.html", "pages"):
        assert client.get(f"/ui/{hidden}").status_code == 404
