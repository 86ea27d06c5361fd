"""`GET /v1/balance` and `GET /v1/ledger`: what the user has, and every movement that got it there."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from assetpay_merchant.api.auth import UNAUTHORIZED, UserId
from assetpay_merchant.api.deps import ResourcesDep, SessionDep
from assetpay_merchant.api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from assetpay_merchant.api.schemas import DATABASE, error
from assetpay_merchant.core.errors import ValidationFailed
from assetpay_merchant.core.money import ZERO
from assetpay_merchant.core.policy import IN_FLIGHT, TradeType
from assetpay_merchant.services.views import BalanceView, Money
from assetpay_merchant.store.tables import Balance, LedgerEntry, Trade

router = APIRouter(prefix="/v1", tags=["balance"], responses={401: UNAUTHORIZED, 503: DATABASE})


class EntryOut(BaseModel):
    id: int
    amount: Money
    kind: str
    balanceAfter: Money
    tradeId: uuid.UUID | None
    createdAt: datetime


class LedgerPage(BaseModel):
    entries: list[EntryOut]
    nextCursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last one")


async def balance_of(session: AsyncSession, user_id: str, currency: str) -> BalanceView:
    available = await session.scalar(select(Balance.available).where(Balance.user_id == user_id))
    pending = await session.scalar(
        select(func.coalesce(func.sum(Trade.total_price - Trade.posted), 0)).where(
            Trade.user_id == user_id,
            Trade.type == TradeType.DEPOSIT.value,
            Trade.status.in_([s.value for s in IN_FLIGHT]),
        )
    )
    return BalanceView(available=available or ZERO, pending=Decimal(pending or 0), currency=currency)


@router.get("/balance", summary="The user's balance")
async def get_balance(user_id: UserId, session: SessionDep, resources: ResourcesDep) -> BalanceView:
    return await balance_of(session, user_id, resources.settings.currency)


@router.get(
    "/ledger",
    summary="The user's ledger entries, newest first",
    responses={422: error("VALIDATION_FAILED: a bad query, or a `cursor` that is not a `nextCursor` of ours")},
)
async def get_ledger(user_id: UserId, session: SessionDep, limit: Limit = 50, cursor: Cursor = None) -> LedgerPage:
    query = select(LedgerEntry).where(LedgerEntry.user_id == user_id).order_by(LedgerEntry.id.desc()).limit(limit + 1)
    if cursor is not None:
        key = decode_cursor(cursor)
        if len(key) != 1 or not isinstance(key[0], int):
            raise ValidationFailed("The cursor is not valid", fields={"cursor": "not a ledger cursor"})
        query = query.where(LedgerEntry.id < key[0])
    rows = list(await session.scalars(query))
    page, more = rows[:limit], len(rows) > limit
    return LedgerPage(
        entries=[
            EntryOut(
                id=e.id,
                amount=e.amount,
                kind=e.kind,
                balanceAfter=e.balance_after,
                tradeId=e.trade_id,
                createdAt=e.created_at,
            )
            for e in page
        ],
        nextCursor=encode_cursor(page[-1].id) if more else None,
    )
