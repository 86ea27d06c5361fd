"""A database that is busy or slow costs a clear, retryable answer, never a hung request, a 500 or half a change.

Pool exhaustion: with every pooled connection held by a request stuck behind a row lock the test holds, a new
request waits DB_POOL_TIMEOUT_SECONDS and is answered 503 `DATABASE_BUSY` with Retry-After; once the lock goes,
everything answers again. A slow statement: a callback or an approval stuck behind a row lock past the lock (or
statement) timeout is answered 503 `DATABASE_TIMEOUT`, its transaction rolled back (the delivery is not recorded,
nothing posted, no verdict stored), and AssetPay's retry then applies it exactly once. Real HTTP to the app under
uvicorn, a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx

from assetpay_merchant.app import create_app
from assetpay_merchant.store.database import create_engine
from tests.faults.conftest import serve
from tests.faults.helpers import DEADLINE, Scratch, fetch, fresh_database, row_locked, until_waiting
from tests.support import app_settings, auth, balance, deliver_trade, ledger_problems, register_user, trade

LOCK_TRADE = "SELECT id FROM trades WHERE assetpay_id = $1 FOR UPDATE"
LOCK_BALANCE = "SELECT user_id FROM balances WHERE user_id = $1 FOR UPDATE"


@asynccontextmanager
async def backend(database_url: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with these settings under uvicorn on the database; a client to it (no request may hang: the
    client gives up after DEADLINE, which fails the test)."""
    app = create_app(app_settings(database_url).model_copy(update=settings))
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=DEADLINE) as http:
        yield http


def error_key(response: httpx.Response) -> str:
    key: str = response.json()["error"]["key"]
    return key


def assert_retryable(response: httpx.Response, key: str) -> None:
    """503 with this key, a message, and when to try again."""
    assert response.status_code == 503, response.text
    assert error_key(response) == key, response.text
    assert response.json()["error"]["message"]
    assert response.headers.get("Retry-After", "").isdigit(), response.headers


async def delivery_ids(database_url: str) -> set[str]:
    return {row["delivery_id"] for row in await fetch(database_url, "SELECT delivery_id FROM webhook_deliveries")}


