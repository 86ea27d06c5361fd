"""The lifecycle driver: trades move on, every callback is signed like AssetPay's and parses as our intake parses
it, failed deliveries are retried, and withdrawals wait for the merchant's approval."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from assetpay_merchant.core.policy import Status, TradeType
from assetpay_merchant.gateway.callbacks import CallbackKind
from assetpay_sandbox import Sandbox, sandbox_of
from assetpay_sandbox.driver import utc_now
from tests.sandbox.helpers import (
    STEP_SECONDS,
    Clock,
    Receiver,
    client_token,
    data,
    deposit,
    depositable,
    dumps,
    market,
    withdraw,
)


async def _deposit(api: httpx.AsyncClient, *, game: int = 730, instant: bool = True, count: int = 2) -> str:
    headers = await client_token(api)
    items = (await depositable(api, headers, game=game))[:count]
    body_game = {"game": str(game)} if game != 730 else {}
    trade = data(await deposit(api, headers, items, isInstant=instant, externalId=f"dep-{game}", **body_game))
    trade_id: str = trade["id"]
    return trade_id


async def _withdraw(api: httpx.AsyncClient, count: int = 2) -> str:
    headers = await client_token(api, client_id="user-7")
    trade = data(await withdraw(api, headers, (await market(api, headers))[:count], externalId="wd-1"))
    trade_id: str = trade["id"]
    return trade_id


# -- deposits ---------------------------------------------------------------------------------------------------------


async def test_a_cs2_deposit_goes_through_hold(api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver) -> None:
    trade_id = await _deposit(api)
    for _ in range(4):
        await sandbox.step()
    events = receiver.received()
    assert [e.trade["status"] for e in events] == ["initiated", "active", "hold", "completed"]
    assert len({e.delivery_id for e in events}) == 4, "every event has its own delivery id"
    for event in events:
        assert event.callback.kind is CallbackKind.TRADE
        assert event.callback.trade is not None
        assert event.callback.trade.id == trade_id
        assert event.callback.trade.type is TradeType.DEPOSIT
        trade = event.trade
        assert trade["preCredit"] + trade["pendingCredit"] == trade["totalPrice"]
        assert trade["totalPrice"] == sum(i["offer"]["price"] * i["amount"] for i in trade["items"])
        assert trade["externalClientUserId"] == "user-1"
    active, hold, completed = (e.trade for e in events[1:])
    assert "offerID" not in events[0].trade
    assert active["offerID"]
    assert active["activeAt"] == "2026-07-31T12:00:00.000Z"
    assert hold["holdEndDate"] == "2026-07-31T12:00:05.000Z"
    assert completed["offerID"] == active["offerID"]
    # The sandbox is done with it: nothing moves any more.
    await sandbox.step()
    assert len(receiver.requests) == 4
    assert sandbox.state.trades[trade_id].is_final


async def test_a_rust_deposit_has_no_hold(api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver) -> None:
    trade_id = await _deposit(api, game=252490)
    for _ in range(3):
        await sandbox.step()
    assert receiver.statuses(trade_id) == ["initiated", "active", "completed"]
    completed = receiver.received()[-1].trade
    assert completed["preCredit"] == completed["totalPrice"]
    assert completed["pendingCredit"] == 0


async def test_tick_follows_the_clock(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver, clock: Clock
) -> None:
    trade_id = await _deposit(api)
    await sandbox.tick()
    assert receiver.statuses(trade_id) == ["initiated"]  # announced at once, moved on only after a step
    clock.advance(STEP_SECONDS - 1)
    await sandbox.tick()
    assert receiver.statuses(trade_id) == ["initiated"]
    clock.advance(1)
    await sandbox.tick()
    assert receiver.statuses(trade_id) == ["initiated", "active"]
    for _ in range(2):
        clock.advance(STEP_SECONDS)
        await sandbox.tick()
    assert receiver.statuses(trade_id) == ["initiated", "active", "hold", "completed"]


async def test_money_is_written_as_exact_json_numbers(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    headers = await client_token(api)
    item = (await depositable(api, headers))[0]
    await api.put(f"/_sandbox/prices/{item['id']}", content=b'{"price": 0.1}')
    body = {"items": [{"itemId": item["id"], "price": Decimal("0.1")}], "isInstant": False}
    data(await api.post("/client/trading/deposit", content=dumps(body), headers=headers))
    await sandbox.deliver()
    (event,) = receiver.received()
    assert b'"totalPrice":0.1,' in event.raw
    assert b'"offer":{"price":0.1}' in event.raw
    assert event.trade["totalPrice"] == Decimal("0.1")


# -- callback delivery ------------------------------------------------------------------------------------------------


async def test_failed_callbacks_are_retried_with_the_same_delivery_id(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver, clock: Clock
) -> None:
    receiver.script = [httpx.Response(500), httpx.ConnectError("refused"), httpx.Response(401)]
    trade_id = await _deposit(api)
    await sandbox.tick()  # attempt 1: 500
    clock.advance(0.5)
    await sandbox.tick()  # backoff: not yet
    assert len(receiver.requests) == 1
    clock.advance(0.5)
    await sandbox.tick()  # attempt 2: connection refused
    clock.advance(2)
    await sandbox.tick()  # attempt 3: 401
    await sandbox.deliver()  # forced, ignoring the 5 s backoff: delivered
    events = receiver.received()
    assert [e.trade["status"] for e in events] == ["initiated"] * 4
    assert len({e.delivery_id for e in events}) == 1, "a regular event keeps its delivery id"
    assert len({e.raw for e in events}) == 1, "and its exact bytes"
    assert [e.timestamp for e in events] == [
        "2026-07-31T12:00:00.000Z",
        "2026-07-31T12:00:01.000Z",
        "2026-07-31T12:00:03.000Z",
        "2026-07-31T12:00:03.000Z",
    ]
    assert sandbox.outbox == []
    log = data(await api.get("/_sandbox/deliveries"))
    assert [entry["httpStatus"] for entry in log] == [500, None, 401, 200]
    assert log[1]["error"].startswith("ConnectError")
    assert {entry["tradeId"] for entry in log} == {trade_id}


async def test_a_callback_is_given_up_after_the_last_attempt(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    receiver.script = [httpx.Response(503)] * 12
    await _deposit(api)
    for _ in range(12):
        await sandbox.deliver()
    assert len(receiver.requests) == 12
    assert sandbox.outbox == []
    await sandbox.deliver()
    assert len(receiver.requests) == 12


async def test_events_keep_flowing_while_one_is_retried(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    receiver.script = [httpx.Response(500)]
    trade_id = await _deposit(api)
    await sandbox.step()  # initiated fails, active arrives
    await sandbox.step()  # initiated retried, hold arrives
    assert receiver.statuses(trade_id) == ["initiated", "active", "initiated", "hold"]


# -- withdrawal approvals ---------------------------------------------------------------------------------------------


async def test_an_approved_withdrawal_completes(api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver) -> None:
    trade_id = await _withdraw(api)
    for _ in range(5):
        await sandbox.step()
    events = receiver.received()
    assert [e.trade["status"] for e in events] == ["initiated", "pending", "active", "hold", "completed"]
    ask = events[0]
    assert ask.callback.kind is CallbackKind.APPROVAL
    assert ask.callback.trade is not None
    assert ask.callback.trade.asks_for_approval
    assert ask.trade["type"] == "withdraw"
    assert ask.trade["externalClientUserId"] == "user-7"
    assert ask.trade["externalId"] == "wd-1"
    for event in events[1:]:
        assert event.callback.kind is CallbackKind.TRADE
        assert {i["status"] for i in event.trade["items"]} == {event.trade["status"]}
    assert events[-1].callback.trade is not None
    assert events[-1].callback.trade.status is Status.COMPLETED
    assert sandbox.state.trades[trade_id].approved


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200),
        httpx.Response(204),
        httpx.Response(200, json={"action": "approve"}),
        httpx.Response(200, content=b"not json"),
    ],
)
async def test_any_2xx_without_reject_approves(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver, answer: httpx.Response
) -> None:
    receiver.approvals = [answer]
    trade_id = await _withdraw(api)
    await sandbox.step()
    assert receiver.statuses(trade_id) == ["initiated", "pending"]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"action": "reject", "reason": "insufficient balance"}),
        httpx.Response(202, json={"action": "REJECT"}),
        httpx.Response(400),
        httpx.Response(402, json={"action": "approve"}),
        httpx.Response(404),
    ],
)
async def test_a_reject_body_or_a_4xx_rejects(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver, answer: httpx.Response
) -> None:
    receiver.approvals = [answer]
    trade_id = await _withdraw(api)
    await sandbox.step()
    assert receiver.statuses(trade_id) == ["initiated", "failed"]
    failed = receiver.received()[-1]
    assert failed.callback.kind is CallbackKind.TRADE
    assert failed.trade["error"] == "MERCHANT_REJECTED"
    assert {i["status"] for i in failed.trade["items"]} == {"failed"}
    # Nothing was bought, and it never moves again.
    await sandbox.step()
    assert receiver.statuses(trade_id) == ["initiated", "failed"]
    assert not sandbox.state.trades[trade_id].approved


async def test_three_failed_attempts_end_in_approval_timeout(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver, clock: Clock
) -> None:
    receiver.approvals = [httpx.Response(500), httpx.ReadTimeout("slow"), httpx.Response(429)]
    trade_id = await _withdraw(api)
    await sandbox.tick()  # attempt 1
    await sandbox.tick()  # not due yet
    assert len(receiver.requests) == 1
    clock.advance(2)
    await sandbox.tick()  # attempt 2
    clock.advance(4)
    await sandbox.tick()  # not due yet (5 s)
    assert len(receiver.requests) == 2
    clock.advance(1)
    await sandbox.tick()  # attempt 3, then the failed event
    events = receiver.received()
    assert [e.trade["status"] for e in events] == ["initiated", "initiated", "initiated", "failed"]
    assert len({e.delivery_id for e in events[:3]}) == 3, "every approval attempt has a new delivery id"
    assert events[-1].trade["error"] == "APPROVAL_TIMEOUT"
    assert sandbox.state.trades[trade_id].status == "failed"


@pytest.mark.parametrize("failure", [httpx.Response(408), httpx.Response(503), httpx.ConnectError("down")])
async def test_a_failed_attempt_is_retried_and_may_still_approve(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver, failure: httpx.Response | Exception
) -> None:
    receiver.approvals = [failure]
    trade_id = await _withdraw(api)
    await sandbox.step()
    assert sandbox.state.trades[trade_id].status == "initiated"
    await sandbox.step()
    assert receiver.statuses(trade_id) == ["initiated", "initiated", "pending"]


async def test_a_withdrawal_cancelled_while_asking_is_not_approved(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    trade_id = await _withdraw(api)
    trade = sandbox.state.trades[trade_id]
    receiver.hook = lambda request: sandbox.state.cancel(trade, None, sandbox.clock())
    await sandbox.step()  # the user cancels while the merchant is approving
    assert trade.status == "canceled"
    assert not trade.approved
    assert receiver.statuses(trade_id) == ["initiated", "canceled"]


# -- the background driver --------------------------------------------------------------------------------------------


async def test_the_background_driver_runs_trades_to_the_end(
    make_app: Callable[..., FastAPI], receiver: Receiver
) -> None:
    app = make_app(step_seconds=0.005, clock=utc_now)  # real time for this one test: the driver sleeps
    sandbox = sandbox_of(app)
    receiver.clock = utc_now
    done = asyncio.Event()
    receiver.hook = lambda request: done.set() if b'"status":"completed"' in request.content else None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test") as api:
        await sandbox.start()
        await sandbox.start()  # idempotent
        assert sandbox.running
        assert data(await api.get("/_sandbox"))["running"] is True
        trade_id = await _deposit(api)
        await asyncio.wait_for(done.wait(), timeout=10)
        await sandbox.stop()
        await sandbox.stop()  # idempotent
        assert not sandbox.running
    assert receiver.statuses(trade_id) == ["initiated", "active", "hold", "completed"]


async def test_the_app_lifespan_starts_and_stops_the_driver(make_app: Callable[..., FastAPI]) -> None:
    app = make_app()
    async with LifespanManager(app):
        assert sandbox_of(app).running
    assert not sandbox_of(app).running
