"""A bundle's manifest, typed: what a device and the central service read from it.

The manifest travels as canonical JSON inside the bundle (:mod:`edgeops.core.bundle`), signed byte
for byte; :class:`Manifest` is how code reads it. :meth:`Manifest.parse` checks every field it
knows (a wrong type is a :class:`~edgeops.core.errors.BundleError` naming the field) and ignores
fields it does not, so a newer packager's additions do not break an older reader. Sections that
have their own parser keep their plain form here: ``preprocessing``
(:class:`~edgeops.core.preprocessing.Preprocessing`), ``baseline``
(:class:`~edgeops.core.profile.Profile`), the tensor ``signature``, and the converter's
``fidelity`` and ``conversion`` reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from edgeops.core.errors import BundleError, first_line

__all__ = [
    "Evaluation",
    "FileEntry",
    "Manifest",
    "ModelFile",
    "Samples",
    "Training",
]


class ModelFile(msgspec.Struct, frozen=True, kw_only=True):
    """The model inside the bundle."""

    file: str
    format: str
    """``tflite`` or ``onnx``."""
    mode: str | None = None
    """The conversion mode (fp32, dynamic, int8, ...), when the converter made it."""
    target: str | None = None
    """The hardware class it was converted for."""


class Samples(msgspec.Struct, frozen=True, kw_only=True):
    """Sample inputs with the outputs the model gave when packaged: a device checks a new model
    against them before it switches."""

    file: str
    count: int
    atol: float
    rtol: float


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    """The training run's metrics of this model."""

    test: dict[str, Any] = msgspec.field(default_factory=dict)
    validation: dict[str, Any] = msgspec.field(default_factory=dict)
    blessed: bool | None = None


class Training(msgspec.Struct, frozen=True, kw_only=True):
    """Where the model came from: the run, a digest of its data, the label column."""

    run: str | None = None
    data_sha256: str | None = None
    target: str | None = None


class FileEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A payload file: its size and sha256 (hex)."""

    size: int
    sha256: str


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """A bundle's manifest. ``files`` is filled in by the bundle writer."""

    name: str
    version: str
    format: str | None = None
    format_version: int | None = None
    parent: str | None = None
    created: str | None = None
    model: ModelFile | None = None
    task: str | None = None
    """``classification`` or ``regression``."""
    labels: tuple[str | int, ...] = ()
    signature: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    evaluation: Evaluation | None = None
    fidelity: dict[str, Any] | None = None
    conversion: dict[str, Any] | None = None
    samples: Samples | None = None
    min_runtime: dict[str, Any] | None = None
    training: Training | None = None
    files: dict[str, FileEntry] = msgspec.field(default_factory=dict)

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str = "manifest") -> Manifest:
        """The typed manifest of a parsed JSON object; :class:`BundleError` naming the field."""
        try:
            return msgspec.convert(dict(data), cls, strict=True)
        except msgspec.ValidationError as e:
            raise BundleError(f"{where}: {first_line(e)}") from None

    # --- what readers ask of it ----------------------------------------------------------------

    def require_model(self) -> ModelFile:
        if self.model is None:
            raise BundleError(f"{self.name} {self.version}: the manifest names no model file")
        return self.model

    def require_samples(self) -> Samples:
        if self.samples is None:
            raise BundleError(f"{self.name} {self.version}: the manifest names no sample file")
        return self.samples

    def require(self, section: str) -> dict[str, Any]:
        """A plain section (``preprocessing``, ``baseline``, ``signature``) that must be there."""
        value = getattr(self, section)
        if not isinstance(value, dict):
            raise BundleError(f"{self.name} {self.version}: the manifest has no {section}")
        return value

    @property
    def model_sha256(self) -> str:
        model = self.require_model()
        entry = self.files.get(model.file)
        if entry is None:
            raise BundleError(f"{self.name} {self.version}: {model.file} is not in the bundle")
        return entry.sha256

    @property
    def runtime_format(self) -> str:
        """The format a runtime must read: the one the model needs at least, else the model's."""
        fmt = (self.min_runtime or {}).get("format")
        if isinstance(fmt, str) and fmt:
            return fmt
        return "" if self.model is None else self.model.format

    @property
    def training_target(self) -> str | None:
        return None if self.training is None else self.training.target
