"""The service with its pool behind PgBouncer in transaction mode (DATABASE_POOLER=pgbouncer) and its listener
straight to PostgreSQL (LISTEN_DATABASE_URL), served on a real port: callbacks are applied exactly once with the
books exact, also when many client connections take turns on a few server sessions, and the live events reach
WebSocket clients, of this process and of others."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.app import create_app
from assetpay_merchant.config import Settings
from assetpay_merchant.store.database import create_engine
from tests.faults.conftest import serve, settings_for
from tests.live.conftest import Live, live
from tests.pgbouncer.conftest import SERVER_POOL_SIZE, PgBouncer
from tests.processes import serve_process
from tests.support import ADMIN_KEY, TRADE_URL, auth, deliver, ledger_problems, new_steam_id, trade


def bounced_settings(pgbouncer: PgBouncer, database_url: str, **overrides: Any) -> Settings:
    """The test settings with the pool through PgBouncer and the listener straight to PostgreSQL."""
    values = settings_for(pgbouncer.url(database_url)).model_dump() | {
        "database_pooler": "pgbouncer",
        "listen_database_url": database_url,
        "reconcile_interval_seconds": 0,
        "db_pool_size": 16,
        "db_max_overflow": 16,
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


@pytest.fixture
async def direct(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine straight to PostgreSQL, for checking the books."""
    engine = create_engine(database_url, poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture
async def bounced(pgbouncer: PgBouncer, database_url: str) -> AsyncIterator[tuple[FastAPI, str]]:
    """The app through PgBouncer, served: (the app, `http://host:port`)."""
    app = create_app(bounced_settings(pgbouncer, database_url))
    async with serve(app) as base:
        yield app, base


async def register(http: httpx.AsyncClient, user_id: str) -> str:
    steam_id = new_steam_id()
    answer = await http.put(
        f"/v1/users/{user_id}", json={"steamId": steam_id, "tradeUrl": TRADE_URL}, headers={"X-Admin-Key": ADMIN_KEY}
    )
    assert answer.status_code in (200, 201), answer.text
    return steam_id


async def balance(http: httpx.AsyncClient, user_id: str) -> Decimal:
    answer = await http.get("/v1/balance", headers=auth(user_id))
    assert answer.status_code == 200, answer.text
    return Decimal(answer.json()["available"])


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar_one()


async def events_until_balance(connection: Live, available: str) -> list[dict[str, Any]]:
    """The events up to the balance.updated showing `available`."""
    received = []
    while True:
        message = await connection.next()
        received.append(message)
        if message["type"] == "balance.updated" and message["data"]["available"] == available:
            return received


def test_the_pgbouncer_pooler_needs_a_direct_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOLER", "pgbouncer")
    url = "postgresql://app@pgbouncer:6432/assetpay"
    for listen in (None, "", " "):
        with pytest.raises(ValidationError, match="LISTEN_DATABASE_URL must be set"):
            Settings(_env_file=None, database_url=url, listen_database_url=listen)  # type: ignore[call-arg]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url,
        listen_database_url="postgresql://app@postgres:5432/assetpay",
    )
    assert settings.database_pooler == "pgbouncer"
    assert Settings(_env_file=None, database_pooler="none").database_pooler == "none"  # type: ignore[call-arg]


async def test_callbacks_are_applied_once_and_reach_the_live_client(
    bounced: tuple[FastAPI, str], direct: AsyncEngine
) -> None:
    _, base = bounced
    async with httpx.AsyncClient(base_url=base) as http:
        steam_id = await register(http, "pb-1")
        async with live(base.removeprefix("http://"), "pb-1") as connection:
            assert (await connection.next())["type"] == "ready"
            held = trade(trade_id="pb-t1", status="hold", total="100.00", pre="60.00", user_id="pb-1")
            completed = {**held, "status": "completed"}
            for body, delivery in [(held, "pb-d1"), (held, "pb-d1"), (completed, "pb-d2"), (completed, "pb-d3")]:
                answer = await deliver(http, {"trade": body}, delivery_id=delivery)
                assert answer.status_code == 200, answer.text
            withdrawal = trade(
                trade_id="pb-w1", type="withdraw", status="initiated", total="30.00", user_id="pb-1", steam_id=steam_id
            )
            for delivery in ("pb-ask1", "pb-ask2", "pb-ask1"):
                answer = await deliver(http, {"trade": withdrawal}, delivery_id=delivery)
                assert answer.json() == {"action": "approve"}, answer.text
            received = await events_until_balance(connection, "70.00")
            assert await connection.nothing_within(0.3)
        assert await balance(http, "pb-1") == Decimal("70.00")
    assert [message["id"] for message in received] == list(range(1, len(received) + 1))
    assert [m["data"]["available"] for m in received if m["type"] == "balance.updated"] == ["60.00", "100.00", "70.00"]
    assert await ledger_problems(direct) == []
    assert await scalar(direct, "SELECT count(*) FROM ledger_entries WHERE user_id = 'pb-1'") == 3
    assert await scalar(direct, "SELECT count(*) FROM approval_verdicts") == 1
    assert await scalar(direct, "SELECT last_event_id FROM balances WHERE user_id = 'pb-1'") == len(received)


