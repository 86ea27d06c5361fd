"""AssetPay's realtime feed: a Socket.IO client that stays connected (the shapes of what it hears are in
`gateway/feed.py`).

The feed (docs/realtime-feed.md) is Socket.IO over Engine.IO v4, websocket transport only, at the API host with
`?apiKey=<key>`. It is best effort: nothing is replayed after a disconnect, and nothing it says moves money. This
module only connects, reconnects and parses; what the events do is decided by the `FeedSink` it is given
(services/feed.py).

    feed = RealtimeFeed("https://api.assetpay.gg", api_key, sink)
    feed.start()          # connects at once, then reconnects after 30 s, doubling up to 5 min, for as long as it runs
    ...
    await feed.stop()

A refused key shows only as a bare disconnect right after connecting; the feed tells that apart from a dropped
connection (nothing was heard, the connection lasted less than `refused_within` seconds), logs it as an error and
backs off like any failure. Reconnecting is done here rather than by python-socketio, whose own reconnection gives
up when the server closes the namespace (which is how a bad key may show) and never resets its delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import socketio
from pydantic import SecretStr

from assetpay_merchant.gateway.feed import (
    FeedPayloadError,
    FeedSink,
    MarketEvent,
    MarketItemChanged,
    MarketItemRemoved,
    parse_funding,
    parse_market,
    parse_trade,
)
from assetpay_merchant.observability import FEED_CONNECTED, FEED_CONNECTIONS, FEED_EVENTS

log = logging.getLogger("assetpay_merchant.gateway.feed")

# python-socketio and python-engineio narrate every packet at INFO (and would write the URL, key included): only
# their warnings come through.
_library_log = logging.getLogger("assetpay_merchant.gateway.feed.socketio")
_library_log.setLevel(logging.WARNING)


class _DecimalJson:
    """JSON for Socket.IO packets with numbers read as exact Decimals (prices are never floats here)."""

    @staticmethod
    def loads(text: str | bytes, **options: Any) -> Any:
        return json.loads(text, parse_float=Decimal, **options)

    @staticmethod
    def dumps(value: Any, **options: Any) -> str:
        return json.dumps(value, default=str, **options)


class _Packet(socketio.packet.Packet):  # type: ignore[misc]
    """This client's own packet class: python-socketio's `json=` option would change every client and server in
    the process."""

    json = _DecimalJson


def feed_url(base_url: str, api_key: str) -> str:
    """The URL the client connects to: the API host with `?apiKey=` (Engine.IO adds its own parameters)."""
    separator = "&" if urlsplit(base_url).query else "?"
    return f"{base_url}{separator}apiKey={quote(api_key, safe='')}"


def _shown(url: str) -> str:
    """The URL for logs: scheme and host only, never the key."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class RealtimeFeed:
    """One Socket.IO connection to AssetPay's feed, kept up until `stop()`; its events go to `sink`.

    Reconnects after `reconnect_delay` seconds, doubling after each failed attempt up to `max_reconnect_delay`
    (each wait jittered by ±20%). A connection that delivered an event, or lasted `refused_within` seconds, resets
    the delay; one closed sooner without a word is counted as a refusal (a bad API key).
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        sink: FeedSink,
        *,
        reconnect_delay: float = 30.0,
        max_reconnect_delay: float = 300.0,
        connect_timeout: float = 10.0,
        refused_within: float = 5.0,
        socketio_path: str = "socket.io",
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if reconnect_delay <= 0 or max_reconnect_delay < reconnect_delay:
            raise ValueError("need 0 < reconnect_delay <= max_reconnect_delay")
        self._url = feed_url(base_url, api_key.get_secret_value())
        self._sink = sink
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._connect_timeout = connect_timeout
        self._refused_within = refused_within
        self._socketio_path = socketio_path
        self._jitter = jitter
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.attempts = 0
        """Connection attempts so far."""
        self.connections = 0
        """Connections established so far."""
        self.refusals = 0
        """Connections closed right after they opened, without a word (how a bad key shows)."""

    def __repr__(self) -> str:
        return f"RealtimeFeed({_shown(self._url)!r}, connected={self.connected})"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="assetpay-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def delay(self, waits: int) -> float:
        """The wait before the next attempt, after `waits` waits since start-up or the last good connection."""
        base = min(self._max_reconnect_delay, self._reconnect_delay * 2.0 ** min(waits, 32))
        return base * (0.8 + 0.4 * self._jitter())

    async def run(self) -> None:
        """Connect, and reconnect whenever the connection ends or fails, until cancelled."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            waits = 0  # since start-up or the last good connection
            while True:
                try:
                    healthy = await self._connect_once(http)
                except Exception:  # a bug must not end the feed: log it and try again after the backoff
                    log.exception("AssetPay realtime feed: the connection failed unexpectedly")
                    healthy = False
                if healthy:
                    waits = 0
                wait = self.delay(waits)
                waits += 1
                log.info("AssetPay realtime feed: next connection attempt in %.1f s", wait)
                await asyncio.sleep(wait)

    async def _connect_once(self, http: aiohttp.ClientSession) -> bool:
        """One connection, from connecting until it ends; True when it was a good one (delay reset)."""
        client = socketio.AsyncClient(
            reconnection=False,
            logger=_library_log,
            engineio_logger=_library_log,
            serializer=_Packet,
            handle_sigint=False,
            http_session=http,
            request_timeout=self._connect_timeout,
        )
        heard = 0
        refusal: list[str] = []

        async def on_event(event: str, *args: Any) -> None:
            nonlocal heard
            heard += 1
            self._dispatch(event, args[0] if args else None)

        async def on_connect_error(data: Any = None) -> None:
            refusal.append(str(data)[:200])

        client.on("*", on_event)
        client.on("connect_error", on_connect_error)
        self.attempts += 1
        shown = _shown(self._url)
        loop = asyncio.get_running_loop()
        try:
            try:
                async with asyncio.timeout(self._connect_timeout * 2):
                    await client.connect(
                        self._url,
                        transports=["websocket"],
                        socketio_path=self._socketio_path,
                        wait_timeout=self._connect_timeout,
                    )
            except (socketio.exceptions.ConnectionError, TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                FEED_CONNECTIONS.labels("failed").inc()
                if refusal:
                    log.error("AssetPay refused the realtime feed at %s: %s", shown, refusal[-1])
                else:
                    log.warning(
                        "AssetPay realtime feed: could not connect to %s (%s)", shown, exc or type(exc).__name__
                    )
                return False
            opened = loop.time()
            self.connected = True
            self.connections += 1
            FEED_CONNECTED.set(1)
            FEED_CONNECTIONS.labels("connected").inc()
            log.info("AssetPay realtime feed connected to %s", shown)
            await client.eio.wait()  # until the connection ends, whichever way it ends
        finally:
            if self.connected:
                self.connected = False
                FEED_CONNECTED.set(0)
            await _close(client)
        lasted = loop.time() - opened
        if heard == 0 and lasted < self._refused_within:
            self.refusals += 1
            FEED_CONNECTIONS.labels("refused").inc()
            log.error(
                "AssetPay closed the realtime feed at %s %.1f s after it opened, without a word: that is how it "
                "refuses a wrong or revoked ASSETPAY_API_KEY (or one without the scope the feed needs); "
                "retrying with backoff",
                shown,
                lasted,
            )
            return False
        log.warning("AssetPay realtime feed at %s disconnected after %.0f s; reconnecting", shown, lasted)
        return True

    def _dispatch(self, event: str, body: Any) -> None:
        """Parse one event and hand it to the sink; a bad body or a failing sink costs that event only."""
        try:
            if event == "market":
                parsed = parse_market(body)
                FEED_EVENTS.labels(_market_label(parsed)).inc()
                self._sink.market(parsed)
            elif event == "trade":
                nudge = parse_trade(body)
                FEED_EVENTS.labels("trade").inc()
                self._sink.trade(nudge)
            elif event in ("deposit", "withdrawal"):
                funding = parse_funding("deposit" if event == "deposit" else "withdrawal", body)
                FEED_EVENTS.labels(event).inc()
                self._sink.funding(funding)
            else:
                FEED_EVENTS.labels("other").inc()
                log.debug("AssetPay realtime feed: event %r ignored", event[:64])
        except FeedPayloadError as problem:
            FEED_EVENTS.labels("invalid").inc()
            log.warning("AssetPay realtime feed: %s event skipped: %s", event[:64], problem)
        except Exception:
            log.exception("AssetPay realtime feed: handling a %s event failed", event[:64])


def _market_label(event: MarketEvent) -> str:
    if isinstance(event, MarketItemChanged):
        return f"market.{event.kind}"
    return "market.remove" if isinstance(event, MarketItemRemoved) else "market.sync"


async def _close(client: socketio.AsyncClient) -> None:
    """Release the connection however far it got (the shared aiohttp session stays open)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await client.disconnect()
