"""What the admin tests share: the ops headers, the admin calls, and a look at the books after every scenario."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import ADMIN_KEY, deliver_trade, ledger_problems, register_user, trade
from tests.webhooks.helpers import rows

ACTOR = "alice@ops"


def ops(actor: str | None = ACTOR, **extra: str) -> dict[str, str]:
    """The headers of an operator's request: the admin key, and who they are."""
    headers = {"X-Admin-Key": ADMIN_KEY, **extra}
    if actor is not None:
        headers["X-Actor"] = actor
    return headers


async def adjust(
    client: httpx.AsyncClient, body: dict[str, Any], *, key: str | None = None, actor: str | None = ACTOR
) -> httpx.Response:
    headers = ops(actor, **({"Idempotency-Key": key} if key is not None else {}))
    return await client.post("/v1/admin/adjustments", json=body, headers=headers)


async def funded(client: httpx.AsyncClient, user_id: str, amount: str) -> dict[str, Any]:
    """A registered user whose balance is `amount` (one completed deposit); returns that deposit's payload."""
    steam_id = await register_user(client, user_id)
    deposit = trade(status="completed", total=amount, pre="0", user_id=user_id, steam_id=steam_id)
    assert (await deliver_trade(client, deposit)).status_code == 200
    return deposit


async def books(engine: AsyncEngine) -> dict[str, Any]:
    """Every balance, entry and idempotency key, to compare before and after a refused request."""
    return {
        "balances": await rows(engine, "SELECT user_id, available, last_event_id FROM balances ORDER BY user_id"),
        "entries": await rows(engine, "SELECT id, user_id, amount, kind FROM ledger_entries ORDER BY id"),
        "keys": await rows(engine, "SELECT user_id, key, response_status FROM idempotency_keys ORDER BY id"),
        "events": await rows(engine, "SELECT user_id, id, type FROM events ORDER BY user_id, id"),
    }


async def available(engine: AsyncEngine, user_id: str) -> Decimal:
    [row] = await rows(engine, "SELECT available FROM balances WHERE user_id = :u", u=user_id)
    amount: Decimal = row["available"]
    return amount


async def assert_books_balance(engine: AsyncEngine) -> None:
    """`assetpay-merchant ledger check` finds nothing wrong."""
    assert await ledger_problems(engine) == []


async def our_trade_id(engine: AsyncEngine, assetpay_id: str) -> str:
    [row] = await rows(engine, "SELECT id FROM trades WHERE assetpay_id = :a", a=assetpay_id)
    return str(row["id"])
