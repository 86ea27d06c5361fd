"""Trades as ops sees them: across users with filters (the review queue among them), and `trade_history`, the
append-only record of what people decided about a trade."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from assetpay_merchant.store.database import Connection
from assetpay_merchant.store.tables import TradeHistory
from assetpay_merchant.store.trades import SELECT_TRADE, TradeRow

RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class TradeFilter:
    """Which trades to list; None matches any."""

    needs_review: bool | None = None
    user_id: str | None = None
    status: str | None = None
    type: str | None = None


@dataclass(frozen=True, slots=True)
class TradeKey:
    """Where a newest-first page ends: the sort key of its last trade."""

    created_at: datetime
    id: uuid.UUID


async def search(db: Connection, where: TradeFilter, *, before: TradeKey | None, limit: int) -> list[TradeRow]:
    """Trades of any user matching `where`, newest first, after `before` (unlocked, for reading).

    Only the conditions asked for are in the statement, so the review queue is read from its partial index."""
    conditions: list[str] = []
    values: list[Any] = []

    def condition(sql: str, *params: Any) -> None:
        # `sql` names its parameters {0}, {1}, ...: numbered here, after the ones already taken.
        conditions.append(sql.format(*(f"${len(values) + n}" for n in range(1, len(params) + 1))))
        values.extend(params)

    if where.needs_review is not None:
        condition("needs_review" if where.needs_review else "NOT needs_review")
    if where.user_id is not None:
        condition("user_id = {0}", where.user_id)
    if where.status is not None:
        condition("status = {0}", where.status)
    if where.type is not None:
        condition("type = {0}", where.type)
    if before is not None:
        condition("(created_at, id) < ({0}, {1})", before.created_at, before.id)
    clause = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    values.append(limit)
    sql = f"{SELECT_TRADE} {clause} ORDER BY created_at DESC, id DESC LIMIT ${len(values)}"
    return [TradeRow.from_record(record) for record in await db.fetch(sql, *values)]


async def queue_size(db: Connection) -> int:
    """How many trades wait on the review queue (read from its partial index)."""
    return int(await db.fetchval("SELECT count(*) FROM trades WHERE needs_review"))


@dataclass(frozen=True, slots=True)
class HistoryRow:
    id: int
    trade_id: uuid.UUID
    action: str
    note: str
    actor: str
    review_reason: str | None
    created_at: datetime


_COLUMNS = ", ".join(column.name for column in TradeHistory.__table__.columns)  # HistoryRow's fields, in order
_RECORD = f"""
INSERT INTO trade_history (trade_id, action, note, actor, review_reason) VALUES ($1, $2, $3, $4, $5)
RETURNING {_COLUMNS}
"""  # noqa: S608 (constant column names)
_OF_TRADE = f"SELECT {_COLUMNS} FROM trade_history WHERE trade_id = $1 ORDER BY id"  # noqa: S608 (constant names)
# Not trades.save: taking a trade off the queue is not news about it, so updated_at (what reconciliation and the
# user's view go by) stays as AssetPay's last word left it.
_UNFLAG = "UPDATE trades SET needs_review = false, review_reason = NULL WHERE id = $1"


async def resolve(db: Connection, trade: TradeRow, *, note: str, actor: str) -> HistoryRow:
    """Take the locked trade off the review queue, keeping the note, the actor and what it was flagged for."""
    record = await db.fetchrow(_RECORD, trade.id, RESOLVED, note, actor, trade.review_reason)
    assert record is not None
    await db.execute(_UNFLAG, trade.id)
    trade.needs_review, trade.review_reason = False, None
    return HistoryRow(**dict(record))


async def history(db: Connection, trade_id: uuid.UUID) -> list[HistoryRow]:
    """What people did about the trade, oldest first."""
    return [HistoryRow(**dict(record)) for record in await db.fetch(_OF_TRADE, trade_id)]
