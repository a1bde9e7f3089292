"""The on-device side of edgeops: runtimes, the agent daemon, its outbox, MQTT link, model store
and local HTTP API, and the benchmark runner.

Importing this package never imports tensorflow or the converters.
"""

from device_agent.runtimes import Runtime, open_runtime

__all__ = ["Runtime", "open_runtime"]
