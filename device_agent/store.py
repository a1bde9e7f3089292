"""The device's model store: verified, extracted bundles and a pointer to the current one.

::

    STORE/
      current.json                  {"current": ID, "previous": ID}  (write, fsync, rename)
      models/ID/manifest.json       one directory per installed bundle, ID = NAME-VERSION-HASH
      models/ID/model.tflite|onnx
      models/ID/samples.npz
      downloads/                    bundles being downloaded by the updater
      update.json                   the updater's state (see device_agent.updater)

A bundle is verified once (signature, hashes, container: :meth:`ModelStore.verify`), and the open,
verified handle is what :meth:`ModelStore.install` takes, so nothing is installed unverified and
nothing is verified twice; each file is extracted
(its sha256 checked again as it is copied, in case the file
changed on disk since) into a staging directory that is renamed into place, so a model directory
is either complete or absent. The previous model stays on disk, so rollback needs no download.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeops.core.bundle import MANIFEST, Bundle, canonical_json
from edgeops.core.errors import BundleError, OutputError
from edgeops.core.files import atomic_write
from edgeops.core.manifest import Manifest
from edgeops.core.signing import VerifyKey

log = logging.getLogger(__name__)

POINTER = "current.json"


@dataclass(frozen=True)
class Installed:
    """One installed bundle."""

    id: str
    directory: Path
    manifest: dict[str, Any]

    @functools.cached_property
    def info(self) -> Manifest:
        """The typed manifest."""
        return Manifest.parse(self.manifest, f"{self.id}: {MANIFEST}")

    @property
    def model_path(self) -> Path:
        return self.directory / self.info.require_model().file

    @property
    def samples_path(self) -> Path:
        return self.directory / self.info.require_samples().file

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> str:
        return self.info.version

    @property
    def model_sha256(self) -> str:
        return self.info.model_sha256


class ModelStore:
    """Installed bundles under ``root`` and which one is current."""

    def __init__(
        self, root: Path, *, trusted_keys: Sequence[VerifyKey], allow_unsigned: bool = False
    ) -> None:
        self.root = root
        self.keys = list(trusted_keys)
        self.allow_unsigned = allow_unsigned
        try:
            (root / "models").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{root}: cannot create the model store ({e})") from None

    # --- pointer ------------------------------------------------------------------------------

    def _pointer(self) -> dict[str, str | None]:
        try:
            data = json.loads((self.root / POINTER).read_text())
        except FileNotFoundError:
            return {"current": None, "previous": None}
        except (OSError, ValueError) as e:
            log.warning("model store pointer unreadable (%s); starting without a model", e)
            return {"current": None, "previous": None}
        return {"current": data.get("current"), "previous": data.get("previous")}

    def _set_pointer(self, current: str | None, previous: str | None) -> None:
        body = json.dumps({"current": current, "previous": previous}, indent=2).encode()
        atomic_write(self.root / POINTER, body)

    def _entry(self, entry_id: str | None) -> Installed | None:
        if entry_id is None:
            return None
        d = self.root / "models" / entry_id
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except (OSError, ValueError):
            log.warning("installed model %s is missing or damaged", entry_id)
            return None
        return Installed(entry_id, d, manifest)

    @staticmethod
    def entry_id(manifest: dict[str, Any]) -> str:
        """The id a bundle with this (verified) manifest is installed under."""
        digest = hashlib.sha256(canonical_json(manifest)).hexdigest()[:12]
        return f"{manifest['name']}-{manifest['version']}-{digest}"

    def pointer(self) -> dict[str, str | None]:
        """The ids of the current and the previous model (None where there is none)."""
        return dict(self._pointer())

    def current(self) -> Installed | None:
        return self._entry(self._pointer()["current"])

    def previous(self) -> Installed | None:
        return self._entry(self._pointer()["previous"])

    # --- changes ------------------------------------------------------------------------------

    def verify(self, path: Path) -> Bundle:
        """Open ``path`` and verify it against this store's trusted keys; the caller closes it
        (a context manager). :class:`BundleError` if it fails."""
        b = Bundle.open(path)
        try:
            b.verify(self.keys, allow_unsigned=self.allow_unsigned)
        except BaseException:
            b.close()
            raise
        return b

    def install_file(self, path: Path) -> Installed:
        """:meth:`verify` then :meth:`install`."""
        with self.verify(path) as b:
            return self.install(b)

    def install(self, b: Bundle) -> Installed:
        """Extract a bundle that :meth:`verify` opened into the store (not yet current)."""
        if not b.verified:
            raise BundleError(f"{b.path}: not verified; open it with ModelStore.verify")
        bundle = b.path
        manifest = b.manifest
        entry_id = self.entry_id(manifest)
        final = self.root / "models" / entry_id
        if (final / MANIFEST).is_file():
            return Installed(entry_id, final, manifest)
        staging = self.root / "models" / f".{entry_id}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
            b.extract(staging)
            atomic_write(staging / MANIFEST, json.dumps(manifest, indent=2).encode())
            os.replace(staging, final)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise OutputError(f"{self.root}: cannot install {bundle.name} ({e})") from None
        log.info("installed %s", entry_id)
        return Installed(entry_id, final, manifest)

    def activate(self, entry_id: str) -> Installed:
        """Make an installed bundle current; the one it replaces becomes previous."""
        entry = self._entry(entry_id)
        if entry is None:
            raise BundleError(f"model {entry_id} is not installed")
        current = self._pointer()["current"]
        if current != entry_id:
            self._set_pointer(entry_id, current)
        return entry

    def rollback(self) -> Installed:
        """Make the previous model current again."""
        ptr = self._pointer()
        previous = self._entry(ptr["previous"])
        if previous is None:
            raise BundleError("no previous model to roll back to")
        self._set_pointer(previous.id, ptr["current"])
        return previous

    def set_pointer(self, current: str | None, previous: str | None) -> None:
        """Put the pointer back to a state recorded earlier (the updater's undo)."""
        for entry_id in (current, previous):
            if entry_id is not None and self._entry(entry_id) is None:
                raise BundleError(f"model {entry_id} is not installed")
        self._set_pointer(current, previous)

    def remove(self, entry_id: str) -> None:
        """Delete an installed model that is neither current nor previous."""
        if entry_id in self._pointer().values():
            raise BundleError(f"model {entry_id} is in use; it cannot be removed")
        shutil.rmtree(self.root / "models" / entry_id, ignore_errors=True)

    def prune(self) -> list[str]:
        """Delete every installed model but the current and the previous one; their ids."""
        keep = {v for v in self._pointer().values() if v is not None}
        removed = []
        for d in sorted((self.root / "models").iterdir()):
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
        return removed
