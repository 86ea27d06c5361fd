"""The rules behind the feed's market-cache updates, without a network: `TTLCache.amend` (entries and answers still
loading) and which change patches a cached page in place and which drops it (docs/realtime-feed.md)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from assetpay_merchant.core.vocabulary import GameId, MarketSort
from assetpay_merchant.gateway import Item
from assetpay_merchant.gateway.feed import (
    FeedPayloadError,
    MarketItemChanged,
    MarketItemRemoved,
    MarketSync,
    parse_funding,
    parse_market,
    parse_trade,
)
from assetpay_merchant.services.cache import TTLCache
from assetpay_merchant.services.catalog import CachedPage, Catalog, MarketQuery

# -- TTLCache.amend -------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def value(text: str) -> str:
    return text


async def test_amend_rewrites_or_drops_fresh_entries_and_forgets_expired_ones() -> None:
    clock = Clock()
    cache: TTLCache[str] = TTLCache(10, clock=clock)
    for key in ("a", "b", "c"):
        await cache.get(key, lambda key=key: value(key))
    clock.now = 5
    assert cache.amend(lambda key, v: v.upper() if key == "a" else None if key == "b" else v) == (1, 1)
    assert (cache.peek("a"), cache.peek("b"), cache.peek("c")) == ("A", None, "c")
    clock.now = 10.5
    assert cache.amend(lambda key, v: None) == (0, 0)  # expired: gone without counting
    assert cache.peek("a") is None


async def test_an_answer_still_loading_gets_the_amendments_made_meanwhile() -> None:
    cache: TTLCache[str] = TTLCache(60)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "old price"

    loading = asyncio.create_task(cache.get("page", slow))
    await started.wait()  # AssetPay is being asked
    cache.amend(lambda key, v: "new price")  # the feed reports a change while AssetPay is answering
    release.set()
    assert await loading == ("new price", False)
    assert cache.peek("page") == "new price"


async def test_an_answer_still_loading_is_not_kept_when_an_amendment_drops_it() -> None:
    cache: TTLCache[str] = TTLCache(60)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "before the news"

    loading = asyncio.create_task(cache.get("page", slow))
    await started.wait()  # AssetPay is being asked
    cache.clear()
    release.set()
    assert await loading == ("before the news", False)  # those who asked before the news get the answer
    assert cache.peek("page") is None  # but it is not kept


async def test_an_answer_that_missed_more_amendments_than_are_kept_is_not_kept() -> None:
    cache: TTLCache[str] = TTLCache(60, max_pending_amendments=2)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "v"

    loading = asyncio.create_task(cache.get("page", slow))
    await started.wait()  # AssetPay is being asked
    for _ in range(3):
        cache.amend(lambda key, v: v)
    release.set()
    await loading
    assert cache.peek("page") is None


async def test_amendments_before_a_load_starts_do_not_apply_to_it() -> None:
    cache: TTLCache[str] = TTLCache(60)
    cache.amend(lambda key, v: None)
    assert await cache.get("page", lambda: value("fresh")) == ("fresh", False)
    assert cache.peek("page") == "fresh"


# -- which changes patch a page and which drop it -------------------------------------------------------------------


def listing(n: int, price: str, **extra: Any) -> Item:
    return Item.model_validate(
        {"id": f"l{n}", "itemId": f"p{n}", "name": f"Skin {n}", "offer": {"price": Decimal(price)}, **extra}
    )


async def cached(catalog: Catalog, query: MarketQuery, *prices: str, count: int | None = None) -> None:
    items = tuple(listing(n, price) for n, price in enumerate(prices))

    async def load() -> CachedPage:
        return CachedPage.of(items, len(items) if count is None else count)

    await catalog.market_cache.get(query, load)


def catalog() -> Catalog:
    return Catalog(None, None, TTLCache(60))  # type: ignore[arg-type]


def price_patch(n: int, price: str, game: int | None = 730) -> MarketItemChanged:
    return MarketItemChanged("patch", game, {"id": f"l{n}", "offer": {"price": Decimal(price)}})


def prices(catalog: Catalog, query: MarketQuery) -> list[str] | None:
    page = catalog.market_cache.peek(query)
    return None if page is None else [str(item.price) for item in page.items]


@pytest.mark.parametrize(
    ("sort", "page", "count", "n", "price", "kept"),
    [
        (MarketSort.PRICE_ASC, 1, 3, 1, "2.5", True),  # between its neighbours
        (MarketSort.PRICE_ASC, 1, 3, 1, "3.5", False),  # past its right neighbour
        (MarketSort.PRICE_ASC, 1, 3, 1, "0.5", False),  # before its left neighbour
        (MarketSort.PRICE_ASC, 1, 3, 0, "0.5", True),  # first of the first page: stays first
        (MarketSort.PRICE_ASC, 2, 9, 0, "0.5", False),  # first of page 2: may belong on page 1
        (MarketSort.PRICE_ASC, 1, 3, 2, "9", True),  # last of the last page
        (MarketSort.PRICE_ASC, 1, 9, 2, "9", False),  # last, with more pages: may belong on the next
        (MarketSort.PRICE_ASC, 1, 3, 1, "3", True),  # a tie with a neighbour is still in order
        (MarketSort.PRICE_DESC, 1, 3, 1, "2.5", False),  # the page is 1, 2, 3: not in descending order at all
        (MarketSort.NAME_ASC, 1, 3, 1, "99", True),  # a name sort does not go by price
        (MarketSort.RELEVANCE, 1, 3, 1, "99", True),
        (None, 1, 3, 1, "99", True),
    ],
)
async def test_a_price_change_patches_the_page_only_where_the_listing_still_belongs(
    sort: MarketSort | None, page: int, count: int, n: int, price: str, kept: bool
) -> None:
    shop = catalog()
    query = MarketQuery(sort=sort, page=page, per_page=3)
    await cached(shop, query, "1", "2", "3", count=count)
    shop.market_changed(price_patch(n, price))
    expected = ["1", "2", "3"]
    expected[n] = price
    assert prices(shop, query) == (expected if kept else None)


async def test_descending_pages_are_checked_the_other_way_round() -> None:
    shop = catalog()
    query = MarketQuery(sort=MarketSort.PRICE_DESC, per_page=3)
    await cached(shop, query, "3", "2", "1")
    shop.market_changed(price_patch(1, "2.5"))
    assert prices(shop, query) == ["3", "2.5", "1"]
    shop.market_changed(price_patch(1, "3.5"))
    assert prices(shop, query) is None


async def test_a_price_filter_keeps_the_page_only_while_the_listing_is_inside_it() -> None:
    shop = catalog()
    query = MarketQuery(min_price=Decimal("1"), max_price=Decimal("5"))
    await cached(shop, query, "1", "2", "3")
    shop.market_changed(price_patch(1, "4.99"))
    assert prices(shop, query) == ["1", "4.99", "3"]
    shop.market_changed(price_patch(0, "0.99"))
    assert prices(shop, query) is None


async def test_a_change_of_what_search_and_name_sorts_go_by_drops_the_page() -> None:
    shop = catalog()
    query = MarketQuery(search="skin")
    await cached(shop, query, "1", "2")
    shop.market_changed(MarketItemChanged("patch", 730, {"id": "l0", "tradable": False, "offer": {"accepted": True}}))
    page = shop.market_cache.peek(query)
    assert page is not None
    assert page.items[0].tradable is False
    assert page.items[0].price == Decimal("1")
    shop.market_changed(MarketItemChanged("patch", 730, {"id": "l0", "name": "Renamed"}))
    assert shop.market_cache.peek(query) is None


async def test_a_change_that_makes_no_valid_listing_drops_the_page() -> None:
    shop = catalog()
    await cached(shop, MarketQuery(), "1")
    shop.market_changed(MarketItemChanged("patch", 730, {"id": "l0", "offer": {"price": "free"}}))
    assert shop.market_cache.peek(MarketQuery()) is None


async def test_a_change_naming_only_the_catalog_item_drops_the_pages_showing_its_listings() -> None:
    shop = catalog()
    await cached(shop, MarketQuery(), "1", "2")
    shop.market_changed(MarketItemChanged("patch", 730, {"itemId": "p9", "offer": {"price": Decimal(1)}}))
    assert shop.market_cache.peek(MarketQuery()) is not None
    shop.market_changed(MarketItemChanged("patch", 730, {"itemId": "p1", "offer": {"price": Decimal(1)}}))
    assert shop.market_cache.peek(MarketQuery()) is None


async def test_a_remove_matches_the_listing_or_its_catalog_item() -> None:
    shop = catalog()
    await cached(shop, MarketQuery(search="a"), "1")
    await cached(shop, MarketQuery(search="b"), "1", "2")
    shop.market_changed(MarketItemRemoved(730, "p1"))
    assert shop.market_cache.peek(MarketQuery(search="a")) is not None
    assert shop.market_cache.peek(MarketQuery(search="b")) is None
    shop.market_changed(MarketItemRemoved(None, "l0"))  # no game named: every game's pages
    assert shop.market_cache.peek(MarketQuery(search="a")) is None


async def test_sync_without_a_game_drops_every_page() -> None:
    shop = catalog()
    await cached(shop, MarketQuery(game=GameId.CS2), "1")
    await cached(shop, MarketQuery(game=GameId.RUST), "1")
    shop.market_changed(MarketSync("feed", 252490))
    assert shop.market_cache.peek(MarketQuery(game=GameId.CS2)) is not None
    assert shop.market_cache.peek(MarketQuery(game=GameId.RUST)) is None
    shop.market_changed(MarketSync("subscribe"))
    assert shop.market_cache.peek(MarketQuery(game=GameId.CS2)) is None


async def test_a_patched_page_is_served_as_it_would_be_rendered_fresh() -> None:
    shop = catalog()
    await cached(shop, MarketQuery(), "1", "2")
    shop.market_changed(price_patch(1, "2.75"))
    page = shop.market_cache.peek(MarketQuery())
    assert page is not None
    assert page.body == CachedPage.of((listing(0, "1"), listing(1, "2.75")), 2).body


# -- the feed's wire shapes -----------------------------------------------------------------------------------------


def test_market_events_parse_as_documented() -> None:
    change = parse_market({"type": "PATCH", "game": "730", "source": "s", "item": {"id": 5}, "at": 1})
    assert isinstance(change, MarketItemChanged)
    assert (change.kind, change.game, change.listing_id, change.parent_id, change.at) == ("patch", 730, "5", None, "1")
    assert parse_market({"type": "remove", "game": 252490, "itemId": "x"}) == MarketItemRemoved(252490, "x")
    assert parse_market({"type": "sync", "reason": "subscribe"}) == MarketSync("subscribe", None)
    assert parse_market({"type": "sync", "reason": "feed", "game": 730}) == MarketSync("feed", 730)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"type": "patch", "game": 730},
        {"type": "patch", "item": {"name": "no id"}},
        {"type": "upsert", "item": "x"},
        {"type": "remove"},
        {"type": "remove", "itemId": True},
        {"type": "sync", "game": "cs2"},
        {"type": "explode"},
    ],
)
def test_market_events_that_are_not_as_documented_are_refused(body: Any) -> None:
    with pytest.raises(FeedPayloadError):
        parse_market(body)


def test_trade_and_funding_events_parse_leniently() -> None:
    assert parse_trade({"trade": {"id": "t-1", "status": "hold"}}).trade_id == "t-1"
    assert parse_trade({"id": "t-2"}).trade_id == "t-2"
    funding = parse_funding("deposit", {"funding": {"id": "f", "status": "completed"}})
    assert (funding.kind, funding.id, funding.status) == ("deposit", "f", "completed")
    assert parse_funding("withdrawal", {"id": "w"}).id == "w"


async def test_a_listing_that_gets_its_first_price_on_a_price_sorted_page_drops_it() -> None:
    shop = catalog()
    query = MarketQuery(sort=MarketSort.PRICE_ASC)
    bare = Item.model_validate({"id": "l0", "name": "Skin 0"})

    async def load() -> CachedPage:
        return CachedPage.of((bare,), 1)

    await shop.market_cache.get(query, load)
    shop.market_changed(price_patch(0, "1"))
    assert shop.market_cache.peek(query) is None
