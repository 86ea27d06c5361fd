"""How our records look to the frontend, defined once: the REST routes answer with these, and live events carry
exactly the same shapes."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, Field, PlainSerializer

from assetpay_merchant.core.money import format_money
from assetpay_merchant.core.policy import Status, TradeType
from assetpay_merchant.store.users import UserRow


def _money_text(amount: Any) -> str:
    return format_money(Decimal(amount))


Money = Annotated[Decimal, PlainSerializer(_money_text, return_type=str, when_used="always")]
"""A Decimal that pydantic renders as a decimal string in every JSON answer."""


class BalanceView(BaseModel):
    """What the user has: `GET /v1/balance`, the `balance.updated` event, and the admin user view."""

    available: Money = Field(description="Sum of the user's ledger entries (negative is a debt)")
    pending: Money = Field(description="What in-flight deposits will still credit")
    currency: str = "USD"

    model_config = {"json_schema_extra": {"examples": [{"available": "12.34", "pending": "40.00", "currency": "USD"}]}}


class UserView(BaseModel):
    """A registered user's profile, as the merchant platform and ops see it."""

    id: str
    steamId: str
    tradeUrl: str
    clientData: dict[str, Any]
    createdAt: datetime
    updatedAt: datetime

    @classmethod
    def of(cls, user: UserRow) -> UserView:
        return cls(
            id=user.id,
            steamId=user.steam_id,
            tradeUrl=user.trade_url,
            clientData=user.client_data,
            createdAt=user.created_at,
            updatedAt=user.updated_at,
        )


class TradeRecord(Protocol):
    """What a view of a trade needs (the ORM's `Trade` and the money path's `TradeRow` both have it)."""

    id: uuid.UUID
    assetpay_id: str | None
    external_id: str | None
    type: str
    status: str
    game: str
    items: list[dict[str, Any]]
    total_price: Decimal
    pre_credit: Decimal
    pending_credit: Decimal
    posted: Decimal
    error: str | None
    hold_end_date: datetime | None
    created_at: datetime
    updated_at: datetime


class TradeView(BaseModel):
    """A trade as `GET /v1/trades/{id}` returns it and `trade.updated` carries it."""

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
    def of(cls, trade: TradeRecord) -> TradeView:
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


def trade_json(trade: TradeRecord) -> dict[str, Any]:
    """The trade as JSON-ready data, exactly as the API renders it."""
    return TradeView.of(trade).model_dump(mode="json")
