"""Reading the ledger back for ops: a user's newest entries (with an adjustment's reason and actor) and their
balance as `GET /v1/balance` shows it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from assetpay_merchant.core.money import ZERO
from assetpay_merchant.core.policy import IN_FLIGHT, TradeType
from assetpay_merchant.store.database import Connection
from assetpay_merchant.store.tables import LedgerEntry


@dataclass(frozen=True, slots=True)
class EntryRow:
    id: int
    user_id: str
    trade_id: uuid.UUID | None
    amount: Decimal
    kind: str
    balance_after: Decimal
    reason: str | None
    actor: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BalanceRow:
    available: Decimal
    """The sum of the user's entries (negative: a debt)."""
    pending: Decimal
    """What the user's deposits in flight will still credit."""


_COLUMNS = ", ".join(column.name for column in LedgerEntry.__table__.columns)  # EntryRow's fields, in order
_RECENT = f"SELECT {_COLUMNS} FROM ledger_entries WHERE user_id = $1 ORDER BY id DESC LIMIT $2"  # noqa: S608
_BALANCE = """
SELECT (SELECT available FROM balances WHERE user_id = $1) AS available,
       (SELECT coalesce(sum(total_price - posted), 0) FROM trades
        WHERE user_id = $1 AND type = $2 AND status = ANY($3::text[])) AS pending
"""
_IN_FLIGHT = [status.value for status in IN_FLIGHT]


async def recent(db: Connection, user_id: str, *, limit: int) -> list[EntryRow]:
    """The user's newest entries, newest first."""
    return [EntryRow(**dict(record)) for record in await db.fetch(_RECENT, user_id, limit)]


async def balance(db: Connection, user_id: str) -> BalanceRow:
    record = await db.fetchrow(_BALANCE, user_id, TradeType.DEPOSIT.value, _IN_FLIGHT)
    assert record is not None
    return BalanceRow(record["available"] if record["available"] is not None else ZERO, record["pending"])
