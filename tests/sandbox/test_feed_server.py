"""The sandbox serves AssetPay's realtime feed: the sandbox app under uvicorn on a loopback port (REST routes and
feed on one port), the backend's own feed client (`RealtimeFeed`) and bare Socket.IO clients connected to it over
real websockets, and the sandbox moved through its control routes over real HTTP.

The last tests close the loop: the backend (with ASSETPAY_FEED on) talks to the sandbox only over sockets, and the
feed alone keeps its market cache true and settles a deposit whose callbacks never reach it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
import socketio
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import SecretStr

from assetpay_merchant.app import create_app
from assetpay_merchant.config import Settings
from assetpay_merchant.gateway.feed import (
    FundingEvent,
    MarketEvent,
    MarketItemChanged,
    MarketItemRemoved,
    MarketSync,
    TradeNudge,
)
from assetpay_merchant.gateway.feed_client import RealtimeFeed
from assetpay_sandbox import Sandbox, sandbox_of, tokens
from assetpay_sandbox.driver import utc_now
from assetpay_sandbox.feed import SandboxFeed
from assetpay_sandbox.wire import iso
from tests.assetpay_respx import register
from tests.feed.conftest import eventually
from tests.live.conftest import serving
from tests.sandbox.helpers import (
    API_KEY,
    API_SECRET,
    MERCHANT_ID,
    OTHER_STEAM_ID,
    STEAM_ID,
    TRADE_URL,
    Clock,
    Receiver,
    client_token,
    data,
    deposit,
    depositable,
    inventory,
    market,
    withdraw,
)
from tests.support import auth, balance

CS2 = 730


@dataclass
class Served:
    """The sandbox on a real port, with a real HTTP client for its routes."""

    url: str
    app: FastAPI
    http: httpx.AsyncClient

    @property
    def sandbox(self) -> Sandbox:
        return sandbox_of(self.app)

    @property
    def feed(self) -> SandboxFeed:
        feed: SandboxFeed = self.app.state.feed
        return feed


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[Served]:
    async with serving(app) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
        yield Served(f"http://{address}", app, http)


@pytest.fixture
async def served(app: FastAPI) -> AsyncIterator[Served]:
    """The sandbox of tests/sandbox (hand-wound clock, callbacks to `receiver`), its driver not running."""
    async with serve(app) as served:
        yield served


@dataclass
class Heard:
    """A FeedSink that keeps what the backend's feed client parsed, in order."""

    markets: list[MarketEvent] = field(default_factory=list)
    trades: list[TradeNudge] = field(default_factory=list)
    funding_events: list[FundingEvent] = field(default_factory=list)

    def market(self, event: MarketEvent) -> None:
        self.markets.append(event)

    def trade(self, event: TradeNudge) -> None:
        self.trades.append(event)

    def funding(self, event: FundingEvent) -> None:
        self.funding_events.append(event)

    def statuses(self, trade_id: str) -> list[str | None]:
        return [nudge.status for nudge in self.trades if nudge.trade_id == trade_id]


@asynccontextmanager
async def listening(url: str, api_key: str = API_KEY) -> AsyncIterator[tuple[RealtimeFeed, Heard]]:
    """The backend's feed client connected to `url`, with quick reconnects."""
    heard = Heard()
    feed = RealtimeFeed(
        url,
        SecretStr(api_key),
        heard,
        reconnect_delay=0.05,
        max_reconnect_delay=0.4,
        connect_timeout=2.0,
        refused_within=3.0,
    )
    feed.start()
    try:
        yield feed, heard
    finally:
        await feed.stop()


