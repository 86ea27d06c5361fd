"""CORS_ORIGINS: exact origins checked at start; CORS on the /v1 API for listed origins only (nothing for any other
origin, nothing outside /v1, nothing at all when unset); the WebSocket handshake refused with 403 for a page on a
foreign origin, open to the server's own pages and to clients that send no Origin."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from assetpay_merchant import cli
from assetpay_merchant.api.cors import BrowserOrigins, same_origin
from assetpay_merchant.app import create_app
from assetpay_merchant.config import Settings
from tests.live.conftest import serving
from tests.support import app_settings, auth, register_user, user_token

SHOP = "https://shop.example.com"
LOCAL = "http://localhost:5173"
FOREIGN = "https://evil.example"
ENTRIES = "https://Shop.Example.com:443, http://localhost:5173,"  # as an operator may write them


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


async def preflight(client: httpx.AsyncClient, path: str, origin: str, method: str, headers: str) -> httpx.Response:
    return await client.options(
        path,
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
    )


@pytest.fixture(scope="module")
async def cors_app(database_url: str) -> AsyncIterator[FastAPI]:
    """The service with two frontends listed, written loosely: what it allows is what the browser will send."""
    listed = Settings.model_validate({"cors_origins": ENTRIES}).cors_origins
    settings = app_settings(database_url).model_copy(
        update={"cors_origins": listed, "db_pool_size": 4, "db_max_overflow": 4}
    )
    application = create_app(settings)
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def cors_client(cors_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cors_app), base_url="http://api.test") as http:
        yield http


# --- the setting -----------------------------------------------------------------------------------------------


def test_the_setting_is_read_as_a_comma_separated_list_written_as_browsers_send_origins(monkeypatch):
    monkeypatch.setenv("CORS_ORIGINS", ENTRIES + " http://[0:0::1]:8080, HTTP://127.0.0.1:80")
    assert Settings(_env_file=None).cors_origins == (SHOP, LOCAL, "http://[::1]:8080", "http://127.0.0.1")


@pytest.mark.parametrize("value", [None, "", " , "])
def test_unset_or_empty_allows_no_origin(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CORS_ORIGINS", raising=False)
    else:
        monkeypatch.setenv("CORS_ORIGINS", value)
    assert Settings(_env_file=None).cors_origins == ()


@pytest.mark.parametrize(
    "entry",
    [
        "*",
        "null",
        "https://*.example.com",
        "https://shop.example.com/",
        "https://shop.example.com/app",
        "https://shop.example.com?x=1",
        "shop.example.com",
        "ftp://shop.example.com",
        "https://user:pw@shop.example.com",
        "https://shop.example.com:99999",
        "https://shop.example.com:0",
        "https://shop..example.com",
        "https://",
        "https://bücher.example",
        "https://shop .example.com",
    ],
)
def test_a_wildcard_or_anything_but_an_exact_origin_is_refused_naming_the_variable(monkeypatch, entry):
    monkeypatch.setenv("CORS_ORIGINS", f"{SHOP},{entry}")
    with pytest.raises(ValidationError, match="CORS_ORIGINS"):
        Settings(_env_file=None)


def test_serve_refuses_to_start_with_a_wildcard(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # no .env of the machine's
    monkeypatch.setenv("CORS_ORIGINS", "*")
    assert cli.main(["serve"]) == 2
    assert "CORS_ORIGINS may not be *" in capsys.readouterr().err


def test_a_preflight_cache_longer_than_a_day_is_refused():
    with pytest.raises(ValidationError, match="cors_max_age_seconds"):
        Settings(_env_file=None, cors_max_age_seconds=86_401)


# --- REST ------------------------------------------------------------------------------------------------------


async def test_a_preflight_from_a_listed_origin_allows_the_api_headers_with_credentials(cors_client):
    response = await preflight(
        cors_client, "/v1/withdrawals", SHOP, "POST", "authorization,content-type,idempotency-key"
    )
    assert response.status_code == 200, response.text
    headers = cors_headers(response)
    assert headers["access-control-allow-origin"] == SHOP
    assert headers["access-control-allow-credentials"] == "true"
    assert headers["access-control-max-age"] == "600"
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    assert {m.strip() for m in headers["access-control-allow-methods"].split(",")} == {"GET", "POST"}
    assert "Origin" in response.headers["vary"]


async def test_every_listed_origin_is_allowed_on_its_own(cors_client):
    response = await preflight(cors_client, "/v1/balance", LOCAL, "GET", "authorization")
    assert response.headers["access-control-allow-origin"] == LOCAL


@pytest.mark.parametrize(
    "origin",
    [
        FOREIGN,
        "https://shop.example.com.evil.example",
        "http://shop.example.com",  # the listed host on another scheme is another origin
        "https://shop.example.com:8443",
        "null",
    ],
)
async def test_a_preflight_from_an_origin_not_listed_gets_no_cors_header(cors_client, origin):
    response = await preflight(cors_client, "/v1/withdrawals", origin, "POST", "authorization,idempotency-key")
    assert response.status_code >= 400
    assert cors_headers(response) == {}


async def test_the_admin_key_cannot_be_sent_cross_origin(cors_client):
    response = await preflight(cors_client, "/v1/users/u-1", SHOP, "PUT", "x-admin-key,content-type")
    assert response.status_code == 400
    assert "x-admin-key" not in response.headers.get("access-control-allow-headers", "").lower()
    assert "PUT" not in response.headers.get("access-control-allow-methods", "")


async def test_an_answer_to_a_listed_origin_is_readable_and_exposes_what_a_frontend_reads(cors_client):
    await register_user(cors_client, "cors-1")
    response = await cors_client.get("/v1/balance", headers=auth("cors-1") | {"Origin": SHOP})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == SHOP
    assert response.headers["access-control-allow-credentials"] == "true"
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "idempotent-replayed"} <= exposed


async def test_errors_are_readable_cross_origin_too(cors_client):
    """A frontend must see the 401 or 402 body, not an opaque network error."""
    unauthenticated = await cors_client.get("/v1/balance", headers={"Origin": SHOP})
    assert (unauthenticated.status_code, unauthenticated.headers["access-control-allow-origin"]) == (401, SHOP)
    await register_user(cors_client, "cors-2")
    headers = auth("cors-2") | {"Origin": SHOP, "Idempotency-Key": str(uuid.uuid4())}
    body = {"items": [{"itemId": "listing-1", "price": "5.00"}]}
    first = await cors_client.post("/v1/withdrawals", json=body, headers=headers)
    again = await cors_client.post("/v1/withdrawals", json=body, headers=headers)
    assert (first.status_code, first.json()["error"]["key"]) == (402, "INSUFFICIENT_BALANCE")
    assert (again.status_code, again.headers["idempotent-replayed"]) == (402, "true")
    assert again.headers["access-control-allow-origin"] == SHOP


async def test_an_answer_to_an_origin_not_listed_carries_no_cors_header(cors_client):
    await register_user(cors_client, "cors-3")
    response = await cors_client.get("/v1/balance", headers=auth("cors-3") | {"Origin": FOREIGN})
    assert response.status_code == 200  # answered as to any client; the browser keeps it from the page
    assert cors_headers(response) == {}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/webhooks/assetpay"), ("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/openapi.json")],
)
async def test_nothing_outside_the_v1_api_answers_cross_origin(cors_client, method, path):
    simple = await cors_client.request(method, path, headers={"Origin": SHOP})
    checked = await preflight(cors_client, path, SHOP, method, "content-type")
    assert cors_headers(simple) == {}
    assert cors_headers(checked) == {}


async def test_with_the_setting_unset_no_origin_is_allowed(client):
    """The session's app runs with CORS_ORIGINS unset."""
    await register_user(client, "cors-4")
    checked = await preflight(client, "/v1/balance", SHOP, "GET", "authorization")
    simple = await client.get("/v1/balance", headers=auth("cors-4") | {"Origin": SHOP})
    assert (simple.status_code, cors_headers(simple), cors_headers(checked)) == (200, {}, {})


