"""A scripted AssetPay at the HTTP boundary (an `httpx.MockTransport` handler).

Each route answers from a script of replies, in order, the last one repeating. Every request is checked against
the OpenAPI document before it is answered, and every faked JSON answer against the documented response shape.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import simplejson

from tests.gateway.openapi import check_request, check_response, template_of

BASE_URL = "https://assetpay.test"
MERCHANT_ID = "0b9f9d9e-2f0e-4f7e-9a51-6f0f3c2c1a11"
TRADE_URL = "https://steamcommunity.com/tradeoffer/new/?partner=39734273&token=AbCdEf12"

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def dumps(value: Any) -> bytes:
    return simplejson.dumps(value, use_decimal=True, separators=(",", ":")).encode()


def ok(data: Any, *, status: int = 200) -> httpx.Response:
    body = {"requestId": f"req-{uuid.uuid4()}", "success": True, "data": data}
    return httpx.Response(status, content=dumps(body), headers={"content-type": "application/json"})


def fail(
    status: int,
    key: str,
    *,
    code: int = 1000,
    message: str | list[str] = "refused",
    fields: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> httpx.Response:
    error: dict[str, Any] = {"code": code, "key": key, "message": message}
    if fields is not None:
        error["fields"] = fields
    if details is not None:
        error["details"] = details
    body = {"requestId": request_id or f"req-{uuid.uuid4()}", "success": False, "error": error}
    return httpx.Response(status, content=dumps(body), headers={"content-type": "application/json", **(headers or {})})


def bare(status: int, text: str = "<html>Bad gateway</html>", headers: dict[str, str] | None = None) -> httpx.Response:
    """An answer without AssetPay's envelope, as a proxy or load balancer sends it."""
    return httpx.Response(status, content=text.encode(), headers={"content-type": "text/html", **(headers or {})})


def item(item_id: str = "730_12345678901", price: str = "10.75", **extra: Any) -> dict[str, Any]:
    return {
        "id": item_id,
        "assetId": "12345678901",
        "appid": 730,
        "name": "AK-47 | Redline",
        "marketHashName": "AK-47 | Redline (Field-Tested)",
        "tradable": True,
        "offer": {"price": Decimal(price)},
        **extra,
    }


def trade(
    *,
    trade_id: str | None = None,
    type: str = "deposit",
    status: str = "initiated",
    external_id: str | None = "ext-1",
    total: str = "10.75",
    items: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A Trade with every field the OpenAPI document requires."""
    body: dict[str, Any] = {
        "id": trade_id or str(uuid.uuid4()),
        "type": type,
        "source": "client",
        "merchantId": MERCHANT_ID,
        "clientUserId": str(uuid.uuid4()),
        "clientTradeUrl": TRADE_URL,
        "clientSteamID": "76561198000000001",
        "externalClientUserId": "user-7",
        "status": status,
        "game": "730",
        "items": items if items is not None else [item(price=total)],
        "totalPrice": Decimal(total),
        "preCredit": Decimal(0),
        "pendingCredit": Decimal(total),
        "isInstant": False,
        "createdAt": "2026-07-31T12:00:00.000Z",
        "updatedAt": "2026-07-31T12:00:00.000Z",
        **extra,
    }
    if external_id is not None:
        body["externalId"] = external_id
    return body


@dataclass
class FakeAssetPay:
    scripts: dict[tuple[str, str], list[Reply]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    check_responses: bool = True

    def on(self, method: str, template: str, *replies: Reply) -> FakeAssetPay:
        """Script the replies of one route (a path template of the OpenAPI document)."""
        self.scripts[(method, template)] = list(replies)
        return self

    def calls(self, method: str, template: str) -> list[httpx.Request]:
        return [
            r
            for r in self.requests
            if r.method == method and template_of(r.url.raw_path.split(b"?")[0].decode()) == template
        ]

    def bodies(self, method: str, template: str) -> list[Any]:
        return [json.loads(r.content, parse_float=Decimal) for r in self.calls(method, template)]

    def handler(self, request: httpx.Request) -> httpx.Response:
        template, _ = check_request(request)
        self.requests.append(request)
        script = self.scripts.get((request.method, template))
        assert script, f"unexpected request {request.method} {request.url}"
        reply = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(reply, Exception):
            raise reply
        response = reply(request) if callable(reply) else reply
        if self.check_responses and response.headers.get("content-type") == "application/json":
            body = json.loads(response.content, parse_float=Decimal)
            check_response(request.method, template, response.status_code, body)
        return response

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)
