"""Senders that behave like AssetPay towards a backend that may die at any moment, and the model they keep.

Each sender owns one user and plays that user's trades one after the other, so what the user must end up with is
known without asking the backend: the model moves only when a delivery is acknowledged. Like AssetPay, a sender
retries every delivery until it gets a 2xx (capped, jittered backoff): a regular event keeps its delivery id across
retries, every attempt at an approval ask has a new one (same trade). Some answers are lost after the backend
committed: the sender reads and ignores them, or hangs up right after sending, and retries.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import httpx

from tests.support import dumps, signed, trade

Fate = Literal["answered", "ignored", "dropped"]
Send = Callable[[dict[str, Any]], Awaitable[bool]]
IGNORE_RATE = 0.12  # the answer arrives and is lost (AssetPay timed out just before it)
DROP_RATE = 0.08  # the sender hangs up right after sending (maybe before, maybe after the commit)
BACKOFF_BASE, BACKOFF_CAP = 0.02, 0.5
DELIVERY_DEADLINE = 60.0  # a delivery not acknowledged within this long fails the test
PACE = 0.01  # between two deliveries of one sender
REQUEST_TIMEOUT = 10.0  # what AssetPay waits for one answer (10 s per approval attempt)
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST and its fate; `status` None: no HTTP answer (refused, reset, hung up on)."""

    sent: float
    answered: float
    status: int | None
    fate: Fate
    approval: bool


@dataclass
class Withdrawal:
    """What the model expects of one withdrawal: its verdict, and what it finally cost."""

    price: Decimal
    verdict: str
    answers: list[dict[str, Any]] = field(default_factory=list)
    """Every verdict the backend gave for it, lost answers included: they must all be the same."""


@dataclass
class Traffic:
    """What every sender did, shared: attempts in order, and the stop signal."""

    base_url: str
    attempts: list[Attempt] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    undelivered: list[str] = field(default_factory=list)

    def first_success_after(self, moment: float) -> float | None:
        """When the first attempt sent after `moment` was answered 2xx (None: none yet)."""
        times = [a.answered for a in self.attempts if a.sent >= moment and a.status is not None and a.status < 300]
        return min(times) if times else None


