"""The training pipeline: ingest → schema → profile → transform → train → evaluate.

:func:`train` runs it into a run directory and returns a :class:`Run`. The directory holds one
sub-directory per step (see :mod:`edgeops.trainer.steps`), ``lineage.json`` (inputs' hashes,
parameters, library versions, durations, and which steps were reused) and ``run.json`` (what the
packager and ``--baseline-run`` read). TensorFlow is imported by the train and evaluate steps only.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from edgeops import __version__
from edgeops.core.columns import read_table
from edgeops.core.errors import GateError, InputDataError
from edgeops.core.files import sha256_file
from edgeops.core.preprocessing import Preprocessing
from edgeops.core.terminal import render_pairs
from edgeops.trainer import steps
from edgeops.trainer.config import TrainConfig
from edgeops.trainer.pipeline import Pipeline, Step, StepResult
from edgeops.trainer.schema import Anomaly, Schema, validate

__all__ = ["Run", "TrainConfig", "train", "validate_file"]

_LIBRARIES = ("numpy", "tensorflow", "tensorflow-cpu", "keras", "scikit-learn")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "edgeops": __version__}
    for dist in _LIBRARIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass(frozen=True)
class Run:
    """A finished training run, as recorded in ``run.json``."""

    directory: Path
    name: str
    task: str
    target: str
    classes: tuple[str, ...]
    blessed: bool
    reasons: tuple[str, ...]
    metrics: Mapping[str, Any]
    steps: tuple[StepResult, ...] = ()

    @property
    def model(self) -> Path:
        return self.directory / "train" / "model.keras"

    @property
    def schema(self) -> Schema:
        return Schema.load(self.directory / "schema" / "schema.json")

    @property
    def preprocessing(self) -> Preprocessing:
        return steps.load_transform(self.directory / "transform" / "transform.json")[0]

    @property
    def baseline(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.directory / "evaluate" / "baseline.json").read_text()
        )
        return data

    @property
    def evaluation(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.directory / "evaluate" / "eval.json").read_text())
        return data

    def table(self) -> str:
        """The evaluation as a terminal table."""
        rows: list[tuple[str, object]] = [("model", self.name), ("task", self.task)]
        keys = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "mae", "rmse", "r2")
        rows += [(f"test {k}", self.metrics[k]) for k in keys if k in self.metrics]
        rows.append(("blessed", self.blessed))
        rows += [("", r) for r in self.reasons]
        return render_pairs(rows, title=f"run {self.directory}")

    def raise_for_blessing(self) -> None:
        """Raise :class:`GateError` when the run is not blessed."""
        if not self.blessed:
            raise GateError(
                f"run not blessed: {'; '.join(self.reasons)} (artifacts kept in {self.directory})"
            )

    def split(self, name: str) -> Path:
        """The model-ready ``x``/``y`` arrays of a split (train, validation, test)."""
        return self.directory / "transform" / f"{name}.npz"

    @classmethod
    def load(cls, directory: str | Path) -> Run:
        d = Path(directory)
        try:
            r = json.loads((d / "run.json").read_text())
            return cls(
                d,
                r["name"],
                r["task"],
                r["target"],
                tuple(r["classes"]),
                bool(r["blessed"]),
                tuple(r["reasons"]),
                r["metrics"],
            )
        except FileNotFoundError:
            raise InputDataError(f"{d}: not a training run (no run.json)") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputDataError(f"{d}/run.json: unreadable ({e})") from None


def _pipeline(data: Path, run_dir: Path, cfg: TrainConfig) -> tuple[Pipeline, dict[str, Path]]:
    external = {"data": data}
    if cfg.schema is not None:
        external["schema"] = cfg.schema
    if cfg.baseline_run is not None:
        external["baseline_eval"] = cfg.baseline_run / "evaluate" / "eval.json"
    split_params = {
        "target": cfg.target,
        "task": cfg.task,
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
    }
    versions = library_versions()
    train_params = {
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "patience": cfg.patience,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "hidden": list(cfg.hidden),
        "tensorflow": versions.get("tensorflow-cpu", versions.get("tensorflow")),
        "keras": versions.get("keras"),
    }
    pipeline = Pipeline(
        [
            Step("ingest", steps.ingest, external=("data",), params=split_params),
            Step(
                "schema",
                steps.schema,
                deps=("ingest",),
                external=("schema",),
                params={"target": cfg.target, "task": cfg.task},
            ),
            Step("profile", steps.profile, deps=("ingest", "schema"), params={"bins": cfg.bins}),
            Step("transform", steps.transform, deps=("ingest", "schema")),
            Step("train", steps.train, deps=("ingest", "schema", "transform"), params=train_params),
            Step(
                "evaluate",
                steps.evaluate,
                deps=("ingest", "schema", "profile", "transform", "train"),
                external=("baseline_eval",),
                params={"slice_by": list(cfg.slice_by), "thresholds": asdict(cfg.thresholds)},
            ),
        ],
        run_dir,
    )
    return pipeline, external


def train(
    data: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    *,
    on_step: Callable[[StepResult], None] | None = None,
    require_blessing: bool = True,
) -> Run:
    """Run the pipeline on ``data`` into ``run_dir``. Raises :class:`GateError` after writing
    everything when the run is not blessed and ``require_blessing`` is set."""
    cfg = config.checked()
    data_path, run_path = Path(data), Path(run_dir)
    if not data_path.is_file():
        raise InputDataError(f"{data_path}: no such file")
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    pipeline, external = _pipeline(data_path, run_path, cfg)
    results = pipeline.run(external, on_step=on_step)
    evaluation = json.loads((results["evaluate"].directory / "eval.json").read_text())
    sch = Schema.load(results["schema"].directory / "schema.json")
    blessing = evaluation["blessing"]
    name = cfg.name or data_path.stem
    run = Run(
        run_path,
        name,
        sch.task,
        sch.target,
        sch.classes,
        bool(blessing["blessed"]),
        tuple(blessing["reasons"]),
        evaluation["test"],
        tuple(results[n] for n in pipeline.order),
    )
    lineage: dict[str, Any] = {
        "run": {
            "name": name,
            "started": started.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - t0, 3),
            "libraries": library_versions(),
        },
        "inputs": {k: {"path": str(p), "sha256": sha256_file(p)} for k, p in external.items()},
        "steps": [
            {
                **results[n].to_dict(),
                "deps": list(pipeline.steps[n].deps),
                "params": pipeline.steps[n].params,
            }
            for n in pipeline.order
        ],
    }
    (run_path / "lineage.json").write_text(json.dumps(lineage, indent=2, default=str) + "\n")
    summary = {
        "name": name,
        "task": sch.task,
        "target": sch.target,
        "classes": list(sch.classes),
        "blessed": run.blessed,
        "reasons": list(run.reasons),
        "metrics": run.metrics,
        "data": lineage["inputs"]["data"],
        "created": started.isoformat(timespec="seconds"),
    }
    (run_path / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    if require_blessing:
        run.raise_for_blessing()
    return run


def validate_file(data: str | Path, schema: str | Path) -> list[Anomaly]:
    """Every anomaly of a data file against a schema file (the target column is optional)."""
    sch = Schema.load(schema)
    table = read_table(data)
    return validate(table, sch, require_target=sch.target in table)
