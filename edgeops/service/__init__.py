"""The central service (``edgeops serve``): :class:`Service` in :mod:`edgeops.service.server`.

Modules: ``server`` (the service and its threads), ``intake`` (messages in, checked, stored,
acknowledged), ``evaluation`` (the drift evaluation queue), ``engine`` (drift verdicts and
alerts), ``baselines`` (registered baselines), ``limits`` (rate limits), ``workers``
(supervision), ``db`` (storage), ``rollouts`` and ``bundles`` (deployments); the REST API:
``api`` (routes), ``api_types`` (their bodies), ``api_docs`` (OpenAPI, ``/docs``), ``api_server``
(uvicorn), ``auth`` (tokens, signed bundle links); ``report`` (the CLI's client and tables),
``config``.

``Service`` and ``ServiceConfig`` are imported on first use: the CLI's clients (``fleet``,
``drift``, ``deploy``, ``models``) read :mod:`edgeops.service.report` only and need none of the
service extra's packages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeops.service.config import ServiceConfig
    from edgeops.service.server import Service

__all__ = ["Service", "ServiceConfig"]


def __getattr__(name: str) -> Any:
    if name == "Service":
        from edgeops.service.server import Service

        return Service
    if name == "ServiceConfig":
        from edgeops.service.config import ServiceConfig

        return ServiceConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
