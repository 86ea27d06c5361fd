"""Reading back `webhook_deliveries` (ops): the stored callbacks, newest first, and one by its delivery id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from assetpay_merchant.store.database import Connection
from assetpay_merchant.store.tables import WebhookDelivery

INVALID = "invalid"
"""The outcome of a callback we refused (it did not validate); kept with its raw body for review and replay."""


@dataclass(frozen=True, slots=True)
class StoredDelivery:
    id: int
    delivery_id: str
    kind: str
    outcome: str
    detail: str | None
    subject_id: str | None
    trade_id: uuid.UUID | None
    signed_at: datetime
    received_at: datetime
    raw_body: str


_COLUMNS = ", ".join(column.name for column in WebhookDelivery.__table__.columns)  # StoredDelivery's, in order
_RECENT = f"""
SELECT {_COLUMNS} FROM webhook_deliveries WHERE $1::text IS NULL OR outcome = $1 ORDER BY id DESC LIMIT $2
"""  # noqa: S608 (constant column names)
_FIND = f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE delivery_id = $1"  # noqa: S608 (constant column names)
_LOCK = f"{_FIND} FOR UPDATE"


async def recent(db: Connection, *, outcome: str | None, limit: int) -> list[StoredDelivery]:
    """The newest deliveries (only those with `outcome`, when given), newest first."""
    return [StoredDelivery(**dict(record)) for record in await db.fetch(_RECENT, outcome, limit)]


async def find(db: Connection, delivery_id: str, *, lock: bool = False) -> StoredDelivery | None:
    """The delivery AssetPay sent with this id; `lock`: held until the unit of work ends (one replay at a time)."""
    record = await db.fetchrow(_LOCK if lock else _FIND, delivery_id)
    return StoredDelivery(**dict(record)) if record is not None else None
