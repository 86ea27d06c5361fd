"""The merchant platform's users: their profile, and adopting trades that arrived before they were registered."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from assetpay_merchant.db import driver_connection
from assetpay_merchant.errors import Conflict
from assetpay_merchant.ledger.service import Posting, ensure_balance, settle
from assetpay_merchant.trades.service import SELECT_TRADE, UNKNOWN_USER, TradeRow, save
from assetpay_merchant.users.models import User


async def upsert_user(
    session: AsyncSession, *, user_id: str, steam_id: str, trade_url: str, client_data: dict[str, Any] | None
) -> tuple[User, bool]:
    """Create or update a profile; returns `(user, created)`. A Steam id belongs to one user only."""
    owner = await session.scalar(select(User.id).where(User.steam_id == steam_id, User.id != user_id))
    if owner is not None:
        raise Conflict("This Steam id belongs to another user", key="STEAM_ID_TAKEN")
    values: dict[str, Any] = {"id": user_id, "steam_id": steam_id, "trade_url": trade_url}
    changes: dict[str, Any] = {"steam_id": steam_id, "trade_url": trade_url, "updated_at": func.now()}
    if client_data is not None:
        values["client_data"] = client_data
        changes["client_data"] = client_data
    statement = pg_insert(User).values(**values)
    created = await session.scalar(
        statement.on_conflict_do_update(index_elements=[User.id], set_=changes).returning(
            literal_column("xmax = 0")  # a row that was inserted, not updated, has no xmax
        )
    )
    await ensure_balance(await driver_connection(session), user_id)
    user = await session.get(User, user_id, populate_existing=True)
    assert user is not None
    return user, bool(created)


_ORPHANS = f"""
{SELECT_TRADE}
WHERE user_id IS NULL AND (external_client_user_id = $1 OR client_steam_id = $2)
ORDER BY id
FOR UPDATE
"""


async def adopt_trades(session: AsyncSession, user: User) -> list[Posting]:
    """Attribute trades we received before the user was registered, and post what they owe or are owed."""
    db = await driver_connection(session)
    postings = []
    for record in await db.fetch(_ORPHANS, user.id, user.steam_id):
        trade = TradeRow.from_record(record)
        trade.user_id = user.id
        trade.unflag(UNKNOWN_USER)
        posting = await settle(db, trade)
        await save(db, trade)
        if posting is not None:
            postings.append(posting)
    return postings
