"""The service's REST API (Starlette on uvicorn).

::

    GET  /v1/fleet[?fleet=F]              devices: presence, model, last seen, active alerts
    GET  /v1/devices/{device}[?fleet=F]   one device: record, latency percentiles, drift, alerts,
                                          recent events
    GET  /v1/drift[?model=M&version=V&since=T&device=D&all=1]
                                          latest verdict per feature and reference (all rows
                                          with all=1): distances, every check (value, threshold,
                                          noise floor), the reason; the baselines' blind spots;
                                          the per-device references
    GET  /v1/alerts[?all=1]               active alerts (every alert with all=1)
    GET  /v1/models                       registered bundles
    POST /v1/models                       register a bundle (the body is the bundle file, at
                                          most MAX_BUNDLE_BYTES: 413 beyond, found while it
                                          streams in, before it is buffered)
    GET  /v1/stats                        messages received, stored, duplicated, rejected by reason,
                                          evaluations (lag), queue depth, retention purges
    GET  /v1/dead-letters[?reason=R&limit=N]
                                          refused messages kept with their reason, newest first
    GET  /healthz                         200 while no worker has failed for good, else 503
    GET  /readyz                          200 when alive, connected to the broker, the database
                                          answers and no worker is stalled, else 503 (why)
    GET  /v1/bundles/{sha256}             a registered bundle's bytes (HTTP Range for resuming)
    GET  /v1/deployments[?active=1]       deployments, newest first
    POST /v1/deployments                  start one: {"bundle": "NAME-VERSION", "fleet": F,
                                          "devices": [...], "selector": {...}, "policy": {...}}
    GET  /v1/deployments/{id}             one deployment, with every device's state
    POST /v1/deployments/{id}/abort       stop it and roll back the devices it updated
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgeops.bodies import spool_capped
from edgeops.errors import BodyTooLarge, EdgeOpsError, UsageError
from edgeops.latency import merge_wire
from edgeops.rollout import RolloutPolicy
from edgeops.service.rollouts import RolloutError

if TYPE_CHECKING:
    from edgeops.service import Service

MAX_BUNDLE_BYTES = 512 * 2**20
"""The largest bundle ``POST /v1/models`` takes (devices download up to 500 MiB by default)."""


def _json(data: Any, status: int = 200) -> JSONResponse:
    import json

    return JSONResponse(json.loads(json.dumps(data, default=str)), status_code=status)


def _float(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise EdgeOpsError(f"{name} must be a number (unix time), got {value!r}") from None


def _ranged(data: bytes, header: str | None) -> Response:
    """``data`` whole, or the part a ``Range: bytes=START-[END]`` header asks for (206)."""
    kind = {"media_type": "application/octet-stream", "headers": {"Accept-Ranges": "bytes"}}
    if not header or not header.startswith("bytes="):
        return Response(data, **kind)  # type: ignore[arg-type]
    start_s, _, end_s = header.removeprefix("bytes=").partition("-")
    try:
        start = int(start_s)
        end = int(end_s) if end_s else len(data) - 1
    except ValueError:
        return Response(data, **kind)  # type: ignore[arg-type]
    if start >= len(data) or start > end:
        return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
    end = min(end, len(data) - 1)
    headers = {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"}
    return Response(
        data[start : end + 1],
        status_code=206,
        media_type="application/octet-stream",
        headers=headers,
    )


def device_summary(service: Service, fleet: str, device: str) -> dict[str, Any]:
    """Everything the service knows about one device."""
    store = service.store
    record = store.device(fleet, device)
    if record is None:
        raise KeyError(device)
    recent = store.recent_windows(fleet=fleet, device=device, limit=30)
    latency: dict[str, Any] = {}
    if any(w.telemetry.latency.count for w in recent):
        h = merge_wire([w.telemetry.latency for w in recent if w.telemetry.latency.count])
        latency = {
            "windows": len(recent),
            "count": h.count,
            "p50_ms": h.quantile(0.5),
            "p95_ms": h.quantile(0.95),
            "p99_ms": h.quantile(0.99),
        }
    return {
        "device": record,
        "latency": latency,
        "predictions": sum(w.telemetry.count for w in recent),
        "errors": sum(w.telemetry.errors for w in recent),
        "bad_inputs": sum(w.telemetry.bad_inputs for w in recent),
        "alerts": store.active_alerts(fleet=fleet, device=device),
        "drift": store.drift_rows(fleet=fleet, device=device),
        "events": store.events_of(fleet, device, limit=20),
    }


def blind_spots(service: Service, rows: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per model version in ``rows`` ("NAME VERSION"): the baseline's features whose drift
    cannot fully show, and why (:meth:`edgeops.profile.Profile.blind_spots`)."""
    out: dict[str, dict[str, str]] = {}
    for name, version in sorted({(r["model_name"], r["model_version"]) for r in rows}):
        base = service.baselines.get(name, version)
        if base is not None:
            found = base.profile.blind_spots()
            if found:
                out[f"{name} {version}"] = found
    return out


