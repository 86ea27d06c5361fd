"""Our record of AssetPay's trades on the money path: finding (and locking) the trade a callback is about,
merging what it says, and saving it.

This is the hot path of every callback, so it speaks plain SQL on the transaction's asyncpg connection (one
prepared statement per step) rather than the ORM; the ORM model in `models.py` serves the read APIs.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from assetpay_merchant.db import Connection
from assetpay_merchant.ledger.policy import Status, Transition, merge_items, transition
from assetpay_merchant.webhooks.payloads import TradePayload

UNKNOWN_USER = "no user of ours matches externalClientUserId or clientSteamID"


@dataclass(slots=True)
class TradeRow:
    """One row of `trades`, held under its row lock while a transaction changes it."""

    id: uuid.UUID
    assetpay_id: str | None
    external_id: str | None
    user_id: str | None
    client_steam_id: str | None
    external_client_user_id: str | None
    type: str
    game: str
    status: str
    total_price: Decimal
    pre_credit: Decimal
    pending_credit: Decimal
    authorized_amount: Decimal | None
    approved_amount: Decimal | None
    posted: Decimal
    items: list[dict[str, Any]]
    is_instant: bool | None
    error: str | None
    hold_end_date: datetime | None
    needs_review: bool
    review_reason: str | None
    created_at: datetime
    updated_at: datetime
    created: bool = field(default=False, compare=False)

    @classmethod
    def from_record(cls, record: Any, *, created: bool = False) -> TradeRow:
        values = dict(record)
        values["items"] = json.loads(values["items"])
        return cls(**values, created=created)

    def flag(self, reason: str) -> None:
        """Mark for a person to look at; reasons accumulate, each once."""
        reasons = self.review_reason.split("; ") if self.review_reason else []
        if reason not in reasons:
            self.review_reason = "; ".join([*reasons, reason])
        self.needs_review = True

    def unflag(self, reason: str) -> None:
        """Withdraw one reason, now resolved; the flag stays while other reasons remain."""
        remaining = [r for r in (self.review_reason or "").split("; ") if r and r != reason]
        self.review_reason = "; ".join(remaining) or None
        self.needs_review = bool(remaining)


_COLUMNS = ", ".join(f.name for f in fields(TradeRow) if f.name not in ("items", "created"))
SELECT_TRADE = f"SELECT {_COLUMNS}, items::text AS items FROM trades"  # noqa: S608 (constant column names)

_LOCK_FOR_CALLBACK = f"""
{SELECT_TRADE}
WHERE assetpay_id = $1 OR (external_id = $2 AND assetpay_id IS NULL)
ORDER BY assetpay_id = $1 DESC NULLS LAST
LIMIT 1
FOR UPDATE
"""

_INSERT_FROM_CALLBACK = f"""
INSERT INTO trades (id, assetpay_id, external_id, user_id, client_steam_id, external_client_user_id, type, game,
                    status, total_price, pre_credit, pending_credit, items, is_instant, error, hold_end_date)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::text::jsonb, $14, $15, $16)
ON CONFLICT DO NOTHING
RETURNING {_COLUMNS}, items::text AS items
"""  # noqa: S608 (constant column names, no input)

_SAVE = """
UPDATE trades
SET assetpay_id = $2, user_id = $3, status = $4, game = $5, total_price = $6, pre_credit = $7,
    pending_credit = $8, approved_amount = $9, posted = $10, items = $11::text::jsonb, is_instant = $12,
    error = $13, hold_end_date = $14, needs_review = $15, review_reason = $16, updated_at = now()
