"""Staged rollouts: the verdicts on their own, then real deployments through a real service,
a real mosquitto and real agents, good and bad bundles, an offline device, an abort, and a
service killed mid-rollout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from device_agent.agent import Agent
from edgeops.core.errors import AccessDenied, UsageError
from edgeops.service import rollout_policy as ro
from edgeops.service.config import ServiceConfig
from edgeops.service.server import Service
from edgeops.service.storage import schema
from edgeops.testing import Mosquitto, until, write_bad_bundles
from tests.test_agent import FLEET, make_config

# --- the pure part ---------------------------------------------------------------------------


def test_stages_parse_and_size() -> None:
    assert ro.parse_stages("1,10,50,100") == ((1.0, 10.0, 50.0, 100.0), False)
    assert ro.parse_stages("2d, 20d,200d") == ((2.0, 20.0, 200.0), True)
    for bad in ("1,x", "1d,50", "", "5%,d"):
        with pytest.raises(UsageError):
            ro.parse_stages(bad)
    with pytest.raises(UsageError, match="increase"):
        ro.RolloutPolicy(stages=(10, 5))
    with pytest.raises(UsageError, match="100"):
        ro.RolloutPolicy(stages=(50, 150))
    with pytest.raises(UsageError, match="at most 7 days"):
        ro.RolloutPolicy(timeout=8 * 86400)
    with pytest.raises(UsageError, match="health-predictions"):
        ro.RolloutPolicy(health_predictions=0)
    assert ro.stage_sizes(200, ro.RolloutPolicy()) == [2, 20, 100, 200]
    assert ro.stage_sizes(6, ro.RolloutPolicy()) == [1, 3, 6]  # 1 % and 10 % of 6: one device
    assert ro.stage_sizes(3, ro.RolloutPolicy(stages=(1, 2, 9), stage_counts=True)) == [1, 2, 3]
    assert ro.parse_seconds("5m", "--timeout") == 300.0
    assert ro.parse_percent("20%", "--x") == pytest.approx(0.2)
    with pytest.raises(UsageError):
        ro.parse_seconds("soon", "--bake")


def test_verdicts() -> None:
    p = ro.RolloutPolicy(min_devices=3, abort_failure_rate=0.2, success_threshold=0.9)
    # One failed canary of two sent: judged once both decided (fewer than min_devices sent).
    t = ro.tally([ro.FAILED, ro.SENT, ro.PENDING], p)
    assert (t.sent, t.decided, t.failed, t.undecided) == (2, 1, 1, 1)
    assert ro.early_abort(t, p) is None
    t = ro.tally([ro.FAILED, ro.COMMITTED, ro.PENDING], p)
    assert "50%" in (ro.early_abort(t, p) or "")
    # Timeouts count as the policy says.
    states = [ro.COMMITTED] * 9 + [ro.TIMEOUT]
    assert ro.early_abort(ro.tally(states, p), p) is None  # 10 % failures <= 20 %
    assert ro.stage_verdict(ro.tally(states, p), p) is None  # 90 % success >= 90 %
    skip = ro.RolloutPolicy(on_timeout="skip", success_threshold=0.95)
    assert ro.tally(states, skip).decided == 9
    assert ro.stage_verdict(ro.tally(states, skip), skip) is None
    strict = ro.RolloutPolicy(success_threshold=0.95)
    assert "below" in (ro.stage_verdict(ro.tally(states, strict), strict) or "")
    # Regression gates.
    q = ro.RolloutPolicy(max_error_rate=0.05, max_latency_regression=0.2)
    before = ro.Serving(1000, 0, 2.0)
    assert ro.regression_verdict(ro.Serving(100, 1, 2.3), before, q) is None
    assert "1.50x" in (ro.regression_verdict(ro.Serving(100, 0, 3.0), before, q) or "")
    assert "error rate" in (ro.regression_verdict(ro.Serving(90, 10, 2.0), before, q) or "")
    assert ro.regression_verdict(ro.Serving(0, 0, None), before, q) is None  # nothing served
    # Health settings passed to the devices.
    assert q.health().max_latency_ratio == pytest.approx(1.2)
    assert ro.RolloutPolicy().health().max_latency_ratio is None
    # Online devices go first, in a stable order per deployment.
    order = ro.device_order([("a", False), ("b", True), ("c", True)], "d1")
    assert order[2] == "a" and order == ro.device_order(
        [("c", True), ("a", False), ("b", True)], "d1"
    )
    assert ro.RolloutPolicy.from_dict(q.to_dict()) == q
    with pytest.raises(UsageError, match="unknown"):
        ro.RolloutPolicy.from_dict({"stagez": [1]})


# --- bundles ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(  # type: ignore[no-untyped-def]
    tmp_path_factory: pytest.TempPathFactory, digits_bundles, digits_run, signing_keys
) -> dict[str, Path]:
    """1.0.0 (what devices run), 1.1.0 (good), a rogue-signed 1.1.0, a 1.1.1 failing the sample
    check, and 1.2.0: the same answers as the digits model but many times slower."""
    import keras

    from converters import ConversionConfig, Format, Mode, convert
    from edgeops.core.signing import load_signing_key
    from edgeops.packaging.package import PackageConfig, package

    d = tmp_path_factory.mktemp("rollout-bundles")
    keys_dir = tmp_path_factory.mktemp("rogue-key")
    rogue, corrupt = write_bad_bundles(d, digits_bundles[1], signing_keys, keys_dir)
    base = keras.models.load_model(digits_run.model)
    inp = keras.Input(shape=base.input_shape[1:])
    # Wasted work with few weights: convolutions over an upsampled copy of the input, whose
    # result reaches the output only through zero weights.
    x = keras.layers.Reshape((8, 8, 1))(inp)
    x = keras.layers.UpSampling2D(4)(x)
    for _ in range(3):
        x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    zero = keras.layers.Dense(10, kernel_initializer="zeros", bias_initializer="zeros")(x)
    slow_model = keras.Model(inp, keras.layers.Add()([base(inp), zero]))
    src = d / "slow.keras"
    slow_model.save(src)
    report = convert(src, d / "models", ConversionConfig(to=Format.TFLITE, mode=Mode.FP32))
    slow = package(
        digits_run,
        d / "models" / report.artifact["file"],
        d / "slow",
        PackageConfig(version="1.2.0"),
        key=load_signing_key(signing_keys[0]),
    )
    return {
        "old": digits_bundles[0],
        "good": digits_bundles[1],
        "rogue": rogue,
        "rogue_pub": keys_dir / "rogue.pub",
        "corrupt": corrupt,
        "slow": slow,
    }


# --- a fleet of real agents under traffic ----------------------------------------------------


class Fleet:
    """Real agents on 1.0.0, each served a few predictions a second by one feeder thread."""

    def __init__(
        self,
        tmp: Path,
        port: int,
        bundle: Path,
        keys: Any,
        n: int,
        *,
        commands: tuple[Path, Path],
        service_url: str | None = None,
        allowed_hosts: tuple[str, ...] = (),
    ) -> None:
        """``commands``: the service's command key pair (devices trust its public half);
        devices download from ``service_url``'s host and port (or ``allowed_hosts``)."""
        tag = uuid.uuid4().hex[:4]
        self.configs = [
            make_config(
                tmp / f"a{i}",
                port,
                bundle,
                keys,
                device=f"r{tag}-{i}",
                window=0.5,
                commands=commands,
                service_url=service_url,
                allowed_hosts=allowed_hosts,
            )
            for i in range(n)
        ]
        self.agents: dict[str, Agent] = {}
        self.errors: list[str] = []
        """Predictions that failed (a model switch must not fail one)."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._x = np.random.default_rng(0).uniform(0, 16, (64, 8, 8)).astype(np.float32)
        self._feeder = threading.Thread(target=self._feed, daemon=True)

    @property
    def ids(self) -> list[str]:
        return [c.device.id for c in self.configs]

    def start(self, i: int) -> Agent:
        a = Agent(self.configs[i], http=False).start()
        assert a.link is not None and a.link.wait_connected(10)
        with self._lock:
            self.agents[self.configs[i].device.id] = a
        return a

    def stop(self, device: str) -> None:
        with self._lock:
            a = self.agents.pop(device)
        a.stop()

    def __enter__(self) -> Fleet:
        for i in range(len(self.configs)):
            self.start(i)
        self._feeder.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._feeder.join(5)
        for d in list(self.agents):
            self.stop(d)

    def _feed(self) -> None:
        i = 0
        while not self._stop.wait(0.02):
            with self._lock:
                agents = list(self.agents.values())
            for a in agents:
                try:
                    a.predict(self._x[i % len(self._x)])
                except Exception as e:
                    with self._lock:
                        if a in self.agents.values():  # not one being stopped
                            self.errors.append(f"{a.config.device.id}: {e!r}")
            i += 1

    def versions(self) -> dict[str, str | None]:
        with self._lock:
            return {d: (a.model.ref.version if a.model else None) for d, a in self.agents.items()}


def _config(
    tmp: Path, port: int, keys: Any, commands: Any, extra_keys: tuple[Path, ...] = ()
) -> ServiceConfig:
    return ServiceConfig(
        command_key=commands[0],
        broker=f"mqtt://127.0.0.1:{port}",
        db=f"sqlite:///{tmp / 'service.db'}",
        group=f"g{uuid.uuid4().hex[:6]}",
        http_port=0,
        trusted_keys=(keys[1], *extra_keys),
        fleet_interval=3600.0,
        rollout_interval=0.2,
    )


def _until(cond: Any, timeout: float = 60.0) -> bool:
    return until(cond, timeout)


def _finished(service: Service, dep_id: str, timeout: float = 90.0) -> dict[str, Any]:
    assert _until(
        lambda: service.rollouts.status(dep_id)["state"] in ("completed", "aborted"), timeout
    ), service.rollouts.status(dep_id)
    return service.rollouts.status(dep_id)


def _known(service: Service, fleet: Fleet) -> bool:
    return {d["device"] for d in service.store.devices.all(FLEET)} >= set(fleet.agents)


FAST = ro.RolloutPolicy(
    stages=(1, 2, 100),
    stage_counts=True,
    bake=1.0,
    timeout=30.0,
    min_devices=2,
    health_predictions=10,
    health_seconds=10.0,
)


def _consistent_on_old(service: Service, fleet: Fleet, status: dict[str, Any]) -> None:
    """An aborted deployment left every device on 1.0.0, and says so."""
    assert status["state"] == "aborted"
    ok = {ro.FAILED, ro.ROLLED_BACK, ro.REVERTED, ro.SKIPPED, ro.TIMEOUT}
    assert {d["state"] for d in status["device_states"]} <= ok, status["device_states"]
    assert set(fleet.versions().values()) == {"1.0.0"}
    assert _until(
        lambda: (
            {
                d["model_version"]
                for d in service.store.devices.all(FLEET)
                if d["device"] in fleet.ids
            }
            == {"1.0.0"}
        ),
        10,
    )


# --- deployments -----------------------------------------------------------------------------


def test_a_good_bundle_rolls_out_stage_by_stage(
    broker: Mosquitto,
    bundles: dict[str, Path],
    signing_keys,
    command_keys,
    tmp_path: Path,
    cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    with Service(_config(tmp_path, broker.port, signing_keys, command_keys)) as service:
        assert service.connected.wait(10)
        url = service.http.address
        # uploading a bundle file needs an admin token: from the environment here
        monkeypatch.setenv("EDGEOPS_TOKEN", service.tokens.create("release", "admin"))
        with Fleet(
            tmp_path,
            broker.port,
            bundles["old"],
            signing_keys,
            4,
            commands=command_keys,
            service_url=service.public_url(),
        ) as fleet:
            assert _until(lambda: _known(service, fleet))
            r = cli(
                "deploy",
                bundles["good"],
                "--fleet",
                FLEET,
                "--devices",
                ",".join(fleet.ids),
                "--stages",
                "1d,2d,4d",
                "--bake",
                "1s",
                "--min-devices",
                "2",
                "--health-predictions",
                "10",
                "--url",
                url,
                "--wait",
            )
            assert r.code == 0, r.err
            assert "completed" in r.out and "stage 3 started" in r.err
            assert set(fleet.versions().values()) == {"1.1.0"}
            assert fleet.errors == []
            dep_id = r.out.split()[1].rstrip(":")
            status = service.rollouts.status(dep_id)
            assert [d["state"] for d in status["device_states"]] == [ro.COMMITTED] * 4
            assert [d["stage"] for d in status["device_states"]] == [0, 1, 2, 2]
            # The stages ran in order: each one's devices committed after the last stage's.
            decided = [d["decided"] for d in status["device_states"]]
            assert decided[0] <= decided[1] <= min(decided[2:])
            # The service also knows earlier tests' devices of the fleet (retained statuses):
            # these four must be among those it counts on 1.1.0.
            mine = lambda: {  # noqa: E731
                d["device"]: d["model_version"]
                for d in service.store.devices.all(FLEET)
                if d["device"] in fleet.ids
            }
            assert _until(lambda: set(mine().values()) == {"1.1.0"} and len(mine()) == 4, 60)
            assert service.store.models.all()[-1]["devices"].get(FLEET, 0) >= 4
            r = cli("models", "list", "--url", url)
            assert r.code == 0 and "1.1.0" in r.out and f"{FLEET}: " in r.out
            r = cli("deploy", "list", "--url", url)
            assert r.code == 0 and dep_id in r.out and "completed" in r.out
            r = cli("deploy", "status", dep_id, "--url", url)
            assert r.code == 0 and "committed" in r.out
            # Nothing left to update: a second deployment of the same bundle is refused.
            r = cli("deploy", "digits-1.1.0", "--fleet", FLEET, "--url", url)
            assert r.code == 2 and "no device to update" in r.err and "4 already" in r.err
    # Bad requests: one line each, non-zero.
    assert cli("deploy", "status", "nope", "--url", url).code != 0
    r = cli("deploy", bundles["good"], "--fleet", FLEET, "--bake", "soon")
    assert r.code == 2 and "--bake" in r.err


@pytest.mark.parametrize("case", ["rogue", "hash", "corrupt", "slow"])
def test_a_bad_bundle_is_stopped_at_the_canary_and_the_fleet_stays_consistent(
    case: str,
    broker: Mosquitto,
    bundles: dict[str, Path],
    signing_keys,
    command_keys,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    """An unknown signing key, a hash mismatch, a failed sample check, a model past the policy's
    latency regression (built several times slower than the one it replaces): each stops the
    deployment at its first device, and every device ends on 1.0.0 with its state reported."""
    cfg = _config(
        tmp_path, broker.port, signing_keys, command_keys, extra_keys=(bundles["rogue_pub"],)
    )
    bundle = bundles["good" if case == "hash" else case]
    policy = ro.RolloutPolicy.from_dict(
        {**FAST.to_dict(), "max_latency_regression": 0.5 if case == "slow" else None}
    )
    with (
        Service(cfg) as service,
        Fleet(
            tmp_path,
            broker.port,
            bundles["old"],
            signing_keys,
            3,
            commands=command_keys,
            service_url=service.public_url(),
        ) as fleet,
    ):
        assert service.connected.wait(10)
        manifest = service.register_bundle(bundle)
        if case == "hash":  # the stored bytes no longer match the sha256 devices are given
            with service.store.begin() as conn:
                data = conn.execute(sa.select(schema.bundles.c.data)).scalar_one()
                flipped = data[:-100] + bytes([data[-100] ^ 1]) + data[-99:]
                conn.execute(sa.update(schema.bundles).values(data=flipped))
        assert _until(lambda: _known(service, fleet))
        t0 = time.monotonic()
        status = service.deploy(
            f"{manifest.name}-{manifest.version}", FLEET, devices=fleet.ids, policy=policy
        )
        status = _finished(service, status["id"])
        _consistent_on_old(service, fleet, status)
        first = status["device_states"][0]
        why = {
            "rogue": "not a trusted key",
            "hash": "sha256",
            "corrupt": "sample outputs differ",
            "slow": "previous model",
        }[case]
        assert first["state"] == (ro.ROLLED_BACK if case == "slow" else ro.FAILED)
        assert why in (first["reason"] or ""), first
        if case == "slow":  # the device measured a regression past the policy's 1.5x (the
            # model is built several times slower; how much slower this machine shows varies)
            assert first["health"]["latency_ratio"] > 1.5, first["health"]
        assert [d["state"] for d in status["device_states"][1:]] == [ro.SKIPPED] * 2
        assert why in status["reason"] or "failure rate" in status["reason"]
        assert time.monotonic() - t0 < 60


def test_an_offline_device_times_out_as_the_policy_says_and_refuses_the_stale_command_later(
    broker: Mosquitto, bundles: dict[str, Path], signing_keys, command_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with Service(_config(tmp_path, broker.port, signing_keys, command_keys)) as service:
        assert service.connected.wait(10)
        service.register_bundle(bundles["good"])
        with Fleet(
            tmp_path,
            broker.port,
            bundles["old"],
            signing_keys,
            3,
            commands=command_keys,
            service_url=service.public_url(),
        ) as fleet:
            assert _until(lambda: _known(service, fleet))
            offline = fleet.ids[2]
            fleet.stop(offline)
            assert _until(lambda: not service.store.devices.get(FLEET, offline)["online"])  # type: ignore[index]
            skip = ro.RolloutPolicy.from_dict(
                {**FAST.to_dict(), "stages": [100], "timeout": 4.0, "on_timeout": "skip"}
            )
            status = service.deploy("digits-1.1.0", FLEET, devices=fleet.ids, policy=skip)
            status = _finished(service, status["id"])
            assert status["state"] == "completed", status
            states = {d["device"]: d["state"] for d in status["device_states"]}
            assert states == {
                fleet.ids[0]: "committed",
                fleet.ids[1]: "committed",
                offline: "timeout",
            }
            # The device comes back: its persistent session delivers the command, now stale.
            agent = fleet.start(2)
            assert _until(
                lambda: any(
                    e["kind"] == "command-rejected" and e["data"]["reason"] == "expired"
                    for e in service.store.telemetry.events_of(FLEET, offline)
                ),
                20,
            )
            assert agent.model is not None and agent.model.ref.version == "1.0.0"
            # Counted as failures, the same timeout aborts a deployment.
            fleet.stop(offline)
            fail = ro.RolloutPolicy.from_dict(
                {**FAST.to_dict(), "stages": [100], "timeout": 3.0, "min_devices": 1}
            )
            status = service.deploy("digits-1.1.0", FLEET, devices=[offline], policy=fail)
            status = _finished(service, status["id"])
            assert status["state"] == "aborted" and "failure rate" in status["reason"]


def test_abort_rolls_back_the_updated_devices(
    broker: Mosquitto, bundles: dict[str, Path], signing_keys, command_keys, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    with Service(_config(tmp_path, broker.port, signing_keys, command_keys)) as service:
        assert service.connected.wait(10)
        service.register_bundle(bundles["good"])
        with Fleet(
            tmp_path,
            broker.port,
            bundles["old"],
            signing_keys,
            3,
            commands=command_keys,
            service_url=service.public_url(),
        ) as fleet:
            assert _until(lambda: _known(service, fleet))
            long_bake = ro.RolloutPolicy.from_dict({**FAST.to_dict(), "bake": 600.0})
            dep = service.deploy("digits-1.1.0", FLEET, devices=fleet.ids, policy=long_bake)
            assert _until(lambda: service.rollouts.status(dep["id"])["bake_until"] is not None)
            canary = service.rollouts.status(dep["id"])["device_states"][0]["device"]
            assert fleet.versions()[canary] == "1.1.0"
            api = ("--url", service.http.address)
            reader = tmp_path / "reader.token"
            assert cli("tokens", "create", "--role", "read", "--name", "r", "--db",
                       service.config.db, "--out", reader).code == 0  # fmt: skip
            r = cli("deploy", "abort", dep["id"], *api, "--token-file", reader)
            assert r.code == AccessDenied.exit_code and "needs deploy" in r.err
            operator = service.tokens.create("operator", "deploy")
            r = cli("deploy", "abort", dep["id"], *api, "--token", operator)
            assert r.code == 0, r.err
            status = _finished(service, dep["id"])
            _consistent_on_old(service, fleet, status)
            assert [d["state"] for d in status["device_states"]] == [
                "reverted",
                "skipped",
                "skipped",
            ]
            assert "aborted on request" in status["reason"]
            r = cli("deploy", "abort", dep["id"], *api, "--token", operator)
            assert r.code != 0 and "already aborted" in r.err


def test_a_killed_service_resumes_its_deployment(
    broker: Mosquitto,
    bundles: dict[str, Path],
    signing_keys,
    command_keys,
    tmp_path: Path,
    cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    db_url = f"sqlite:///{tmp_path / 'service.db'}"
    log = tmp_path / "service.log"
    token = tmp_path / "deploy.token"  # the bootstrap: a token made in the database first
    r = cli("tokens", "create", "--role", "deploy", "--name", "ci", "--db", db_url, "--out", token)
    assert r.code == 0 and r.out == "" and token.stat().st_mode & 0o077 == 0
    monkeypatch.setenv("EDGEOPS_TOKEN_FILE", str(token))

    def serve(port: int) -> subprocess.Popen[bytes]:
        with log.open("ab") as err:
            p = _popen(err)
        url = f"http://127.0.0.1:{port}"
        assert _until(lambda: cli("deploy", "list", "--url", url).code == 0, 60), log.read_text()
        return p

    def _popen(err: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgeops",
                "serve",
                "--broker",
                f"mqtt://127.0.0.1:{broker.port}",
                "--db",
                db_url,
                "--http-port",
                str(port),
                "--trusted-key",
                str(signing_keys[1]),
                "--command-key",
                str(command_keys[0]),
                "--bundle",
                str(bundles["good"]),
            ],
            stderr=err,
        )

    from edgeops.testing import free_port

    port = free_port()
    with Fleet(
        tmp_path,
        broker.port,
        bundles["old"],
        signing_keys,
        4,
        commands=command_keys,
        service_url=f"http://127.0.0.1:{port}",
    ) as fleet:
        p = serve(port)
        url = f"http://127.0.0.1:{port}"
        try:
            assert _until(lambda: len(cli("fleet", "status", "--url", url).out.splitlines()) >= 6)
            r = cli(
                "deploy",
                "digits-1.1.0",
                "--fleet",
                FLEET,
                "--devices",
                ",".join(fleet.ids),
                "--stages",
                "1d,2d,4d",
                "--bake",
                "3s",
                "--min-devices",
                "2",
                "--health-predictions",
                "10",
                "--url",
                url,
            )
            assert r.code == 0, r.err
            dep_id = r.out.strip()
            assert _until(
                lambda: '"committed"' in cli("deploy", "status", dep_id, "--json", "--url", url).out
            )
            os.kill(p.pid, signal.SIGKILL)  # mid-rollout: stage 1 baking
            p.wait()
            p = serve(port)
            assert _until(
                lambda: (
                    '"state": "completed"'
                    in cli("deploy", "status", dep_id, "--json", "--url", url).out
                ),
                90,
            ), (cli("deploy", "status", dep_id, "--url", url).out, log.read_text()[-3000:])
            assert set(fleet.versions().values()) == {"1.1.0"}
        finally:
            p.terminate()
            p.wait(10)


def test_a_drift_alert_deploys_the_bundle_its_policy_names(
    broker: Mosquitto, bundles: dict[str, Path], signing_keys, command_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """``on_alert = { deploy = "digits-1.1.0" }``: the alert starts one staged deployment to
    the fleet, through the same path as ``edgeops deploy``."""
    from sklearn.datasets import load_digits

    from edgeops.service.config import AlertAction, ModelPolicy
    from tests.test_service import _serve_windows

    policy = ModelPolicy(on_alert=AlertAction(deploy="digits-1.1.0"))
    rollout = ro.RolloutPolicy.from_dict({**FAST.to_dict(), "health_seconds": 1.0})
    cfg = replace(
        _config(tmp_path, broker.port, signing_keys, command_keys),
        bundles=(bundles["old"], bundles["good"]),
        models={"digits": policy},
        rollout=rollout,
    )
    images = load_digits().images.astype(np.float32)
    rng = np.random.default_rng(1)
    tag = uuid.uuid4().hex[:4]
    with Service(cfg) as service:
        assert service.connected.wait(10)
        agents = [
            Agent(
                make_config(
                    tmp_path / f"d{i}",
                    broker.port,
                    bundles["old"],
                    signing_keys,
                    device=f"alert{tag}-{i}",
                    window=3600,
                    commands=command_keys,
                    service_url=service.public_url(),
                ),
                http=False,
            ).start()
            for i in range(2)
        ]
        try:
            assert _until(
                lambda: (
                    len(
                        [
                            d
                            for d in service.store.devices.all(FLEET)
                            if d["device"].startswith(f"alert{tag}")
                        ]
                    )
                    == 2
                )
            )
            for a in agents:
                _serve_windows(a, images, 2, rng)
            assert service.rollouts.deployments() == []
            for _ in range(2):  # drift on one device: two evaluations raise the alert
                stored = service.counters.stored_windows
                _serve_windows(agents[1], images, 1, rng, shift=5.0)
                assert _until(  # stored and evaluated before the next (not coalesced)
                    lambda s=stored: (
                        service.counters.stored_windows > s and service.evaluations.idle()
                    ),
                    120,
                )
            assert _until(lambda: len(service.rollouts.deployments()) == 1, 120)
            dep = service.rollouts.deployments()[0]
            assert dep["trigger"].startswith("alert ") and f"alert{tag}-1" in dep["trigger"]
            status = _finished(service, dep["id"])
            assert status["state"] == "completed", status
            mine = {d["device"] for d in status["device_states"]}
            assert {f"alert{tag}-0", f"alert{tag}-1"} <= mine
            assert {a.model.ref.version for a in agents if a.model} == {"1.1.0"}
            # More alerts do not start the same deployment again.
            _serve_windows(agents[0], images, 2, rng, shift=5.0)
            time.sleep(1.0)
            assert len(service.rollouts.deployments()) == 1
        finally:
            for a in agents:
                a.stop()


def test_two_services_on_postgresql_step_a_deployment_once_and_take_over(
    broker: Mosquitto, bundles: dict[str, Path], signing_keys, command_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Two service processes share one database: one holds the deployment's lease and steps
    it; when it crashes (stops without releasing the lease), the other takes over once the
    lease runs out. The crashed one comes back under its client id (the broker queued its share
    of the devices' events for its session meanwhile) and the deployment completes."""
    from edgeops.testing import Postgres

    with Postgres() as pg:
        base = replace(
            _config(tmp_path, broker.port, signing_keys, command_keys), db=pg.url, group="shared"
        )
        a = Service(base, client_id=f"svc-a-{uuid.uuid4().hex[:4]}").start()
        b = Service(base, client_id=f"svc-b-{uuid.uuid4().hex[:4]}").start()
        try:
            assert a.connected.wait(10) and b.connected.wait(10)
            a.register_bundle(bundles["good"])
            with Fleet(
                tmp_path,
                broker.port,
                bundles["old"],
                signing_keys,
                3,
                commands=command_keys,
                allowed_hosts=("127.0.0.1:*",),  # the two services' APIs listen on two ports
            ) as fleet:
                assert _until(lambda: _known(a, fleet))
                slow = ro.RolloutPolicy.from_dict({**FAST.to_dict(), "bake": 4.0})
                dep = a.deploy("digits-1.1.0", FLEET, devices=fleet.ids, policy=slow)
                holder = a.rollouts.status(dep["id"])
                with a.store.begin() as conn:
                    owner = conn.execute(
                        sa.select(schema.deployments.c.lease_owner).where(
                            schema.deployments.c.id == dep["id"]
                        )
                    ).scalar_one()
                assert owner == a.client_id, owner
                assert _until(lambda: a.rollouts.status(dep["id"])["bake_until"] is not None)
                # "Crash" a: stop its loops without giving up the lease.
                a.rollouts.release = lambda: None  # type: ignore[method-assign]
                a.stop()

                def owner() -> str:
                    with b.store.begin() as conn:
                        return str(
                            conn.execute(
                                sa.select(schema.deployments.c.lease_owner).where(
                                    schema.deployments.c.id == dep["id"]
                                )
                            ).scalar_one()
                        )

                assert _until(lambda: owner() == b.client_id, 20), owner()
                a = Service(base, client_id=a.client_id).start()  # restarted after the crash
                status = _finished(b, dep["id"])
                assert status["state"] == "completed", status["device_states"]
                assert set(fleet.versions().values()) == {"1.1.0"}
                assert holder["state"] == "running"
                # Each device was sent its update once by one of them (no repeats were needed).
                events = [e for d in fleet.ids for e in b.store.telemetry.events_of(FLEET, d)]
                downloads = [e for e in events if e["kind"] == "update-downloading"]
                assert len(downloads) == 3, [(e["device"], e["command_id"]) for e in downloads]
        finally:
            b.stop()
            with contextlib.suppress(Exception):
                a.stop()


def test_a_service_without_its_rest_api_refuses_to_deploy(
    broker: Mosquitto, bundles: dict[str, Path], signing_keys, command_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Devices download bundles from the REST API (or ``public_url``): without either, a
    deployment is refused at once rather than stalling."""
    from edgeops.core.errors import EdgeOpsError

    with Service(_config(tmp_path, broker.port, signing_keys, command_keys), http=False) as service:
        service.register_bundle(bundles["good"])
        with pytest.raises(EdgeOpsError, match="REST API"):
            service.deploy("digits-1.1.0", FLEET, devices=["x"])
        assert service.rollouts.deployments() == []
