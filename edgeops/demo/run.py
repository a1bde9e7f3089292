"""``make demo``: the whole loop on one machine, on embedded defaults, with nothing to download.

1. train on scikit-learn's digits (the six pipeline steps), convert to int8 TFLite behind
   fidelity gates (fp32 TFLite and int8 ONNX alongside, to compare), sign and verify bundle 1.0.0;
2. start a broker (unless ``--broker`` is given: a mosquitto on a free port running the shipped
   fleet configuration, ``deploy/mosquitto.conf``: TLS with a throwaway CA, an account per device
   and one for the service, the ACL), the central service (signing its commands with a
   throwaway command key) and a simulated fleet of real agents replaying the held-out digits
   (trusting that key, downloading only from the service);
3. wait for each device's own reference (its first healthy windows on 1.0.0), brighten the
   images on part of the fleet (covariate drift) and show the alerts as they come;
4. retrain on recent data (the originals plus their brightened copies) into bundle 1.1.0;
5. roll 1.1.0 out in stages (10 %, 50 %, 100 %) with health gates; the alerts against 1.0.0
   close as devices leave it;
6. wait for each device's reference on 1.1.0 and a few verdicts against it, then print what was
   detected when, what was deployed where, the verdicts on 1.1.0, and latency per device.

The model's policy alerts on "changed since deploy" (``alert_on = ["deploy"]``): 1.1.0 is
trained on both populations, so every device, seeing one, differs from its training data (that
verdict is still computed, stored and shown); what a team can act on is a device whose data
changed since it started the version.

Exits 0 only if every step did what it says: the run was blessed, the int8 model passed its
gates, the bundles verified, every drifted device raised an alert, the rollout completed with
every device on 1.1.0, and no device alerts against 1.1.0 on data that has not changed since
its deploy.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeops.core import logstream
from edgeops.core.errors import EdgeOpsError
from edgeops.demo.models import (
    DemoFailed,
    convert_and_package,
    make_keys,
    recent_data,
    step,
    train_run,
)
from edgeops.service.rollout_policy import RolloutPolicy

OUT = Path("demo-output")
FLEET = "demo"
BRIGHTNESS = 1.0
"""Covariate drift: pixels brightened by this many standard deviations (saturating at 16)."""
REFERENCE_ROWS = 320
"""A device's reference on a version: its first 320 healthy rows (four 2-second windows)."""
ROLLOUT = RolloutPolicy(
    stages=(10, 50, 100),
    bake=3.0,
    timeout=60.0,
    min_devices=2,
    health_predictions=20,
    health_seconds=10.0,
)
"""The rollout of 1.1.0; its health window is also the devices' floor."""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeops.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument(
        "--broker",
        default=None,
        help="mqtt[s]://HOST:PORT of a broker of yours (its account from EDGEOPS_MQTT_*; "
        "default: start mosquitto with the shipped TLS, accounts and ACL)",
    )
    p.add_argument("--devices", type=int, default=12)
    p.add_argument("--drifted", type=int, default=4, help="devices whose input drifts")
    p.add_argument("--rate", type=float, default=40.0, help="predictions/s per device")
    p.add_argument(
        "--keep",
        action="store_true",
        help="at the end, keep the service and the fleet running (the dashboard live) until "
        "Enter or Ctrl-C",
    )
    args = p.parse_args(argv)
    # The demo prints its own progress and alert lines; libraries' logs only when they fail.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    for name in ("", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.perf_counter()
    try:
        # TensorFlow's and LiteRT's own lines (absl, oneDNN, XNNPACK) go through logging too.
        with logstream.route_native_stderr():
            run_demo(args.out, args.broker, args.devices, args.drifted, args.rate, keep=args.keep)
    except EdgeOpsError as e:
        print(f"\ndemo FAILED: {e}")
        return 1
    except KeyboardInterrupt:  # Ctrl-C while kept running: the demo itself had passed
        print()
    print(f"\ndemo OK in {time.perf_counter() - t0:.0f} s: every step did what it says")
    return 0


def _keep(dashboard: str) -> None:
    """Wait for Enter (or Ctrl-C, or the end of input) with everything still running."""
    print(
        f"\nthe service and the fleet keep running: see them at {dashboard}\n"
        "press Enter (or Ctrl-C) to stop",
        flush=True,
    )
    with contextlib.suppress(EOFError):
        input()


