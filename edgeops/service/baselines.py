"""The registered models' baselines, as the intake checks windows against them and the drift
engine measures them: a bounded cache keyed by (name, version).

A window of a registered model must fit its baseline: every input and output window names a
feature of the baseline, of the same kind and with as many bins. A window of a model that is not
registered is stored unchecked (its model may be registered later) and not evaluated; the answer
"not registered" is remembered for ``recheck`` seconds, so a stream of windows naming unknown
models costs one database read per name and interval, and at most ``max_entries`` names are
remembered at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from edgeops.core import wire
from edgeops.core.manifest import Manifest
from edgeops.core.profile import (
    CategoricalProfile,
    ClassOutputProfile,
    NumericProfile,
    Profile,
)
from edgeops.core.window.accumulator import input_baselines
from edgeops.service.logs import SafeLog

log = logging.getLogger(__name__)

Shape = tuple[str, int, int]
"""A window's kind and the lengths of its count lists (the second is 0 for one list)."""


def _shape(p: NumericProfile | CategoricalProfile | ClassOutputProfile) -> Shape:
    if isinstance(p, NumericProfile):
        return ("numeric", len(p.counts), 0)
    if isinstance(p, CategoricalProfile):
        return ("categorical", len(p.counts), 0)
    return ("class_output", len(p.class_counts), len(p.confidence_counts))


def window_shape(w: wire.InputWindow | wire.OutputWindow) -> Shape:
    if isinstance(w, wire.NumericWindow):
        return ("numeric", len(w.counts), 0)
    if isinstance(w, wire.CategoricalWindow):
        return ("categorical", len(w.counts), 0)
    return ("class_output", len(w.class_counts), len(w.confidence_counts))


@dataclass(frozen=True)
class Baseline:
    """A registered model's baseline profile, its manifest, and the window shapes it expects."""

    profile: Profile
    manifest: Manifest
    inputs: dict[str, Shape]
    outputs: dict[str, Shape]

    @classmethod
    def of(cls, stored: dict[str, Any]) -> Baseline:
        """The baseline of a registered model's stored manifest."""
        manifest = Manifest.parse(stored)
        profile = Profile.from_dict(manifest.require("baseline"))
        return cls(
            profile,
            manifest,
            {name: _shape(p) for name, p in input_baselines(profile).items()},
            {p.name: _shape(p) for p in profile.outputs},
        )

    def misfit(self, t: wire.Telemetry) -> str | None:
        """Why ``t``'s windows do not fit this baseline, or None when they do."""
        for what, windows, expected in (
            ("input", t.inputs, self.inputs),
            ("output", t.outputs, self.outputs),
        ):
            for w in windows:
                want = expected.get(w.name)
                if want is None:
                    return f"{what} {w.name!r} is not in the baseline"
                # the intake's hot path: a numeric window's one length, compared directly
                if (
                    type(w) is wire.NumericWindow
                    and want[0] == "numeric"
                    and len(w.counts) == want[1]
                ):
                    continue
                got = window_shape(w)
                if got != want:
                    return f"{what} {w.name!r}: {_say(got)}, the baseline has {_say(want)}"
        return None


def _say(shape: Shape) -> str:
    kind, a, b = shape
    return f"{kind} with {a} counts" + (f" and {b} confidence counts" if b else "")


class Baselines:
    """Registered baselines by ``(name, version)``, read from the store when first needed."""

    def __init__(self, store: Any, *, max_entries: int = 256, recheck: float = 5.0) -> None:
        self.store = store
        self.max_entries = max_entries
        self.recheck = recheck
        self._lock = threading.Lock()
        self._found: OrderedDict[tuple[str, str], Baseline] = OrderedDict()
        self._missing: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._log = SafeLog(log, interval=60.0)

    def get(self, name: str, version: str) -> Baseline | None:
        key = (name, version)
        now = time.monotonic()
        with self._lock:
            hit = self._found.get(key)
            if hit is not None:
                self._found.move_to_end(key)
                return hit
            checked = self._missing.get(key)
            if checked is not None and now - checked < self.recheck:
                return None
        manifest = self.store.models.manifest(name, version)
        baseline: Baseline | None = None
        if manifest is not None:
            try:
                baseline = Baseline.of(manifest)
            except (KeyError, TypeError, ValueError) as e:
                self._log.error(
                    f"bad {key}", "registered %s %s has no usable baseline: %s", *key, e
                )
        with self._lock:
            if baseline is None:
                if key not in self._missing:
                    self._log.warning(
                        "missing", "no registered bundle for %s %s: drift not evaluated", *key
                    )
                self._missing[key] = now
                self._missing.move_to_end(key)
                _bound(self._missing, self.max_entries * 16)
            else:
                self._missing.pop(key, None)
                self._found[key] = baseline
                _bound(self._found, self.max_entries)
        return baseline

    def forget_missing(self, name: str, version: str) -> None:
        """A model was just registered here: look it up again at once."""
        with self._lock:
            self._missing.pop((name, version), None)


def _bound(d: OrderedDict[Any, Any], limit: int) -> None:
    while len(d) > limit:
        d.popitem(last=False)