async def test_concurrent_callbacks_take_turns_on_a_few_server_sessions(
    bounced: tuple[FastAPI, str], direct: AsyncEngine, pgbouncer: PgBouncer, database_url: str
) -> None:
    """50 deliveries through 16 concurrent senders: many more client connections than PgBouncer's server
    sessions, so consecutive transactions of one client run on different sessions (named statements break)."""
    app, base = bounced
    users = [f"pb-many-{n}" for n in range(4)]
    deliveries: list[tuple[dict[str, Any], str]] = []
    expected = dict.fromkeys(users, Decimal(0))
    for n in range(20):
        user = users[n % len(users)]
        total = Decimal(n + 1) + Decimal("0.25")
        held = trade(trade_id=f"pb-many-t{n}", status="hold", total=total, user_id=user)
        deliveries += [(held, f"pb-many-h{n}"), ({**held, "status": "completed"}, f"pb-many-c{n}")]
        expected[user] += total
    rng = random.Random(20)
    deliveries += rng.sample(deliveries, 10)  # the same deliveries again (AssetPay retrying)
    rng.shuffle(deliveries)
    assert len(deliveries) == 50

    async with httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_connections=16)) as http:
        for user in users:
            await register(http, user)
        async with live(base.removeprefix("http://"), users[0]) as connection:
            assert (await connection.next())["type"] == "ready"
            queue: asyncio.Queue[tuple[dict[str, Any], str]] = asyncio.Queue()
            for item in deliveries:
                queue.put_nowait(item)
            answers: list[int] = []

            async def sender() -> None:
                while not queue.empty():
                    body, delivery = queue.get_nowait()
                    answers.append((await deliver(http, {"trade": body}, delivery_id=delivery)).status_code)

            await asyncio.gather(*(sender() for _ in range(16)))
            assert answers == [200] * 50
            received = await events_until_balance(connection, f"{expected[users[0]]:.2f}")
            assert await connection.nothing_within(0.3)
        assert {user: await balance(http, user) for user in users} == expected
        resources: Resources = app.state.resources
        client_connections = resources.database.engine.pool.checkedin()  # type: ignore[attr-defined]
    assert client_connections > SERVER_POOL_SIZE
    assert [message["id"] for message in received] == list(range(1, len(received) + 1))
    assert await ledger_problems(direct) == []
    through = create_engine(pgbouncer.url(database_url), transaction_pooling=True, poolclass=NullPool)
    try:  # the ops check (a snapshot read with a cursor) through PgBouncer finds the same
        assert await ledger_problems(through) == []
    finally:
        await through.dispose()
    assert await scalar(direct, "SELECT count(*) FROM webhook_deliveries") == 40
    assert await scalar(direct, "SELECT count(*) FROM trades WHERE status = 'completed'") == 20


async def test_events_reach_clients_of_other_processes_behind_pgbouncer(
    bounced: tuple[FastAPI, str], pgbouncer: PgBouncer, database_url: str, tmp_path: Path
) -> None:
    """`serve --workers 2` through PgBouncer too: a callback any process applies reaches every client of every
    process (NOTIFY on commit, through PgBouncer; LISTEN on each process's direct connection)."""
    _, base = bounced
    here = base.removeprefix("http://")
    environment = {"DATABASE_POOLER": "pgbouncer", "LISTEN_DATABASE_URL": database_url}
    with serve_process(pgbouncer.url(database_url), tmp_path, workers=2, **environment) as there:
        async with httpx.AsyncClient(base_url=base) as http:
            await register(http, "pb-xp")
        sockets = [live(here, "pb-xp"), *(live(there, "pb-xp") for _ in range(4))]
        connections = [await socket.__aenter__() for socket in sockets]
        try:
            for connection in connections:
                assert (await connection.next())["type"] == "ready"
            for n, address in enumerate([there, here, there]):
                async with httpx.AsyncClient(base_url=f"http://{address}") as http:
                    body = {"trade": trade(trade_id=f"pb-xp-{uuid.uuid4()}", status="completed", total=f"{n + 1}.00")}
                    body["trade"]["externalClientUserId"] = "pb-xp"
                    answer = await deliver(http, body)
                    assert answer.status_code == 200, answer.text
            for connection in connections:
                received = [await connection.next() for _ in range(6)]
                assert [message["id"] for message in received] == [1, 2, 3, 4, 5, 6]
                assert received[-1]["data"]["available"] == "6.00"
                assert await connection.nothing_within(0.2)
        finally:
            for socket in sockets:
                await socket.__aexit__(None, None, None)
