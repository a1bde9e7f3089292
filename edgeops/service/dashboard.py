"""The web dashboard, served by the REST API on its port: static pages and the typed data
endpoints they poll.

::

    role    route
    open    GET  /                                 redirects to /ui/
    open    GET  /ui/, /ui/{file}                  the pages, their scripts and styles, uPlot
                                                   (files of the package: no data in them)
    read    GET  /v1/views/fleet[?fleet=F]         devices by presence and version, active
                                                   alerts, deployments in progress
    read    GET  /v1/views/devices/{device}[?fleet=F&hours=H]
                                                   traffic and latency p50/p95 over time,
                                                   each feature's drift checks over time, the
                                                   alert timeline, events, models, deployments
    read    GET  /v1/views/models/{name}           versions, lineage, fidelity, where each runs

The deployment page reads ``GET /v1/deployments/{id}`` and aborts with ``POST
/v1/deployments/{id}/abort`` (deploy role), the API's own routes.

Pages are a small front end (plain HTML and JavaScript, no build step) over these endpoints,
not server-side templates: every number a page shows comes from a typed endpoint that the
tests, ``/openapi.json`` and other clients share, and a page changes by editing its body
(``web/pages/``) or its script; the head, header and sign-in form are one frame for all.

The token. The login form (or a ``#token=…`` fragment, which never reaches a server) keeps the
token in the tab's ``sessionStorage`` and sends it as ``Authorization: Bearer`` on each call, as
any client does. A cookie would be sent by the browser on its own, so abort would need CSRF
protection; a header is never sent unless the page's script sends it, and the page's strict
Content-Security-Policy (scripts from this origin only, no inline script) guards the one
weakness of storage a script can read. Closing the tab forgets the token.
"""

from __future__ import annotations

import html
import string
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

from litestar import Response, get
from litestar.exceptions import ClientException, NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter
from litestar.response import Redirect

from edgeops.service import view_types as v
from edgeops.service import views
from edgeops.service.api_docs import refusals, role_options
from edgeops.service.auth import OPEN

if TYPE_CHECKING:
    from edgeops.service.server import Service


@dataclass(frozen=True)
class Page:
    """A page: its body is ``web/pages/{name}``, set in the frame every page shares
    (``web/frame.html``: head, header, sign-in form, error line)."""

    title: str
    script: str
    """The page's own script, loaded after ``app.js``."""
    styles: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()
    """Scripts loaded before ``app.js``."""


PAGES = {
    "index.html": Page("Fleet", "fleet.js"),
    "device.html": Page(
        "Device", "device.js", styles=("uPlot.min.css",), libraries=("uPlot.iife.min.js",)
    ),
    "model.html": Page("Model", "model.js"),
    "deployment.html": Page("Deployment", "deployment.js"),
}
"""Every page under ``/ui/``."""

FILES = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "fleet.js": "text/javascript; charset=utf-8",
    "device.js": "text/javascript; charset=utf-8",
    "model.js": "text/javascript; charset=utf-8",
    "deployment.js": "text/javascript; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
"""Every other file under ``/ui/``: the package's ``web/`` folder (uPlot 1.6.32 from the npm
registry, MIT, with its licence)."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def web_file(name: str) -> bytes:
    """A file of the package's ``web/`` folder."""
    return (resources.files("edgeops.service") / "web" / name).read_bytes()


def page_html(name: str) -> bytes:
    """One of :data:`PAGES`, whole: its body set in the shared frame."""
    page = PAGES[name]
    frame = string.Template(web_file("frame.html").decode())
    scripts = (*page.libraries, "app.js", page.script)
    return frame.substitute(
        title=html.escape(page.title),
        styles="".join(f'<link rel="stylesheet" href="/ui/{s}">\n' for s in page.styles),
        main=web_file(f"pages/{name}").decode(),
        scripts="".join(f'<script src="/ui/{s}"></script>\n' for s in scripts),
    ).encode()


def device_fleet(service: Service, device: str, fleet: str | None) -> str:
    """The fleet of ``device`` (404: none; 400: several and no ``fleet``)."""
    matches = service.store.devices.find(device)
    if fleet is not None:
        matches = [m for m in matches if m["fleet"] == fleet]
    if not matches:
        raise NotFoundException(f"no device {device!r}")
    if len(matches) > 1:
        fleets = ", ".join(m["fleet"] for m in matches)
        raise ClientException(f"device {device!r} is in several fleets ({fleets}); pass fleet")
    return str(matches[0]["fleet"])


def routes(service: Service) -> list[HTTPRouteHandler]:
    """The dashboard's pages and data endpoints."""
    cached: dict[str, bytes] = {}

    @get("/", include_in_schema=False, sync_to_thread=False, **role_options(OPEN))
    def root() -> Redirect:
        return Redirect("/ui/")

    @get(
        ["/ui", "/ui/", "/ui/{name:str}"],
        include_in_schema=False,
        sync_to_thread=False,  # a few small files, read once
        **role_options(OPEN),
    )
    def page(name: str = "index.html") -> Response[bytes]:
        kind = "text/html; charset=utf-8" if name in PAGES else FILES.get(name)
        if kind is None:
            raise NotFoundException(f"no page {name!r}")
        if name not in cached:
            cached[name] = page_html(name) if name in PAGES else web_file(name)
        cache = "no-cache" if name in PAGES else "public, max-age=3600"
        return Response(
            cached[name], media_type=kind, headers={**SECURITY_HEADERS, "Cache-Control": cache}
        )

    @get(
        "/v1/views/fleet",
        operation_id="viewFleet",
        summary="Dashboard: the fleet",
        sync_to_thread=True,
        responses=refusals(),
        **role_options("read"),
    )
    def view_fleet(fleet: str | None = None) -> v.Overview:
        """Devices by presence and model version, active alerts, deployments in progress."""
        return views.overview(service, fleet)

    @get(
        "/v1/views/devices/{device:str}",
        operation_id="viewDevice",
        summary="Dashboard: one device over time",
        sync_to_thread=True,
        responses=refusals(404),
        **role_options("read"),
    )
    def view_device(
        device: str,
        fleet: str | None = None,
        hours: Annotated[
            float, Parameter(gt=0, le=views.MAX_HOURS, description="The span, in hours")
        ] = 6.0,
    ) -> v.DeviceView:
        """Predictions/s, errors and latency p50/p95 per time bucket (merged histograms); each
        feature's deciding checks over time with their thresholds and noise floors; the alert
        timeline, recent events, the models it ran and the deployments it was in."""
        found = device_fleet(service, device, fleet)
        try:
            return views.device_view(service, found, device, hours)
        except KeyError:
            raise NotFoundException(f"no device {device!r}") from None

    @get(
        "/v1/views/models/{name:str}",
        operation_id="viewModel",
        summary="Dashboard: a model's versions",
        sync_to_thread=True,
        responses=refusals(404),
        **role_options("read"),
    )
    def view_model(name: str) -> v.ModelView:
        """Every registered version: lineage, fidelity from the bundle's conversion report,
        the devices running it."""
        try:
            return views.model_view(service, name)
        except KeyError:
            raise NotFoundException(f"no registered model {name!r}") from None

    handlers: list[Any] = [root, page, view_fleet, view_device, view_model]
    return handlers
