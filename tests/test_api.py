"""The service's REST API: tokens and roles on every route, tokens hashed at rest, signed bundle
links, the OpenAPI description and its docs page, HTTPS, and the tokens CLI.

Most tests call the real Litestar application in-process (``litestar.testing.TestClient``:
ASGI, no socket); the HTTPS tests run the real uvicorn server on a free port."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from device_agent.download import download
from edgeops.core.errors import AccessDenied, DownloadFailed, EdgeOpsError, UsageError
from edgeops.service import storage
from edgeops.service.api import make_app
from edgeops.service.auth import ROLES, BundleLinks, Tokens
from edgeops.service.config import ServiceConfig
from edgeops.service.report import ServiceClient
from edgeops.service.server import Service
from edgeops.service.storage import schema
from edgeops.testing import Mosquitto, Postgres, make_test_pki

NEEDS: dict[tuple[str, str], str] = {
    ("GET", "/v1/fleet"): "read",
    ("GET", "/v1/devices/{device}"): "read",
    ("GET", "/v1/drift"): "read",
    ("GET", "/v1/alerts"): "read",
    ("GET", "/v1/models"): "read",
    ("POST", "/v1/models"): "admin",
    ("GET", "/v1/stats"): "read",
    ("GET", "/v1/dead-letters"): "read",
    ("GET", "/v1/deployments"): "read",
    ("POST", "/v1/deployments"): "deploy",
    ("GET", "/v1/deployments/{dep_id}"): "read",
    ("POST", "/v1/deployments/{dep_id}/abort"): "deploy",
    ("POST", "/v1/devices/{device}/commands"): "deploy",
    ("GET", "/v1/bundles/{sha256}"): "read",  # or a signed link
    ("GET", "/v1/whoami"): "read",
    ("GET", "/metrics"): "read",
    ("GET", "/v1/views/fleet"): "read",
    ("GET", "/v1/views/devices/{device}"): "read",
    ("GET", "/v1/views/models/{name}"): "read",
}
"""Every protected route and the lowest role that may call it."""

OPEN = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/assets/{name}"),
    ("GET", "/schema"),  # Litestar's own copy of the description
    ("GET", "/schema/openapi.json"),
    ("GET", "/schema/{path}"),
    ("GET", "/"),  # the dashboard: pages and scripts, no data (that needs a read token)
    ("GET", "/ui"),  # /ui/ too
    ("GET", "/ui/{name}"),
}
"""Every route that needs no token."""

FREE_FORM = {"Event.data", "Alert.detail", "DeviceState.health"}
"""The only untyped fields of the API's bodies: free-form where they come from."""


def _config(tmp: Path, **kw: Any) -> ServiceConfig:
    return ServiceConfig(
        db=kw.pop("db", f"sqlite:///{tmp / 'service.db'}"),
        http_port=0,
        group=f"g{uuid.uuid4().hex[:6]}",
        fleet_interval=3600.0,
        **kw,
    )


class Api:
    """A service (not connected to a broker) with a registered bundle, its application in a
    test client, and a token of each role."""

    def __init__(self, service: Service, bundle: Path) -> None:
        self.service = service
        service.register_bundle(bundle)
        self.bundle = bundle.read_bytes()
        self.sha256 = hashlib.sha256(self.bundle).hexdigest()
        self.app: Litestar = make_app(service)
        self.client = TestClient(self.app)
        self.tokens = {role: service.tokens.create(f"t-{role}", role) for role in ROLES}

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
def api(
    tmp_path: Path, digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path]
) -> Iterator[Api]:
    cfg = _config(tmp_path, trusted_keys=(signing_keys[1],), public_url="http://127.0.0.1:8480")
    service = Service(cfg, http=False)
    a = Api(service, digits_bundles[0])
    with a.client:
        yield a
    service.engine_db.dispose()


def _routes(app: Litestar) -> set[tuple[str, str]]:
    out = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for method in route.methods - {"HEAD", "OPTIONS"}:
                out.add((method, route.path_format))
    return out


def _call(api: Api, method: str, path: str, headers: dict[str, str]) -> Any:
    url = path.format(device="dev-1", dep_id="d-none", sha256=api.sha256, name="digits")
    if method == "GET":
        return api.client.get(url, headers=headers)
    if path == "/v1/models":
        return api.client.post(url, content=b"not a bundle", headers=headers)
    if path == "/v1/deployments":
        return api.client.post(url, json={"bundle": "nope-1", "fleet": "f"}, headers=headers)
    if path.endswith("/commands"):
        return api.client.post(url, json={"kind": "ping"}, headers=headers)
    return api.client.post(url, headers=headers)


