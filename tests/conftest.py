"""Test fixtures: a real PostgreSQL (TEST_DATABASE_URL, else an embedded one), migrated once per session, emptied
after every test; the app served in-process over ASGI. Only the network to AssetPay is ever faked."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.app import create_app
from assetpay_merchant.config import Settings
from assetpay_merchant.store.database import create_engine
from assetpay_merchant.store.embedded import EmbeddedPostgres
from assetpay_merchant.store.migrations import upgrade_async
from assetpay_merchant.store.tables import Base
from tests.support import app_settings


class ScratchDatabases:
    """Creates throw-away databases on the test server and drops them at the end of the session."""

    def __init__(self, server_url: str) -> None:
        self.server_url = make_url(server_url)
        self.created: list[str] = []

    def url(self, name: str) -> str:
        return self.server_url.set(database=name).render_as_string(hide_password=False)

    async def _admin(self, statement: str) -> None:
        engine = create_engine(self.url(self.server_url.database or "postgres"), poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    async def create(self, prefix: str = "assetpay_test") -> str:
        name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        await self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.url(name)

    async def drop_all(self) -> None:
        for name in self.created:
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """TEST_DATABASE_URL's server, or an embedded PostgreSQL that lives as long as the session."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="assetpay-test-pg-") as data_dir:
        embedded = EmbeddedPostgres(Path(data_dir), database="postgres")
        url = embedded.start()
        try:
            yield url
        finally:
            embedded.stop()


@pytest.fixture(scope="session")
async def scratch(server_url: str) -> AsyncIterator[ScratchDatabases]:
    databases = ScratchDatabases(server_url)
    yield databases
    await databases.drop_all()


@pytest.fixture(scope="session")
async def database_url(scratch: ScratchDatabases) -> str:
    url = await scratch.create()
    await upgrade_async(url)
    return url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return app_settings(database_url)


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application):
        yield application


@pytest.fixture(scope="session")
def resources(app: FastAPI) -> Resources:
    resources: Resources = app.state.resources
    return resources


@pytest.fixture(scope="session")
def engine(resources: Resources) -> AsyncEngine:
    return resources.database.engine


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://backend.test") as http:
        yield http


@pytest.fixture(autouse=True)
async def _empty_tables(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Every test that touched the database leaves it empty for the next one."""
    yield
    if "database_url" not in request.fixturenames:
        return
    engine = create_engine(request.getfixturevalue("database_url"), poolclass=NullPool)
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    try:
        for attempt in range(5):
            try:
                async with engine.begin() as connection:
                    await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
                break
            except DBAPIError as exc:
                # The session app's own jobs (metrics gauges, rate-bucket purge) read these tables: TRUNCATE taking
                # its locks table by table can deadlock with them. PostgreSQL cancels one side; take the turn again.
                if "deadlock" not in str(exc) or attempt == 4:
                    raise
    finally:
        await engine.dispose()


@pytest.fixture
def freeze_clock(resources: Resources) -> Iterator[Callable[[datetime], None]]:
    """Pin the app's notion of "now" (for signature windows); restored after the test."""
    original = resources.clock

    def freeze(moment: datetime) -> None:
        resources.clock = lambda: moment.astimezone(UTC)

    yield freeze
    resources.clock = original
