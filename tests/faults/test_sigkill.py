"""SIGKILL under load loses nothing and doubles nothing.

A real `assetpay-merchant serve` takes callbacks and withdrawal approvals from 16 senders that behave like AssetPay
(tests/faults/senders.py: every unanswered delivery retried, a regular event under its one delivery id, each
approval attempt under a new one; some answers lost after the commit). The server is SIGKILLed three times mid-run
and started again on the same port each time; the senders go on until every delivery got its answer. Then: every
user's entries are exactly the senders' model (each regular event applied once, in order), every approval has one
verdict, the one every attempt was told, and at most one debit; balances equal their entries, and the ops command
`ledger check` passes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx

from tests.faults.helpers import DEADLINE, Scratch, fetch, fresh_database, ledger_check
from tests.faults.senders import Sender, Traffic
from tests.processes import ServeProcess
from tests.support import auth, register_user

SENDERS = 16
KILLS = 3
TRAFFIC_BETWEEN_KILLS = 2.0  # seconds of traffic before each kill, and after the last restart
FINISH = 90.0  # after the last kill, the senders must finish their trades within this long


@dataclass
class Restart:
    """One kill: when, and when the restarted server was ready and first answered a callback 2xx."""

    killed: float
    ready: float
    first_2xx: float | None = None

    def describe(self) -> str:
        answered = "never" if self.first_2xx is None else f"{self.first_2xx - self.killed:.2f} s"
        return f"ready {self.ready - self.killed:.2f} s after the kill, first 2xx callback {answered} after it"


async def until(check: Callable[[], float | None], within: float) -> float | None:
    """Poll `check` until it gives a value, or None once `within` seconds passed."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value is not None or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.01)


async def kill_and_restart(server: ServeProcess, traffic: Traffic) -> list[Restart]:
    restarts = []
    for _ in range(KILLS):
        await asyncio.sleep(TRAFFIC_BETWEEN_KILLS)
        killed = time.monotonic()
        server.kill()
        server.start()  # same port: AssetPay only knows one URL
        await asyncio.to_thread(server.wait_ready)
        restart = Restart(killed, time.monotonic())
        restart.first_2xx = await until(lambda: traffic.first_success_after(killed), DEADLINE)  # noqa: B023
        restarts.append(restart)
    await asyncio.sleep(TRAFFIC_BETWEEN_KILLS)
    return restarts


async def run(senders: list[Sender], faults: Awaitable[list[Restart]], traffic: Traffic) -> tuple[list[Restart], bool]:
    tasks = [asyncio.create_task(sender.run()) for sender in senders]
    try:
        restarts = await faults
    finally:
        traffic.stop.set()
        _, pending = await asyncio.wait(tasks, timeout=FINISH)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
    return restarts, not pending


def figures(senders: list[Sender], traffic: Traffic, restarts: list[Restart]) -> str:
    attempts = traffic.attempts
    events = sum(len(sender.delivered) for sender in senders)
    asks = sum(len(sender.withdrawals) for sender in senders)
    fates = Counter(attempt.fate for attempt in attempts)
    statuses = Counter(attempt.status for attempt in attempts)
    lines = [
        f"{SENDERS} senders, {KILLS} SIGKILLs: {events} regular deliveries acknowledged and {asks} approvals decided "
        f"in {len(attempts)} attempts ({len(attempts) - events - asks} retries)",
        f"  attempts: {fates['ignored']} answers ignored after the commit, {fates['dropped']} hung up on after "
        f"sending, statuses {dict(statuses)} (None: no answer)",
    ]
    lines += [f"  kill {n}: {restart.describe()}" for n, restart in enumerate(restarts, 1)]
    return "\n".join(lines)


async def test_sigkill_under_load_loses_and_doubles_nothing(scratch: Scratch, tmp_path: Path) -> None:
    database_url = await fresh_database(scratch, "fault_sigkill")
    with ServeProcess(database_url, tmp_path, RECONCILE_INTERVAL_SECONDS="0") as server:
        server.start()
        await asyncio.to_thread(server.wait_ready)
        traffic = Traffic(server.base_url)
        senders = [Sender(index, f"kill-user-{index}", traffic) for index in range(SENDERS)]
        async with httpx.AsyncClient(base_url=server.base_url, timeout=DEADLINE) as http:
            for sender in senders:
                await register_user(http, sender.user)

        restarts, finished = await run(senders, kill_and_restart(server, traffic), traffic)
        seen = figures(senders, traffic, restarts)
        print("\n" + seen)

        assert finished, f"the senders did not finish within {FINISH:g} s\n{seen}"
        assert not traffic.undelivered, f"never acknowledged: {traffic.undelivered[:5]}\n{seen}"
        assert all(restart.first_2xx is not None for restart in restarts), seen
        answered = {attempt.status for attempt in traffic.attempts if attempt.status is not None}
        assert answered == {200}, f"every answer that came is a 200 (no 500, no 503)\n{seen}"
        async with httpx.AsyncClient(base_url=server.base_url, timeout=DEADLINE) as http:
            shown = {
                sender.user: (await http.get("/v1/balance", headers=auth(sender.user))).json() for sender in senders
            }
    # Stopped (SIGTERM, drained): nothing of the hung-up-on attempts is still running while we read the books.

    for sender in senders:
        rows = await fetch(
            database_url, "SELECT amount FROM ledger_entries WHERE user_id = $1 ORDER BY id", sender.user
        )
        posted = [row["amount"] for row in rows]
        assert posted == sender.entries, f"{sender.user}: entries {posted}, the model {sender.entries}"
        assert Decimal(shown[sender.user]["available"]) == sender.balance, sender.user
        cached = await fetch(database_url, "SELECT available FROM balances WHERE user_id = $1", sender.user)
        assert [row["available"] for row in cached] == [sender.balance]

    delivered = [delivery_id for sender in senders for delivery_id in sender.delivered]
    recorded = await fetch(
        database_url, "SELECT delivery_id FROM webhook_deliveries WHERE delivery_id = ANY($1)", delivered
    )
    assert len(recorded) == len(set(delivered)) == len(delivered), "every acknowledged delivery is recorded once"

    verdicts = await fetch(database_url, "SELECT subject_id, verdict, amount FROM approval_verdicts")
    per_trade = Counter(row["subject_id"] for row in verdicts)
    assert set(per_trade.values()) == {1}, "one verdict per trade"
    stored = {row["subject_id"]: (row["verdict"], row["amount"]) for row in verdicts}
    debits = Counter(
        row["assetpay_id"]
        for row in await fetch(
            database_url,
            "SELECT t.assetpay_id FROM ledger_entries e JOIN trades t ON t.id = e.trade_id "
            "WHERE t.type = 'withdraw' AND e.amount < 0",
        )
    )
    for sender in senders:
        for trade_id, withdrawal in sender.withdrawals.items():
            assert stored[trade_id] == (withdrawal.verdict, withdrawal.price), trade_id
            assert {answer["action"] for answer in withdrawal.answers} == {withdrawal.verdict}, trade_id
            assert debits[trade_id] == (1 if withdrawal.verdict == "approve" else 0), trade_id
    assert len(stored) == sum(len(sender.withdrawals) for sender in senders)

    check = ledger_check(database_url)
    assert check.returncode == 0, check.stdout + check.stderr
