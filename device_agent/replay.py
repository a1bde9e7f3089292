"""``edgeops agent replay``: feed a CSV or NPZ file to a running agent at a steady rate.

Each row becomes one predict call (a record for tabular models, an array for image models, the
named inputs of one sample for a model with several, from an NPZ with one array per input name).
When the file has a label column (``--target``; by default the column the model was trained to
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
from edgeops.core.columns import Table, load_npz, read_table
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
    info = client.model()
    pre = info["preprocessing"]
    table: Table | _Named = (
        _named(Path(path), pre) if pre["kind"] == "tensors" else read_table(path)
    )
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
            if isinstance(table, _Named):
                result = client.predict(table.sample(i), kind="inputs")
            elif pre["kind"] == "tabular":
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


@dataclass(frozen=True)
class _Named:
    """An NPZ of one array per input name (a 0-d array: one value for every sample), and labels
    under ``y``, ``label`` or ``target``."""

    arrays: dict[str, Any]
    rows: int

    def __len__(self) -> int:
        return self.rows

    def __contains__(self, name: object) -> bool:
        return name in self.arrays

    def __getitem__(self, name: str) -> Any:
        return self.arrays[name]

    def sample(self, i: int) -> dict[str, Any]:
        return {k: (v[i] if v.ndim else v).tolist() for k, v in self.inputs.items()}

    @property
    def inputs(self) -> dict[str, Any]:
        return {k: v for k, v in self.arrays.items() if k not in ("label", "target", "y")}


def _named(path: Path, pre: dict[str, Any]) -> _Named:
    if path.suffix.lower() != ".npz":
        raise UsageError(f"{path}: a model with several inputs replays an .npz of named arrays")
    arrays = load_npz(path)
    names = [t["name"] for t in pre["inputs"]]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UsageError(f"{path}: no array for input {', '.join(repr(m) for m in missing)}")
    kept = {k: v for k, v in arrays.items() if k in names or k in ("label", "target", "y")}
    rows = {len(v) for v in kept.values() if v.ndim}
    if len(rows) != 1:
        raise UsageError(f"{path}: the arrays differ in their number of samples (or hold none)")
    return _Named(kept, rows.pop())