@dataclass
class Sender:
    """One user's trades, played as AssetPay would deliver them; `entries` and `balance` are the model."""

    index: int
    user: str
    traffic: Traffic
    rng: random.Random = field(init=False)
    balance: Decimal = Decimal(0)
    entries: list[Decimal] = field(default_factory=list)
    withdrawals: dict[str, Withdrawal] = field(default_factory=dict)
    delivered: list[str] = field(default_factory=list)
    """The delivery ids of the regular events acknowledged."""
    approval_asks: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.index)  # amounts and fates, not secrets

    def _fate(self) -> Fate:
        roll = self.rng.random()
        return "ignored" if roll < IGNORE_RATE else "dropped" if roll < IGNORE_RATE + DROP_RATE else "answered"

    async def _attempt(
        self, http: httpx.AsyncClient, raw: bytes, delivery_id: str, *, approval: bool
    ) -> tuple[Fate, httpx.Response | None]:
        fate = self._fate()
        headers = signed(raw, delivery_id=delivery_id)
        sent = time.monotonic()
        response: httpx.Response | None = None
        if fate == "dropped":
            await self._hang_up_after_sending(raw, headers)
        else:
            try:
                response = await http.post("/webhooks/assetpay", content=raw, headers=headers)
            except httpx.HTTPError:
                response = None
        status = response.status_code if response is not None else None
        self.traffic.attempts.append(Attempt(sent, time.monotonic(), status, fate, approval))
        return fate, response

    async def _hang_up_after_sending(self, raw: bytes, headers: dict[str, str]) -> None:
        """Write the whole request on a connection of its own, then close it a moment later without reading."""
        url = httpx.URL(self.traffic.base_url)
        try:
            _, writer = await asyncio.open_connection(url.host, url.port)
        except OSError:
            return
        lines = ["POST /webhooks/assetpay HTTP/1.1", f"Host: {url.host}:{url.port}", f"Content-Length: {len(raw)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + raw)
            await writer.drain()
            await asyncio.sleep(self.rng.uniform(0, 0.03))  # sometimes mid-transaction, sometimes after the commit
        except OSError:
            pass
        finally:
            writer.close()

    async def _backoff(self, tries: int) -> None:
        await asyncio.sleep(min(BACKOFF_CAP, BACKOFF_BASE * 2**tries) * self.rng.uniform(0.5, 1.0))

    async def event(self, http: httpx.AsyncClient, body: dict[str, Any]) -> bool:
        """Deliver a regular event (one delivery id, every retry) until acknowledged; False past the deadline."""
        raw, delivery_id = dumps(body), f"dlv-{uuid.uuid4()}"
        deadline = time.monotonic() + DELIVERY_DEADLINE
        for tries in range(1_000_000):
            fate, response = await self._attempt(http, raw, delivery_id, approval=False)
            if fate == "answered" and response is not None and response.is_success:
                self.delivered.append(delivery_id)
                return True
            if time.monotonic() > deadline:
                break
            await self._backoff(tries)
        self.traffic.undelivered.append(delivery_id)
        return False

    async def ask(self, http: httpx.AsyncClient, body: dict[str, Any], withdrawal: Withdrawal) -> bool:
        """Ask for a verdict (a new delivery id each attempt) until one is acknowledged; every verdict seen, lost
        ones included, goes into `withdrawal.answers`."""
        raw = dumps(body)
        deadline = time.monotonic() + DELIVERY_DEADLINE
        for tries in range(1_000_000):
            self.approval_asks += 1
            fate, response = await self._attempt(http, raw, f"ask-{uuid.uuid4()}", approval=True)
            if response is not None and response.is_success:
                withdrawal.answers.append(response.json())
                if fate == "answered":
                    return True
            if time.monotonic() > deadline:
                break
            await self._backoff(tries)
        self.traffic.undelivered.append(f"approval of {body['trade']['id']}")
        return False

    def _credit(self, amount: Decimal) -> None:
        self.balance += amount
        self.entries.append(amount)

    async def run(self) -> None:
        """Trades until told to stop (the current one is always finished): deposits with redeliveries, stale news
        and some left on hold; withdrawals approved or rejected, then completed or failed."""
        async with httpx.AsyncClient(base_url=self.traffic.base_url, timeout=REQUEST_TIMEOUT) as http:

            async def send(body: dict[str, Any]) -> bool:
                await asyncio.sleep(PACE)
                return await self.event(http, body)

            for n in range(1_000_000):
                if self.traffic.stop.is_set():
                    return
                if n % 3 == 2 and self.balance > 0:
                    if not await self._withdrawal(http, n, send):
                        return
                elif not await self._deposit(n, send):
                    return

    async def _deposit(self, n: int, send: Send) -> bool:
        held = trade(status="hold", total=Decimal(self.rng.randint(1_000, 50_000)) * CENT, user_id=self.user)
        if not await send({"trade": held}):
            return False
        self._credit(held["preCredit"])
        if n % 4 == 0 and not await send({"trade": held}):  # the same news in a second delivery: moves nothing
            return False
        if n % 5 == 0:
            return True  # stays on hold
        completed = {**held, "status": "completed"}
        if not await send({"trade": completed}):
            return False
        self._credit(held["totalPrice"] - held["preCredit"])
        return not (n % 7 == 0 and not await send({"trade": held}))  # the hold arriving late: stale

    async def _withdrawal(self, http: httpx.AsyncClient, n: int, send: Send) -> bool:
        if n % 4 == 1:  # more than the user has: rejected
            price = self.balance + Decimal(self.rng.randint(100, 5_000)) * CENT
        else:
            price = max(CENT, (self.balance * Decimal(self.rng.uniform(0.1, 0.9))).quantize(CENT))
        ask = trade(type="withdraw", status="initiated", total=price, user_id=self.user)
        withdrawal = Withdrawal(price, "approve" if price <= self.balance else "reject")
        self.withdrawals[ask["id"]] = withdrawal
        await asyncio.sleep(PACE)
        if not await self.ask(http, {"trade": ask}, withdrawal):
            return False
        if withdrawal.verdict == "approve":
            self._credit(-price)  # debited before the approval is answered
        if withdrawal.verdict == "reject" or n % 5 == 0:
            error = "MERCHANT_REJECTED" if withdrawal.verdict == "reject" else "PURCHASE_FAILED"
            failed = {**ask, "status": "failed", "error": error}
            if not await send({"trade": failed}):
                return False
            if withdrawal.verdict == "approve":
                self._credit(price)  # refunded in full
            return True
        return bool(await send({"trade": {**ask, "status": "completed"}}))