async def test_the_preflight_cache_is_the_configured_one():
    async def hello(_: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    inner = Starlette(routes=[Route("/v1/hello", hello)])
    app = BrowserOrigins(inner, origins=[SHOP], max_age=120)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as http:
        response = await preflight(http, "/v1/hello", SHOP, "GET", "authorization")
    assert response.headers["access-control-max-age"] == "120"


# --- WebSocket -------------------------------------------------------------------------------------------------


@pytest.fixture
async def cors_served(cors_app: FastAPI) -> AsyncIterator[str]:
    async with serving(cors_app) as address:
        yield address


async def first_message(address: str, user_id: str, origin: str | None) -> str:
    """The type of what the server sends first to a socket opened from a page on `origin` (None: not a browser)."""
    url = f"ws://{address}/v1/ws?token={user_token(user_id)}"
    async with connect(url, origin=origin, open_timeout=5, close_timeout=2) as socket:
        return str(json.loads(await socket.recv())["type"])


async def refused_status(address: str, origin: str) -> int:
    """The HTTP status a handshake from a page on `origin` is refused with (it fails if the socket opens)."""
    url = f"ws://{address}/v1/ws?token={user_token('ws-cors')}"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, origin=origin, open_timeout=5):
            pass
    return refused.value.response.status_code


@pytest.mark.parametrize("origin", [SHOP, LOCAL, None])
async def test_a_socket_from_a_listed_origin_or_from_no_browser_opens(cors_client, cors_served, origin):
    await register_user(cors_client, "ws-cors")
    assert await first_message(cors_served, "ws-cors", origin) == "ready"


async def test_a_socket_from_the_servers_own_page_opens(cors_client, cors_served):
    await register_user(cors_client, "ws-cors")
    assert await first_message(cors_served, "ws-cors", f"http://{cors_served}") == "ready"


@pytest.mark.parametrize("origin", [FOREIGN, "null", "http://shop.example.com", "http://127.0.0.1:1"])
async def test_a_socket_from_a_foreign_page_is_refused_before_it_opens(cors_served, origin):
    assert await refused_status(cors_served, origin) == 403


async def test_with_the_setting_unset_only_the_servers_own_pages_open_a_socket(app, client):
    """The session's app runs with CORS_ORIGINS unset."""
    await register_user(client, "ws-cors")
    async with serving(app) as served:
        assert await refused_status(served, SHOP) == 403
        assert await first_message(served, "ws-cors", f"http://{served}") == "ready"


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("https://api.shop.example", "api.shop.example", True),
        ("https://api.shop.example", "api.shop.example:443", True),
        ("http://api.shop.example", "api.shop.example", True),  # TLS ended at a proxy: the scheme is not seen
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("https://api.shop.example", "api.shop.example:8443", False),
        ("https://evil.example", "api.shop.example", False),
        ("https://api.shop.example", None, False),
        ("null", "api.shop.example", False),
        ("chrome-extension://abc", "abc", False),
        ("http://127.0.0.1:x", "127.0.0.1", False),
    ],
)
def test_the_servers_own_origin_is_the_host_the_handshake_went_to(origin, host, same):
    assert same_origin(origin, host) is same
