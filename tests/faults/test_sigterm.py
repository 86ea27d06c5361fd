"""SIGTERM drains: the requests in flight finish with their real answers, new connections are refused, and the
process exits, also when a request would outlast SHUTDOWN_GRACE_SECONDS (it is cancelled and rolled back, and
AssetPay's retry applies it once after the restart).

A real `assetpay-merchant serve`; the slow requests are callbacks waiting on a trade's row lock the test holds; the
background reconciliation job is caught in a call to an AssetPay that never answers, and must not hold the exit up.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.helpers import (
    DEADLINE,
    Scratch,
    eventually,
    fetch,
    fresh_database,
    ledger_check,
    row_locked,
    until_waiting,
)
from tests.faults.stub_assetpay import StubAssetPay, stub_assetpay
from tests.processes import ServeProcess
from tests.support import balance, deliver_trade, register_user, trade

LOCK_TRADE = "SELECT id FROM trades WHERE assetpay_id = $1 FOR UPDATE"
IN_FLIGHT = 4
# After its graceful shutdown uvicorn re-raises the signal it caught, so a drained `serve` ends "killed by SIGTERM".
CLEAN_EXITS = (0, -signal.SIGTERM)


@pytest.fixture
async def hanging_assetpay() -> AsyncIterator[StubAssetPay]:
    async with stub_assetpay("hang") as stub:
        yield stub


def server_for(database_url: str, workdir: Path, stub: StubAssetPay, **env: str) -> ServeProcess:
    """serve with a reconciliation pass every second over every trade in flight, all of them stuck at AssetPay, and
    no lock timeout: the held callbacks wait exactly as long as the test holds the lock."""
    return ServeProcess(
        database_url,
        workdir,
        ASSETPAY_BASE_URL=stub.base_url,
        ASSETPAY_READ_TIMEOUT_SECONDS="300",
        ASSETPAY_REQUEST_DEADLINE_SECONDS="300",
        RECONCILE_INTERVAL_SECONDS="1",
        RECONCILE_AFTER_SECONDS="0",
        DB_LOCK_TIMEOUT_SECONDS="0",
        DB_STATEMENT_TIMEOUT_SECONDS="0",
        **env,
    )


async def deposit_on_hold(http: httpx.AsyncClient, user: str) -> dict[str, Any]:
    await register_user(http, user)
    held = trade(status="hold", total="100.00", user_id=user)
    assert (await deliver_trade(http, held)).status_code == 200
    return held


async def refused(base_url: str) -> bool:
    """Whether a new connection is refused (the listening socket is closed)."""
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as fresh:
            await fresh.get("/healthz")
    except httpx.ConnectError:
        return True
    return False


async def test_sigterm_lets_requests_in_flight_finish_refuses_new_ones_and_exits(
    scratch: Scratch, tmp_path: Path, hanging_assetpay: StubAssetPay
) -> None:
    database_url = await fresh_database(scratch, "fault_sigterm")
    with server_for(database_url, tmp_path, hanging_assetpay, SHUTDOWN_GRACE_SECONDS="30") as server:
        server.start()
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=DEADLINE) as http:
            held = await deposit_on_hold(http, "term-1")

            async def reconciling() -> bool:
                return bool(hanging_assetpay.requests)

            await eventually(reconciling, "the reconciliation job calling AssetPay")
            completed = {**held, "status": "completed"}
            ids = [f"dlv-{uuid.uuid4()}" for _ in range(IN_FLIGHT)]
            async with row_locked(database_url, LOCK_TRADE, held["id"]):
                in_flight = [asyncio.create_task(deliver_trade(http, completed, delivery_id=i)) for i in ids]
                await until_waiting(database_url, IN_FLIGHT)
                terminated = time.monotonic()
                server.terminate()
                await eventually(lambda: refused(server.base_url), "new connections refused after SIGTERM")
                still_running = server.process is not None and server.process.poll() is None
                still_waiting = not any(task.done() for task in in_flight)
            answers = await asyncio.wait_for(asyncio.gather(*in_flight), timeout=DEADLINE)
            code = await asyncio.to_thread(server.wait, DEADLINE)
            exited = time.monotonic() - terminated

    assert still_running, "serve must wait for the requests in flight"
    assert still_waiting, "the requests in flight were waiting on the lock when new connections were refused"
    assert [answer.status_code for answer in answers] == [200] * IN_FLIGHT, [a.text for a in answers]
    assert all(answer.json()["received"] is True for answer in answers)
    assert code in CLEAN_EXITS, server.log_tail()
    recorded = await fetch(database_url, "SELECT delivery_id FROM webhook_deliveries WHERE delivery_id = ANY($1)", ids)
    assert len(recorded) == IN_FLIGHT
    entries = await fetch(database_url, "SELECT amount FROM ledger_entries WHERE user_id = 'term-1' ORDER BY id")
    assert [row["amount"] for row in entries] == [Decimal("60.00"), Decimal("40.00")]
    check = ledger_check(database_url)
    assert check.returncode == 0, check.stdout + check.stderr
    print(
        f"\nSIGTERM with {IN_FLIGHT} callbacks in flight and reconciliation stuck at AssetPay: new connections "
        f"refused, the {IN_FLIGHT} answered {[a.status_code for a in answers]}, exit {code} "
        f"{exited:.2f} s after SIGTERM"
    )


async def test_a_request_outlasting_the_grace_is_cancelled_rolled_back_and_applied_once_after_restart(
    scratch: Scratch, tmp_path: Path, hanging_assetpay: StubAssetPay
) -> None:
    database_url = await fresh_database(scratch, "fault_sigterm_grace")
    with server_for(database_url, tmp_path, hanging_assetpay, SHUTDOWN_GRACE_SECONDS="1") as server:
        server.start()
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=DEADLINE) as http:
            held = await deposit_on_hold(http, "term-2")
            completed = {**held, "status": "completed"}
            delivery_id = f"dlv-{uuid.uuid4()}"
            async with row_locked(database_url, LOCK_TRADE, held["id"]):
                stuck = asyncio.create_task(deliver_trade(http, completed, delivery_id=delivery_id))
                await until_waiting(database_url, 1)
                terminated = time.monotonic()
                server.terminate()
                # We never let go while it runs: the grace must end it anyway.
                code = await asyncio.to_thread(server.wait, DEADLINE)
                exited = time.monotonic() - terminated
                outcome: Any = (await asyncio.gather(stuck, return_exceptions=True))[0]
            recorded = await fetch(database_url, "SELECT 1 FROM webhook_deliveries WHERE delivery_id = $1", delivery_id)
            assert recorded == [], "a cancelled callback is rolled back, not recorded"

            server.start()  # same port, same URL: AssetPay retries the delivery
            await asyncio.to_thread(server.wait_ready)
            retried = await deliver_trade(http, completed, delivery_id=delivery_id)
            again = await deliver_trade(http, completed, delivery_id=delivery_id)
            final = await balance(http, "term-2")

    answered = outcome.status_code if isinstance(outcome, httpx.Response) else type(outcome).__name__
    assert not (isinstance(outcome, httpx.Response) and outcome.is_success), "a cancelled request is not a 2xx"
    assert code in CLEAN_EXITS, server.log_tail()
    assert retried.status_code == 200, retried.text
    assert again.json().get("duplicate") is True
    assert final == Decimal("100.00")
    entries = await fetch(database_url, "SELECT amount FROM ledger_entries WHERE user_id = 'term-2' ORDER BY id")
    assert [row["amount"] for row in entries] == [Decimal("60.00"), Decimal("40.00")]
    check = ledger_check(database_url)
    assert check.returncode == 0, check.stdout + check.stderr
    print(
        f"\nSIGTERM with a callback held past SHUTDOWN_GRACE_SECONDS=1: it got {answered}, exit {code} "
        f"{exited:.2f} s after SIGTERM; after the restart its retry was applied once"
    )