def run_demo(
    out: Path, broker: str | None, devices: int, drifted: int, rate: float, *, keep: bool = False
) -> None:
    """Run the loop; print the summary at its end (and with ``keep``, wait for Enter there)."""
    from edgeops.core.broker import BrokerSettings
    from edgeops.simulate import FleetConfig
    from edgeops.testing import SERVICE_ACCOUNT, FleetBroker
    from edgeops.trainer import samples

    if not 0 < drifted < devices:
        raise DemoFailed("--drifted must be between 1 and --devices - 1")
    step("train: the pipeline on scikit-learn's bundled digits (8x8 images, 10 classes)")
    data = samples.digits_npz(out / "digits.npz")
    run = train_run(data, out / "run")
    keys = make_keys(out)
    step("convert and package 1.0.0: int8 TFLite, gated (drop <= 1 point, agreement >= 98 %)")
    v1 = convert_and_package(run, out, keys, "1.0.0", parent=None, compare=True)

    if broker is not None:
        mine = BrokerSettings().with_env().with_overrides(url=broker)
        return _loop(out, mine, mine, None, keys, v1, data, devices, drifted, rate, keep)
    step(
        "broker: mosquitto with the shipped fleet config (TLS, a throwaway CA, an account per "
        "device and one for the service, the ACL)"
    )
    ids = FleetConfig(devices=devices, bundle=v1, prefix="dev").device_ids()
    accounts = {d: secrets.token_urlsafe(12) for d in ids}
    credentials = out / "device-credentials"
    credentials.mkdir(parents=True, exist_ok=True)
    secret = credentials / "passwords"
    secret.touch(mode=0o600)
    secret.write_text("".join(f"{d}:{pw}\n" for d, pw in accounts.items()))
    shutil.rmtree(out / "broker", ignore_errors=True)  # a new CA and sessions each run
    try:
        fleet_broker = FleetBroker(out / "broker", accounts)
    except RuntimeError as e:
        raise DemoFailed(f"{e}; or give --broker mqtt://HOST:PORT") from None
    with fleet_broker as b:
        devices_side = BrokerSettings(b.url(), ca=b.ca.cert)
        service_side = b.settings(SERVICE_ACCOUNT)
        print(f"   broker {b.url()}: the service as {SERVICE_ACCOUNT}, devices as themselves")
        return _loop(
            out, service_side, devices_side, credentials, keys, v1, data, devices, drifted, rate,
            keep,
        )  # fmt: skip


