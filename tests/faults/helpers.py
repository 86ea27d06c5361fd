"""Helpers of the process-level fault tests: a fresh migrated database, row locks held from the test, what the
server's connections are waiting on, the books checked by the ops command, and a polite deadline."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import asyncpg

from assetpay_merchant.store.database import driver_dsn
from assetpay_merchant.store.migrations import upgrade_async
from tests.processes import CLI, clean_env

DEADLINE = 30.0  # the most any single wait in these tests may take before the test fails (never a measured bound)


class Scratch(Protocol):
    """tests/conftest.py's `scratch` fixture: creates throw-away databases on the test server."""

    async def create(self, prefix: str = ...) -> str: ...


async def fresh_database(scratch: Scratch, prefix: str) -> str:
    """A new database on the test server, migrated to head (`serve` never migrates)."""
    url = await scratch.create(prefix)
    await upgrade_async(url)
    return url


async def eventually(check: Callable[[], Awaitable[bool]], what: str, *, within: float = DEADLINE) -> None:
    """Poll `check` until it holds; fail naming `what` once a generous deadline passes."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def row_locked(database_url: str, sql: str, *args: Any) -> AsyncIterator[asyncpg.Connection]:
    """Hold the row locks `sql` (a `SELECT ... FOR UPDATE`) takes, in a transaction of the test's own, until the
    block ends (rolled back: the test changes nothing)."""
    connection = await asyncpg.connect(driver_dsn(database_url))
    try:
        transaction = connection.transaction()
        await transaction.start()
        locked = await connection.fetch(sql, *args)
        assert locked, f"nothing to lock: {sql} {args}"
        try:
            yield connection
        finally:
            await transaction.rollback()
    finally:
        await connection.close()


async def lock_waiters(database_url: str) -> int:
    """How many sessions on the database are waiting for a lock right now (the app's requests stuck behind ours)."""
    connection = await asyncpg.connect(driver_dsn(database_url))
    try:
        waiting: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return waiting
    finally:
        await connection.close()


async def until_waiting(database_url: str, count: int) -> None:
    """Until at least `count` sessions wait for a lock (the requests reached the row the test holds)."""

    async def enough() -> bool:
        return await lock_waiters(database_url) >= count

    await eventually(enough, f"{count} requests waiting on the held row lock")


async def fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows read straight from the database, on a connection of the test's own."""
    connection = await asyncpg.connect(driver_dsn(database_url))
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


def ledger_check(database_url: str) -> subprocess.CompletedProcess[str]:
    """`assetpay-merchant ledger check`, the ops command, on the database."""
    return subprocess.run(  # noqa: S603 (our own command)
        [str(CLI), "ledger", "check"],
        env=clean_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
