"""Reconciliation's one-pass-at-a-time lock behind transaction-mode PgBouncer: a session advisory lock taken on
a pooled connection could land on any server session, so the lock goes straight to PostgreSQL (`session_url`)."""

from __future__ import annotations

from sqlalchemy.pool import NullPool

from assetpay_merchant.services.reconciliation import _exclusive
from assetpay_merchant.store.database import Database, create_engine
from tests.pgbouncer.conftest import PgBouncer


def through(pgbouncer: PgBouncer, database_url: str) -> Database:
    engine = create_engine(pgbouncer.url(database_url), poolclass=NullPool, transaction_pooling=True)
    return Database(engine, session_url=database_url)


async def test_one_pass_holds_the_lock_and_the_other_sees_it_taken(pgbouncer: PgBouncer, database_url: str) -> None:
    first, second = through(pgbouncer, database_url), through(pgbouncer, database_url)
    try:
        async with _exclusive(first) as held:
            assert held is not None
            async with _exclusive(second) as refused:
                assert refused is None  # the other process's pass skips its turn
            # The holder's session is a real PostgreSQL session: its reads work meanwhile.
            assert await held.fetchval("SELECT 1") == 1
        async with _exclusive(second) as now_free:
            assert now_free is not None
    finally:
        await first.dispose()
        await second.dispose()
