"""`market` events keep `GET /v1/market` fresh without waiting for the cache TTL: a page showing a changed listing
is patched in place when the change cannot move it, else refetched; a removed listing's pages are refetched; `sync`
refetches a game's pages (or all of them, after every (re)connect)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.assetpay_respx import AssetPay, register
from tests.feed.conftest import FeedServer, Wired
from tests.gateway.fake_assetpay import item, ok
from tests.support import auth

CS2, RUST = 730, 252490


def page(*prices: str, first: int = 0, count: int | None = None) -> httpx.Response:
    """A market page of listings `listing-<n>` (each of its own catalog item `parent-<n>`)."""
    items = [
        item(item_id=f"listing-{n}", price=price, itemId=f"parent-{n}", name=f"Skin {n}")
        for n, price in enumerate(prices, start=first)
    ]
    return ok({"items": items, "count": len(items) if count is None else count})


async def market(client: httpx.AsyncClient, user: str, **params: Any) -> list[tuple[str, str]]:
    response = await client.get("/v1/market", params=params, headers=auth(user))
    assert response.status_code == 200, response.text
    return [(listing["id"], listing["price"]) for listing in response.json()["items"]]


def patch(listing: str, price: float, game: int = CS2) -> dict[str, Any]:
    return {
        "type": "patch",
        "game": game,
        "source": "market",
        "item": {"id": listing, "offer": {"price": price}},
        "at": "2026-07-31T12:00:00.000Z",
    }


async def test_a_price_patch_shows_in_get_market_before_the_ttl(
    client: httpx.AsyncClient, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "feed-shopper")
    assetpay.market.reply(page("10.00", "20.00"))
    assert await market(client, "feed-shopper") == [("listing-0", "10.00"), ("listing-1", "20.00")]

    await feed_server.send("market", patch("listing-1", 12.345))

    response = await client.get("/v1/market", headers=auth("feed-shopper"))
    listings = response.json()["items"]
    assert [(x["id"], x["price"]) for x in listings] == [("listing-0", "10.00"), ("listing-1", "12.345")]
    assert listings[1]["name"] == "Skin 1"
    assert listings[1]["marketHashName"]
    assert assetpay.market.call_count == 1  # patched in place: no refetch, and well within the TTL


async def test_a_price_change_that_moves_the_listing_refetches_its_sorted_page(
    client: httpx.AsyncClient, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "sorter")
    assetpay.market.reply(page("1.00", "2.00", "3.00"), page("2.00", "3.00", "5.00", first=1))
    assert await market(client, "sorter", sort="priceAsc") == [
        ("listing-0", "1.00"),
        ("listing-1", "2.00"),
        ("listing-2", "3.00"),
    ]

    await feed_server.send("market", patch("listing-1", 2.5))  # still between its neighbours: patched in place
    assert await market(client, "sorter", sort="priceAsc") == [
        ("listing-0", "1.00"),
        ("listing-1", "2.50"),
        ("listing-2", "3.00"),
    ]
    assert assetpay.market.call_count == 1

    await feed_server.send("market", patch("listing-0", 5))  # now after its neighbours: the page is refetched
    assert await market(client, "sorter", sort="priceAsc") == [
        ("listing-1", "2.00"),
        ("listing-2", "3.00"),
        ("listing-3", "5.00"),
    ]
    assert assetpay.market.call_count == 2


async def test_a_listing_patched_out_of_a_price_filter_refetches_the_page(
    client: httpx.AsyncClient, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "bargain-hunter")
    assetpay.market.reply(page("4.00", "9.00"), page("4.00"))
    assert len(await market(client, "bargain-hunter", maxPrice="10")) == 2
    await feed_server.send("market", patch("listing-1", 11))
    assert await market(client, "bargain-hunter", maxPrice="10") == [("listing-0", "4.00")]
    assert assetpay.market.call_count == 2


async def test_a_removed_listing_refetches_only_the_pages_showing_it(
    client: httpx.AsyncClient, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "watcher")
    assetpay.market.reply(page("1.00", "2.00"), page("7.00", first=5), page("1.00"))
    assert len(await market(client, "watcher", search="knife")) == 2
    assert await market(client, "watcher", search="glove") == [("listing-5", "7.00")]

    await feed_server.send("market", {"type": "remove", "game": CS2, "source": "market", "itemId": "listing-1"})

    assert await market(client, "watcher", search="knife") == [("listing-0", "1.00")]
    assert await market(client, "watcher", search="glove") == [("listing-5", "7.00")]  # still cached
    assert assetpay.market.call_count == 3


async def test_changes_to_listings_no_cached_page_shows_change_nothing(
    client: httpx.AsyncClient, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "bystander")
    assetpay.market.reply(page("1.00"))
    before = await client.get("/v1/market", headers=auth("bystander"))
    await feed_server.send("market", patch("listing-9", 3))
    await feed_server.send("market", {"type": "remove", "game": CS2, "source": "market", "itemId": "listing-8"})
    await feed_server.send("market", patch("listing-0", 3, game=RUST))  # the same id in another game's market
    after = await client.get("/v1/market", headers=auth("bystander"))
    assert after.content == before.content
    assert assetpay.market.call_count == 1


async def test_sync_of_a_game_refetches_that_games_pages(
    client: httpx.AsyncClient, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "syncer")
    assetpay.market.reply(page("1.00"), page("2.00"), page("1.50"))
    assert await market(client, "syncer", game=CS2) == [("listing-0", "1.00")]
    assert await market(client, "syncer", game=RUST) == [("listing-0", "2.00")]

    await feed_server.send("market", {"type": "sync", "reason": "feed", "game": CS2})

    assert await market(client, "syncer", game=CS2) == [("listing-0", "1.50")]
    assert await market(client, "syncer", game=RUST) == [("listing-0", "2.00")]
    assert assetpay.market.call_count == 3


async def test_an_upsert_replaces_the_listing_shown(
    client: httpx.AsyncClient, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "upserter")
    assetpay.market.reply(page("1.00", "2.00"))
    await market(client, "upserter")
    replacement = {**item(item_id="listing-1", price="2.00", itemId="parent-1", name="Skin 1"), "tradable": False}
    replacement["offer"] = {"price": 2.0, "delivery": "instant"}
    await feed_server.send("market", {"type": "upsert", "game": "730", "source": "market", "item": replacement})
    listing = (await client.get("/v1/market", headers=auth("upserter"))).json()["items"][1]
    assert (listing["tradable"], listing["delivery"], listing["price"]) == (False, "instant", "2.00")
    assert assetpay.market.call_count == 1
