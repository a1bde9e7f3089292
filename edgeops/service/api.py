"""The service's REST API (Litestar on uvicorn), described at ``/openapi.json`` and browsable at
``/docs``; every request and response body is a typed record (:mod:`edgeops.service.api_types`).

::

    role    route
    read    GET  /v1/fleet[?fleet=F]              devices: presence, model, last seen, alerts
    read    GET  /v1/devices/{device}[?fleet=F]   one device: record, latency percentiles,
                                                  drift, alerts, recent events
    deploy  POST /v1/devices/{device}/commands[?fleet=F]
                                                  sign and send it a ping or a set-config
                                                  (DeviceCommandRequest); it answers with an
                                                  event carrying the command's id
    read    GET  /v1/drift[?model=M&version=V&since=T&device=D&all=1]
                                                  latest verdict per feature and reference
                                                  (all rows with all=1): distances, every
                                                  check, the reason; the baselines' blind
                                                  spots; the per-device references
    read    GET  /v1/alerts[?all=1]               active alerts (every alert with all=1)
    read    GET  /v1/models                       registered bundles
    admin   POST /v1/models                       register a bundle (the body is the bundle
                                                  file, at most MAX_BUNDLE_BYTES: 413 beyond,
                                                  found while it streams in, before it is
                                                  buffered)
    read    GET  /v1/stats                        messages received, stored, duplicated,
                                                  rejected by reason, evaluations, queue
    read    GET  /v1/dead-letters[?reason=R&limit=N]
                                                  refused messages kept with their reason
    read    GET  /v1/deployments[?active=1]       deployments, newest first
    deploy  POST /v1/deployments                  start one (DeploymentRequest)
    read    GET  /v1/deployments/{id}             one deployment, with every device's state
    deploy  POST /v1/deployments/{id}/abort       stop it and roll back the devices it updated
    read    GET  /v1/whoami                       the token's name and role
    read    GET  /metrics                         Prometheus metrics (edgeops.service.metrics)
    read    GET  /v1/views/…                      the dashboard's data (edgeops.service.dashboard)
    open    GET  /, /ui/…                         the dashboard's pages (no data in them)
    link    GET  /v1/bundles/{sha256}[?expires=T&sig=S]
                                                  a bundle's bytes (HTTP Range for resuming):
                                                  a signed link from an update command, or a
                                                  read token
    open    GET  /healthz                         200 while no worker has failed for good
    open    GET  /readyz                          200 when alive, connected to the broker, the
                                                  database answers and no worker is stalled
    open    GET  /openapi.json, /docs             this API's description, and a page to read
                                                  and try it (served from the package)

A request carries its token as ``Authorization: Bearer TOKEN``
(:mod:`edgeops.service.auth`): none, or an unknown or revoked one, is a 401; a role below the
route's is a 403. A route that names no role needs a read token. With ``insecure_api`` (``edgeops
serve --insecure-api``) no route needs a token. Every refusal is ``{"error": "one line"}``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio.to_thread
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from edgeops.core import wire
from edgeops.core.bodies import spool_capped
from edgeops.core.errors import BodyTooLarge, EdgeOpsError, RolloutError
from edgeops.core.latency import merge_wire
from edgeops.service import api_types as t
from edgeops.service import dashboard, metrics
from edgeops.service import view_types as vt
from edgeops.service.api_docs import (
    MAX_BUNDLE_BYTES,
    BundleDownload,
    BundleUpload,
    docs_routes,
    openapi_config,
    refusals,
    role_options,
)
from edgeops.service.auth import OPEN, ROLES, Role, allows
from edgeops.service.rollout_policy import RolloutPolicy

if TYPE_CHECKING:
    from edgeops.service.server import Service
log = logging.getLogger(__name__)

Need = Role | Literal["open"]

# --- authentication and authorization ----------------------------------------------------------


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header; 401 when there is none."""
    if not header:
        raise NotAuthorizedException(
            detail="this needs a token (Authorization: Bearer TOKEN); "
            "make one with edgeops tokens create",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException(
            detail="the Authorization header must be 'Bearer TOKEN'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token.strip()


def _authorize(service: Service, header: str | None, need: Role) -> None:
    """401 without a valid token, 403 when its role is below ``need``."""
    found = service.tokens.check(bearer(header))
    if found is None:
        raise NotAuthorizedException(
            detail="unknown or revoked token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if not allows(found.role, need):
        raise PermissionDeniedException(
            detail=f"token {found.name!r} has the {found.role} role; this needs {need}"
        )


def _guard(service: Service) -> Any:
    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], route: BaseRouteHandler
    ) -> None:
        need = route.opt.get("role", "read")  # a route that names no role needs a read token
        if need == OPEN or service.config.insecure_api:
            return
        if need not in ROLES:
            raise RuntimeError(f"route {route} names an unknown role {need!r}")
        header = connection.headers.get("authorization")
        await anyio.to_thread.run_sync(_authorize, service, header, need)

    return guard


# --- errors -------------------------------------------------------------------------------------


def _refusal(request: Request[Any, Any, Any], exc: Exception) -> Response[t.ApiError]:
    """Every error as ``{"error": "one line"}`` with its status."""
    headers: dict[str, str] = {}
    if isinstance(exc, ValidationException):
        status, text = 400, _validation(exc)
    elif isinstance(exc, HTTPException):
        status, text = exc.status_code, str(exc.detail)
        headers = dict(exc.headers or {})
    elif isinstance(exc, BodyTooLarge):
        status, text = 413, str(exc)
    elif isinstance(exc, RecursionError):  # Litestar decodes a JSON body untyped first
        status, text = 400, "request body is nested too deeply"
    elif isinstance(exc, EdgeOpsError):
        status, text = 400, str(exc)
    else:
        log.error(
            "%s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc
        )
        status, text = 500, f"internal error ({type(exc).__name__}); see the service's log"
    return Response(t.ApiError(" ".join(text.split())), status_code=status, headers=headers or None)


def _validation(exc: ValidationException) -> str:
    """``bad request: body policy.bake: Expected `float`, got `str``` and the like."""
    parts = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            source = item.get("source")
            source = str(getattr(source, "value", source) or "request")
            key = item.get("key")
            where = "body" if source == "body" else f"{source} parameter"
            name = f" {key}" if key and key != "data" else ""
            parts.append(f"{where}{name}: {item.get('message')}")
    return "bad request: " + ("; ".join(parts) if parts else str(exc.detail))


# --- what the routes read -----------------------------------------------------------------------


def device_summary(service: Service, fleet: str, device: str) -> t.DeviceSummary:
    """Everything the service knows about one device."""
    store = service.store
    record = store.devices.get(fleet, device)
    if record is None:
        raise KeyError(device)
    recent = store.telemetry.recent_windows(fleet=fleet, device=device, limit=30)
    latency = None
    if any(w.telemetry.latency.count for w in recent):
        h = merge_wire([w.telemetry.latency for w in recent if w.telemetry.latency.count])
        latency = t.Latency(
            windows=len(recent),
            count=h.count,
            p50_ms=h.quantile(0.5),
            p95_ms=h.quantile(0.95),
            p99_ms=h.quantile(0.99),
        )
    return t.DeviceSummary(
        device=t.typed(record, t.Device),
        latency=latency,
        predictions=sum(w.telemetry.count for w in recent),
        errors=sum(w.telemetry.errors for w in recent),
        bad_inputs=sum(w.telemetry.bad_inputs for w in recent),
        alerts=t.typed(store.alerts.active(fleet=fleet, device=device), list[t.Alert]),
        drift=t.typed(store.drift.rows(fleet=fleet, device=device), list[t.DriftRow]),
        events=t.typed(store.telemetry.events_of(fleet, device, limit=20), list[t.Event]),
    )


def blind_spots(service: Service, rows: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per model version in ``rows`` ("NAME VERSION"): the baseline's features whose drift
    cannot fully show, and why (:meth:`edgeops.core.profile.Profile.blind_spots`)."""
    out: dict[str, dict[str, str]] = {}
    for name, version in sorted({(r["model_name"], r["model_version"]) for r in rows}):
        base = service.baselines.get(name, version)
        if base is not None:
            found = base.profile.blind_spots()
            if found:
                out[f"{name} {version}"] = found
    return out


def _ranged(data: bytes, header: str | None) -> Response[bytes]:
    """``data`` whole, or the part a ``Range: bytes=START-[END]`` header asks for (206)."""
    octets = "application/octet-stream"
    if not header or not header.startswith("bytes="):
        return Response(data, media_type=octets, headers={"Accept-Ranges": "bytes"})
    start_s, _, end_s = header.removeprefix("bytes=").partition("-")
    try:
        start = int(start_s)
        end = int(end_s) if end_s else len(data) - 1
    except ValueError:
        return Response(data, media_type=octets, headers={"Accept-Ranges": "bytes"})
    if start >= len(data) or start > end:
        return Response(
            b"",
            status_code=416,
            media_type=octets,
            headers={"Content-Range": f"bytes */{len(data)}"},
        )
    end = min(end, len(data) - 1)
    return Response(
        data[start : end + 1],
        status_code=206,
        media_type=octets,
        headers={"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"},
    )


# --- the application ----------------------------------------------------------------------------


def make_app(service: Service) -> Litestar:
    """The REST API of ``service``."""
    store = service.store

    @get(
        "/v1/fleet",
        operation_id="getFleet",
        summary="The fleet's devices",
        sync_to_thread=True,
        responses=refusals(),
        **role_options("read"),
    )
    def fleet_status(fleet: str | None = None) -> t.Fleet:
        """Every device: presence, model, agent version, last seen, active alerts."""
        devices = store.devices.all(fleet)
        active = store.alerts.active(fleet)
        per: dict[tuple[str, str], int] = {}
        for a in active:
            per[(a["fleet"], a["device"])] = per.get((a["fleet"], a["device"]), 0) + 1
        for dev in devices:
            dev["active_alerts"] = per.get((dev["fleet"], dev["device"]), 0)
        fleet_alerts = [a for a in active if a["device"] == "_fleet"]
        return t.Fleet(
            devices=t.typed(devices, list[t.FleetDevice]),
            fleet_alerts=t.typed(fleet_alerts, list[t.Alert]),
            now=time.time(),
        )

    @get(
        "/v1/devices/{device:str}",
        operation_id="getDevice",
        summary="One device",
        sync_to_thread=True,
        responses=refusals(400, 404),
        **role_options("read"),
    )
    def device_detail(device: str, fleet: str | None = None) -> t.DeviceSummary:
        """One device: its record, latency percentiles, errors, alerts, drift, recent events."""
        return device_summary(service, dashboard.device_fleet(service, device, fleet), device)

    @post(
        "/v1/devices/{device:str}/commands",
        operation_id="commandDevice",
        summary="Send a device a command",
        status_code=202,
        sync_to_thread=True,
        responses=refusals(400, 404),
        **role_options("deploy"),
    )
    def device_command(
        device: str, data: t.DeviceCommandRequest, fleet: str | None = None
    ) -> t.CommandSent:
        """Sign and publish a ``ping`` or ``set-config`` for one device. The device answers
        with an event carrying the command's id: ``KIND-done``, ``KIND-failed`` or
        ``command-rejected`` (``GET /v1/devices/{device}`` lists it)."""
        found = dashboard.device_fleet(service, device, fleet)
        fields = msgspec.structs.asdict(data)
        valid_for = fields.pop("valid_for")
        try:
            args = msgspec.convert(
                {k: v for k, v in fields.items() if v is not None},
                wire.PingArgs | wire.SetConfigArgs,
            )
        except msgspec.ValidationError as e:
            raise ClientException(f"bad command: {e}") from None
        cmd = service.command_device(found, device, args, valid_for=valid_for)
        return t.CommandSent(
            id=cmd.id,
            fleet=cmd.fleet,
            device=cmd.device,
            kind=cmd.kind,
            counter=cmd.counter,
            issued=cmd.issued,
            deadline=cmd.deadline,
            key=cmd.key,
        )

    @get(
        "/v1/drift",
        operation_id="getDrift",
        summary="Drift verdicts",
        sync_to_thread=True,
        responses=refusals(),
        **role_options("read"),
    )
    def drift_report(
        model: str | None = None,
        version: str | None = None,
        since: Annotated[float | None, Parameter(description="Unix time")] = None,
        device: str | None = None,
        all: Annotated[bool, Parameter(description="Every row, not only the latest")] = False,
    ) -> t.Drift:
        """The latest verdict per feature and reference (every row with all=1): distances,
        every check, the reason; the baselines' blind spots; the per-device references."""
        rows = store.drift.rows(
            model=None if model is None else (model, version),
            since=since,
            device=device,
            latest=not all,
        )
        return t.Drift(
            drift=t.typed(rows, list[t.DriftRow]),
            blind_spots=blind_spots(service, rows),
            references=t.typed(store.references.all(device=device), list[t.Reference]),
        )

    @get(
        "/v1/alerts",
        operation_id="listAlerts",
        summary="Alerts",
        sync_to_thread=True,
        responses=refusals(),
        **role_options("read"),
    )
    def alert_list(
        all: Annotated[bool, Parameter(description="Cleared alerts too")] = False,
    ) -> t.Alerts:
        """Active alerts (every alert with all=1)."""
        rows = store.alerts.all() if all else store.alerts.active()
        return t.Alerts(t.typed(rows, list[t.Alert]))

    @get(
        "/v1/models",
        operation_id="listModels",
        description="Registered bundles: versions, lineage, the devices running each.",
        summary="Registered bundles",
        sync_to_thread=True,
        responses=refusals(),
        **role_options("read"),
    )
    def model_list() -> t.Models:
        """Registered bundles: versions, lineage, the devices running each."""
        return t.Models(t.typed(store.models.all(), list[t.Model]))

    @post(
        "/v1/models",
        operation_id="registerModel",
        summary="Register a bundle",
        status_code=201,
        request_max_body_size=None,  # spool_capped applies MAX_BUNDLE_BYTES as the body streams
        operation_class=BundleUpload,
        responses=refusals(400, 413),
        **role_options("admin"),
    )
    async def model_register(request: Request[Any, Any, Any]) -> t.Registered:
        """Register a bundle: its signature is verified, its baseline kept for drift and its
        bytes for devices to download."""
        with tempfile.NamedTemporaryFile(suffix=".bundle") as f:  # on disk, not in memory
            await spool_capped(
                request.stream(),
                MAX_BUNDLE_BYTES,
                f,
                content_length=request.headers.get("content-length"),
            )
            f.flush()
            try:
                manifest = await anyio.to_thread.run_sync(service.register_bundle, Path(f.name))
            except EdgeOpsError as e:  # the temporary file's name means nothing to the client
                raise ClientException(str(e).replace(f.name, "the upload")) from None
        return t.Registered(name=manifest.name, version=manifest.version)

    @get(
        "/v1/stats",
        operation_id="getStats",
        summary="Intake counters",
        sync_to_thread=True,
        responses=refusals(),
        **role_options("read"),
    )
    def stats() -> t.Stats:
        """Messages received, stored, duplicated, rejected by reason; evaluations; queue."""
        return t.typed(service.stats(), t.Stats)

    @get(
        "/v1/dead-letters",
        operation_id="listDeadLetters",
        summary="Dead letters",
        sync_to_thread=True,
        responses=refusals(),
        **role_options("read"),
    )
    def dead_letters(
        reason: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> t.DeadLetters:
        """Refused messages kept with their reason, newest first."""
        return t.DeadLetters(
            t.typed(store.telemetry.dead_letters(reason=reason, limit=limit), list[t.DeadLetter])
        )

    @get(
        "/healthz",
        operation_id="getHealth",
        summary="Alive",
        sync_to_thread=True,
        responses={503: ResponseSpec(t.Health, generate_examples=False)},
        **role_options(OPEN),
    )
    def healthz() -> Response[t.Health]:
        """200 while no worker has failed for good, else 503."""
        h = t.typed(service.health(), t.Health)
        return Response(h, status_code=200 if h.alive else 503)

    @get(
        "/readyz",
        operation_id="getReadiness",
        summary="Ready",
        sync_to_thread=True,
        responses={503: ResponseSpec(t.Health, generate_examples=False)},
        **role_options(OPEN),
    )
    def readyz() -> Response[t.Health]:
        """200 when alive, connected to the broker, the database answers and no worker is
        stalled, else 503 with the problems."""
        h = t.typed(service.health(), t.Health)
        return Response(h, status_code=200 if h.ready else 503)

    @get(
        "/v1/bundles/{sha256:str}",
        operation_id="downloadBundle",
        summary="A bundle's bytes",
        operation_class=BundleDownload,
        responses=refusals(404, 416),
        opt={"role": OPEN},  # checked here: a signed link or a read token
        security=[{"token": []}, {}],
    )
    async def bundle_download(
        request: Request[Any, Any, Any],
        sha256: str,
        expires: Annotated[str | None, Parameter(description="A signed link's expiry")] = None,
        sig: Annotated[str | None, Parameter(description="A signed link's signature")] = None,
    ) -> Response[bytes]:
        """A registered bundle's bytes (HTTP Range for resuming), for a signed link from an
        update command or a read token."""
        if not service.config.insecure_api:
            if expires is not None or sig is not None:
                problem = service.links.problem(sha256, expires, sig)
                if problem is not None:
                    raise PermissionDeniedException(problem)
            else:
                header = request.headers.get("authorization")
                await anyio.to_thread.run_sync(_authorize, service, header, "read")
        data = await anyio.to_thread.run_sync(service.bundles.get, sha256)
        if data is None:
            raise NotFoundException("no such bundle")
        return _ranged(data, request.headers.get("range"))

    @get(
        "/v1/deployments",
        operation_id="listDeployments",
        description="Deployments, newest first.",
        summary="Deployments",
        sync_to_thread=True,
        responses=refusals(),
        **role_options("read"),
    )
    def deployment_list(
        active: Annotated[bool, Parameter(description="Only running or aborting ones")] = False,
    ) -> t.Deployments:
        """Deployments, newest first."""
        rows = service.rollouts.deployments(active=active)
        return t.Deployments(t.typed(rows, list[t.DeploymentRow]))

    @post(
        "/v1/deployments",
        operation_id="startDeployment",
        summary="Start a deployment",
        status_code=201,
        sync_to_thread=True,
        responses=refusals(400),
        **role_options("deploy"),
    )
    def deployment_start(data: t.DeploymentRequest) -> t.DeploymentStatus:
        """Start a staged deployment of a registered bundle."""
        given = data.policy.given() if data.policy is not None else {}
        status = service.deploy(
            data.bundle,
            data.fleet,
            devices=data.devices,
            selector=data.selector or None,
            policy=RolloutPolicy.from_dict(given),
        )
        return t.typed(status, t.DeploymentStatus)

    @get(
        "/v1/deployments/{dep_id:str}",
        operation_id="getDeployment",
        summary="One deployment",
        sync_to_thread=True,
        responses=refusals(404),
        **role_options("read"),
    )
    def deployment_status(dep_id: str) -> t.DeploymentStatus:
        """One deployment, with every device's state."""
        try:
            return t.typed(service.rollouts.status(dep_id), t.DeploymentStatus)
        except RolloutError as e:
            raise NotFoundException(str(e)) from None

    @post(
        "/v1/deployments/{dep_id:str}/abort",
        operation_id="abortDeployment",
        summary="Abort a deployment",
        status_code=200,
        sync_to_thread=True,
        responses=refusals(404, 409),
        **role_options("deploy"),
    )
    def deployment_abort(dep_id: str) -> t.DeploymentStatus:
        """Stop a deployment and roll back the devices it updated."""
        try:
            return t.typed(service.rollouts.abort(dep_id), t.DeploymentStatus)
        except RolloutError as e:
            if "no deployment" in str(e):
                raise NotFoundException(str(e)) from None
            raise HTTPException(status_code=409, detail=str(e)) from None

    @get(
        "/v1/whoami",
        operation_id="whoami",
        summary="The token's name and role",
        sync_to_thread=True,
        responses=refusals(),
        **role_options("read"),
    )
    def whoami(request: Request[Any, Any, Any]) -> vt.Whoami:
        """The name and role of the token this request carries (the dashboard's login)."""
        if service.config.insecure_api:
            return vt.Whoami(name="insecure-api", role="admin")
        found = service.tokens.check(bearer(request.headers.get("authorization")))
        if found is None:  # revoked between the guard and here
            raise NotAuthorizedException(detail="unknown or revoked token")
        return vt.Whoami(name=found.name, role=found.role)

    prometheus = metrics.registry(service)

    @get(
        "/metrics",
        operation_id="getMetrics",
        summary="Prometheus metrics",
        sync_to_thread=True,
        responses=refusals(),
        media_type=metrics.CONTENT_TYPE,
        **role_options("read"),
    )
    def prometheus_metrics() -> Response[bytes]:
        """The service's metrics in Prometheus' text format: intake counters, queues, the
        evaluation histograms, active alerts, deployments and devices."""
        return Response(metrics.exposition(prometheus), media_type=metrics.CONTENT_TYPE)

    return Litestar(
        route_handlers=[
            fleet_status,
            device_detail,
            device_command,
            drift_report,
            alert_list,
            model_list,
            model_register,
            stats,
            dead_letters,
            healthz,
            readyz,
            bundle_download,
            deployment_list,
            deployment_start,
            deployment_status,
            deployment_abort,
            whoami,
            prometheus_metrics,
            *dashboard.routes(service),
            *docs_routes(),
        ],
        guards=[_guard(service)],
        exception_handlers={Exception: _refusal},
        openapi_config=openapi_config(),
        logging_config=None,
        debug=False,
    )