def _error(response: Any) -> str:
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    return str(body["error"])


# --- who may call what --------------------------------------------------------------------------


def test_the_routes_are_exactly_those_described_here(api: Api) -> None:
    """A new route must be added to NEEDS or OPEN, so that the tests below cover it."""
    assert _routes(api.app) == set(NEEDS) | OPEN


@pytest.mark.parametrize(("method", "path"), sorted(NEEDS))
def test_every_protected_route_refuses_without_a_token_and_below_its_role(
    api: Api, method: str, path: str
) -> None:
    need = NEEDS[(method, path)]
    r = _call(api, method, path, {})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert "needs a token" in _error(r)
    for header in ("Bearer eo_" + "A" * 43, "Bearer not-a-token", "Basic dXNlcjpwdw==", "Bearer"):
        r = _call(api, method, path, {"Authorization": header})
        assert r.status_code == 401, (header, r.text)
        _error(r)
    for role in ROLES[: ROLES.index(need)]:
        r = _call(api, method, path, api.auth(role))
        assert r.status_code == 403, (role, r.text)
        assert f"has the {role} role; this needs {need}" in _error(r)
    for role in ROLES[ROLES.index(need) :]:
        r = _call(api, method, path, api.auth(role))
        assert r.status_code not in (401, 403), (role, r.text)


def test_open_routes_answer_without_a_token(api: Api) -> None:
    assert api.client.get("/healthz").status_code == 200
    ready = api.client.get("/readyz")  # no broker here: alive, not ready, and it says why
    assert ready.status_code == 503 and ready.json()["checks"]["broker"] is False
    assert api.client.get("/openapi.json").status_code == 200
    assert api.client.get("/docs").status_code == 200
    assert api.client.get("/docs/assets/swagger-ui.css").status_code == 200


def test_each_role_does_what_it_may(api: Api, digits_bundles: tuple[Path, Path]) -> None:
    r = api.client.post(
        "/v1/models", content=digits_bundles[1].read_bytes(), headers=api.auth("admin")
    )
    assert r.status_code == 201 and r.json() == {"name": "digits", "version": "1.1.0"}
    models = api.client.get("/v1/models", headers=api.auth("read")).json()["models"]
    assert [m["version"] for m in models] == ["1.0.0", "1.1.0"]
    r = api.client.post(
        "/v1/deployments",
        json={"bundle": "digits-1.1.0", "fleet": "f", "policy": {"bake": 1}},
        headers=api.auth("deploy"),
    )
    assert r.status_code == 400 and _error(r) == "no device to update in fleet 'f'"
    r = api.client.post("/v1/models", content=b"garbage", headers=api.auth("admin"))
    assert (
        r.status_code == 400 and _error(r) == "the upload is not a bundle: File is not a zip file"
    )


def test_a_revoked_token_is_refused_at_once(api: Api) -> None:
    assert api.client.get("/v1/stats", headers=api.auth("read")).status_code == 200
    api.service.tokens.revoke("t-read")
    r = api.client.get("/v1/stats", headers=api.auth("read"))
    assert r.status_code == 401 and _error(r) == "unknown or revoked token"


