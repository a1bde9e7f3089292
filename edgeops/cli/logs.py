"""``--json-logs`` for the long-running commands (``serve``, ``simulate``, ``agent run``): their
progress lines and every library's log records, native libraries' lines included, as JSON lines
on stderr (:mod:`edgeops.core.logstream`); without it, progress lines as plain text."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import click

from edgeops.core import logstream

json_logs_option = click.option(
    "--json-logs", is_flag=True, help="Log JSON lines to stderr (progress and library logs)."
)

Say = Callable[..., None]


@contextlib.contextmanager
def log_output(json_logs: bool, name: str = "edgeops") -> Iterator[Say]:
    """A ``say(message, level=logging.INFO)`` for progress lines, with native libraries' stderr
    routed through logging meanwhile. With ``json_logs`` the root logger writes JSON lines at
    the level ``-v`` chose (at least info, so that progress shows)."""
    log = logging.getLogger(name)
    if json_logs:
        root = logging.getLogger()
        logstream.configure(min(root.level or logging.WARNING, logging.INFO), json_lines=True)

    def say(message: str, level: int = logging.INFO) -> None:
        if json_logs:
            log.log(level, "%s", message)
        else:
            click.echo(message, err=True)

    with logstream.route_native_stderr():
        yield say
