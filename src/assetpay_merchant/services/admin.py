"""What ops sees and does about trades and users: the trades across users (the review queue among them), taking a
trade off the queue with a note that stays in its history, a user's whole picture, and the merchant's exposure.

The admin routes and the `assetpay-merchant admin` commands both call these, and both render the shapes defined
here, so a script reading `--json` gets what the API answers.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import date as Day
from datetime import datetime

from pydantic import BaseModel, Field

from assetpay_merchant.core.errors import Conflict, NotFound, ValidationFailed
from assetpay_merchant.core.money import ZERO
from assetpay_merchant.services.users import USER_NOT_FOUND
from assetpay_merchant.services.views import BalanceView, Money, TradeView, UserView
from assetpay_merchant.store import entries, exposure, review, trades, users
from assetpay_merchant.store.database import Database
from assetpay_merchant.store.entries import EntryRow
from assetpay_merchant.store.review import HistoryRow, TradeFilter, TradeKey
from assetpay_merchant.store.tables import MAX_ACTOR_LENGTH
from assetpay_merchant.store.trades import TradeRow

ACTOR_PATTERN = rf"^[A-Za-z0-9._:@+-]{{1,{MAX_ACTOR_LENGTH}}}$"
"""Who acts (`X-Actor`, `--actor`): a login or an email, as the audit trail records it."""
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$"
"""A note or a reason: one line, not blank (no control characters; at least one that is not a space)."""
MAX_NOTE_LENGTH = 2000
RECENT = 20
"""How many of a user's newest trades and entries their overview shows."""

TRADE_NOT_FOUND = "No such trade"
NOT_IN_REVIEW = "This trade is not on the review queue"


# -- the shapes -----------------------------------------------------------------------------------------------------


class AdminTrade(TradeView):
    """A trade as ops sees it: what the user sees, whose it is, and why it waits for a person."""

    userId: str | None = Field(description="Our user's id (null: no user of ours matched it yet)")
    needsReview: bool
    reviewReason: str | None = Field(description="Why it is on the review queue ('; ' between several reasons)")

    @classmethod
    def of_row(cls, trade: TradeRow) -> AdminTrade:
        return cls(
            **TradeView.of(trade).model_dump(),
            userId=trade.user_id,
            needsReview=trade.needs_review,
            reviewReason=trade.review_reason,
        )


class HistoryEntry(BaseModel):
    """One thing a person did about a trade (kept for good: the history is append-only)."""

    action: str = Field(description="`resolved`: taken off the review queue")
    note: str
    actor: str
    reviewReason: str | None = Field(description="What the trade was flagged for when this was done")
    at: datetime

    @classmethod
    def of(cls, row: HistoryRow) -> HistoryEntry:
        return cls(action=row.action, note=row.note, actor=row.actor, reviewReason=row.review_reason, at=row.created_at)


class AdminTradeDetail(AdminTrade):
    history: list[HistoryEntry] = Field(description="What people did about it, oldest first")


class LedgerEntryView(BaseModel):
    """One ledger entry as ops sees it; an adjustment carries its reason and who posted it."""

    id: int
    userId: str
    tradeId: uuid.UUID | None
    amount: Money
    kind: str
    balanceAfter: Money
    reason: str | None
    actor: str | None
    createdAt: datetime

    @classmethod
    def of(cls, entry: EntryRow) -> LedgerEntryView:
        return cls(
            id=entry.id,
            userId=entry.user_id,
            tradeId=entry.trade_id,
            amount=entry.amount,
            kind=entry.kind,
            balanceAfter=entry.balance_after,
            reason=entry.reason,
            actor=entry.actor,
            createdAt=entry.created_at,
        )


class UserOverview(BaseModel):
    user: UserView
    balance: BalanceView
    trades: list[AdminTrade] = Field(description=f"The user's {RECENT} newest trades, newest first")
    entries: list[LedgerEntryView] = Field(description=f"The user's {RECENT} newest ledger entries, newest first")


class HoldDayView(BaseModel):
    date: Day | None = Field(description="The day (UTC) the holds end; null: AssetPay gave no end date")
    trades: int
    total: Money


class PreCreditInHold(BaseModel):
    total: Money = Field(description="Instant credit paid on deposits still in hold (a reversal takes it back)")
    trades: int
    byHoldEndDate: list[HoldDayView] = Field(description="Soonest first")


class DebtsView(BaseModel):
    users: int = Field(description="Users whose available balance is below zero")
    total: Money = Field(description="What they owe in all, as a positive amount")


class ExposureView(BaseModel):
    """What the merchant has at risk."""

    preCreditInHold: PreCreditInHold
    debts: DebtsView
    currency: str


