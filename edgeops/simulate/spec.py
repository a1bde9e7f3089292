"""Drift specifications and the other option strings of ``edgeops simulate``, parsed into types.

A drift spec is comma-separated ``key=value`` pairs; ``kind`` is required::

    kind=covariate,amount=2.0,devices=0-9,after=30
    kind=noise,amount=0.5,devices=25%,features=alcohol+hue
    kind=missing,amount=0.3,devices=0+3+7
    kind=label,amount=0.9,class=3

==========  ===================================================================================
key         meaning
==========  ===================================================================================
kind        ``covariate`` (add ``amount`` standard deviations: numeric features, or brighten
            images), ``noise`` (gaussian noise of ``amount`` standard deviations), ``missing``
            (a fraction ``amount`` of cells blanked: empty table cells, black pixels),
            ``label`` (rows resampled so that a fraction ``amount`` of them have one class)
amount      as above; defaults 2.0, 1.0, 0.3 and 0.9
devices     ``all`` (the default), or ``+``-joined device indices ``N``, inclusive ranges
            ``A-B`` and shares of the fleet ``P%`` (its first P percent, at least one device)
after       seconds after the fleet starts; 0 (the default) means from the start
features    ``+``-joined tabular feature names (covariate, noise, missing); default: all
class       label drift: the class made to dominate (default: the first in sorted order; for a
            numeric target, its quartiles ``q1`` to ``q4``)
==========  ===================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from edgeops.core.errors import UsageError

DriftKind = Literal["covariate", "noise", "missing", "label"]
KINDS: tuple[DriftKind, ...] = get_args(DriftKind)
DEFAULT_AMOUNT: Mapping[DriftKind, float] = {
    "covariate": 2.0,
    "noise": 1.0,
    "missing": 0.3,
    "label": 0.9,
}
EXAMPLE = "kind=covariate,amount=2,devices=0-9[,after=30]"
_KEYS = ("kind", "amount", "devices", "after", "features", "class")


@dataclass(frozen=True)
class DriftSpec:
    """One kind of drift on a set of devices, from some time on. See the module docstring."""

    kind: DriftKind
    amount: float
    devices: str = "all"
    """The device selection as written (``all``, ``0-9``, ``0+4+8``, ``25%``)."""
    after: float = 0.0
    """Seconds after the fleet's start at which the drift begins."""
    features: tuple[str, ...] = ()
    """Tabular features to change (covariate, noise, missing); empty for all of them."""
    label: str | None = None
    """Label drift: the class made to dominate; None for the first class in sorted order."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"drift kind {self.kind!r}: use one of {', '.join(KINDS)}")
        a = self.amount
        if not math.isfinite(a):
            raise UsageError(f"drift amount {a!r} must be a finite number")
        if self.kind == "noise" and a <= 0:
            raise UsageError("noise drift: amount (standard deviations) must be positive")
        if self.kind in ("missing", "label") and not 0 < a <= 1:
            raise UsageError(f"{self.kind} drift: amount must be a fraction in (0, 1]")
        if not (math.isfinite(self.after) and self.after >= 0):
            raise UsageError("drift 'after' must be a number of seconds, 0 or more")
        if self.features and self.kind == "label":
            raise UsageError("label drift takes no 'features'")
        if self.label is not None and self.kind != "label":
            raise UsageError("'class' is for label drift only")
        parse_devices(self.devices, None)  # the syntax; the range is checked against a fleet

    def device_indices(self, fleet_size: int) -> tuple[int, ...]:
        """The selected device indices, sorted, for a fleet of ``fleet_size`` devices."""
        return parse_devices(self.devices, fleet_size)

    def __str__(self) -> str:
        parts = [f"kind={self.kind}", f"amount={self.amount:g}", f"devices={self.devices}"]
        if self.after:
            parts.append(f"after={self.after:g}")
        if self.features:
            parts.append(f"features={'+'.join(self.features)}")
        if self.label is not None:
            parts.append(f"class={self.label}")
        return ",".join(parts)


def parse_drift(text: str) -> DriftSpec:
    """A :class:`DriftSpec` from its text form; :class:`UsageError` (one line) when malformed."""
    try:
        return _parse_drift(text)
    except UsageError as e:
        raise UsageError(f"--drift {text!r}: {e.message} (expected e.g. '{EXAMPLE}')") from None


def _parse_drift(text: str) -> DriftSpec:
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key or not value:
            raise UsageError(f"{part.strip()!r} is not key=value")
        if key not in _KEYS:
            raise UsageError(f"unknown key {key!r} (keys: {', '.join(_KEYS)})")
        if key in fields:
            raise UsageError(f"{key!r} is given twice")
        fields[key] = value
    kind = fields.get("kind")
    if kind is None:
        raise UsageError("'kind' is missing")
    if kind not in KINDS:
        raise UsageError(f"unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    features = tuple(f for f in fields.get("features", "").split("+") if f)
    if "features" in fields and len(features) != fields["features"].count("+") + 1:
        raise UsageError(f"features {fields['features']!r}: an empty feature name")
    return DriftSpec(
        kind=kind,
        amount=_number(fields, "amount", DEFAULT_AMOUNT[kind]),
        devices=fields.get("devices", "all"),
        after=_number(fields, "after", 0.0),
        features=features,
        label=fields.get("class"),
    )


def _number(fields: Mapping[str, str], key: str, default: float) -> float:
    if key not in fields:
        return default
    try:
        return float(fields[key])
    except ValueError:
        raise UsageError(f"{key} {fields[key]!r} is not a number") from None


def parse_devices(text: str, fleet_size: int | None) -> tuple[int, ...]:
    """Device indices from ``all`` or ``+``-joined ``N``, ``A-B`` and ``P%`` parts.

    With ``fleet_size`` None only the syntax is checked (and an empty tuple returned).
    """
    text = text.strip()
    if text == "all":
        return tuple(range(fleet_size or 0))
    chosen: set[int] = set()
    for part in text.split("+"):
        part = part.strip()
        try:
            if part.endswith("%"):
                share = float(part[:-1])
                if not 0 < share <= 100:
                    raise UsageError(f"devices {part!r}: a share must be in (0, 100] %")
                if fleet_size is not None:
                    chosen.update(range(max(1, math.ceil(fleet_size * share / 100 - 1e-9))))
                continue
            lo_text, dash, hi_text = part.partition("-")
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
        except ValueError:
            raise UsageError(
                f"devices {text!r}: use all, or N, A-B and P% joined by '+' (e.g. 0-4+9)"
            ) from None
        if lo < 0 or hi < lo:
            raise UsageError(f"devices {part!r}: not a range of device indices (0 or more)")
        if fleet_size is not None:
            if hi >= fleet_size:
                raise UsageError(
                    f"devices {part!r}: the fleet has {fleet_size} device(s), "
                    f"indices 0 to {fleet_size - 1}"
                )
            chosen.update(range(lo, hi + 1))
    return tuple(sorted(chosen))


def parse_labels(text: str | None) -> dict[str, str]:
    """Device labels from ``key=value,key=value``; :class:`UsageError` when malformed."""
    labels: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--labels {text!r}: {part.strip()!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels
