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

from edgeops.core.errors import OutputError
from edgeops.core.optional import require
from edgeops.core.signing import SigningKey
from edgeops.packaging.package import PackageConfig, bundle_path, package
from edgeops.trainer.config import TrainConfig
from edgeops.trainer.pipeline import StepResult
from edgeops.trainer.run import Run, train


@dataclass(frozen=True)
class Built:
    run: Run
    report: Any
    """The ``converters.ConversionReport`` of the converted model."""
    bundle: Path


def convert_run(
    run: Run,
    out: Path,
    conversion: Any,
    *,
    name: str | None = None,
    on_report: Callable[[Any], None] | None = None,
) -> tuple[Any, Path]:
    """Convert ``run``'s model with ``conversion`` (a ``ConversionConfig`` whose calibration and
    validation data default to the run's training and test splits) into ``out``; the
    ``ConversionReport`` (given to ``on_report`` before its gates are applied) and the model."""
    conv = require("converters", "convert")
    cfg = replace(
        conversion,
        calibration=conversion.calibration or run.split("train"),
        validation=conversion.validation or run.split("test"),
        task=conv.Task(run.task),
        name=conversion.name or name or run.name,
    )
    report = conv.convert(run.model, out, cfg)
    if on_report is not None:
        on_report(report)
    report.raise_for_status()
    return report, out / report.artifact["file"]


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
    """Train on ``data``, convert the model with ``conversion`` (:func:`convert_run`), package."""
    require("converters", "convert")
    out_dir = Path(out)
    package_config.checked()
    bundle_name = package_config.name or train_config.name or Path(data).stem
    dest = bundle_path(out_dir, bundle_name, package_config.version)
    if dest.exists() and not package_config.force:
        raise OutputError(f"{dest} exists: pass --force to replace it, or a new --version")
    run = train(data, out_dir / "run", train_config, on_step=on_step)
    name = train_config.name or Path(data).stem
    report, model = convert_run(run, out_dir / "models", conversion, name=name)
    bundle = package(run, model, out_dir, package_config, key=key, report=report.to_dict())
    return Built(run, report, bundle)
