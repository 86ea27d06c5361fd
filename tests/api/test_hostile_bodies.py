"""Hostile request bodies on every route of ours that reads one: each answers 422 VALIDATION_FAILED with our error
body, and nothing moves: no balance, trade, ledger entry, idempotency key or profile changes, and AssetPay is never
called.

The routes: `PUT /v1/users/{id}`, `POST /v1/deposits`, `POST /v1/withdrawals` (which take a body), and
`POST /v1/withdrawals/{id}/cancel`, `POST /v1/client-token` (which take none: they refuse any body but none or `{}`).
The bodies: deep nesting, numbers no field takes (100,000 digits, 1e999999, an exponent that would take minutes to
turn into an integer), NaN and Infinity, UTF-16 and UTF-32, Latin-1 bytes, NUL and unpaired-surrogate escapes, raw
control characters, truncated JSON, an empty body, and JSON that is not an object. (The webhook route has its own,
in tests/webhooks/test_hostile_bodies.py.)
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.api.deps import Resources
from tests.assetpay_respx import AssetPay, accept, mocked_assetpay, rows
from tests.gateway.fake_assetpay import ok
from tests.support import ADMIN_KEY, TRADE_URL, auth, balance, deliver_trade, ledger_problems, register_user, trade

FUNDS = Decimal("100.00")
ITEM = "730_12345678901"
LISTING = "listing-0001"
MARK = "__HOSTILE__"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: dict[str, Any] | None
    """A body the route accepts (None: it takes none)."""
    number_at: tuple[str | int, ...] = ()
    """Where in `body` a number goes."""
    string_at: tuple[str | int, ...] = ()
    """Where in `body` a string goes."""
    admin: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES = [
    Route(
        "PUT",
        "/v1/users/{user}",
        {"steamId": "{steam}", "tradeUrl": TRADE_URL, "clientData": {"kycLevel": 1, "kycHash": "h"}},
        number_at=("clientData", "kycLevel"),
        string_at=("clientData", "kycHash"),
        admin=True,
    ),
    Route(
        "POST",
        "/v1/deposits",
        {"items": [{"itemId": ITEM, "price": "10.75", "amount": 1}]},
        number_at=("items", 0, "amount"),
        string_at=("items", 0, "itemId"),
    ),
    Route(
        "POST",
        "/v1/withdrawals",
        {"items": [{"itemId": LISTING, "price": "4.20"}]},
        number_at=("items", 0, "price"),
        string_at=("items", 0, "itemId"),
    ),
    Route("POST", "/v1/withdrawals/{trade}/cancel", None),
    Route("POST", "/v1/client-token", None),
]


def _place(body: dict[str, Any], at: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    placed = copy.deepcopy(body)
    node: Any = placed
    for step in at[:-1]:
        node = node[step]
    node[at[-1]] = value
    return placed


def _splice(route: Route, at: tuple[str | int, ...], raw: bytes) -> bytes:
    """`route`'s valid body with the raw JSON bytes `raw` as the value at `at` (a field of a route that takes no body
    otherwise)."""
    if route.body is None:
        return b'{"value": ' + raw + b"}"
    return json.dumps(_place(route.body, at, MARK)).encode().replace(f'"{MARK}"'.encode(), raw)


def hostile_bodies(route: Route, valid: bytes) -> list[tuple[str, bytes, str | None]]:
    """(what, body, content type) for `route`; `valid` is a body it accepts (`{}` for one that takes none)."""

    def number(raw: bytes) -> bytes:
        return _splice(route, route.number_at, raw)

    def string(raw: bytes) -> bytes:
        return _splice(route, route.string_at, raw)

    text = valid.decode()
    json_type = "application/json"
    bodies: list[tuple[str, bytes, str | None]] = [
        ("50,000 nested [", b"[" * 50_000, json_type),
        ("50,000 nested [ closed", b"[" * 50_000 + b"]" * 50_000, json_type),
        ("50,000 nested objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, json_type),
        ("5,000 nested arrays in a field", number(b"[" * 5_000 + b"]" * 5_000), json_type),
        ("40 nested arrays in a field", number(b"[" * 40 + b"]" * 40), json_type),
        ("a 100,000-digit integer", b"9" * 100_000, json_type),
        ("a 100,000-digit integer in a field", number(b"9" * 100_000), json_type),
        ("a negative 100,000-digit integer in a field", number(b"-" + b"9" * 100_000), json_type),
        ("a 100,000-digit fraction in a field", number(b"0." + b"0" * 100_000 + b"1"), json_type),
        ("1e999999", b"1e999999", json_type),
        ("1e999999 in a field", number(b"1e999999"), json_type),
        ("-1e999999 in a field", number(b"-1e999999"), json_type),
        ("1e-999999 in a field", number(b"1e-999999"), json_type),
        ("1e99999999 in a field (minutes to make an integer of)", number(b"1e99999999"), json_type),
        ("NaN", b"NaN", json_type),
        ("NaN in a field", number(b"NaN"), json_type),
        ("Infinity in a field", number(b"Infinity"), json_type),
        ("-Infinity in a field", number(b"-Infinity"), json_type),
        ("a NUL escape", string(b'"ab\\u0000cd"'), json_type),
        ("a NUL escape in a key", string(b'"x"').replace(b"{", b'{"\\u0000": 1, ', 1), json_type),
        ("an unpaired surrogate escape", string(b'"ab\\ud800cd"'), json_type),
        ("a raw control character", string(b'"ab\x01cd"'), json_type),
        ("Latin-1 bytes", string('"café-é-ß"'.encode("latin-1")), json_type),
        ("truncated JSON", valid[: len(valid) // 2], json_type),
        ("truncated JSON, last byte", valid[:-1], json_type),
        ("two JSON texts", valid + b" " + valid, json_type),
        ("an array", b"[]", json_type),
        ("an array of the body", b"[" + valid + b"]", json_type),
        ("a string", b'"text"', json_type),
        ("a number", b"42", json_type),
        ("null", b"null", json_type),
        ("true", b"true", json_type),
        ("not JSON at all", b"<xml/>", json_type),
        ("text", b"hello", "text/plain"),
    ]
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"):
        bodies.append((f"the body in {encoding.upper()}", text.encode(encoding), json_type))
    bodies.append(("the body in UTF-16, said so", text.encode("utf-16"), "application/json; charset=utf-16"))
    if route.body is not None:
        bodies += [
            ("the body as text/plain", valid, "text/plain"),
            ("an empty body", b"", json_type),
            ("whitespace", b" \r\n\t ", json_type),
            ("the body without a content type", valid, None),
        ]
    else:
        bodies += [
            ("an object with a property", b'{"clientId": "someone-else"}', json_type),
            ("an object with a property, as text/plain", b'{"clientId": "someone-else"}', "text/plain"),
        ]
    return bodies


@pytest.fixture
async def raw_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An unhandled error comes back as the 500 the app answers, so the assertion names the body that caused it."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://backend.test", timeout=60) as http:
        yield http


@pytest.fixture
def assetpay(resources: Resources) -> Iterator[AssetPay]:
    with mocked_assetpay(resources) as fake:
        yield fake


@dataclass
class World:
    user: str
    steam_id: str
    withdrawal: str


@pytest.fixture
async def world(raw_client: httpx.AsyncClient, assetpay: AssetPay) -> World:
    """A funded user with a withdrawal that can still be cancelled."""
    user = f"hostile-{uuid.uuid4().hex[:8]}"
    steam_id = await register_user(raw_client, user)
    funding = trade(status="completed", total=FUNDS, pre="0", user_id=user, steam_id=steam_id)
    assert (await deliver_trade(raw_client, funding)).status_code == 200
    assetpay.withdraw.reply(accept(user_id=user))
    started = await raw_client.post("/v1/withdrawals", json=ROUTES[2].body, headers=auth(user))
    assert started.status_code == 201, started.text
    return World(user, steam_id, started.json()["id"])


async def snapshot(client: httpx.AsyncClient, engine: AsyncEngine, assetpay: AssetPay, world: World) -> Any:
    """Everything a request could have moved."""
    counts = await rows(
        engine,
        "SELECT (SELECT count(*) FROM trades) AS trades, (SELECT count(*) FROM ledger_entries) AS entries,"
        " (SELECT count(*) FROM idempotency_keys) AS keys, (SELECT count(*) FROM users) AS users",
    )
    profile = await rows(
        engine, "SELECT steam_id, trade_url, client_data, updated_at FROM users WHERE id = :u", u=world.user
    )
    statuses = await rows(engine, "SELECT id, status, posted FROM trades ORDER BY id")
    return {
        "balance": await balance(client, world.user),
        "counts": counts,
        "profile": profile,
        "trades": statuses,
        "assetpay calls": assetpay.router.calls.call_count,
    }


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_a_hostile_body_is_422_with_our_error_and_moves_nothing(
    raw_client: httpx.AsyncClient, engine: AsyncEngine, assetpay: AssetPay, world: World, route: Route
) -> None:
    path = route.path.format(user=world.user, trade=world.withdrawal)
    headers = {"X-Admin-Key": ADMIN_KEY} if route.admin else auth(world.user)
    body = route.body and json.loads(json.dumps(route.body).replace("{steam}", world.steam_id))
    valid = json.dumps(body).encode() if body is not None else b"{}"
    if body is not None:
        route = Route(route.method, route.path, body, route.number_at, route.string_at, route.admin)
    before = await snapshot(raw_client, engine, assetpay, world)

    problems = []
    for what, raw, content_type in hostile_bodies(route, valid):
        sent = {**headers, **({"Content-Type": content_type} if content_type else {})}
        response = await raw_client.request(route.method, path, content=raw, headers=sent)
        answer = f"{what}: {response.status_code} {response.text[:300]}"
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            problems.append(f"{answer} (not our error body)")
            continue
        if response.status_code != 422 or error.get("key") != "VALIDATION_FAILED":
            problems.append(f"{answer} (expected 422 VALIDATION_FAILED)")
        elif not isinstance(error.get("message"), str) or not error.get("fields"):
            problems.append(f"{answer} (no message or fields)")
        elif response.headers["content-type"] != "application/json":
            problems.append(f"{answer} (content type {response.headers['content-type']})")
    assert not problems, "\n".join(problems)

    assert await snapshot(raw_client, engine, assetpay, world) == before
    assert await ledger_problems(engine) == []
    assert await balance(raw_client, world.user) == FUNDS  # the withdrawal is only initiated: nothing is debited


async def test_numbers_no_field_takes_are_refused_before_they_are_converted(
    raw_client: httpx.AsyncClient, assetpay: AssetPay, world: World
) -> None:
    """`1e99999999` into an integer field would take minutes of CPU: it is refused while decoding, naming the body."""
    for literal in (b"1e99999999", b"1e65", b"9" * 65, b"0." + b"0" * 70 + b"1"):
        raw = b'{"steamId": "%s", "tradeUrl": "%s", "clientData": {"kycLevel": %s}}' % (
            world.steam_id.encode(),
            TRADE_URL.encode(),
            literal,
        )
        response = await raw_client.put(
            f"/v1/users/{world.user}",
            content=raw,
            headers={"X-Admin-Key": ADMIN_KEY, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        assert list(response.json()["error"]["fields"]) == ["body"], response.text


async def test_routes_that_take_no_body_still_answer_without_one_or_with_an_empty_object(
    raw_client: httpx.AsyncClient, assetpay: AssetPay, world: World
) -> None:
    assetpay.cancel.reply(cancelled)
    for content, content_type in ((None, None), (b"{}", "application/json"), (b" { } ", "text/plain"), (b"\n", None)):
        headers = {**auth(world.user), **({"Content-Type": content_type} if content_type else {})}
        token = await raw_client.post("/v1/client-token", content=content, headers=headers)
        assert token.status_code == 200, token.text
        cancel = await raw_client.post(f"/v1/withdrawals/{world.withdrawal}/cancel", content=content, headers=headers)
        assert cancel.status_code == 200, cancel.text


async def test_a_body_with_a_utf8_byte_order_mark_is_still_read(
    raw_client: httpx.AsyncClient, assetpay: AssetPay, world: World
) -> None:
    """RFC 8259 lets a parser ignore a UTF-8 BOM, and we always have."""
    raw = "\ufeff".encode() + json.dumps({"steamId": world.steam_id, "tradeUrl": TRADE_URL}).encode()
    response = await raw_client.put(
        f"/v1/users/{world.user}", content=raw, headers={"X-Admin-Key": ADMIN_KEY, "Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text


def cancelled(request: httpx.Request) -> httpx.Response:
    trade_id = request.url.path.split("/")[-2]
    return ok({"tradeId": trade_id, "requested": 1, "cancelled": 1, "failed": 0, "items": []})
