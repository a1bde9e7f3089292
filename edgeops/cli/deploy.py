"""``edgeops deploy BUNDLE …``, ``edgeops deploy status|abort|list`` and ``edgeops models list``:
a client of the service's REST API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from edgeops.cli.api_options import api_client, api_options
from edgeops.core.errors import AccessDenied, DeploymentAborted, EdgeOpsError, UsageError
from edgeops.service.report import (
    ServiceClient,
    deployment_report,
    deployments_table,
    models_table,
)
from edgeops.service.rollout_policy import (
    RolloutPolicy,
    parse_percent,
    parse_seconds,
    parse_selector,
    parse_stages,
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class _DefaultStart(click.Group):
    """``deploy BUNDLE …`` is ``deploy start BUNDLE …``; other words name subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultStart)
def deploy() -> None:
    """Roll a bundle out to a fleet in stages, with health gates and automatic rollback.

    \b
    edgeops deploy BUNDLE --fleet F [options]   start (BUNDLE: a file, or NAME-VERSION)
    edgeops deploy status ID                    where it is, device by device
    edgeops deploy abort ID                     stop it; updated devices roll back
    edgeops deploy list                         every deployment
    """


@deploy.command()
@click.argument("bundle")
@click.option("--fleet", required=True, help="The fleet to deploy to.")
@click.option("--devices", default=None, help="Only these devices (comma-separated ids).")
@click.option("--selector", default=None, help="Only devices with these labels: k=v[,k=v].")
@click.option(
    "--stages",
    default="1,10,50,100",
    show_default=True,
    help="Cumulative percentages of the targets, or device counts (2d,20d,200d).",
)
@click.option("--success-threshold", type=float, default=0.95, show_default=True)
@click.option("--abort-failure-rate", type=float, default=0.05, show_default=True)
@click.option(
    "--min-devices",
    type=int,
    default=5,
    show_default=True,
    help="Decided devices before the failure rate is judged.",
)
@click.option("--bake", default="30s", show_default=True, help="Serving time per stage.")
@click.option("--timeout", default="5m", show_default=True, help="Per device.")
@click.option(
    "--on-timeout",
    type=click.Choice(["fail", "skip"]),
    default="fail",
    show_default=True,
    help="A device that times out counts as a failure, or is left out.",
)
@click.option("--max-error-rate", default="0.05", show_default=True)
@click.option("--max-latency-regression", default=None, help="e.g. 20%: p95 against before.")
@click.option("--health-predictions", type=int, default=None, help="Device health window.")
@click.option("--health-seconds", type=float, default=None, help="Device health window.")
@click.option("--wait/--no-wait", default=False, help="Follow it to the end (exit 16: aborted).")
@api_options
@json_option
def start(
    bundle: str,
    fleet: str,
    devices: str | None,
    selector: str | None,
    stages: str,
    success_threshold: float,
    abort_failure_rate: float,
    min_devices: int,
    bake: str,
    timeout: str,
    on_timeout: str,
    max_error_rate: str,
    max_latency_regression: str | None,
    health_predictions: int | None,
    health_seconds: float | None,
    wait: bool,
    as_json: bool,
    **api: Any,
) -> None:
    """Start a staged deployment of BUNDLE (a bundle file, uploaded first, or a registered
    NAME-VERSION). Needs a deploy token; uploading a file needs an admin token."""
    client = api_client(api)
    stage_values, counts = parse_stages(stages)
    policy = RolloutPolicy(
        stages=stage_values,
        stage_counts=counts,
        success_threshold=success_threshold,
        abort_failure_rate=abort_failure_rate,
        min_devices=min_devices,
        bake=parse_seconds(bake, "--bake"),
        timeout=parse_seconds(timeout, "--timeout"),
        on_timeout="skip" if on_timeout == "skip" else "fail",
        max_error_rate=parse_percent(max_error_rate, "--max-error-rate"),
        max_latency_regression=None
        if max_latency_regression is None
        else parse_percent(max_latency_regression, "--max-latency-regression"),
        health_predictions=health_predictions,
        health_seconds=health_seconds,
    )
    request: dict[str, Any] = {
        "bundle": bundle,
        "fleet": fleet,
        "devices": [d.strip() for d in devices.split(",") if d.strip()] if devices else [],
        "selector": parse_selector(selector),
        "policy": policy.to_dict(),
    }
    path = Path(bundle)
    if path.suffix == ".bundle" or path.exists():
        registered = client.upload("/v1/models", path)
        request["bundle"] = f"{registered['name']}:{registered['version']}"
    status = client.post("/v1/deployments", request)
    if not wait:
        click.echo(json.dumps(status, indent=2, default=str) if as_json else status["id"])
        return
    click.echo(
        f"deployment {status['id']}: {status['model_name']} {status['model_version']} to "
        f"{sum(status['counts'].values())} devices in stages {status['stage_sizes']}",
        err=True,
    )
    final = follow(client, status["id"])
    click.echo(json.dumps(final, indent=2, default=str) if as_json else deployment_report(final))
    if final["state"] != "completed":
        raise DeploymentAborted(f"deployment {final['id']} aborted: {final.get('reason')}")


