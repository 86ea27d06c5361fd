"""AssetPay's realtime feed, played by the sandbox: a python-socketio server (Engine.IO v4, websocket transport
only) that `create_sandbox_app` mounts at `/socket.io/`, so the sandbox serves its REST routes and its feed on one
port.

It speaks the feed as AssetPay documents it (docs/realtime-feed.md) and as the backend's consumer parses it
(`assetpay_merchant.gateway.feed`):

- `?apiKey=<merchant key>`: every `trade` event and the `market` events; `{type: "sync", reason: "subscribe"}`
  right after every (re)connect.
- `?token=<client token>`: only the `trade` events of that token's user (by Steam id).
- Anything else is accepted and closed again half a second later, without a word: as with AssetPay, a bad key
  shows only as a bare disconnect.

What it says comes from the state as it changes (`SandboxState.observers`), beside the events the driver delivers
as callbacks, never instead of them. Best effort, like the real feed: events go to whoever is connected when they
happen, and nothing is kept or replayed for a client that is not.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import simplejson
import socketio

from assetpay_sandbox import catalog, tokens
from assetpay_sandbox.catalog import CatalogItem
from assetpay_sandbox.driver import Sandbox
from assetpay_sandbox.state import Event
from assetpay_sandbox.wire import SandboxError, iso

log = logging.getLogger(__name__)

FEED_PATH = "/socket.io"
"""Where the feed is mounted: Socket.IO's default path, which is where AssetPay's clients look for it."""
REFUSE_AFTER_SECONDS = 0.5
"""How long a connection with bad credentials stays open. AssetPay closes one within about 1.5 s; closing it at once
would race the client's own handshake, which then fails to connect instead of seeing the disconnect."""
MERCHANT_ROOM = "merchant"
MARKET_SOURCE = "market"


def user_room(steam_id: str) -> str:
    """The room of one end user's client-token connections."""
    return f"user:{steam_id}"


class _WireJson:
    """JSON for Socket.IO packets as AssetPay writes it: money leaves as JSON numbers with their exact digits."""

    @staticmethod
    def dumps(value: Any, **options: Any) -> str:
        text: str = simplejson.dumps(value, use_decimal=True, **options)
        return text

    @staticmethod
    def loads(text: str | bytes, **options: Any) -> Any:
        return json.loads(text, parse_float=Decimal, **options)


class _Packet(socketio.packet.Packet):  # type: ignore[misc]
    """This server's own packet class (python-socketio's `json=` option would change every server and client in
    the process, the backend's feed client included)."""

    json = _WireJson


class SandboxFeed:
    """The feed of one sandbox: observes its state and tells the connected clients (a `state.Observer`).

    `app` is the ASGI app to mount at `FEED_PATH`. Events are sent in the order they happened by one short-lived
    task that runs while there is something to send, so nothing needs starting or stopping.
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            transports=["websocket"],
            # The connection is established before the handler judges the credentials, as AssetPay's is: a
            # refusal is then a plain disconnect, and the `sync` emitted from the handler follows the CONNECT.
            always_connect=True,
            # Credentials travel in the query string, never in cookies: a frontend on any origin may connect.
            cors_allowed_origins="*",
            serializer=_Packet,
            logger=False,
            engineio_logger=False,
        )
        self.app = socketio.ASGIApp(self.sio, socketio_path=None)  # the mount does the routing
        self.admitted: dict[str, str] = {}
        """Connections whose credentials were good: sid → the room they listen in."""
        self.refused = 0
        """Connections closed for bad credentials."""
        self._outgoing: deque[tuple[str, Any, list[str]]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._refusals: set[asyncio.Task[None]] = set()
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        sandbox.state.observers.append(self)

    # -- connections ----------------------------------------------------------------------------------------------

    async def _connect(self, sid: str, environ: Mapping[str, Any], auth: Any = None) -> bool:
        room = self._room_of(parse_qs(environ.get("QUERY_STRING", "")))
        if room is None:
            self.refused += 1
            task = asyncio.create_task(self._refuse(sid), name="sandbox-feed-refusal")
            self._refusals.add(task)
            task.add_done_callback(self._refusals.discard)
            return True
        await self.sio.enter_room(sid, room)
        self.admitted[sid] = room
        if room == MERCHANT_ROOM:
            await self.sio.emit("market", {"type": "sync", "reason": "subscribe"}, to=sid)
        return True

    async def _refuse(self, sid: str) -> None:
        await asyncio.sleep(REFUSE_AFTER_SECONDS)
        await self.sio.disconnect(sid)

    async def _disconnect(self, sid: str, reason: Any = None) -> None:
        self.admitted.pop(sid, None)

    def _room_of(self, query: Mapping[str, list[str]]) -> str | None:
        """The room the credentials give: the merchant's for its API key, a user's for their client token."""
        sandbox = self._sandbox
        api_key = query.get("apiKey", [""])[0]
        if api_key:
            good = hmac.compare_digest(api_key.encode(), sandbox.api_key.encode())
            return MERCHANT_ROOM if good else None
        token = query.get("token", [""])[0]
        if not token:
            return None
        try:
            who = tokens.read(
                token, secret=sandbox.secret, merchant_id=sandbox.merchant_id, now=int(sandbox.clock().timestamp())
            )
        except SandboxError:
            return None
        return user_room(who.steam_id)

    # -- what the state tells (state.Observer) --------------------------------------------------------------------

    def trade_changed(self, event: Event) -> None:
        """`trade {trade}`: the callback's body, to the merchant and to the trade's user."""
        if not self.admitted:
            return
        rooms = [MERCHANT_ROOM]
        trade = self._sandbox.state.trades.get(event.trade_id)
        if trade is not None:
            rooms.append(user_room(trade.owner.steam_id))
        self._send("trade", json.loads(event.body, parse_float=Decimal), rooms)

    def listing_replaced(self, game: int, sold: CatalogItem, listed: CatalogItem) -> None:
        """A withdrawal bought `sold`: it is removed, and the listing restocked in its slot appears."""
        self._market({"type": "remove", "game": game, "source": MARKET_SOURCE, "itemId": sold.id})
        self._market({"type": "upsert", "game": game, "source": MARKET_SOURCE, "item": listed.wire(), "at": self._at()})

    def price_changed(self, item_id: str) -> None:
        """The developer repriced `item_id` (the price control): a `patch` of its price when it is a market
        listing; inventory prices are not on the feed."""
        if not self.admitted:
            return
        for game in sorted(catalog.GAMES):
            listing = next((item for item in self._sandbox.state.market(game) if item.id == item_id), None)
            if listing is not None:
                item = {"id": listing.id, "marketPrice": listing.price, "offer": {"price": listing.price}}
                self._market({"type": "patch", "game": game, "source": MARKET_SOURCE, "item": item, "at": self._at()})
                return

    # -- sending --------------------------------------------------------------------------------------------------

    def _at(self) -> str:
        return iso(self._sandbox.clock())

    def _market(self, body: dict[str, Any]) -> None:
        if self.admitted:
            self._send("market", body, [MERCHANT_ROOM])

    def _send(self, event: str, body: Any, rooms: Sequence[str]) -> None:
        """Queue one event for the rooms; called from inside a change, so the sending is done by a task."""
        self._outgoing.append((event, body, list(rooms)))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._drain(), name="sandbox-feed-sender")

    async def _drain(self) -> None:
        while self._outgoing:
            event, body, rooms = self._outgoing.popleft()
            try:
                await self.sio.emit(event, body, to=rooms)
            except Exception:  # one failed event must not stop the ones after it
                log.exception("sandbox feed: sending a %s event failed", event)
