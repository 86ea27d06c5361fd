"""Sharing upstream calls: concurrent identical requests wait for one call, and market pages live a few seconds.

AssetPay rate-limits unverified merchants to 30 market requests a minute, so a crowd of users browsing the same
market page must cost one upstream call, not one each.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
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

    @property
    def in_flight(self) -> int:
        return len(self._inflight)


class TTLCache(Generic[T]):
    """Results kept for `ttl` seconds (errors are never kept); misses for one key share one load."""

    def __init__(self, ttl: float, *, max_entries: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, T]] = OrderedDict()
        self._flights: SingleFlight[T] = SingleFlight()

    def peek(self, key: Hashable) -> T | None:
        """The cached value while fresh, without loading anything."""
        entry = self._entries.get(key)
        return entry[1] if entry is not None and entry[0] > self._clock() else None

    async def get(self, key: Hashable, loader: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """`(value, hit)`: the cached value while fresh, else the loader's (shared with concurrent misses)."""
        cached = self.peek(key)
        if cached is not None:
            return cached, True

        async def load_and_keep() -> T:
            value = await loader()
            if self.ttl > 0:
                self._entries[key] = (self._clock() + self.ttl, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
            return value

        return await self._flights.run(key, load_and_keep), False

    def clear(self) -> None:
        self._entries.clear()
