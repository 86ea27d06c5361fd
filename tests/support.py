"""Builders shared by the tests: users, JWTs, AssetPay trade payloads and signed deliveries."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import jwt
import simplejson
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.config import Settings
from assetpay_merchant.gateway.signature import signature_header
from assetpay_merchant.store.database import Database
from assetpay_merchant.store.ledger import Discrepancy, check

JWT_SECRET = "test-jwt-secret-of-at-least-32-bytes"
ADMIN_KEY = "test-admin-key"
WEBHOOK_SECRET = b"test-webhook-secret"
PREVIOUS_WEBHOOK_SECRET = b"test-webhook-secret-previous"
TRADE_URL = "https://steamcommunity.com/tradeoffer/new/?partner=39734273&token=AbCdEf12"

_steam_ids = itertools.count(76561198000000001)


def dumps(body: Any) -> bytes:
    """JSON the way AssetPay sends it: compact, money as JSON numbers written from Decimals (never floats)."""
    return simplejson.dumps(body, use_decimal=True, separators=(",", ":")).encode()


def new_steam_id() -> str:
    return str(next(_steam_ids))


def user_token(user_id: str, *, expires_in: int = 3600, secret: str = JWT_SECRET) -> str:
    return jwt.encode({"sub": user_id, "exp": int(time.time()) + expires_in}, secret, algorithm="HS256")


def auth(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token(user_id)}"}


async def register_user(client: httpx.AsyncClient, user_id: str, steam_id: str | None = None) -> str:
    """PUT the user through the admin API; returns their Steam id."""
    steam_id = steam_id or new_steam_id()
    response = await client.put(
        f"/v1/users/{user_id}",
        json={"steamId": steam_id, "tradeUrl": TRADE_URL},
        headers={"X-Admin-Key": ADMIN_KEY},
    )
    assert response.status_code in (200, 201), response.text
    return steam_id


def trade(
    *,
    trade_id: str | None = None,
    type: str = "deposit",
    status: str = "hold",
    total: str | Decimal = "100.00",
    pre: str | Decimal | None = None,
    pending: str | Decimal | None = None,
    user_id: str | None = None,
    steam_id: str | None = None,
    external_id: str | None = None,
    items: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A Trade object as AssetPay's callbacks carry it (deposit credits default to a 60/40 split)."""
    total = Decimal(total)
    if type == "deposit":
        pre = Decimal(pre) if pre is not None else (total * Decimal("0.6")).quantize(Decimal("0.01"))
        pending = Decimal(pending) if pending is not None else total - pre
    else:
        pre = Decimal(pre) if pre is not None else Decimal(0)
        pending = Decimal(pending) if pending is not None else Decimal(0)
    body: dict[str, Any] = {
        "id": trade_id or str(uuid.uuid4()),
        "type": type,
        "source": "client",
        "status": status,
        "game": "730",
        "totalPrice": total,
        "preCredit": pre,
        "pendingCredit": pending,
        "items": items
        if items is not None
        else [{"id": "item-" + uuid.uuid4().hex[:8], "appid": 730, "tradable": True, "offer": {"price": total}}],
    }
    if user_id is not None:
        body["externalClientUserId"] = user_id
    if steam_id is not None:
        body["clientSteamID"] = steam_id
    if external_id is not None:
        body["externalId"] = external_id
    body.update(extra)
    return body


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def signed(
    body: bytes,
    *,
    delivery_id: str | None = None,
    secret: bytes = WEBHOOK_SECRET,
    at: datetime | None = None,
) -> dict[str, str]:
    """Headers for a delivery signed the way AssetPay signs it."""
    timestamp = iso(at or datetime.now(UTC))
    header = signature_header(secret, delivery_id or f"dlv-{uuid.uuid4()}", timestamp, body)
    return {"X-AssetPay-Signature": header, "Content-Type": "application/json"}


async def deliver(
    client: httpx.AsyncClient,
    body: dict[str, Any] | bytes,
    *,
    delivery_id: str | None = None,
    secret: bytes = WEBHOOK_SECRET,
    skew: timedelta = timedelta(0),
) -> httpx.Response:
    """POST one signed callback to the webhook endpoint."""
    raw = body if isinstance(body, bytes) else dumps(body)
    headers = signed(raw, delivery_id=delivery_id, secret=secret, at=datetime.now(UTC) + skew)
    return await client.post("/webhooks/assetpay", content=raw, headers=headers)


async def deliver_trade(
    client: httpx.AsyncClient, payload: dict[str, Any], *, delivery_id: str | None = None
) -> httpx.Response:
    return await deliver(client, {"trade": payload}, delivery_id=delivery_id)


async def balance(client: httpx.AsyncClient, user_id: str) -> Decimal:
    response = await client.get("/v1/balance", headers=auth(user_id))
    assert response.status_code == 200, response.text
    return Decimal(response.json()["available"])


async def ledger_problems(engine: AsyncEngine) -> list[Discrepancy]:
    """What the ops check (`assetpay-merchant ledger check`) finds wrong with the books, on one snapshot."""
    async with Database(engine).snapshot() as db:
        return await check(db)


def app_settings(database_url: str) -> Settings:
    """The settings every in-process test app runs with: real-looking secrets, AssetPay faked at its URL."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        auth_jwt_secret=SecretStr(JWT_SECRET),
        admin_api_key=SecretStr(ADMIN_KEY),
        assetpay_api_key=SecretStr("ap_test_key"),
        assetpay_api_secret=SecretStr(WEBHOOK_SECRET.decode()),
        assetpay_api_secret_previous=SecretStr(PREVIOUS_WEBHOOK_SECRET.decode()),
        assetpay_base_url="https://assetpay.test",
        db_pool_size=30,
        db_max_overflow=120,
        reconcile_interval_seconds=0,  # no background pass in a shared app: tests/reconciliation runs its own
    )