WHERE id = $1
RETURNING updated_at
"""

_FIND_USER = """
SELECT id FROM users WHERE id = $1 OR steam_id = $2
ORDER BY id = $1 DESC NULLS LAST
LIMIT 1
"""


async def find_user_id(db: Connection, payload: TradePayload) -> str | None:
    """Our user: `externalClientUserId` is our own id; failing that, the Steam id they traded with."""
    if payload.external_client_user_id is None and payload.client_steam_id is None:
        return None
    user_id: str | None = await db.fetchval(_FIND_USER, payload.external_client_user_id, payload.client_steam_id)
    return user_id


async def lock(db: Connection, trade_id: uuid.UUID) -> TradeRow | None:
    record = await db.fetchrow(f"{SELECT_TRADE} WHERE id = $1 FOR UPDATE", trade_id)
    return TradeRow.from_record(record) if record is not None else None


async def _lock_for(db: Connection, payload: TradePayload) -> TradeRow | None:
    record = await db.fetchrow(_LOCK_FOR_CALLBACK, payload.id, payload.external_id)
    return TradeRow.from_record(record) if record is not None else None


async def _insert(
    db: Connection, payload: TradePayload, user_id: str | None, external_id: str | None
) -> TradeRow | None:
    """The new row (ours, so locked until commit), or None when another transaction recorded it first."""
    record = await db.fetchrow(
        _INSERT_FROM_CALLBACK,
        uuid.uuid4(),
        payload.id,
        external_id,
        user_id,
        payload.client_steam_id,
        payload.external_client_user_id,
        payload.type.value,
        payload.game,
        payload.status.value,
        payload.total_price,
        payload.pre_credit or 0,
        payload.pending_credit or 0,
        json.dumps([item.stored() for item in payload.items]),
        payload.is_instant,
        payload.error,
        payload.hold_end_date,
    )
    return TradeRow.from_record(record, created=True) if record is not None else None


async def lock_for_callback(db: Connection, payload: TradePayload) -> TradeRow:
    """The trade this callback is about, locked for the rest of the transaction; created if we never saw it
    (`created` is then set).

    Found by AssetPay's id, or (a trade we recorded before AssetPay answered) by our externalId. Concurrent first
    deliveries of one trade race on the unique AssetPay id: one inserts, the others wait for it, then lock its row.
    """
    trade = await _lock_for(db, payload)
    if trade is not None:
        if trade.user_id is None:  # the user may have been registered since we first saw the trade
            trade.user_id = await find_user_id(db, payload)
        return trade
    user_id = await find_user_id(db, payload)
    trade = await _insert(db, payload, user_id, payload.external_id)
    if trade is None and payload.external_id is not None:
        # The externalId is taken by another trade of the same basket (AssetPay split it): keep ours unlinked.
        trade = await _insert(db, payload, user_id, None)
    if trade is None:  # a concurrent first delivery recorded it: wait for its lock
        trade = await _lock_for(db, payload)
    if trade is None:  # pragma: no cover - the row exists by now, whoever inserted it
        raise LookupError(f"trade {payload.id} vanished while being recorded")
    return trade


async def save(db: Connection, trade: TradeRow) -> None:
    """Write back what a transaction changed in a locked trade."""
    trade.updated_at = await db.fetchval(
        _SAVE,
        trade.id,
        trade.assetpay_id,
        trade.user_id,
        trade.status,
        trade.game,
        trade.total_price,
        trade.pre_credit,
        trade.pending_credit,
        trade.approved_amount,
        trade.posted,
        json.dumps(trade.items),
        trade.is_instant,
        trade.error,
        trade.hold_end_date,
        trade.needs_review,
        trade.review_reason,
    )


def merge_callback(trade: TradeRow, payload: TradePayload) -> Transition:
    """Fold what a callback says into the locked trade. Older news never moves a trade back.

    A newer status brings its amounts with it; items merge one by one, each keeping its most advanced status;
    a different final status after a final one is kept for review and not applied. The first word from AssetPay
    on a trade we recorded ourselves replaces our provisional amounts and items with AssetPay's.
    """
    first_word = trade.assetpay_id is None
    if first_word:
        trade.assetpay_id = payload.id
        trade.items = []
    step = transition(Status(trade.status), payload.status)
    if step is Transition.CONFLICT:
        trade.flag(f"received {payload.status.value} after final status {trade.status}")
        return step
    trade.items = merge_items(trade.items, [item.stored() for item in payload.items])
    if step is Transition.ADVANCE or first_word:
        _adopt(trade, payload)
    return step


def _adopt(trade: TradeRow, payload: TradePayload) -> None:
    trade.status = payload.status.value
    trade.game = payload.game
    trade.total_price = payload.total_price
    if payload.pre_credit is not None:
        trade.pre_credit = payload.pre_credit
    if payload.pending_credit is not None:
        trade.pending_credit = payload.pending_credit
    trade.error = payload.error or trade.error
    trade.hold_end_date = payload.hold_end_date or trade.hold_end_date
    if payload.is_instant is not None:
        trade.is_instant = payload.is_instant
