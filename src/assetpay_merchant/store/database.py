"""The database: the engine, the unit of work that owns every transaction, and the read sessions of the views.

    database = Database(create_engine(url))
    async with database.unit_of_work() as uow:      # BEGIN
        await ledger.post(uow.db, ...)               # repositories run SQL on the transaction's connection
    # COMMIT here; then the hooks queued with uow.after_commit() run

The money path runs prepared SQL on the driver (asyncpg) connection, typed as `Connection`, inside a transaction the
driver owns: none of SQLAlchemy's per-statement work is in the way of a callback. A connection that died (the
database restarted, a failover) is never lent again (see `_Liveness`), and a database that cannot serve is one
error, `DatabaseUnavailable`, that the API answers with 503 and `Retry-After`; its key says why: unreachable
(`DATABASE_UNAVAILABLE`), every pooled connection busy past the pool timeout (`DATABASE_BUSY`), or a statement that
ran or waited for a lock past its timeout (`DATABASE_TIMEOUT`, rolled back with its whole transaction).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from assetpay_merchant.core.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

Connection = asyncpg.Connection
"""The driver connection of a unit of work's transaction (the money path's statements run on it)."""
Record = asyncpg.Record

RETRY_AFTER_SECONDS = 1
CONNECT_TIMEOUT_SECONDS = 5.0
PING_AFTER_IDLE_SECONDS = 1.0

# What a dead or unreachable server looks like, from the driver, from SQLAlchemy, or from the socket.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError and TimeoutError are OSErrors)
    asyncpg.InterfaceError,  # "connection is closed", "another operation is in progress" after a drop
    asyncpg.PostgresConnectionError,  # 08xxx: connection failures, including "cannot connect now"
    asyncpg.exceptions.AdminShutdownError,  # 57P01: the server is shutting down
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: the server is starting up
    asyncpg.exceptions.CrashShutdownError,  # 57P02: another backend crashed
    asyncpg.InternalClientError,  # the driver caught mid-statement by the server's termination message
)
# What a statement that took too long looks like: `statement_timeout` cancelled it (57014, also an operator's
# pg_cancel_backend), or `lock_timeout` gave up waiting for a lock (55P03). Either aborts the transaction.
_TIMED_OUT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.LockNotAvailableError,
)
BUSY = "DATABASE_BUSY"
TIMED_OUT = "DATABASE_TIMEOUT"


@dataclass(frozen=True, slots=True)
class StatementTimeouts:
    """Bounds on the server side for every statement on the app's connections (seconds; 0: none): how long one may
    run (`statement_timeout`), and how long it may wait for a lock (`lock_timeout`)."""

    statement: float = 0.0
    lock: float = 0.0

    def server_settings(self) -> dict[str, str]:
        """As PostgreSQL startup parameters, in milliseconds (no unit: the server's default unit for both)."""
        settings = {"statement_timeout": self.statement, "lock_timeout": self.lock}
        return {name: str(round(seconds * 1000)) for name, seconds in settings.items() if seconds > 0}


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, the driver error SQLAlchemy wrapped in it, and their causes (a few levels: no cycle runs forever)."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(seen) < 5 and not any(current is s for s in seen):
        seen.append(current)
        yield current
        orig = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__


def is_timed_out(error: BaseException) -> bool:
    """True when a statement was cancelled by a statement or lock timeout (the connection itself is fine)."""
    return any(isinstance(link, _TIMED_OUT) for link in _chain(error))


def is_pool_timeout(error: BaseException) -> bool:
    """True when no pooled connection came free within the pool timeout (the database itself may be fine)."""
    return isinstance(error, sa_exc.TimeoutError)


def is_unreachable(error: BaseException) -> bool:
    """True when `error` says the database could not be reached or the connection died, not that a query failed."""
    if isinstance(error, sa_exc.DBAPIError):
        return error.connection_invalidated or (error.orig is not None and is_unreachable(error.orig))
    if isinstance(error, _UNREACHABLE):
        return True
    cause = error.__cause__
    return cause is not None and cause is not error and isinstance(cause, _UNREACHABLE)


def async_url(url: str | URL) -> URL:
    """Accept `postgres://`, `postgresql://` or `postgresql+asyncpg://` and return the asyncpg form."""
    parsed = make_url(str(url).replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"DATABASE_URL must be a PostgreSQL URL, got {parsed.get_backend_name()!r}")
    return parsed.set(drivername="postgresql+asyncpg")


def driver_dsn(url: str | URL) -> str:
    """A URL asyncpg itself accepts (no `+asyncpg` driver suffix)."""
    return async_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine(
    url: str | URL, *, transaction_pooling: bool = False, timeouts: StatementTimeouts | None = None, **kwargs: Any
) -> AsyncEngine:
    """An asyncpg engine whose pool never lends a connection known or likely to be dead (see `_Liveness`);
    `kwargs` go to SQLAlchemy (pool sizes, `poolclass=NullPool`).

    `timeouts` are set on each connection as it opens (startup parameters: no round trip), so a statement stuck
    behind a lock fails instead of holding a request, and its pooled connection, without end. Not past a
    transaction-mode pooler, which refuses startup parameters it does not track (PgBouncer: `unsupported startup
    parameter`) and would not keep them on every server session anyway: there, set them on the database role
    (`ALTER ROLE ... SET statement_timeout = ...`), which every server session it opens starts with.

    `transaction_pooling`: the connections go through a pooler in transaction mode (PgBouncer before 1.21, or
    without `max_prepared_statements`): each transaction of a client connection may run on another server session,
    where the named prepared statements of the last one do not exist. Then nothing is cached, by asyncpg
    (`statement_cache_size=0`) or by SQLAlchemy's dialect (`prepared_statement_cache_size=0`), and every statement
    is the unnamed one: with its cache off, asyncpg names no statement (SQLAlchemy's `prepare()` included); it
    describes one without ending the exchange (Flush, not Sync, so the pooler keeps the server session) and parses
    it again with its execution, so a statement outside a transaction works too. The cost: every execution parses
    and describes its statement, one more round trip."""
    connect_args: dict[str, Any] = {"timeout": CONNECT_TIMEOUT_SECONDS}
    if transaction_pooling:
        connect_args |= {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
    elif timeouts is not None and timeouts.server_settings():
        connect_args["server_settings"] = timeouts.server_settings()
    connect_args |= kwargs.pop("connect_args", {})
    if "poolclass" not in kwargs:
        # Lend the connection returned last: under light load the same few stay in use (no liveness ping, the
        # server's backends warm) while the rest age, where FIFO would rotate through all of them and ping each.
        kwargs.setdefault("pool_use_lifo", True)
    engine = create_async_engine(async_url(url), connect_args=connect_args, **kwargs)
    _liveness(engine)
    return engine


class _Liveness:
    """Checks a pooled connection before it is lent, when there is a reason to doubt it: it sat idle for a while
    (the server may have restarted meanwhile), or some connection of this engine was found dead since this one was
    last checked (a restart kills them all). A connection in steady use costs no extra round trip; a doubtful one
    is pinged, and a dead one is replaced (SQLAlchemy retries the checkout on `DisconnectionError`)."""

    def __init__(self, engine: Engine) -> None:
        self.deaths = 0
        event.listen(engine, "checkout", self._on_checkout)
        event.listen(engine, "checkin", self._on_checkin)

    def found_dead(self) -> None:
        self.deaths += 1

    def _on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    def _on_checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None:  # just connected
            record.info["deaths_seen"] = self.deaths
            return
        if record.info.get("deaths_seen") == self.deaths and time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            self.found_dead()
            raise sa_exc.DisconnectionError("a pooled connection was dead") from error
        record.info["deaths_seen"] = self.deaths


_WATCHED: weakref.WeakKeyDictionary[Engine, _Liveness] = weakref.WeakKeyDictionary()


def _liveness(engine: AsyncEngine) -> _Liveness:
    watcher = _WATCHED.get(engine.sync_engine)
    if watcher is None:
        watcher = _WATCHED[engine.sync_engine] = _Liveness(engine.sync_engine)
    return watcher


class UnitOfWork:
    """One database transaction, begun and committed by `Database.unit_of_work()` and by nothing else.

    `db` is the transaction's driver connection. `after_commit(hook)` queues work that must happen only once the
    transaction has committed (metrics, notifications): it never runs for a transaction that rolled back.
    """

    __slots__ = ("_hooks", "db")

    def __init__(self, db: Connection) -> None:
        self.db = db
        self._hooks: list[Callable[[], None]] = []

    def after_commit(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    def _committed(self) -> None:
        for hook in self._hooks:
            try:
                hook()
            except Exception:  # the transaction has committed: a failing hook must not turn it into an error
                log.exception("after-commit hook failed")


async def _driver(connection: AsyncConnection) -> Connection:
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, asyncpg.Connection)
    return driver


class Database:
    """The app's database: units of work for changes, sessions for the read views."""

    def __init__(self, engine: AsyncEngine, *, session_url: str | None = None) -> None:
        """`session_url`: where to open connections whose session must be ours (session advisory locks) when the
        engine's pool goes through a transaction-mode pooler; None: the pool's own connections will do."""
        self.engine = engine
        self._session_url = session_url
        self._liveness = _liveness(engine)
        self._sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """BEGIN, yield, COMMIT (ROLLBACK on any error); then the after-commit hooks run."""
        async with self._connection() as connection:
            uow = UnitOfWork(await _driver(connection))
            async with uow.db.transaction():
                yield uow
        uow._committed()

    @asynccontextmanager
    async def statements(self) -> AsyncIterator[Connection]:
        """A pooled driver connection for a read or two that need no transaction (each statement stands alone)."""
        async with self._connection() as connection:
            yield await _driver(connection)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Connection]:
        """A connection whose server session stays ours while we hold it (for session-level advisory locks): a
        direct one past a transaction-mode pooler, else a pooled one."""
        if self._session_url is None:
            async with self.statements() as db:
                yield db
            return
        try:
            connection = await asyncpg.connect(driver_dsn(self._session_url), timeout=CONNECT_TIMEOUT_SECONDS)
        except Exception as error:
            if is_unreachable(error):
                raise _unavailable(error) from error
            raise
        try:
            yield connection
        finally:
            if not connection.is_closed():
                await connection.close(timeout=2)

    @asynccontextmanager
    async def reads(self) -> AsyncIterator[AsyncSession]:
        """An ORM session for read-only views; whatever it did is rolled back when it closes."""
        try:
            async with self._sessions() as session:
                yield session
        except Exception as error:
            translated = self._translate(error)
            if translated is not None:
                raise translated from error
            raise

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Connection]:
        """A read-only transaction on one snapshot of the database (e.g. checking the books while they move)."""
        async with self._connection() as connection:
            driver = await _driver(connection)
            async with driver.transaction(isolation="repeatable_read", readonly=True):
                yield driver

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection; a dead one is discarded instead of going back to the pool, and an unreachable
        database raises DatabaseUnavailable."""
        try:
            connection = await self.engine.connect()
        except Exception as error:
            translated = self._translate(error)
            if translated is not None:
                raise translated from error
            raise
        try:
            yield connection
        except BaseException as error:
            translated = self._translate(error)
            if translated is None:
                raise
            if translated.key == DatabaseUnavailable.key:
                await connection.invalidate()  # dead: never lent again
            raise translated from error
        finally:
            await connection.close()

    def _translate(self, error: BaseException) -> DatabaseUnavailable | None:
        """The DatabaseUnavailable that `error` means (its key says why), or None for any other failure. A timeout
        says nothing about the connection (it stays pooled); a dead one makes every pooled one doubtful."""
        if is_pool_timeout(error):
            return _busy(error)
        if is_timed_out(error):
            return _timed_out(error)
        if is_unreachable(error):
            self._liveness.found_dead()  # the others may be dead too: check each before it is lent again
            return _unavailable(error)
        return None

    async def dispose(self) -> None:
        await self.engine.dispose()


def _unavailable(error: BaseException) -> DatabaseUnavailable:
    log.warning("database unavailable: %s: %s", type(error).__name__, error)
    return DatabaseUnavailable("The database is unavailable; retry shortly", retry_after=RETRY_AFTER_SECONDS)


def _busy(error: BaseException) -> DatabaseUnavailable:
    log.warning("database busy: no pooled connection came free in time (%s)", error)
    return DatabaseUnavailable(
        "Every database connection is busy; retry shortly", key=BUSY, retry_after=RETRY_AFTER_SECONDS
    )


def _timed_out(error: BaseException) -> DatabaseUnavailable:
    log.warning("database statement timed out: %s: %s", type(error).__name__, error)
    return DatabaseUnavailable(
        "The database did not answer in time (a statement or lock timeout); retry shortly",
        key=TIMED_OUT,
        retry_after=RETRY_AFTER_SECONDS,
    )