def test_hostile_requests_get_one_line_refusals(api: Api) -> None:
    deploy = api.auth("deploy")
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("/v1/deployments", {"content": b"{not json"}, 400, "JSON is malformed"),
        ("/v1/deployments", {"json": ["a", "list"]}, 400, "Expected `object`, got `array`"),
        ("/v1/deployments", {"json": {"bundle": "x"}}, 400, "missing required field `fleet`"),
        (
            "/v1/deployments",
            {"json": {"bundle": "x", "fleet": "f", "trigger": "me"}},
            400,
            "unknown field `trigger`",
        ),
        (
            "/v1/deployments",
            {"json": {"bundle": "x", "fleet": "f", "policy": {"stages": [50, 10]}}},
            400,
            "--stages must increase",
        ),
        (
            "/v1/deployments",
            {"json": {"bundle": "x", "fleet": "f", "policy": {"bake": "soon"}}},
            400,
            "body policy.bake: Expected `float`, got `str`",
        ),
        (
            "/v1/deployments",
            {"json": {"bundle": "x", "fleet": "f", "policy": {"nested": [[[[[]]]]]}}},
            400,
            "unknown field `nested`",
        ),
        ("/v1/deployments", {"content": b"[" * 100_000}, 400, "nested too deeply"),
        ("/v1/deployments", {"content": b"[" * 99_999 + b"]" * 99_999}, 400, "nested too deeply"),
    ]
    for path, kw, status, text in cases:
        r = api.client.post(path, headers=deploy, **kw)
        assert r.status_code == status and text in _error(r), (kw, r.text)
    read = api.auth("read")
    for url, text in [
        ("/v1/drift?since=yesterday", "query parameter since"),
        ("/v1/dead-letters?limit=100000", "query parameter limit"),
        ("/v1/alerts?all=maybe", "query parameter all"),
        ("/v1/nothing-here", "Not Found"),
    ]:
        r = api.client.get(url, headers=read)
        assert r.status_code in (400, 404) and text in _error(r), (url, r.text)
    r = api.client.post("/v1/deployments/d-none/abort", headers=deploy)
    assert r.status_code == 404 and _error(r) == "no deployment 'd-none'"
    assert api.client.get("/v1/deployments/d-none/abort", headers=deploy).status_code == 405


# --- tokens at rest -----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tokens.db'}"
    else:
        with Postgres() as pg:
            yield pg.url


def test_tokens_are_kept_hashed_and_checked_by_role(database: str, tmp_path: Path) -> None:
    engine = storage.connect(database)
    try:
        tokens = Tokens(storage.Store(engine))
        made = {role: tokens.create(f"ops-{role}", role) for role in ROLES}
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(sa.select(schema.api_tokens)).mappings()]
        stored = json.dumps(rows, default=str)
        for role, token in made.items():
            assert re.fullmatch(r"eo_[A-Za-z0-9_-]{43}", token)
            assert token not in stored and token[3:] not in stored
            assert hashlib.sha256(token.encode()).hexdigest() in stored
            found = tokens.check(token)
            assert found is not None and found.role == role and found.name == f"ops-{role}"
        if database.startswith("sqlite"):  # nothing of a token in the database's files either
            raw = b"".join(p.read_bytes() for p in tmp_path.glob("tokens.db*"))
            assert all(token.encode() not in raw for token in made.values())
        assert [t.name for t in tokens.list()] == [f"ops-{r}" for r in ROLES]
        assert tokens.check(made["read"][:-1] + ("A" if made["read"][-1] != "A" else "B")) is None
        tokens.revoke("ops-read")
        assert tokens.check(made["read"]) is None
        with pytest.raises(UsageError, match="no token named 'ops-read'"):
            tokens.revoke("ops-read")
        with pytest.raises(UsageError, match="exists"):
            tokens.create("ops-admin", "read")
        with pytest.raises(UsageError, match="unknown role 'root'"):
            tokens.create("x", "root")
        for name in ("", "a b", "x" * 65, "-lead", "ops\n", "dé"):
            with pytest.raises(UsageError, match="token name"):
                tokens.create(name, "read")
    finally:
        engine.dispose()


