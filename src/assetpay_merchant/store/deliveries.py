"""`webhook_deliveries`: every signed callback, kept with its raw body and what we did with it."""

from __future__ import annotations

import uuid
from datetime import datetime

from assetpay_merchant.store.database import Connection

_RECORD = """
INSERT INTO webhook_deliveries (delivery_id, kind, outcome, detail, subject_id, signed_at, raw_body)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (delivery_id) DO NOTHING
RETURNING id
"""
_OUTCOME = "UPDATE webhook_deliveries SET outcome = $2, trade_id = $3 WHERE id = $1"


async def record(
    db: Connection,
    *,
    delivery_id: str,
    signed_at: datetime,
    kind: str,
    raw_body: str,
    subject_id: str | None,
    outcome: str = "received",
    detail: str | None = None,
) -> int | None:
    """Insert the delivery; its row id, or None when its id was seen before (a retry or a replay)."""
    row_id: int | None = await db.fetchval(_RECORD, delivery_id, kind, outcome, detail, subject_id, signed_at, raw_body)
    return row_id


async def set_outcome(db: Connection, row_id: int, *, outcome: str, trade_id: uuid.UUID | None) -> None:
    await db.execute(_OUTCOME, row_id, outcome, trade_id)
