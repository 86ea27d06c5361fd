"""The user's trades: starting deposits and withdrawals, cancelling, and reading their trades (only theirs)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator
from sqlalchemy import select, tuple_

from assetpay_merchant.api.auth import UNAUTHORIZED, UserId
from assetpay_merchant.api.deps import Resources, ResourcesDep, SessionDep
from assetpay_merchant.api.errors import render
from assetpay_merchant.api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from assetpay_merchant.api.routing import ExactJSONRoute
from assetpay_merchant.api.schemas import (
    BODY_REFUSED,
    DATABASE,
    NO_BODY,
    UPSTREAM,
    VALIDATION,
    MoneyIn,
    Responses,
    WithdrawPriceIn,
    error,
)
from assetpay_merchant.core.errors import NotFound, ValidationFailed
from assetpay_merchant.core.money import fits_money_column
from assetpay_merchant.core.policy import Status, TradeType
from assetpay_merchant.core.vocabulary import (
    ITEM_ID_PATTERN,
    MAX_DEPOSIT_ITEMS,
    MAX_ITEM_AMOUNT,
    MAX_ITEM_ID_LENGTH,
    MAX_WITHDRAW_ITEMS,
    MIN_ITEM_ID_LENGTH,
    GameId,
)
from assetpay_merchant.gateway import DepositItem, WithdrawItem
from assetpay_merchant.services import trading
from assetpay_merchant.services.trading import Started
from assetpay_merchant.services.views import TradeView
from assetpay_merchant.store import idempotency
from assetpay_merchant.store.tables import Trade

router = APIRouter(
    prefix="/v1", tags=["trades"], route_class=ExactJSONRoute, responses={401: UNAUTHORIZED, 503: DATABASE}
)


TradeOut = TradeView
"""A trade as the routes return it (the same shape `trade.updated` carries)."""


class TradePage(BaseModel):
    trades: list[TradeOut]
    nextCursor: str | None


@router.get(
    "/trades",
    summary="The user's trades, newest first",
    responses={422: error("VALIDATION_FAILED: a bad query, or a `cursor` that is not a `nextCursor` of ours")},
)
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


@router.get(
    "/trades/{trade_id}",
    summary="One of the user's trades",
    responses={404: error("TRADE_NOT_FOUND: no such trade, or not the user's"), 422: VALIDATION},
)
async def get_trade(trade_id: str, user_id: UserId, session: SessionDep) -> TradeOut:
    try:
        key = uuid.UUID(trade_id)
    except ValueError:
        key = None
    trade = await session.get(Trade, key) if key is not None else None
    if trade is None or trade.user_id != user_id:
        raise NotFound("No such trade", key="TRADE_NOT_FOUND")
    return TradeOut.of(trade)


_GAME_STRINGS = {str(int(game)) for game in GameId}


def _game_string(value: Any) -> Any:
    if isinstance(value, str) and value not in _GAME_STRINGS:
        raise ValueError(f"must be one of {', '.join(sorted(_GAME_STRINGS))}, as a number or a string")
    return value


GameIn = Annotated[
    GameId,
    BeforeValidator(_game_string),
    WithJsonSchema(
        {
            "enum": [*(int(game) for game in GameId), *(str(int(game)) for game in GameId)],
            "description": "730 (CS2) or 252490 (Rust), as a number or a string",
        }
    ),
]
"""A game in a body: AssetPay writes it as a string (`"730"`), a frontend may send the number."""


class DepositItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    itemId: str = Field(
        min_length=MIN_ITEM_ID_LENGTH,
        max_length=MAX_ITEM_ID_LENGTH,
        pattern=ITEM_ID_PATTERN,
        description="`id` of the item in GET /v1/inventory",
    )
    price: MoneyIn = Field(description="The item's current inventory price")
    amount: int | None = Field(default=None, ge=1, le=MAX_ITEM_AMOUNT, description="For stackable (Rust) items")


class DepositIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"items": [{"itemId": "a1b2c3d4e5", "price": "10.75"}], "game": "730"}]},
    )

    items: list[DepositItemIn] = Field(min_length=1, max_length=MAX_DEPOSIT_ITEMS)
    game: GameIn = GameId.CS2
    isInstant: bool = Field(default=True, description="Credit the instant part (preCredit) when the trade is held")

    @field_validator("items")
    @classmethod
    def _total_fits(cls, items: list[DepositItemIn]) -> list[DepositItemIn]:
        total = sum((i.price * (i.amount or 1) for i in items), start=Decimal(0))
        if not fits_money_column(total.normalize()):  # 1.000000000 (a JSON number) is 1, not nine decimals
            raise ValueError("the deposit's total is larger than an amount can be")
        return items


class WithdrawItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    itemId: str = Field(
        min_length=MIN_ITEM_ID_LENGTH,
        max_length=MAX_ITEM_ID_LENGTH,
        pattern=ITEM_ID_PATTERN,
        description="`id` of the listing in GET /v1/market",
    )
    price: WithdrawPriceIn = Field(description="The price shown")
    maxPrice: WithdrawPriceIn | None = Field(default=None, description="The most the user will pay; not below `price`")

    @model_validator(mode="after")
    def _ceiling(self) -> WithdrawItemIn:
        if self.maxPrice is not None and self.maxPrice < self.price:
            raise ValueError("maxPrice must not be below price")
        return self


class WithdrawIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"items": [{"itemId": "listing-123", "price": "4.20", "maxPrice": "4.40"}]}]},
    )

    items: list[WithdrawItemIn] = Field(min_length=1, max_length=MAX_WITHDRAW_ITEMS)
    game: GameIn = GameId.CS2


class TradeCreated(TradeOut):
    relatedTrades: list[TradeOut] = Field(
        default_factory=list, description="Other offers AssetPay split the basket into, each a trade of its own"
    )

    @classmethod
    def of_started(cls, started: Started) -> TradeCreated:
        return cls(
            **TradeOut.of(started.trade).model_dump(),
            relatedTrades=[TradeOut.of(t) for t in started.related],
        )


class CancelOut(BaseModel):
    tradeId: str
    requested: int
    cancelled: int
    failed: int
    items: list[dict[str, Any]]


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=idempotency.MAX_KEY_LENGTH,
        description="Retry-safe key: the same key and body return the first answer",
    ),
    WithJsonSchema({"type": "string", "maxLength": idempotency.MAX_KEY_LENGTH, "examples": [str(uuid.UUID(int=1))]}),
]

_STARTS: Responses = {
    **UPSTREAM,
    404: error("USER_NOT_FOUND: the platform has not registered the user"),
    409: error(
        "PRICE_CHANGED, ITEMS_UNAVAILABLE, DEPOSIT_IN_PROGRESS, WITHDRAW_IN_PROGRESS, DUPLICATE_TRADE, TRADE_REFUSED, "
        "INVENTORY_PRIVATE, USER_NOT_TRADEABLE (AssetPay refused); IDEMPOTENCY_KEY_REUSED (the key came with another "
        "body), IDEMPOTENCY_KEY_IN_USE (a request with the key is still running; Retry-After)",
        retry_after=True,
    ),
    502: error(
        "AssetPay failed (UPSTREAM_*, `tradeId` of the refused trade), or OUTCOME_UNKNOWN: its answer was lost, the "
        "trade is recorded (`tradeId`) and will be settled: retry with the same Idempotency-Key, never without",
        retry_after=True,
    ),
    504: error(
        "UPSTREAM_TIMEOUT: AssetPay did not answer in time; the trade is recorded (`tradeId`), as for OUTCOME_UNKNOWN",
        retry_after=True,
    ),
}
DEPOSIT_ERRORS: Responses = {
    **_STARTS,
    422: error(
        "VALIDATION_FAILED (`fields`): the body does not match this document, or the deposit's total is more than an "
        f"amount can be (`items`), or AssetPay refused it; INVALID_TRADE_URL: the profile's trade URL. {BODY_REFUSED}"
    ),
    429: error(
        "TOO_MANY_ACTIVE_TRADES: five deposits wait for acceptance; RATE_LIMITED: ten deposits in five minutes, or "
        "AssetPay's limit; TOO_MANY_REQUESTS: the user's allowance of trades a minute is used up; "
        "ASSETPAY_QUOTA_EXHAUSTED: the merchant's AssetPay quota, shared by all its users, is (the trade is failed "
        "unsent, `tradeId`)",
        retry_after=True,
    ),
}
WITHDRAWAL_ERRORS: Responses = {
    **_STARTS,
    402: error("INSUFFICIENT_BALANCE: the balance does not cover the prices"),
    429: error(
        "TOO_MANY_REQUESTS: the user's allowance of trades a minute is used up; ASSETPAY_QUOTA_EXHAUSTED: the "
        "merchant's AssetPay quota, shared by all its users, is (the trade is failed unsent, `tradeId`); "
        "RATE_LIMITED: AssetPay's limit",
        retry_after=True,
    ),
    422: error(
        "VALIDATION_FAILED (`fields`): the body does not match this document, or an item's `maxPrice` is below its "
        f"`price` (`items.<n>`), or AssetPay refused it; INVALID_TRADE_URL: the profile's trade URL. {BODY_REFUSED}"
    ),
}


async def _create(
    request: Request,
    resources: Resources,
    *,
    user_id: str,
    body: BaseModel,
    order: trading.Order,
    key: str | None,
) -> JSONResponse:
    """Start a trade, honouring Idempotency-Key: definitive answers are stored for the key; an unknown outcome
    frees the key, and a retry with it carries on with the trade already recorded."""
    now = resources.clock()
    database = resources.database
    claim = None
    if key is not None:
        fingerprint = idempotency.fingerprint(request.url.path, body.model_dump(mode="json"))
        outcome = await trading.claim_key(database, user_id=user_id, key=key, fingerprint=fingerprint, now=now)
        if isinstance(outcome, idempotency.Replay):
            return JSONResponse(outcome.body, status_code=outcome.status, headers={"Idempotent-Replayed": "true"})
        claim = outcome
    try:
        started = await trading.start(
            database,
            resources.assetpay,
            user_id=user_id,
            order=order,
            claim=claim,
            now=now,
            limits=resources.rate_limits,
        )
    except Exception as error:
        if claim is not None:
            rendered = render(error)
            if rendered.status >= 500 or rendered.status == 429:  # worth retrying with the same key
                await trading.release_key(database, claim)
            else:
                await trading.finish_key(database, claim, status=rendered.status, body=rendered.body)
        raise
    except BaseException:
        if claim is not None:
            await trading.release_key(database, claim)
        raise
    answer = TradeCreated.of_started(started).model_dump(mode="json")
    if claim is not None:
        await trading.finish_key(database, claim, status=201, body=answer)
    return JSONResponse(answer, status_code=201)


@router.post(
    "/deposits",
    status_code=201,
    response_model=TradeCreated,
    summary="Start a deposit: the user sells skins for balance",
    responses=DEPOSIT_ERRORS,
)
async def create_deposit(
    body: DepositIn, request: Request, user_id: UserId, resources: ResourcesDep, key: IdempotencyKeyHeader = None
) -> JSONResponse:
    order = trading.DepositOrder(
        items=[DepositItem(i.itemId, i.price, i.amount) for i in body.items],
        game=int(body.game),
        is_instant=body.isInstant,
    )
    return await _create(request, resources, user_id=user_id, body=body, order=order, key=key)


@router.post(
    "/withdrawals",
    status_code=201,
    response_model=TradeCreated,
    summary="Start a withdrawal: the user buys skins with balance",
    responses=WITHDRAWAL_ERRORS,
)
async def create_withdrawal(
    body: WithdrawIn, request: Request, user_id: UserId, resources: ResourcesDep, key: IdempotencyKeyHeader = None
) -> JSONResponse:
    order = trading.WithdrawOrder(
        items=[WithdrawItem(i.itemId, i.price, i.maxPrice) for i in body.items], game=int(body.game)
    )
    return await _create(request, resources, user_id=user_id, body=body, order=order, key=key)


@router.post(
    "/withdrawals/{trade_id}/cancel",
    summary="Cancel what can still be cancelled of a withdrawal (refunds arrive as the trade updates)",
    responses={
        **UPSTREAM,
        404: error("TRADE_NOT_FOUND: not one of the user's withdrawals; USER_NOT_FOUND; NOT_FOUND: AssetPay's"),
        409: error(
            "TRADE_FINAL: nothing is left to cancel; or AssetPay refused (TRADE_REFUSED, ...)", retry_after=True
        ),
    },
    openapi_extra={"requestBody": NO_BODY},
)
async def cancel_withdrawal(trade_id: str, user_id: UserId, resources: ResourcesDep) -> CancelOut:
    result = await trading.cancel_withdrawal(resources.database, resources.assetpay, user_id=user_id, trade_id=trade_id)
    return CancelOut(
        tradeId=result.trade_id,
        requested=result.requested,
        cancelled=result.cancelled,
        failed=result.failed,
        items=[item.model_dump(by_alias=True, exclude_none=True, mode="json") for item in result.items],
    )
