"""Reconciliation: asking AssetPay about the trades whose news stopped coming, and applying what it says.

A callback can be lost (AssetPay gave up retrying, we were down longer than it retried), and so can AssetPay's
answer to our own deposit or withdrawal (a timeout after it had created the trade). Either way a trade stays in
flight here while AssetPay has moved on. A pass:

    take the reconciliation lock (one pass at a time, whatever the number of processes)
    select the trades in flight that nothing touched for `quiet_for`, the longest-quiet first (ours that
        AssetPay never acknowledged, `assetpay_id` NULL and `initiated`, are among them)
    look them up in batches (by AssetPay id; by our externalId for unacknowledged ones), no transaction open
    apply each answer through the settlement path (source RECONCILIATION), one unit of work per trade
    fail the trades AssetPay does not know once they are older than `unknown_after` (what they held is given back)

Everything is idempotent: settlement posts `target - posted`, so a pass that repeats or races a callback moves no
money twice. AssetPay refusing a lookup (rate limited, down) stops the pass where it is; every trade applied so far
is complete, none is half done, and the next pass carries on. The merchant's shared lookup budget running dry
(services/ratelimits.py) is waited out instead, up to `quota_wait`: the pass has no user waiting for it.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import NoReturn

from pydantic import ValidationError

from assetpay_merchant.core import policy
from assetpay_merchant.core.errors import DatabaseUnavailable
from assetpay_merchant.core.money import ZERO, format_money
from assetpay_merchant.core.vocabulary import MAX_REFS_PER_LOOKUP
from assetpay_merchant.gateway import AssetPayClient, AssetPayError, ErrorKey
from assetpay_merchant.gateway import Trade as AssetPayTrade
from assetpay_merchant.gateway.callbacks import TradeSnapshot
from assetpay_merchant.observability import (
    RECONCILIATION_FAILURES,
    RECONCILIATION_HEALED,
    RECONCILIATION_LOOKUPS,
    RECONCILIATION_PASSES,
    log_context,
)
from assetpay_merchant.services import settlement
from assetpay_merchant.services.settlement import Source
from assetpay_merchant.store import trades
from assetpay_merchant.store.database import Connection, Database
from assetpay_merchant.store.trades import TradeRow

log = logging.getLogger(__name__)

LOCK_KEY = 0x41_50_52_45_43_4F_4E  # "APRECON": the PostgreSQL advisory lock a pass holds
UNKNOWN_ERROR = "NOT_FOUND_AT_ASSETPAY"
VANISHED = "AssetPay no longer knows this trade; reconciliation failed it"
IN_FLIGHT = tuple(sorted(status.value for status in policy.IN_FLIGHT))


@dataclass(frozen=True, slots=True)
class Rules:
    """Which trades a pass looks at, and when a trade AssetPay does not know is given up."""

    quiet_for: timedelta = timedelta(seconds=600)
    """Look up trades in flight that nothing (callback, answer, pass) touched for this long."""
    unknown_after: timedelta = timedelta(seconds=3600)
    """A trade AssetPay does not know is failed once it is older than this (younger, its creation may still be
    under way: it is left for a later pass)."""
    max_trades: int = 1000
    """At most this many trades per pass (the longest-quiet first); the next pass takes the next ones."""
    batch_size: int = MAX_REFS_PER_LOOKUP
    """Refs per lookup request (AssetPay takes up to 100)."""
    quota_wait: timedelta = timedelta(seconds=120)
    """How long one lookup may wait for the merchant's shared lookup budget before the pass stops."""

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_REFS_PER_LOOKUP:
            raise ValueError(f"batch_size must be 1..{MAX_REFS_PER_LOOKUP}")
        if self.max_trades < 1:
            raise ValueError("max_trades must be at least 1")


class Cause(StrEnum):
    ASSETPAY = "assetpay"
    """AssetPay's current state of the trade was applied."""
    UNKNOWN = "unknown"
    """AssetPay did not know the trade after the ambiguity window: it was failed."""


@dataclass(frozen=True, slots=True)
class Change:
    """What a pass did (or, in a dry run, would do) to one trade."""

    trade_id: uuid.UUID
    assetpay_id: str | None
    type: str
    status_before: str | None
    """None: a trade we had not recorded (another offer of a basket AssetPay split)."""
    status_after: str
    posted: Decimal
    """The ledger entry this change posted (positive: credited to the user; zero: none)."""
    cause: Cause

    def describe(self) -> str:
        before = self.status_before or "(new)"
        money = f"{'+' if self.posted > 0 else ''}{format_money(self.posted)}" if self.posted else "nothing posted"
        where = f"AssetPay {self.assetpay_id}" if self.assetpay_id else "never acknowledged by AssetPay"
        note = " (not known to AssetPay)" if self.cause is Cause.UNKNOWN else ""
        return f"{self.trade_id} {self.type} {before} -> {self.status_after}{note}, {money} [{where}]"


