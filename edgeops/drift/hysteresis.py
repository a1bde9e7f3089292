"""Hysteresis: an alert is raised after ``k_raise`` consecutive drifted verdicts and cleared after
``k_clear`` clean ones; an evaluation without a verdict leaves the counts as they are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Transition = Literal["none", "raised", "cleared"]


@dataclass(frozen=True)
class AlertState:
    """Whether an alert is active, and the current run of drifted (``over``) or clean
    (``under``) verdicts; one of the two is always 0."""

    active: bool = False
    over: int = 0
    under: int = 0


def step(
    state: AlertState, drifted: bool | None, k_raise: int = 2, k_clear: int = 2
) -> tuple[AlertState, Transition]:
    """The state after one evaluation: raised after ``k_raise`` consecutive drifted verdicts,
    cleared after ``k_clear`` consecutive clean ones. None (no verdict, e.g. too few samples)
    changes nothing and does not break a run."""
    if k_raise < 1 or k_clear < 1:
        raise ValueError("k_raise and k_clear must be at least 1")
    if drifted is None:
        return state, "none"
    if drifted:
        over = state.over + 1
        if not state.active and over >= k_raise:
            return AlertState(True, over, 0), "raised"
        return AlertState(state.active, over, 0), "none"
    under = state.under + 1
    if state.active and under >= k_clear:
        return AlertState(False, 0, under), "cleared"
    return AlertState(state.active, 0, under), "none"
