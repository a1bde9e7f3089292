"""Staged rollouts, the pure part: the policy, stage sizes, and the verdicts that move a
deployment on or stop it. No I/O; :mod:`edgeops.service.rollouts` feeds these from storage.

A deployment updates its target devices stage by stage. ``stages`` are cumulative: ``1,10,50,100``
means 1 % of the targets, then up to 10 %, 50 % and all of them (at least one device per stage).
A stage ends when each of its devices has *decided*: committed, failed, rolled back on its own,
or timed out. Then:

- the whole deployment so far must reach ``success_threshold`` (committed over decided, with a
  timeout counted as the policy's ``on_timeout`` says);
- then the stage *bakes* for ``bake`` seconds while its devices serve the new model;
- then the regression gates compare the new model's telemetry during the bake with the previous
  model's on the same devices before their update: the error rate must stay under
  ``max_error_rate`` and the p95 latency within ``max_latency_regression`` of the previous p95.

At any time, once ``min_devices`` have decided (or every device sent so far, when fewer), a
failure rate above ``abort_failure_rate`` aborts the deployment at once: a failing canary stops
it without waiting for the rest of its stage. An aborted deployment sends rollback to every
device that committed the new model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from edgeops.core import wire
from edgeops.core.errors import UsageError

OnTimeout = Literal["fail", "skip"]

# A device's state within a deployment.
PENDING = "pending"  # not yet sent
SENT = "sent"  # the update command was published; no answer yet
COMMITTED = "committed"
FAILED = "failed"  # the device refused or failed the update before switching
ROLLED_BACK = "rolled-back"  # the device's own health window rolled it back
TIMEOUT = "timeout"
REVERTING = "reverting"  # a rollback command was sent after an abort
REVERTED = "reverted"
REVERT_FAILED = "revert-failed"
SKIPPED = "skipped"  # never sent: the deployment ended first
IN_PROGRESS = ("downloading", "verifying", "staged", "switching", "health")
"""The device's own update states (its ``update-<state>`` events) between SENT and a decision."""
DECIDED = (COMMITTED, FAILED, ROLLED_BACK, TIMEOUT)