@dataclass(slots=True)
class Report:
    """What one pass did."""

    dry_run: bool = False
    skipped: bool = False
    """Another pass held the lock: this one did nothing."""
    selected: int = 0
    looked_up: int = 0
    found: int = 0
    missing: int = 0
    """Looked up, not known to AssetPay (failed when past the ambiguity window, else left for later)."""
    changes: list[Change] = field(default_factory=list)
    failures: int = 0
    stopped: str | None = None
    """The error key that stopped the pass early (the rest is left for the next pass)."""

    @property
    def clean(self) -> bool:
        return not self.skipped and self.stopped is None and self.failures == 0

    def summary(self) -> str:
        if self.skipped:
            return "reconciliation skipped: another pass is running"
        verb = "would change" if self.dry_run else "changed"
        unknown = sum(1 for change in self.changes if change.cause is Cause.UNKNOWN)
        text = (
            f"reconciliation{' (dry run)' if self.dry_run else ''}: {self.selected} trade(s) to check, "
            f"{self.looked_up} looked up, {self.found} found, {self.missing} unknown to AssetPay; "
            f"{verb} {len(self.changes)} ({unknown} failed as unknown), {self.failures} failure(s)"
        )
        if self.stopped is not None:
            text += f"; stopped early by {self.stopped}"
        return text


Progress = Callable[[int, int], None]
"""Called as the pass goes: (trades looked up so far, trades to look up)."""


