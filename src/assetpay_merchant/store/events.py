"""`events`: the outbox of live events, written in the unit of work that caused them.

Each user's events are numbered 1, 2, 3, ... by `balances.last_event_id`, whose row lock orders them exactly as
their transactions commit, so a reader never sees event n+1 before event n, and the numbers have no gaps (a rolled
back transaction takes its numbers with it). Every append also queues a NOTIFY on `CHANNEL`, which PostgreSQL
delivers only when (and if) the transaction commits: nothing is announced that did not happen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from assetpay_merchant.core.policy import IN_FLIGHT
from assetpay_merchant.store.database import Connection

CHANNEL = "assetpay_events"
TRADE_UPDATED = "trade.updated"
BALANCE_UPDATED = "balance.updated"
_IN_FLIGHT = [status.value for status in IN_FLIGHT]


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    id: int
    type: str
    data: dict[str, Any]


# One round trip: number the events, render the balance (as GET /v1/balance does, less the currency), store them,
# and queue the notification "<user id> <event id>" for each.
_APPEND = """
WITH seq AS (
    UPDATE balances SET last_event_id = last_event_id + $3 WHERE user_id = $1
    RETURNING last_event_id, available
), pending AS (
    SELECT coalesce(sum(total_price - posted), 0) AS amount FROM trades
    WHERE user_id = $1 AND type = 'deposit' AND status = ANY($4::text[])
), fresh (n, type, data) AS (
    SELECT 1, 'trade.updated', $2::text::jsonb WHERE $2::text IS NOT NULL
    UNION ALL
    SELECT $3, 'balance.updated',
           jsonb_build_object('available', money_text(seq.available), 'pending', money_text(pending.amount))
    FROM seq, pending WHERE $5
)
INSERT INTO events (user_id, id, type, data)
SELECT $1, seq.last_event_id - $3 + fresh.n, fresh.type, fresh.data FROM seq, fresh
RETURNING id, pg_notify('assetpay_events', $1 || ' ' || id)
"""
_SINCE = """
SELECT id, type, data::text AS data FROM events WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3
"""
_HAS = "SELECT EXISTS (SELECT 1 FROM events WHERE user_id = $1 AND id = $2)"
_LAST = "SELECT last_event_id FROM balances WHERE user_id = $1"
_PURGE = "DELETE FROM events WHERE created_at < $1"


async def append(db: Connection, user_id: str, *, trade: dict[str, Any] | None, balance: bool) -> list[int]:
    """Record `trade.updated` (the trade as the API shows it) and/or `balance.updated` for the user; their ids."""
    count = (trade is not None) + balance
    if count == 0:
        return []
    rows = await db.fetch(
        _APPEND, user_id, json.dumps(trade) if trade is not None else None, count, _IN_FLIGHT, balance
    )
    return [row["id"] for row in rows]


async def last_id(db: Connection, user_id: str) -> int:
    found: int | None = await db.fetchval(_LAST, user_id)
    return found or 0


async def since(db: Connection, user_id: str, after: int, *, limit: int = 1000) -> list[Event]:
    """The user's events after `after`, oldest first."""
    rows = await db.fetch(_SINCE, user_id, after, limit)
    return [Event(user_id, row["id"], row["type"], json.loads(row["data"])) for row in rows]


async def retained(db: Connection, user_id: str, event_id: int) -> bool:
    """Whether the event is still kept (the ones before it may be replayed without a gap)."""
    found: bool = await db.fetchval(_HAS, user_id, event_id)
    return found


async def purge(db: Connection, *, older_than: datetime) -> int:
    """Forget events older than the retention; returns how many."""
    status = await db.execute(_PURGE, older_than)
    return int(status.split()[-1])