@dataclass(frozen=True)
class RolloutPolicy:
    """How a deployment moves through the fleet and when it stops."""

    stages: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)
    """Cumulative percentages of the targets (or device counts, see :func:`parse_stages`)."""
    stage_counts: bool = False
    """True when ``stages`` are device counts rather than percentages."""
    success_threshold: float = 0.95
    """The committed share of decided devices needed to finish a stage."""
    abort_failure_rate: float = 0.05
    """Abort as soon as the failure share of decided devices is above this."""
    min_devices: int = 5
    """Decided devices needed before the failure rate is judged (fewer when fewer were sent)."""
    bake: float = 30.0
    """Seconds a finished stage serves before its regression gates are judged."""
    timeout: float = 300.0
    """Seconds a device has from the command to committing (or failing) the update."""
    on_timeout: OnTimeout = "fail"
    """A device that times out counts as a failure ("fail") or is left out ("skip")."""
    max_error_rate: float | None = 0.05
    """The new model's inference error rate during the bake (and the device's health window)."""
    max_latency_regression: float | None = None
    """The new model's p95 may be at most this fraction above the previous model's (0.2 = 20 %)."""
    health_predictions: int | None = None
    """The device's health window: this many predictions (the device's default when unset)."""
    health_seconds: float | None = None
    """The device's health window in seconds (the device's default when unset)."""
    resend: float = 15.0
    """Seconds after which an unanswered command is published again (devices ignore repeats)."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise UsageError("--stages: give at least one stage")
        prev = 0.0
        for s in self.stages:
            if not (s > prev) or (not self.stage_counts and s > 100):
                raise UsageError(
                    "--stages must increase"
                    + ("" if self.stage_counts else " and end at most at 100 %")
                )
            prev = s
        for name in ("success_threshold", "abort_failure_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"--{name.replace('_', '-')} must be between 0 and 1")
        if self.min_devices < 1:
            raise UsageError("--min-devices must be at least 1")
        for name in ("bake", "timeout", "resend"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise UsageError(f"--{name} must be a non-negative number of seconds")
        if self.timeout <= 0:
            raise UsageError("--timeout must be positive")
        if self.timeout > wire.MAX_COMMAND_SECONDS:
            raise UsageError(
                f"--timeout must be at most {wire.MAX_COMMAND_SECONDS / 86400:g} days "
                "(the longest a signed command stays valid)"
            )
        if self.on_timeout not in ("fail", "skip"):
            raise UsageError("--on-timeout must be fail or skip")
        for name in ("max_error_rate", "max_latency_regression"):
            v = getattr(self, name)
            if v is not None and not (v >= 0 and math.isfinite(v)):
                raise UsageError(f"--{name.replace('_', '-')} must be a non-negative number")
        if self.max_error_rate is not None and self.max_error_rate > 1:
            raise UsageError("--max-error-rate must be at most 100 %")
        if self.max_latency_regression is not None and self.max_latency_regression > 1000:
            raise UsageError("--max-latency-regression must be at most 1000 (100000 %)")
        n = self.health_predictions
        if n is not None and not 1 <= n <= wire.MAX_HEALTH_PREDICTIONS:
            raise UsageError(
                f"--health-predictions must be between 1 and {wire.MAX_HEALTH_PREDICTIONS}"
            )
        t = self.health_seconds
        if t is not None and not 0 < t <= wire.MAX_HEALTH_SECONDS:
            raise UsageError(
                f"--health-seconds must be more than 0 and at most {wire.MAX_HEALTH_SECONDS:g}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stages": list(self.stages)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutPolicy:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown rollout setting(s): {', '.join(unknown)}")
        values = dict(data)
        if "stages" in values:
            values["stages"] = tuple(float(s) for s in values["stages"])
        try:
            return cls(**values)
        except TypeError as e:
            raise UsageError(f"rollout policy: {e}") from None

    def health(self) -> wire.HealthArgs:
        """The ``health`` argument of the devices' update command (null: the device's own
        setting; a device applies the stricter of this and its floors)."""
        regression = self.max_latency_regression
        return wire.HealthArgs(
            predictions=self.health_predictions,
            seconds=self.health_seconds,
            max_error_rate=self.max_error_rate,
            max_latency_ratio=None if regression is None else 1.0 + regression,
        )


_STAGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|d)?\s*$")


def parse_stages(text: str) -> tuple[tuple[float, ...], bool]:
    """``"1,10,50,100"`` (percentages; ``%`` optional) or ``"2d,20d,200d"`` (device counts)."""
    values: list[float] = []
    kinds: set[bool] = set()
    for part in text.split(","):
        m = _STAGE.match(part)
        if m is None:
            raise UsageError(
                f"--stages {text!r}: use percentages such as 1,10,50,100 or device counts "
                "such as 2d,20d,200d"
            )
        values.append(float(m.group(1)))
        kinds.add(m.group(2) == "d")
    if len(kinds) > 1:
        raise UsageError(f"--stages {text!r}: use percentages or device counts, not both")
    return tuple(values), kinds.pop()


def parse_percent(text: str, option: str) -> float:
    """``"20%"`` or ``"0.2"`` as a fraction."""
    t = text.strip()
    try:
        return float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise UsageError(f"{option} {text!r}: use a fraction (0.2) or a percentage (20%)") from None


def parse_seconds(text: str, option: str) -> float:
    """``"30s"``, ``"5m"``, ``"1h"`` or a plain number of seconds."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", text)
    if m is None:
        raise UsageError(f"{option} {text!r}: use a duration such as 30s, 5m or 1h")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    return float(m.group(1)) * scale


def stage_sizes(targets: int, policy: RolloutPolicy) -> list[int]:
    """The cumulative number of devices updated by the end of each stage (each stage adds at
    least one device; stages that would add none are dropped)."""
    sizes: list[int] = []
    for s in policy.stages:
        n = int(s) if policy.stage_counts else math.ceil(targets * s / 100.0 - 1e-9)
        n = min(targets, max(n, 1))
        if not sizes or n > sizes[-1]:
            sizes.append(n)
    return sizes


