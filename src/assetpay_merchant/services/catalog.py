"""AssetPay's catalog for the frontend: a user's inventory and the market, prices as decimal strings.

Identical market queries share one cached upstream answer for a few seconds (AssetPay's market is the same for
every user, and unverified merchants get 30 market requests a minute); concurrent identical inventory requests of
one user share one upstream call (an inventory is one user's, so there is nothing to share across users). Every
inventory request and every market miss counts against the user's allowance (services/ratelimits.py).

With the realtime feed on, `market_changed` keeps cached pages true to what the feed reports
(docs/realtime-feed.md): no cached page shows a listing as it was before a change the feed reported. A page that
shows the listing gets it patched in place when the change cannot move it (on that page or to another), and is
dropped (refetched on the next request) otherwise; a page that does not show it is left to its TTL (a new or newly
cheaper listing appears within the TTL, as without the feed). `sync` drops a game's pages, or all of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from assetpay_merchant.core.errors import NotFound
from assetpay_merchant.core.money import format_money
from assetpay_merchant.core.vocabulary import GameId, MarketSort
from assetpay_merchant.gateway import AssetPayClient, ClientIdentity, Inventory, Item
from assetpay_merchant.gateway.client import RouteClass
from assetpay_merchant.gateway.feed import MarketEvent, MarketItemChanged, MarketItemRemoved, MarketSync
from assetpay_merchant.observability import MARKET_CACHE_FEED_UPDATES
from assetpay_merchant.services.cache import SingleFlight, TTLCache
from assetpay_merchant.services.ratelimits import RateLimits, UserScope
from assetpay_merchant.services.users import USER_NOT_FOUND, identity, identity_of
from assetpay_merchant.store.database import Database

log = logging.getLogger(__name__)

ROUTE_OF = {UserScope.INVENTORY: RouteClass.INVENTORY, UserScope.MARKET: RouteClass.MARKET}
"""The AssetPay route class a catalog request of each scope leads to."""


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


@dataclass(frozen=True)
class CachedPage:
    """A market page as AssetPay answered it (the items, to patch them when the feed reports a change) and as we
    serve it (`body`, rendered once)."""

    items: tuple[Item, ...]
    rendered: tuple[dict[str, Any], ...]
    count: int
    body: bytes

    @classmethod
    def of(cls, items: tuple[Item, ...], count: int, rendered: tuple[dict[str, Any], ...] | None = None) -> CachedPage:
        shown = rendered if rendered is not None else tuple(render_item(item) for item in items)
        return cls(items, shown, count, render({"items": list(shown), "count": count}))

    @cached_property
    def ids(self) -> frozenset[str]:
        """Every listing `id` and catalog `itemId` on the page: worked out when the feed first asks, since most
        pages leave the cache before any change names one of their listings."""
        return frozenset({item.id for item in self.items} | {item.item_id for item in self.items if item.item_id})

    def position(self, listing_id: str) -> int | None:
        return next((n for n, item in enumerate(self.items) if item.id == listing_id), None)

    def replaced(self, index: int, item: Item) -> CachedPage:
        items = (*self.items[:index], item, *self.items[index + 1 :])
        rendered = (*self.rendered[:index], render_item(item), *self.rendered[index + 1 :])
        return CachedPage.of(items, self.count, rendered)


@dataclass(slots=True)
class Catalog:
    database: Database
    assetpay: AssetPayClient
    market_cache: TTLCache[CachedPage]
    inventory_flights: SingleFlight[Inventory] = field(default_factory=SingleFlight)
    limits: RateLimits | None = None
    """Each user's allowance of inventory requests and market misses (None: unlimited); the same object is the
    AssetPay client's policy, whose merchant token a miss takes in the same statement."""

    async def inventory(self, user_id: str, query: InventoryQuery) -> bytes:
        """The user's inventory page as JSON: `{items, count, collateral, updatedAt}`."""
        key = (user_id, query)
        user, prepaid = await self._admitted(user_id, UserScope.INVENTORY, self.inventory_flights.running(key))

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
                prepaid=prepaid,
            )

        result = await self.inventory_flights.run(key, load)
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
            return cached.body
        # Checked before joining a load in flight: a load that one user's allowance refused must not fail the
        # other users waiting for it. A miss asks AssetPay with this user's client token.
        user, prepaid = await self._admitted(user_id, UserScope.MARKET, self.market_cache.loading(query))

        async def load() -> CachedPage:
            page = await self.assetpay.market(
                user,
                game=int(query.game),
                search=query.search,
                sort=query.sort.value if query.sort else None,
                min_price=query.min_price,
                max_price=query.max_price,
                page=query.page,
                per_page=query.per_page,
                prepaid=prepaid,
            )
            # Kept rendered: a cache hit costs no conversion at all.
            return CachedPage.of(tuple(page.items), page.count)

        page, _ = await self.market_cache.get(query, load)
        return page.body

    async def _admitted(self, user_id: str, scope: UserScope, sharing: bool) -> tuple[ClientIdentity, bool]:
        """The user as AssetPay should see them, once their allowance for `scope` has taken this request; and
        whether the merchant's token for the AssetPay request was taken too (`prepaid`).

        One statement does all three (services/ratelimits.py `admit`), so a request waits for one round trip to the
        database before AssetPay is asked, not two. `sharing`: a load of the same answer is under way, which this
        request will most likely join, so no merchant token is taken for it (the load in flight has its own). When
        such a load ends between the statement and joining, this request's load asks the budget when it sends;
        when one starts in between, the token taken is spent without a request (the budget errs on the safe side).
        """
        if self.limits is None:
            return await identity(self.database, user_id), False
        route = None if sharing else ROUTE_OF[scope]
        user = await self.limits.admit(user_id, scope, route)
        if user is None:
            raise NotFound(USER_NOT_FOUND, key="USER_NOT_FOUND")
        return identity_of(user), route is not None and self.limits.rate(route) is not None

    def market_changed(self, event: MarketEvent) -> None:
        """Bring the cached market pages in line with what the realtime feed reports (module docstring)."""
        if isinstance(event, MarketSync):
            change = _drop_game(event.game)
        elif isinstance(event, MarketItemRemoved):
            change = _drop_showing(event.game, event.item_id)
        else:
            change = _patch_or_drop(event)
        patched, dropped = self.market_cache.amend(change)
        if patched:
            MARKET_CACHE_FEED_UPDATES.labels("patched").inc(patched)
        if dropped:
            MARKET_CACHE_FEED_UPDATES.labels("dropped").inc(dropped)


