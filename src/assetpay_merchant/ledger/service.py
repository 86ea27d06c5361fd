"""Posting to the ledger: the only code that writes ledger entries and balances.

Callers own the transaction and hold the trade row lock. Like the trade records, this is the hot path of every
callback and runs plain SQL on the transaction's driver connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from assetpay_merchant.db import Connection, driver_connection
from assetpay_merchant.ledger import policy
from assetpay_merchant.money import ZERO
from assetpay_merchant.trades.service import SELECT_TRADE, TradeRow


@dataclass(frozen=True, slots=True)
class Posting:
    """One entry just posted, and the balance it left."""

    user_id: str
    trade_id: uuid.UUID | None
    amount: Decimal
    kind: policy.EntryKind
    balance_after: Decimal


def ledger_items(stored: Sequence[dict[str, Any]]) -> list[policy.Item]:
    items = []
    for item in stored:
        status = item.get("status")
        items.append(
            policy.Item(
                price=Decimal(str(item.get("price", "0"))),
                amount=Decimal(str(item.get("amount", 1))),
                status=policy.parse_status(status) if status else None,
            )
        )
    return items


def facts_of(trade: TradeRow) -> policy.TradeFacts:
    return policy.TradeFacts(
        type=policy.TradeType(trade.type),
        status=policy.Status(trade.status),
        total_price=trade.total_price,
        pre_credit=trade.pre_credit,
        approved_amount=trade.approved_amount,
        items=ledger_items(trade.items) if trade.type == policy.TradeType.WITHDRAW else (),
    )


async def ensure_balance(db: Connection, user_id: str) -> None:
    await db.execute("INSERT INTO balances (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user_id)


async def lock_balance(db: Connection, user_id: str) -> Decimal:
    """The user's available balance, with its row locked until the transaction ends."""
    available: Decimal | None = await db.fetchval(
        "SELECT available FROM balances WHERE user_id = $1 FOR UPDATE", user_id
    )
    return available if available is not None else ZERO


_POST = """
WITH moved AS (
    UPDATE balances SET available = available + $2, updated_at = now() WHERE user_id = $1 RETURNING available
)
INSERT INTO ledger_entries (user_id, trade_id, amount, kind, balance_after)
SELECT $1, $3, $2, $4, available FROM moved
RETURNING balance_after
"""


async def post(
    db: Connection, *, user_id: str, trade_id: uuid.UUID | None, amount: Decimal, kind: policy.EntryKind
) -> Posting:
    """Append one entry and move the cached balance by the same amount, in one statement."""
    balance_after: Decimal | None = await db.fetchval(_POST, user_id, amount, trade_id, kind.value)
    if balance_after is None:
        raise LookupError(f"user {user_id!r} has no balance row")
    return Posting(user_id, trade_id, amount, kind, balance_after)


async def settle(db: Connection, trade: TradeRow) -> Posting | None:
    """Post `target - posted` for a locked trade, so that it has posted exactly its target."""
    if trade.user_id is None:
        return None
    facts = facts_of(trade)
    delta = policy.target(facts) - trade.posted
    if delta == 0:
        return None
    posting = await post(
        db,
        user_id=trade.user_id,
        trade_id=trade.id,
        amount=delta,
        kind=policy.entry_kind(facts.type, facts.status, delta),
    )
    trade.posted += delta
    return posting


@dataclass(frozen=True, slots=True)
class Discrepancy:
    subject: str
    detail: str


_BALANCES_OFF = """
SELECT coalesce(b.user_id, e.user_id) AS user_id, b.available, coalesce(e.total, 0) AS total
FROM balances b
FULL JOIN (SELECT user_id, sum(amount) AS total FROM ledger_entries GROUP BY user_id) e ON e.user_id = b.user_id
WHERE b.user_id IS NULL OR b.available <> coalesce(e.total, 0)
"""

_TRADES_WITH_ENTRIES = f"""
SELECT * FROM ({SELECT_TRADE}) trades
LEFT JOIN (
    SELECT trade_id, sum(amount) AS entries_total FROM ledger_entries WHERE trade_id IS NOT NULL GROUP BY trade_id
) entries ON entries.trade_id = trades.id
"""  # noqa: S608 (constant column names, no input)


async def check(session: AsyncSession) -> list[Discrepancy]:
    """Every balance equals the sum of its entries; every attributed trade has posted exactly its target."""
    # One snapshot for the whole check, so postings committing meanwhile cannot look like mismatches.
    await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    db = await driver_connection(session)
    found: list[Discrepancy] = []
    for user_id, available, total in await db.fetch(_BALANCES_OFF):
        detail = (
            f"entries sum to {total} but there is no balance row"
            if available is None
            else f"balance {available} but entries sum to {total}"
        )
        found.append(Discrepancy(f"user {user_id}", detail))
    async for record in db.cursor(_TRADES_WITH_ENTRIES, prefetch=1000):
        values = dict(record)
        total = values.pop("entries_total") or ZERO
        values.pop("trade_id")
        trade = TradeRow.from_record(values)
        if trade.posted != total:
            found.append(Discrepancy(f"trade {trade.id}", f"posted {trade.posted} but entries sum to {total}"))
        target = policy.target(facts_of(trade))
        if trade.user_id is not None and trade.posted != target:
            found.append(Discrepancy(f"trade {trade.id}", f"posted {trade.posted} but its target is {target}"))
    return found