def _loop(
    out: Path,
    broker: Any,
    device_broker: Any,
    credentials: Path | None,
    keys: Any,
    v1: Path,
    data: Path,
    devices: int,
    drifted: int,
    rate: float,
    keep: bool,
) -> None:
    from dataclasses import replace

    from edgeops.service.config import (
        DEFAULT_THRESHOLDS,
        ModelPolicy,
        ReferencePolicy,
        ServiceConfig,
    )
    from edgeops.service.server import Service
    from edgeops.simulate import Fleet, FleetConfig

    db_file = out / "service.db"
    for f in out.glob("service.db*"):
        f.unlink()
    cfg = ServiceConfig(
        broker=broker,
        db=f"sqlite:///{db_file}",
        http_port=0,
        bundles=(v1,),
        trusted_keys=(keys.public,),
        command_key=keys.command_private,
        fleet_interval=5.0,
        default=ModelPolicy(
            drift=replace(DEFAULT_THRESHOLDS, min_samples=300),
            alert_on=("deploy",),
            reference=ReferencePolicy(rows=REFERENCE_ROWS, min_windows=4),
        ),
    )
    step(f"service and fleet: {devices} simulated devices at {rate:.0f} predictions/s each")
    with Service(cfg) as service:
        service.wait_connected(15)
        if not service.connected.is_set():
            raise DemoFailed(service.broker_problem or f"the service cannot reach {broker.url}")
        print(f"   service: REST API on {service.http.address}, database {db_file}")
        reader = service.tokens.create("demo-dashboard", "read")
        dashboard = f"{service.http.address}/ui/#token={reader}"
        print(f"   dashboard: {dashboard} (a read token, kept by the browser tab)")
        print(
            f"   commands signed by key {service.commands.key_id}; devices trust it and "
            f"download bundles only from {service.public_url()}"
        )
        fleet_cfg = FleetConfig(
            devices=devices,
            bundle=v1,
            broker=device_broker,
            device_credentials=credentials,
            fleet=FLEET,
            rate=rate,
            feedback=0.2,
            window_seconds=2.0,
            trusted_keys=(keys.public,),
            command_keys=(keys.command_public,),
            service_url=service.public_url(),
            health_predictions=ROLLOUT.health_predictions or 1,
            health_seconds=ROLLOUT.health_seconds or 1.0,
            prefix="dev",
        )
        with Fleet(fleet_cfg) as fleet:
            print(f"   {fleet.online}/{devices} devices online in {fleet.startup_seconds:.1f} s")
            watch = Watch(service, fleet)
            print("   calm: every device replays held-out digits", flush=True)
            watch.until(
                lambda: watch.references_ready("1.0.0") == set(fleet.device_ids),
                90.0,
                "reference on 1.0.0 for every device",
            )
            print(f"   every device has its reference on 1.0.0 ({REFERENCE_ROWS} healthy rows)")
            watch.run(4.0, "calm")
            spec = f"kind=covariate,amount={BRIGHTNESS},devices=0-{drifted - 1}"
            hit = fleet.inject(spec)
            t_drift = time.time()
            step(f"drift: images brightened by {BRIGHTNESS} std on {', '.join(hit)}")
            watch.until(
                lambda: set(hit) <= watch.alerted_devices(),
                120.0,
                "alerts on every drifted device",
            )
            detected = {d: watch.first_alert.get(d) for d in fleet.device_ids}
            false_alarms = sorted(watch.alerted_devices() - set(hit))

            step("retrain on recent data (originals + brightened copies) into 1.1.0")
            recent = recent_data(data, out / "recent.npz", BRIGHTNESS)
            run2 = train_run(recent, out / "run-1.1.0", epochs=30)
            v2 = convert_and_package(run2, out, keys, "1.1.0", parent="1.0.0", compare=False)
            service.register_bundle(v2)

            step("rollout: 1.1.0 in stages of 10 %, 50 %, 100 %, with health gates")
            dep = service.deploy("digits-1.1.0", FLEET, policy=ROLLOUT, trigger="demo")
            status = watch.follow(dep["id"], 180.0)
            if status["state"] != "completed":
                raise DemoFailed(f"the rollout was aborted: {status['reason']}")
            versions = {s.device: s.model for s in fleet.stats()}
            stale = sorted(d for d, m in versions.items() if m != "digits 1.1.0")
            if stale:
                raise DemoFailed(f"devices not on 1.1.0 after the rollout: {', '.join(stale)}")
            step("after the rollout: each device's reference on 1.1.0, then verdicts against it")
            watch.until(
                lambda: watch.judged_since_deploy("1.1.0", 3) >= set(fleet.device_ids),
                120.0,
                "three verdicts since deploy on 1.1.0 for every device",
            )
            watch.run(4.0, "after the rollout")
            if watch.later:
                names = ", ".join(sorted(watch.later))
                raise DemoFailed(f"devices alerting against 1.1.0 on unchanged data: {names}")
            verdicts = watch.verdicts("1.1.0")
            print(
                _summary(
                    fleet, status, detected, t_drift, set(hit), false_alarms, watch.later, verdicts
                ),
                flush=True,
            )
            print(f"\ndashboard: {dashboard}", flush=True)
            if keep:
                _keep(dashboard)


