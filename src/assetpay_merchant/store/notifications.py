"""LISTEN for committed events on a connection of its own, across database restarts.

The listener never goes through the pool: it may point past PgBouncer straight at PostgreSQL (LISTEN needs a
session of its own, which PgBouncer's transaction mode does not keep). When the connection drops it reconnects
with capped backoff, and tells its owner, which then replays from the outbox what it may have missed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import asyncpg

from assetpay_merchant.store.database import driver_dsn
from assetpay_merchant.store.events import CHANNEL

log = logging.getLogger(__name__)

OnNotify = Callable[[str, int], None]
OnConnected = Callable[[], Awaitable[None]]


class Listener:
    """Calls `on_notify(user_id, event_id)` for every event committed by any process, and `on_connected()` after
    every (re)connection, before the notifications that follow it."""

    def __init__(
        self,
        url: str,
        *,
        on_notify: OnNotify,
        on_connected: OnConnected,
        max_backoff: float = 5.0,
        health_check_seconds: float = 5.0,
    ) -> None:
        self._dsn = driver_dsn(url)
        self._on_notify = on_notify
        self._on_connected = on_connected
        self._max_backoff = max_backoff
        self._health_check = health_check_seconds
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen_until_lost()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                log.warning("event listener lost its connection (%s: %s); reconnecting", type(error).__name__, error)
            self.connected.clear()
            await asyncio.sleep(min(self._max_backoff, 0.1 * 2**failures) * (0.5 + random.random() / 2))  # noqa: S311

    async def _listen_until_lost(self) -> None:
        connection = await asyncpg.connect(self._dsn, timeout=5)
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _: lost.set())
            await connection.add_listener(CHANNEL, self._received)
            self.connected.set()
            await self._on_connected()  # replay what was committed while nobody listened
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), timeout=self._health_check)
                except TimeoutError:
                    await connection.fetchval("SELECT 1")  # a silent drop shows up here
        finally:
            if not connection.is_closed():
                await connection.close(timeout=2)

    def _received(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        user_id, _, event_id = str(payload).rpartition(" ")
        try:
            self._on_notify(user_id, int(event_id))
        except ValueError:
            log.warning("ignoring a malformed event notification %r", payload)
