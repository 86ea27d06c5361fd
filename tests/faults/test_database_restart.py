"""A database that goes away and comes back costs only the requests in flight.

Callbacks that arrive while PostgreSQL is gone get 503 with Retry-After (never 500), and callbacks succeed again
within a second or two of the database being back: no restart of the app, and no other request in between to nudge
it. Real HTTP against a uvicorn-served app, a private cluster restarted under load (`fast`, `immediate`, and a
two-second stop), then the balances against an independent model and the books checked.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.pool import NullPool

from assetpay_merchant.app import create_app
from assetpay_merchant.store.database import create_engine
from assetpay_merchant.store.migrations import upgrade_async
from tests.faults.conftest import serve, settings_for
from tests.faults.pgcluster import PgCluster, find_bin_dir
from tests.support import (
    auth,
    dumps,
    ledger_problems,
    register_user,
    signed,
    trade,
)

pytestmark = pytest.mark.skipif(find_bin_dir() is None, reason="no PostgreSQL binaries (pgserver or system)")

TEST_BUDGET = 90.0  # seconds, a guard (no pytest-timeout here): ~10 s when the app heals, ~30 s when it never does
SENDERS = 8
USERS = tuple(f"fault-user-{n}" for n in range(5))
PACE = 0.02  # between two deliveries of one sender
RETRY_PAUSE = 0.05  # between two attempts at one delivery
REQUEST_TIMEOUT = 5.0
DELIVERY_DEADLINE = 20.0  # a sender gives up on a delivery after this long
WARM_UP = 1.0  # traffic before the first fault, and between faults once healed
OUTAGE = 2.0  # how long the database stays stopped in the stop/start case
RECOVERY_BOUND = 5.0  # asserted: from the database back to the first 2xx callback
RECOVERY_WAIT = 6.0  # observed: how long a phase waits for that 2xx before going on regardless
DRAIN = 15.0  # after the faults, how long the senders get to finish their trades


class FirstFew(logging.Filter):
    """Lets through the first few warnings and errors of each logger: one traceback explains a flood of them."""

    def __init__(self, limit: int = 3) -> None:
        super().__init__()
        self.limit = limit
        self.seen: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if not hasattr(record, "first_few"):  # decided once, however many handlers ask
            self.seen[record.name] += 1
            record.first_few = self.seen[record.name] <= self.limit
        return bool(record.first_few)

    @property
    def dropped(self) -> int:
        return sum(max(0, count - self.limit) for count in self.seen.values())


@contextmanager
def first_few_logged() -> Iterator[FirstFew]:
    """While inside, the handlers that capture this test's log keep only the first few records of each logger."""
    keep = FirstFew()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield keep
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