class Watch:
    """Progress lines while the fleet runs, and the alerts as they come."""

    def __init__(self, service: Any, fleet: Any) -> None:
        self.service = service
        self.fleet = fleet
        self.seen: set[int] = set()
        self.first_alert: dict[str, float] = {}
        """The first alert of each device against 1.0.0."""
        self.later: dict[str, int] = {}
        """Alerts against 1.1.0, per device."""
        self.closed: set[int] = set()

    def alerted_devices(self) -> set[str]:
        return set(self.first_alert)

    def references_ready(self, version: str) -> set[str]:
        refs = self.service.store.references.all()
        return {
            r["device"] for r in refs if r["model_version"] == version and r["state"] == "ready"
        }

    def judged_since_deploy(self, version: str, n: int) -> set[str]:
        """Devices with at least ``n`` dataset verdicts since deploy on ``version``."""
        rows = self.service.store.drift.rows(model=("digits", version), latest=False)
        seen: dict[str, int] = {}
        for r in rows:
            if r["reference"] == "deploy" and r["kind"] == "dataset" and r["drifted"] is not None:
                seen[r["device"]] = seen.get(r["device"], 0) + 1
        return {d for d, k in seen.items() if k >= n}

    def verdicts(self, version: str) -> dict[str, dict[str, str]]:
        """Each device's latest dataset verdict on ``version``, per reference."""
        out: dict[str, dict[str, str]] = {}
        for r in self.service.store.drift.rows(model=("digits", version)):
            if r["kind"] == "dataset" and r["scope"] == "device":
                v = "-" if r["drifted"] is None else ("drifted" if r["drifted"] else "clean")
                out.setdefault(r["device"], {})[r["reference"]] = v
        return out

    def poll(self) -> None:
        for a in self.service.store.alerts.all():
            where = "fleet-wide" if a["device"] == "_fleet" else a["device"]
            if a["id"] not in self.seen:
                self.seen.add(a["id"])
                if a["model_version"] == "1.0.0":
                    self.first_alert.setdefault(a["device"], a["raised"])
                else:
                    self.later[a["device"]] = self.later.get(a["device"], 0) + 1
                against = "since deploy" if a["reference"] == "deploy" else "training data"
                print(
                    f"   ALERT {time.strftime('%H:%M:%S', time.localtime(a['raised']))} {where}: "
                    f"{a['kind']} drift in {a['feature']} ({a['model_name']} "
                    f"{a['model_version']}, {against})",
                    flush=True,
                )
            if a["cleared"] is not None and a["id"] not in self.closed:
                self.closed.add(a["id"])
                why = a.get("cleared_reason") or "clean again"
                print(
                    f"   closed {time.strftime('%H:%M:%S', time.localtime(a['cleared']))} "
                    f"{where}: {a['kind']} {a['feature']} ({a['model_name']} "
                    f"{a['model_version']}): {why}",
                    flush=True,
                )

    def run(self, seconds: float, what: str) -> None:
        print(f"   {what} ({seconds:.0f} s)", flush=True)
        self.until(lambda: False, seconds, None)

    def until(self, done: Any, timeout: float, what: str | None) -> None:
        deadline = time.monotonic() + timeout
        last = 0.0
        while time.monotonic() < deadline:
            self.poll()
            if done():
                return
            if time.monotonic() - last >= 4.0:
                print(f"   {self.fleet.summary().line()}", flush=True)
                last = time.monotonic()
            time.sleep(0.5)
        if what is not None:
            raise DemoFailed(f"no {what} within {timeout:.0f} s")

    def follow(self, dep_id: str, timeout: float) -> dict[str, Any]:
        shown = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status: dict[str, Any] = self.service.rollouts.status(dep_id)
            for t, _, what in status["history"][shown:]:
                print(f"   {time.strftime('%H:%M:%S', time.localtime(t))}  {what}", flush=True)
            shown = len(status["history"])
            self.poll()
            if status["state"] in ("completed", "aborted"):
                return status
            time.sleep(0.5)
        raise DemoFailed(f"the rollout did not finish within {timeout:.0f} s")


def _summary(
    fleet: Any,
    status: dict[str, Any],
    detected: dict[str, float | None],
    t_drift: float,
    drifted: set[str],
    false_alarms: list[str],
    later: dict[str, int],
    verdicts: dict[str, dict[str, str]],
) -> str:
    from edgeops.core.terminal import render

    stage_of = {d["device"]: d for d in status["device_states"]}
    rows = []
    for s in fleet.stats():
        first = detected.get(s.device)
        dev = stage_of.get(s.device, {})
        rows.append(
            (
                s.device,
                "brighter" if s.device in drifted else "-",
                "-" if first is None else f"+{first - t_drift:.0f} s",
                later.get(s.device, 0),
                verdicts.get(s.device, {}).get("training", "-"),
                verdicts.get(s.device, {}).get("deploy", "-"),
                s.model,
                "-" if not dev else f"stage {dev['stage'] + 1}: {dev['state']}",
                s.predictions,
                s.latency_p50_ms,
                s.latency_p95_ms,
            )
        )
    table = render(
        (
            "device",
            "drift",
            "1.0.0 alert after",
            "1.1.0 alerts",
            "1.1.0 vs training",
            "1.1.0 since deploy",
            "model now",
            "rollout",
            "predictions",
            "p50 ms",
            "p95 ms",
        ),
        rows,
    )
    lines = ["", "== summary", table, ""]
    lines.append(
        f"deployment {status['id']}: {status['state']}, stages {status['stage_sizes']} devices"
    )
    lines.append(
        "alerts against 1.0.0 on undrifted devices (false alarms): "
        + (", ".join(false_alarms) if false_alarms else "none")
    )
    lines.append(
        "1.1.0 is trained on both populations: a device that sees one differs from its training "
        "data (stored and shown, not alerted by this model's policy); since deploy, no device "
        "changed, and none alerts"
    )
    return "\n".join(lines)
