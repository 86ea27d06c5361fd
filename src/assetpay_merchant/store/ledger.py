"""The ledger's tables on the money path: posting entries with the cached balance, and checking the books.

Two statements write ledger entries and balances: `_POST_AND_SAVE`, for a trade's entries, run by `post`, whose one
caller is the settlement service (inside a unit of work that holds the trade's row lock), and `_POST`, for an
operator's correction that belongs to no trade (`post_adjustment`, services/adjustments.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from assetpay_merchant.core import policy
from assetpay_merchant.core.money import ZERO
from assetpay_merchant.store import trades
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


# What settling a locked trade writes, in one round trip (a callback's hot path): the trade saved as it now stands
# (`trades.save`'s UPDATE), the entry of `amount` (none when it is zero, or the trade has no user) with the cached
# balance moved by as much, and the outcome of the delivery that brought the news (none: no delivery). The four
# touch different rows, so one statement sees nothing it would have seen as four.
_N = trades.SAVE_PARAMETERS
_USER = f"${trades.USER_PARAMETER}"
_AMOUNT, _KIND, _DELIVERY, _OUTCOME = (  # typed here: `$n <> 0` alone would make the amount an integer
    f"${_N + n}::{kind}" for n, kind in enumerate(("numeric", "text", "bigint", "text"), 1)
)
_POST_AND_SAVE = f"""
WITH saved AS (
    {trades.save_statement()}
), moved AS (
    UPDATE balances SET available = available + {_AMOUNT}, updated_at = now()
    WHERE user_id = {_USER} AND {_AMOUNT} <> 0
    RETURNING available
), entry AS (
    INSERT INTO ledger_entries (user_id, trade_id, amount, kind, balance_after)
    SELECT {_USER}, $1, {_AMOUNT}, {_KIND}, available FROM moved
    RETURNING balance_after, id, created_at
), told AS (
    UPDATE webhook_deliveries SET outcome = {_OUTCOME}, trade_id = $1 WHERE id = {_DELIVERY}
)
SELECT saved.updated_at, entry.balance_after, entry.id, entry.created_at FROM saved LEFT JOIN entry ON true
"""  # noqa: S608 (the table's own column names and parameter numbers, no input)


async def post(
    db: Connection,
    trade: TradeRow,
    *,
    amount: Decimal,
    kind: policy.EntryKind | None,
    delivery: tuple[int, str] | None = None,
) -> Posting | None:
    """Save the locked trade as it now stands (its `posted` already counting `amount`), append its entry of `amount`
    (nothing when zero) moving the cached balance by as much, and record `delivery` = (webhook_deliveries row,
    outcome) as done with it: one statement. The posting, or None when nothing was posted."""
    delivery_row, outcome = delivery if delivery is not None else (None, None)
    record = await db.fetchrow(
        _POST_AND_SAVE,
        trade.id,
        *trades.save_values(trade),
        amount,
        kind.value if kind is not None else None,
        delivery_row,
        outcome,
    )
    assert record is not None  # the trade is locked by this unit of work: it is there
    trade.updated_at = record["updated_at"]
    if amount == 0 or trade.user_id is None:
        return None
    if record["id"] is None:
        raise LookupError(f"user {trade.user_id!r} has no balance row")
    assert kind is not None
    return Posting(trade.user_id, trade.id, amount, kind, record["balance_after"], record["id"], record["created_at"])


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


CHECK_LOCK_KEY = 0x41_50_4C_45_44_47_45_52  # "APLEDGER": the advisory lock of one periodic check at a time


async def take_check_turn(db: Connection) -> bool:
    """Whether this transaction may run the periodic check now: False while another process's check holds the
    turn. A transaction-level lock (released by its end, fine behind PgBouncer; allowed in a read-only snapshot)."""
    return bool(await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", CHECK_LOCK_KEY))


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
