"""Database plumbing: the declarative base, URL handling, the engine and the embedded PostgreSQL."""

from __future__ import annotations

import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import MetaData
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from assetpay_merchant.config import Settings

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "assetpay"

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def async_url(url: str | URL) -> URL:
    """Accept `postgres://`, `postgresql://` or `postgresql+asyncpg://` and return the asyncpg form."""
    parsed = make_url(str(url).replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"DATABASE_URL must be a PostgreSQL URL, got {parsed.get_backend_name()!r}")
    return parsed.set(drivername="postgresql+asyncpg")


def create_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An asyncpg engine; `kwargs` go to SQLAlchemy (pool sizes, or `poolclass=NullPool` for one-shot jobs)."""
    return create_async_engine(async_url(url), **kwargs)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class Connection(Protocol):
    """The driver (asyncpg) connection of a transaction: the money path runs its few statements on it directly,
    each prepared once per connection, inside a transaction SQLAlchemy began and will commit."""

    async def execute(self, query: str, *args: Any) -> str: ...
    async def fetch(self, query: str, *args: Any) -> list[Any]: ...
    async def fetchrow(self, query: str, *args: Any) -> Any: ...
    async def fetchval(self, query: str, *args: Any) -> Any: ...
    def cursor(self, query: str, *args: Any, prefetch: int | None = None) -> Any: ...
    def transaction(self) -> Any: ...


async def _driver(connection: AsyncConnection) -> Any:
    raw = await connection.get_raw_connection()
    return raw.driver_connection


@asynccontextmanager
async def driver_transaction(engine: AsyncEngine) -> AsyncIterator[Connection]:
    """A transaction the driver itself owns, for the money path: BEGIN, a few prepared statements, COMMIT (or
    ROLLBACK on any error), with none of SQLAlchemy's per-statement work in between."""
    async with engine.connect() as connection:
        driver = await _driver(connection)
        async with driver.transaction():
            yield driver


@asynccontextmanager
async def driver_reads(engine: AsyncEngine) -> AsyncIterator[Connection]:
    """A pooled driver connection for a read or two that need no transaction (each statement stands alone)."""
    async with engine.connect() as connection:
        yield await _driver(connection)


async def driver_connection(session: AsyncSession) -> Connection:
    """The driver connection under a session, to run money-path statements in the session's transaction.

    SQLAlchemy begins the database transaction lazily, with the first statement it runs: the session must have
    run one already, or these statements would each commit on their own. That is checked, not assumed.
    """
    driver = await _driver(await session.connection())
    if not driver.is_in_transaction():
        raise RuntimeError("the session has not begun its database transaction: run a statement through it first")
    return driver  # type: ignore[no-any-return]


class EmbeddedPostgres:
    """A real PostgreSQL started from the `pgserver` wheel, its data kept under `data_dir`."""

    def __init__(self, data_dir: Path, *, database: str = EMBEDDED_DATABASE, keep_running: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.database = database
        self.keep_running = keep_running
        self._server: Any = None

    def start(self) -> str:
        """Start (or reuse) the server, make sure the database exists, and return its URL."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers; harmless here
            # Heavy, so imported only when the embedded database is really wanted.
            from pgserver import get_server  # type: ignore[attr-defined]

        self.data_dir.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL in %s", self.data_dir)
        self._server = get_server(self.data_dir, cleanup_mode=None if self.keep_running else "stop")
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}';")  # noqa: S608
        if "(1 row)" not in exists:
            self._server.psql(f'CREATE DATABASE "{self.database}";')
        url = make_url(self._server.get_uri(self.database))
        return url.render_as_string(hide_password=False)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def resolve_database_url(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    """The configured DATABASE_URL, or a freshly started embedded PostgreSQL when none is set."""
    if settings.database_url:
        return settings.database_url, None
    embedded = EmbeddedPostgres(settings.data_dir / "postgres")
    return embedded.start(), embedded
