"""`GET /v1/trades` and `GET /v1/trades/{trade_id}`: the signed-in user's trades, and only theirs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select, tuple_

from assetpay_merchant.auth import UserId
from assetpay_merchant.deps import SessionDep
from assetpay_merchant.errors import NotFound, ValidationFailed
from assetpay_merchant.ledger.policy import Status, TradeType
from assetpay_merchant.money import Money
from assetpay_merchant.pagination import Cursor, Limit, decode_cursor, encode_cursor
from assetpay_merchant.trades.models import Trade

router = APIRouter(prefix="/v1", tags=["trades"])


class TradeOut(BaseModel):
    id: uuid.UUID = Field(description="Our id for the trade")
    assetpayId: str | None = Field(description="AssetPay's id (null until AssetPay has answered)")
    externalId: str | None
    type: TradeType
    status: Status
    game: str
    items: list[dict[str, Any]]
    totalPrice: Money
    preCredit: Money
    pendingCredit: Money
    credited: Money = Field(description="What this trade has moved on the user's balance so far (negative: charged)")
    error: str | None
    holdEndDate: datetime | None
    createdAt: datetime
    updatedAt: datetime

    @classmethod
    def of(cls, trade: Trade) -> TradeOut:
        return cls(
            id=trade.id,
            assetpayId=trade.assetpay_id,
            externalId=trade.external_id,
            type=TradeType(trade.type),
            status=Status(trade.status),
            game=trade.game,
            items=trade.items,
            totalPrice=trade.total_price,
            preCredit=trade.pre_credit,
            pendingCredit=trade.pending_credit,
            credited=trade.posted,
            error=trade.error,
            holdEndDate=trade.hold_end_date,
            createdAt=trade.created_at,
            updatedAt=trade.updated_at,
        )


class TradePage(BaseModel):
    trades: list[TradeOut]
    nextCursor: str | None


@router.get("/trades", summary="The user's trades, newest first")
async def list_trades(
    user_id: UserId,
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    type: Annotated[TradeType | None, Query(description="Only deposits or only withdrawals")] = None,
    status: Annotated[Status | None, Query(description="Only trades in this status")] = None,
) -> TradePage:
    query = (
        select(Trade)
        .where(Trade.user_id == user_id)
        .order_by(Trade.created_at.desc(), Trade.id.desc())
        .limit(limit + 1)
    )
    if type is not None:
        query = query.where(Trade.type == type.value)
    if status is not None:
        query = query.where(Trade.status == status.value)
    if cursor is not None:
        key = decode_cursor(cursor)
        try:
            created_at, last_id = datetime.fromisoformat(key[0]), uuid.UUID(key[1])
        except (IndexError, TypeError, ValueError):
            raise ValidationFailed("The cursor is not valid", fields={"cursor": "not a trades cursor"}) from None
        query = query.where(tuple_(Trade.created_at, Trade.id) < tuple_(created_at, last_id))
    rows = list(await session.scalars(query))
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at.isoformat(), page[-1].id) if more else None
    return TradePage(trades=[TradeOut.of(t) for t in page], nextCursor=next_cursor)


@router.get("/trades/{trade_id}", summary="One of the user's trades", responses={404: {"description": "Not theirs"}})
async def get_trade(trade_id: str, user_id: UserId, session: SessionDep) -> TradeOut:
    try:
        key = uuid.UUID(trade_id)
    except ValueError:
        key = None
    trade = await session.get(Trade, key) if key is not None else None
    if trade is None or trade.user_id != user_id:
        raise NotFound("No such trade", key="TRADE_NOT_FOUND")
    return TradeOut.of(trade)
