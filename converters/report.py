"""The conversion report: what a conversion produced and what it cost, as JSON and as a table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from converters.fidelity import Fidelity
from converters.sensitivity import NodeError, by_op_type
from converters.targets import OpReport
from device_agent.benchmark import LatencySummary
from edgeops.core.errors import GateError
from edgeops.core.tensors import TensorInfo
from edgeops.core.terminal import fmt, render, render_pairs

SCHEMA = "edgeops.conversion-report/1"


class Status(StrEnum):
    ACCEPTED = "accepted"
    """Every gate passed."""
    REJECTED = "rejected"
    """A gate failed: the artifact is kept under a ``.rejected`` name for inspection."""
    UNGATED = "ungated"
    """No gate was set."""


@dataclass(frozen=True)
class ConversionReport:
    status: Status
    reasons: tuple[str, ...]
    created: str
    source: dict[str, Any]
    """path, kind, bytes."""
    artifact: dict[str, Any]
    """file (name beside the report), format, bytes, sha256."""
    settings: dict[str, Any]
    """The resolved conversion settings."""
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    ops: OpReport
    latency: LatencySummary
    fidelity: Fidelity | None
    quantization: tuple[dict[str, Any], ...] = ()
    """Scale and zero point at the model's boundary (see ``targets.boundary_quantization``)."""
    versions: dict[str, str] = field(default_factory=dict)
    latency_shapes: dict[str, list[int]] = field(default_factory=dict)
    """The input shapes the latency was measured at (a validation or calibration sample's)."""
    steps: tuple[str, ...] = ()
    """What the conversion did beyond the plain recipe: fallbacks, upgrades, exclusions."""
    sensitivity: tuple[NodeError, ...] = ()
    """Per node of a quantized ONNX model, the error it adds (``--sensitivity``), worst first."""

    @property
    def size_ratio(self) -> float:
        return float(self.artifact["bytes"]) / float(self.source["bytes"])

    def raise_for_status(self) -> None:
        """Raise :class:`GateError` if the model was rejected by a gate."""
        if self.status is Status.REJECTED:
            raise GateError(
                f"rejected: {'; '.join(self.reasons)} (kept as {self.artifact['file']})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "status": self.status.value,
            "reasons": list(self.reasons),
            "created": self.created,
            "source": self.source,
            "artifact": self.artifact,
            "size_ratio": self.size_ratio,
            "settings": self.settings,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "ops": {
                "counts": self.ops.counts,
                "checked_for_target": self.ops.checked,
                "unsupported": [asdict(i) for i in self.ops.issues],
            },
            "quantization": list(self.quantization),
            "latency": {**asdict(self.latency), "input_shapes": self.latency_shapes},
            "steps": list(self.steps),
            "fidelity": None if self.fidelity is None else self.fidelity.to_dict(),
            "sensitivity": [asdict(n) for n in self.sensitivity],
            "versions": self.versions,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, default=_jsonable) + "\n"

    def table(self) -> str:
        """The report as the terminal shows it."""
        s = self.settings
        rows: list[tuple[str, object]] = [
            ("artifact", self.artifact["file"]),
            (
                "status",
                self.status.value + (f" ({'; '.join(self.reasons)})" if self.reasons else ""),
            ),
            ("format / mode / target", f"{s['to']} / {s['mode']} / {s['target']}"),
            (
                "size",
                f"{_kb(self.source['bytes'])} -> {_kb(self.artifact['bytes'])} "
                f"(ratio {self.size_ratio:.3f})",
            ),
            (
                f"host latency ({_shapes(self.latency_shapes)})",
                f"p50 {fmt(self.latency.p50_ms)} ms, p99 {fmt(self.latency.p99_ms)} ms",
            ),
        ]
        rows += [("step", step) for step in self.steps]
        f = self.fidelity
        if f is not None:
            rows.append(("validation samples", str(f.samples)))
            rows.append(("task", f"{f.task.value} ({f.task_reason})"))
            if f.agreement is not None:
                rows.append(("top-1 agreement", f"{f.agreement * 100:.2f} %"))
            if f.source_accuracy is not None and f.converted_accuracy is not None:
                rows.append(
                    (
                        "accuracy source -> converted",
                        f"{f.source_accuracy * 100:.2f} % -> {f.converted_accuracy * 100:.2f} % "
                        f"(drop {fmt(f.accuracy_drop_points)} points)",
                    )
                )
            if f.source_mae is not None:
                rows.append(
                    ("MAE source -> converted", f"{fmt(f.source_mae)} -> {fmt(f.converted_mae)}")
                )
                rows.append(
                    ("RMSE source -> converted", f"{fmt(f.source_rmse)} -> {fmt(f.converted_rmse)}")
                )
            for o in f.outputs:
                snr = "exact" if o.snr_db is None else f"{o.snr_db:.1f} dB"
                extra = "" if o.cosine is None else f", cosine {o.cosine:.4f}"
                if o.iou is not None:
                    extra += f", IoU at {f.threshold:g} {o.iou:.4f}"
                rows.append(
                    (
                        f"output '{o.name}'",
                        f"max |err| {fmt(o.max_abs_error)}, mean |err| "
                        f"{fmt(o.mean_abs_error)}, SNR {snr}{extra}",
                    )
                )
        if self.sensitivity:
            for op, worst in by_op_type(self.sensitivity)[:6]:
                rows.append(
                    (f"sensitivity of {op} nodes", f"worst adds {worst.added_db:.1f} dB of error")
                )
            for n in self.sensitivity[:8]:
                rows.append(
                    (
                        f"node {n.node!r} ({n.op})",
                        f"output SNR {n.snr_db:.1f} dB, adds {n.added_db:.1f} dB",
                    )
                )
        for q in self.quantization:
            rows.append(
                (
                    f"quantized {q['role']} '{q['name']}'",
                    f"{q['dtype']} scale {q['scale']:.6g} zero point {q['zero_point']}",
                )
            )
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(self.ops.counts.items()))
        rows.append(("ops", ops))
        for issue in self.ops.issues:
            rows.append((f"unsupported on {s['target']}", f"{issue.op}: {issue.reason}"))
        if not self.ops.checked:
            rows.append(("op check", f"no op list for {s['to']} on {s['target']}; not checked"))
        return render_pairs(rows)


def _shapes(shapes: dict[str, list[int]]) -> str:
    if not shapes:
        return "1 sample"
    return ", ".join(f"{k}={'x'.join(str(d) for d in v) or 'scalar'}" for k, v in shapes.items())


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n < 2**20 else f"{n / 2**20:.2f} MB"


def _jsonable(o: Any) -> Any:
    if isinstance(o, StrEnum):
        return o.value
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def comparison_table(reports: list[ConversionReport]) -> str:
    """One row per conversion: size, fidelity and latency side by side."""
    headers = (
        "artifact",
        "status",
        "size KB",
        "size ratio",
        "accuracy %",
        "drop pts",
        "agreement %",
        "min SNR dB",
        "p50 ms",
        "p99 ms",
    )
    rows = []
    for r in reports:
        f = r.fidelity
        rows.append(
            (
                r.artifact["file"],
                r.status.value,
                r.artifact["bytes"] / 1024,
                r.size_ratio,
                None if f is None or f.converted_accuracy is None else f.converted_accuracy * 100,
                None if f is None else f.accuracy_drop_points,
                None if f is None or f.agreement is None else f.agreement * 100,
                None if f is None else f.min_snr_db,
                r.latency.p50_ms,
                r.latency.p99_ms,
            )
        )
    return render(headers, rows)