def test_the_tokens_cli_makes_lists_and_revokes(
    tmp_path: Path, cli, digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path]
) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'service.db'}"
    r = cli("tokens", "create", "--role", "deploy", "--name", "ci", "--db", url)
    assert r.code == 0 and "shown this once" in r.err
    token = r.out.strip()
    assert re.fullmatch(r"eo_[A-Za-z0-9_-]{43}", token)
    out = tmp_path / "admin.token"
    r = cli("tokens", "create", "--role", "admin", "--name", "ops", "--db", url, "--out", out)
    assert r.code == 0 and r.out == "" and out.stat().st_mode & 0o777 == 0o600
    r = cli("tokens", "create", "--role", "admin", "--name", "ops2", "--db", url, "--out", out)
    assert r.code == 8 and "exists" in r.err  # never written over (and no token made)
    r = cli("tokens", "create", "--role", "read", "--name", "ci", "--db", url)
    assert r.code == 2 and r.err.strip() == "error: a token named 'ci' exists; revoke it first"
    assert cli("tokens", "create", "--role", "root", "--name", "x", "--db", url).code == 2
    r = cli("tokens", "list", "--db", url)
    assert r.code == 0 and re.search(r"ci\s+deploy", r.out) and re.search(r"ops\s+admin", r.out)
    assert "ops2" not in r.out and "eo_" not in r.out
    listed = json.loads(cli("tokens", "list", "--db", url, "--json").out)
    assert [(t["name"], t["role"]) for t in listed] == [("ci", "deploy"), ("ops", "admin")]
    # a running service takes them: the database is the one it reads
    cfg = _config(tmp_path, trusted_keys=(signing_keys[1],))
    service = Service(cfg, http=False)
    try:
        with TestClient(make_app(service)) as client:
            bearer = {"Authorization": f"Bearer {token}"}
            assert client.get("/v1/fleet", headers=bearer).status_code == 200
            r = client.post("/v1/models", content=b"x", headers=bearer)
            assert r.status_code == 403 and "needs admin" in r.text
            admin = {"Authorization": f"Bearer {out.read_text().strip()}"}
            r = client.post("/v1/models", content=digits_bundles[0].read_bytes(), headers=admin)
            assert r.status_code == 201
            r = cli("tokens", "revoke", "ci", "--db", url)
            assert r.code == 0 and "revoked" in r.err
            assert client.get("/v1/fleet", headers=bearer).status_code == 401
            used = json.loads(cli("tokens", "list", "--db", url, "--json").out)
            assert [t["name"] for t in used] == ["ops"] and used[0]["last_used"] is not None
    finally:
        service.engine_db.dispose()
    r = cli("tokens", "revoke", "ci", "--db", url)
    assert r.code == 2 and r.err.strip() == "error: no token named 'ci'"


# --- signed bundle links ------------------------------------------------------------------------


def test_a_signed_link_fetches_its_bundle_until_it_expires(api: Api) -> None:
    service = api.service
    url = service.bundle_url(api.sha256)  # what an update command carries
    path_query = url.split("://", 1)[1].split("/", 1)[1]
    link = "/" + path_query
    assert re.fullmatch(rf"/v1/bundles/{api.sha256}\?expires=\d+&sig=[A-Za-z0-9_-]{{43}}", link)
    r = api.client.get(link)  # no token: the link is the credential
    assert r.status_code == 200 and r.content == api.bundle
    r = api.client.get(link, headers={"Range": "bytes=100-"})  # a resumed download
    assert r.status_code == 206 and r.content == api.bundle[100:]
    assert r.headers["content-range"] == f"bytes 100-{len(api.bundle) - 1}/{len(api.bundle)}"
    r = api.client.get(link, headers={"Range": f"bytes={len(api.bundle)}-"})
    assert r.status_code == 416
    expires = int(re.search(r"expires=(\d+)", link).group(1))  # type: ignore[union-attr]
    sig = re.search(r"sig=([^&]+)", link).group(1)  # type: ignore[union-attr]
    assert time.time() + service.config.bundle_link_seconds <= expires + 1
    other = "0" * 64
    refused = {
        "expired": service.links.query(api.sha256, now=time.time() - 2 * 900),
        "later expiry, same signature": f"expires={expires + 3600}&sig={sig}",
        "signature changed": f"expires={expires}&sig={sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}",
        "no signature": f"expires={expires}",
        "no expiry": f"sig={sig}",
        "not a time": f"expires=soon&sig={sig}",
        "huge expiry": f"expires={'9' * 5000}&sig={sig}",
        "non-ascii signature": f"expires={expires}&sig=%C3%A9t%C3%A9",
    }
    for why, query in refused.items():
        r = api.client.get(f"/v1/bundles/{api.sha256}?{query}")
        assert r.status_code == 403, (why, r.text)
        _error(r)
    r = api.client.get(f"/v1/bundles/{other}?expires={expires}&sig={sig}")  # another bundle
    assert r.status_code == 403 and "does not match" in _error(r)
    r = api.client.get(f"/v1/bundles/{api.sha256}")  # neither a link nor a token
    assert r.status_code == 401
    r = api.client.get(f"/v1/bundles/{api.sha256}", headers=api.auth("read"))
    assert r.status_code == 200 and r.content == api.bundle
    r = api.client.get(f"/v1/bundles/{other}", headers=api.auth("read"))
    assert r.status_code == 404


