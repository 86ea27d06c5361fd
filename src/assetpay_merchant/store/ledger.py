"""The ledger's tables on the money path: posting entries with the cached balance, and checking the books.

`_append` is the only code that writes ledger entries and balances. It has two entry points: `post`, for a
trade's entries, whose one caller is the settlement service (inside a unit of work that holds the trade's row
lock), and `post_adjustment`, for an operator's correction that belongs to no trade (services/adjustments.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from assetpay_merchant.core import policy
from assetpay_merchant.core.money import ZERO
from assetpay_merchant.store.database import Connection
from assetpay_merchant.store.trades import SELECT_TRADE, TradeRow


@dataclass(frozen=True, slots=True)
class Posting:
    """One entry just posted, and the balance it left."""

    user_id: str
    trade_id: uuid.UUID | None
    amount: Decimal
    kind: policy.EntryKind
    balance_after: Decimal
    id: int
    created_at: datetime


async def ensure_balance(db: Connection, user_id: str) -> None:
    await db.execute("INSERT INTO balances (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user_id)


async def lock_balance(db: Connection, user_id: str) -> Decimal:
    """The user's available balance, with its row locked until the unit of work ends."""
    available: Decimal | None = await db.fetchval(
        "SELECT available FROM balances WHERE user_id = $1 FOR UPDATE", user_id
    )
    return available if available is not None else ZERO


_POST = """
WITH moved AS (
    UPDATE balances SET available = available + $2, updated_at = now() WHERE user_id = $1 RETURNING available
)
INSERT INTO ledger_entries (user_id, trade_id, amount, kind, balance_after, reason, actor)
SELECT $1, $3, $2, $4, available, $5, $6 FROM moved
RETURNING balance_after, id, created_at
"""


async def post(
    db: Connection, *, user_id: str, trade_id: uuid.UUID | None, amount: Decimal, kind: policy.EntryKind
) -> Posting:
    """Append one entry of a trade and move the cached balance by the same amount, in one statement."""
    return await _append(db, user_id=user_id, trade_id=trade_id, amount=amount, kind=kind)


async def post_adjustment(db: Connection, *, user_id: str, amount: Decimal, reason: str, actor: str) -> Posting:
    """Append an operator's adjustment (no trade; why and who recorded with it) and move the cached balance."""
    return await _append(
        db, user_id=user_id, trade_id=None, amount=amount, kind=policy.EntryKind.ADJUSTMENT, reason=reason, actor=actor
    )


async def _append(
    db: Connection,
    *,
    user_id: str,
    trade_id: uuid.UUID | None,
    amount: Decimal,
    kind: policy.EntryKind,
    reason: str | None = None,
    actor: str | None = None,
) -> Posting:
    record = await db.fetchrow(_POST, user_id, amount, trade_id, kind.value, reason, actor)
    if record is None:
        raise LookupError(f"user {user_id!r} has no balance row")
    return Posting(user_id, trade_id, amount, kind, record["balance_after"], record["id"], record["created_at"])


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


async def check(db: Connection) -> list[Discrepancy]:
    """Every balance equals the sum of its entries; every attributed trade has posted exactly its target.

    Run it on one snapshot (`Database.snapshot()`), so postings committing meanwhile cannot look like mismatches.
    """
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
        target = policy.target(trade.facts())
        if trade.user_id is not None and trade.posted != target:
            found.append(Discrepancy(f"trade {trade.id}", f"posted {trade.posted} but its target is {target}"))
    return found
