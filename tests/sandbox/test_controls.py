"""The developer's controls under /_sandbox: forcing outcomes, failing items, stepping on demand, knobs."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.sandbox.helpers import (
    API_KEY,
    STEAM_ID,
    Receiver,
    client_token,
    conforms,
    data,
    deposit,
    depositable,
    dumps,
    error,
    market,
    withdraw,
)


async def _new_deposit(api: httpx.AsyncClient, *, instant: bool = True) -> dict[str, Any]:
    headers = await client_token(api)
    trade: dict[str, Any] = data(await deposit(api, headers, (await depositable(api, headers))[:1], isInstant=instant))
    return trade


async def _new_withdrawal(api: httpx.AsyncClient, count: int = 3) -> dict[str, Any]:
    headers = await client_token(api)
    trade: dict[str, Any] = data(await withdraw(api, headers, (await market(api, headers))[:count]))
    return trade


async def _advance(api: httpx.AsyncClient, trade_id: str, **params: str) -> httpx.Response:
    return await api.post(f"/_sandbox/trades/{trade_id}/advance", params=params)


async def test_step_tick_and_deliver_on_demand(api: httpx.AsyncClient, receiver: Receiver) -> None:
    trade = await _new_deposit(api)
    assert data(await api.post("/_sandbox/tick")) == {"advanced": 0, "delivered": 1, "pending": 0}
    assert data(await api.post("/_sandbox/step")) == {"advanced": 1, "delivered": 1, "pending": 0}
    receiver.script = [httpx.Response(500)]
    assert data(await api.post("/_sandbox/step")) == {"advanced": 1, "delivered": 0, "pending": 1}
    assert data(await api.post("/_sandbox/deliver")) == {"advanced": 0, "delivered": 1, "pending": 0}
    assert receiver.statuses(trade["id"]) == ["initiated", "active", "hold", "hold"]
    overview = data(await api.get("/_sandbox"))
    assert overview["trades"] == 1
    assert overview["pendingCallbacks"] == 0
    assert overview["running"] is False


async def test_advance_one_step_and_all_the_way(api: httpx.AsyncClient, receiver: Receiver) -> None:
    trade = await _new_deposit(api)
    assert data(await _advance(api, trade["id"]))["status"] == "active"
    completed = data(await _advance(api, trade["id"], to="completed"))
    assert completed["status"] == "completed"
    assert receiver.statuses(trade["id"]) == ["initiated", "active", "hold", "completed"]
    error(await _advance(api, trade["id"]), 409, "INVALID_STATE")
    error(await _advance(api, trade["id"], to="completed"), 409, "INVALID_STATE")


async def test_a_withdrawal_walks_through_its_approval(api: httpx.AsyncClient, receiver: Receiver) -> None:
    trade = await _new_withdrawal(api)
    completed = data(await _advance(api, trade["id"], to="completed"))
    assert completed["status"] == "completed"
    assert receiver.statuses(trade["id"]) == ["initiated", "pending", "active", "hold", "completed"]
    # When the merchant does not answer, the walk stops where the trade waits.
    receiver.approvals = [httpx.Response(503)]
    waiting = await _new_withdrawal(api, count=1)
    assert data(await _advance(api, waiting["id"], to="completed"))["status"] == "initiated"
    receiver.approvals = [httpx.Response(200, json={"action": "reject"})]
    assert data(await _advance(api, waiting["id"], to="completed"))["status"] == "failed"


async def test_revert_a_deposit_in_hold(api: httpx.AsyncClient, receiver: Receiver) -> None:
    trade = await _new_deposit(api)
    error(await _advance(api, trade["id"], to="reverted"), 409, "INVALID_STATE")
    await _advance(api, trade["id"])
    await _advance(api, trade["id"])
    reverted = data(await _advance(api, trade["id"], to="reverted", by="supplier"))
    assert reverted["status"] == "reverted"
    assert reverted["revertedBy"] == "supplier"
    last = receiver.received()[-1]
    assert last.trade == reverted
    assert last.callback.trade is not None
    assert last.callback.trade.pre_credit == reverted["preCredit"]


@pytest.mark.parametrize(
    ("to", "error_key"), [("failed", "SERVICE_UNAVAILABLE"), ("declined", "OFFER_NOT_ACCEPTED"), ("canceled", None)]
)
async def test_end_a_deposit_before_acceptance(
    api: httpx.AsyncClient, receiver: Receiver, to: str, error_key: str | None
) -> None:
    trade = await _new_deposit(api)
    await _advance(api, trade["id"])
    ended = data(await _advance(api, trade["id"], to=to))
    assert ended["status"] == to
    assert ended.get("error") == error_key
    assert receiver.statuses(trade["id"]) == ["initiated", "active", to]
    error(await _advance(api, trade["id"], to="failed"), 409, "INVALID_STATE")


async def test_a_trade_in_hold_cannot_be_declined(api: httpx.AsyncClient) -> None:
    trade = await _new_deposit(api)
    await _advance(api, trade["id"])
    await _advance(api, trade["id"])
    error(await _advance(api, trade["id"], to="declined"), 409, "INVALID_STATE")
    custom = data(await _advance(api, trade["id"], to="failed", error="USER_TRADE_RESTRICTED"))
    assert custom["error"] == "USER_TRADE_RESTRICTED"


@pytest.mark.parametrize(
    "params", [{"to": "hold"}, {"to": "failed", "error": "NOPE"}, {"to": "reverted", "by": "someone"}]
)
async def test_advance_validates_its_query(api: httpx.AsyncClient, params: dict[str, str]) -> None:
    trade = await _new_deposit(api)
    error(await _advance(api, trade["id"], **params), 400, "VALIDATION_FAILED")
    error(await _advance(api, "no-such-trade"), 404, "NOT_FOUND")


async def test_a_failed_withdrawal_fails_its_items(api: httpx.AsyncClient) -> None:
    trade = await _new_withdrawal(api, count=2)
    await _advance(api, trade["id"])  # approved
    failed = data(await _advance(api, trade["id"], to="failed"))
    assert failed["error"] == "PURCHASE_FAILED"
    assert [(i["status"], i["error"]) for i in failed["items"]] == [("failed", "PURCHASE_FAILED")] * 2


async def test_fail_some_items_then_the_rest(api: httpx.AsyncClient, receiver: Receiver) -> None:
    trade = await _new_withdrawal(api, count=3)
    first, second, third = (item["id"] for item in trade["items"])
    error(await api.post(f"/_sandbox/trades/{trade['id']}/fail-items"), 409, "INVALID_STATE")  # not approved yet
    await _advance(api, trade["id"])

    partly = data(
        await api.post(
            f"/_sandbox/trades/{trade['id']}/fail-items",
            content=dumps({"itemIds": [first], "error": "NO_LISTING_AT_PRICE"}),
        )
    )
    assert partly["status"] == "pending"
    assert [i["status"] for i in partly["items"]] == ["failed", "pending", "pending"]
    assert partly["items"][0]["error"] == "NO_LISTING_AT_PRICE"
    latest = receiver.received()[-1]
    assert latest.trade == partly
    assert latest.callback.trade is not None
    charge = sum(
        (i.price * i.amount for i in latest.callback.trade.items if i.status is not None and not i.status.is_failure),
        start=Decimal(0),
    )
    assert charge == partly["items"][1]["offer"]["price"] + partly["items"][2]["offer"]["price"]

    await _advance(api, trade["id"])  # active: the rest is offered to the user
    rest = data(await api.post(f"/_sandbox/trades/{trade['id']}/fail-items"))
    assert rest["status"] == "failed"
    assert "error" not in rest  # the items failed for different reasons: no one trade-level cause
    assert [i["status"] for i in rest["items"]] == ["failed"] * 3
    assert {second, third} == {i["id"] for i in rest["items"] if i["error"] == "PURCHASE_FAILED"}


async def test_fail_items_validates_its_body(api: httpx.AsyncClient) -> None:
    trade = await _new_withdrawal(api)
    await _advance(api, trade["id"])
    url = f"/_sandbox/trades/{trade['id']}/fail-items"
    error(await api.post(url, content=dumps({"itemIds": "all"})), 400, "VALIDATION_FAILED")
    error(await api.post(url, content=dumps({"error": "MERCHANT_REJECTED"})), 400, "VALIDATION_FAILED")
    error(await api.post(url, content=dumps({"itemIds": ["unknown"]})), 409, "INVALID_STATE")
    deposit_trade = await _new_deposit(api)
    error(await api.post(f"/_sandbox/trades/{deposit_trade['id']}/fail-items"), 409, "INVALID_STATE")


async def test_list_and_show_trades(api: httpx.AsyncClient) -> None:
    dep = await _new_deposit(api)
    wd = await _new_withdrawal(api)
    assert [t["id"] for t in data(await api.get("/_sandbox/trades"))] == [dep["id"], wd["id"]]
    assert [t["id"] for t in data(await api.get("/_sandbox/trades", params={"type": "withdraw"}))] == [wd["id"]]
    assert data(await api.get("/_sandbox/trades", params={"status": "completed"})) == []
    assert data(await api.get(f"/_sandbox/trades/{dep['id']}")) == dep
    error(await api.get("/_sandbox/trades/missing"), 404, "NOT_FOUND")


async def test_collateral_and_price_knobs(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    set_it = await api.put(f"/_sandbox/collateral/{STEAM_ID}", content=dumps({"collateral": Decimal("1000")}))
    assert data(set_it) == {"steamId": STEAM_ID, "collateral": 1000}
    # The override replaces the provider collateral, not the per-deposit cap ($50 unverified).
    assert data(await api.get("/client/inventory", headers=headers))["collateral"] == 50
    items = await depositable(api, headers)
    trade = data(await deposit(api, headers, items[-1:], isInstant=True))
    assert trade["preCredit"] == min(Decimal(50), trade["totalPrice"])
    assert data(await api.get(f"/_sandbox/users/{STEAM_ID}"))["providerCollateral"] == 1000
    await api.delete(f"/_sandbox/collateral/{STEAM_ID}")
    assert data(await api.get("/client/inventory", headers=headers))["collateral"] == 0  # 25 less the exposure

    listing = (await market(api, headers))[0]
    await api.put(f"/_sandbox/prices/{listing['id']}", content=dumps({"price": Decimal("1.23")}))
    assert (await market(api, headers))[0]["offer"]["price"] == Decimal("1.23")
    await api.delete(f"/_sandbox/prices/{listing['id']}")
    assert (await market(api, headers))[0]["offer"]["price"] == listing["offer"]["price"]
    error(await api.put(f"/_sandbox/prices/{listing['id']}", content=dumps({"price": 0})), 400, "VALIDATION_FAILED")
    error(await api.put(f"/_sandbox/prices/{listing['id']}", content=dumps({"price": "1"})), 400, "VALIDATION_FAILED")


async def test_the_wallet_follows_the_trades(api: httpx.AsyncClient) -> None:
    merchant = {"api-key": API_KEY}
    dep = await _new_deposit(api)
    await _advance(api, dep["id"])
    await _advance(api, dep["id"])  # hold
    wallet = data(await api.get("/v1/wallets/me/balance", headers=merchant))
    assert wallet["escrowBalance"] == dep["totalPrice"]
    await _advance(api, dep["id"])  # completed
    wd = await _new_withdrawal(api, count=1)
    await _advance(api, wd["id"])  # approved: funds locked
    response = await api.get("/v1/wallets/me/balance", headers=merchant)
    conforms("GET", "/v1/wallets/me/balance", response)
    wallet = data(response)
    assert wallet["pendingBalance"] == wd["totalPrice"]
    assert wallet["balance"] == Decimal("10000.00") + dep["totalPrice"] - wd["totalPrice"]
    assert wallet["escrowBalance"] == 0
