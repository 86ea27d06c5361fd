"""`PUT /v1/users/{user_id}` (the merchant platform), `GET /v1/me` and `POST /v1/client-token` (the end user)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from assetpay_merchant.api.auth import ADMIN_UNAUTHORIZED, FORBIDDEN, UNAUTHORIZED, AdminOnly, UserId
from assetpay_merchant.api.deps import ResourcesDep, SessionDep
from assetpay_merchant.api.ledger import balance_of
from assetpay_merchant.api.routing import ExactJSONRoute
from assetpay_merchant.api.schemas import DATABASE, NO_BODY, UPSTREAM, VALIDATION, WagerIn, error
from assetpay_merchant.core.vocabulary import MAX_USER_ID_LENGTH, STEAM_ID_PATTERN, TRADE_URL_PATTERN, USER_ID_PATTERN
from assetpay_merchant.services import users
from assetpay_merchant.services.views import BalanceView, UserView

router = APIRouter(prefix="/v1", tags=["users"], route_class=ExactJSONRoute, responses={503: DATABASE})

MAX_KYC_LEVEL = 2**31 - 1
"""The largest kycLevel we keep (a 32-bit integer, as AssetPay's and most platforms' stores hold it)."""


class ClientData(BaseModel):
    """What AssetPay's risk model may know of the user; it must come from the platform, never the browser."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    total_wager: WagerIn | None = Field(default=None, alias="totalWager")
    registration_date: datetime | None = Field(default=None, alias="registrationDate")
    kyc_hash: str | None = Field(default=None, alias="kycHash", max_length=256)
    kyc_level: int | None = Field(default=None, ge=0, le=MAX_KYC_LEVEL, alias="kycLevel")
    fiat_deposits: bool | None = Field(default=None, alias="fiatDeposits")
    crypto_deposits: bool | None = Field(default=None, alias="cryptoDeposits")


class UserIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "steamId": "76561198000000001",
                    "tradeUrl": "https://steamcommunity.com/tradeoffer/new/?partner=39734273&token=AbCdEf12",
                    "clientData": {"totalWager": 1250.5, "kycLevel": 1, "fiatDeposits": True},
                }
            ]
        },
    )

    steamId: str = Field(pattern=STEAM_ID_PATTERN, description="SteamID64 of the user's Steam account")
    tradeUrl: str = Field(pattern=TRADE_URL_PATTERN, description="The user's Steam trade offer URL")
    clientData: ClientData | None = None


class MeOut(BaseModel):
    id: str
    steamId: str
    tradeUrl: str
    balance: BalanceView
    createdAt: datetime


UserIdPath = Annotated[str, Path(min_length=1, max_length=MAX_USER_ID_LENGTH, pattern=USER_ID_PATTERN)]


@router.put(
    "/users/{user_id}",
    dependencies=[AdminOnly],
    summary="Create or update a user (merchant platform, X-Admin-Key)",
    responses={
        200: {"description": "Updated"},
        201: {"model": UserView, "description": "Created"},
        401: ADMIN_UNAUTHORIZED,
        403: FORBIDDEN,
        409: error("STEAM_ID_TAKEN: the Steam id belongs to another user"),
        422: VALIDATION,
    },
)
async def put_user(user_id: UserIdPath, body: UserIn, resources: ResourcesDep, response: Response) -> UserView:
    client_data = (
        body.clientData.model_dump(mode="json", by_alias=True, exclude_unset=True) if body.clientData else None
    )
    registered = await users.register(
        resources.database, user_id=user_id, steam_id=body.steamId, trade_url=body.tradeUrl, client_data=client_data
    )
    response.status_code = status.HTTP_201_CREATED if registered.created else status.HTTP_200_OK
    return UserView.of(registered.user)


@router.get(
    "/me",
    summary="The signed-in user's profile and balance",
    responses={401: UNAUTHORIZED, 404: error("USER_NOT_FOUND: the platform has not registered the user")},
)
async def me(user_id: UserId, session: SessionDep, resources: ResourcesDep) -> MeOut:
    user = await users.profile(resources.database, user_id)
    return MeOut(
        id=user.id,
        steamId=user.steam_id,
        tradeUrl=user.trade_url,
        balance=await balance_of(session, user_id, resources.settings.currency),
        createdAt=user.created_at,
    )


class ClientTokenOut(BaseModel):
    token: str = Field(description="AssetPay client token for this user (Authorization: Bearer on /client routes)")
    expiresAt: datetime


@router.post(
    "/client-token",
    summary="An AssetPay client token for the frontend",
    responses={
        **UPSTREAM,
        401: UNAUTHORIZED,
        404: error("USER_NOT_FOUND: the platform has not registered the user"),
        422: error(
            "VALIDATION_FAILED: a body other than none or `{}` (`fields.body`), or AssetPay refused the stored "
            "profile (`fields`); INVALID_TRADE_URL: the profile's trade URL"
        ),
    },
    openapi_extra={"requestBody": NO_BODY},
)
async def client_token(user_id: UserId, resources: ResourcesDep) -> ClientTokenOut:
    token = await resources.assetpay.client_token(await users.identity(resources.database, user_id))
    return ClientTokenOut(token=token.token, expiresAt=token.expires_at)
