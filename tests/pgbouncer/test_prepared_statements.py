"""The store through PgBouncer in transaction mode: why named prepared statements break there, and that the
engine made with `transaction_pooling` (DATABASE_POOLER=pgbouncer) uses unnamed ones only.

The failure is made deterministic rather than waited for under load: a unit of work prepares its statements on
one server session; that session is then held by another client's open transaction, so the same client's next
unit of work must run on another server session, where a cached named statement does not exist.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.pool import NullPool

from assetpay_merchant.store import trades, users
from assetpay_merchant.store.database import Database, _liveness, create_engine
from assetpay_merchant.store.notifications import driver_dsn
from assetpay_merchant.store.tables import Trade
from tests.pgbouncer.conftest import SERVER_POOL_SIZE, PgBouncer


@asynccontextmanager
async def database_through(pgbouncer: PgBouncer, database_url: str, **kwargs: object) -> AsyncIterator[Database]:
    database = Database(create_engine(pgbouncer.url(database_url), **kwargs))  # type: ignore[arg-type]
    try:
        yield database
    finally:
        await database.dispose()


@asynccontextmanager
async def holding_server_session(pgbouncer: PgBouncer, database_url: str, backend_pid: int) -> AsyncIterator[None]:
    """Keep the PgBouncer server session `backend_pid` busy in an open transaction of other clients, so that no
    other transaction can run on it meanwhile (at most SERVER_POOL_SIZE tries: each holds one more session)."""
    async with AsyncExitStack() as stack:
        for _ in range(SERVER_POOL_SIZE):
            other = await asyncpg.connect(driver_dsn(pgbouncer.url(database_url)), statement_cache_size=0)
            stack.push_async_callback(other.close)
            await stack.enter_async_context(other.transaction())
            if await other.fetchval("SELECT pg_backend_pid()") == backend_pid:
                yield
                return
        raise AssertionError(f"server session {backend_pid} was not found among PgBouncer's")


async def named_statements_on_every_server_session(pgbouncer: PgBouncer, database_url: str) -> set[str]:
    """The named prepared statements on PgBouncer's server sessions (all of them held at once to look; those the
    tests without the setting leave behind stay until PgBouncer closes the session)."""
    names: set[str] = set()
    async with AsyncExitStack() as stack:
        for _ in range(SERVER_POOL_SIZE):
            other = await asyncpg.connect(driver_dsn(pgbouncer.url(database_url)), statement_cache_size=0)
            stack.push_async_callback(other.close)
            await stack.enter_async_context(other.transaction())
            names.update(await other.fetchval("SELECT array(SELECT name::text FROM pg_prepared_statements)"))
    return names


async def money_path(database: Database) -> int:
    """What a callback's unit of work does on the driver connection (`fetchrow` with arguments), and the server
    session it ran on."""
    async with database.unit_of_work() as uow:
        await users.get(uow.db, "nobody-here", lock=True)
        await trades.find(uow.db, uuid.uuid4())
        pid: int = await uow.db.fetchval("SELECT pg_backend_pid()")
        return pid


async def read_view(database: Database) -> int:
    """What a read view does (SQLAlchemy's asyncpg dialect, which prepares every statement it runs)."""
    async with database.reads() as session:
        await session.scalar(select(func.count()).select_from(Trade).where(Trade.user_id == "nobody-here"))
        pid = await session.scalar(select(func.pg_backend_pid()))
        assert isinstance(pid, int)
        return pid


PATHS: dict[str, Callable[[Database], Awaitable[int]]] = {"money_path": money_path, "read_view": read_view}


@pytest.mark.parametrize("path", PATHS)
async def test_without_the_setting_a_cached_statement_is_missing_on_the_next_server_session(
    pgbouncer: PgBouncer, database_url: str, path: str
) -> None:
    run = PATHS[path]
    async with database_through(pgbouncer, database_url, pool_size=1, max_overflow=0) as database:
        first_session = await run(database)
        async with holding_server_session(pgbouncer, database_url, first_session):
            with pytest.raises((asyncpg.InvalidSQLStatementNameError, sa_exc.DBAPIError)) as raised:
                await run(database)
    assert '"__asyncpg_stmt_' in str(raised.value)
    assert "does not exist" in str(raised.value)


@pytest.mark.parametrize("path", PATHS)
async def test_with_transaction_pooling_the_next_server_session_runs_the_same_statements(
    pgbouncer: PgBouncer, database_url: str, path: str
) -> None:
    run = PATHS[path]
    before = await named_statements_on_every_server_session(pgbouncer, database_url)
    async with database_through(
        pgbouncer, database_url, transaction_pooling=True, pool_size=1, max_overflow=0
    ) as database:
        first_session = await run(database)
        async with holding_server_session(pgbouncer, database_url, first_session):
            assert await run(database) != first_session
        assert await run(database) > 0
    assert await named_statements_on_every_server_session(pgbouncer, database_url) <= before  # none of ours


async def test_statements_outside_a_transaction_and_the_pool_ping_share_few_server_sessions(
    pgbouncer: PgBouncer, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Database.statements()` (each statement on its own, no transaction) from many client connections at once,
    and the pool's liveness ping (in a transaction of its own), through SERVER_POOL_SIZE server sessions."""
    pings = 0
    ping = AsyncAdapt_asyncpg_connection.ping

    def counted_ping(self: AsyncAdapt_asyncpg_connection) -> None:
        nonlocal pings
        ping(self)
        pings += 1

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted_ping)
    before = await named_statements_on_every_server_session(pgbouncer, database_url)
    async with database_through(pgbouncer, database_url, transaction_pooling=True, pool_size=24) as database:

        async def reads(n: int, steps: int) -> list[tuple[int, int]]:
            answers = []
            for step in range(steps):
                async with database.statements() as db:
                    answers.append(await db.fetchval("SELECT $1::int * 1000 + $2::int", n, step))
                    answers.append(await db.fetchval("SELECT length($1::text) + $2::int", "x" * n, step))
                    await asyncio.sleep(0)
            return list(zip(answers[::2], answers[1::2], strict=True))

        await asyncio.gather(*(reads(n, 1) for n in range(24)))  # opens the client connections
        opened = database.engine.pool.checkedin()  # type: ignore[attr-defined]
        assert opened > SERVER_POOL_SIZE
        _liveness(database.engine).found_dead()  # so each is pinged before it is lent again
        results = await asyncio.gather(*(reads(n, 10) for n in range(24)))
        assert results == [[(n * 1000 + step, n + step) for step in range(10)] for n in range(24)]
    assert pings >= opened
    assert await named_statements_on_every_server_session(pgbouncer, database_url) <= before


async def test_the_direct_engine_of_the_checks_is_unaffected(database_url: str) -> None:
    """The same engine straight to PostgreSQL keeps asyncpg's statement cache (named statements)."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            assert isinstance(driver, asyncpg.Connection)
            await driver.fetchval("SELECT $1::int", 1)
            assert await driver.fetchval("SELECT count(*) FROM pg_prepared_statements") > 0
    finally:
        await engine.dispose()
