"""One verdict type from the maths to storage and alerts.

Every check the service runs on a span ends as a :class:`Verdict`: a feature's distribution
(:class:`~edgeops.drift.checks.FeatureDrift`), the dataset's, concept drift
(:class:`~edgeops.drift.concept.ConceptDrift`) and the latency budget
(:class:`~edgeops.drift.latency.LatencyCheck`). A verdict knows its drift-table columns
(:meth:`Verdict.columns`), the key of its hysteresis state (:meth:`Verdict.key`) and what an
alert raised by it carries (``detail``), so a new check is declared here once and flows to the
database, the API, the alerts and the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edgeops.drift.checks import FeatureDrift
from edgeops.drift.concept import ConceptDrift
from edgeops.drift.latency import LatencyCheck
from edgeops.drift.span import SpanDrift

__all__ = ["Verdict", "VerdictKind", "span_verdicts"]

VerdictKind = Literal["input", "output", "dataset", "concept", "latency"]


@dataclass(frozen=True)
class Verdict:
    """One check's verdict on a span: drifted, clean, or None (no verdict: too few values)."""

    reference: str
    """What the span was compared with: ``training`` or ``deploy`` for distributions, ``""``
    for concept drift and latency."""
    kind: VerdictKind
    feature: str
    """The feature or output name; ``*`` for the dataset, ``accuracy``, ``p95``."""
    drifted: bool | None
    samples: int | None = None
    """The values the verdict rests on; None: the span's row count."""
    js: float | None = None
    psi: float | None = None
    wasserstein: float | None = None
    linf: float | None = None
    value: float | None = None
    """The measured value of a one-number check: a missing rate, an accuracy, a p95."""
    reason: str | None = None
    checks: tuple[dict[str, Any], ...] | None = None
    """Each test of a feature with its value, threshold and noise floor."""
    detail: Mapping[str, Any] = field(default_factory=dict)
    """What an alert raised by this verdict carries."""

    @classmethod
    def of_feature(cls, reference: str, kind: VerdictKind, f: FeatureDrift) -> Verdict:
        detail = {
            "js": f.js,
            "psi": f.psi,
            "wasserstein": f.wasserstein,
            "linf": f.linf,
            "samples": f.samples,
            "missing_rate": f.missing_rate,
            "reason": f.reason,
        }
        return cls(
            reference,
            kind,
            f.feature,
            f.verdict,
            samples=f.samples,
            js=f.js,
            psi=f.psi,
            wasserstein=f.wasserstein,
            linf=f.linf,
            value=f.missing_rate,
            reason=f.reason,
            checks=tuple(c.to_dict() for c in f.checks),
            detail={k: v for k, v in detail.items() if v is not None},
        )

    @classmethod
    def of_dataset(cls, reference: str, span: SpanDrift) -> Verdict:
        return cls(reference, "dataset", "*", span.dataset_verdict)

    @classmethod
    def of_concept(cls, c: ConceptDrift) -> Verdict:
        detail = {
            "accuracy": c.accuracy,
            "upper": c.upper,
            "reference": c.reference,
            "test_rows": c.reference_count,
            "reason": c.reason,
        }
        return cls(
            "",
            "concept",
            "accuracy",
            c.verdict,
            samples=c.total,
            value=c.accuracy,
            reason=c.reason,
            detail=detail,
        )

    @classmethod
    def of_latency(cls, lat: LatencyCheck) -> Verdict:
        return cls(
            "",
            "latency",
            "p95",
            lat.over,
            value=lat.p95,
            reason=f"p95 {lat.p95} ms against a budget of {lat.budget} ms",
            detail={"p95_ms": lat.p95, "budget_ms": lat.budget},
        )

    def columns(self) -> dict[str, Any]:
        """This verdict's columns of a drift row (the evaluation's context is added by the
        caller: when, where, which model)."""
        return {
            "reference": self.reference,
            "kind": self.kind,
            "feature": self.feature,
            "drifted": self.drifted,
            "js": self.js,
            "psi": self.psi,
            "wasserstein": self.wasserstein,
            "linf": self.linf,
            "value": self.value,
            "reason": self.reason,
            "checks": None if self.checks is None else list(self.checks),
        }

    def key(self, *scope: str) -> str:
        """The key of this verdict's hysteresis state within ``scope`` (scope, fleet, device,
        model name, version)."""
        return "|".join((*scope, self.reference, self.kind, self.feature))


def span_verdicts(results: Mapping[str, SpanDrift]) -> list[Verdict]:
    """Every feature's, output's and the dataset's verdict of each reference's span."""
    out: list[Verdict] = []
    for reference, span in results.items():
        out += [Verdict.of_feature(reference, "input", f) for f in span.features]
        out += [Verdict.of_feature(reference, "output", f) for f in span.outputs]
        out.append(Verdict.of_dataset(reference, span))
    return out
