"""AssetPay's realtime feed: the shapes of what it says (the client that connects is `gateway/feed_client.py`,
imported only where the feed is switched on: python-socketio and aiohttp cost every process ~15 MB).

The feed (docs/realtime-feed.md) is best effort: nothing is replayed after a disconnect, and nothing it says moves
money. Its events are parsed here into these shapes; what they do is decided by services/feed.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)


MAX_REF_LENGTH = 128


class FeedPayloadError(ValueError):
    """An event whose body is not what the feed documents; it is logged, counted and skipped."""


# -- what the feed says ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarketItemChanged:
    """`{type: upsert|patch, game, source, item, at?}`: a listing is new or replaced (`upsert`, the whole item) or
    some of its fields changed (`patch`, only those fields). Money in `item` is Decimal."""

    kind: Literal["upsert", "patch"]
    game: int | None
    item: Mapping[str, Any]
    source: str | None = None
    at: str | None = None

    @property
    def listing_id(self) -> str | None:
        """The listing's `id` (what a withdrawal names)."""
        return _text(self.item.get("id"))

    @property
    def parent_id(self) -> str | None:
        """The catalog item the listing belongs to (`itemId`, CS2 market rows only)."""
        return _text(self.item.get("itemId"))


@dataclass(frozen=True, slots=True)
class MarketItemRemoved:
    """`{type: remove, game, source, itemId}`: a listing is gone (bought, withdrawn)."""

    game: int | None
    item_id: str
    source: str | None = None


@dataclass(frozen=True, slots=True)
class MarketSync:
    """`{type: sync, reason: feed, game}`: refetch that game's market; `{type: sync, reason: subscribe}` (after every
    (re)connect, `game` None): refetch everything."""

    reason: str
    game: int | None = None


MarketEvent = MarketItemChanged | MarketItemRemoved | MarketSync


@dataclass(frozen=True, slots=True)
class TradeNudge:
    """`trade {trade}`: this trade changed. Only its id is used: its state is looked up, never taken from here."""

    trade_id: str
    status: str | None = None


@dataclass(frozen=True, slots=True)
class FundingEvent:
    """`deposit` / `withdrawal` (crypto funding): logged only."""

    kind: Literal["deposit", "withdrawal"]
    id: str | None
    status: str | None
    body: Mapping[str, Any]


class FeedSink(Protocol):
    """What the feed's events do (services/feed.py). Called in the connection's read loop: return quickly."""

    def market(self, event: MarketEvent) -> None: ...

    def trade(self, event: TradeNudge) -> None: ...

    def funding(self, event: FundingEvent) -> None: ...


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        text = str(value)
        return text if text else None
    return None


def _game(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise FeedPayloadError("game is not a game id")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FeedPayloadError("game is not a game id") from None


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FeedPayloadError(f"{what} is not an object")
    return value


def parse_market(body: Any) -> MarketEvent:
    data = _object(body, "market event")
    kind = str(data.get("type") or "").lower()
    game = _game(data.get("game"))
    source = _text(data.get("source"))
    if kind in ("upsert", "patch"):
        item = _object(data.get("item"), "item")
        event = MarketItemChanged(
            "upsert" if kind == "upsert" else "patch", game, dict(item), source, _text(data.get("at"))
        )
        if event.listing_id is None and event.parent_id is None:
            raise FeedPayloadError("item has neither id nor itemId")
        return event
    if kind == "remove":
        item_id = _text(data.get("itemId"))
        if item_id is None:
            raise FeedPayloadError("remove without itemId")
        return MarketItemRemoved(game, item_id, source)
    if kind == "sync":
        return MarketSync(str(data.get("reason") or ""), game)
    raise FeedPayloadError(f"unknown market event type {kind[:32]!r}")


def parse_trade(body: Any) -> TradeNudge:
    data = _object(body, "trade event")
    trade = data.get("trade", data)
    trade = _object(trade, "trade")
    trade_id = _text(trade.get("id"))
    if trade_id is None or len(trade_id) > MAX_REF_LENGTH or "," in trade_id:
        raise FeedPayloadError("trade has no usable id")
    return TradeNudge(trade_id, _text(trade.get("status")))


def parse_funding(kind: Literal["deposit", "withdrawal"], body: Any) -> FundingEvent:
    data = _object(body, f"{kind} event")
    funding = data.get("funding", data)
    funding = _object(funding, kind)
    return FundingEvent(kind, _text(funding.get("id")), _text(funding.get("status")), funding)


# -- the connection -------------------------------------------------------------------------------------------------
