"""``edgeops build``: train, convert and package in one go, for the common case.

Layout under the output directory: ``run/`` (the training run), ``models/`` (the converted model
and its report) and ``NAME-VERSION.bundle``. Each stage stops the chain when it fails its gate:
an unblessed run is not converted, a rejected conversion is not packaged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeops.errors import OutputError
from edgeops.optional import require
from edgeops.packaging import PackageConfig, bundle_path, package
from edgeops.signing import SigningKey
from edgeops.trainer import Run, TrainConfig, train
from edgeops.trainer.pipeline import StepResult


@dataclass(frozen=True)
class Built:
    run: Run
    report: Any
    """The ``converters.ConversionReport`` of the converted model."""
    bundle: Path


def build(
    data: str | Path,
    out: str | Path,
    train_config: TrainConfig,
    conversion: Any,
    package_config: PackageConfig,
    *,
    key: SigningKey | None,
    on_step: Callable[[StepResult], None] | None = None,
) -> Built:
    """Train on ``data``, convert the model with ``conversion`` (a ``ConversionConfig`` whose
    calibration and validation data default to the run's training and test splits), package."""
    conv = require("converters", "convert")
    out_dir = Path(out)
    package_config.checked()
    name = package_config.name or train_config.name or Path(data).stem
    dest = bundle_path(out_dir, name, package_config.version)
    if dest.exists() and not package_config.force:
        raise OutputError(f"{dest} exists: pass --force to replace it, or a new --version")
    run = train(data, out_dir / "run", train_config, on_step=on_step)
    cfg = replace(
        conversion,
        calibration=conversion.calibration or run.split("train"),
        validation=conversion.validation or run.split("test"),
        task=conv.Task(run.task),
        name=conversion.name or train_config.name or Path(data).stem,
    )
    report = conv.convert(run.model, out_dir / "models", cfg)
    report.raise_for_status()
    model = out_dir / "models" / report.artifact["file"]
    bundle = package(run, model, out_dir, package_config, key=key)
    return Built(run, report, bundle)
