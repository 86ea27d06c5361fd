"""Chaos switches: duplicates, reordering, delays, lost attempts and timed-out approvals, each as the merchant would
meet it from the real gateway, reproducible from a seed; and the capped, jittered retry schedule."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from assetpay_sandbox import Sandbox, sandbox_of
from assetpay_sandbox.chaos import JITTER, ChaosError, ChaosSettings
from assetpay_sandbox.driver import DEFAULT_MAX_DELIVERY_ATTEMPTS, DEFAULT_RETRY_DELAYS
from tests.sandbox.helpers import (
    STEP_SECONDS,
    Clock,
    Receiver,
    client_token,
    data,
    deposit,
    depositable,
    error,
    market,
    withdraw,
)

RANK = {"initiated": 0, "active": 1, "hold": 2, "completed": 3}


@asynccontextmanager
async def chaotic(make_app: Callable[..., FastAPI], **options: Any) -> AsyncIterator[tuple[Sandbox, httpx.AsyncClient]]:
    app = make_app(**options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test") as api:
        yield sandbox_of(app), api
    await sandbox_of(app).stop()


async def _deposits(api: httpx.AsyncClient, count: int) -> list[str]:
    """One CS2 deposit for each of `count` users (the per-user guards stay out of the way)."""
    ids = []
    for n in range(count):
        headers = await client_token(api, f"765611980000001{n:02d}", client_id=f"user-{n}")
        trade = data(await deposit(api, headers, (await depositable(api, headers))[:1], isInstant=True))
        ids.append(trade["id"])
    return ids


async def _run(sandbox: Sandbox, clock: Clock, *, seconds: float, every: float = 1.0) -> None:
    """Let `seconds` pass on the hand-wound clock, ticking the driver as the background task would."""
    for _ in range(round(seconds / every)):
        clock.advance(every)
        await sandbox.tick()


async def _drain(sandbox: Sandbox) -> None:
    """Deliver until nothing waits (bounded: every callback gives up after its last attempt)."""
    for _ in range(DEFAULT_MAX_DELIVERY_ATTEMPTS * 4):
        if not sandbox.outbox:
            return
        await sandbox.deliver()
    raise AssertionError(f"{len(sandbox.outbox)} callbacks still waiting")


def _arrivals(receiver: Receiver) -> list[tuple[str, str, str]]:
    """(delivery id, trade id, status) of every request, in the order they reached the merchant."""
    return [(r.delivery_id, r.trade["id"], r.trade["status"]) for r in receiver.received()]


# -- the control route ------------------------------------------------------------------------------------------------


async def test_chaos_is_read_and_set_over_the_control_route(api: httpx.AsyncClient) -> None:
    calm = {"duplicateRate": 0.0, "reorder": False, "delay": 0.0, "dropRate": 0.0, "approvalTimeoutRate": 0.0}
    assert data(await api.get("/_sandbox/chaos")) == calm | {"seed": None}
    wanted = {"duplicateRate": 0.25, "reorder": True, "delay": 3, "dropRate": 0.5, "approvalTimeoutRate": 1}
    answered = data(await api.put("/_sandbox/chaos", json=wanted | {"seed": 42}))
    assert answered == wanted | {"seed": 42}
    assert data(await api.get("/_sandbox/chaos")) == answered
    # A switch left out is off; the seed stays what it was.
    changed = data(await api.put("/_sandbox/chaos", json={"dropRate": 0.1}))
    assert changed == calm | {"dropRate": Decimal("0.1"), "seed": 42}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"dropRate": 1.5}, {"dropRate"}),
        ({"duplicateRate": -0.1, "approvalTimeoutRate": 2}, {"duplicateRate", "approvalTimeoutRate"}),
        ({"delay": -1}, {"delay"}),
        ({"reorder": "yes"}, {"reorder"}),
        ({"dropRate": True}, {"dropRate"}),
        ({"explode": 1}, {"explode"}),
        ({"seed": "seven"}, {"seed"}),
    ],
)
async def test_bad_chaos_is_refused_naming_the_fields(
    api: httpx.AsyncClient, body: dict[str, Any], fields: set[str]
) -> None:
    refused = error(await api.put("/_sandbox/chaos", json=body), 400, "VALIDATION_FAILED")
    assert set(refused["fields"]) == fields
    assert data(await api.get("/_sandbox/chaos"))["dropRate"] == 0.0


def test_settings_refuse_impossible_values() -> None:
    with pytest.raises(ChaosError) as refused:
        ChaosSettings(drop_rate=float("nan"), delay=float("inf"))
    assert set(refused.value.fields) == {"dropRate", "delay"}
    assert ChaosSettings().calm
    assert not ChaosSettings(reorder=True).calm


# -- each switch ------------------------------------------------------------------------------------------------------


async def test_duplicates_repeat_a_delivered_callback_with_the_same_id_and_bytes(
    make_app: Callable[..., FastAPI], receiver: Receiver, clock: Clock
) -> None:
    async with chaotic(make_app, chaos=ChaosSettings(duplicate_rate=1.0), seed=1) as (sandbox, api):
        (trade_id,) = await _deposits(api, 1)
        await _run(sandbox, clock, seconds=4 * STEP_SECONDS + 2 * STEP_SECONDS)
        await _drain(sandbox)
        log = data(await api.get("/_sandbox/deliveries"))
    received = receiver.received()
    assert [r.trade["status"] for r in received].count("completed") == 2
    by_id: dict[str, list[bytes]] = {}
    for r in received:
        by_id.setdefault(r.delivery_id, []).append(r.raw)
    assert len(by_id) == 4, "one delivery id per status"
    for copies in by_id.values():
        assert len(copies) == 2, "every callback delivered exactly twice: a duplicate is not duplicated again"
        assert copies[0] == copies[1], "the same bytes, so the same signature input"
    assert {r.trade["id"] for r in received} == {trade_id}
    assert sum("duplicate" in entry["chaos"] for entry in log) == 4


async def test_delay_holds_each_callback_back_up_to_the_maximum(
    make_app: Callable[..., FastAPI], receiver: Receiver, clock: Clock
) -> None:
    sent_at: dict[str, datetime] = {}
    receiver.hook = lambda request: sent_at.setdefault(request.headers["x-assetpay-signature"].split(",")[1], clock())
    async with chaotic(make_app, chaos=ChaosSettings(delay=10), seed=3, step_seconds=1000) as (sandbox, api):
        started = clock()
        await _deposits(api, 5)
        await sandbox.tick()
        assert receiver.requests == [], "nothing goes out before its delay"
        await _run(sandbox, clock, seconds=10)
    waits = sorted((at - started).total_seconds() for at in sent_at.values())
    assert len(waits) == 5
    assert all(0 < wait <= 10 for wait in waits)
    assert waits[0] < waits[-1], "each callback draws its own delay"


async def test_reorder_delivers_stale_snapshots_and_other_trades_out_of_order(
    make_app: Callable[..., FastAPI], receiver: Receiver, clock: Clock
) -> None:
    async with chaotic(make_app, chaos=ChaosSettings(reorder=True), seed=5) as (sandbox, api):
        created = await _deposits(api, 5)
        await _run(sandbox, clock, seconds=6 * STEP_SECONDS)
        await _drain(sandbox)
    arrivals = _arrivals(receiver)
    assert len(arrivals) == len({a[0] for a in arrivals}) == 5 * 4, "every status delivered, once"
    statuses = {trade_id: [s for _, t, s in arrivals if t == trade_id] for trade_id in created}
    stale = [t for t, seen in statuses.items() if seen != sorted(seen, key=RANK.__getitem__)]
    assert stale, "an older snapshot of some trade arrived after a newer one"
    first_seen = list(dict.fromkeys(t for _, t, _ in arrivals))
    assert first_seen != created, "trades' callbacks are not sent in the order the trades were made"


async def test_dropped_attempts_are_retried_until_delivered(
    make_app: Callable[..., FastAPI], receiver: Receiver, clock: Clock
) -> None:
    async with chaotic(make_app, chaos=ChaosSettings(drop_rate=0.5), seed=11) as (sandbox, api):
        await _deposits(api, 4)
        await _run(sandbox, clock, seconds=6 * STEP_SECONDS)
        await _drain(sandbox)
        log = list(sandbox.log)
    lost = {entry["chaos"][0] for entry in log if entry["chaos"]}
    assert lost == {"not sent", "answer lost"}
    delivered = {e["deliveryId"] for e in log if e["httpStatus"] == 200 and not e["chaos"]}
    assert len(delivered) == 4 * 4, "every callback got through in the end"
    # A lost answer means the merchant did receive it: the retry is a duplicate with the same delivery id.
    answer_lost = {e["deliveryId"] for e in log if e["chaos"] == ["answer lost"]}
    arrivals = [r.delivery_id for r in receiver.received()]
    assert all(arrivals.count(delivery_id) >= 2 for delivery_id in answer_lost)
    not_sent = [e for e in log if e["chaos"] == ["not sent"]]
    assert all(e["httpStatus"] is None for e in not_sent)
    assert len(arrivals) == len(log) - len(not_sent)


async def test_timed_out_approvals_are_asked_again_then_rejected(
    make_app: Callable[..., FastAPI], receiver: Receiver, clock: Clock
) -> None:
    async with chaotic(make_app, chaos=ChaosSettings(approval_timeout_rate=1.0), seed=2) as (sandbox, api):
        headers = await client_token(api)
        trade = data(await withdraw(api, headers, (await market(api, headers))[:1]))
        await _run(sandbox, clock, seconds=10)
        asks = [r for r in receiver.received() if r.trade["status"] == "initiated"]
        assert len(asks) == 3, "three attempts, each answered (approve) and each treated as timed out"
        assert len({r.delivery_id for r in asks}) == 3, "every attempt has a new delivery id"
        assert sandbox.state.trades[trade["id"]].status == "failed"
        assert receiver.received()[-1].trade["error"] == "APPROVAL_TIMEOUT"
        approvals = [e for e in sandbox.log if e["kind"] == "approval"]
        assert [(e["verdict"], e["chaos"]) for e in approvals] == [("approve", ["approval timed out"])] * 3


async def test_the_same_seed_makes_the_same_run(
    make_app: Callable[..., FastAPI], receiver: Receiver, clock: Clock
) -> None:
    everything = ChaosSettings(duplicate_rate=0.3, reorder=True, delay=4, drop_rate=0.3)

    async def run(seed: int) -> list[tuple[int, str, list[str]]]:
        receiver.requests.clear()
        async with chaotic(make_app, chaos=everything, seed=seed) as (sandbox, api):
            created = await _deposits(api, 3)
            await _run(sandbox, clock, seconds=6 * STEP_SECONDS)
            await _drain(sandbox)
            return [(created.index(e["tradeId"]), e["status"], e["chaos"]) for e in sandbox.log]

    first = await run(7)
    assert await run(7) == first
    assert any(entry[2] for entry in first), "chaos did happen"


async def test_a_new_seed_over_the_route_restarts_the_sequence(api: httpx.AsyncClient, sandbox: Sandbox) -> None:
    data(await api.put("/_sandbox/chaos", json={"dropRate": 0.5, "seed": 9}))
    first = [sandbox.chaos.drop() for _ in range(20)]
    data(await api.put("/_sandbox/chaos", json={"dropRate": 0.5, "seed": 9}))
    assert [sandbox.chaos.drop() for _ in range(20)] == first
    assert {None, "not sent", "answer lost"} == set(first)


# -- the retry schedule -----------------------------------------------------------------------------------------------


async def test_retries_back_off_on_a_capped_jittered_schedule(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver, clock: Clock
) -> None:
    receiver.script = [httpx.Response(503)] * DEFAULT_MAX_DELIVERY_ATTEMPTS
    headers = await client_token(api)
    data(await deposit(api, headers, (await depositable(api, headers))[:1], isInstant=False))
    waits = []
    for _ in range(DEFAULT_MAX_DELIVERY_ATTEMPTS - 1):
        await sandbox.deliver()
        (waiting,) = sandbox.outbox
        waits.append((waiting.next_at - clock()).total_seconds())
    await sandbox.deliver()
    assert sandbox.outbox == [], "given up after the last attempt"
    assert len(receiver.requests) == DEFAULT_MAX_DELIVERY_ATTEMPTS
    schedule = [*DEFAULT_RETRY_DELAYS, *[DEFAULT_RETRY_DELAYS[-1]] * DEFAULT_MAX_DELIVERY_ATTEMPTS][: len(waits)]
    for wait, planned in zip(waits, schedule, strict=True):
        assert planned * (1 - JITTER) < wait <= planned
    assert max(waits) <= DEFAULT_RETRY_DELAYS[-1], "capped"
    assert len(set(waits)) == len(waits), "jittered"
