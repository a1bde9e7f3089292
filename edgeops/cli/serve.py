"""``edgeops serve``, ``edgeops fleet …`` and ``edgeops drift report``."""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from edgeops.cli.aliases import trusted_key_option, trusted_keys
from edgeops.cli.api_options import api_client, api_options
from edgeops.cli.logs import json_logs_option, log_output
from edgeops.cli.mqtt_options import mqtt_options, mqtt_values
from edgeops.core.optional import require
from edgeops.service.report import device_report, drift_report, fleet_table, parse_since


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML config with per-model drift policies (see edgeops/service/config.py).",
)
@mqtt_options()
@click.option(
    "--db",
    default=None,
    envvar="EDGEOPS_DB",
    help="sqlite:///FILE (default sqlite:///edgeops.db) or postgresql://USER@HOST/DB "
    "(env EDGEOPS_DB).",
)
@click.option("--group", default=None, help="Shared-subscription group (processes split load).")
@click.option(
    "--http-host",
    default=None,
    help="Address the REST API listens on (default 127.0.0.1; 0.0.0.0 for every interface).",
)
@click.option("--http-port", type=int, default=None, help="REST API port (default 8480).")
@click.option(
    "--http-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Serve the REST API over HTTPS with this certificate (PEM, chain after it).",
)
@click.option(
    "--http-key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The HTTPS certificate's private key.",
)
@click.option(
    "--insecure-api",
    is_flag=True,
    default=None,
    help="Serve the REST API without tokens: anyone who reaches it may read, deploy and "
    "register bundles (tests on one machine only).",
)
@click.option(
    "--public-url",
    default=None,
    help="The REST API's address as devices reach it (bundle downloads in deployments).",
)
@click.option(
    "--bundle",
    "bundles",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Register this bundle's baseline at start (repeatable).",
)
@trusted_key_option("Trusted public key (.pub, or a directory of them) for registered bundles.")
@click.option("--allow-unsigned", is_flag=True, default=None, help="Accept unsigned bundles.")
@click.option(
    "--command-key",
    type=click.Path(path_type=Path),
    default=None,
    envvar="EDGEOPS_COMMAND_KEY",
    help="Private key that signs commands to devices (edgeops keys generate --name command; "
    "devices trust its .pub). Without it commands go out unsigned and devices refuse them. "
    "Env: EDGEOPS_COMMAND_KEY.",
)
@json_logs_option
def serve(
    config_path: Path | None,
    db: str | None,
    group: str | None,
    http_host: str | None,
    http_port: int | None,
    http_cert: Path | None,
    http_key: Path | None,
    insecure_api: bool | None,
    public_url: str | None,
    bundles: tuple[Path, ...],
    allow_unsigned: bool | None,
    command_key: Path | None,
    json_logs: bool,
    **broker: Any,
) -> None:
    """Watch the fleet: store telemetry, detect drift, raise and clear alerts.

    Every REST route but /healthz, /readyz and /docs needs a token: make the first with
    `edgeops tokens create --db DB --role admin --name NAME`."""
    pubkeys = trusted_keys(broker)
    require("sqlalchemy", "service")
    require("litestar", "service")
    from edgeops.service.config import load_service_config
    from edgeops.service.server import Service

    cfg = load_service_config(
        config_path,
        mqtt=mqtt_values(broker),
        db=db,
        group=group,
        http_host=http_host,
        http_port=http_port,
        http_cert=http_cert,
        http_key=http_key,
        insecure_api=insecure_api,
        public_url=public_url,
        bundles=bundles,
        trusted_keys=pubkeys,
        allow_unsigned=allow_unsigned,
        command_key=command_key,
    )
    if cfg.client_id is None:  # stable across restarts: the broker's queued messages resume
        import socket

        name = f"{cfg.group}-{socket.gethostname()}-{cfg.http_port}"
        cfg = replace(cfg, client_id=name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with log_output(json_logs) as say:
        service = Service(cfg).start()
        try:
            say(f"serving the fleet from {cfg.mqtt.describe()}; REST API on {service.http.address}")
            service.wait_connected(10.0)
            if not service.connected.is_set():
                say(
                    f"warning: {service.broker_problem or 'the broker has not answered'}; "
                    "retrying (GET /readyz says when it is connected)",
                    logging.WARNING,
                )
            while not stop.wait(1.0):
                if service.failed is not None:
                    from edgeops.core.errors import ServiceFailed

                    raise ServiceFailed(f"the service stopped: {service.failed}")
        finally:
            service.stop()


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _out(data: Any, as_json: bool, table: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else table)


@click.group()
def fleet() -> None:
    """The fleet as the service sees it."""


@fleet.command()
@click.option("--fleet", "fleet_name", default=None, help="Only this fleet.")
@api_options
@json_option
def status(fleet_name: str | None, as_json: bool, **api: Any) -> None:
    """Every device: presence, model, agent version, last seen, active alerts."""
    data = api_client(api).get("/v1/fleet", fleet=fleet_name)
    _out(data, as_json, fleet_table(data) if not as_json else "")


@fleet.command()
@click.argument("device_id")
@click.option("--fleet", "fleet_name", default=None, help="The device's fleet, if ambiguous.")
@api_options
@json_option
def device(device_id: str, fleet_name: str | None, as_json: bool, **api: Any) -> None:
    """One device: model, latency percentiles, alerts, drift, events."""
    data = api_client(api).get(f"/v1/devices/{quote(device_id, safe='')}", fleet=fleet_name)
    _out(data, as_json, device_report(data) if not as_json else "")


_wait_option = click.option(
    "--wait",
    type=click.FloatRange(min=0, max=3600),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the device's answer (0: send and return).",
)
_valid_option = click.option(
    "--valid-for",
    type=click.FloatRange(min=1, max=86400),
    default=300.0,
    show_default=True,
    help="Seconds the device may act on it; later it refuses it as expired.",
)


@fleet.command()
@click.argument("device_id")
@click.option("--fleet", "fleet_name", default=None, help="The device's fleet, if ambiguous.")
@_wait_option
@_valid_option
@api_options
@json_option
def ping(
    device_id: str,
    fleet_name: str | None,
    wait: float,
    valid_for: float,
    as_json: bool,
    **api: Any,
) -> None:
    """Ask a device to answer (a signed ping), and wait for its answer."""
    _command(api, device_id, fleet_name, {"kind": "ping"}, wait, valid_for, as_json)


@fleet.command("set-config")
@click.argument("device_id")
@click.option("--fleet", "fleet_name", default=None, help="The device's fleet, if ambiguous.")
@click.option(
    "--window-seconds",
    type=float,
    default=None,
    help="Telemetry window length, 1 to 3600 s (applies to the window open now).",
)
@click.option(
    "--sample-rate",
    type=float,
    default=None,
    help="Share of predictions whose inputs feed the window's statistics, 0 to 1.",
)
@_wait_option
@_valid_option
@api_options
@json_option
def set_config(
    device_id: str,
    fleet_name: str | None,
    window_seconds: float | None,
    sample_rate: float | None,
    wait: float,
    valid_for: float,
    as_json: bool,
    **api: Any,
) -> None:
    """Change a device's telemetry settings (a signed set-config), and wait for its answer."""
    if window_seconds is None and sample_rate is None:
        raise click.UsageError("give --window-seconds, --sample-rate or both")
    for hint, value in (("--window-seconds", window_seconds), ("--sample-rate", sample_rate)):
        if value is not None and not math.isfinite(value):  # the bounds are the wire's
            raise click.BadParameter(f"{value} is not a finite number", param_hint=hint)
    body = {"kind": "set-config", "window_seconds": window_seconds, "sample_rate": sample_rate}
    _command(api, device_id, fleet_name, body, wait, valid_for, as_json)


def _command(
    api: dict[str, Any],
    device: str,
    fleet_name: str | None,
    body: dict[str, Any],
    wait: float,
    valid_for: float,
    as_json: bool,
) -> None:
    """Send the command, print the device's answer; exit 21 unless the device carried it out."""
    from edgeops.core.errors import CommandFailed
    from edgeops.service.report import answer_line, answered, command_device

    body = {k: v for k, v in {**body, "valid_for": valid_for}.items() if v is not None}
    sent, answer = command_device(api_client(api), device, body, fleet=fleet_name, wait=wait)
    line = answer_line(sent, answer, wait)
    if as_json:
        click.echo(json.dumps({"sent": sent, "answer": answer}, indent=2, default=str))
    elif answered(answer) or wait == 0:
        click.echo(line)
    if wait > 0 and not answered(answer):
        raise CommandFailed(line)


@click.group()
def drift() -> None:
    """Drift distances and verdicts."""


@drift.command()
@click.option("--model", default=None, help="Model name (optionally NAME:VERSION).")
@click.option("--since", default=None, help="30m, 2h, 1d, or a unix time.")
@click.option("--device", default=None, help="Only this device (or _fleet for fleet-wide).")
@api_options
@json_option
def report(
    model: str | None, since: str | None, device: str | None, as_json: bool, **api: Any
) -> None:
    """The latest verdict per feature, against the training data and since deploy: the
    distances, and why each verdict was reached (value, threshold, noise floor, test)."""
    name, _, version = (model or "").partition(":")
    data = api_client(api).get(
        "/v1/drift",
        model=name or None,
        version=version or None,
        since=parse_since(since),
        device=device,
    )
    _out(data, as_json, drift_report(data) if not as_json else "")
