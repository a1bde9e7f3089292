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

from edgeops.core.optional import require
from edgeops.core.signing import SigningKey
from edgeops.packaging.package import PackageConfig, package
from edgeops.trainer.config import TrainConfig
from edgeops.trainer.pipeline import StepResult
from edgeops.trainer.run import Run, train


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
