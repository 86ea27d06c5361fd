"""What AssetPay's realtime feed does here (the connection itself is gateway/feed.py; docs/realtime-feed.md).

- `market` events keep the cached market pages true (`Catalog.market_changed`).
- `trade` events never move money by themselves: they name a trade whose state may have changed. The trade is
  looked up at AssetPay (`GET /secure/trades/{refs}`) and AssetPay's answer is applied through the one settlement
  path (source `realtime_nudge`), one unit of work per trade, exactly as a callback would be: idempotent, so a
  nudge that races a callback or repeats moves no money twice. Nudges are bounded: several for one trade while it
  waits are one lookup, up to 100 waiting trades share one request, at most `concurrency` lookups run at once, at
  most `max_pending` trades wait (beyond that they are dropped: callbacks and reconciliation still cover them), and
  AssetPay's 429, or the merchant's shared lookup budget running dry (services/ratelimits.py), pauses the lookups
  (trade lookups share the merchant's rate limit with reconciliation).
- `deposit` / `withdrawal` (crypto funding) events are logged only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from assetpay_merchant.core.errors import DatabaseUnavailable
from assetpay_merchant.core.vocabulary import MAX_REFS_PER_LOOKUP
from assetpay_merchant.gateway import AssetPayClient, AssetPayError, ErrorKey
from assetpay_merchant.gateway import Trade as AssetPayTrade
from assetpay_merchant.gateway.callbacks import TradeSnapshot
from assetpay_merchant.gateway.feed import FundingEvent, MarketEvent, TradeNudge
from assetpay_merchant.observability import FEED_NUDGES
from assetpay_merchant.services import settlement
from assetpay_merchant.services.catalog import Catalog
from assetpay_merchant.services.settlement import Source
from assetpay_merchant.store.database import Database

log = logging.getLogger(__name__)

RATE_LIMIT_PAUSE = 60.0
"""Seconds to hold the lookups after a 429 that did not say how long (Retry-After)."""


class TradeNudges:
    """Trades the feed named, looked up at AssetPay and applied through settlement, in the background."""

    def __init__(
        self,
        database: Database,
        assetpay: AssetPayClient,
        *,
        delay: float = 0.5,
        concurrency: int = 2,
        max_pending: int = 10_000,
    ) -> None:
        """`delay`: how long a lookup waits for more nudges to join it (coalescing)."""
        if concurrency < 1 or max_pending < 1 or delay < 0:
            raise ValueError("need concurrency >= 1, max_pending >= 1, delay >= 0")
        self._database = database
        self._assetpay = assetpay
        self._delay = delay
        self._concurrency = concurrency
        self._max_pending = max_pending
        self._pending: dict[str, None] = {}
        """Trade ids waiting for a lookup, oldest first (a dict as an ordered set)."""
        self._looking_up: set[str] = set()
        self._wake = asyncio.Event()
        self._paused_until = 0.0
        self._workers: list[asyncio.Task[None]] = []

    def add(self, trade_id: str) -> None:
        """Look this trade up soon. A trade already waiting is not added twice; one being looked up right now is
        looked up once more afterwards (the answer in flight may predate the news)."""
        if trade_id in self._pending:
            return
        if len(self._pending) >= self._max_pending:
            FEED_NUDGES.labels("dropped").inc()
            log.warning(
                "realtime feed: %d trades already wait for a lookup; trade %s left to callbacks and reconciliation",
                len(self._pending),
                trade_id,
            )
            return
        self._pending[trade_id] = None
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being looked up."""
        return not self._pending and not self._looking_up

    def start(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(), name=f"feed-nudges-{n}") for n in range(self._concurrency)
            ]

    async def stop(self) -> None:
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._delay)  # let more nudges join this lookup
            pause = self._paused_until - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            batch = self._take()
            if not batch:
                continue
            try:
                await self._look_up_and_apply(batch)
            except Exception:  # a bug must not end the worker: log it, the next nudge is tried as usual
                log.exception("realtime feed: applying trades %s failed", ", ".join(batch))
            finally:
                self._looking_up.difference_update(batch)
                if self._pending:
                    self._wake.set()

    def _take(self) -> list[str]:
        """Up to 100 waiting trades that are not being looked up right now."""
        batch = [trade_id for trade_id in self._pending if trade_id not in self._looking_up][:MAX_REFS_PER_LOOKUP]
        for trade_id in batch:
            del self._pending[trade_id]
        self._looking_up.update(batch)
        if not any(trade_id not in self._looking_up for trade_id in self._pending):
            self._wake.clear()  # what still waits is being looked up; its worker wakes the others when done
        return batch

    async def _look_up_and_apply(self, batch: Sequence[str]) -> None:
        try:
            answers = await self._assetpay.get_trades(batch)
        except AssetPayError as error:
            FEED_NUDGES.labels("lookup_error").inc(len(batch))
            if error.key in (ErrorKey.RATE_LIMITED, ErrorKey.QUOTA_EXHAUSTED) or error.status == 429:
                pause = error.retry_after if error.retry_after else RATE_LIMIT_PAUSE
                self._paused_until = asyncio.get_running_loop().time() + pause
                log.warning("realtime feed: trade lookups rate limited; paused for %.0f s", pause)
            log.warning(
                "realtime feed: looking up %d trade(s) failed with %s; nothing applied (callbacks and "
                "reconciliation still cover them)",
                len(batch),
                error,
            )
            return
        asked = set(batch)
        found: set[str] = set()
        for answer in answers:
            ref = answer.id if answer.id in asked else answer.external_id
            if ref not in asked or ref in found:
                continue  # AssetPay answered about a trade we did not ask about, or twice
            found.add(ref)
            await self._apply(answer)
        missing = asked - found
        if missing:
            FEED_NUDGES.labels("missing").inc(len(missing))
            log.info("realtime feed: AssetPay does not know trade(s) %s", ", ".join(sorted(missing)))

    async def _apply(self, answer: AssetPayTrade) -> None:
        """AssetPay's word on one trade, through the settlement path in a unit of work of its own."""
        try:
            snapshot = TradeSnapshot.model_validate(answer.raw)
        except ValidationError as exc:
            FEED_NUDGES.labels("invalid").inc()
            log.warning("realtime feed: AssetPay's state of trade %s did not validate: %s", answer.id, exc.errors()[0])
            return
        try:
            async with self._database.unit_of_work() as uow:
                settled = await settlement.apply(uow, snapshot, source=Source.REALTIME_NUDGE)
        except DatabaseUnavailable:
            FEED_NUDGES.labels("apply_error").inc()
            log.warning("realtime feed: trade %s not applied: the database is unavailable", answer.id)
            return
        except Exception:
            FEED_NUDGES.labels("apply_error").inc()
            log.exception("realtime feed: trade %s could not be applied", answer.id)
            return
        FEED_NUDGES.labels("applied").inc()
        log.debug("realtime feed: trade %s applied (%s)", answer.id, settled.outcome)


@dataclass(slots=True)
class FeedConsumer:
    """The feed's sink (gateway.feed.FeedSink): each event's effect, done quickly in the connection's read loop."""

    catalog: Catalog
    nudges: TradeNudges

    def market(self, event: MarketEvent) -> None:
        self.catalog.market_changed(event)

    def trade(self, event: TradeNudge) -> None:
        self.nudges.add(event.trade_id)

    def funding(self, event: FundingEvent) -> None:
        log.info("realtime feed: crypto %s %s is %s (logged only)", event.kind, event.id, event.status)