# -- the use cases --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TradeList:
    trades: list[AdminTrade]
    next: TradeKey | None
    """Where the next (older) page starts; None on the last page."""


async def list_trades(database: Database, where: TradeFilter, *, before: TradeKey | None, limit: int) -> TradeList:
    """Trades of every user matching `where`, newest first; `needs_review=True` is the review queue."""
    async with database.statements() as db:
        rows = await review.search(db, where, before=before, limit=limit + 1)
    page = rows[:limit]
    more = len(rows) > limit
    return TradeList(
        [AdminTrade.of_row(row) for row in page], TradeKey(page[-1].created_at, page[-1].id) if more else None
    )


async def trade_detail(database: Database, trade_id: uuid.UUID) -> AdminTradeDetail:
    """One trade with its history."""
    async with database.snapshot() as db:
        trade = await trades.find(db, trade_id)
        if trade is None:
            raise NotFound(TRADE_NOT_FOUND, key="TRADE_NOT_FOUND")
        history = await review.history(db, trade_id)
    return _detail(trade, history)


async def resolve(database: Database, trade_id: uuid.UUID, *, note: str, actor: str) -> AdminTradeDetail:
    """Take a trade off the review queue; the note, the actor, the time and what it was flagged for are kept in its
    history. A trade that is not on the queue is a conflict (nothing is recorded)."""
    check_text("note", note, MAX_NOTE_LENGTH)
    check_actor(actor)
    async with database.unit_of_work() as uow:
        trade = await trades.lock(uow.db, trade_id)  # a callback flagging it meanwhile waits, or is waited for
        if trade is None:
            raise NotFound(TRADE_NOT_FOUND, key="TRADE_NOT_FOUND")
        if not trade.needs_review:
            raise Conflict(NOT_IN_REVIEW, key="TRADE_NOT_IN_REVIEW")
        await review.resolve(uow.db, trade, note=note, actor=actor)
        history = await review.history(uow.db, trade_id)
    return _detail(trade, history)


def _detail(trade: TradeRow, history: list[HistoryRow]) -> AdminTradeDetail:
    return AdminTradeDetail(**AdminTrade.of_row(trade).model_dump(), history=[HistoryEntry.of(h) for h in history])


async def user_overview(database: Database, user_id: str, *, currency: str) -> UserOverview:
    """The user's profile, balance, newest trades and newest entries, all as of one moment."""
    async with database.snapshot() as db:
        user = await users.get(db, user_id)
        if user is None:
            raise NotFound(USER_NOT_FOUND, key="USER_NOT_FOUND")
        balance = await entries.balance(db, user_id)
        recent_trades = await review.search(db, TradeFilter(user_id=user_id), before=None, limit=RECENT)
        recent_entries = await entries.recent(db, user_id, limit=RECENT)
    return UserOverview(
        user=UserView.of(user),
        balance=BalanceView(available=balance.available, pending=balance.pending, currency=currency),
        trades=[AdminTrade.of_row(trade) for trade in recent_trades],
        entries=[LedgerEntryView.of(entry) for entry in recent_entries],
    )


async def exposure_now(database: Database, *, currency: str) -> ExposureView:
    """Instant credit outstanding on deposits in hold (by the day the holds end) and the debts users have, summed
    on one snapshot."""
    async with database.snapshot() as db:
        days = await exposure.pre_credit_in_hold(db)
        debts = await exposure.debts(db)
    return ExposureView(
        preCreditInHold=PreCreditInHold(
            total=sum((day.total for day in days), start=ZERO),
            trades=sum(day.trades for day in days),
            byHoldEndDate=[HoldDayView(date=day.day, trades=day.trades, total=day.total) for day in days],
        ),
        debts=DebtsView(users=debts.users, total=debts.total),
        currency=currency,
    )


# -- input rules (the API states them in its document; the CLI's input is checked here) ---------------------------

_ACTOR = re.compile(ACTOR_PATTERN)


def check_actor(actor: str) -> None:
    if not _ACTOR.fullmatch(actor):
        raise ValidationFailed(
            "The actor is not valid",
            fields={"actor": f"1 to {MAX_ACTOR_LENGTH} letters, digits or ._:@+- (a login or an email)"},
        )


_TEXT = re.compile(TEXT_PATTERN)


def check_text(field: str, value: str, max_length: int) -> None:
    """A note or a reason (TEXT_PATTERN), at most `max_length` characters."""
    if len(value) > max_length or not _TEXT.fullmatch(value):
        raise ValidationFailed(
            f"Invalid {field}", fields={field: f"one line of 1 to {max_length} characters, not only spaces"}
        )
