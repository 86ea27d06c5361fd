"""AssetPay faked at the HTTP boundary with respx, for the tests of our trading and catalog API.

respx intercepts the app's own `httpx.AsyncClient` (the one built in the lifespan) for https://assetpay.test; the
ASGI client of the tests goes through `httpx.ASGITransport`, which respx does not touch. Every request our backend
sends is checked against AssetPay's OpenAPI document (tests/gateway/openapi.py) and every faked JSON answer against
the documented response, so a wrong body fails the test even when our code would cope with it.

Each test module makes its `assetpay` fixture with `mocked_assetpay(resources)`.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import jwt
import respx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.gateway.tokens import TokenCache
from tests.gateway import fake_assetpay
from tests.gateway.fake_assetpay import fail, ok
from tests.gateway.openapi import check_request, check_response
from tests.support import ADMIN_KEY, TRADE_URL, WEBHOOK_SECRET, new_steam_id

BASE_URL = "https://assetpay.test"
API_KEY = "ap_test_key"
API_SECRET = WEBHOOK_SECRET.decode()

Reply = httpx.Response | BaseException | Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class Endpoint:
    """One AssetPay route: a respx route whose answers come from a script (the last reply repeats)."""

    def __init__(self, fake: AssetPay, route: respx.Route, method: str, template: str) -> None:
        self._fake = fake
        self.route = route
        self.method = method
        self.template = template
        self._script: list[Reply] = []
        route.side_effect = self._answer

    def reply(self, *replies: Reply) -> Endpoint:
        self._script = list(replies)
        return self

    @property
    def call_count(self) -> int:
        return self.route.call_count

    @property
    def requests(self) -> list[httpx.Request]:
        return [call.request for call in self.route.calls]

    def bodies(self) -> list[Any]:
        return [json.loads(request.content, parse_float=Decimal) for request in self.requests]

    async def _answer(self, request: httpx.Request) -> httpx.Response:
        try:
            check_request(request)
        except AssertionError as problem:
            self._fake.problems.append(f"{request.method} {request.url.path}: {problem}")
            raise
        assert self._script, f"no answer scripted for {request.method} {request.url}"
        reply = self._script.pop(0) if len(self._script) > 1 else self._script[0]
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, httpx.Response):
            response = reply
        else:
            produced = reply(request)
            response = await produced if inspect.isawaitable(produced) else produced
        if response.headers.get("content-type") == "application/json" and not response.extensions.get("unchecked"):
            body = json.loads(response.content, parse_float=Decimal)
            check_response(self.method, self.template, response.status_code, body)
        return response


def unchecked(response: httpx.Response) -> httpx.Response:
    """A deliberately broken answer: not checked against the documented response shape."""
    response.extensions["unchecked"] = True
    return response


class AssetPay:
    """The AssetPay routes our backend uses, each an `Endpoint`. `problems` lists requests that broke the contract."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.router = router
        self.problems: list[str] = []
        self.tokens_issued = 0
        self.auth = self._endpoint("POST", "/auth/authenticate-client", r"/auth/authenticate-client")
        self.deposit = self._endpoint("POST", "/client/trading/deposit", r"/client/trading/deposit")
        self.withdraw = self._endpoint("POST", "/client/trading/withdraw", r"/client/trading/withdraw")
        self.cancel = self._endpoint(
            "POST", "/client/trading/withdraw/{tradeId}/cancel", r"/client/trading/withdraw/[^/]+/cancel"
        )
        self.lookup = self._endpoint("GET", "/secure/trades/{tradeId}", r"/secure/trades/[^/]+")
        self.inventory = self._endpoint("GET", "/client/inventory", r"/client/inventory")
        self.market = self._endpoint("GET", "/client/market", r"/client/market")
        self.auth.reply(self.issue_token)

    def _endpoint(self, method: str, template: str, path_regex: str) -> Endpoint:
        route = self.router.route(method=method, path__regex=f"^{path_regex}$")
        return Endpoint(self, route, method, template)

    def issue_token(self, request: httpx.Request) -> httpx.Response:
        """A client token as AssetPay issues it: opaque to us except for its `exp`."""
        self.tokens_issued += 1
        body = json.loads(request.content)
        claims = {"client": body, "n": self.tokens_issued, "exp": int(time.time()) + 3600}
        return ok({"token": jwt.encode(claims, "assetpay-own-signing-key-not-ours", algorithm="HS256")})

    @property
    def all_requests(self) -> list[httpx.Request]:
        return [call.request for call in self.router.calls]

    def client_ids(self) -> list[str]:
        """The `clientId` of every client token that was asked for."""
        return [body.get("clientId") for body in self.auth.bodies()]


