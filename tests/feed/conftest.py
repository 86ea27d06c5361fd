"""AssetPay's realtime feed played by a real python-socketio server (ASGI, served by uvicorn on a loopback port in
the test's event loop); the backend's feed client connects to it over a real websocket. AssetPay's HTTP API is still
faked with respx (which patches httpx only: the feed's aiohttp websocket is never intercepted)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import pytest
import socketio
import uvicorn
from pydantic import SecretStr

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.gateway.feed_client import RealtimeFeed
from assetpay_merchant.services.feed import FeedConsumer, TradeNudges
from tests.assetpay_respx import API_KEY, AssetPay, mocked_assetpay
from tests.live.conftest import free_port


class FeedServer:
    """AssetPay's side of the feed: checks `apiKey`, says `sync subscribe` after every connection, emits what a
    test asks, and can drop every connection. A wrong key is answered as AssetPay does: a bare disconnect."""

    def __init__(self, api_key: str = API_KEY, *, refuse_after: float = 0.05) -> None:
        self.api_key = api_key
        self.refuse_after = refuse_after
        self.url = ""
        self.sio = socketio.AsyncServer(
            async_mode="asgi", transports=["websocket"], logger=False, engineio_logger=False
        )
        self.app = socketio.ASGIApp(self.sio)
        self.attempts: list[str | None] = []
        """The apiKey of every connection, in order."""
        self.attempted_at: list[float] = []
        self.sids: set[str] = set()
        self.welcomed = 0
        """`sync subscribe` events the client has acknowledged (it handled them)."""
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        key = parse_qs(environ.get("QUERY_STRING", "")).get("apiKey", [None])[0]
        self.attempts.append(key)
        self.attempted_at.append(time.monotonic())
        if key != self.api_key:
            self.sio.start_background_task(self._refuse, sid)
            return True
        self.sids.add(sid)
        self.sio.start_background_task(self._welcome, sid)
        return True

    async def _disconnect(self, sid: str, reason: Any = None) -> None:
        self.sids.discard(sid)

    async def _refuse(self, sid: str) -> None:
        await asyncio.sleep(self.refuse_after)
        await self.sio.disconnect(sid)

    async def _welcome(self, sid: str) -> None:
        await asyncio.sleep(0.01)  # after the namespace's CONNECT has gone out
        await self.sio.call("market", {"type": "sync", "reason": "subscribe"}, to=sid, timeout=5)
        self.welcomed += 1

    async def send(self, event: str, data: Any) -> None:
        """Emit to every connected client and wait until each has handled it (it acknowledges after its handler)."""
        assert self.sids, "no client connected"
        for sid in list(self.sids):
            await self.sio.call(event, data, to=sid, timeout=5)

    async def drop_all(self) -> None:
        for sid in list(self.sids):
            await self.sio.disconnect(sid)


async def eventually(condition: Callable[[], bool | Awaitable[bool]], *, within: float = 5.0) -> None:
    """Wait until `condition` holds (bounded: fails the test after `within` seconds)."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@dataclass
class Wired:
    """The backend's feed as `serve` wires it, over the session app's catalog, database and AssetPay client."""

    feed: RealtimeFeed
    nudges: TradeNudges


def wire(resources: Resources, url: str, *, api_key: str = API_KEY, **options: Any) -> Wired:
    nudges = TradeNudges(resources.database, resources.assetpay, delay=0.1, concurrency=2)
    settings: dict[str, Any] = {
        "reconnect_delay": 0.05,
        "max_reconnect_delay": 0.4,
        "connect_timeout": 2.0,
        "refused_within": 1.0,
        **options,
    }
    feed = RealtimeFeed(url, SecretStr(api_key), FeedConsumer(resources.catalog, nudges), **settings)
    return Wired(feed, nudges)


@pytest.fixture
def assetpay(resources: Resources) -> Iterator[AssetPay]:
    with mocked_assetpay(resources) as fake:
        yield fake


@asynccontextmanager
async def serve_feed(server: FeedServer, port: int | None = None) -> AsyncIterator[FeedServer]:
    """`server` behind uvicorn in this event loop on 127.0.0.1 (`port`, else a free one); sets `server.url`."""
    port = port or free_port()
    config = uvicorn.Config(
        server.app, host="127.0.0.1", port=port, lifespan="off", log_config=None, log_level="warning"
    )
    uvicorn_server = uvicorn.Server(config)
    task = asyncio.create_task(uvicorn_server.serve())
    await eventually(lambda: uvicorn_server.started or task.done())
    assert uvicorn_server.started, "uvicorn did not start"
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        uvicorn_server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


@pytest.fixture
async def feed_server() -> AsyncIterator[FeedServer]:
    async with serve_feed(FeedServer()) as server:
        yield server


@pytest.fixture
async def wired(resources: Resources, assetpay: AssetPay, feed_server: FeedServer) -> AsyncIterator[Wired]:
    """The feed connected to `feed_server` and through its first `sync subscribe` (after `assetpay`, so it stops
    before AssetPay's fake goes away)."""
    wired = wire(resources, feed_server.url)
    wired.nudges.start()
    wired.feed.start()
    try:
        await eventually(lambda: feed_server.welcomed >= 1)
        yield wired
    finally:
        await wired.feed.stop()
        await wired.nudges.stop()
