"""`GET /v1/inventory` and `GET /v1/market`: AssetPay's catalog for the frontend, with prices as decimal strings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from assetpay_merchant.api.auth import UNAUTHORIZED, UserId
from assetpay_merchant.api.deps import ResourcesDep
from assetpay_merchant.api.schemas import UPSTREAM, MoneyQuery, Responses, error
from assetpay_merchant.core.vocabulary import GameId, MarketSort
from assetpay_merchant.services.catalog import InventoryQuery, MarketQuery
from assetpay_merchant.services.views import Money

router = APIRouter(prefix="/v1", tags=["catalog"], responses={401: UNAUTHORIZED})


class ItemOut(BaseModel):
    """An inventory item or market listing. `price` is the offer price: what a deposit must quote and what a
    withdrawal costs. Fields AssetPay adds beyond these come along unchanged."""

    model_config = {"extra": "allow"}

    id: str
    itemId: str | None = None
    assetId: str | None = None
    name: str | None = None
    marketHashName: str | None = None
    iconUrl: str | None = None
    price: Money | None = None
    marketPrice: Money | None = None
    amount: str | None = None
    tradable: bool | None = None
    accepted: bool | None = Field(default=None, description="Accepted for deposit")
    delivery: str | None = None


class InventoryOut(BaseModel):
    items: list[ItemOut]
    count: int
    collateral: Money = Field(description="Instant credit available now (USD): show it before the user picks items")
    updatedAt: datetime | None


class MarketOut(BaseModel):
    items: list[ItemOut]
    count: int


CATALOG_ERRORS: Responses = {
    **UPSTREAM,
    429: error(
        "TOO_MANY_REQUESTS: the user's own allowance of these requests is used up; ASSETPAY_QUOTA_EXHAUSTED: the "
        "merchant's AssetPay quota, shared by all its users, is; RATE_LIMITED: AssetPay's limit",
        retry_after=True,
    ),
}

Game = Annotated[GameId, Query(description="730 (CS2) or 252490 (Rust)")]
Search = Annotated[str | None, Query(max_length=100)]
Price = Annotated[MoneyQuery | None, Query(description="A decimal string such as 10.75")]
Page = Annotated[int, Query(ge=1, le=10_000)]


@router.get(
    "/inventory",
    response_model=InventoryOut,
    summary="The user's Steam inventory with prices and instant-credit estimate",
    responses=CATALOG_ERRORS,
)
async def inventory(
    user_id: UserId,
    resources: ResourcesDep,
    game: Game = GameId.CS2,
    refresh: Annotated[bool, Query(description="Skip AssetPay's 15-minute inventory cache")] = False,
    search: Search = None,
    sort: Annotated[str | None, Query(max_length=32)] = None,
    minPrice: Price = None,
    maxPrice: Price = None,
    page: Page = 1,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    query = InventoryQuery(game, refresh, search, sort, minPrice, maxPrice, page, limit)
    return Response(await resources.catalog.inventory(user_id, query), media_type="application/json")


@router.get(
    "/market",
    summary="Market listings the user can buy",
    description="Identical queries are answered from a cache for a few seconds (MARKET_CACHE_TTL_SECONDS).",
    response_model=MarketOut,
    responses=CATALOG_ERRORS,
)
async def market(
    user_id: UserId,
    resources: ResourcesDep,
    game: Game = GameId.CS2,
    search: Search = None,
    sort: Annotated[MarketSort | None, Query()] = None,
    minPrice: Price = None,
    maxPrice: Price = None,
    page: Page = 1,
    perPage: Annotated[int, Query(ge=1, le=100)] = 50,
) -> Response:
    query = MarketQuery(game, search, sort, minPrice, maxPrice, page, perPage)
    return Response(await resources.catalog.market(user_id, query), media_type="application/json")