@pytest.fixture
async def backend(cluster: PgCluster) -> AsyncIterator[str]:
    await upgrade_async(cluster.url)
    async with serve(create_app(settings_for(cluster.url))) as base_url:
        yield base_url


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST of a callback, and what came back (status None: no HTTP answer at all)."""

    sent: float
    answered: float
    status: int | None
    retry_after: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(slots=True)
class Phase:
    """One fault: when the database went away, when it was back, when the first callback succeeded again."""

    name: str
    down: float
    back: float = 0.0
    recovered: float | None = None

    @property
    def recovery(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.back

    def covers(self, attempt: Attempt, until: float) -> bool:
        """Whether the attempt was in flight while the database was gone, or sent before callbacks worked again."""
        return attempt.answered >= self.down and attempt.sent <= (self.recovered or until)


@dataclass
class Traffic:
    """AssetPay as the app sees it: senders delivering signed deposit callbacks, each retried until a 2xx.

    `credited` is the independent model: what every user should hold, moved only by acknowledged deliveries.
    """

    base_url: str
    attempts: list[Attempt] = field(default_factory=list)
    credited: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(USERS, Decimal(0)))
    undelivered: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def deliver(self, http: httpx.AsyncClient, body: dict[str, Any], delivery_id: str) -> bool:
        """POST one delivery (same id, same body, freshly signed) until it is acknowledged or the deadline."""
        raw = dumps(body)
        deadline = time.monotonic() + DELIVERY_DEADLINE
        while True:
            sent = time.monotonic()
            try:
                response = await http.post(
                    "/webhooks/assetpay", content=raw, headers=signed(raw, delivery_id=delivery_id)
                )
            except httpx.HTTPError as exc:
                self.attempts.append(Attempt(sent, time.monotonic(), None, detail=repr(exc)))
            else:
                attempt = Attempt(
                    sent,
                    time.monotonic(),
                    response.status_code,
                    response.headers.get("Retry-After"),
                    "" if response.is_success else response.text[:300],
                )
                self.attempts.append(attempt)
                if attempt.ok:
                    return True
            if time.monotonic() > deadline:
                self.undelivered.append(delivery_id)
                return False
            await asyncio.sleep(RETRY_PAUSE)

    async def sender(self, index: int) -> None:
        """Deposits for the users in turn: hold, then completed, with redeliveries, duplicates and stale news."""
        rng = random.Random(index)  # amounts, not secrets
        async with httpx.AsyncClient(base_url=self.base_url, timeout=REQUEST_TIMEOUT) as http:

            async def send(body: dict[str, Any], delivery_id: str | None = None) -> bool:
                await asyncio.sleep(PACE)
                return await self.deliver(http, body, delivery_id or f"dlv-{uuid.uuid4()}")

            for n in itertools.count(index):
                if self.stop.is_set():
                    return
                user = USERS[n % len(USERS)]
                held = trade(status="hold", total=Decimal(rng.randint(100, 99_999)) / 100, user_id=user)
                hold_id = f"dlv-{uuid.uuid4()}"
                if not await send({"trade": held}, hold_id):
                    return
                self.credited[user] += held["preCredit"]
                if n % 4 == 0 and not await send({"trade": held}, hold_id):  # redelivered after our 2xx
                    return
                if n % 5 == 0:  # this one stays on hold
                    continue
                completed = {**held, "status": "completed"}
                if not await send({"trade": completed}):
                    return
                self.credited[user] += held["totalPrice"] - held["preCredit"]
                if n % 3 == 0 and not await send({"trade": completed}):  # the same event, a second delivery
                    return
                if n % 7 == 0 and not await send({"trade": held}):  # the hold arriving late: stale, moves nothing
                    return

    def first_success(self, phase: Phase, start: int) -> float | None:
        """When the first callback sent since the fault began was acknowledged after the database was back."""
        for attempt in itertools.islice(self.attempts, start, None):
            if attempt.ok and attempt.sent >= phase.down and attempt.answered >= phase.back:
                return attempt.answered
        return None


async def fault(traffic: Traffic, name: str, act: Callable[[], Awaitable[None]]) -> Phase:
    """Let traffic flow, take the database away and back with `act`, then wait (bounded) for a 2xx callback."""
    await asyncio.sleep(WARM_UP)
    start = len(traffic.attempts)
    phase = Phase(name, down=time.monotonic())
    await act()
    phase.back = time.monotonic()
    deadline = phase.back + RECOVERY_WAIT
    while phase.recovered is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        phase.recovered = traffic.first_success(phase, start)
    return phase


async def outages(cluster: PgCluster, traffic: Traffic) -> list[Phase]:
    async def stop_then_start() -> None:
        await asyncio.to_thread(cluster.stop, "fast")
        await asyncio.sleep(OUTAGE)
        await asyncio.to_thread(cluster.start)

    return [
        await fault(traffic, "restart -m fast", lambda: asyncio.to_thread(cluster.restart, "fast")),
        await fault(traffic, "restart -m immediate", lambda: asyncio.to_thread(cluster.restart, "immediate")),
        await fault(traffic, f"stopped {OUTAGE:g} s", stop_then_start),
    ]


def report(traffic: Traffic, phases: list[Phase], logged: FirstFew) -> str:
    """What was seen, for the assertion messages."""
    statuses = Counter(attempt.status for attempt in traffic.attempts)
    lines = [f"{len(traffic.attempts)} callback attempts, statuses {dict(statuses)}"]
    if logged.dropped:
        lines.append(f"  ({logged.dropped} more warnings and errors were logged than the captured log shows)")
    for phase in phases:
        recovery = "never" if phase.recovery is None else f"{phase.recovery:.2f} s"
        lines.append(f"  {phase.name}: database back after {phase.back - phase.down:.2f} s, 2xx again after {recovery}")
    samples = {attempt.status: attempt.detail for attempt in traffic.attempts if not attempt.ok}
    lines.extend(f"  e.g. {status}: {detail}" for status, detail in samples.items())
    return "\n".join(lines)


async def under_faults(cluster: PgCluster, backend: str) -> tuple[Traffic, list[Phase], bool]:
    """Run the senders through the three outages; whether they then finished their trades in time."""
    traffic = Traffic(backend)
    senders = [asyncio.create_task(traffic.sender(index)) for index in range(SENDERS)]
    try:
        phases = await outages(cluster, traffic)
        await asyncio.sleep(WARM_UP)
    finally:
        traffic.stop.set()
        _, pending = await asyncio.wait(senders, timeout=DRAIN)
        for task in pending:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    for task in senders:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
    return traffic, phases, not pending


async def test_callbacks_get_503_while_the_database_is_gone_and_succeed_once_it_is_back(
    cluster: PgCluster, backend: str
) -> None:
    async with httpx.AsyncClient(base_url=backend, timeout=REQUEST_TIMEOUT) as http:
        for user in USERS:
            await register_user(http, user)

    # From here until the senders are done the app gets callbacks and nothing else: it must heal on its own.
    with first_few_logged() as logged:
        async with asyncio.timeout(TEST_BUDGET):
            traffic, phases, finished = await under_faults(cluster, backend)
    end = time.monotonic()
    seen = report(traffic, phases, logged)

    failures = [attempt for attempt in traffic.attempts if not attempt.ok]
    assert {attempt.status for attempt in failures} <= {503}, f"only 503 while the database is gone\n{seen}"
    assert all(attempt.retry_after for attempt in failures), f"every 503 says when to retry\n{seen}"
    for phase in phases:
        assert phase.recovery is not None, f"{phase.name}: callbacks never succeeded again\n{seen}"
        assert phase.recovery < RECOVERY_BOUND, f"{phase.name}: callbacks succeeded again too late\n{seen}"
    stray = [attempt for attempt in failures if not any(phase.covers(attempt, end) for phase in phases)]
    assert not stray, f"{len(stray)} callbacks failed although sent with the database up\n{seen}"
    assert not traffic.undelivered, f"{len(traffic.undelivered)} deliveries never acknowledged\n{seen}"
    assert finished, f"the senders did not finish their trades within {DRAIN:g} s\n{seen}"

    async with httpx.AsyncClient(base_url=backend, timeout=REQUEST_TIMEOUT) as http:
        balances = {}
        for user in USERS:
            response = await http.get("/v1/balance", headers=auth(user))
            assert response.status_code == 200, response.text
            balances[user] = Decimal(response.json()["available"])
    assert balances == traffic.credited

    engine = create_engine(cluster.url, poolclass=NullPool)
    try:
        assert await ledger_problems(engine) == []
    finally:
        await engine.dispose()
