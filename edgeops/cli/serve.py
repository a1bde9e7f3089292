"""``edgeops serve``, ``edgeops fleet …`` and ``edgeops drift report``."""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from edgeops.cli.mqtt_options import mqtt_options, mqtt_values
from edgeops.optional import require
from edgeops.service.report import (
    DEFAULT_URL,
    device_report,
    drift_report,
    fleet_table,
    get,
    parse_since,
)


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML config with per-model drift policies (see edgeops/service/config.py).",
)
@mqtt_options()
@click.option("--db", default=None, help="sqlite:///FILE (default) or postgresql://USER@HOST/DB.")
@click.option("--group", default=None, help="Shared-subscription group (processes split load).")
@click.option(
    "--http-host",
    default=None,
    help="Address the REST API listens on (default 127.0.0.1; 0.0.0.0 for every interface).",
)
@click.option("--http-port", type=int, default=None, help="REST API port (default 8480).")
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
@click.option(
    "--pubkey",
    "pubkeys",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Trusted public key(s) for registered bundles.",
)
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
def serve(
    config_path: Path | None,
    db: str | None,
    group: str | None,
    http_host: str | None,
    http_port: int | None,
    public_url: str | None,
    bundles: tuple[Path, ...],
    pubkeys: tuple[Path, ...],
    allow_unsigned: bool | None,
    command_key: Path | None,
    **broker: Any,
) -> None:
    """Watch the fleet: store telemetry, detect drift, raise and clear alerts."""
    require("sqlalchemy", "service")
    from edgeops.service import Service
    from edgeops.service.config import load_service_config

    cfg = load_service_config(
        config_path,
        mqtt=mqtt_values(broker),
        db=db,
        group=group,
        http_host=http_host,
        http_port=http_port,
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
    service = Service(cfg).start()
    try:
        click.echo(
            f"serving the fleet from {cfg.mqtt.describe()}; REST API on {service.http.address}",
            err=True,
        )
        service.wait_connected(10.0)
        if not service.connected.is_set():
            click.echo(
                f"warning: {service.broker_problem or 'the broker has not answered'}; "
                "retrying (GET /readyz says when it is connected)",
                err=True,
            )
        while not stop.wait(1.0):
            if service.failed is not None:
                from edgeops.errors import ServiceFailed

                raise ServiceFailed(f"the service stopped: {service.failed}")
    finally:
        service.stop()


url_option = click.option("--url", default=DEFAULT_URL, show_default=True, help="The service.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _out(data: Any, as_json: bool, table: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else table)


@click.group()
def fleet() -> None:
    """The fleet as the service sees it."""


@fleet.command()
@click.option("--fleet", "fleet_name", default=None, help="Only this fleet.")
@url_option
@json_option
def status(fleet_name: str | None, url: str, as_json: bool) -> None:
    """Every device: presence, model, agent version, last seen, active alerts."""
    data = get(url, "/v1/fleet", fleet=fleet_name)
    _out(data, as_json, fleet_table(data) if not as_json else "")


@fleet.command()
@click.argument("device_id")
@click.option("--fleet", "fleet_name", default=None, help="The device's fleet, if ambiguous.")
@url_option
@json_option
def device(device_id: str, fleet_name: str | None, url: str, as_json: bool) -> None:
    """One device: model, latency percentiles, alerts, drift, events."""
    data = get(url, f"/v1/devices/{device_id}", fleet=fleet_name)
    _out(data, as_json, device_report(data) if not as_json else "")


@click.group()
def drift() -> None:
    """Drift distances and verdicts."""


@drift.command()
@click.option("--model", default=None, help="Model name (optionally NAME:VERSION).")
@click.option("--since", default=None, help="30m, 2h, 1d, or a unix time.")
@click.option("--device", default=None, help="Only this device (or _fleet for fleet-wide).")
@url_option
@json_option
def report(
    model: str | None, since: str | None, device: str | None, url: str, as_json: bool
) -> None:
    """The latest verdict per feature, against the training data and since deploy: the
    distances, and why each verdict was reached (value, threshold, noise floor, test)."""
    name, _, version = (model or "").partition(":")
    data = get(
        url,
        "/v1/drift",
        model=name or None,
        version=version or None,
        since=parse_since(since),
        device=device,
    )
    _out(data, as_json, drift_report(data) if not as_json else "")