def follow(
    client: ServiceClient, dep_id: str, interval: float = 1.0, patience: float = 120.0
) -> dict[str, Any]:
    """Print a deployment's history as it grows until it ends; its final status. A service
    that cannot be reached for up to ``patience`` seconds (a restart) is waited for."""
    shown = 0
    unreachable_since: float | None = None
    while True:
        try:
            status = client.get(f"/v1/deployments/{quote(dep_id, safe='')}")
            unreachable_since = None
        except (UsageError, AccessDenied):
            raise
        except EdgeOpsError as e:  # the service restarting: the deployment resumes with it
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > patience:
                raise
            click.echo(f"{e}; retrying", err=True)
            time.sleep(interval * 2)
            continue
        for t, _, what in status["history"][shown:]:
            click.echo(f"{time.strftime('%H:%M:%S', time.localtime(t))}  {what}", err=True)
        shown = len(status["history"])
        if status["state"] in ("completed", "aborted"):
            return dict(status)
        time.sleep(interval)


@deploy.command()
@click.argument("deployment_id")
@api_options
@json_option
def status(deployment_id: str, as_json: bool, **api: Any) -> None:
    """A deployment's state, stage, history and every device's state."""
    data = api_client(api).get(f"/v1/deployments/{quote(deployment_id, safe='')}")
    click.echo(json.dumps(data, indent=2, default=str) if as_json else deployment_report(data))


@deploy.command()
@click.argument("deployment_id")
@api_options
@json_option
def abort(deployment_id: str, as_json: bool, **api: Any) -> None:
    """Stop a deployment; the devices it updated are rolled back (needs a deploy token)."""
    data = api_client(api).post(f"/v1/deployments/{quote(deployment_id, safe='')}/abort")
    click.echo(json.dumps(data, indent=2, default=str) if as_json else deployment_report(data))


@deploy.command("list")
@click.option("--active", is_flag=True, help="Only running or aborting deployments.")
@api_options
@json_option
def list_deployments(active: bool, as_json: bool, **api: Any) -> None:
    """Every deployment, newest first."""
    data = api_client(api).get("/v1/deployments", active="1" if active else None)
    rows = data["deployments"]
    click.echo(json.dumps(rows, indent=2, default=str) if as_json else deployments_table(rows))


@click.group()
def models() -> None:
    """Registered model bundles."""


@models.command("list")
@api_options
@json_option
def list_models(as_json: bool, **api: Any) -> None:
    """Versions, lineage (parent, run, format, accuracy) and the devices running each."""
    rows = api_client(api).get("/v1/models")["models"]
    click.echo(json.dumps(rows, indent=2, default=str) if as_json else models_table(rows))
