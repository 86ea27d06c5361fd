"""AssetPay's catalog for the frontend: a user's inventory and the market, prices as decimal strings.

Identical market queries share one cached upstream answer for a few seconds (AssetPay's market is the same for
every user, and unverified merchants get 30 market requests a minute); concurrent identical inventory requests of
one user share one upstream call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from assetpay_merchant.core.money import format_money
from assetpay_merchant.core.vocabulary import GameId, MarketSort
from assetpay_merchant.gateway import AssetPayClient, Inventory, Item
from assetpay_merchant.services.cache import SingleFlight, TTLCache
from assetpay_merchant.services.users import identity
from assetpay_merchant.store.database import Database


@dataclass(frozen=True, slots=True)
class InventoryQuery:
    game: GameId = GameId.CS2
    refresh: bool = False
    search: str | None = None
    sort: str | None = None
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    page: int = 1
    limit: int = 50


@dataclass(frozen=True, slots=True)
class MarketQuery:
    game: GameId = GameId.CS2
    search: str | None = None
    sort: MarketSort | None = None
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    page: int = 1
    per_page: int = 50


@dataclass(slots=True)
class Catalog:
    database: Database
    assetpay: AssetPayClient
    market_cache: TTLCache[bytes]
    inventory_flights: SingleFlight[Inventory] = field(default_factory=SingleFlight)

    async def inventory(self, user_id: str, query: InventoryQuery) -> bytes:
        """The user's inventory page as JSON: `{items, count, collateral, updatedAt}`."""
        user = await identity(self.database, user_id)

        async def load() -> Inventory:
            return await self.assetpay.inventory(
                user,
                game=int(query.game),
                refresh=query.refresh,
                search=query.search,
                sort=query.sort,
                min_price=query.min_price,
                max_price=query.max_price,
                page=query.page,
                limit=query.limit,
            )

        result = await self.inventory_flights.run((user_id, query), load)
        return render(
            {
                "items": [render_item(item) for item in result.items],
                "count": result.count,
                "collateral": format_money(result.collateral),
                "updatedAt": result.updated_at.isoformat().replace("+00:00", "Z") if result.updated_at else None,
            }
        )

    async def market(self, user_id: str, query: MarketQuery) -> bytes:
        """A market page as JSON: `{items, count}`; a cache hit needs no database read at all."""
        cached = self.market_cache.peek(query)
        if cached is not None:
            return cached
        user = await identity(self.database, user_id)  # a miss asks AssetPay with this user's client token

        async def load() -> bytes:
            page = await self.assetpay.market(
                user,
                game=int(query.game),
                search=query.search,
                sort=query.sort.value if query.sort else None,
                min_price=query.min_price,
                max_price=query.max_price,
                page=query.page,
                per_page=query.per_page,
            )
            # Kept rendered: a cache hit costs no conversion at all.
            return render({"items": [render_item(item) for item in page.items], "count": page.count})

        body, _ = await self.market_cache.get(query, load)
        return body


def render_item(item: Item) -> dict[str, Any]:
    """An item as the API documents it, built as plain data: a page of 50 items is rendered on every uncached
    request, and building models for it would cost more than the rest of the request."""
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
