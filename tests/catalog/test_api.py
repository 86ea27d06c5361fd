"""`GET /v1/inventory` and `GET /v1/market`: AssetPay's catalog passed through with exact money, and shared.

Identical market queries share one cached upstream answer for the TTL (errors are never kept); concurrent identical
requests share one upstream call. AssetPay is faked at the HTTP boundary with respx.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.services.cache import SingleFlight
from tests.assetpay_respx import AssetPay, mocked_assetpay, register
from tests.gateway.fake_assetpay import fail, item, ok
from tests.support import auth


@pytest.fixture
def assetpay(resources: Resources) -> Iterator[AssetPay]:
    with mocked_assetpay(resources) as fake:
        yield fake


def market_page(*prices: str) -> httpx.Response:
    items = [item(item_id=f"listing-{n:04d}", price=price, itemId="0010f8d48278ccb8") for n, price in enumerate(prices)]
    return ok({"items": items, "count": len(items)})


def inventory_page(collateral: Decimal, *prices: str) -> httpx.Response:
    items = [item(item_id=f"730_{n:011d}", price=price) for n, price in enumerate(prices)]
    return ok(
        {"inventory": items, "count": len(items), "updatedAt": "2026-07-31T12:00:00.000Z", "collateral": collateral}
    )


def _in_single_flight(task: asyncio.Task[Any]) -> bool:
    """True when the task is suspended inside SingleFlight.run (joined a shared upstream call)."""
    code = SingleFlight.run.__code__
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None)
        if frame is not None and frame.f_code is code:
            return True
        awaited = getattr(awaited, "cr_await", None)
    return False


async def all_join_one_flight(tasks: list[asyncio.Task[Any]], release: asyncio.Event) -> None:
    """Let the upstream answer once every request waits on the shared call (or after a generous bound, so a
    second upstream call shows up as a failed assertion instead of a hang)."""
    for _ in range(2000):
        if all(_in_single_flight(task) for task in tasks):
            break
        await asyncio.sleep(0.005)
    release.set()


def held(reply: httpx.Response, release: asyncio.Event) -> Any:
    async def answer(_: httpx.Request) -> httpx.Response:
        await release.wait()
        return reply

    return answer


# -- GET /v1/market ----------------------------------------------------------------------------------------------


async def test_market_passes_the_query_through_and_money_out_as_decimal_strings(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    await register(client, "shopper")
    assetpay.market.reply(market_page("10.75", "0.035", "1200"))
    params = {"search": "AK-47", "sort": "priceAsc", "minPrice": "1.5", "maxPrice": "20", "page": 2, "perPage": 10}
    response = await client.get("/v1/market", params=params, headers=auth("shopper"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 3
    assert [i["price"] for i in body["items"]] == ["10.75", "0.035", "1200.00"]
    assert body["items"][0]["id"] == "listing-0000"
    assert body["items"][0]["itemId"] == "0010f8d48278ccb8"
    assert body["items"][0]["marketHashName"] == "AK-47 | Redline (Field-Tested)"
    [request] = assetpay.market.requests
    assert dict(request.url.params) == {
        "game": "730",
        "search": "AK-47",
        "sort": "priceAsc",
        "minPrice": "1.5",
        "maxPrice": "20",
        "page": "2",
        "perPage": "10",
    }
    assert request.headers["authorization"].startswith("Bearer ")


async def test_identical_market_queries_within_the_ttl_cost_one_upstream_call(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    await register(client, "browser")
    await register(client, "neighbour")
    assetpay.market.reply(market_page("10.75"))
    first = await client.get("/v1/market", params={"search": "knife"}, headers=auth("browser"))
    second = await client.get("/v1/market", params={"search": "knife"}, headers=auth("browser"))
    third = await client.get("/v1/market", params={"search": "knife"}, headers=auth("neighbour"))
    assert first.status_code == second.status_code == third.status_code == 200
    assert first.content == second.content == third.content
    assert assetpay.market.call_count == 1


@pytest.mark.parametrize(
    "other",
    [
        {"search": "glove"},
        {"search": "knife", "game": 252490},
        {"search": "knife", "page": 2},
        {"search": "knife", "perPage": 20},
        {"search": "knife", "sort": "priceDesc"},
        {"search": "knife", "minPrice": "1"},
        {"search": "knife", "maxPrice": "100"},
    ],
)
async def test_different_market_queries_are_separate_calls(
    client: httpx.AsyncClient, assetpay: AssetPay, other: dict[str, Any]
) -> None:
    await register(client, "curious")
    assetpay.market.reply(market_page("10.75"), market_page("99.99"))
    first = await client.get("/v1/market", params={"search": "knife"}, headers=auth("curious"))
    second = await client.get("/v1/market", params=other, headers=auth("curious"))
    assert (first.status_code, second.status_code) == (200, 200)
    assert assetpay.market.call_count == 2
    assert second.json()["items"][0]["price"] == "99.99"


async def test_concurrent_identical_market_misses_share_one_upstream_call(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    await register(client, "crowd")
    release = asyncio.Event()
    assetpay.market.reply(held(market_page("5.00"), release))
    tasks = [
        asyncio.create_task(client.get("/v1/market", params={"search": "case"}, headers=auth("crowd")))
        for _ in range(20)
    ]
    await all_join_one_flight(tasks, release)
    responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200] * 20
    assert len({r.content for r in responses}) == 1
    assert assetpay.market.call_count == 1


async def test_market_errors_are_not_cached(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    await register(client, "retry")
    assetpay.market.reply(fail(503, "SYSTEM_MAINTENANCE"), market_page("7.00"))
    failed = await client.get("/v1/market", headers=auth("retry"))
    assert failed.status_code == 503
    ok_now = await client.get("/v1/market", headers=auth("retry"))
    assert ok_now.status_code == 200
    assert ok_now.json()["items"][0]["price"] == "7.00"
    assert assetpay.market.call_count == 2
    # ... and the good answer is.
    assert (await client.get("/v1/market", headers=auth("retry"))).status_code == 200
    assert assetpay.market.call_count == 2


async def test_concurrent_market_misses_share_the_error_then_retry(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    await register(client, "storm")
    release = asyncio.Event()
    assetpay.market.reply(held(fail(503, "SYSTEM_MAINTENANCE"), release), market_page("1.00"))
    tasks = [asyncio.create_task(client.get("/v1/market", headers=auth("storm"))) for _ in range(5)]
    await all_join_one_flight(tasks, release)
    assert [r.status_code for r in await asyncio.gather(*tasks)] == [503] * 5
    assert assetpay.market.call_count == 1
    assert (await client.get("/v1/market", headers=auth("storm"))).status_code == 200
    assert assetpay.market.call_count == 2


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"perPage": 101}, "perPage"),
        ({"perPage": 0}, "perPage"),
        ({"page": 0}, "page"),
        ({"sort": "cheapest"}, "sort"),
        ({"minPrice": "-1"}, "minPrice"),
        ({"maxPrice": "1.123456789"}, "maxPrice"),
        ({"game": 440}, "game"),
        ({"search": "x" * 101}, "search"),
    ],
)
async def test_invalid_market_queries_are_422_without_an_upstream_call(
    client: httpx.AsyncClient, assetpay: AssetPay, params: dict[str, Any], field: str
) -> None:
    await register(client, "sloppy")
    response = await client.get("/v1/market", params=params, headers=auth("sloppy"))
    assert response.status_code == 422
    assert field in response.json()["error"]["fields"]
    assert assetpay.router.calls.call_count == 0


async def test_market_for_an_unregistered_user_is_404(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    response = await client.get("/v1/market", headers=auth("ghost"))
    assert response.status_code == 404
    assert response.json()["error"]["key"] == "USER_NOT_FOUND"
    assert assetpay.router.calls.call_count == 0


# -- GET /v1/inventory -------------------------------------------------------------------------------------------


async def test_inventory_returns_items_and_collateral_as_decimal_strings(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    await register(client, "owner")
    assetpay.inventory.reply(inventory_page(Decimal("12.5"), "10.75", "0.03"))
    response = await client.get("/v1/inventory", headers=auth("owner"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["collateral"] == "12.50"
    assert body["count"] == 2
    assert body["updatedAt"] == "2026-07-31T12:00:00Z"
    assert [i["price"] for i in body["items"]] == ["10.75", "0.03"]
    assert body["items"][0]["id"] == "730_00000000000"
    assert body["items"][0]["assetId"] == "12345678901"
    [request] = assetpay.inventory.requests
    assert dict(request.url.params) == {"game": "730", "page": "1", "limit": "50"}


@pytest.mark.parametrize(("given", "sent"), [("true", "true"), ("false", None), (None, None)])
async def test_inventory_refresh_is_passed_through(
    client: httpx.AsyncClient, assetpay: AssetPay, given: str | None, sent: str | None
) -> None:
    await register(client, "refresher")
    assetpay.inventory.reply(inventory_page(Decimal(0)))
    params = {"refresh": given} if given is not None else {}
    assert (await client.get("/v1/inventory", params=params, headers=auth("refresher"))).status_code == 200
    [request] = assetpay.inventory.requests
    assert request.url.params.get("refresh") == sent


async def test_inventory_passes_its_query_through(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    await register(client, "rustler")
    assetpay.inventory.reply(inventory_page(Decimal("0.10")))
    params = {"game": 252490, "search": "door", "sort": "priceDesc", "minPrice": "0.5", "page": 3, "limit": 25}
    response = await client.get("/v1/inventory", params=params, headers=auth("rustler"))
    assert response.status_code == 200
    assert response.json()["collateral"] == "0.10"
    [request] = assetpay.inventory.requests
    assert dict(request.url.params) == {
        "game": "252490",
        "search": "door",
        "sort": "priceDesc",
        "minPrice": "0.5",
        "page": "3",
        "limit": "25",
    }


async def test_concurrent_identical_inventory_requests_of_one_user_share_one_upstream_call(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    await register(client, "impatient")
    release = asyncio.Event()
    assetpay.inventory.reply(held(inventory_page(Decimal("3.21"), "1.00"), release))
    tasks = [asyncio.create_task(client.get("/v1/inventory", headers=auth("impatient"))) for _ in range(20)]
    await all_join_one_flight(tasks, release)
    responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200] * 20
    assert {r.json()["collateral"] for r in responses} == {"3.21"}
    assert assetpay.inventory.call_count == 1


async def test_inventory_is_never_shared_between_users_nor_kept(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    await register(client, "mine")
    await register(client, "yours")
    assetpay.inventory.reply(inventory_page(Decimal(1)), inventory_page(Decimal(2)), inventory_page(Decimal(3)))
    mine = await client.get("/v1/inventory", headers=auth("mine"))
    yours = await client.get("/v1/inventory", headers=auth("yours"))
    mine_again = await client.get("/v1/inventory", headers=auth("mine"))
    assert [r.json()["collateral"] for r in (mine, yours, mine_again)] == ["1.00", "2.00", "3.00"]
    assert assetpay.inventory.call_count == 3
    client_ids = [r.headers["authorization"] for r in assetpay.inventory.requests]
    assert client_ids[0] != client_ids[1], "each user's inventory is asked for with their own client token"


async def test_inventory_errors_reach_every_waiter_and_are_not_kept(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    await register(client, "private")
    assetpay.inventory.reply(fail(403, "INVENTORY_PRIVATE"), inventory_page(Decimal(0)))
    first = await client.get("/v1/inventory", headers=auth("private"))
    assert first.status_code == 409
    assert first.json()["error"]["key"] == "INVENTORY_PRIVATE"
    assert (await client.get("/v1/inventory", headers=auth("private"))).status_code == 200
    assert assetpay.inventory.call_count == 2


async def test_inventory_for_an_unregistered_user_is_404(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    response = await client.get("/v1/inventory", headers=auth("ghost"))
    assert response.status_code == 404
    assert response.json()["error"]["key"] == "USER_NOT_FOUND"
    assert assetpay.router.calls.call_count == 0


async def test_a_cached_market_page_is_served_without_the_user_and_a_miss_needs_a_registered_user(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    await register(client, "regular")
    assetpay.market.reply(market_page("4.20"))
    first = await client.get("/v1/market", params={"page": 1}, headers=auth("regular"))
    assert first.status_code == 200, first.text

    cached = await client.get("/v1/market", params={"page": 1}, headers=auth("never-registered"))
    assert cached.status_code == 200
    assert cached.json() == first.json()
    missed = await client.get("/v1/market", params={"page": 2}, headers=auth("never-registered"))
    assert missed.status_code == 404
    assert missed.json()["error"]["key"] == "USER_NOT_FOUND"
    assert assetpay.market.call_count == 1
