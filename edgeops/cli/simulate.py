"""``edgeops simulate``: options to a :class:`~edgeops.simulate.FleetConfig`, then a :class:`Fleet`
run until ``--duration`` ends or SIGINT/SIGTERM, with a progress line every few seconds."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from edgeops.cli.logs import json_logs_option, log_output
from edgeops.cli.mqtt_options import mqtt_options, mqtt_values
from edgeops.core.errors import InputDataError, UsageError
from edgeops.core.optional import require


@click.command()
@click.option("--devices", type=int, required=True, help="Simulated devices (agents).")
@mqtt_options(account=False)
@click.option(
    "--device-credentials",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Each device's broker identity: DIR/ID.crt and DIR/ID.key (client certificates), or "
    "lines ID:PASSWORD in DIR/passwords (env EDGEOPS_SIM_DEVICE_CREDENTIALS).",
    envvar="EDGEOPS_SIM_DEVICE_CREDENTIALS",
)
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    required=True,
    help="The bundle every device starts with.",
)
@click.option("--fleet", default="sim", show_default=True, help="Fleet id in the topics.")
@click.option(
    "--data",
    "data_given",
    required=True,
    metavar="FILE|sample",
    help="CSV or NPZ rows to replay, or 'sample': the sample dataset (edgeops samples) the "
    "bundle's manifest records it was trained on.",
)
@click.option("--target", default=None, help="Label column for feedback (default: the bundle's).")
@click.option(
    "--rate", type=float, default=1.0, show_default=True, help="Predictions/s per device."
)
@click.option(
    "--duration", type=float, default=None, help="Seconds to run (default: until Ctrl-C)."
)
@click.option(
    "--drift",
    "drifts",
    multiple=True,
    metavar="SPEC",
    help="Drift on some devices (repeatable), e.g. kind=covariate,amount=2,devices=0-9,after=30. "
    "Kinds: covariate, noise, missing, label. Keys: amount, devices (0-4+9, 25%, all), after "
    "(seconds), features (a+b), class.",
)
@click.option(
    "--feedback",
    type=float,
    default=0.0,
    show_default=True,
    help="Share of predictions whose true label is sent back.",
)
@click.option(
    "--window-seconds", type=float, default=10.0, show_default=True, help="Telemetry window."
)
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Public key (.pub, or a directory of them) the devices trust (repeatable).",
)
@click.option("--allow-unsigned", is_flag=True, help="Devices accept unsigned bundles.")
@click.option(
    "--command-key",
    "command_keys",
    multiple=True,
    type=click.Path(path_type=Path),
    help="The service's command public key (.pub, or a directory of them) the devices trust "
    "(repeatable; without one every command is refused).",
)
@click.option(
    "--allow-unsigned-commands",
    is_flag=True,
    help="Devices in development mode: they act on unsigned commands too.",
)
@click.option(
    "--service-url",
    default=None,
    help="The service's public URL: devices download bundles only from its host and port.",
)
@click.option("--labels", default=None, metavar="K=V,...", help="Labels of every device.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Device stores and outboxes (default: a temporary directory, removed at the end).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Row order and drift seed.")
@click.option(
    "--every", type=float, default=5.0, show_default=True, help="Seconds between progress lines."
)
@json_logs_option
def simulate(
    devices: int,
    device_credentials: Path | None,
    bundle: Path,
    fleet: str,
    data_given: str,
    target: str | None,
    rate: float,
    duration: float | None,
    drifts: tuple[str, ...],
    feedback: float,
    window_seconds: float,
    trusted_keys: tuple[Path, ...],
    allow_unsigned: bool,
    command_keys: tuple[Path, ...],
    allow_unsigned_commands: bool,
    service_url: str | None,
    labels: str | None,
    workdir: Path | None,
    seed: int,
    every: float,
    json_logs: bool,
    **mqtt: Any,
) -> None:
    """Run a fleet of simulated devices: real agents replaying real rows, with drift."""
    require("paho.mqtt", "agent")
    data = None if data_given == "sample" else Path(data_given)
    if data is not None and not data.is_file():
        raise InputDataError(f"{data}: no such file (or --data sample for the bundle's own)")
    with log_output(json_logs) as say:
        from edgeops.simulate import Fleet, FleetConfig, parse_drift, parse_labels, summary_table

        if duration is not None and duration <= 0:
            raise UsageError("--duration must be a positive number of seconds")
        if every <= 0:
            raise UsageError("--every must be a positive number of seconds")
        from edgeops.core.broker import BrokerSettings

        given = mqtt_values(mqtt)
        broker = (
            BrokerSettings()
            .with_env()
            .with_overrides(url=given["url"], ca=given["ca"], insecure=given["insecure"])
        )
        config = FleetConfig(
            devices=devices,
            bundle=bundle,
            broker=broker,
            device_credentials=device_credentials,
            fleet=fleet,
            data=data,
            target=target,
            rate=rate,
            feedback=feedback,
            window_seconds=window_seconds,
            drift=tuple(parse_drift(d) for d in drifts),
            trusted_keys=trusted_keys,
            allow_unsigned=allow_unsigned,
            command_keys=command_keys,
            allow_unsigned_commands=allow_unsigned_commands,
            service_url=service_url,
            labels=parse_labels(labels),
            workdir=workdir,
            seed=seed,
        )
        sim = Fleet(config)
        stop = threading.Event()
        previous: dict[signal.Signals, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            sim.prepare()  # the bundle and the data: a mistake in either stops before any start
            say(f"starting {devices} device(s) against {broker.url} …")
            sim.start()
            try:
                say(
                    f"{sim.online}/{devices} device(s) online; agents started in "
                    f"{sim.startup_seconds or 0:.1f} s"
                )
                if sim.online == 0:
                    from edgeops.core.errors import BrokerError

                    why = sim.connect_problem or "no answer"
                    raise BrokerError(f"broker {broker.url}: no device could connect ({why})")
                end = None if duration is None else time.monotonic() + duration
                while True:
                    left = every if end is None else min(every, end - time.monotonic())
                    if stop.wait(max(left, 0.0)) or (end is not None and time.monotonic() >= end):
                        break
                    say(sim.summary().line())
                rows = sim.stats()
                total = sim.summary(rows)
            finally:
                sim.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        say(total.line())
    click.echo(summary_table(rows, total))