def test_links_are_signed_with_the_database_secret(tmp_path: Path, api: Api) -> None:
    """Every process on one database shares the secret (a link one made, another serves); a
    service on another database refuses it."""
    query = api.service.links.query(api.sha256)
    same = BundleLinks.of(storage.Store(api.service.engine_db), valid_for=60)
    assert same.problem(api.sha256, *re.findall(r"=([^&]+)", query)) is None
    engine = storage.connect(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        other = BundleLinks.of(storage.Store(engine), valid_for=60)
        assert other.problem(api.sha256, *re.findall(r"=([^&]+)", query)) == (
            "the link's signature does not match"
        )
    finally:
        engine.dispose()
    with pytest.raises(ValueError):
        BundleLinks(b"short", valid_for=60)


# --- the description ----------------------------------------------------------------------------


def _empty_schemas(schema: dict[str, Any]) -> set[str]:
    """Component fields whose schema says nothing about their values (``{}``, or an object
    without properties or typed values)."""
    found = set()
    for name, comp in schema["components"]["schemas"].items():
        for field, spec in comp.get("properties", {}).items():
            options = spec.get("oneOf", [spec])
            for s in options:
                untyped = s == {} or (
                    s.get("type") == "object"
                    and "properties" not in s
                    and s.get("additionalProperties") in (None, {}, True)
                )
                if untyped:
                    found.add(f"{name}.{field}")
    return found


def test_the_openapi_document_describes_every_route_with_typed_bodies(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    described = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert described == set(NEEDS) | {("GET", "/healthz"), ("GET", "/readyz")}
    operations = [op for item in doc["paths"].values() for op in item.values()]
    ids = [op["operationId"] for op in operations]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[a-z][A-Za-z]+", i) for i in ids)
    assert all(op["summary"] and op["description"] for op in operations)
    assert "Wrap a given callable" not in json.dumps(doc)  # a framework docstring, not ours
    for method, path in NEEDS:
        op = doc["paths"][path][method.lower()]
        assert {"token": []} in op["security"], path
        for code in ("401", "403"):
            assert op["responses"][code]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ApiError"
            }
        ok = [c for c in op["responses"] if c.startswith("2")]
        assert ok, path
        for code in ok:
            content = op["responses"][code]["content"]
            if path == "/v1/bundles/{sha256}":
                assert content["application/octet-stream"]["schema"]["format"] == "binary"
            elif path == "/metrics":
                assert list(content) == ["text/plain; version=0.0.4; charset=utf-8"]
            else:
                assert content["application/json"]["schema"]["$ref"].startswith(
                    "#/components/schemas/"
                ), (path, content)
    for path in ("/healthz", "/readyz"):
        op = doc["paths"][path]["get"]
        assert not op.get("security")
        assert op["responses"]["503"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Health"
        }
    upload = doc["paths"]["/v1/models"]["post"]["requestBody"]["content"]
    assert upload["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    start = doc["paths"]["/v1/deployments"]["post"]["requestBody"]["content"]
    assert start["application/json"]["schema"] == {"$ref": "#/components/schemas/DeploymentRequest"}
    schemas = doc["components"]["schemas"]
    assert set(schemas["DeploymentRequest"]["required"]) == {"bundle", "fleet"}
    assert schemas["PolicyRequest"]["properties"]["on_timeout"]["oneOf"][0]["enum"] == [
        "fail",
        "skip",
    ]
    assert doc["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from `edgeops tokens create` (read, deploy, admin).",
    }
    assert _empty_schemas(doc) == FREE_FORM


def test_the_request_policy_names_every_rollout_setting() -> None:
    """A setting added to RolloutPolicy must be added to the request and response bodies."""
    from dataclasses import fields

    from edgeops.service import api_types as t
    from edgeops.service.intake import Counters
    from edgeops.service.rollout_policy import RolloutPolicy

    names = [f.name for f in fields(RolloutPolicy)]
    assert list(t.PolicyRequest.__struct_fields__) == names
    assert list(t.Policy.__struct_fields__) == names
    assert {f.name for f in fields(Counters)} <= set(t.Stats.__struct_fields__)


def test_the_docs_page_is_served_from_the_package(api: Api) -> None:
    page = api.client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text and '"/v1/deployments"' in page.text
    linked = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert len(linked) == 4 and all(u.startswith("/docs/assets/") for u in linked), linked
    for u in linked:
        r = api.client.get(u)
        assert r.status_code == 200 and len(r.content) > 1000, u
        assert r.headers["cache-control"] == "public, max-age=86400"
    for bad in ("../api.py", "index.html", "%2e%2e%2fLICENSE", "swagger-editor.js"):
        assert api.client.get(f"/docs/assets/{bad}").status_code == 404


# --- an open API, when asked for ----------------------------------------------------------------


def test_an_insecure_api_is_open_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Mosquitto() as broker:  # its own: the shared one holds other tests' retained devices
        _insecure_api_is_open(tmp_path, broker, caplog)


def _insecure_api_is_open(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(tmp_path, broker=f"mqtt://127.0.0.1:{broker.port}", insecure_api=True)
    with caplog.at_level(logging.WARNING), Service(cfg) as service:
        client = ServiceClient(service.http.address)
        assert client.get("/v1/fleet")["devices"] == []
        with pytest.raises(UsageError, match="is not a bundle"):
            client.post("/v1/models", b"x")  # refused for what it is, not for who sent it
    assert any("the REST API is open" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING),
        Service(replace(cfg, insecure_api=False)) as service,
        pytest.raises(AccessDenied, match="no token was given"),
    ):
        ServiceClient(service.http.address).get("/v1/fleet")
    assert any("no REST API token exists" in r.getMessage() for r in caplog.records)


# --- HTTPS --------------------------------------------------------------------------------------


def test_the_api_serves_https_and_devices_download_against_their_ca(
    broker: Mosquitto,
    tmp_path: Path,
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    cli,
) -> None:  # type: ignore[no-untyped-def]
    pki = make_test_pki(tmp_path / "pki")
    stranger = make_test_pki(tmp_path / "other")
    cfg = _config(
        tmp_path,
        broker=f"mqtt://127.0.0.1:{broker.port}",
        http_cert=pki.server_cert,
        http_key=pki.server_key,
        trusted_keys=(signing_keys[1],),
        bundles=(digits_bundles[0],),
    )
    with Service(cfg) as service:
        url = service.http.address
        assert url.startswith("https://127.0.0.1:")
        token = service.tokens.create("reader", "read")
        assert ServiceClient(url, token=token, ca=pki.ca).get("/v1/models")["models"]
        with pytest.raises(EdgeOpsError, match="CERTIFICATE_VERIFY_FAILED"):
            ServiceClient(url, token=token).get("/v1/models")  # the system's CAs do not know it
        with pytest.raises(EdgeOpsError, match="CERTIFICATE_VERIFY_FAILED"):
            ServiceClient(url, token=token, ca=stranger.ca).get("/v1/models")
        with pytest.raises(EdgeOpsError, match="cannot reach"):
            ServiceClient(url.replace("https", "http"), token=token).get("/v1/models")
        r = cli("models", "list", "--url", url, "--ca", pki.ca, "--token", token)
        assert r.code == 0 and "1.0.0" in r.out
        # a device downloads with the link of an update command and the CA of its config
        data = digits_bundles[0].read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        link = service.bundle_url(sha)
        assert link.startswith(url)
        common = {"size": len(data), "max_bytes": 2**30, "timeout": 10.0, "attempts": 1}
        dest = tmp_path / "got.bundle"
        download(link, dest, ca=pki.ca, **common)
        assert dest.read_bytes() == data
        for ca in (None, stranger.ca):
            with pytest.raises(DownloadFailed, match="CERTIFICATE_VERIFY_FAILED"):
                download(link, tmp_path / f"{ca is None}.part", ca=ca, **common)
        with pytest.raises(DownloadFailed, match="HTTP 403"):
            download(
                link.replace("expires=", "expires=1"), tmp_path / "x.part", ca=pki.ca, **common
            )
        with pytest.raises(DownloadFailed, match=r"update\.ca"):
            download(link, tmp_path / "y.part", ca=tmp_path / "missing.crt", **common)


def test_a_bad_certificate_is_refused_before_the_service_starts(
    tmp_path: Path, broker: Mosquitto
) -> None:
    pki = make_test_pki(tmp_path / "pki")
    base = _config(tmp_path, broker=f"mqtt://127.0.0.1:{broker.port}")
    for cert, key, text in [
        (pki.server_cert, None, "needs a certificate and its key"),
        (tmp_path / "missing.crt", pki.server_key, "--http-cert"),
        (pki.server_cert, pki.client_key, "--http-cert"),  # the key of another certificate
    ]:
        service = Service(replace(base, http_cert=cert, http_key=key))
        with pytest.raises(UsageError, match=text):
            service.start()
        assert service.http is None and not service.client.is_connected()
        service.engine_db.dispose()