def trade_answer(
    request: httpx.Request,
    *,
    user_id: str,
    status: str = "initiated",
    trade_id: str | None = None,
    total: Decimal | str | None = None,
    pre_credit: Decimal | str = "0",
    related: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """AssetPay's Trade for a deposit/withdraw request: its items, prices and externalId echoed back."""
    body = json.loads(request.content, parse_float=Decimal)
    kind = "deposit" if request.url.path.endswith("/deposit") else "withdraw"
    items = [
        fake_assetpay.item(
            item_id=entry["itemId"],
            price=str(entry["price"]),
            **({"amount": entry["amount"]} if "amount" in entry else {}),
        )
        for entry in body["items"]
    ]
    amount = (
        Decimal(total)
        if total is not None
        else sum((Decimal(entry["price"]) * entry.get("amount", 1) for entry in body["items"]), start=Decimal(0))
    )
    answer = fake_assetpay.trade(
        trade_id=trade_id or str(uuid.uuid4()),
        type=kind,
        status=status,
        external_id=body.get("externalId"),
        total=str(amount),
        items=items,
        externalClientUserId=user_id,
        game=body.get("game", "730"),
        **extra,
    )
    answer["isInstant"] = bool(body.get("isInstant", False))
    if kind == "deposit":
        answer["preCredit"], answer["pendingCredit"] = Decimal(pre_credit), amount - Decimal(pre_credit)
    else:
        answer["preCredit"], answer["pendingCredit"] = Decimal(0), Decimal(0)
    if related is not None:
        answer["relatedTrades"] = related
    return answer


def accept(*, user_id: str, **options: Any) -> Callable[[httpx.Request], httpx.Response]:
    """A reply that creates the trade asked for."""

    def reply(request: httpx.Request) -> httpx.Response:
        return ok(trade_answer(request, user_id=user_id, **options))

    return reply


def not_found() -> httpx.Response:
    return fail(404, "NOT_FOUND", message="Trade not found")


def forget_caches(resources: Resources) -> None:
    """No market page or client token leaks from one test into the next."""
    resources.catalog.market_cache.clear()
    resources.assetpay._tokens = TokenCache()


@contextmanager
def mocked_assetpay(resources: Resources) -> Iterator[AssetPay]:
    """AssetPay at https://assetpay.test, faked with respx, with the app's caches emptied before and after; fails
    the test if a request broke the contract. Use it in a module's `assetpay` fixture:

        @pytest.fixture
        def assetpay(resources: Resources) -> Iterator[AssetPay]:
            with mocked_assetpay(resources) as fake:
                yield fake
    """
    forget_caches(resources)
    try:
        with respx.mock(base_url=BASE_URL, assert_all_called=False, assert_all_mocked=True) as router:
            fake = AssetPay(router)
            yield fake
    finally:
        forget_caches(resources)
    assert not fake.problems, fake.problems


async def register(client: httpx.AsyncClient, user_id: str, *, client_data: dict[str, Any] | None = None) -> str:
    """PUT the user (with clientData when given); returns their Steam id."""
    steam_id = new_steam_id()
    body: dict[str, Any] = {"steamId": steam_id, "tradeUrl": TRADE_URL}
    if client_data is not None:
        body["clientData"] = client_data
    response = await client.put(f"/v1/users/{user_id}", json=body, headers={"X-Admin-Key": ADMIN_KEY})
    assert response.status_code in (200, 201), response.text
    return steam_id


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        result = await connection.execute(text(sql), params)
        return [dict(row._mapping) for row in result]


async def trades_of(engine: AsyncEngine, user_id: str | None = None) -> list[dict[str, Any]]:
    if user_id is None:
        return await rows(engine, "SELECT * FROM trades ORDER BY created_at, id")
    return await rows(engine, "SELECT * FROM trades WHERE user_id = :u ORDER BY created_at, id", u=user_id)


async def ledger_of(engine: AsyncEngine, user_id: str) -> list[dict[str, Any]]:
    return await rows(
        engine, "SELECT amount, kind, trade_id FROM ledger_entries WHERE user_id = :u ORDER BY id", u=user_id
    )


__all__ = [
    "API_KEY",
    "API_SECRET",
    "BASE_URL",
    "AssetPay",
    "Endpoint",
    "accept",
    "forget_caches",
    "ledger_of",
    "mocked_assetpay",
    "not_found",
    "register",
    "rows",
    "trade_answer",
    "trades_of",
    "unchecked",
]
