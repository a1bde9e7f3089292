"""Commands as the service sends them (numbered and signed by a command key), for tests that
play the service's part."""

from __future__ import annotations

import os
import time
from typing import Any

from edgeops.core import topics, wire


def command(
    device: str,
    args: wire.CommandArgs,
    *,
    fleet: str,
    key: Any = None,
    counter: int | None = None,
    issued: float | None = None,
    lifetime: float = 120.0,
    id: str | None = None,
) -> wire.Command:
    """A command to ``device`` as the service makes it: issued now (or at ``issued``), valid for
    ``lifetime`` seconds, numbered with the time in microseconds unless ``counter`` is given (the
    service's counters are at least that), signed by ``key`` (a
    :class:`~edgeops.core.signing.SigningKey`; None: unsigned)."""
    from edgeops.core.commands import sign

    now = time.time() if issued is None else issued
    cmd = wire.Command(
        id=id or os.urandom(6).hex(),
        fleet=fleet,
        device=device,
        issued=now,
        deadline=now + lifetime,
        counter=time.time_ns() // 1000 if counter is None else counter,
        args=args,
    )
    return cmd if key is None else sign(cmd, key)


def send_command(
    broker: Any, cmd: wire.Command | bytes, *, fleet: str = "", device: str = ""
) -> None:
    """Publish ``cmd`` (QoS 1) to the command topic of ``fleet`` and ``device`` (by default the
    ones ``cmd`` names) and wait for the broker's acknowledgement. ``broker``: a port on 127.0.0.1,
    or :class:`~edgeops.core.broker.BrokerSettings` (an account allowed to publish commands)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edgeops.core.broker import BrokerSettings

    settings = broker if isinstance(broker, BrokerSettings) else None
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if settings is not None:
        settings.configure(c)
        host, port = settings.address
    else:
        host, port = "127.0.0.1", int(broker)
    c.connect(host, port)
    c.loop_start()
    try:
        if isinstance(cmd, wire.Command):
            topic = topics.cmd(fleet or cmd.fleet, device or cmd.device)
            payload = wire.encode(cmd)
        else:
            topic, payload = topics.cmd(fleet, device), cmd
        c.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()
