"""Testing helpers for fleets, one module each: a real mosquitto broker (``mosquitto``), the shipped
fleet configuration with a throwaway CA (``fleet_broker``, ``pki``), a telemetry collector
(``collector``), signed commands (``commands``), PostgreSQL (``postgres``), bad bundles
(``bundles``), API tokens (``tokens``) and polling until a condition holds (``waiting``). This
``__init__`` gathers their public names.

``Mosquitto`` starts the ``mosquitto`` binary on a free port with a generated config (persistence
on, so sessions and queued messages survive :meth:`Mosquitto.restart`); :class:`Collector`
subscribes to a fleet's device topics with a persistent MQTT 5 session and keeps every decoded
message, dropping QoS 1 duplicates by ``(device, boot, seq)``.

    with Mosquitto() as broker, Collector(broker.port) as seen:
        ...  # run agents against broker.port
        seen.wait_for(lambda c: len(c.telemetry) >= 3, timeout=30)

:func:`make_test_pki` writes a throwaway CA with a server certificate (valid for ``127.0.0.1``
and ``localhost``) and a client certificate; give it to the broker for a TLS listener, with
passwords and client certificates if wanted, and to the collector to connect to it:

    pki = make_test_pki(tmp_path / "pki")
    with Mosquitto(tls=pki, passwords={"agent": "pw", "ops": "pw2"}) as broker, Collector(
        broker.port, tls=pki, username="ops", password="pw2"
    ) as seen:
        ...  # agents use TlsConfig(ca=pki.ca) and username "agent"

:func:`window_order_problems` checks that each device's windows, in seq order, follow one
another in time without overlapping.

:func:`command` makes a command as the service sends it (numbered and signed by a command key)
and :func:`send_command` publishes one, for tests that play the service's part:

    cmd = command("pi-01", wire.PingArgs(), fleet="lab", key=load_signing_key("command.key"))
    send_command(broker.port, cmd)
"""

from __future__ import annotations

from edgeops.testing.bundles import write_bad_bundles
from edgeops.testing.collector import Collector, WindowTimes, window_order_problems
from edgeops.testing.commands import command, send_command
from edgeops.testing.fleet_broker import DEPLOY, SERVICE_ACCOUNT, FleetBroker
from edgeops.testing.mosquitto import Mosquitto, find_mosquitto
from edgeops.testing.pki import SERVER_HOSTS, TestPki, make_test_pki
from edgeops.testing.ports import free_port
from edgeops.testing.postgres import Postgres
from edgeops.testing.tokens import make_api_token
from edgeops.testing.waiting import until

__all__ = [
    "DEPLOY",
    "SERVER_HOSTS",
    "SERVICE_ACCOUNT",
    "Collector",
    "FleetBroker",
    "Mosquitto",
    "Postgres",
    "TestPki",
    "WindowTimes",
    "command",
    "find_mosquitto",
    "free_port",
    "make_api_token",
    "make_test_pki",
    "send_command",
    "until",
    "window_order_problems",
    "write_bad_bundles",
]
