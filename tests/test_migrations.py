"""The Alembic migrations on throw-away databases: a clean round trip, no drift from the models, and the guards
that live in the schema itself (the append-only ledger trigger, check constraints)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from assetpay_merchant.store import migrations as migrate
from assetpay_merchant.store.database import create_engine
from assetpay_merchant.store.schema_version import HEAD_REVISION
from assetpay_merchant.store.tables import Base
from tests.conftest import ScratchDatabases

TABLES = {table.name for table in Base.metadata.sorted_tables}


async def query(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(text(sql), params)).all())
    finally:
        await engine.dispose()


async def tables(url: str) -> set[str]:
    rows = await query(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    return {name for (name,) in rows}


async def schema_objects(url: str) -> dict[str, int]:
    """What a downgrade must leave behind: nothing of ours (functions, triggers, sequences, indexes, constraints)."""
    counts = {}
    for name, sql in {
        "functions": "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public'",
        "triggers": "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal",
        "sequences": "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'S'",
        "indexes": "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename <> 'alembic_version'",
    }.items():
        [(counts[name],)] = await query(url, sql)
    return counts


def schema_diff(connection: Any) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
    return list(compare_metadata(context, Base.metadata))


async def diff_against_models(url: str) -> list[Any]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(schema_diff)
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade_round_trip(scratch: ScratchDatabases) -> None:
    url = await scratch.create("assetpay_migrations")
    await asyncio.to_thread(migrate.upgrade, url)
    assert await tables(url) == {*TABLES, "alembic_version"}
    assert await query(url, "SELECT version_num FROM alembic_version") == [(migrate.head_revision(),)]
    at_head = await schema_objects(url)
    assert at_head["triggers"] == 2  # the ledger's and the trade history's append-only guards
    assert at_head["functions"] == 3  # those two guards and money_text

    await asyncio.to_thread(migrate.downgrade, url, "base")
    assert await tables(url) == {"alembic_version"}
    assert await query(url, "SELECT version_num FROM alembic_version") == []
    assert await schema_objects(url) == {"functions": 0, "triggers": 0, "sequences": 0, "indexes": 0}

    await asyncio.to_thread(migrate.upgrade, url)
    assert await tables(url) == {*TABLES, "alembic_version"}
    assert await query(url, "SELECT version_num FROM alembic_version") == [(migrate.head_revision(),)]
    assert await schema_objects(url) == at_head
    assert await diff_against_models(url) == []


@pytest.fixture(scope="module")
async def migrated(scratch: ScratchDatabases) -> AsyncIterator[AsyncEngine]:
    """A database upgraded by the migrations alone (not created from the models)."""
    url = await scratch.create("assetpay_schema")
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_engine(url, poolclass=NullPool)
    yield engine
    await engine.dispose()


async def test_models_and_migrated_schema_do_not_differ(migrated: AsyncEngine) -> None:
    async with migrated.connect() as connection:
        assert await connection.run_sync(schema_diff) == []
    # ... and `alembic check` (through env.py, as ops would run it) agrees.
    url = migrated.url.render_as_string(hide_password=False)
    await asyncio.to_thread(command.check, migrate.alembic_config(url))


async def test_only_the_rate_buckets_are_unlogged_as_the_models_say(migrated: AsyncEngine) -> None:
    """Alembic's comparison does not look at persistence: an unlogged table holding money would pass it."""
    async with migrated.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT relname FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND relpersistence = 'u'"
            )
        )
        unlogged = {name for (name,) in rows}
    assert unlogged == {"rate_buckets"}
    assert unlogged == {table.name for table in Base.metadata.sorted_tables if "UNLOGGED" in table._prefixes}