# -- the feed's changes to cached pages ------------------------------------------------------------------------------

PageChange = Callable[[Hashable, CachedPage], CachedPage | None]

PRICE_SORTS = {MarketSort.PRICE_ASC: 1, MarketSort.PRICE_DESC: -1}
DESCRIPTIVE = ("id", "item_id", "name", "market_hash_name")
"""What a search or a name sort may go by (a change of these drops the pages showing the listing)."""


def _in_game(query: Hashable, game: int | None) -> bool:
    return isinstance(query, MarketQuery) and (game is None or int(query.game) == game)


def _drop_game(game: int | None) -> PageChange:
    """`sync`: every page of the game (None: of every game) is refetched on its next request."""
    return lambda query, page: None if _in_game(query, game) else page


def _drop_showing(game: int | None, item_id: str) -> PageChange:
    """`remove`: a page showing the listing is refetched (its count and what follows shifted); the feed names it by
    `itemId`, matched against both the listing id and the catalog item id, so no page keeps showing it."""
    return lambda query, page: None if _in_game(query, game) and item_id in page.ids else page


def _patch_or_drop(event: MarketItemChanged) -> PageChange:
    """`upsert` / `patch`: a page showing the listing gets it patched in place when the change cannot move it, and
    is dropped otherwise."""
    listing_id, parent_id = event.listing_id, event.parent_id

    def change(query: Hashable, page: CachedPage) -> CachedPage | None:
        if not _in_game(query, event.game):
            return page
        assert isinstance(query, MarketQuery)
        if listing_id is None:  # only the catalog item is named: which of its listings changed is unknown
            return None if parent_id is not None and parent_id in page.ids else page
        if listing_id not in page.ids:
            return page
        index = page.position(listing_id)
        if index is None:
            return None  # the id is a catalog item id on this page: its listings may have changed
        before = page.items[index]
        after = _changed_item(before, event)
        try:
            if after is None or not _stays(query, page, index, before, after):
                return None
            return page.replaced(index, after)
        except Exception:  # whatever we cannot work out, AssetPay can: the page is refetched
            log.exception("market page %s: the feed's change to %s could not be applied", query, listing_id)
            return None

    return change


def _changed_item(before: Item, event: MarketItemChanged) -> Item | None:
    """The listing after the change (None: it does not make a valid item)."""
    fields = (
        event.item
        if event.kind == "upsert"
        else _merged(before.model_dump(by_alias=True, exclude_unset=True), event.item)
    )
    try:
        return Item.model_validate(fields)
    except ValidationError:
        return None


def _merged(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`patch` laid over `base`, objects merged field by field (a patch of `offer.price` keeps `offer.delivery`)."""
    merged = dict(base)
    for name, value in patch.items():
        current = merged.get(name)
        merged[name] = _merged(current, value) if isinstance(current, Mapping) and isinstance(value, Mapping) else value
    return merged


def _stays(query: MarketQuery, page: CachedPage, index: int, before: Item, after: Item) -> bool:
    """Whether the changed listing still belongs exactly where the page shows it, under the page's query."""
    if any(getattr(before, name) != getattr(after, name) for name in DESCRIPTIVE):
        return False  # what a search or a name sort goes by changed
    if before.price == after.price:
        return True
    price = after.price
    if price is None:
        return False
    if (query.min_price is not None and price < query.min_price) or (
        query.max_price is not None and price > query.max_price
    ):
        return False
    direction = PRICE_SORTS.get(query.sort) if query.sort is not None else None
    if direction is None:
        return True  # relevance and name sorts do not go by price
    if before.price is None:
        return False
    key = price * direction
    if index > 0:
        neighbour = page.items[index - 1].price
        if neighbour is None or neighbour * direction > key:
            return False
    elif query.page > 1 and key < before.price * direction:
        return False  # it may now belong on the page before
    if index < len(page.items) - 1:
        neighbour = page.items[index + 1].price
        if neighbour is None or neighbour * direction < key:
            return False
    elif query.page * query.per_page < page.count and key > before.price * direction:
        return False  # it may now belong on the page after
    return True


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
