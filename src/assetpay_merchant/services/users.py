"""The merchant platform's users: registering profiles, adopting trades that arrived before them, and the
identity AssetPay knows each user by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from assetpay_merchant.core.errors import Conflict, NotFound
from assetpay_merchant.gateway import ClientIdentity
from assetpay_merchant.services import settlement
from assetpay_merchant.store import ledger, trades, users
from assetpay_merchant.store.database import Database, UnitOfWork
from assetpay_merchant.store.users import UserRow

USER_NOT_FOUND = "No such user: the platform registers users with PUT /v1/users/{id}"


@dataclass(frozen=True, slots=True)
class Registered:
    user: UserRow
    created: bool
    adopted: list[settlement.Settled]


async def register(
    database: Database, *, user_id: str, steam_id: str, trade_url: str, client_data: dict[str, Any] | None
) -> Registered:
    """Create or update a profile, and adopt the trades AssetPay told us about before the user existed.

    A Steam id belongs to one user only. `client_data` None keeps what is stored.
    """
    async with database.unit_of_work() as uow:
        if await users.steam_id_owner(uow.db, steam_id=steam_id, other_than=user_id) is not None:
            raise Conflict("This Steam id belongs to another user", key="STEAM_ID_TAKEN")
        user, created = await users.upsert(
            uow.db, user_id=user_id, steam_id=steam_id, trade_url=trade_url, client_data=client_data
        )
        await ledger.ensure_balance(uow.db, user_id)
        adopted = await _adopt_orphans(uow, user)
    return Registered(user, created, adopted)


async def _adopt_orphans(uow: UnitOfWork, user: UserRow) -> list[settlement.Settled]:
    adopted = []
    for trade_id in await trades.orphans(uow.db, user_id=user.id, steam_id=user.steam_id):
        settled = await settlement.adopt(uow, trade_id)
        if settled is not None:
            adopted.append(settled)
    return adopted


async def profile(database: Database, user_id: str) -> UserRow:
    async with database.statements() as db:
        user = await users.get(db, user_id)
    if user is None:
        raise NotFound(USER_NOT_FOUND, key="USER_NOT_FOUND")
    return user


def identity_of(user: UserRow) -> ClientIdentity:
    """The user as AssetPay should see them."""
    return ClientIdentity(
        user_id=user.id, steam_id=user.steam_id, trade_url=user.trade_url, client_data=user.client_data or None
    )


async def identity(database: Database, user_id: str) -> ClientIdentity:
    """The user as AssetPay should see them, read in one statement (the catalog routes ask on every request)."""
    return identity_of(await profile(database, user_id))
