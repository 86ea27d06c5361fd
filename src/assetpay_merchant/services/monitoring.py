"""What `serve` measures from the database for ops: the books checked now and then, and the gauges of what is at
risk and what waits for a person.

A metric set by a command (`assetpay-merchant ledger check`) ends with that process, so the process that is
scraped checks the books itself, every LEDGER_CHECK_INTERVAL_SECONDS. The ticks are aligned to the clock (every
hour on the hour by default), so the processes of a deployment start their checks together and the advisory lock
lets one of them do the work while the others skip their turn.
"""

from __future__ import annotations

import asyncio
import logging
import time

from assetpay_merchant.core.errors import DatabaseUnavailable
from assetpay_merchant.observability import (
    DATABASE_REACHABLE,
    EXPOSURE_DEBT,
    EXPOSURE_DEBT_USERS,
    EXPOSURE_PRE_CREDIT,
    EXPOSURE_PRE_CREDIT_TRADES,
    GAUGES_REFRESHED,
    LEDGER_CHECK_RUNS,
    REVIEW_QUEUE,
    record_ledger_check,
)
from assetpay_merchant.store import exposure, ledger, review
from assetpay_merchant.store.database import Database
from assetpay_merchant.store.ledger import Discrepancy

log = logging.getLogger(__name__)


async def check_ledger(database: Database) -> list[Discrepancy] | None:
    """Check the books on one snapshot and report it in the `ledger_check_*` metrics; None: another process was
    checking them (skipped). Each mismatch is logged as an error."""
    try:
        async with database.snapshot() as db:
            if not await ledger.take_check_turn(db):
                LEDGER_CHECK_RUNS.labels("skipped").inc()
                return None
            problems = await ledger.check(db)
    except Exception:
        record_ledger_check(None)
        raise
    record_ledger_check(len(problems))
    for problem in problems:
        log.error("ledger check: %s: %s", problem.subject, problem.detail)
    if problems:
        log.error("ledger check failed: %d problem(s)", len(problems))
    else:
        log.info("ledger check passed")
    return problems


async def refresh_gauges(database: Database) -> None:
    """Read exposure (instant credit in hold, debts) and the review queue's size into their gauges, on one
    snapshot. Floats are fine here: a gauge is for watching, never for moving money."""
    async with database.snapshot() as db:
        days = await exposure.pre_credit_in_hold(db)
        debts = await exposure.debts(db)
        queued = await review.queue_size(db)
    EXPOSURE_PRE_CREDIT.set(float(sum(day.total for day in days)))
    EXPOSURE_PRE_CREDIT_TRADES.set(sum(day.trades for day in days))
    EXPOSURE_DEBT.set(float(debts.total))
    EXPOSURE_DEBT_USERS.set(debts.users)
    REVIEW_QUEUE.set(queued)
    GAUGES_REFRESHED.set(time.time())


def until_next_tick(interval: float, now: float) -> float:
    """Seconds from `now` (unix time) to the next multiple of `interval` since the epoch."""
    return interval - now % interval


async def check_ledger_periodically(database: Database, *, interval: float) -> None:
    """`check_ledger` on every tick of the clock `interval` seconds apart, until cancelled."""
    while True:
        await asyncio.sleep(until_next_tick(interval, time.time()))
        try:
            await check_ledger(database)
        except Exception:  # counted as an error; a bug or an outage must not end the job
            log.exception("ledger check could not run")


async def refresh_gauges_periodically(database: Database, *, interval: float) -> None:
    """`refresh_gauges` now and every `interval` seconds, until cancelled; `database_reachable` says whether the
    database answered (a probe Prometheus can alert on, where /readyz needs a prober)."""
    while True:
        try:
            await refresh_gauges(database)
        except DatabaseUnavailable:
            DATABASE_REACHABLE.set(0)
            log.warning("exposure and review-queue gauges not refreshed: the database is unavailable")
        except Exception:  # the gauges keep their last values; gauges_refreshed_timestamp_seconds says how old
            log.warning("exposure and review-queue gauges not refreshed", exc_info=True)
        else:
            DATABASE_REACHABLE.set(1)
        await asyncio.sleep(interval)
