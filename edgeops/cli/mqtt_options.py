"""The broker options every command that talks to MQTT takes (``serve``, ``simulate``): the URL,
the account and TLS. Secrets never need the command line: a password comes from a file
(``--mqtt-password-file``), the config file or ``EDGEOPS_MQTT_PASSWORD``
(:mod:`edgeops.core.broker`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_PATH = click.Path(path_type=Path, dir_okay=False)


def mqtt_options(*, account: bool = True) -> Callable[[F], F]:
    """``--broker``, ``--mqtt-ca`` and ``--mqtt-insecure``; with ``account`` also
    ``--mqtt-username``, ``--mqtt-password-file``, ``--mqtt-cert`` and ``--mqtt-key``."""

    def decorate(f: F) -> F:
        opts = [
            click.option(
                "--broker",
                default=None,
                help="mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS "
                "(default mqtt://localhost:1883; env EDGEOPS_MQTT_URL).",
            ),
            click.option(
                "--mqtt-ca",
                type=_PATH,
                default=None,
                help="CA certificate of the broker's TLS certificate (env EDGEOPS_MQTT_CA).",
            ),
            click.option(
                "--mqtt-insecure",
                is_flag=True,
                default=None,
                help="Accept a broker certificate for another host name (test brokers only).",
            ),
        ]
        if account:
            opts += [
                click.option(
                    "--mqtt-username",
                    default=None,
                    help="Broker account (env EDGEOPS_MQTT_USERNAME).",
                ),
                click.option(
                    "--mqtt-password-file",
                    type=_PATH,
                    default=None,
                    help="File holding the account's password (or env EDGEOPS_MQTT_PASSWORD).",
                ),
                click.option(
                    "--mqtt-cert",
                    type=_PATH,
                    default=None,
                    help="Client certificate for mTLS (env EDGEOPS_MQTT_CERT), with --mqtt-key.",
                ),
                click.option("--mqtt-key", type=_PATH, default=None, help="Its private key."),
            ]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


def mqtt_values(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the options :func:`mqtt_options` added; what they say, as
    :class:`~edgeops.core.broker.BrokerSettings` field names (None: not given)."""
    return {
        "url": kwargs.pop("broker", None),
        "ca": kwargs.pop("mqtt_ca", None),
        "insecure": kwargs.pop("mqtt_insecure", None),
        "username": kwargs.pop("mqtt_username", None),
        "password_file": kwargs.pop("mqtt_password_file", None),
        "cert": kwargs.pop("mqtt_cert", None),
        "key": kwargs.pop("mqtt_key", None),
    }
