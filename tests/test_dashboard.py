"""The web dashboard in a real browser: Debian's chromium, headless, driven by Playwright, against
a real service (REST API on a free port) fed by simulated agents on a real mosquitto, two of the
four devices with brightened images (covariate drift), and a deployment baking on its canary.

Each page is loaded as a person would (a token typed into the login form, or given once in the
address's fragment); the tables must hold the expected devices and alerts, the charts data
(uPlot's own data arrays) and pixels (the canvas has pixels in its series' colours, not only
axes and grid); screenshots are kept under the
repository's ``build/dashboard-screenshots/`` (not committed), replaced by each run."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from edgeops.core.bundle import Bundle
from edgeops.service.config import DEFAULT_THRESHOLDS, ModelPolicy, ServiceConfig
from edgeops.service.rollout_policy import RolloutPolicy
from edgeops.service.server import Service
from edgeops.simulate import Fleet, FleetConfig
from edgeops.simulate.spec import parse_drift
from edgeops.testing import Mosquitto

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "dashboard-screenshots"
"""Where the screenshots are kept after the run (build/ is not committed)."""
DRIFTED = ("sim-000", "sim-001")
CALM = ("sim-002", "sim-003")


@dataclass
class Live:
    service: Service
    fleet: Fleet
    name: str
    url: str
    read: str
    deploy: str
    deployment: str
    shots: Path
    bundles: tuple[Path, Path]


def _until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.25)
    raise AssertionError(f"no {what} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def live(
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    command_keys: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("dashboard")
    name = f"dash-{uuid.uuid4().hex[:6]}"
    cfg = ServiceConfig(
        broker=f"mqtt://127.0.0.1:{broker.port}",
        db=f"sqlite:///{tmp / 'service.db'}",
        group=f"g{uuid.uuid4().hex[:6]}",
        http_port=0,
        bundles=digits_bundles,
        trusted_keys=(signing_keys[1],),
        command_key=command_keys[0],
        fleet=name,
        fleet_interval=3.0,
        rollout_interval=0.2,
        default=ModelPolicy(drift=replace(DEFAULT_THRESHOLDS, min_samples=200)),
    )
    with Service(cfg) as service:
        assert service.connected.wait(15)
        read = service.tokens.create("dash-read", "read")
        deploy = service.tokens.create("dash-deploy", "deploy")
        fleet_cfg = FleetConfig(
            devices=4,
            bundle=digits_bundles[0],
            broker=f"mqtt://127.0.0.1:{broker.port}",
            fleet=name,
            rate=60.0,
            feedback=0.2,
            window_seconds=1.0,
            trusted_keys=(signing_keys[1],),
            command_keys=(command_keys[1],),
            service_url=service.public_url(),
            drift=(parse_drift("kind=covariate,amount=2,devices=0-1"),),
            health_predictions=20,
            health_seconds=2.0,
            workdir=tmp / "fleet",
        )
        with Fleet(fleet_cfg) as fleet:

            def alerted() -> set[str]:
                return {a["device"] for a in service.store.alerts.active(name)}

            _until(lambda: set(DRIFTED) <= alerted(), 120, "alerts on both drifted devices")
            # A deployment to one calm device that bakes for an hour once it is updated: it stays
            # running while the pages are looked at (and is aborted from one of them).
            policy = RolloutPolicy(
                stages=(100,),
                bake=3600.0,
                timeout=120.0,
                min_devices=1,
                health_predictions=20,
                health_seconds=2.0,
            )
            dep = service.deploy("digits-1.1.0", name, devices=[CALM[1]], policy=policy)

            def committed() -> bool:
                status = service.rollouts.status(dep["id"])
                return any(d["state"] == "committed" for d in status["device_states"])

            _until(committed, 90, "the canary's commit")
            shots = SCREENSHOTS
            shutil.rmtree(shots, ignore_errors=True)
            shots.mkdir(parents=True)
            yield Live(
                service,
                fleet,
                name,
                service.http.address,
                read,
                deploy,
                dep["id"],
                shots,
                digits_bundles,
            )
            print(f"\ndashboard screenshots: {shots}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        # launch() starts the browser on a new, empty profile (user data dir) of its own
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, live: Live) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    problems: list[str] = []
    requests: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.on("request", lambda r: requests.append(r.url))
    pg.problems = problems  # what the page logged as errors (CSP violations among them)
    pg.requests = requests
    yield pg
    context.close()


def _rows(page: Any, table: str) -> list[list[str]]:
    result: list[list[str]] = page.eval_on_selector_all(
        f"#{table} tbody tr:not(.empty)",
        "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))",
    )
    return result


def _painted(page: Any, key: str, series: int) -> int:
    """Pixels of the chart's canvas in the colour of its ``series`` (1: the first after x):
    the data drawn, not the axes or the grid."""
    n: int = page.evaluate(
        """([key, i]) => {
            const u = window.edgeopsCharts[key];
            const probe = document.createElement('canvas').getContext('2d');
            probe.fillStyle = u.series[i].stroke();
            probe.fillRect(0, 0, 1, 1);
            const [r, g, b] = probe.getImageData(0, 0, 1, 1).data;
            const c = u.ctx.canvas;
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let j = 0; j < px.length; j += 4) {
                if (px[j + 3] > 128 && Math.abs(px[j] - r) + Math.abs(px[j + 1] - g)
                    + Math.abs(px[j + 2] - b) < 60) n++;
            }
            return n;
        }""",
        [key, series],
    )
    return n


def _series(page: Any, key: str) -> list[list[float | None]]:
    data: list[list[float | None]] = page.evaluate(
        "key => window.edgeopsCharts[key].data.map(s => Array.from(s))", key
    )
    return data


def _values(xs: list[float | None]) -> list[float]:
    return [x for x in xs if x is not None]


def test_the_login_form_takes_a_token_and_the_overview_shows_the_fleet(
    page: Any, live: Live
) -> None:
    page.goto(f"{live.url}/ui/?fleet={live.name}")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", "eo_" + "x" * 43)  # well-formed, unknown
    page.click("#login button")
    page.wait_for_selector("#login-error:text('unknown or revoked token')")
    page.fill("#token", live.read)
    page.click("#login button")
    page.wait_for_selector("#devices tbody tr td a")
    assert page.text_content("#whoami") == "dash-read (read)"
    devices = {r[1]: r for r in _rows(page, "devices")}
    assert set(devices) == {*DRIFTED, *CALM}
    assert all(r[2] == "online" for r in devices.values())
    for d in DRIFTED:
        assert int(devices[d][6]) >= 1
    alerts = _rows(page, "alerts")
    assert {r[2] for r in alerts} >= set(DRIFTED)
    assert not {r[2] for r in alerts} & set(CALM)
    assert all(r[4] in ("input", "output", "dataset", "concept", "latency") for r in alerts)
    versions = {(r[1], r[2]): int(r[3]) for r in _rows(page, "versions")}
    assert versions[("digits", "1.0.0")] == 3 and versions[("digits", "1.1.0")] == 1
    assert [r[0] for r in _rows(page, "deployments")] == [live.deployment]
    assert page.text_content("#n-devices") == "4"
    page.screenshot(path=str(live.shots / "fleet.png"), full_page=True)
    # The token stays in this tab's storage, not in a cookie the browser would send by itself.
    assert page.context.cookies() == []
    refused = "the server responded with a status of 401"  # the unknown token, before sign-in
    assert [p for p in page.problems if refused not in p] == [], page.problems
    assert all(u.startswith(live.url) for u in page.requests), page.requests


def test_the_device_page_charts_latency_and_drift_against_threshold_and_floor(
    page: Any, live: Live
) -> None:
    device = DRIFTED[0]
    page.goto(
        f"{live.url}/ui/device.html?fleet={live.name}&device={device}&every=1&hours=0.25#token={live.read}"
    )
    page.wait_for_function(
        "() => window.edgeopsCharts['activity:latency'] && document.querySelector('.drift-chart')"
    )
    assert "token" not in page.url  # taken out of the address once kept
    latency = _series(page, "activity:latency")
    times, p50, p95 = latency
    assert len(times) == len(p50) == len(p95) > 0
    pairs = [(a, b) for a, b in zip(p50, p95, strict=True) if a is not None and b is not None]
    assert pairs and all(0 < a <= b for a, b in pairs)
    traffic = _series(page, "activity:traffic")
    assert max(_values(traffic[1])) > 0  # predictions/s
    page.screenshot(path=str(live.shots / f"device-{device}.png"), full_page=True)
    assert _painted(page, "activity:latency", 2) > 0  # p95, drawn over p50 where they meet
    assert _painted(page, "activity:traffic", 1) > 0
    keys = page.evaluate("Object.keys(window.edgeopsCharts).filter(k => k.startsWith('drift:'))")
    assert keys
    seen_over = False
    for key in keys:
        t, value, threshold, floor = _series(page, key)
        assert len(t) == len(value) == len(threshold) == len(floor) > 0
        assert _values(value)
        assert _painted(page, key, 1) > 0
        if _values(threshold):
            seen_over |= any(
                v is not None and h is not None and v >= max(h, f or 0.0)
                for v, h, f in zip(value, threshold, floor, strict=True)
            )
    assert seen_over  # brightened images: some check went over its limit
    alerts = _rows(page, "alerts")
    assert alerts and any(r[1] == "active" for r in alerts)
    models = _rows(page, "models")
    assert [r[:2] for r in models] == [["digits", "1.0.0"]]
    page.screenshot(path=str(live.shots / f"device-{device}.png"), full_page=True)
    assert not page.problems, page.problems
    assert all(u.startswith(live.url) for u in page.requests), page.requests


def test_pages_update_without_reloading(page: Any, live: Live) -> None:
    page.goto(
        f"{live.url}/ui/device.html?fleet={live.name}&device={CALM[0]}&every=1&hours=0.25#token={live.read}"
    )
    page.wait_for_function("() => window.edgeopsCharts['activity:traffic']")
    page.evaluate("window.stillThisPage = true")
    before = int(page.evaluate("document.body.dataset.updates"))
    page.wait_for_function(f"() => Number(document.body.dataset.updates) >= {before + 2}")
    assert page.evaluate("window.stillThisPage") is True
    assert _values(_series(page, "activity:traffic")[1])


def test_the_model_page_shows_versions_lineage_fidelity_and_where_each_runs(
    page: Any, live: Live
) -> None:
    page.goto(f"{live.url}/ui/model.html?name=digits#token={live.read}")
    page.wait_for_selector("#versions tbody tr td")
    rows = {r[0]: r for r in _rows(page, "versions")}
    assert set(rows) == {"1.0.0", "1.1.0"}
    assert rows["1.0.0"][4].startswith("tflite") and rows["1.1.0"][4].startswith("onnx")
    for version, bundle in zip(("1.0.0", "1.1.0"), live.bundles, strict=True):
        with Bundle.open(bundle) as b:
            m = b.manifest
        assert rows[version][3] == m["training"]["run"]
        assert rows[version][2] == (m["parent"] or "-")
        assert float(rows[version][5]) == pytest.approx(m["evaluation"]["test"]["accuracy"], 1e-2)
        fid = m["fidelity"]  # measured only with labelled validation data
        if fid is None:
            assert rows[version][6] == "-"
        else:
            assert float(rows[version][6]) == pytest.approx(fid["agreement"], 1e-2)
        assert rows[version][9] == m["conversion"]["status"]
    running = page.text_content("#running")
    assert all(f"{live.name}/{d}" in running for d in (*DRIFTED, CALM[0]))
    page.screenshot(path=str(live.shots / "model.png"), full_page=True)
    assert not page.problems, page.problems


def test_the_deployment_page_shows_progress_and_aborts_for_the_deploy_role(
    browser: Any, page: Any, live: Live
) -> None:
    url = f"{live.url}/ui/deployment.html?id={live.deployment}&every=1"
    page.goto(f"{url}#token={live.read}")
    page.wait_for_selector("#devices tbody tr td a")
    assert [r[0] for r in _rows(page, "devices")] == [CALM[1]]
    assert _rows(page, "devices")[0][2] == "committed"
    assert page.text_content("#state") == "running"
    assert page.text_content("#progress-text").startswith("1 of 1 devices decided: 1 committed")
    assert page.evaluate("document.getElementById('bar').style.width") == "100%"
    assert page.is_hidden("#abort")  # the read role may not abort
    assert any("stage 1" in r[2] for r in _rows(page, "history"))
    page.screenshot(path=str(live.shots / "deployment.png"), full_page=True)

    deployer = browser.new_page()
    deployer.goto(f"{url}#token={live.deploy}")
    deployer.wait_for_selector("#abort:not([hidden])")
    deployer.on("dialog", lambda d: d.accept())
    deployer.click("#abort")
    deployer.wait_for_function(
        "() => ['aborting', 'aborted'].includes(document.querySelector('#state').textContent)"
    )
    page.wait_for_function(  # the read-only page follows without a reload
        "() => ['aborting', 'aborted'].includes(document.querySelector('#state').textContent)"
    )
    deployer.screenshot(path=str(live.shots / "deployment-aborted.png"), full_page=True)
    deployer.close()
    assert live.service.rollouts.status(live.deployment)["state"] in ("aborting", "aborted")
    assert not page.problems, page.problems


def test_the_metrics_count_the_alerts_the_pages_show(live: Live) -> None:
    from tests.test_prometheus import scrape, value

    _, samples = scrape(f"{live.url}/metrics", live.read)
    active = live.service.store.alerts.active(live.name)
    for kind in ("input", "output", "dataset"):
        expected = sum(a["kind"] == kind for a in active)
        assert expected >= 2  # both drifted devices
        assert value(samples, "edgeops_alerts_active", fleet=live.name, kind=kind) == expected
    assert value(samples, "edgeops_devices", fleet=live.name, presence="online") == 4
