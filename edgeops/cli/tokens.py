"""``edgeops tokens create|list|revoke``: the REST API's tokens, made and revoked in the service's
database directly (no running service needed: this is how the first admin token is made)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgeops.core.errors import OutputError
from edgeops.core.optional import require

if TYPE_CHECKING:  # the service's modules need its extra: imported when a command runs
    from edgeops.service.auth import Tokens

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The service's TOML config (its db).",
)
_db_option = click.option(
    "--db",
    default=None,
    envvar="EDGEOPS_DB",
    help="The service's database: sqlite:///FILE (default sqlite:///edgeops.db) or "
    "postgresql://… (env EDGEOPS_DB).",
)


class _Tokens:
    """The tokens of the database the options name; closes its engine."""

    def __init__(self, config_path: Path | None, db_url: str | None) -> None:
        require("sqlalchemy", "service")
        from edgeops.service import storage
        from edgeops.service.auth import Tokens
        from edgeops.service.config import load_service_config

        url = load_service_config(config_path, env={}, db=db_url).db
        self.engine = storage.connect(url)
        self.tokens: Tokens = Tokens(storage.Store(self.engine))

    def __enter__(self) -> Tokens:
        return self.tokens

    def __exit__(self, *exc: object) -> None:
        self.engine.dispose()


@click.group()
def tokens() -> None:
    """REST API tokens: roles read < deploy < admin, kept hashed in the service's database.

    \b
    edgeops tokens create --role admin --name ops   print a new token (shown once)
    edgeops tokens list                             names, roles, when made and last used
    edgeops tokens revoke NAME                      refused from now on
    """


@tokens.command()
@click.option(
    "--role",
    type=click.Choice(["read", "deploy", "admin"]),
    required=True,
    help="read: fleet, drift, models, deployments; deploy: also start and abort "
    "deployments; admin: also register bundles.",
)
@click.option("--name", required=True, help="What the token is for (ci, alice, dashboard).")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the token to this new file (mode 0600) instead of printing it.",
)
@_config_option
@_db_option
def create(
    role: str, name: str, out: Path | None, config_path: Path | None, db: str | None
) -> None:
    """Make a token. It is printed once (or written to --out): only its hash is kept."""
    if out is not None and out.exists():
        raise OutputError(f"--out {out}: the file exists; a token is never written over")
    with _Tokens(config_path, db) as store:
        token = store.create(name, role)
    if out is None:
        click.echo(token)
    else:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
        except OSError as e:
            raise OutputError(
                f"--out {out}: {e.strerror or e} (token {name!r} was made: revoke it)"
            ) from None
    click.echo(f"token {name!r} ({role}) made; it is shown this once", err=True)


@tokens.command("list")
@_config_option
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_tokens(config_path: Path | None, db: str | None, as_json: bool) -> None:
    """Every token: name, role, when it was made and last used (never the token)."""
    from edgeops.core.terminal import render

    with _Tokens(config_path, db) as store:
        rows = store.list()
    if as_json:
        out: list[dict[str, Any]] = [
            {"name": r.name, "role": r.role, "created": r.created, "last_used": r.last_used}
            for r in rows
        ]
        click.echo(json.dumps(out, indent=2))
        return

    def when(t: float | None) -> str:
        return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    click.echo(
        render(
            ("name", "role", "created", "last used"),
            [(r.name, r.role, when(r.created), when(r.last_used)) for r in rows],
        )
    )


@tokens.command()
@click.argument("name")
@_config_option
@_db_option
def revoke(name: str, config_path: Path | None, db: str | None) -> None:
    """Delete a token: requests carrying it get 401 from now on."""
    with _Tokens(config_path, db) as store:
        store.revoke(name)
    click.echo(f"token {name!r} revoked", err=True)
