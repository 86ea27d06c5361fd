"""Sharing upstream calls: concurrent identical requests wait for one call, and market pages live a few seconds.

AssetPay rate-limits unverified merchants to 30 market requests a minute, so a crowd of users browsing the same
market page must cost one upstream call, not one each. What is kept can be amended when news arrives (the realtime
feed reporting a listing's change): an entry is rewritten or dropped, and so is an answer still on its way.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Concurrent calls with the same key share one execution of the loader and its result (or error).

    The loader runs as its own task, so a caller that goes away (a client disconnecting) does not cancel it for
    the others.
    """

    def __init__(self) -> None:
        self._inflight: dict[Hashable, asyncio.Task[T]] = {}

    async def run(self, key: Hashable, loader: Callable[[], Awaitable[T]]) -> T:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(loader())
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(task)

    def _landed(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # marks it retrieved: every waiter has had its chance to see it

    def running(self, key: Hashable) -> bool:
        """A call for `key` is under way (a caller now would share it)."""
        return key in self._inflight

    @property
    def in_flight(self) -> int:
        return len(self._inflight)


Amendment = Callable[[Hashable, T], T | None]
"""`(key, value) -> value to keep`: the same object (untouched), a new one, or None to drop the entry."""


class TTLCache(Generic[T]):
    """Results kept for `ttl` seconds (errors are never kept); misses for one key share one load.

    `amend` rewrites what is kept when news arrives, including answers still being loaded: a load that started
    before an amendment has it applied when it lands, so an answer fetched before the news never outlives it.
    """

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        max_pending_amendments: int = 1024,
    ) -> None:
        self.ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, T]] = OrderedDict()
        self._flights: SingleFlight[T] = SingleFlight()
        self._loading = 0
        self._amended = 0
        """How many amendments there have been (the number of the latest)."""
        self._journal: deque[tuple[int, Amendment[T]]] = deque(maxlen=max_pending_amendments)
        """The latest amendments, kept only while loads are in flight (they are applied to them as they land)."""

    def peek(self, key: Hashable) -> T | None:
        """The cached value while fresh, without loading anything."""
        entry = self._entries.get(key)
        return entry[1] if entry is not None and entry[0] > self._clock() else None

    def loading(self, key: Hashable) -> bool:
        """A load of `key` is under way (a miss now would share it)."""
        return self._flights.running(key)

    async def get(self, key: Hashable, loader: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """`(value, hit)`: the cached value while fresh, else the loader's (shared with concurrent misses)."""
        cached = self.peek(key)
        if cached is not None:
            return cached, True

        async def load_and_keep() -> T:
            since = self._amended
            self._loading += 1
            try:
                value = await loader()
                kept = self._amend_landed(key, value, since)
            finally:
                self._loading -= 1
                if not self._loading:
                    self._journal.clear()
            if kept is not None and self.ttl > 0:
                self._entries[key] = (self._clock() + self.ttl, kept)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
            return value if kept is None else kept

        return await self._flights.run(key, load_and_keep), False

    def amend(self, change: Amendment[T]) -> tuple[int, int]:
        """Apply `change` to every fresh entry and to every load in flight when it lands; `(rewritten, dropped)`."""
        self._amended += 1
        if self._loading:
            self._journal.append((self._amended, change))
        now = self._clock()
        rewritten = dropped = 0
        for key, (expires, value) in list(self._entries.items()):
            if expires <= now:
                del self._entries[key]
                continue
            amended = change(key, value)
            if amended is None:
                del self._entries[key]
                dropped += 1
            elif amended is not value:
                self._entries[key] = (expires, amended)
                rewritten += 1
        return rewritten, dropped

    def _amend_landed(self, key: Hashable, value: T, since: int) -> T | None:
        """A loaded value with the amendments made while it was loading applied; None: not to be kept."""
        missed = [change for number, change in self._journal if number > since]
        if len(missed) < self._amended - since:
            return None  # more amendments than the journal keeps: too much happened meanwhile to trust it
        for change in missed:
            amended = change(key, value)
            if amended is None:
                return None
            value = amended
        return value

    def clear(self) -> None:
        """Forget everything, answers still on their way included."""
        self.amend(lambda _key, _value: None)
        self._entries.clear()
