"""``edgeops agent replay``: feed a CSV or NPZ file to a running agent at a steady rate.

Each row becomes one predict call (a record for tabular models, an array for image models). When
the file has a label column (``--target``; by default the column the model was trained to
predict, as its bundle records, else ``label``, ``target`` or ``y``), the label is sent back as
feedback for that prediction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.client import AgentClient
from edgeops.core.columns import Table, read_table
from edgeops.core.errors import EdgeOpsError, UsageError


@dataclass(frozen=True)
class ReplayStats:
    sent: int
    ok: int
    failed: int
    feedback: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def _plain(v: Any) -> Any:
    item = v.item() if hasattr(v, "item") else v
    if isinstance(item, float) and math.isnan(item):
        return None
    if item == "":
        return None
    return item


def replay(
    path: str | Path,
    client: AgentClient,
    *,
    rate: float,
    limit: int | None = None,
    target: str | None = None,
    on_error: Callable[[int, EdgeOpsError], None] | None = None,
) -> ReplayStats:
    """Send the rows of ``path`` to the agent behind ``client``, ``rate`` rows per second."""
    if rate <= 0:
        raise UsageError("--rate must be positive")
    table: Table = read_table(path)
    info = client.model()
    pre = info["preprocessing"]
    candidates = (info.get("target"), "label", "target", "y")  # the model's own first
    label_col = (
        target if target is not None else next((c for c in candidates if c and c in table), None)
    )
    if target is not None and target not in table:
        raise UsageError(f"{path}: no column '{target}' for feedback")
    n = len(table) if limit is None else min(limit, len(table))
    sent = ok = failed = fed = 0
    start = time.monotonic()
    for i in range(n):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent += 1
        try:
            if pre["kind"] == "tabular":
                record = {
                    c["name"]: _plain(table[c["name"]][i])
                    for c in pre["columns"]
                    if c["name"] in table
                }
                result = client.predict([record], kind="records")
            else:
                result = client.predict(table[pre["input"]][i].tolist(), kind="inputs")
            ok += 1
        except EdgeOpsError as e:
            failed += 1
            if on_error is not None:
                on_error(i, e)
            continue
        if label_col is not None:
            label = _plain(table[label_col][i])
            if isinstance(label, float) and label.is_integer() and info["task"] == "classification":
                label = str(int(label))
            fed += client.feedback([(result["ids"][0], label)])["accepted"]
    return ReplayStats(sent, ok, failed, fed, time.monotonic() - start)
