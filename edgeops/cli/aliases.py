"""Old option names kept for one release: hidden from --help, accepted with a deprecation line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def deprecated(old: str, new: str) -> None:
    """Say once, on stderr, that ``old`` is the old name of ``new``."""
    click.echo(
        f"warning: {old} is deprecated; use {new} (the old name goes in the next release)", err=True
    )


def trusted_key_option(help: str) -> Callable[[F], F]:
    """``--trusted-key`` (repeatable, into ``trusted_keys``), with ``--pubkey`` as its hidden
    old name (into ``pubkeys``; merge them with :func:`trusted_keys`)."""

    def wrap(f: F) -> F:
        f = click.option(
            "--pubkey",
            "pubkeys",
            multiple=True,
            hidden=True,
            type=click.Path(path_type=Path),
            help="Deprecated name of --trusted-key.",
        )(f)
        f = click.option(
            "--trusted-key",
            "trusted_keys",
            multiple=True,
            type=click.Path(path_type=Path),
            metavar="KEY",
            help=help,
        )(f)
        return f

    return wrap


def trusted_keys(kwargs: dict[str, Any]) -> tuple[Path, ...]:
    """Pop ``trusted_keys`` and ``pubkeys``: the keys of both, the old name reported."""
    new: tuple[Path, ...] = kwargs.pop("trusted_keys")
    old: tuple[Path, ...] = kwargs.pop("pubkeys")
    if old:
        deprecated("--pubkey", "--trusted-key")
    return new + old
