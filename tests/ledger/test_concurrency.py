"""Deliveries raced at once through `POST /webhooks/assetpay`: approvals serialise on the user's balance, events of
one trade on the trade row, and no interleaving loses, doubles or overdraws money."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.ledger.helpers import deliver_ok, entries, fund, problems, scalar
from tests.support import balance, deliver_trade, register_user, trade

D = Decimal


async def race(client: httpx.AsyncClient, payloads: list[dict[str, object]]) -> list[httpx.Response]:
    """Send every payload at once, each as its own delivery."""
    responses = await asyncio.gather(*(deliver_trade(client, payload) for payload in payloads))
    for response in responses:
        assert response.status_code == 200, response.text
    return list(responses)


async def test_hundred_approvals_against_a_balance_that_covers_37(
    bounded_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    client = bounded_client
    await register_user(client, "racer")
    await fund(client, "racer", "37.00")
    withdrawals = [trade(type="withdraw", status="initiated", total="1.00", user_id="racer") for _ in range(100)]

    answers = [r.json() for r in await race(client, withdrawals)]

    approved = [a for a in answers if a == {"action": "approve"}]
    rejected = [a for a in answers if a.get("action") == "reject"]
    assert len(approved) == 37
    assert len(rejected) == 63
    assert all(a["reason"] == "insufficient balance" for a in rejected), rejected
    assert await balance(client, "racer") == 0
    assert await scalar(engine, "SELECT min(balance_after) FROM ledger_entries") == 0  # never below zero
    ledger = await entries(client, "racer")
    assert [e.kind for e in ledger] == ["credit"] + ["debit"] * 37
    assert [e.balance_after for e in ledger] == [D(n) for n in range(37, -1, -1)]
    assert await scalar(engine, "SELECT count(*) FROM approval_verdicts WHERE verdict = 'approve'") == 37
    assert await scalar(engine, "SELECT count(*) FROM approval_verdicts WHERE verdict = 'reject'") == 63
    assert await scalar(engine, "SELECT count(*) FROM trades WHERE type = 'withdraw' AND posted = -1") == 37
    assert await problems(engine) == []


async def test_one_approval_asked_twenty_times_at_once_is_decided_once(
    bounded_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    client = bounded_client
    await register_user(client, "u1")
    await fund(client, "u1", "10.00")
    ask = trade(type="withdraw", status="initiated", total="5.00", user_id="u1")

    answers = [r.json() for r in await race(client, [ask] * 20)]  # twenty attempts, twenty delivery ids

    assert answers == [{"action": "approve"}] * 20
    assert await balance(client, "u1") == D("5.00")
    assert [e.amount for e in await entries(client, "u1")] == [D("10.00"), D("-5.00")]
    assert await scalar(engine, "SELECT count(*) FROM approval_verdicts") == 1
    assert await scalar(engine, "SELECT count(*) FROM trades WHERE type = 'withdraw'") == 1
    assert await scalar(engine, "SELECT count(*) FROM webhook_deliveries WHERE kind = 'approval'") == 20
    assert await problems(engine) == []


async def test_one_rejection_asked_twenty_times_at_once_gets_one_answer(
    bounded_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    client = bounded_client
    await register_user(client, "u1")
    await fund(client, "u1", "4.99")
    ask = trade(type="withdraw", status="initiated", total="5.00", user_id="u1")

    answers = [r.json() for r in await race(client, [ask] * 20)]

    assert answers == [{"action": "reject", "reason": "insufficient balance"}] * 20
    assert await balance(client, "u1") == D("4.99")
    assert await scalar(engine, "SELECT count(*) FROM approval_verdicts") == 1
    assert await scalar(engine, "SELECT count(*) FROM ledger_entries WHERE kind = 'debit'") == 0
    assert await problems(engine) == []


async def test_events_of_one_trade_raced_at_once_post_its_target_exactly(
    bounded_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    client = bounded_client
    await register_user(client, "u1")
    deposit = trade(status="active", total="100.00", pre="60.00", user_id="u1")
    # The very first delivery of the trade is among them: the row itself is created under the race.
    storm = [{**deposit, "status": status} for status in ("active", "hold", "completed", "hold", "initiated") * 8]

    await race(client, storm)

    assert await balance(client, "u1") == D("100.00")
    amounts = [e.amount for e in await entries(client, "u1")]
    assert amounts in ([D("100.00")], [D("60.00"), D("40.00")])
    assert await scalar(engine, "SELECT count(*) FROM trades") == 1
    assert await scalar(engine, "SELECT status FROM trades") == "completed"
    assert await problems(engine) == []


async def test_different_trades_of_one_user_in_parallel_lose_no_update(
    bounded_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    client = bounded_client
    await register_user(client, "u1")
    deposits = [trade(status="completed", total=D(n).scaleb(-2), user_id="u1") for n in range(1, 61)]

    await race(client, deposits)

    expected = sum((D(n).scaleb(-2) for n in range(1, 61)), start=D(0))
    assert await balance(client, "u1") == expected == D("18.30")
    running = D(0)
    for entry in await entries(client, "u1"):
        running += entry.amount
        assert entry.balance_after == running
    assert running == expected
    assert await problems(engine) == []


async def test_a_debit_racing_a_reversal_never_overdraws_on_approval(
    bounded_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    client = bounded_client
    await register_user(client, "u1")
    deposit = trade(status="hold", total="100.00", pre="60.00", user_id="u1")
    await deliver_ok(client, deposit)
    asks = [trade(type="withdraw", status="initiated", total="10.00", user_id="u1") for _ in range(10)]

    answers = [r.json() for r in await race(client, [*asks, {**deposit, "status": "reverted"}])]

    approvals = sum(1 for a in answers if a.get("action") == "approve")
    assert 0 <= approvals <= 6
    assert await balance(client, "u1") == D(-10 * approvals)  # the reversal may leave a debt, shown as it is
    for entry in await entries(client, "u1"):
        if entry.kind == "debit":
            assert entry.balance_after >= 0  # an approval only ever spends what is there
    assert await problems(engine) == []
