"""Creating trades: strict bodies, exact prices, unique externalIds, per-user guards, instant credit, withdrawals
at the current price, and cancellation."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from assetpay_sandbox import Sandbox, sandbox_of
from tests.sandbox.helpers import (
    MERCHANT_ID,
    OTHER_STEAM_ID,
    STEAM_ID,
    TRADE_URL,
    Clock,
    Receiver,
    client_token,
    conforms,
    data,
    deposit,
    depositable,
    dumps,
    error,
    inventory,
    market,
    withdraw,
)


def _total(items: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(i["offer"]["price"]) * i.get("amount", 1) for i in items), start=Decimal(0))


# -- deposits ---------------------------------------------------------------------------------------------------------


async def test_a_deposit_returns_the_trade(api: httpx.AsyncClient) -> None:
    headers = await client_token(api, client_id="user-42")
    items = (await depositable(api, headers))[:3]
    response = await deposit(api, headers, items, externalId="dep-1", isInstant=False, game="730")
    conforms("POST", "/client/trading/deposit", response)
    trade = data(response)
    assert trade["type"] == "deposit"
    assert trade["source"] == "client"
    assert trade["status"] == "initiated"
    assert trade["externalId"] == "dep-1"
    assert trade["externalClientUserId"] == "user-42"
    assert trade["merchantId"] == MERCHANT_ID
    assert trade["clientSteamID"] == STEAM_ID
    assert trade["clientTradeUrl"] == TRADE_URL
    assert trade["game"] == "730"
    assert [i["id"] for i in trade["items"]] == [i["id"] for i in items]
    assert trade["totalPrice"] == _total(items)
    assert (trade["preCredit"], trade["pendingCredit"]) == (0, trade["totalPrice"])
    assert trade["isInstant"] is False
    assert trade["createdAt"] == trade["updatedAt"] == "2026-07-31T12:00:00.000Z"
    # The deposited items have left the inventory that AssetPay shows.
    left = {i["id"] for i in await inventory(api, headers, limit=100)}
    assert left.isdisjoint(i["id"] for i in items)


async def test_instant_credit_is_capped_by_collateral_on_cs2(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)  # no clientData: 25.00 of collateral
    items = await depositable(api, headers)
    dear = [max(items, key=lambda i: i["offer"]["price"])]
    first = data(await deposit(api, headers, dear, isInstant=True))
    assert first["totalPrice"] > 25
    assert first["preCredit"] == Decimal("25.00")
    assert first["pendingCredit"] == first["totalPrice"] - Decimal("25.00")
    assert first["collateral"] == {"merchant": 0, "provider": Decimal("25.00")}
    # That collateral is now exposed: the next instant deposit gets nothing up front.
    assert data(await api.get("/client/inventory", headers=headers))["collateral"] == 0
    second = data(await deposit(api, headers, items[:1], isInstant=True))
    assert second["preCredit"] == 0


async def test_instant_credit_covers_a_small_deposit_in_full(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    cheap = (await depositable(api, headers))[:1]
    assert cheap[0]["offer"]["price"] < 25
    trade = data(await deposit(api, headers, cheap, isInstant=True))
    assert trade["preCredit"] == trade["totalPrice"]
    assert trade["pendingCredit"] == 0


async def test_rust_deposits_are_credited_in_full(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    items = (await depositable(api, headers, game=252490))[:2]
    body = {
        "items": [{"itemId": i["id"], "price": i["offer"]["price"], "amount": i["amount"]} for i in items],
        "game": "252490",
        "isInstant": False,
    }
    trade = data(await api.post("/client/trading/deposit", content=dumps(body), headers=headers))
    assert trade["game"] == "252490"
    assert trade["totalPrice"] == _total(items)
    assert trade["preCredit"] == trade["totalPrice"]
    assert trade["pendingCredit"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [{"itemId": "7301", "price": 1}]}, "items.0.itemId"),
        ({"items": [{"itemId": "730_12345", "price": "1.00"}]}, "items.0.price"),
        ({"items": [{"itemId": "730_12345", "price": 0}]}, "items.0.price"),
        ({"items": [{"itemId": "730_12345", "price": 1, "amount": 0}]}, "items.0.amount"),
        ({"items": [{"itemId": "730_12345"}]}, "items.0.price"),
        ({"items": [{"itemId": "730_12345", "price": 1}], "game": 730}, "game"),
        ({"items": [{"itemId": "730_12345", "price": 1}], "game": "440"}, "game"),
        ({"items": [{"itemId": "730_12345", "price": 1}], "isInstant": "yes"}, "isInstant"),
        ({"items": [{"itemId": "730_12345", "price": 1}], "externalId": ""}, "externalId"),
        ({"items": [{"itemId": "730_12345", "price": 1}], "externalId": "x" * 129}, "externalId"),
        ({"items": [{"itemId": "730_12345", "price": 1}], "note": "extra"}, "note"),
        ({"items": [{"itemId": f"730_{n:05d}", "price": 1} for n in range(251)]}, "items"),
        ({"items": [{"itemId": "730_12345", "price": 1}, {"itemId": "730_12345", "price": 1}]}, "items.1.itemId"),
        ({}, "items"),
    ],
)
async def test_deposit_bodies_are_validated_strictly(api: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    response = await api.post("/client/trading/deposit", content=dumps(body), headers=await client_token(api))
    found = error(response, 400, "VALIDATION_FAILED")
    assert field in found["fields"], found
    conforms("POST", "/client/trading/deposit", response)


async def test_a_deposit_at_a_stale_price_is_refused(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    item = (await depositable(api, headers))[0]
    stale = {"items": [{"itemId": item["id"], "price": item["offer"]["price"] + Decimal("0.01")}]}
    response = await api.post("/client/trading/deposit", content=dumps(stale), headers=headers)
    found = error(response, 409, "PRICE_CHANGED")
    assert found["details"] == {"items": [{"itemId": item["id"], "price": item["offer"]["price"]}]}
    conforms("POST", "/client/trading/deposit", response)
    # The same price written with other digits is the same number.
    longer = Decimal(item["offer"]["price"]).quantize(Decimal("0.0001"))
    same = {"items": [{"itemId": item["id"], "price": longer}]}
    accepted = await api.post("/client/trading/deposit", content=dumps(same), headers=headers)
    assert data(accepted)["totalPrice"] == item["offer"]["price"]
    assert str(longer).encode() not in accepted.content  # the trade carries AssetPay's price, not ours


async def test_a_price_set_by_the_developer_is_the_current_price(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    item = (await depositable(api, headers))[0]
    set_price = await api.put(f"/_sandbox/prices/{item['id']}", content=dumps({"price": Decimal("7.77")}))
    assert data(set_price) == {"itemId": item["id"], "price": Decimal("7.77")}
    error(await deposit(api, headers, [item]), 409, "PRICE_CHANGED")
    repriced = {**item, "offer": {"price": Decimal("7.77")}}
    assert data(await deposit(api, headers, [repriced]))["totalPrice"] == Decimal("7.77")


async def test_unknown_or_refused_items_are_unavailable(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    everything = await inventory(api, headers, limit=100)
    refused = next(i for i in everything if not i["offer"]["accepted"])
    theirs = (await depositable(api, await client_token(api, OTHER_STEAM_ID)))[0]
    for item in (refused, theirs):
        response = await deposit(api, headers, [item])
        assert error(response, 400, "ITEMS_UNAVAILABLE")["details"] == {"items": [item["id"]]}
    mine = (await depositable(api, headers))[0]
    assert (await deposit(api, headers, [mine])).status_code == 200
    error(await deposit(api, headers, [mine]), 400, "ITEMS_UNAVAILABLE")  # already in a deposit


async def test_external_ids_are_unique_per_merchant(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    items = await depositable(api, headers)
    assert (await deposit(api, headers, items[:1], externalId="ours-1")).status_code == 200
    again = await deposit(api, headers, items[1:2], externalId="ours-1")
    error(again, 409, "EXTERNAL_ID_EXISTS")
    other_user = await client_token(api, OTHER_STEAM_ID)
    error(
        await deposit(api, other_user, (await depositable(api, other_user))[:1], externalId="ours-1"),
        409,
        "EXTERNAL_ID_EXISTS",
    )
    listing = (await market(api, headers))[0]
    error(await withdraw(api, headers, [listing], externalId="ours-1"), 409, "EXTERNAL_ID_EXISTS")


async def test_at_most_five_deposits_in_flight_per_user(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    items = await depositable(api, headers)
    trades = [data(await deposit(api, headers, [item])) for item in items[:5]]
    response = await deposit(api, headers, [items[5]])
    error(response, 429, "TOO_MANY_ACTIVE_TRADES")
    conforms("POST", "/client/trading/deposit", response)
    # Another user is not held back.
    others = await client_token(api, OTHER_STEAM_ID)
    assert (await deposit(api, others, (await depositable(api, others))[:1])).status_code == 200
    # Once one is accepted (hold), there is room again.
    for _ in range(2):
        data(await api.post(f"/_sandbox/trades/{trades[0]['id']}/advance"))
    assert (await deposit(api, headers, [items[5]])).status_code == 200


async def test_at_most_ten_deposits_per_five_minutes(api: httpx.AsyncClient, clock: Clock) -> None:
    headers = await client_token(api)
    items = await depositable(api, headers)
    for item in items[:10]:
        trade = data(await deposit(api, headers, [item]))
        data(await api.post(f"/_sandbox/trades/{trade['id']}/advance", params={"to": "completed"}))
        clock.advance(10)
    response = await deposit(api, headers, [items[10]])
    found = error(response, 429, "RATE_LIMITED")
    assert found["message"]
    assert response.headers["retry-after"] == str(300 - 100)  # the oldest leaves the window 200 s from now
    conforms("POST", "/client/trading/deposit", response)
    clock.advance(200)
    assert (await deposit(api, headers, [items[10]])).status_code == 200


# -- withdrawals ------------------------------------------------------------------------------------------------------


async def test_a_withdrawal_starts_initiated(api: httpx.AsyncClient) -> None:
    headers = await client_token(api, client_id="user-9")
    listings = (await market(api, headers))[:2]
    body = {
        "items": [
            {"itemId": listings[0]["id"], "price": listings[0]["offer"]["price"], "externalId": "w-item-1"},
            {"itemId": listings[1]["id"], "price": listings[1]["offer"]["price"]},
        ],
        "externalId": "wd-1",
        "game": "730",
        "slippageBps": 0,
        "autoCancel": 60,
    }
    response = await api.post("/client/trading/withdraw", content=dumps(body), headers=headers)
    conforms("POST", "/client/trading/withdraw", response)
    trade = data(response)
    assert trade["type"] == "withdraw"
    assert trade["status"] == "initiated"
    assert trade["externalId"] == "wd-1"
    assert trade["externalClientUserId"] == "user-9"
    assert trade["totalPrice"] == _total(listings)
    assert [i["status"] for i in trade["items"]] == ["initiated", "initiated"]
    assert (trade["preCredit"], trade["pendingCredit"]) == (0, 0)
    assert trade["items"][0]["externalId"] == "w-item-1"
    assert trade["autoCancelAt"] == "2026-07-31T13:00:00.000Z"
    # Bought listings leave the market, which restocks their places with new listings.
    before = data(await api.get("/client/market", params={"perPage": 1}, headers=headers))["count"]
    remaining = {i["id"] for i in await market(api, headers, perPage=500)}
    assert remaining.isdisjoint(i["id"] for i in listings)
    assert len(remaining) == before
    error(await withdraw(api, headers, listings[:1]), 400, "ITEMS_UNAVAILABLE")


async def test_withdrawn_items_arrive_in_the_inventory(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    listing = (await market(api, headers))[0]
    trade = data(await withdraw(api, headers, [listing]))
    owned_before = {i["id"] for i in await inventory(api, headers, limit=500)}
    data(await api.post(f"/_sandbox/trades/{trade['id']}/advance", params={"to": "completed"}))
    owned = await inventory(api, headers, limit=500)
    (arrived,) = [i for i in owned if i["id"] not in owned_before]
    assert arrived["assetId"] == listing["assetId"]
    assert arrived["marketHashName"] == listing["marketHashName"]
    assert arrived["offer"] == {"price": listing["offer"]["price"], "accepted": True}
    # ... and can be deposited again.
    assert data(await deposit(api, headers, [arrived]))["totalPrice"] == listing["offer"]["price"]


async def test_a_lower_current_price_is_charged(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    listing = (await market(api, headers))[0]
    quoted = listing["offer"]["price"]
    await api.put(f"/_sandbox/prices/{listing['id']}", content=dumps({"price": quoted - 1}))
    trade = data(await withdraw(api, headers, [listing]))
    assert trade["totalPrice"] == quoted - 1
    assert trade["items"][0]["offer"]["price"] == quoted - 1


async def test_a_higher_price_needs_max_price_or_slippage(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    first, second, third = (await market(api, headers))[:3]
    for listing in (first, second, third):
        risen = listing["offer"]["price"] + Decimal("0.50")
        await api.put(f"/_sandbox/prices/{listing['id']}", content=dumps({"price": risen}))

    refused = await withdraw(api, headers, [first])
    found = error(refused, 409, "PRICE_CHANGED")
    assert found["details"] == {"items": [{"itemId": first["id"], "price": first["offer"]["price"] + Decimal("0.50")}]}
    conforms("POST", "/client/trading/withdraw", refused)

    within_max = {
        "items": [{"itemId": first["id"], "price": first["offer"]["price"], "maxPrice": first["offer"]["price"] + 1}]
    }
    trade = data(await api.post("/client/trading/withdraw", content=dumps(within_max), headers=headers))
    assert trade["totalPrice"] == first["offer"]["price"] + Decimal("0.50")

    below_max = {
        "items": [
            {
                "itemId": second["id"],
                "price": second["offer"]["price"],
                "maxPrice": second["offer"]["price"] + Decimal("0.10"),
            }
        ],
        "slippageBps": 2000,
    }
    error(await api.post("/client/trading/withdraw", content=dumps(below_max), headers=headers), 409, "PRICE_CHANGED")

    # 2000 bps = 20 %, enough for a 0.50 rise on anything above 2.50.
    assert third["offer"]["price"] > Decimal("2.50")
    trade = data(await withdraw(api, headers, [third], slippageBps=2000))
    assert trade["totalPrice"] == third["offer"]["price"] + Decimal("0.50")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": [{"itemId": "abcdef", "price": 1}] * 51}, "items"),
        ({"items": [{"itemId": "abcdef", "price": 100001}]}, "items.0.price"),
        ({"items": [{"itemId": "abcdef", "price": 1, "maxPrice": 0}]}, "items.0.maxPrice"),
        ({"items": [{"itemId": "abcdef", "price": 1}], "slippageBps": 2001}, "slippageBps"),
        ({"items": [{"itemId": "abcdef", "price": 1}], "autoCancel": 29}, "autoCancel"),
        ({"items": [{"itemId": "abcdef", "price": 1}], "isInstant": True}, "isInstant"),
        ({"items": [{"itemId": "abcdef", "price": 1}], "game": "252490"}, "game"),
    ],
)
async def test_withdraw_bodies_are_validated_strictly(api: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    response = await api.post("/client/trading/withdraw", content=dumps(body), headers=await client_token(api))
    assert field in error(response, 400, "VALIDATION_FAILED")["fields"]
    conforms("POST", "/client/trading/withdraw", response)


# -- cancellation -----------------------------------------------------------------------------------------------------


async def test_cancel_an_undelivered_withdrawal(api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver) -> None:
    headers = await client_token(api)
    listings = (await market(api, headers))[:2]
    trade = data(await withdraw(api, headers, listings, externalId="wd-cancel"))
    response = await api.post("/client/trading/withdraw/wd-cancel/cancel", headers=headers)
    conforms("POST", "/client/trading/withdraw/{tradeId}/cancel", response)
    assert data(response) == {
        "tradeId": trade["id"],
        "requested": 2,
        "cancelled": 2,
        "failed": 0,
        "items": [{"itemId": i["id"], "status": "cancelled"} for i in listings],
    }
    await sandbox.deliver()
    (event,) = receiver.received()
    assert event.trade["status"] == "canceled"
    assert [i["status"] for i in event.trade["items"]] == ["canceled", "canceled"]
    # Nothing is left to cancel.
    again = data(await api.post(f"/client/trading/withdraw/{trade['id']}/cancel", headers=headers))
    assert (again["requested"], again["cancelled"]) == (0, 0)


async def test_cancel_one_item_of_an_approved_withdrawal(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    headers = await client_token(api)
    listings = (await market(api, headers))[:2]
    body = {
        "items": [
            {"itemId": listings[0]["id"], "price": listings[0]["offer"]["price"], "externalId": "keep"},
            {"itemId": listings[1]["id"], "price": listings[1]["offer"]["price"], "externalId": "drop"},
        ]
    }
    trade = data(await api.post("/client/trading/withdraw", content=dumps(body), headers=headers))
    await sandbox.step()  # approved: pending
    response = await api.post(f"/client/trading/withdraw/{trade['id']}/items/drop/cancel", headers=headers)
    conforms("POST", "/client/trading/withdraw/{tradeId}/items/{itemId}/cancel", response)
    assert data(response) == {
        "tradeId": trade["id"],
        "itemId": listings[1]["id"],
        "externalId": "drop",
        "status": "cancelled",
    }
    await sandbox.deliver()
    latest = receiver.received()[-1].trade
    assert latest["status"] == "pending"
    assert [i["status"] for i in latest["items"]] == ["pending", "canceled"]
    error(
        await api.post(f"/client/trading/withdraw/{trade['id']}/items/nope/cancel", headers=headers), 404, "NOT_FOUND"
    )
    # Once offered to the user, an item can no longer be cancelled.
    await sandbox.step()
    refused = await api.post(f"/client/trading/withdraw/{trade['id']}/items/keep/cancel", headers=headers)
    error(refused, 400, "TRADE_NOT_CANCELLABLE")
    whole = data(await api.post(f"/client/trading/withdraw/{trade['id']}/cancel", headers=headers))
    assert whole["items"] == [
        {"itemId": listings[0]["id"], "externalId": "keep", "status": "failed", "reason": "TRADE_NOT_CANCELLABLE"}
    ]


async def test_cancel_is_refused_too_soon_when_configured(make_app: Callable[..., FastAPI], clock: Clock) -> None:
    app = make_app(cancel_min_age_seconds=1800)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test") as api:
        headers = await client_token(api)
        trade = data(await withdraw(api, headers, (await market(api, headers))[:1]))
        early = data(await api.post(f"/client/trading/withdraw/{trade['id']}/cancel", headers=headers))
        assert early["items"][0]["reason"] == "TRADE_CANCEL_TOO_SOON"
        assert early["cancelled"] == 0
        clock.advance(1800)
        assert data(await api.post(f"/client/trading/withdraw/{trade['id']}/cancel", headers=headers))["cancelled"] == 1
    await sandbox_of(app).stop()


async def test_only_the_owner_can_cancel(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    trade = data(await withdraw(api, headers, (await market(api, headers))[:1]))
    others = await client_token(api, OTHER_STEAM_ID)
    response = await api.post(f"/client/trading/withdraw/{trade['id']}/cancel", headers=others)
    error(response, 404, "NOT_FOUND")
    conforms("POST", "/client/trading/withdraw/{tradeId}/cancel", response)
    dep = data(await deposit(api, headers, (await depositable(api, headers))[:1]))
    error(await api.post(f"/client/trading/withdraw/{dep['id']}/cancel", headers=headers), 404, "NOT_FOUND")
