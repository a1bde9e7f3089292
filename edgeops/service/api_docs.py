"""How the REST API describes itself: its OpenAPI settings (security scheme, the bodies the
framework cannot see), ``/openapi.json``, and ``/docs`` (Swagger UI, its files served from the
``swagger-ui-py`` package: the browser fetches nothing from elsewhere)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.router import Router

from edgeops import __version__
from edgeops.core.errors import MissingExtraError
from edgeops.service.auth import OPEN

MAX_BUNDLE_BYTES = 512 * 2**20
"""The largest bundle ``POST /v1/models`` takes (devices download up to 500 MiB by default)."""

_OPEN = {"role": OPEN}


@dataclass
class BundleUpload(Operation):
    """``POST /v1/models`` in the schema: its body is the bundle file's bytes (the handler
    streams it to disk, so the framework never sees it as a parameter)."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description=f"The bundle file (at most {MAX_BUNDLE_BYTES} bytes).",
            content={
                "application/octet-stream": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
                )
            },
        )


@dataclass
class BundleDownload(Operation):
    """``GET /v1/bundles/{sha256}`` in the schema: the file's bytes, whole or a range."""

    def __post_init__(self) -> None:
        binary = {
            "application/octet-stream": OpenAPIMediaType(
                schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
            )
        }
        self.responses = {
            **(self.responses or {}),
            "200": OpenAPIResponse(description="The whole bundle", content=binary),
            "206": OpenAPIResponse(description="The part a Range header asked for", content=binary),
        }


def _swagger_static() -> Path:
    """Swagger UI's files, from the ``swagger-ui-py`` package (not imported: only its files)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("swagger-ui-py", "service")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def openapi_config() -> OpenAPIConfig:
    """The API's description: its title, the bearer token scheme, and Litestar's own copy of
    the document under ``/schema`` (open, as ``/openapi.json`` is)."""
    return OpenAPIConfig(
        title="edgeops service",
        version=__version__,
        description=(
            "The central service of an edgeops fleet: devices, drift, alerts, models, "
            "staged deployments. Send a token as `Authorization: Bearer TOKEN` "
            "(`edgeops tokens create`); roles: read < deploy < admin."
        ),
        use_handler_docstrings=True,
        components=Components(
            security_schemes={
                "token": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="A token from `edgeops tokens create` (read, deploy, admin).",
                )
            }
        ),
        render_plugins=[JsonRenderPlugin()],
        openapi_router=Router("/schema", route_handlers=[], opt=_OPEN, include_in_schema=False),
    )


def docs_routes() -> list[HTTPRouteHandler]:
    """``/openapi.json``, ``/docs`` and ``/docs/assets/{name}``, open to anyone."""

    static = _swagger_static()
    swagger = SwaggerRenderPlugin(
        path="/docs",
        js_url="/docs/assets/swagger-ui-bundle.js",
        css_url="/docs/assets/swagger-ui.css",
        standalone_preset_js_url="/docs/assets/swagger-ui-standalone-preset.js",
        favicon="<link rel='icon' type='image/png' href='/docs/assets/favicon-32x32.png'>",
    )
    cached: dict[str, bytes] = {}

    @get("/openapi.json", include_in_schema=False, sync_to_thread=False, opt=_OPEN)
    def openapi(request: Request[Any, Any, Any]) -> Response[bytes]:
        schema = request.app.openapi_schema.to_schema()
        return Response(JsonRenderPlugin.render_json(request, schema), media_type=MediaType.JSON)

    @get(
        "/docs",
        include_in_schema=False,
        sync_to_thread=False,
        media_type=MediaType.HTML,
        opt=_OPEN,
    )
    def docs(request: Request[Any, Any, Any]) -> bytes:
        return swagger.render(request, request.app.openapi_schema.to_schema())

    @get("/docs/assets/{name:str}", include_in_schema=False, sync_to_thread=True, opt=_OPEN)
    def docs_asset(name: str) -> Response[bytes]:
        kind = _ASSETS.get(name)
        if kind is None:
            raise NotFoundException(f"no asset {name!r}")
        if name not in cached:
            cached[name] = (static / name).read_bytes()
        return Response(
            cached[name], media_type=kind, headers={"Cache-Control": "public, max-age=86400"}
        )

    return [openapi, docs, docs_asset]