class Listener:
    """A bare Socket.IO client, as a frontend would connect: every event with its body, as JSON decodes it."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.events: list[tuple[str, Any]] = []
        self.client.on("*", self._heard)

    async def _heard(self, event: str, *args: Any) -> None:
        self.events.append((event, args[0] if args else None))

    async def connect(self, url: str, query: str) -> None:
        await self.client.connect(f"{url}?{query}", transports=["websocket"], wait_timeout=5)

    def trades(self) -> list[tuple[str, str]]:
        return [(body["trade"]["id"], body["trade"]["status"]) for event, body in self.events if event == "trade"]


@asynccontextmanager
async def listeners(count: int) -> AsyncIterator[list[Listener]]:
    made = [Listener() for _ in range(count)]
    try:
        yield made
    finally:
        for listener in made:
            await listener.client.disconnect()


def bearer(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


# -- the feed and its events ------------------------------------------------------------------------------------


async def test_every_connection_starts_with_sync_subscribe(served: Served) -> None:
    async with listening(served.url) as (feed, heard):
        await eventually(lambda: heard.markets == [MarketSync("subscribe")])
        for sid in list(served.feed.admitted):  # the sandbox drops the connection: the client reconnects
            await served.feed.sio.disconnect(sid)
        await eventually(lambda: heard.markets == [MarketSync("subscribe")] * 2)
        assert (feed.connections, feed.refusals) == (2, 0)


async def test_trade_events_follow_a_deposit_beside_its_callbacks(served: Served, receiver: Receiver) -> None:
    async with listening(served.url) as (_, heard):
        await eventually(lambda: bool(heard.markets))
        headers = await client_token(served.http)
        item = (await depositable(served.http, headers))[0]
        trade = data(await deposit(served.http, headers, [item], externalId="dep-feed"))
        await eventually(lambda: heard.statuses(trade["id"]) == ["initiated"])

        data(await served.http.post("/_sandbox/step"))
        await eventually(lambda: heard.statuses(trade["id"]) == ["initiated", "active"])
        data(await served.http.post(f"/_sandbox/trades/{trade['id']}/advance", params={"to": "completed"}))
        await eventually(lambda: heard.statuses(trade["id"]) == ["initiated", "active", "hold", "completed"])

    # The feed takes nothing from the callbacks: every status was delivered as a callback too.
    assert receiver.statuses(trade["id"]) == ["initiated", "active", "hold", "completed"]


async def test_a_withdrawal_removes_the_listing_it_buys_and_lists_its_replacement(served: Served, clock: Clock) -> None:
    headers = await client_token(served.http)
    before = await market(served.http, headers, game=CS2, perPage=100)
    bought = before[3]
    async with listening(served.url) as (_, heard):
        await eventually(lambda: bool(heard.markets))
        data(await withdraw(served.http, headers, [bought]))
        await eventually(lambda: len(heard.markets) == 3)

    after = await market(served.http, headers, game=CS2, perPage=100)
    assert bought["id"] not in {listing["id"] for listing in after}
    _, removed, listed = heard.markets
    assert removed == MarketItemRemoved(CS2, bought["id"], "market")
    # The listing restocked in the bought one's slot, exactly as the market shows it now.
    assert listed == MarketItemChanged("upsert", CS2, after[3], "market", iso(clock()))
    assert after[3]["id"] != bought["id"]


async def test_a_price_change_patches_the_listing(served: Served, clock: Clock) -> None:
    headers = await client_token(served.http)
    listing = (await market(served.http, headers, game=CS2, perPage=5))[1]
    owned = (await inventory(served.http, headers, game=CS2))[0]
    original = listing["offer"]["price"]
    async with listening(served.url) as (_, heard):
        await eventually(lambda: bool(heard.markets))
        # An inventory price is not on the feed: the patch that follows is the first event after the sync.
        data(await served.http.put(f"/_sandbox/prices/{owned['id']}", json={"price": 1.23}))
        data(await served.http.put(f"/_sandbox/prices/{listing['id']}", json={"price": 12.34}))
        await eventually(lambda: len(heard.markets) == 2)
        data(await served.http.delete(f"/_sandbox/prices/{listing['id']}"))
        await eventually(lambda: len(heard.markets) == 3)

    def patch(price: Decimal) -> MarketItemChanged:
        item = {"id": listing["id"], "marketPrice": price, "offer": {"price": price}}
        return MarketItemChanged("patch", CS2, item, "market", iso(clock()))

    assert heard.markets[1:] == [patch(Decimal("12.34")), patch(original)]
    assert (await market(served.http, headers, game=CS2, perPage=5))[1]["offer"]["price"] == original


def foreign_token() -> str:
    """A well-formed client token signed with another merchant's secret."""
    who = tokens.ClientIdentity(merchant_id=MERCHANT_ID, steam_id=STEAM_ID, trade_url=TRADE_URL)
    return tokens.mint(who, secret=b"another-merchants-secret", issued_at=int(utc_now().timestamp()))


