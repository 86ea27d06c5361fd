"""Live events for the clients connected to this process: every event any process commits reaches each of the
user's clients once, in order, read from the outbox.

A notification only says "user U has news"; the hub then reads the user's events after the oldest one its clients
have, and hands each client what it has not seen. So a lost notification (the listener reconnecting) costs
nothing but a replay, and a client resuming with `since` goes through the very same path. Each client has a
bounded queue: one that cannot keep up is marked behind, told to resync, and dropped, and never slows the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from assetpay_merchant.core.errors import TooManyRequests
from assetpay_merchant.observability import LIVE_CLIENTS
from assetpay_merchant.store import events
from assetpay_merchant.store.database import Database
from assetpay_merchant.store.events import Event

log = logging.getLogger(__name__)

BATCH = 500
RETRY_MAX_SECONDS = 5.0


@dataclass(eq=False)
class Subscription:
    """One connected client: its queue, and the id of the last event handed to it."""

    user_id: str
    last_id: int
    queue: asyncio.Queue[Event]
    behind: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: Event) -> None:
        if event.id <= self.last_id or self.behind.is_set():
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.behind.set()  # the client is too slow: it will be told to resync
            return
        self.last_id = event.id


class Hub:
    def __init__(self, database: Database, *, queue_size: int = 256, max_per_user: int = 5) -> None:
        self._database = database
        self._queue_size = queue_size
        self._max_per_user = max_per_user
        self._clients: dict[str, set[Subscription]] = defaultdict(set)
        self._pending: set[str] = set()  # users with news not yet read
        self._running: dict[str, asyncio.Task[None]] = {}

    def subscribe(self, user_id: str, *, after: int) -> Subscription:
        """A new client of `user_id` that has seen every event up to `after`; call `kick` to replay the rest."""
        if len(self._clients[user_id]) >= self._max_per_user:
            raise TooManyRequests(f"At most {self._max_per_user} live connections per user", key="TOO_MANY_CONNECTIONS")
        subscription = Subscription(user_id, after, asyncio.Queue(self._queue_size))
        self._clients[user_id].add(subscription)
        LIVE_CLIENTS.inc()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        clients = self._clients.get(subscription.user_id)
        if clients is not None and subscription in clients:
            clients.discard(subscription)
            LIVE_CLIENTS.dec()
            if not clients:
                del self._clients[subscription.user_id]

    def notify(self, user_id: str, event_id: int) -> None:
        """An event was committed for the user (by any process)."""
        clients = self._clients.get(user_id)
        if clients and any(c.last_id < event_id for c in clients):
            self.kick(user_id)

    def kick(self, user_id: str) -> None:
        """Read the user's new events and hand them to the user's clients (at most one reader per user)."""
        self._pending.add(user_id)
        if user_id not in self._running:
            self._running[user_id] = asyncio.create_task(self._deliver(user_id), name=f"live-{user_id}")

    async def catch_up(self) -> None:
        """After notifications may have been lost (the listener reconnected): replay for everybody connected."""
        for user_id in list(self._clients):
            self.kick(user_id)

    async def _deliver(self, user_id: str) -> None:
        failures = 0
        try:
            while user_id in self._pending:
                self._pending.discard(user_id)
                try:
                    await self._read_and_hand_out(user_id)
                    failures = 0
                except Exception as error:  # e.g. the pool or the database is briefly unavailable: try again
                    failures += 1
                    self._pending.add(user_id)
                    log.warning("reading live events of %s failed (%s); retrying", user_id, type(error).__name__)
                    await asyncio.sleep(min(RETRY_MAX_SECONDS, 0.05 * 2**failures))
        finally:
            del self._running[user_id]

    async def _read_and_hand_out(self, user_id: str) -> None:
        while True:
            clients = [c for c in self._clients.get(user_id, ()) if not c.behind.is_set()]
            if not clients:
                return
            after = min(c.last_id for c in clients)
            async with self._database.statements() as db:
                batch = await events.since(db, user_id, after, limit=BATCH)
            for event in batch:
                for client in clients:
                    client.offer(event)
            if len(batch) < BATCH:
                return

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)


async def purge_periodically(database: Database, *, retention: timedelta, interval: float = 600.0) -> None:
    """Forget events older than `retention` every `interval` seconds (a failed purge waits for the next turn)."""
    while True:
        try:
            async with database.unit_of_work() as uow:
                purged = await events.purge(uow.db, older_than=datetime.now(UTC) - retention)
            if purged:
                log.info("purged %d live events older than %s", purged, retention)
        except Exception:
            log.exception("purging old live events failed; trying again later")
        await asyncio.sleep(interval)
