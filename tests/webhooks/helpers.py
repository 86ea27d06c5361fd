"""Direct looks at the database (through the app's engine) and small builders for the webhook tests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import auth, deliver_trade, register_user, trade

WEBHOOK = "/webhooks/assetpay"


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        result = await connection.execute(text(sql), params)
        return [dict(row._mapping) for row in result]


async def deliveries(engine: AsyncEngine) -> list[dict[str, Any]]:
    return await rows(
        engine,
        "SELECT delivery_id, kind, outcome, detail, subject_id, trade_id, raw_body FROM webhook_deliveries ORDER BY id",
    )


async def trade_row(engine: AsyncEngine, assetpay_id: str) -> dict[str, Any] | None:
    found = await rows(engine, "SELECT * FROM trades WHERE assetpay_id = :id", id=assetpay_id)
    assert len(found) <= 1
    return found[0] if found else None


async def count(engine: AsyncEngine, table: str) -> int:
    found = await rows(engine, f"SELECT count(*) AS n FROM {table}")
    return int(found[0]["n"])


async def entries(engine: AsyncEngine, user_id: str) -> list[tuple[Decimal, str]]:
    """The user's ledger entries, oldest first, as (amount, kind)."""
    found = await rows(engine, "SELECT amount, kind FROM ledger_entries WHERE user_id = :u ORDER BY id", u=user_id)
    return [(row["amount"], row["kind"]) for row in found]


async def ledger(client: httpx.AsyncClient, user_id: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/ledger", headers=auth(user_id))
    assert response.status_code == 200, response.text
    entries_: list[dict[str, Any]] = response.json()["entries"]
    return entries_


async def post_raw(client: httpx.AsyncClient, raw: bytes, header: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["X-AssetPay-Signature"] = header
    return await client.post(WEBHOOK, content=raw, headers=headers)


async def funded_user(client: httpx.AsyncClient, user_id: str, amount: str) -> str:
    """A registered user whose balance is `amount`, from one completed deposit; returns their Steam id."""
    steam_id = await register_user(client, user_id)
    response = await deliver_trade(
        client, trade(status="completed", total=amount, pre="0", user_id=user_id, steam_id=steam_id)
    )
    assert response.status_code == 200, response.text
    return steam_id


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    return error