@pytest.mark.parametrize(
    "query",
    [f"apiKey={API_KEY}-revoked", "token=not-a-token", "token={foreign}", "", f"apikey={API_KEY}"],
    ids=["wrong-key", "garbage-token", "foreign-token", "no-credentials", "misspelt-parameter"],
)
async def test_bad_credentials_are_a_bare_disconnect(served: Served, query: str) -> None:
    async with listeners(1) as [listener]:
        await listener.connect(served.url, query.format(foreign=foreign_token()))  # the connection opens ...
        await eventually(lambda: not listener.client.connected)  # ... and is closed, without a word
    assert listener.events == []
    assert (served.feed.refused, served.feed.admitted) == (1, {})


async def test_the_backends_feed_client_sees_a_wrong_key_as_a_refusal(served: Served) -> None:
    async with listening(served.url, api_key="ap_wrong_key") as (feed, heard):
        await eventually(lambda: feed.refusals >= 2)  # refused, retried after the backoff, refused again
    assert feed.connections >= 2
    assert (heard.markets, heard.trades) == ([], [])


async def test_a_client_token_hears_only_its_own_trades(served: Served, receiver: Receiver) -> None:
    mine = await client_token(served.http, STEAM_ID, client_id="user-1")
    theirs = await client_token(served.http, OTHER_STEAM_ID, client_id="user-2")
    async with listening(served.url) as (_, heard), listeners(2) as [me, them]:
        await eventually(lambda: bool(heard.markets))
        await me.connect(served.url, f"token={bearer(mine)}")
        await them.connect(served.url, f"token={bearer(theirs)}")
        await eventually(lambda: len(served.feed.admitted) == 3)

        their_trade = data(await deposit(served.http, theirs, (await depositable(served.http, theirs))[:1]))
        my_trade = data(await deposit(served.http, mine, (await depositable(served.http, mine))[:1]))
        for trade in (their_trade, my_trade, their_trade):
            data(await served.http.post(f"/_sandbox/trades/{trade['id']}/advance"))
        mine_id, theirs_id = my_trade["id"], their_trade["id"]
        # Each waits for its user's last event: anything misrouted was sent before it, so it has arrived too.
        await eventually(lambda: (mine_id, "active") in me.trades())
        await eventually(lambda: (theirs_id, "hold") in them.trades())
        await eventually(lambda: len(heard.trades) == 5)

    assert me.trades() == [(mine_id, "initiated"), (mine_id, "active")]
    assert them.trades() == [(theirs_id, "initiated"), (theirs_id, "active"), (theirs_id, "hold")]
    assert [(nudge.trade_id, nudge.status) for nudge in heard.trades] == [
        (theirs_id, "initiated"),
        (mine_id, "initiated"),
        (theirs_id, "active"),
        (mine_id, "active"),
        (theirs_id, "hold"),
    ]
    # What a trade event carries is the callback's body, `{"trade": Trade}`.
    callbacks = [json.loads(r.raw) for r in receiver.received() if r.trade["id"] == theirs_id]
    assert [body for event, body in them.events] == callbacks


# -- the whole loop: the backend kept true by the sandbox's feed --------------------------------------------------


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def settled_by_nudges() -> float:
    return sum(
        metric_sample.value
        for metric in REGISTRY.collect()
        if metric.name == "settlements"
        for metric_sample in metric.samples
        if metric_sample.name == "settlements_total" and metric_sample.labels.get("source") == "realtime_nudge"
    )


@dataclass
class Backend:
    """The backend with ASSETPAY_FEED on, whose AssetPay is the sandbox on its port (REST and feed alike)."""

    app: FastAPI
    client: httpx.AsyncClient
    sandbox: Served

    @property
    def feed(self) -> RealtimeFeed:
        feed: RealtimeFeed = self.app.state.feed
        return feed