def make_app(service: Service) -> Starlette:
    store = service.store

    async def fleet(request: Request) -> JSONResponse:
        f = request.query_params.get("fleet")
        devices = await run_in_threadpool(store.devices, f)
        active = await run_in_threadpool(store.active_alerts, f)
        per: dict[tuple[str, str], int] = {}
        for a in active:
            per[(a["fleet"], a["device"])] = per.get((a["fleet"], a["device"]), 0) + 1
        for dev in devices:
            dev["active_alerts"] = per.get((dev["fleet"], dev["device"]), 0)
        fleet_alerts = [a for a in active if a["device"] == "_fleet"]
        return _json({"devices": devices, "fleet_alerts": fleet_alerts, "now": time.time()})

    async def device(request: Request) -> JSONResponse:
        name = request.path_params["device"]
        f = request.query_params.get("fleet")
        matches = await run_in_threadpool(store.find_device, name)
        if f is not None:
            matches = [m for m in matches if m["fleet"] == f]
        if not matches:
            return _json({"error": f"no device {name!r}"}, 404)
        if len(matches) > 1:
            fleets = ", ".join(m["fleet"] for m in matches)
            return _json(
                {"error": f"device {name!r} is in several fleets ({fleets}); pass fleet"}, 400
            )
        return _json(await run_in_threadpool(device_summary, service, matches[0]["fleet"], name))

    async def drift(request: Request) -> JSONResponse:
        q = request.query_params
        try:
            since = _float(q.get("since"), "since")
        except EdgeOpsError as e:
            return _json({"error": str(e)}, 400)
        model = (q["model"], q.get("version")) if "model" in q else None
        rows = await run_in_threadpool(
            lambda: store.drift_rows(
                model=model, since=since, device=q.get("device"), latest=q.get("all") != "1"
            )
        )
        refs = await run_in_threadpool(lambda: store.references(device=q.get("device")))
        return _json({"drift": rows, "blind_spots": blind_spots(service, rows), "references": refs})

    async def alerts(request: Request) -> JSONResponse:
        every = request.query_params.get("all") == "1"
        rows = await run_in_threadpool(store.all_alerts if every else store.active_alerts)
        return _json({"alerts": rows})

    async def models(request: Request) -> JSONResponse:
        if request.method == "POST":
            import tempfile
            from pathlib import Path

            with tempfile.NamedTemporaryFile(suffix=".bundle") as f:  # on disk, not in memory
                try:
                    await spool_capped(
                        request.stream(),
                        MAX_BUNDLE_BYTES,
                        f,
                        content_length=request.headers.get("content-length"),
                    )
                    f.flush()
                    manifest = await run_in_threadpool(service.register_bundle, Path(f.name))
                except BodyTooLarge as e:
                    return _json({"error": str(e)}, 413)
                except EdgeOpsError as e:
                    return _json({"error": str(e)}, 400)
            return _json({"name": manifest["name"], "version": manifest["version"]}, 201)
        return _json({"models": await run_in_threadpool(store.models)})

    async def stats(request: Request) -> JSONResponse:
        return _json(await run_in_threadpool(service.stats))

    async def dead_letters(request: Request) -> JSONResponse:
        q = request.query_params
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            return _json({"error": "limit must be an integer"}, 400)
        rows = await run_in_threadpool(
            lambda: store.dead_letters(reason=q.get("reason"), limit=max(1, min(limit, 1000)))
        )
        return _json({"dead_letters": rows})

    async def healthz(request: Request) -> JSONResponse:
        h = await run_in_threadpool(service.health)
        return _json(h, 200 if h["alive"] else 503)

    async def readyz(request: Request) -> JSONResponse:
        h = await run_in_threadpool(service.health)
        return _json(h, 200 if h["ready"] else 503)

    async def bundle(request: Request) -> Response:
        data = await run_in_threadpool(service.bundles.get, request.path_params["sha256"])
        if data is None:
            return _json({"error": "no such bundle"}, 404)
        return _ranged(data, request.headers.get("range"))

    async def deployments(request: Request) -> JSONResponse:
        if request.method == "GET":
            active = request.query_params.get("active") == "1"
            rows = await run_in_threadpool(lambda: service.rollouts.deployments(active=active))
            return _json({"deployments": rows})
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise UsageError("the body must be a JSON object")
            unknown = sorted(set(body) - {"bundle", "fleet", "devices", "selector", "policy"})
            if unknown:
                raise UsageError(f"unknown field(s): {', '.join(unknown)}")
            policy = RolloutPolicy.from_dict(body.get("policy") or {})
            status = await run_in_threadpool(
                lambda: service.deploy(
                    str(body.get("bundle") or ""),
                    str(body.get("fleet") or ""),
                    devices=[str(d) for d in body.get("devices") or []],
                    selector=body.get("selector") or None,
                    policy=policy,
                    trigger=str(body.get("trigger") or "request"),
                )
            )
        except ValueError:
            return _json({"error": "the body must be JSON"}, 400)
        except EdgeOpsError as e:
            return _json({"error": str(e)}, 400)
        return _json(status, 201)

    async def deployment(request: Request) -> JSONResponse:
        dep_id = request.path_params["id"]
        try:
            if request.url.path.endswith("/abort"):
                if request.method != "POST":
                    return _json({"error": "use POST"}, 405)
                return _json(await run_in_threadpool(service.rollouts.abort, dep_id))
            return _json(await run_in_threadpool(service.rollouts.status, dep_id))
        except RolloutError as e:
            return _json({"error": str(e)}, 404 if "no deployment" in str(e) else 409)

    return Starlette(
        routes=[
            Route("/v1/fleet", fleet),
            Route("/v1/devices/{device}", device),
            Route("/v1/drift", drift),
            Route("/v1/alerts", alerts),
            Route("/v1/models", models, methods=["GET", "POST"]),
            Route("/v1/stats", stats),
            Route("/v1/dead-letters", dead_letters),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/v1/bundles/{sha256}", bundle),
            Route("/v1/deployments", deployments, methods=["GET", "POST"]),
            Route("/v1/deployments/{id}", deployment),
            Route("/v1/deployments/{id}/abort", deployment, methods=["POST"]),
        ]
    )


class ApiServer:
    """uvicorn serving :func:`make_app` in a background thread."""

    def __init__(self, service: Service) -> None:
        import uvicorn

        cfg = service.config
        self._server = uvicorn.Server(
            uvicorn.Config(
                make_app(service),
                host=cfg.http_host,
                port=cfg.http_port,
                log_config=None,
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
        self._thread: threading.Thread | None = None
        self.host = cfg.http_host

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise EdgeOpsError("the service's REST API failed to start")
            time.sleep(0.01)

    @property
    def address(self) -> str:
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
