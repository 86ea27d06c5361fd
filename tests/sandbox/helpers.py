"""Helpers for the sandbox tests: a hand-wound clock, a fake callback receiver, envelope checks and builders."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import simplejson
from jsonschema import Draft202012Validator

from assetpay_merchant.gateway.callbacks import Callback, classify
from assetpay_merchant.gateway.signature import SIGNATURE_HEADER, verify
from tests.gateway.openapi import check_response, operation

API_KEY = "ap_sandbox_test"
API_SECRET = "sandbox-test-secret-of-32-bytes-or-more"
MERCHANT_ID = "11111111-2222-4333-8444-555555555555"
CALLBACK_URL = "https://merchant.test/webhooks/assetpay"
STEP_SECONDS = 5.0
TRADE_URL = "https://steamcommunity.com/tradeoffer/new/?partner=39734273&token=AbCdEf12"
STEAM_ID = "76561198000000001"
OTHER_STEAM_ID = "76561198000000002"


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass(slots=True)
class Received:
    """One callback as it reached the merchant: verified signature, raw bytes, decoded and classified body."""

    delivery_id: str
    timestamp: str
    raw: bytes
    body: dict[str, Any]
    callback: Callback

    @property
    def trade(self) -> dict[str, Any]:
        trade: dict[str, Any] = self.body["trade"]
        return trade


Responder = Callable[[httpx.Request], httpx.Response]


@dataclass
class Receiver:
    """The merchant's callback URL: records every request and answers from a script, else 200 (approving)."""

    clock: Callable[[], datetime]
    requests: list[httpx.Request] = field(default_factory=list)
    script: list[httpx.Response | Exception] = field(default_factory=list)
    approvals: list[httpx.Response | Exception] = field(default_factory=list)
    hook: Callable[[httpx.Request], object] | None = None
    """Called with every request before it is answered (to act while the sandbox waits for the answer)."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.hook is not None:
            self.hook(request)
        trade = json.loads(request.content).get("trade", {})
        asks_approval = trade.get("type") == "withdraw" and trade.get("status") == "initiated"
        queue = self.approvals if asks_approval else self.script
        if queue:
            outcome = queue.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return httpx.Response(200, json={"action": "approve"} if asks_approval else {"received": True})

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def received(self) -> list[Received]:
        """Every request, each checked the way our webhook intake checks it (signature, then classification)."""
        checked = []
        for request in self.requests:
            assert request.url == CALLBACK_URL
            assert request.method == "POST"
            assert request.headers["content-type"] == "application/json"
            header = request.headers[SIGNATURE_HEADER]
            delivery = verify(header, request.content, secrets=[API_SECRET.encode()], now=self.clock())
            body = json.loads(request.content, parse_float=Decimal)
            if "trade" in body:
                assert_trade_schema(body["trade"])
            timestamp = dict(part.split("=", 1) for part in header.split(","))["t"]
            checked.append(Received(delivery.delivery_id, timestamp, request.content, body, classify(body)))
        return checked

    def statuses(self, trade_id: str) -> list[str]:
        return [r.trade["status"] for r in self.received() if r.trade.get("id") == trade_id]


def data(response: httpx.Response, status: int = 200) -> Any:
    """The `data` of a success envelope (decoded with Decimals), after checking the envelope itself."""
    assert response.status_code == status, response.text
    body = json.loads(response.content, parse_float=Decimal)
    assert list(body) == ["requestId", "success", "data"]
    assert body["success"] is True
    assert isinstance(body["requestId"], str)
    return body["data"]


def error(response: httpx.Response, status: int, key: str) -> dict[str, Any]:
    """The `error` of a failure envelope, after checking the status, the key and the envelope's shape."""
    assert response.status_code == status, response.text
    body = json.loads(response.content, parse_float=Decimal)
    assert list(body) == ["requestId", "success", "error"]
    assert body["success"] is False
    found: dict[str, Any] = body["error"]
    assert found["key"] == key, found
    assert isinstance(found["code"], int)
    assert isinstance(found["message"], str)
    return found


async def client_token(
    api: httpx.AsyncClient, steam_id: str = STEAM_ID, *, client_id: str | None = "user-1", **extra: Any
) -> dict[str, str]:
    """Authorization headers with a client token issued by the sandbox."""
    body: dict[str, Any] = {"clientSteamId": steam_id, "clientTradeUrl": TRADE_URL, **extra}
    if client_id is not None:
        body["clientId"] = client_id
    response = await api.post("/auth/authenticate-client", json=body, headers={"api-key": API_KEY})
    return {"Authorization": f"Bearer {data(response)['token']}"}


async def inventory(api: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = data(await api.get("/client/inventory", params=params, headers=headers))["inventory"]
    return found


async def depositable(api: httpx.AsyncClient, headers: dict[str, str], game: int = 730) -> list[dict[str, Any]]:
    """Inventory items AssetPay accepts, cheapest first."""
    items = await inventory(api, headers, game=game, acceptedOnly="true", sort="priceAsc", limit=100)
    return items


async def deposit(
    api: httpx.AsyncClient, headers: dict[str, str], items: list[dict[str, Any]], **fields: Any
) -> httpx.Response:
    body = {"items": [{"itemId": i["id"], "price": i["offer"]["price"]} for i in items], **fields}
    return await api.post("/client/trading/deposit", content=dumps(body), headers=headers)


async def market(api: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = data(await api.get("/client/market", params=params, headers=headers))["items"]
    return found


async def withdraw(
    api: httpx.AsyncClient, headers: dict[str, str], items: list[dict[str, Any]], **fields: Any
) -> httpx.Response:
    body = {"items": [{"itemId": i["id"], "price": i["offer"]["price"]} for i in items], **fields}
    return await api.post("/client/trading/withdraw", content=dumps(body), headers=headers)


def dumps(body: Any) -> bytes:
    """JSON with Decimals written as numbers (never through a float), as our gateway client sends it."""
    return simplejson.dumps(body, use_decimal=True).encode()


def assert_trade_schema(trade: dict[str, Any]) -> None:
    """A callback's trade is the same Trade object the trade routes answer with (the OpenAPI has no webhooks)."""
    envelope = operation("post", "/client/trading/deposit")["responses"]["200"]["content"]["application/json"]
    errors = [e.message for e in Draft202012Validator(envelope["schema"]["properties"]["data"]).iter_errors(trade)]
    assert not errors, errors


def conforms(method: str, template: str, response: httpx.Response) -> None:
    """The whole answer (envelope and data) fits AssetPay's OpenAPI document for that operation and status."""
    body = json.loads(response.content, parse_float=Decimal)
    check_response(method, template, response.status_code, body)