@pytest.fixture
async def backend(settings: Settings, make_app: Callable[..., FastAPI]) -> AsyncIterator[Backend]:
    """The backend connected to a sandbox on the real clock (its callbacks go to `receiver`, never to the backend),
    through the feed's first `sync subscribe`. The market cache TTL is long: only the feed can change a page."""
    async with serve(make_app(clock=utc_now)) as sandbox:
        syncs = sample("assetpay_feed_events_total", {"type": "market.sync"})
        app = create_app(
            settings.model_copy(
                update={
                    "assetpay_base_url": sandbox.url,
                    "assetpay_api_key": SecretStr(API_KEY),
                    "assetpay_api_secret": SecretStr(API_SECRET),
                    "assetpay_api_secret_previous": None,
                    "assetpay_merchant_id": MERCHANT_ID,
                    "assetpay_feed": True,
                    "assetpay_feed_reconnect_seconds": 0.05,
                    "assetpay_feed_nudge_delay_seconds": 0.05,
                    "market_cache_ttl_seconds": 300.0,
                }
            )
        )
        async with (
            LifespanManager(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://backend.test") as client,
        ):
            await eventually(lambda: sample("assetpay_feed_events_total", {"type": "market.sync"}) > syncs)
            yield Backend(app, client, sandbox)


async def backend_market(backend: Backend, user: str) -> list[tuple[str, Decimal]]:
    response = await backend.client.get("/v1/market", headers=auth(user))
    assert response.status_code == 200, response.text
    return [(listing["id"], Decimal(listing["price"])) for listing in response.json()["items"]]


async def test_the_backends_market_cache_follows_the_sandboxs_feed(backend: Backend) -> None:
    sandbox = backend.sandbox
    await register(backend.client, "loop-shopper")
    shown = await backend_market(backend, "loop-shopper")
    assert len(shown) > 5

    patched = sample("market_cache_feed_updates_total", {"action": "patched"})
    repriced, _ = shown[2]
    data(await sandbox.http.put(f"/_sandbox/prices/{repriced}", json={"price": 7.77}))
    expected = [*shown[:2], (repriced, Decimal("7.77")), *shown[3:]]

    async def repriced_shown() -> bool:
        return await backend_market(backend, "loop-shopper") == expected

    await eventually(repriced_shown)
    # Patched in place (the listing cannot move in the catalog's order), not refetched.
    assert sample("market_cache_feed_updates_total", {"action": "patched"}) == patched + 1

    headers = await client_token(sandbox.http)
    listings = await market(sandbox.http, headers, game=CS2)
    bought = listings[5]
    assert bought["id"] == shown[5][0]
    data(await withdraw(sandbox.http, headers, [bought]))

    async def same_as_the_sandbox() -> bool:
        now = [(listing["id"], listing["offer"]["price"]) for listing in await market(sandbox.http, headers, game=CS2)]
        return await backend_market(backend, "loop-shopper") == now

    await eventually(same_as_the_sandbox)  # the page showing the bought listing was dropped and refetched
    assert bought["id"] not in {listing_id for listing_id, _ in await backend_market(backend, "loop-shopper")}


async def test_a_deposit_whose_callbacks_never_arrive_is_settled_through_the_feed(
    backend: Backend, receiver: Receiver
) -> None:
    sandbox = backend.sandbox
    await register(backend.client, "loop-seller")
    response = await backend.client.get("/v1/inventory", headers=auth("loop-seller"))
    assert response.status_code == 200, response.text
    item = next(i for i in response.json()["items"] if i.get("accepted") is not False)
    created = await backend.client.post(
        "/v1/deposits",
        json={"items": [{"itemId": item["id"], "price": item["price"]}], "isInstant": False},
        headers=auth("loop-seller"),
    )
    assert created.status_code == 201, created.text
    trade_id = created.json()["assetpayId"]
    nudged = settled_by_nudges()

    data(await sandbox.http.post(f"/_sandbox/trades/{trade_id}/advance", params={"to": "completed"}))

    async def credited() -> bool:
        return await balance(backend.client, "loop-seller") == Decimal(item["price"])

    await eventually(credited)
    assert settled_by_nudges() > nudged
    # The sandbox did call back, but to `receiver`: the backend learnt of the trade from the feed alone.
    called_back = [json.loads(r.content)["trade"] for r in receiver.requests]
    assert [t["status"] for t in called_back if t["id"] == trade_id] == ["initiated", "active", "hold", "completed"]