async def books_are_clean(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        assert await ledger_problems(engine) == []
    finally:
        await engine.dispose()


async def on_hold(http: httpx.AsyncClient, user: str, total: str) -> dict[str, Any]:
    """A registered user with a CS2 deposit on hold (60 % credited); returns the trade as AssetPay sent it."""
    await register_user(http, user)
    held = trade(status="hold", total=total, user_id=user)
    assert (await deliver_trade(http, held)).status_code == 200
    return held


async def test_every_pooled_connection_busy_answers_503_database_busy_then_recovers(scratch: Scratch) -> None:
    database_url = await fresh_database(scratch, "fault_pool")
    settings = {
        "db_pool_size": 2,
        "db_max_overflow": 0,
        "db_pool_timeout_seconds": 1.0,
        "db_lock_timeout_seconds": 0,  # the held requests must outlast the pool timeout: no lock timeout here
        "db_statement_timeout_seconds": 0,
    }
    async with backend(database_url, **settings) as http:
        held = await on_hold(http, "pool-1", "100.00")
        completed = {**held, "status": "completed"}
        async with row_locked(database_url, LOCK_TRADE, held["id"]):
            # Two callbacks for the locked trade take both pooled connections and wait behind our lock.
            stuck = [asyncio.create_task(deliver_trade(http, completed)) for _ in range(2)]
            await until_waiting(database_url, 2)
            busy_balance = await http.get("/v1/balance", headers=auth("pool-1"))
            busy_callback_id = f"dlv-{uuid.uuid4()}"
            busy_callback = await deliver_trade(http, completed, delivery_id=busy_callback_id)
            assert not any(task.done() for task in stuck), "the held requests must still be waiting"
        answers = await asyncio.wait_for(asyncio.gather(*stuck), timeout=DEADLINE)

        assert_retryable(busy_balance, "DATABASE_BUSY")
        assert_retryable(busy_callback, "DATABASE_BUSY")
        assert busy_callback_id not in await delivery_ids(database_url), "a refused callback is not recorded"
        assert [answer.status_code for answer in answers] == [200, 200]
        # Recovered at once: no restart, nothing in between.
        assert await balance(http, "pool-1") == Decimal("100.00")
        again = await deliver_trade(http, completed, delivery_id=busy_callback_id)  # AssetPay's retry
        assert again.status_code == 200, again.text
        assert await balance(http, "pool-1") == Decimal("100.00")
        print(
            f"\npool exhausted: {busy_balance.status_code} {error_key(busy_balance)} and "
            f"{busy_callback.status_code} {error_key(busy_callback)} (Retry-After "
            f"{busy_balance.headers['Retry-After']}); held requests then {[a.status_code for a in answers]}"
        )
    await books_are_clean(database_url)


TIMEOUTS = {
    "lock_timeout": {"db_lock_timeout_seconds": 0.5, "db_statement_timeout_seconds": 0},
    "statement_timeout": {"db_lock_timeout_seconds": 0, "db_statement_timeout_seconds": 0.5},
}


async def test_a_callback_stuck_behind_a_lock_times_out_with_nothing_applied_and_its_retry_applies_once(
    scratch: Scratch,
) -> None:
    for name, settings in TIMEOUTS.items():
        database_url = await fresh_database(scratch, "fault_slow")
        async with backend(database_url, **settings) as http:
            held = await on_hold(http, "slow-1", "100.00")
            completed = {**held, "status": "completed"}
            delivery_id = f"dlv-{uuid.uuid4()}"
            async with row_locked(database_url, LOCK_TRADE, held["id"]):
                timed_out = await deliver_trade(http, completed, delivery_id=delivery_id)
                assert_retryable(timed_out, "DATABASE_TIMEOUT")
                # Nothing half-applied: no delivery recorded, nothing posted.
                assert delivery_id not in await delivery_ids(database_url)
                entries = await fetch(database_url, "SELECT amount FROM ledger_entries WHERE user_id = 'slow-1'")
                assert [row["amount"] for row in entries] == [Decimal("60.00")]
                # Only that trade is stuck: the rest of the API still answers.
                assert await balance(http, "slow-1") == Decimal("60.00")
            retried = await deliver_trade(http, completed, delivery_id=delivery_id)
            assert retried.status_code == 200, retried.text
            assert retried.json() == {"received": True}
            duplicate = await deliver_trade(http, completed, delivery_id=delivery_id)
            assert duplicate.json().get("duplicate") is True
            assert await balance(http, "slow-1") == Decimal("100.00")
            print(
                f"\n{name}: {timed_out.status_code} {error_key(timed_out)}, retry {retried.status_code}, "
                f"balance 100.00 once"
            )
        await books_are_clean(database_url)


async def test_an_approval_stuck_behind_the_balance_lock_times_out_without_a_verdict_and_is_decided_once(
    scratch: Scratch,
) -> None:
    database_url = await fresh_database(scratch, "fault_slow_approval")
    async with backend(database_url, db_lock_timeout_seconds=0.5, db_statement_timeout_seconds=0) as http:
        await register_user(http, "slow-2")
        funding = trade(status="completed", total="50.00", pre="0", user_id="slow-2")
        assert (await deliver_trade(http, funding)).status_code == 200
        ask = trade(type="withdraw", status="initiated", total="30.00", user_id="slow-2")

        def attempt() -> Callable[[], Any]:
            # Every approval attempt carries a new delivery id (ASSETPAY.md §6).
            return lambda: deliver_trade(http, ask, delivery_id=f"ask-{uuid.uuid4()}")

        async with row_locked(database_url, LOCK_BALANCE, "slow-2"):
            timed_out = await attempt()()
            assert_retryable(timed_out, "DATABASE_TIMEOUT")  # not a 2xx: AssetPay does not take it as approval
            verdicts = await fetch(database_url, "SELECT verdict FROM approval_verdicts")
            assert verdicts == [], "no verdict is stored by an attempt that timed out"
        answers = [await attempt()() for _ in range(3)]
        assert [answer.json() for answer in answers] == [{"action": "approve"}] * 3
        verdicts = await fetch(database_url, "SELECT verdict, amount FROM approval_verdicts")
        assert [(row["verdict"], row["amount"]) for row in verdicts] == [("approve", Decimal("30.00"))]
        entries = await fetch(database_url, "SELECT amount FROM ledger_entries WHERE user_id = 'slow-2' ORDER BY id")
        assert [row["amount"] for row in entries] == [Decimal("50.00"), Decimal("-30.00")]
        assert await balance(http, "slow-2") == Decimal("20.00")
        print(
            f"\napproval behind the balance lock: {timed_out.status_code} {error_key(timed_out)}; "
            "then approved once, debited once"
        )
    await books_are_clean(database_url)


async def test_a_request_waiting_for_the_pool_gives_up_in_bounded_time_even_with_no_timeouts_on_statements(
    scratch: Scratch,
) -> None:
    """The pool timeout alone bounds a request that cannot get a connection (the statement timeouts are off)."""
    database_url = await fresh_database(scratch, "fault_pool_bound")
    settings = {
        "db_pool_size": 1,
        "db_max_overflow": 0,
        "db_pool_timeout_seconds": 0.5,
        "db_lock_timeout_seconds": 0,
        "db_statement_timeout_seconds": 0,
    }
    async with backend(database_url, **settings) as http:
        held = await on_hold(http, "pool-2", "10.00")
        async with row_locked(database_url, LOCK_TRADE, held["id"]):
            stuck = asyncio.create_task(deliver_trade(http, {**held, "status": "completed"}))
            await until_waiting(database_url, 1)
            started = time.monotonic()
            answers = [await http.get("/v1/balance", headers=auth("pool-2")) for _ in range(5)]
            waited = time.monotonic() - started
            assert not stuck.done()
        assert (await asyncio.wait_for(stuck, timeout=DEADLINE)).status_code == 200
        for answer in answers:
            assert_retryable(answer, "DATABASE_BUSY")
        assert await balance(http, "pool-2") == Decimal("10.00")
        print(f"\n5 requests with the only connection held: all 503 DATABASE_BUSY, {waited:.2f} s in all")
