"""The `users` table: profiles as the merchant platform registers them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from assetpay_merchant.store.database import Connection


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    steam_id: str
    trade_url: str
    client_data: dict[str, Any]
    created_at: datetime
    updated_at: datetime


COLUMNS = "id, steam_id, trade_url, client_data::text AS client_data, created_at, updated_at"
_STEAM_OWNER = "SELECT id FROM users WHERE steam_id = $1 AND id <> $2"
_UPSERT = f"""
INSERT INTO users (id, steam_id, trade_url, client_data) VALUES ($1, $2, $3, coalesce($4::text::jsonb, '{{}}'))
ON CONFLICT (id) DO UPDATE SET
    steam_id = excluded.steam_id,
    trade_url = excluded.trade_url,
    client_data = coalesce($4::text::jsonb, users.client_data),
    updated_at = now()
RETURNING {COLUMNS}, xmax = 0 AS created
"""  # noqa: S608 (constant column names)
_GET = f"SELECT {COLUMNS} FROM users WHERE id = $1"  # noqa: S608 (constant column names)
_LOCK = f"{_GET} FOR UPDATE"


def row_of(record: Any) -> UserRow:
    """A profile from a record of `COLUMNS`."""
    values = dict(record)
    values.pop("created", None)
    values["client_data"] = json.loads(values["client_data"])
    return UserRow(**values)


async def steam_id_owner(db: Connection, *, steam_id: str, other_than: str) -> str | None:
    owner: str | None = await db.fetchval(_STEAM_OWNER, steam_id, other_than)
    return owner


async def upsert(
    db: Connection, *, user_id: str, steam_id: str, trade_url: str, client_data: dict[str, Any] | None
) -> tuple[UserRow, bool]:
    """Create or update a profile (`client_data` None keeps what is stored); `(user, created)`."""
    record = await db.fetchrow(
        _UPSERT, user_id, steam_id, trade_url, json.dumps(client_data) if client_data is not None else None
    )
    assert record is not None
    return row_of(record), bool(record["created"])  # a row that was inserted, not updated, has no xmax


async def get(db: Connection, user_id: str, *, lock: bool = False) -> UserRow | None:
    record = await db.fetchrow(_LOCK if lock else _GET, user_id)
    return row_of(record) if record is not None else None
