"""``edgeops agent run`` and ``edgeops agent replay``: thin wrappers over :mod:`device_agent`.

Works with only the ``agent`` extra installed.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgeops.core.optional import require


@click.group()
def agent() -> None:
    """The on-device agent: serve the current bundle, report telemetry over MQTT."""


@agent.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML config (see device_agent/config.py); EDGEOPS_AGENT_* variables override it.",
)
@click.option("--json-logs", is_flag=True, default=None, help="Log JSON lines to stderr.")
def run(config_path: Path | None, json_logs: bool | None) -> None:
    """Run the agent until SIGTERM or SIGINT."""
    require("paho.mqtt", "agent")
    from device_agent import daemon

    raise SystemExit(daemon.run(config_path, json_logs=json_logs))


@agent.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--rate", default=10.0, show_default=True, help="Rows per second.")
@click.option(
    "--url",
    default="http://127.0.0.1:8470",
    show_default=True,
    help="The agent's local API: http://HOST:PORT or unix:/path/to/socket.",
)
@click.option("--limit", type=int, default=None, help="Send at most this many rows.")
@click.option(
    "--target",
    default=None,
    help="Label column to send back as feedback (default: the model's training target, else "
    "label, target or y, when the data has it).",
)
def replay(data: Path, rate: float, url: str, limit: int | None, target: str | None) -> None:
    """Feed DATA (CSV or NPZ) to a running agent, one row per prediction."""
    from device_agent.client import AgentClient
    from device_agent.replay import replay as run_replay

    def report(row: int, e: Exception) -> None:
        click.echo(f"row {row}: {e}", err=True)

    with AgentClient(url) as client:
        stats = run_replay(data, client, rate=rate, limit=limit, target=target, on_error=report)
    click.echo(
        f"sent {stats.sent} rows in {stats.seconds:.1f} s ({stats.rate:.1f}/s): "
        f"{stats.ok} ok, {stats.failed} failed, {stats.feedback} labels sent back"
    )
