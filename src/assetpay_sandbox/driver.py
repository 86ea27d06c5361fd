"""The sandbox's engine: owns the state, moves trades along their lifecycle and POSTs signed callbacks.

Callbacks are signed exactly as AssetPay signs them (`X-AssetPay-Signature: t=...,id=...,s=...` over the raw bytes
sent). A regular event keeps its delivery id across retries; every approval attempt gets a new one. A background
task (`start()`/`stop()`) calls `tick()`; tests and developers call `step()`/`tick()`/`deliver()` to move on demand.
Failed callbacks are retried on a capped, jittered schedule; the chaos switches (chaos.py) make delivery misbehave
the way the real gateway's can. With a database the whole sandbox is saved shortly after every change and loaded
again at start (`open()`/`close()`, persistence.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from assetpay_merchant.gateway.signature import SIGNATURE_HEADER, signature_header
from assetpay_sandbox.chaos import Chaos, ChaosSettings
from assetpay_sandbox.persistence import SandboxBusy, SandboxStore
from assetpay_sandbox.state import (
    FORCED_ENDINGS,
    Event,
    SandboxState,
    SimTrade,
    conflict,
    dump_event,
    load_event,
    trade_body,
)
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
SAVE_DELAY_SECONDS = 0.2  # changes within this window are saved together
SNAPSHOT_VERSION = 1
LOG_SIZE = 1000
_MAX_WALK = 10  # steps to reach `completed` from anywhere, with room to spare


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Delivery:
    """A regular trade event waiting to be delivered (again); `duplicate` when chaos sends a delivered one again."""

    delivery_id: str
    event: Event
    attempts: int
    next_at: datetime
    duplicate: bool = False

    def dump(self) -> dict[str, Any]:
        return {
            "deliveryId": self.delivery_id,
            "event": dump_event(self.event),
            "attempts": self.attempts,
            "nextAt": self.next_at.isoformat(),
            "duplicate": self.duplicate,
        }

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> Delivery:
        return cls(
            delivery_id=raw["deliveryId"],
            event=load_event(raw["event"]),
            attempts=raw["attempts"],
            next_at=datetime.fromisoformat(raw["nextAt"]),
            duplicate=raw.get("duplicate", False),
        )


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
        chaos: ChaosSettings | None = None,
        seed: int | None = None,
        database_url: str | None = None,
        save_delay_seconds: float = SAVE_DELAY_SECONDS,
    ) -> None:
        if step_seconds <= 0:
            raise ValueError("step_seconds must be positive")
        if hold_seconds is not None and hold_seconds < 0:
            raise ValueError("hold_seconds must be 0 or more")
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
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
        self.chaos = Chaos(chaos, seed=seed)
        self._retry_delays = tuple(retry_delays) or (1.0,)
        self._max_attempts = max_delivery_attempts
        self._approval_delays = tuple(approval_retry_delays) or (1.0,)
        self._transport = callback_transport
        self._http: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.store = None if database_url is None else SandboxStore(database_url, merchant_id=merchant_id)
        self._save_delay = save_delay_seconds
        self._changed = asyncio.Event()
        self._saver: asyncio.Task[None] | None = None
        self._restored = False
        self._saved: str | None = None

    @property
    def hold_seconds(self) -> float:
        return self.state.hold.total_seconds()

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the saved state (with a database), then run the driver in the background (idempotent)."""
        await self.open()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="assetpay-sandbox-driver")

    async def stop(self) -> None:
        """Stop the background driver, save what is left and close the callback client (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        await self.close()

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

    # -- kept across restarts -------------------------------------------------------------------------------------

    async def open(self) -> None:
        """With a database: load the saved sandbox (the first time) and save every change from now on
        (idempotent; without a database, nothing to do)."""
        if self.store is None or (self._saver is not None and not self._saver.done()):
            return
        try:
            await self.store.open()
        except SandboxBusy as exc:
            # Two writers would overwrite each other's state: this one keeps its own in memory instead.
            log.warning("%s; this sandbox keeps its state in memory only", exc)
            self.store = None
            return
        if not self._restored:
            saved = await self.store.load()
            if saved is not None and saved.get("version") == SNAPSHOT_VERSION:
                self.load(saved)
                log.info(
                    "sandbox state loaded: %d trades, %d callbacks waiting", len(self.state.trades), len(self.outbox)
                )
            elif saved is not None:
                log.warning("sandbox state of version %r ignored; starting afresh", saved.get("version"))
            self._restored = True
        self._saver = asyncio.create_task(self._save_changes(), name="assetpay-sandbox-saver")
        self.touch()  # whatever happened before opening is saved too

    async def close(self) -> None:
        """Save what is left and disconnect from the database (idempotent)."""
        saver, self._saver = self._saver, None
        if saver is not None:
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
        if self.store is None or saver is None:
            return  # no database, or never opened
        try:
            await self.flush()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.error("sandbox state not saved on the way out (%s: %s)", type(exc).__name__, exc)
        await self.store.close()

    def touch(self) -> None:
        """Something may have changed: save within the save delay (the app calls it after every request)."""
        self._changed.set()

    async def flush(self) -> None:
        """Save the sandbox now, unless nothing changed since the last save."""
        if self.store is None:
            return
        text = json.dumps(self.dump(), separators=(",", ":"))
        if text != self._saved:
            await self.store.save(text)
            self._saved = text

    async def _save_changes(self) -> None:
        while True:
            await self._changed.wait()
            await asyncio.sleep(self._save_delay)  # gather a burst of changes into one save
            self._changed.clear()
            try:
                await self.flush()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("sandbox state not saved (%s: %s); trying again", type(exc).__name__, exc)
                self._changed.set()
                await asyncio.sleep(1.0)

    def dump(self) -> dict[str, Any]:
        """Everything the sandbox keeps, JSON-able: the state, the callbacks waiting, chaos, the delivery log."""
        return {
            "version": SNAPSHOT_VERSION,
            "state": self.state.dump(),
            "outbox": [delivery.dump() for delivery in self.outbox],
            "chaos": self.chaos.dump(),
            "log": list(self.log),
        }

    def load(self, data: Mapping[str, Any]) -> None:
        """Carry on from a `dump()`. The clock settings and credentials stay the ones this sandbox was made with."""
        self.state.load(data.get("state", {}))
        self.outbox = [Delivery.load(raw) for raw in data.get("outbox", ())]
        self.chaos.load(data.get("chaos", {}))
        self.log = deque(data.get("log", ()), maxlen=LOG_SIZE)

    def configure_chaos(self, settings: ChaosSettings, *, seed: int | None = None) -> None:
        """New chaos switches for the rest of the run (a seed restarts the RNG from it)."""
        self.chaos.configure(settings, seed=seed)
        self.touch()

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
        self.touch()
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
            fault="approval timed out" if self.chaos.approval_times_out() else None,
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
                trade.due_at = now + timedelta(seconds=self.chaos.jitter(delay))

    # -- callbacks ------------------------------------------------------------------------------------------------

    def _collect(self) -> None:
        """Move new events from the state into the outbox, each with its own delivery id (a random one: ids
        from the seeded RNG would repeat in the next run with the same seed, and the merchant would drop them as
        duplicates)."""
        now = self.clock()
        events, self.state.events = self.state.events, []
        for event in events:
            wait = self.chaos.first_wait(self.step_seconds)
            self.outbox.append(Delivery(str(uuid.uuid4()), event, 0, now + timedelta(seconds=wait)))
        if events:
            self.touch()

    async def _deliver(self, *, force: bool) -> int:
        """Send pending events (all of them when forced, else those due); back off the failures."""
        self._collect()
        delivered = 0
        due = [d for d in self.outbox if force or d.next_at <= self.clock()]
        for delivery in self.chaos.order(due):
            self.touch()
            answer = await self._post(
                delivery.event.body,
                delivery.delivery_id,
                delivery.event.trade_id,
                delivery.event.status,
                kind="event",
                fault=self.chaos.drop(),
                duplicate=delivery.duplicate,
            )
            delivery.attempts += 1
            if answer.ok:
                self.outbox.remove(delivery)
                delivered += 1
                again = None if delivery.duplicate else self.chaos.duplicate_after(self.step_seconds)
                if again is not None:  # AssetPay's retries can repeat a delivered callback: same id, same bytes
                    later = self.clock() + timedelta(seconds=again)
                    self.outbox.append(Delivery(delivery.delivery_id, delivery.event, 0, later, duplicate=True))
            elif delivery.attempts >= self._max_attempts:
                self.outbox.remove(delivery)
                log.warning("sandbox gave up on callback %s after %d attempts", delivery.delivery_id, delivery.attempts)
            else:
                delay = self._retry_delays[min(delivery.attempts, len(self._retry_delays)) - 1]
                delivery.next_at = self.clock() + timedelta(seconds=self.chaos.jitter(delay))
        return delivered

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(transport=self._transport, follow_redirects=False)
        return self._http

    async def _post(
        self,
        body: bytes,
        delivery_id: str,
        trade_id: str,
        status: str,
        *,
        kind: str,
        fault: str | None = None,
        duplicate: bool = False,
    ) -> Answer:
        """One signed POST of the raw bytes to the callback URL, recorded in the delivery log. A chaos `fault`
        loses the attempt: `not sent` sends nothing; `answer lost` and `approval timed out` send it and throw the
        merchant's answer away."""
        timeout = APPROVAL_TIMEOUT_SECONDS if kind == "approval" else CALLBACK_TIMEOUT_SECONDS
        timestamp = iso(self.clock())  # always the real clock's time: the merchant checks it within ±300 s
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "AssetPay-Sandbox/1.0",
            SIGNATURE_HEADER: signature_header(self.secret, delivery_id, timestamp, body),
        }
        if fault == "not sent":
            answer = Answer(None, error="chaos: not sent")
        else:
            try:
                response = await self._client().post(self.callback_url, content=body, headers=headers, timeout=timeout)
                answer = Answer(response.status_code, response.content)
            except httpx.HTTPError as exc:
                answer = Answer(None, error=f"{type(exc).__name__}: {exc}")
        labels = (["duplicate"] if duplicate else []) + ([fault] if fault is not None else [])
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
                "chaos": labels,
            }
        )
        if fault is not None:
            answer = Answer(None, error=f"chaos: {fault}")
        if not answer.ok:
            log.info(
                "sandbox %s callback %s (trade %s) failed: %s",
                kind,
                delivery_id,
                trade_id,
                answer.error or answer.status,
            )
        return answer
