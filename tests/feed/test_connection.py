"""The feed's connection: off unless ASSETPAY_FEED is on, `?apiKey=` over the websocket transport, reconnects with
backoff after a drop (and the `sync subscribe` that follows empties the market cache), and a refused key (a bare
disconnect) is retried with growing delays and logged loudly, never with the key."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.app import create_app
from assetpay_merchant.config import Settings
from assetpay_merchant.gateway.feed_client import RealtimeFeed, feed_url
from assetpay_merchant.services.feed import FeedConsumer
from tests.assetpay_respx import API_KEY, AssetPay, register
from tests.feed.conftest import FeedServer, Wired, eventually, serve_feed, wire
from tests.feed.test_market import market, page, patch
from tests.live.conftest import free_port


def test_the_feed_is_off_by_default() -> None:
    assert Settings(_env_file=None).assetpay_feed is False  # type: ignore[call-arg]


async def test_an_app_without_assetpay_feed_never_connects(settings: Settings, feed_server: FeedServer) -> None:
    app = create_app(settings.model_copy(update={"assetpay_feed_url": feed_server.url}))
    async with LifespanManager(app):
        await asyncio.sleep(0.3)
        assert app.state.feed is None
    assert feed_server.attempts == []


async def test_an_app_with_assetpay_feed_connects_and_keeps_its_market_fresh(
    settings: Settings, assetpay: AssetPay, feed_server: FeedServer
) -> None:
    enabled = settings.model_copy(
        update={"assetpay_feed": True, "assetpay_feed_url": feed_server.url, "assetpay_feed_reconnect_seconds": 0.05}
    )
    app = create_app(enabled)
    async with LifespanManager(app):
        feed = app.state.feed
        assert isinstance(feed, RealtimeFeed)
        await eventually(lambda: feed_server.welcomed == 1)
        assert feed_server.attempts == [API_KEY]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://backend.test") as client:
            await register(client, "app-shopper")
            assetpay.market.reply(page("10.00"))
            assert await market(client, "app-shopper") == [("listing-0", "10.00")]
            await feed_server.send("market", patch("listing-0", 9.5))
            assert await market(client, "app-shopper") == [("listing-0", "9.50")]
            assert assetpay.market.call_count == 1
    assert not feed.connected
    await eventually(lambda: not feed_server.sids)  # stopped with the app


async def test_after_the_server_drops_it_the_feed_reconnects_and_the_new_subscription_empties_the_cache(
    client: httpx.AsyncClient, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "reconnector")
    assetpay.market.reply(page("1.00"), page("2.00", first=1), page("1.25"), page("2.25", first=1))
    assert await market(client, "reconnector") == [("listing-0", "1.00")]
    assert await market(client, "reconnector", game=252490) == [("listing-1", "2.00")]

    await feed_server.drop_all()
    await eventually(lambda: feed_server.welcomed == 2)  # reconnected, and through `sync subscribe` again

    assert (wired.feed.connections, wired.feed.refusals, wired.feed.connected) == (2, 0, True)
    assert feed_server.attempts == [API_KEY, API_KEY]
    assert await market(client, "reconnector") == [("listing-0", "1.25")]
    assert await market(client, "reconnector", game=252490) == [("listing-1", "2.25")]
    assert assetpay.market.call_count == 4


async def test_the_feed_keeps_trying_while_the_server_is_down_and_reconnects_when_it_is_back(
    resources: Resources, assetpay: AssetPay
) -> None:
    port = free_port()
    wired = wire(resources, f"http://127.0.0.1:{port}", reconnect_delay=0.05, max_reconnect_delay=0.2)
    try:
        first = FeedServer()
        async with serve_feed(first, port):
            wired.feed.start()
            await eventually(lambda: first.welcomed == 1)
        # The server went away: the connection ended, and attempts fail while nothing listens.
        await eventually(lambda: not wired.feed.connected)
        tried = wired.feed.attempts
        await eventually(lambda: wired.feed.attempts >= tried + 2)
        assert wired.feed.connections == 1
        second = FeedServer()
        async with serve_feed(second, port):
            await eventually(lambda: second.welcomed == 1)
            assert wired.feed.connected
            assert wired.feed.connections == 2
    finally:
        await wired.feed.stop()


async def test_a_refused_key_is_retried_with_backoff_and_logged_without_the_key(
    resources: Resources, feed_server: FeedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="assetpay_merchant.gateway.feed")
    wrong_key = "ap_wrong_key_0123456789"
    wired = wire(resources, feed_server.url, api_key=wrong_key, reconnect_delay=0.05, max_reconnect_delay=0.4)
    wired.feed.start()
    try:
        await eventually(lambda: len(feed_server.attempts) >= 4)
    finally:
        await wired.feed.stop()
    assert set(feed_server.attempts) == {wrong_key}
    assert wired.feed.refusals >= 3
    assert wired.feed.connections >= 4
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR and "ASSETPAY_API_KEY" in r.getMessage()]
    assert len(refusals) >= 3
    assert wrong_key not in caplog.text
    gaps = [b - a for a, b in zip(feed_server.attempted_at, feed_server.attempted_at[1:], strict=False)]
    assert gaps[2] > gaps[0]  # the waits grow (0.05 s, 0.1 s, 0.2 s, ... each ±20%, plus the refusal itself)


def test_reconnect_delays_double_from_30_seconds_up_to_5_minutes() -> None:
    feed = RealtimeFeed("https://api.assetpay.gg", SecretStr("ap_key"), FeedConsumer(None, None), jitter=lambda: 0.5)  # type: ignore[arg-type]
    assert [feed.delay(n) for n in range(7)] == [30, 60, 120, 240, 300, 300, 300]
    low = RealtimeFeed("https://x.test", SecretStr("k"), FeedConsumer(None, None), jitter=lambda: 0.0)  # type: ignore[arg-type]
    high = RealtimeFeed("https://x.test", SecretStr("k"), FeedConsumer(None, None), jitter=lambda: 1.0)  # type: ignore[arg-type]
    assert (low.delay(0), high.delay(0)) == (pytest.approx(24), pytest.approx(36))


def test_the_key_goes_in_the_query_string_and_nowhere_else() -> None:
    assert feed_url("https://api.assetpay.gg", "ap_a/b+c") == "https://api.assetpay.gg?apiKey=ap_a%2Fb%2Bc"
    assert feed_url("https://x.test/?region=eu", "k") == "https://x.test/?region=eu&apiKey=k"
    feed = RealtimeFeed("https://api.assetpay.gg", SecretStr("ap_secret_key"), FeedConsumer(None, None))  # type: ignore[arg-type]
    assert "ap_secret_key" not in repr(feed)
