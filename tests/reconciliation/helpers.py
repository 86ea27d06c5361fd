"""AssetPay's side of reconciliation, faked: the trades it knows, answering `GET /secure/trades/{refs}` as
documented (one ref: the trade or 404; several: an array of those it knows, the others left out)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.assetpay_respx import not_found, rows
from tests.gateway.fake_assetpay import item, ok
from tests.gateway.fake_assetpay import trade as assetpay_trade


class Book:
    """The trades AssetPay knows, by id and externalId; also a respx reply for the lookup route."""

    def __init__(self) -> None:
        self.trades: dict[str, dict[str, Any]] = {}
        self.asked: list[list[str]] = []

    def put(
        self,
        *,
        trade_id: str | None = None,
        type: str = "deposit",
        status: str,
        total: str,
        pre: str = "0",
        user_id: str,
        external_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """AssetPay's current state of a trade (complete, as the OpenAPI document describes a Trade)."""
        body = assetpay_trade(
            trade_id=trade_id or str(uuid.uuid4()),
            type=type,
            status=status,
            external_id=external_id,
            total=total,
            items=[item(price=total)],
            externalClientUserId=user_id,
            **extra,
        )
        if type == "deposit":
            body["preCredit"], body["pendingCredit"] = Decimal(pre), Decimal(total) - Decimal(pre)
        else:
            body["preCredit"], body["pendingCredit"] = Decimal(0), Decimal(0)
        self.trades[body["id"]] = body
        return body

    def find(self, ref: str) -> dict[str, Any] | None:
        return next((t for t in self.trades.values() if ref in (t["id"], t.get("externalId"))), None)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        refs = [unquote(ref) for ref in request.url.raw_path.decode().split("/")[-1].split(",")]
        self.asked.append(refs)
        if len(refs) == 1:
            found = self.find(refs[0])
            return ok(found) if found is not None else not_found()
        answers: dict[str, dict[str, Any]] = {}
        for ref in refs:
            known = self.find(ref)
            if known is not None:
                answers.setdefault(known["id"], known)
        return ok(list(answers.values()))


async def backdate(engine: AsyncEngine, trade_id: Any, *, hours: float) -> None:
    """Make a trade look `hours` old and untouched for as long."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE trades SET created_at = now() - make_interval(secs => :s), "
                "updated_at = now() - make_interval(secs => :s) WHERE id = :id"
            ),
            {"s": hours * 3600, "id": trade_id},
        )


async def books(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    """Everything that money touches, to compare before and after."""
    return {
        "trades": await rows(
            engine, "SELECT id, assetpay_id, status, total_price, posted, needs_review FROM trades ORDER BY id"
        ),
        "entries": await rows(engine, "SELECT id, user_id, trade_id, amount, kind FROM ledger_entries ORDER BY id"),
        "balances": await rows(engine, "SELECT user_id, available FROM balances ORDER BY user_id"),
    }
