"""`GET /v1/inventory` and `GET /v1/market`: AssetPay's catalog for the frontend, with prices as decimal strings.

Identical market queries share one cached upstream answer for a few seconds; concurrent identical inventory
requests of one user share one upstream call.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from assetpay_merchant.auth import UserId
from assetpay_merchant.deps import ResourcesDep
from assetpay_merchant.gateway import Inventory, Item
from assetpay_merchant.money import Money, format_money
from assetpay_merchant.trades.trading import identity

router = APIRouter(prefix="/v1", tags=["catalog"])


class GameId(IntEnum):
    CS2 = 730
    RUST = 252490


class MarketSort(StrEnum):
    RELEVANCE = "relevance"
    PRICE_ASC = "priceAsc"
    PRICE_DESC = "priceDesc"
    NAME_ASC = "nameAsc"
    NAME_DESC = "nameDesc"


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


def render_item(item: Item) -> dict[str, Any]:
    """An item as `ItemOut` documents it, built as plain data: a page of 50 items is rendered on every
    uncached request, and building models for it would cost more than the rest of the request."""
    offer = item.offer
    known: dict[str, Any] = {
        "id": item.id,
        "itemId": item.item_id,
        "assetId": item.asset_id,
        "name": item.name,
        "marketHashName": item.market_hash_name,
        "iconUrl": item.icon_url,
        "price": format_money(offer.price) if offer else None,
        "marketPrice": format_money(item.market_price) if item.market_price is not None else None,
        "amount": format(item.amount, "f") if item.amount is not None else None,
        "tradable": item.tradable,
        "accepted": offer.accepted if offer else None,
        "delivery": offer.delivery if offer else None,
    }
    for name, value in (item.model_extra or {}).items():
        if name not in known and name != "offer":
            known[name] = _plain(value)
    return known


def json_response(body: dict[str, Any]) -> Response:
    return Response(render(body), media_type="application/json")


def render(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _plain(value: Any) -> Any:
    """Extra fields keep their shape; numbers in them become decimal strings (we never emit floats)."""
    if isinstance(value, Decimal):
        return format_money(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class InventoryOut(BaseModel):
    items: list[ItemOut]
    count: int
    collateral: Money = Field(description="Instant credit available now (USD): show it before the user picks items")
    updatedAt: datetime | None


class MarketOut(BaseModel):
    items: list[ItemOut]
    count: int


Game = Annotated[GameId, Query(description="730 (CS2) or 252490 (Rust)")]
Search = Annotated[str | None, Query(max_length=100)]
Price = Annotated[Decimal | None, Query(ge=0, max_digits=24, decimal_places=8)]
Page = Annotated[int, Query(ge=1, le=10_000)]

UPSTREAM_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "The user is not registered (USER_NOT_FOUND)"},
    429: {"description": "Rate-limited by AssetPay (Retry-After)"},
    502: {"description": "AssetPay failed or gave an unreadable answer"},
    503: {"description": "AssetPay or Steam unavailable (Retry-After when known)"},
    504: {"description": "AssetPay did not answer in time"},
}


@router.get(
    "/inventory",
    response_model=InventoryOut,
    summary="The user's Steam inventory with prices and instant-credit estimate",
    responses=UPSTREAM_ERRORS,
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
    user = await identity(resources.engine, user_id)
    key = (user_id, int(game), refresh, search, sort, minPrice, maxPrice, page, limit)

    async def load() -> Inventory:
        return await resources.assetpay.inventory(
            user,
            game=int(game),
            refresh=refresh,
            search=search,
            sort=sort,
            min_price=minPrice,
            max_price=maxPrice,
            page=page,
            limit=limit,
        )

    result = await resources.inventory_flights.run(key, load)
    return json_response(
        {
            "items": [render_item(item) for item in result.items],
            "count": result.count,
            "collateral": format_money(result.collateral),
            "updatedAt": result.updated_at.isoformat().replace("+00:00", "Z") if result.updated_at else None,
        }
    )


@router.get(
    "/market",
    summary="Market listings the user can buy",
    description="Identical queries are answered from a cache for a few seconds (MARKET_CACHE_TTL_SECONDS).",
    response_model=MarketOut,
    responses=UPSTREAM_ERRORS,
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
    key = (int(game), search, sort, minPrice, maxPrice, page, perPage)
    cached = resources.market_cache.peek(key)
    if cached is not None:  # AssetPay's market is the same for every signed-in user: no database read for a hit
        return Response(cached, media_type="application/json")
    user = await identity(resources.engine, user_id)  # a miss asks AssetPay with this user's client token

    async def load() -> bytes:
        page_ = await resources.assetpay.market(
            user,
            game=int(game),
            search=search,
            sort=sort.value if sort else None,
            min_price=minPrice,
            max_price=maxPrice,
            page=page,
            per_page=perPage,
        )
        # Kept rendered: a cache hit costs no conversion at all.
        return render({"items": [render_item(item) for item in page_.items], "count": page_.count})

    body, _ = await resources.market_cache.get(key, load)
    return Response(body, media_type="application/json")
