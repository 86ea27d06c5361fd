"""`/v1/admin/...` (the merchant's ops, X-Admin-Key): trades across users and the review queue, resolving a
flagged trade, balance adjustments, a user's whole picture, and what the merchant has at risk.

Every change names who made it in `X-Actor`: required, because an adjustment or a resolution nobody can be asked
about is not an audit trail."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, WithJsonSchema

from assetpay_merchant.api.auth import ADMIN_UNAUTHORIZED, FORBIDDEN, AdminOnly
from assetpay_merchant.api.deps import ResourcesDep
from assetpay_merchant.api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from assetpay_merchant.api.routing import ExactJSONRoute
from assetpay_merchant.api.schemas import DATABASE, VALIDATION, error
from assetpay_merchant.api.trades import IdempotencyKeyHeader
from assetpay_merchant.api.users import UserIdPath
from assetpay_merchant.core.errors import ValidationFailed
from assetpay_merchant.core.policy import Status, TradeType
from assetpay_merchant.core.vocabulary import MAX_USER_ID_LENGTH, USER_ID_PATTERN
from assetpay_merchant.services import adjustments, admin
from assetpay_merchant.services.adjustments import AMOUNT_PATTERN, AMOUNT_RULE, MAX_REASON_LENGTH
from assetpay_merchant.services.admin import (
    ACTOR_PATTERN,
    MAX_NOTE_LENGTH,
    TEXT_PATTERN,
    AdminTrade,
    AdminTradeDetail,
    ExposureView,
    LedgerEntryView,
    UserOverview,
)
from assetpay_merchant.store.review import TradeFilter, TradeKey
from assetpay_merchant.store.tables import MAX_ACTOR_LENGTH

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    route_class=ExactJSONRoute,
    dependencies=[AdminOnly],
    responses={401: ADMIN_UNAUTHORIZED, 403: FORBIDDEN, 503: DATABASE},
)

ActorHeader = Annotated[
    str,
    Header(
        alias="X-Actor",
        min_length=1,
        max_length=MAX_ACTOR_LENGTH,
        pattern=ACTOR_PATTERN,
        description="Who makes the change (a login or an email), recorded with it for the audit trail",
    ),
]
TRADE_NOT_FOUND = error("TRADE_NOT_FOUND: no such trade")


class AdminTradePage(BaseModel):
    trades: list[AdminTrade]
    nextCursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last one")


@router.get(
    "/trades",
    summary="Trades of every user, newest first; needsReview=true is the review queue",
    responses={422: error("VALIDATION_FAILED: a bad query, or a `cursor` that is not a `nextCursor` of ours")},
)
async def list_trades(
    resources: ResourcesDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    needsReview: Annotated[bool | None, Query(description="Only trades waiting for a person (or only not)")] = None,
    userId: Annotated[
        str | None, Query(min_length=1, max_length=MAX_USER_ID_LENGTH, pattern=USER_ID_PATTERN, description="Whose")
    ] = None,
    status: Annotated[Status | None, Query(description="Only trades in this status")] = None,
    type: Annotated[TradeType | None, Query(description="Only deposits or only withdrawals")] = None,
) -> AdminTradePage:
    where = TradeFilter(
        needs_review=needsReview,
        user_id=userId,
        status=status.value if status is not None else None,
        type=type.value if type is not None else None,
    )
    found = await admin.list_trades(
        resources.database, where, before=_trade_key(cursor) if cursor is not None else None, limit=limit
    )
    next_cursor = encode_cursor(found.next.created_at.isoformat(), found.next.id) if found.next is not None else None
    return AdminTradePage(trades=found.trades, nextCursor=next_cursor)


def _trade_key(cursor: str) -> TradeKey:
    key = decode_cursor(cursor)
    try:
        return TradeKey(datetime.fromisoformat(key[0]), uuid.UUID(key[1]))
    except (IndexError, TypeError, ValueError):
        raise ValidationFailed("The cursor is not valid", fields={"cursor": "not a trades cursor"}) from None


@router.get(
    "/trades/{trade_id}",
    summary="One trade of any user, with its history",
    responses={404: TRADE_NOT_FOUND, 422: VALIDATION},
)
async def get_trade(trade_id: uuid.UUID, resources: ResourcesDep) -> AdminTradeDetail:
    return await admin.trade_detail(resources.database, trade_id)


class ResolveIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "Checked with AssetPay: the reversal stands, user informed"}]},
    )

    note: str = Field(
        min_length=1,
        max_length=MAX_NOTE_LENGTH,
        pattern=TEXT_PATTERN,
        description="What was found and decided; kept in the trade's history",
    )


@router.post(
    "/trades/{trade_id}/resolve",
    summary="Take a trade off the review queue (the note, X-Actor and the time stay in its history)",
    responses={
        404: TRADE_NOT_FOUND,
        409: error("TRADE_NOT_IN_REVIEW: the trade is not on the review queue"),
        422: VALIDATION,
    },
)
async def resolve_trade(
    trade_id: uuid.UUID, body: ResolveIn, actor: ActorHeader, resources: ResourcesDep
) -> AdminTradeDetail:
    return await admin.resolve(resources.database, trade_id, note=body.note, actor=actor)


def _amount_string(value: Any) -> Any:
    """A JSON number would pass through pydantic as a Decimal; an operator's amount is a decimal string only."""
    if not isinstance(value, str) or not adjustments.AMOUNT_RE.fullmatch(value):
        raise ValueError(f"must be {AMOUNT_RULE}")
    return value


