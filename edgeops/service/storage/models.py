"""Registered models and their bundles in storage: each verified bundle's manifest (``models``)
and its bytes (``bundles``), kept in the database so that every service process can serve them
to devices."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgeops.core.errors import BundleError, UsageError
from edgeops.core.manifest import Manifest
from edgeops.service.storage.schema import bundles, devices, models


class ModelRows:
    """Reads and writes of ``models`` and ``bundles``."""

    def __init__(self, engine: Engine, insert: Callable[[sa.Table], Any]) -> None:
        self.engine = engine
        self._insert = insert

    # --- models -------------------------------------------------------------------------------

    def add(self, manifest: dict[str, Any], info: Manifest) -> None:
        """Register a verified bundle's manifest (as signed, and typed)."""
        with self.engine.begin() as conn:
            stmt = self._insert(models).values(
                name=info.name,
                version=info.version,
                model_sha256=info.model_sha256,
                manifest=manifest,
                registered=time.time(),
            )
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["name", "version"]))

    def manifest(self, name: str, version: str) -> dict[str, Any] | None:
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(models.c.manifest).where(
                    models.c.name == name, models.c.version == version
                )
            ).first()
        return None if row is None else dict(row[0])

    def resolve(self, text: str) -> tuple[str, str]:
        """A registered model named ``NAME:VERSION`` or ``NAME-VERSION``."""
        candidates = [tuple(text.split(":", 1))] if ":" in text else []
        candidates += [(text[:i], text[i + 1 :]) for i, c in enumerate(text) if c == "-"]
        for name, version in candidates:
            if self.manifest(name, version) is not None:
                return name, version
        raise UsageError(f"no registered bundle {text!r} (give NAME-VERSION or NAME:VERSION)")

    def all(self) -> list[dict[str, Any]]:
        """Registered models, oldest first per name, each with its lineage (parent, training
        run, conversion) and how many devices of each fleet run it."""
        with self.engine.begin() as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    sa.select(
                        models.c.name,
                        models.c.version,
                        models.c.model_sha256,
                        models.c.registered,
                        models.c.manifest,
                        bundles.c.sha256.label("bundle_sha256"),
                        bundles.c.size.label("bundle_size"),
                    )
                    .select_from(
                        models.outerjoin(
                            bundles,
                            (bundles.c.name == models.c.name)
                            & (bundles.c.version == models.c.version),
                        )
                    )
                    .order_by(models.c.name, models.c.registered)
                ).mappings()
            ]
            running: dict[tuple[str, str], dict[str, int]] = {}
            q = sa.select(
                devices.c.model_name, devices.c.model_version, devices.c.fleet, sa.func.count()
            ).group_by(devices.c.model_name, devices.c.model_version, devices.c.fleet)
            for name, version, fleet, n in conn.execute(q):
                running.setdefault((name, version), {})[fleet] = int(n)
        for r in rows:
            m = r.pop("manifest")
            model = m.get("model") or {}
            r["lineage"] = {
                "parent": m.get("parent"),
                "run": (m.get("training") or {}).get("run"),
                "created": m.get("created"),
                "format": model.get("format"),
                "mode": model.get("mode"),
                "accuracy": ((m.get("evaluation") or {}).get("test") or {}).get("accuracy"),
            }
            r["devices"] = running.get((r["name"], r["version"]), {})
        return rows

    # --- bundles ------------------------------------------------------------------------------

    def add_bundle(self, data: bytes, manifest: Manifest, sha256: str) -> None:
        """Keep a verified bundle's bytes for devices to download; refuse a second, different
        bundle under a name and version already registered."""
        name, version = manifest.name, manifest.version
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(bundles.c.sha256).where(
                    bundles.c.name == name, bundles.c.version == version
                )
            ).first()
            if row is not None:
                if row[0] != sha256:
                    raise BundleError(
                        f"{name} {version} is already registered with other contents; "
                        "give the new bundle a new version"
                    )
                return
            conn.execute(
                sa.insert(bundles).values(
                    sha256=sha256,
                    name=name,
                    version=version,
                    size=len(data),
                    data=data,
                    registered=time.time(),
                )
            )

    def bundle(self, sha256: str) -> bytes | None:
        """A registered bundle's bytes."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(bundles.c.data).where(bundles.c.sha256 == sha256)).first()
        return None if row is None else bytes(row[0])

    def find_bundle(self, conn: Connection, name: str, version: str) -> dict[str, Any] | None:
        """A registered bundle's file sha256 and size, and its model file's sha256; None if it
        is not registered."""
        row = (
            conn.execute(
                sa.select(bundles.c.sha256, bundles.c.size).where(
                    bundles.c.name == name, bundles.c.version == version
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        model = conn.execute(
            sa.select(models.c.model_sha256).where(
                models.c.name == name, models.c.version == version
            )
        ).scalar_one()
        return {"sha256": row["sha256"], "size": int(row["size"]), "model_sha256": model}
