"""The sandbox's engine: owns the state, moves trades along their lifecycle and POSTs signed callbacks.

Callbacks are signed exactly as AssetPay signs them (`X-AssetPay-Signature: t=...,id=...,s=...` over the raw bytes
sent). A regular event keeps its delivery id across retries; every approval attempt gets a new one. A background
task (`start()`/`stop()`) calls `tick()`; tests and developers call `step()`/`tick()`/`deliver()` to move on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from assetpay_merchant.gateway.signature import SIGNATURE_HEADER, signature_header
from assetpay_sandbox.state import FORCED_ENDINGS, Event, SandboxState, SimTrade, conflict, trade_body
from assetpay_sandbox.wire import iso

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

DEFAULT_STEP_SECONDS = 5.0
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (1, 2, 5, 15, 30, 60, 120, 300, 600)
DEFAULT_MAX_DELIVERY_ATTEMPTS = 12
APPROVAL_ATTEMPTS = 3
APPROVAL_RETRY_DELAYS: tuple[float, ...] = (2, 5)
APPROVAL_TIMEOUT_SECONDS = 10.0
CALLBACK_TIMEOUT_SECONDS = 15.0
_MAX_WALK = 10  # steps to reach `completed` from anywhere, with room to spare


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Delivery:
    """A regular trade event waiting to be delivered (again)."""

    delivery_id: str
    event: Event
    attempts: int
    next_at: datetime


@dataclass(frozen=True, slots=True)
class Answer:
    """What the merchant's callback URL answered: a status and body, or the transport error."""

    status: int | None
    body: bytes = b""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def verdict(self) -> str | None:
        """`approve`, `reject`, or None when the attempt failed and may be retried (ASSETPAY.md §6)."""
        if self.status is None or self.status in (408, 429) or self.status >= 500:
            return None
        if 400 <= self.status < 500:
            return "reject"
        if not self.ok:
            return None  # 1xx/3xx: not an answer
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            body = json.loads(self.body)
            if isinstance(body, dict) and str(body.get("action", "")).lower() == "reject":
                return "reject"
        return "approve"


