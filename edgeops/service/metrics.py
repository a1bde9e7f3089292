"""The service's Prometheus metrics, served at ``GET /metrics`` on the REST API's port (read
role: see :mod:`edgeops.service.api`).

::

    this process's intake, since it started (counters reset with the process)
      edgeops_messages_received_total                 messages taken from the broker
      edgeops_messages_stored_total{kind}             windows, events, statuses stored
      edgeops_messages_rejected_total{reason}         refused, per reason
      edgeops_messages_duplicate_total                already stored (QoS 1 redelivery)
      edgeops_dead_letters_total                      refused messages kept with their reason
      edgeops_events_untyped_total                    events kept whose data is not their kind's
      edgeops_storage_retries_total
      edgeops_evaluations_total, edgeops_evaluation_errors_total
      edgeops_intake_lag_seconds                      how long the oldest queued message waited
      edgeops_intake_queue_messages, edgeops_intake_queue_bytes
      edgeops_evaluation_queue_pending                devices waiting for a drift evaluation
      edgeops_evaluation_duration_seconds             histogram: one evaluation
      edgeops_evaluation_lag_seconds                  histogram: window arrival to its verdict
      edgeops_broker_connected, edgeops_ready
    the database's (every process sharing it reports the same: aggregate with max, not sum)
      edgeops_alerts_active{fleet,kind}
      edgeops_deployments{state}
      edgeops_devices{fleet,presence}                 presence: online | offline

Everything is read when Prometheus scrapes (a collector over :meth:`Service.stats` and three
grouped counts), so the intake's path carries no metric code beyond its existing counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgeops.service.intake import REASONS
from edgeops.service.rollouts import STATES

if TYPE_CHECKING:
    from edgeops.service.server import Service

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ALERT_KINDS = ("input", "output", "concept", "latency", "dataset")
"""The kinds of drift an alert can be about (``edgeops_alerts_active`` has each, zero or not,
for every fleet the service knows)."""


def registry(service: Service) -> CollectorRegistry:
    """A registry of its own with the service's collector (several services in one process,
    as in the tests, never mix)."""
    r = CollectorRegistry()
    r.register(ServiceCollector(service))
    return r


def exposition(r: CollectorRegistry) -> bytes:
    return generate_latest(r)


class ServiceCollector(Collector):
    """See the module docstring."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        yield from self._intake()
        yield from self._database()

    def _intake(self) -> Iterator[Metric]:
        svc = self.service
        s = svc.stats()

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield counter("edgeops_messages_received", "Messages taken from the broker", s["received"])
        stored = CounterMetricFamily(
            "edgeops_messages_stored", "Messages stored, per kind", labels=["kind"]
        )
        stored.add_metric(["window"], s["stored_windows"])
        stored.add_metric(["event"], s["stored_events"])
        stored.add_metric(["status"], s["statuses"])
        yield stored
        rejected = CounterMetricFamily(
            "edgeops_messages_rejected", "Messages refused, per reason", labels=["reason"]
        )
        for reason in sorted(set(REASONS) | set(s["rejected"])):
            rejected.add_metric([reason], s["rejected"].get(reason, 0))
        yield rejected
        yield counter(
            "edgeops_messages_duplicate",
            "Messages already stored (redelivered or repeated)",
            s["duplicates"],
        )
        yield counter(
            "edgeops_events_untyped",
            "Events stored whose data is not their kind's record (unknown kind or misfit)",
            s["untyped_events"],
        )
        yield counter(
            "edgeops_dead_letters", "Refused messages kept with their reason", s["dead_letters"]
        )
        yield counter(
            "edgeops_storage_retries", "Batches retried while the database was away",
            s["storage_retries"],
        )  # fmt: skip
        ev = s["evaluation"]
        yield counter("edgeops_evaluations", "Drift evaluations run", ev["evaluations"] or 0)
        yield counter(
            "edgeops_evaluation_errors", "Drift evaluations that failed", s["evaluation_errors"]
        )
        yield gauge(
            "edgeops_intake_lag_seconds",
            "How long the oldest message waiting to be stored has waited",
            s["queue"]["lag_s"],
        )
        yield gauge(
            "edgeops_intake_queue_messages", "Messages waiting to be stored", s["queue"]["messages"]
        )
        yield gauge(
            "edgeops_intake_queue_bytes", "Payload bytes waiting to be stored", s["queue"]["bytes"]
        )
        yield gauge(
            "edgeops_evaluation_queue_pending",
            "Devices waiting for a drift evaluation",
            ev["pending"] or 0,
        )
        yield from svc.evaluator.duration_seconds.collect()
        yield from svc.evaluator.lag_seconds.collect()
        yield gauge(
            "edgeops_broker_connected", "1 while connected to the broker",
            1.0 if s["broker"]["connected"] else 0.0,
        )  # fmt: skip
        yield gauge(
            "edgeops_ready", "1 when /readyz answers 200", 1.0 if svc.health()["ready"] else 0.0
        )

    def _database(self) -> Iterator[Metric]:
        found = self.service.store.dashboard.counts()
        alerts, deployments, devices = found.alerts, found.deployments, found.devices
        active = GaugeMetricFamily(
            "edgeops_alerts_active", "Active alerts, per fleet and kind", labels=["fleet", "kind"]
        )
        counts = {(fleet, kind): int(n) for fleet, kind, n in alerts}
        fleets = {fleet for fleet, _, _ in devices} | {fleet for fleet, _ in counts}
        for key in sorted({(f, k) for f in fleets for k in ALERT_KINDS} | set(counts)):
            active.add_metric(list(key), counts.get(key, 0))  # zeros too: a series to graph
        yield active
        states = GaugeMetricFamily(
            "edgeops_deployments", "Deployments, per state", labels=["state"]
        )
        for state in sorted(set(STATES) | set(deployments)):
            states.add_metric([state], deployments.get(state, 0))
        yield states
        presence = GaugeMetricFamily(
            "edgeops_devices", "Devices, per fleet and presence", labels=["fleet", "presence"]
        )
        per: dict[tuple[str, str], int] = {}
        for fleet, online, n in devices:
            per[(fleet, "online" if online else "offline")] = int(n)
            per.setdefault((fleet, "offline" if online else "online"), 0)
        for (fleet, p), n in sorted(per.items()):
            presence.add_metric([fleet, p], n)
        yield presence