# --- verdicts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """The devices of a deployment so far, by outcome."""

    sent: int
    committed: int
    failed: int
    """failed + rolled back + (timed out, when timeouts count as failures)"""
    decided: int
    """committed + failed (timeouts left out under ``on_timeout = "skip"``)"""
    undecided: int
    """sent but not yet decided"""

    @property
    def failure_rate(self) -> float:
        return self.failed / self.decided if self.decided else 0.0

    @property
    def success_rate(self) -> float:
        return self.committed / self.decided if self.decided else 1.0


def tally(states: Iterable[str], policy: RolloutPolicy) -> Tally:
    """Count device states (those sent so far: not pending or skipped)."""
    sent = committed = failed = skipped = undecided = 0
    for s in states:
        if s in (PENDING, SKIPPED):
            continue
        sent += 1
        if s in (COMMITTED, REVERTING, REVERTED, REVERT_FAILED):
            committed += 1
        elif s in (FAILED, ROLLED_BACK):
            failed += 1
        elif s == TIMEOUT:
            if policy.on_timeout == "fail":
                failed += 1
            else:
                skipped += 1
        else:
            undecided += 1
    return Tally(sent, committed, failed, committed + failed, undecided)


def early_abort(t: Tally, policy: RolloutPolicy) -> str | None:
    """Why the deployment must stop now, or None: too many failures among enough decided."""
    enough = min(policy.min_devices, t.sent)
    if t.decided >= enough and t.decided > 0 and t.failure_rate > policy.abort_failure_rate:
        return (
            f"failure rate {t.failed}/{t.decided} = {t.failure_rate:.0%} is above "
            f"{policy.abort_failure_rate:.0%}"
        )
    return None


def stage_verdict(t: Tally, policy: RolloutPolicy) -> str | None:
    """Why a finished stage (nothing undecided) may not go on, or None."""
    if t.success_rate < policy.success_threshold:
        return (
            f"success rate {t.committed}/{t.decided} = {t.success_rate:.0%} is below "
            f"{policy.success_threshold:.0%}"
        )
    return None


@dataclass(frozen=True)
class Serving:
    """A model's telemetry on a set of devices: predictions, errors and p95 latency."""

    predictions: int
    errors: int
    p95_ms: float | None

    @property
    def error_rate(self) -> float:
        total = self.predictions + self.errors
        return self.errors / total if total else 0.0


def regression_verdict(new: Serving, previous: Serving | None, policy: RolloutPolicy) -> str | None:
    """Why the new model's bake fails the regression gates, or None (also when it served
    nothing: there is nothing to judge)."""
    if new.predictions + new.errors == 0:
        return None
    if policy.max_error_rate is not None and new.error_rate > policy.max_error_rate:
        return f"error rate {new.error_rate:.3f} during the bake is above {policy.max_error_rate}"
    most = policy.max_latency_regression
    if (
        most is not None
        and previous is not None
        and previous.p95_ms
        and new.p95_ms is not None
        and new.p95_ms > previous.p95_ms * (1.0 + most)
    ):
        return (
            f"p95 latency {new.p95_ms:.3f} ms is {new.p95_ms / previous.p95_ms:.2f}x the "
            f"previous model's {previous.p95_ms:.3f} ms on the same devices; at most "
            f"{1.0 + most:.2f}x allowed"
        )
    return None


def device_order(devices: Sequence[tuple[str, bool]], seed: str) -> list[str]:
    """The order devices are updated in: online ones first, then a stable pseudo-random order
    (by a hash of ``seed`` and the id), so that canaries are not always the same devices."""
    import hashlib

    def key(d: tuple[str, bool]) -> tuple[bool, str]:
        return (not d[1], hashlib.sha256(f"{seed}/{d[0]}".encode()).hexdigest())

    return [d for d, _ in sorted(devices, key=key)]


def parse_selector(text: str | None) -> dict[str, str] | None:
    """``"site=lab,tier=canary"`` as a dict (device labels a deployment targets)."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise UsageError(f"--selector {text!r}: use LABEL=VALUE[,LABEL=VALUE…]")
        out[k.strip()] = v.strip()
    return out