AdjustmentAmount = Annotated[
    Decimal,
    BeforeValidator(_amount_string),
    WithJsonSchema({"type": "string", "pattern": AMOUNT_PATTERN, "examples": ["25.00", "-7.50"]}),
]


class AdjustmentIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"userId": "u-42", "amount": "-7.50", "reason": "Chargeback on deposit 1234", "allowDebt": False}
            ]
        },
    )

    userId: str = Field(min_length=1, max_length=MAX_USER_ID_LENGTH, pattern=USER_ID_PATTERN)
    amount: AdjustmentAmount = Field(description="Credited when positive, taken when negative")
    reason: str = Field(
        min_length=1, max_length=MAX_REASON_LENGTH, pattern=TEXT_PATTERN, description="Why; kept with the entry"
    )
    allowDebt: StrictBool = Field(
        default=False, description="Post a charge even when it leaves the available balance below zero"
    )


@router.post(
    "/adjustments",
    status_code=201,
    response_model=LedgerEntryView,
    summary="Adjust a user's balance: one ledger entry of kind `adjustment`, with its reason and X-Actor",
    responses={
        404: error("USER_NOT_FOUND: the platform has not registered the user"),
        409: error(
            "DEBT_NOT_ALLOWED: the charge would leave the available balance below zero (send allowDebt: true if the "
            "debt is intended); IDEMPOTENCY_KEY_REUSED: the key came with another request; IDEMPOTENCY_KEY_IN_USE: a "
            "request with the key is still running (Retry-After)",
            retry_after=True,
        ),
        422: VALIDATION,
    },
)
async def create_adjustment(
    body: AdjustmentIn, actor: ActorHeader, resources: ResourcesDep, key: IdempotencyKeyHeader = None
) -> JSONResponse:
    adjustment = adjustments.Adjustment(
        user_id=body.userId, amount=body.amount, reason=body.reason, actor=actor, allow_debt=body.allowDebt
    )
    adjusted = await adjustments.adjust(resources.database, adjustment, key=key, now=resources.clock())
    headers = {"Idempotent-Replayed": "true"} if adjusted.replayed else None
    return JSONResponse(adjusted.entry, status_code=201, headers=headers)


@router.get("/exposure", summary="What the merchant has at risk: preCredit in hold, and users' debts")
async def get_exposure(resources: ResourcesDep) -> ExposureView:
    return await admin.exposure_now(resources.database, currency=resources.settings.currency)


@router.get(
    "/users/{user_id}",
    summary="A user's profile, balance, newest trades and newest ledger entries",
    responses={404: error("USER_NOT_FOUND: the platform has not registered the user"), 422: VALIDATION},
)
async def get_user(user_id: UserIdPath, resources: ResourcesDep) -> UserOverview:
    return await admin.user_overview(resources.database, user_id, currency=resources.settings.currency)
