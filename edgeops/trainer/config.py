"""The typed configuration of a training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeops.core.errors import UsageError
from edgeops.trainer.metrics import BlessingThresholds
from edgeops.trainer.schema import Task


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``edgeops train`` needs besides the data file and the run directory."""

    target: str
    """The label column (CSV) or array (NPZ)."""
    task: Task | None = None
    """``classification`` or ``regression``; inferred from the target when None."""
    schema: Path | None = None
    """A schema to validate against instead of inferring one."""
    seed: int = 0
    """Seeds the split, weight initialisation and shuffling."""
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    bins: int = 10
    """Quantile bins per numeric feature in the baseline profile (open tails)."""
    epochs: int = 100
    """The most epochs; early stopping on validation loss usually ends sooner."""
    patience: int = 8
    batch_size: int = 32
    learning_rate: float = 1e-3
    hidden: tuple[int, ...] = (64, 32)
    """Hidden layer widths of the tabular MLP."""
    slice_by: tuple[str, ...] = ()
    """Columns to compute evaluation metrics per value of."""
    baseline_run: Path | None = None
    """An earlier run to compare the evaluation with."""
    thresholds: BlessingThresholds = field(default_factory=BlessingThresholds)
    name: str | None = None
    """The model's name; the data file's stem by default."""

    def checked(self) -> TrainConfig:
        if not 0 < self.val_fraction < 1 or not 0 < self.test_fraction < 1:
            raise UsageError("--val-fraction and --test-fraction must be between 0 and 1")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise UsageError("validation and test fractions leave too little data to train on")
        if not 2 <= self.bins <= 100:
            raise UsageError(f"--bins must be between 2 and 100, got {self.bins}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 0:
            raise UsageError("--epochs and --batch-size must be positive")
        if self.schema is not None and not self.schema.is_file():
            raise UsageError(f"--schema {self.schema}: no such file")
        if self.baseline_run is not None and not (self.baseline_run / "run.json").is_file():
            raise UsageError(f"--baseline-run {self.baseline_run}: not a finished training run")
        return self
