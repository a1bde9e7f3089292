"""The agent's Prometheus metrics, served at ``GET /metrics`` on its local API.

::

    edgeops_agent_predictions_total              samples predicted (a batch counts each sample)
    edgeops_agent_errors_total                   samples whose inference failed
    edgeops_agent_bad_inputs_total               calls refused as bad input
    edgeops_agent_prediction_latency_seconds     histogram: one call's preparation and inference
    edgeops_agent_outbox_pending                 telemetry and events waiting for the broker
    edgeops_agent_outbox_pending_bytes
    edgeops_agent_outbox_dropped_total           dropped from a full outbox (oldest first)
    edgeops_agent_model_info{name,version,sha256}  1 for the model served (none: no model)
    edgeops_agent_update_state{state}            1 for the update's state (idle, downloading, ...)
    edgeops_agent_mqtt_connected                 1 while the link to the broker is up
    edgeops_agent_uptime_seconds

Counters are this process's since it started (Prometheus sees a restart as a reset). Each
:class:`AgentMetrics` has a registry of its own: several agents in one process (the simulator)
never share a count.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from device_agent.agent import Agent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UPDATE_STATES = (
    "idle",
    "downloading",
    "verifying",
    "staged",
    "switching",
    "health",
    "committed",
    "rolled-back",
    "failed",
)
"""The values of ``edgeops_agent_update_state``: ``idle`` when no update ever ran, else the
state file's (:mod:`device_agent.updater`)."""
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
"""Seconds: on-device inference runs from well under a millisecond to seconds."""


class AgentMetrics:
    """The counters the prediction path bumps, and what is read from the agent at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.predictions = Counter("edgeops_agent_predictions", "Samples predicted", registry=r)
        self.errors = Counter("edgeops_agent_errors", "Samples whose inference failed", registry=r)
        self.bad_inputs = Counter(
            "edgeops_agent_bad_inputs", "Calls refused as bad input", registry=r
        )
        self.latency = Histogram(
            "edgeops_agent_prediction_latency_seconds",
            "One predict call: preparation and inference",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_AgentState(agent))

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _AgentState(Collector):
    """Gauges read from the agent when scraped: outbox, model, update state, link."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        pending = GaugeMetricFamily(
            "edgeops_agent_outbox_pending", "Messages waiting for the broker's acknowledgement"
        )
        pending_bytes = GaugeMetricFamily(
            "edgeops_agent_outbox_pending_bytes", "Bytes waiting for the broker's acknowledgement"
        )
        dropped = CounterMetricFamily(
            "edgeops_agent_outbox_dropped", "Messages dropped from a full outbox"
        )
        if a.outbox is not None:
            s = a.outbox.stats()
            pending.add_metric([], s.pending)
            pending_bytes.add_metric([], s.pending_bytes)
            dropped.add_metric([], s.dropped)
        yield from (pending, pending_bytes, dropped)

        info = GaugeMetricFamily(
            "edgeops_agent_model_info",
            "The model served (1); absent while none is loaded",
            labels=["name", "version", "sha256"],
        )
        model = a.model
        if model is not None:
            info.add_metric([model.ref.name, model.ref.version, model.ref.sha256 or ""], 1)
        yield info

        state = "idle"
        if a.updater is not None:
            rec = a.updater.state()
            if rec is not None and rec.state in UPDATE_STATES:
                state = str(rec.state)
        update = GaugeMetricFamily(
            "edgeops_agent_update_state", "The model update's state (1 for the current one)",
            labels=["state"],
        )  # fmt: skip
        for s_ in UPDATE_STATES:
            update.add_metric([s_], 1.0 if s_ == state else 0.0)
        yield update

        yield GaugeMetricFamily(
            "edgeops_agent_mqtt_connected",
            "1 while the link to the broker is up",
            value=1.0 if a.link is not None and a.link.connected else 0.0,
        )
        yield GaugeMetricFamily(
            "edgeops_agent_uptime_seconds", "Seconds since the agent started",
            value=time.time() - a.started,
        )  # fmt: skip
