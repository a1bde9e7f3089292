"""The options every command that calls the service's REST API takes (``fleet``, ``drift``,
``deploy``, ``models``): where it is, the token, and the CA of an ``https://`` service. The token
need not appear on a command line: ``--token-file``, ``EDGEOPS_TOKEN`` or ``EDGEOPS_TOKEN_FILE``
give it too (:meth:`edgeops.service.report.ServiceClient.resolve`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgeops.service.report import CA_ENV, DEFAULT_URL, TOKEN_ENV, TOKEN_FILE_ENV, ServiceClient

F = TypeVar("F", bound=Callable[..., Any])

_PATH = click.Path(path_type=Path, dir_okay=False)


def api_options(f: F) -> F:
    """``--url``, ``--token``, ``--token-file`` and ``--ca``."""
    opts = [
        click.option(
            "--url",
            default=DEFAULT_URL,
            envvar="EDGEOPS_URL",
            show_default=True,
            help="The service (env EDGEOPS_URL).",
        ),
        click.option(
            "--token",
            default=None,
            help=f"REST API token (or env {TOKEN_ENV}; a token on a command line shows in ps).",
        ),
        click.option(
            "--token-file",
            type=_PATH,
            default=None,
            help=f"File holding the token (or env {TOKEN_FILE_ENV}).",
        ),
        click.option(
            "--ca",
            type=_PATH,
            default=None,
            help=f"CA certificate of an https:// service (env {CA_ENV}; default: the system's).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def api_client(kwargs: dict[str, Any]) -> ServiceClient:
    """Pop the options :func:`api_options` added; the client they describe."""
    return ServiceClient.resolve(
        kwargs.pop("url"),
        token=kwargs.pop("token"),
        token_file=kwargs.pop("token_file"),
        ca=kwargs.pop("ca"),
    )