class Sandbox:
    """The simulated gateway of one merchant: trades, callbacks, and the knobs developers turn."""

    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str,
        merchant_id: str,
        callback_url: str,
        step_seconds: float = DEFAULT_STEP_SECONDS,
        hold_seconds: float | None = None,
        clock: Clock = utc_now,
        callback_transport: httpx.AsyncBaseTransport | None = None,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        max_delivery_attempts: int = DEFAULT_MAX_DELIVERY_ATTEMPTS,
        approval_retry_delays: Sequence[float] = APPROVAL_RETRY_DELAYS,
        cancel_min_age_seconds: float = 0.0,
    ) -> None:
        if step_seconds <= 0:
            raise ValueError("step_seconds must be positive")
        self.api_key = api_key
        self.secret = api_secret.encode()
        self.merchant_id = merchant_id
        self.callback_url = callback_url
        self.clock = clock
        self.step_seconds = step_seconds
        self.state = SandboxState(
            step=timedelta(seconds=step_seconds),
            hold=timedelta(seconds=step_seconds if hold_seconds is None else hold_seconds),
            cancel_min_age=timedelta(seconds=cancel_min_age_seconds),
        )
        self.outbox: list[Delivery] = []
        self.log: deque[dict[str, Any]] = deque(maxlen=1000)
        self._retry_delays = tuple(retry_delays) or (1.0,)
        self._max_attempts = max_delivery_attempts
        self._approval_delays = tuple(approval_retry_delays) or (1.0,)
        self._transport = callback_transport
        self._http: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the driver in the background (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="assetpay-sandbox-driver")

    async def stop(self) -> None:
        """Stop the background driver and close the callback client (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        poll = max(0.01, min(self.step_seconds / 2, 1.0))
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("sandbox driver tick failed")
            await asyncio.sleep(poll)

    # -- moving on ------------------------------------------------------------------------------------------------

    async def tick(self) -> dict[str, int]:
        """Do what is due by the clock: trade steps, approval attempts, callback (re)deliveries."""
        async with self._lock:
            now = self.clock()
            due = [t for t in self.state.live.values() if t.due_at is not None and t.due_at <= now]
            for trade in due:
                await self._step_trade(trade)
            delivered = await self._deliver(force=False)
        return {"advanced": len(due), "delivered": delivered, "pending": len(self.outbox)}

    async def step(self) -> dict[str, int]:
        """Move every trade in flight one step now and retry every pending callback, whatever the clock says."""
        async with self._lock:
            moving = list(self.state.live.values())
            for trade in moving:
                await self._step_trade(trade)
            delivered = await self._deliver(force=True)
        return {"advanced": len(moving), "delivered": delivered, "pending": len(self.outbox)}

    async def deliver(self) -> dict[str, int]:
        """Send every pending callback now, ignoring backoff."""
        async with self._lock:
            delivered = await self._deliver(force=True)
        return {"advanced": 0, "delivered": delivered, "pending": len(self.outbox)}

    async def advance(
        self, trade: SimTrade, *, to: str | None = None, error: str | None = None, reverted_by: str | None = None
    ) -> None:
        """One step (`to` unset), the regular path up to `completed`, or a forced final status."""
        async with self._lock:
            if to is None:
                if trade.is_final:
                    raise conflict(f"The trade is {trade.status}; it does not move any more")
                await self._step_trade(trade)
            elif to == "completed":
                if trade.is_final:
                    raise conflict(f"The trade is already {trade.status}")
                for _ in range(_MAX_WALK):
                    before = trade.status
                    await self._step_trade(trade)
                    if trade.is_final or trade.status == before:
                        break  # done, rejected, or an approval attempt failed: the caller sees the status
            elif to in FORCED_ENDINGS:
                self.state.end(trade, to, self.clock(), error=error, reverted_by=reverted_by)
            else:
                raise ValueError(to)
            await self._deliver(force=False)

    async def fail_items(self, trade: SimTrade, item_ids: list[str] | None, error: str) -> None:
        async with self._lock:
            self.state.fail_items(trade, item_ids, error, self.clock())
            await self._deliver(force=False)

    async def _step_trade(self, trade: SimTrade) -> None:
        if trade.is_final:
            return
        if trade.awaits_approval:
            await self._ask_approval(trade)
        else:
            self.state.advance(trade, self.clock())

    # -- the approval protocol ------------------------------------------------------------------------------------

    async def _ask_approval(self, trade: SimTrade) -> None:
        """POST the initiated withdrawal; 2xx approves unless it says reject, 4xx (not 408/429) rejects,
        anything else is a failed attempt, and the third failed attempt rejects with APPROVAL_TIMEOUT."""
        answer = await self._post(
            trade_body(trade),
            str(uuid.uuid4()),
            trade.id,
            trade.status,
            kind="approval",
        )
        if not trade.awaits_approval:
            return  # canceled or forced to an end while we were asking
        verdict = answer.verdict()
        now = self.clock()
        if verdict == "approve":
            self.state.approve(trade, now)
        elif verdict == "reject":
            self.state.reject(trade, now, "MERCHANT_REJECTED")
        else:
            trade.approval_attempts += 1
            if trade.approval_attempts >= APPROVAL_ATTEMPTS:
                self.state.reject(trade, now, "APPROVAL_TIMEOUT")
            else:
                delay = self._approval_delays[min(trade.approval_attempts, len(self._approval_delays)) - 1]
                trade.due_at = now + timedelta(seconds=delay)

    # -- callbacks ------------------------------------------------------------------------------------------------

    def _collect(self) -> None:
        """Move new events from the state into the outbox, each with its own delivery id."""
        now = self.clock()
        events, self.state.events = self.state.events, []
        self.outbox.extend(Delivery(str(uuid.uuid4()), event, 0, now) for event in events)

    async def _deliver(self, *, force: bool) -> int:
        """Send pending events (all of them when forced, else those due); back off the failures."""
        self._collect()
        delivered = 0
        for delivery in list(self.outbox):
            if not force and delivery.next_at > self.clock():
                continue
            answer = await self._post(
                delivery.event.body,
                delivery.delivery_id,
                delivery.event.trade_id,
                delivery.event.status,
                kind="event",
            )
            delivery.attempts += 1
            if answer.ok:
                self.outbox.remove(delivery)
                delivered += 1
            elif delivery.attempts >= self._max_attempts:
                self.outbox.remove(delivery)
                log.warning("sandbox gave up on callback %s after %d attempts", delivery.delivery_id, delivery.attempts)
            else:
                delay = self._retry_delays[min(delivery.attempts, len(self._retry_delays)) - 1]
                delivery.next_at = self.clock() + timedelta(seconds=delay)
        return delivered

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(transport=self._transport, follow_redirects=False)
        return self._http

    async def _post(self, body: bytes, delivery_id: str, trade_id: str, status: str, *, kind: str) -> Answer:
        """One signed POST of the raw bytes to the callback URL, recorded in the delivery log."""
        timeout = APPROVAL_TIMEOUT_SECONDS if kind == "approval" else CALLBACK_TIMEOUT_SECONDS
        timestamp = iso(self.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "AssetPay-Sandbox/1.0",
            SIGNATURE_HEADER: signature_header(self.secret, delivery_id, timestamp, body),
        }
        try:
            response = await self._client().post(self.callback_url, content=body, headers=headers, timeout=timeout)
            answer = Answer(response.status_code, response.content)
        except httpx.HTTPError as exc:
            answer = Answer(None, error=f"{type(exc).__name__}: {exc}")
        self.log.append(
            {
                "at": timestamp,
                "kind": kind,
                "deliveryId": delivery_id,
                "tradeId": trade_id,
                "status": status,
                "httpStatus": answer.status,
                "error": answer.error,
                "verdict": answer.verdict() if kind == "approval" else None,
            }
        )
        if not answer.ok:
            log.info(
                "sandbox %s callback %s (trade %s) failed: %s",
                kind,
                delivery_id,
                trade_id,
                answer.error or answer.status,
            )
        return answer
