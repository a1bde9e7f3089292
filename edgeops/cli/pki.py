"""``edgeops pki``: a small CA for the fleet's broker: the CA, the broker's certificate, and client
certificates named by device id or service account (:mod:`edgeops.service.pki`)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeops.core.errors import UsageError
from edgeops.core.terminal import render_pairs


@click.group()
def pki() -> None:
    """A certificate authority for the broker's TLS and mTLS listeners."""


@pki.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for ca.crt and ca.key (ca.key mode 0600: keep it off the broker).",
)
@click.option("--name", default="edgeops fleet CA", show_default=True, help="Common name.")
@click.option("--days", type=int, default=3650, show_default=True, help="Validity.")
@click.option("--force", is_flag=True, help="Replace an existing CA in --out.")
def ca(out: Path, name: str, days: int, force: bool) -> None:
    """Make the fleet's CA."""
    from edgeops.service import pki as lib

    if (out / "ca.key").exists() and not force:
        raise UsageError(
            f"{out / 'ca.key'} exists: a new CA would orphan its certificates "
            "(--force to replace it)"
        )
    made = lib.make_ca(out, name, days=days)
    click.echo(render_pairs([("CA certificate", made.cert), ("CA key (secret)", made.key)]))


@pki.command()
@click.argument("name")
@click.option(
    "--ca",
    "ca_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The CA's directory (edgeops pki ca --out).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for NAME.crt and NAME.key.",
)
@click.option(
    "--server",
    "hosts",
    multiple=True,
    metavar="HOST",
    help="A server certificate for this DNS name or IP address (repeatable): the broker's. "
    "Without it, a client certificate whose common name NAME is the broker user name.",
)
@click.option("--days", type=int, default=825, show_default=True, help="Validity.")
def issue(name: str, ca_dir: Path, out: Path, hosts: tuple[str, ...], days: int) -> None:
    """Issue a certificate: the broker's (--server HOST) or a client's named NAME (a device id,
    or edgeops-service)."""
    from edgeops.service import pki as lib

    made = lib.issue(lib.ca_in(ca_dir), out, name, server_hosts=hosts, days=days)
    click.echo(render_pairs([("certificate", made.cert), ("key (secret)", made.key)]))