class _Stop(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


async def run_pass(
    database: Database,
    assetpay: AssetPayClient,
    rules: Rules | None = None,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Report:
    """One reconciliation pass, unless another is running (then `skipped`). `dry_run`: look up and report what
    would change, applying nothing."""
    rules = rules or Rules()
    report = Report(dry_run=dry_run)
    try:
        async with _exclusive(database) as db:
            if db is None:
                report.skipped = True
            else:
                await _reconcile(database, db, assetpay, rules, report, progress)
    except _Stop as stop:
        report.stopped = stop.key
    except DatabaseUnavailable:
        log.warning("reconciliation stopped: the database is unavailable")
        RECONCILIATION_FAILURES.labels("database_unavailable").inc()
        report.failures += 1
        report.stopped = "DATABASE_UNAVAILABLE"
    outcome = "skipped" if report.skipped else "stopped" if report.stopped else "done"
    RECONCILIATION_PASSES.labels(outcome).inc()
    if not report.skipped:
        log.log(logging.INFO if report.changes or not report.clean else logging.DEBUG, "%s", report.summary())
    return report


async def run_periodically(database: Database, assetpay: AssetPayClient, rules: Rules, *, interval: float) -> None:
    """A pass every `interval` seconds until cancelled (the app's background job). Several processes may run it:
    the lock lets one pass run at a time and the others skip their turn."""
    while True:
        await asyncio.sleep(interval)
        try:
            await run_pass(database, assetpay, rules)
        except Exception:  # a bug must not end the job: log it and try again next time
            log.exception("reconciliation pass failed")


# -- the lock -------------------------------------------------------------------------------------------------------


@asynccontextmanager
async def _exclusive(database: Database) -> AsyncIterator[Connection | None]:
    """The reconciliation lock, held for the pass on a connection of its own (lent to the pass for its reads);
    None when another pass holds it. A session-level advisory lock (on a direct connection when the pool goes
    through PgBouncer): it is released here, and by the server if the connection dies, so a crashed pass never
    blocks the next one."""
    async with database.session() as db:
        if not await db.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
            yield None
            return
        try:
            yield db
        finally:
            try:
                await db.fetchval("SELECT pg_advisory_unlock($1)", LOCK_KEY)
            except BaseException:
                # Unsure whether the lock was released (cancelled mid-statement): end the session, which releases
                # it for certain; the pool discards the dead connection instead of lending it again.
                db.terminate()
                raise


# -- the pass -------------------------------------------------------------------------------------------------------


def _ref(trade: TradeRow) -> str | None:
    return trade.assetpay_id or trade.external_id


async def _reconcile(
    database: Database,
    db: Connection,
    assetpay: AssetPayClient,
    rules: Rules,
    report: Report,
    progress: Progress | None,
) -> None:
    now = await trades.database_now(db)
    candidates = await trades.quiet_in_flight(
        db, statuses=IN_FLIGHT, quiet_since=now - rules.quiet_for, limit=rules.max_trades
    )
    candidates = [trade for trade in candidates if _ref(trade) is not None]
    report.selected = len(candidates)
    if progress is not None:
        progress(0, len(candidates))
    unknown_before = now - rules.unknown_after
    for start in range(0, len(candidates), rules.batch_size):
        batch = candidates[start : start + rules.batch_size]
        await _reconcile_batch(database, assetpay, batch, unknown_before, report, quota_wait=rules.quota_wait)
        if progress is not None:
            progress(report.looked_up, len(candidates))


async def _reconcile_batch(
    database: Database,
    assetpay: AssetPayClient,
    batch: Sequence[TradeRow],
    unknown_before: datetime,
    report: Report,
    *,
    quota_wait: timedelta,
) -> None:
    by_assetpay_id = {trade.assetpay_id: trade for trade in batch if trade.assetpay_id is not None}
    by_external_id = {trade.external_id: trade for trade in batch if trade.assetpay_id is None and trade.external_id}
    refs = [*by_assetpay_id, *by_external_id]
    answers = await _look_up(assetpay, refs, report, quota_wait=quota_wait)
    answered: set[uuid.UUID] = set()
    for answer in answers:
        ours = by_assetpay_id.get(answer.id)
        if ours is None and answer.external_id is not None:
            ours = by_external_id.get(answer.external_id)
        if ours is None:
            log.debug("AssetPay answered with trade %s, which we did not ask about", answer.id)
            continue
        answered.add(ours.id)
        with log_context(trade_id=ours.id):
            await _apply(database, ours, answer, report)
    report.found += len(answered)
    RECONCILIATION_LOOKUPS.labels("found").inc(len(answered))
    for ours in batch:
        if ours.id in answered:
            continue
        ref = _ref(ours)
        assert ref is not None
        confirmed = await _look_up(assetpay, [ref], report, count=False, quota_wait=quota_wait) if len(refs) > 1 else []
        with log_context(trade_id=ours.id):
            if confirmed:  # a batch that left out a trade it knows: apply what the lookup of it alone says
                report.found += 1
                RECONCILIATION_LOOKUPS.labels("found").inc()
                await _apply(database, ours, confirmed[0], report)
                continue
            report.missing += 1
            RECONCILIATION_LOOKUPS.labels("missing").inc()
            if ours.created_at < unknown_before:
                await _fail_unknown(database, ours, report)
            else:
                log.info("trade %s (%s) not known to AssetPay yet; left for a later pass", ours.id, ref)


sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
"""How a pass waits for the lookup budget (tests replace it with a fake clock's)."""


async def _look_up(
    assetpay: AssetPayClient,
    refs: Sequence[str],
    report: Report,
    *,
    count: bool = True,
    quota_wait: timedelta = timedelta(0),
) -> list[AssetPayTrade]:
    """AssetPay's trades for `refs` (those it does not know are missing); an error stops the pass, except the
    merchant's lookup budget running dry, which is waited out for up to `quota_wait`."""
    waited = 0.0
    while True:
        try:
            answers = await assetpay.get_trades(refs)
            break
        except AssetPayError as error:
            pause = error.retry_after
            if error.key != ErrorKey.QUOTA_EXHAUSTED or pause is None or waited + pause > quota_wait.total_seconds():
                _lookup_failed(refs, error, report)
            log.info("reconciliation waits %.1f s for the merchant's lookup budget", pause)
            await sleep(pause)
            waited += pause
    if count:
        report.looked_up += len(refs)
    return answers


def _lookup_failed(refs: Sequence[str], error: AssetPayError, report: Report) -> NoReturn:
    log.warning("reconciliation stopped: looking up %d trade(s) failed with %s", len(refs), error)
    RECONCILIATION_LOOKUPS.labels("error").inc(len(refs))
    RECONCILIATION_FAILURES.labels("assetpay_error").inc()
    report.failures += 1
    raise _Stop(error.key) from error


# -- applying -------------------------------------------------------------------------------------------------------


async def _apply(database: Database, ours: TradeRow, answer: AssetPayTrade, report: Report) -> None:
    """Apply AssetPay's word on one of our trades, in a unit of work of its own."""
    try:
        snapshot = TradeSnapshot.model_validate(answer.raw)
    except ValidationError as exc:
        problem = exc.errors()[0]
        log.warning(
            "trade %s: AssetPay's state of %s did not validate (%s: %s); left as it is",
            ours.id,
            answer.id,
            ".".join(str(part) for part in problem.get("loc", ())) or "trade",
            problem.get("msg"),
        )
        RECONCILIATION_FAILURES.labels("invalid_snapshot").inc()
        report.failures += 1
        return
    if report.dry_run:
        _record(report, _preview(ours, snapshot), dry_run=True)
        return

    async def apply() -> Change | None:
        async with database.unit_of_work() as uow:
            before = await trades.lock(uow.db, ours.id)
            settled = await settlement.apply(uow, snapshot, source=Source.RECONCILIATION, user_id=ours.user_id)
            change = _change(before, settled.trade, Cause.ASSETPAY)
            if change is not None:
                uow.after_commit(lambda: RECONCILIATION_HEALED.labels(Cause.ASSETPAY.value).inc())
            return change

    await _guarded(ours, apply, report)


async def _fail_unknown(database: Database, ours: TradeRow, report: Report) -> None:
    """AssetPay does not know the trade, past the ambiguity window: it ends failed, and what it held goes back
    (settlement posts `0 - posted`: a withdrawal's debit is refunded, a deposit's credit taken back)."""
    if report.dry_run:
        after = dataclasses.replace(ours, status=policy.Status.FAILED.value)
        after.posted = ZERO if ours.user_id is not None else ours.posted
        _record(report, _change(ours, after, Cause.UNKNOWN), dry_run=True)
        return

    async def fail() -> Change | None:
        async with database.unit_of_work() as uow:
            before = await trades.lock(uow.db, ours.id)
            if before is None or before.updated_at != ours.updated_at:
                return None  # news arrived since we looked: the next pass sees it
            # Never acknowledged: AssetPay refused it in effect. Acknowledged once, unknown now: a person should
            # look at what AssetPay forgot.
            expired = await settlement.expire(
                uow,
                ours.id,
                error=UNKNOWN_ERROR,
                source=Source.RECONCILIATION,
                review=VANISHED if before.assetpay_id is not None else None,
            )
            after = expired.trade if expired is not None else None
            change = _change(before, after, Cause.UNKNOWN) if after is not None else None
            if change is not None:
                uow.after_commit(lambda: RECONCILIATION_HEALED.labels(Cause.UNKNOWN.value).inc())
            return change

    await _guarded(ours, fail, report)


async def _guarded(ours: TradeRow, work: Callable[[], Awaitable[Change | None]], report: Report) -> None:
    """Run one trade's unit of work: a failure is that trade's alone (rolled back, counted, logged), except an
    unreachable database, which stops the pass."""
    try:
        change = await work()
    except DatabaseUnavailable:
        raise
    except ValidationError as exc:
        log.warning("trade %s: could not be failed: %s", ours.id, exc.errors()[0].get("msg"))
        RECONCILIATION_FAILURES.labels("invalid_snapshot").inc()
        report.failures += 1
        return
    except Exception:
        log.exception("trade %s: reconciliation could not apply AssetPay's state", ours.id)
        RECONCILIATION_FAILURES.labels("apply_error").inc()
        report.failures += 1
        return
    _record(report, change, dry_run=False)


def _record(report: Report, change: Change | None, *, dry_run: bool) -> None:
    if change is None:
        return
    report.changes.append(change)
    log.info("reconciliation%s: %s", " would change" if dry_run else "", change.describe())


def _preview(ours: TradeRow, snapshot: TradeSnapshot) -> Change | None:
    """What applying the snapshot would change, worked out on a copy (nothing is locked or written)."""
    after = dataclasses.replace(ours, items=copy.deepcopy(ours.items))
    settlement.fold(after, snapshot)
    if after.user_id is not None:
        after.posted = policy.target(after.facts())
    return _change(ours, after, Cause.ASSETPAY)


def _change(before: TradeRow | None, after: TradeRow, cause: Cause) -> Change | None:
    if before is None or before.id != after.id:
        return Change(after.id, after.assetpay_id, after.type, None, after.status, after.posted, cause)
    moved = (before.status, before.assetpay_id, before.total_price, before.posted) != (
        after.status,
        after.assetpay_id,
        after.total_price,
        after.posted,
    )
    if not moved:
        return None
    return Change(
        after.id, after.assetpay_id, after.type, before.status, after.status, after.posted - before.posted, cause
    )
