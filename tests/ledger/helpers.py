"""What the ledger tests read back: entries and trades through the API, the rows behind them through SQL."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.store.ledger import Discrepancy
from tests.support import auth, balance, deliver_trade, ledger_problems, trade


@dataclass(frozen=True)
class Entry:
    amount: Decimal
    kind: str
    balance_after: Decimal


async def entries(client: httpx.AsyncClient, user_id: str) -> list[Entry]:
    """The user's ledger through `GET /v1/ledger`, every page, oldest first."""
    served: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/ledger", params=params, headers=auth(user_id))
        assert response.status_code == 200, response.text
        page = response.json()
        served.extend(page["entries"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    return [Entry(Decimal(e["amount"]), e["kind"], Decimal(e["balanceAfter"])) for e in reversed(served)]


async def trade_view(client: httpx.AsyncClient, user_id: str, assetpay_id: str) -> dict[str, Any]:
    """`GET /v1/trades/{id}` of the trade AssetPay knows as `assetpay_id` (found through the user's trade list)."""
    response = await client.get("/v1/trades", params={"limit": 200}, headers=auth(user_id))
    assert response.status_code == 200, response.text
    ours = [t["id"] for t in response.json()["trades"] if t["assetpayId"] == assetpay_id]
    assert len(ours) == 1, f"trade {assetpay_id} not (or not once) in the user's list"
    response = await client.get(f"/v1/trades/{ours[0]}", headers=auth(user_id))
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def credited(client: httpx.AsyncClient, user_id: str, assetpay_id: str) -> Decimal:
    return Decimal((await trade_view(client, user_id, assetpay_id))["credited"])


async def trade_row(engine: AsyncEngine, assetpay_id: str) -> dict[str, Any]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT id, status, posted, total_price, approved_amount, needs_review, review_reason, items "
                    "FROM trades WHERE assetpay_id = :id"
                ),
                {"id": assetpay_id},
            )
        ).one()
    return dict(row._mapping)


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar_one()


async def problems(engine: AsyncEngine) -> list[Discrepancy]:
    """What `store.ledger.check` (the ops check) finds wrong."""
    return await ledger_problems(engine)


async def deliver_ok(client: httpx.AsyncClient, payload: dict[str, Any], *, delivery_id: str | None = None) -> Any:
    response = await deliver_trade(client, payload, delivery_id=delivery_id)
    assert response.status_code == 200, response.text
    return response.json()


async def fund(client: httpx.AsyncClient, user_id: str, amount: str) -> None:
    """Give the user `amount` through a completed deposit (one credit entry)."""
    before = await balance(client, user_id)
    await deliver_ok(client, trade(status="completed", total=amount, user_id=user_id))
    assert await balance(client, user_id) == before + Decimal(amount)