async def _ledger_entry(migrated: AsyncEngine) -> str:
    """A user with one ledger entry, committed; returns the user id."""
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    steam_id = f"76561{uuid.uuid4().int % 10**12:012d}"
    async with migrated.begin() as connection:
        await connection.execute(
            text("INSERT INTO users (id, steam_id, trade_url) VALUES (:id, :steam, 'https://example.test')"),
            {"id": user_id, "steam": steam_id},
        )
        await connection.execute(
            text("INSERT INTO ledger_entries (user_id, amount, kind, balance_after) VALUES (:id, 5, 'credit', 5)"),
            {"id": user_id},
        )
    return user_id


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount = 500, balance_after = 500 WHERE user_id = :id",
        "UPDATE ledger_entries SET kind = 'refund' WHERE user_id = :id",
        "DELETE FROM ledger_entries WHERE user_id = :id",
    ],
)
async def test_ledger_entries_are_append_only(migrated: AsyncEngine, statement: str) -> None:
    user_id = await _ledger_entry(migrated)
    with pytest.raises(IntegrityError, match="append-only"):
        async with migrated.begin() as connection:
            await connection.execute(text(statement), {"id": user_id})
    rows = await _rows(migrated, "SELECT amount, kind FROM ledger_entries WHERE user_id = :id", id=user_id)
    assert [(str(amount), kind) for amount, kind in rows] == [("5.00000000", "credit")]


async def _rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(sql), params)).all())


TRADE = (
    "INSERT INTO trades (id, type, status, total_price, pre_credit, pending_credit) "
    "VALUES (gen_random_uuid(), :type, :status, :total, :pre, 0)"
)


@pytest.mark.parametrize(
    ("params", "constraint"),
    [
        ({"type": "deposit", "status": "hold", "total": -1, "pre": 0}, "ck_trades_amounts_positive"),
        ({"type": "deposit", "status": "hold", "total": 10, "pre": -0.01}, "ck_trades_amounts_positive"),
        ({"type": "deposit", "status": "escrow", "total": 10, "pre": 0}, "ck_trades_status_known"),
        ({"type": "deposit", "status": "done", "total": 10, "pre": 0}, "ck_trades_status_known"),
        ({"type": "refund", "status": "hold", "total": 10, "pre": 0}, "ck_trades_type_known"),
    ],
)
async def test_trade_check_constraints(migrated: AsyncEngine, params: dict[str, Any], constraint: str) -> None:
    with pytest.raises(IntegrityError, match=constraint):
        async with migrated.begin() as connection:
            await connection.execute(text(TRADE), params)


async def test_a_valid_trade_passes_the_same_constraints(migrated: AsyncEngine) -> None:
    async with migrated.begin() as connection:
        await connection.execute(text(TRADE), {"type": "withdraw", "status": "reverted", "total": 0, "pre": 0})


@pytest.mark.parametrize(
    ("amount", "kind", "constraint"),
    [(0, "credit", "ck_ledger_entries_amount_nonzero"), (5, "bonus", "ck_ledger_entries_kind_known")],
)
async def test_ledger_entry_check_constraints(migrated: AsyncEngine, amount: int, kind: str, constraint: str) -> None:
    user_id = await _ledger_entry(migrated)
    with pytest.raises(IntegrityError, match=constraint):
        async with migrated.begin() as connection:
            await connection.execute(
                text("INSERT INTO ledger_entries (user_id, amount, kind, balance_after) VALUES (:id, :a, :k, 0)"),
                {"id": user_id, "a": amount, "k": kind},
            )


async def test_a_rejection_must_carry_a_reason(migrated: AsyncEngine) -> None:
    with pytest.raises(IntegrityError, match="ck_approval_verdicts_reject_has_reason"):
        async with migrated.begin() as connection:
            await connection.execute(
                text("INSERT INTO approval_verdicts (subject, subject_id, verdict) VALUES ('trade', 'x', 'reject')")
            )


def test_the_code_expects_the_newest_migration() -> None:
    """`/readyz` compares the database with this constant: it must name Alembic's head."""
    assert migrate.head_revision() == HEAD_REVISION
