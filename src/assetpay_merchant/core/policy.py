"""The ledger rule of DESIGN.md §2 as plain functions: no database, no I/O.

Every trade has a *target*, what the user should net from it given the latest status we know. Applying an event
posts `target - already_posted`; everything else (dedupe, order independence, refunds) follows from that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from assetpay_merchant.core.money import ZERO


class TradeType(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAW = "withdraw"


class Status(StrEnum):
    INITIATED = "initiated"
    PENDING = "pending"
    ACTIVE = "active"
    HOLD = "hold"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    DECLINED = "declined"
    REVERTED = "reverted"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def is_final(self) -> bool:
        return self.rank == FINAL_RANK

    @property
    def is_failure(self) -> bool:
        return self in FAILURES


FINAL_RANK = 4
_RANK = {
    Status.INITIATED: 0,
    Status.PENDING: 1,
    Status.ACTIVE: 2,
    Status.HOLD: 3,
    **{s: FINAL_RANK for s in (Status.COMPLETED, Status.FAILED, Status.CANCELED, Status.DECLINED, Status.REVERTED)},
}
FAILURES = frozenset({Status.FAILED, Status.CANCELED, Status.DECLINED, Status.REVERTED})
IN_FLIGHT = frozenset(s for s in Status if not s.is_final)
# The older API edition: upper-case names and an extra in-flight ESCROW that behaves like hold.
_LEGACY_STATUSES = {"escrow": Status.HOLD, "cancelled": Status.CANCELED}


def parse_status(raw: str) -> Status:
    """Accept current and legacy spellings, in any case; raise ValueError for anything else."""
    name = raw.strip().lower()
    if name in _LEGACY_STATUSES:
        return _LEGACY_STATUSES[name]
    return Status(name)


def parse_type(raw: str) -> TradeType:
    return TradeType(raw.strip().lower())


class Transition(StrEnum):
    ADVANCE = "advance"  # a newer status: adopt it
    SAME = "same"  # the status we already have
    STALE = "stale"  # an older status, arrived late: it never moves money back
    CONFLICT = "conflict"  # a different final status after a final one: kept for review, not applied


def transition(current: Status, incoming: Status) -> Transition:
    if incoming == current:
        return Transition.SAME
    if current.is_final and incoming.is_final:
        return Transition.CONFLICT
    return Transition.ADVANCE if incoming.rank > current.rank else Transition.STALE


@dataclass(frozen=True, slots=True)
class Item:
    """What the ledger needs of a traded item: its unit price, the count and (on withdrawals) its own status."""

    price: Decimal
    amount: Decimal = Decimal(1)
    status: Status | None = None

    @property
    def value(self) -> Decimal:
        return self.price * self.amount


@dataclass(frozen=True, slots=True)
class TradeFacts:
    type: TradeType
    status: Status
    total_price: Decimal
    pre_credit: Decimal = ZERO
    approved_amount: Decimal | None = None  # set by an approve verdict on a withdrawal
    items: Sequence[Item] = ()


def withdrawal_charge(base: Decimal, items: Sequence[Item]) -> Decimal:
    """What a withdrawal costs the user: `base`, or less when some items failed (the rest is refunded)."""
    if not any(item.status is not None and item.status.is_failure for item in items):
        return base
    alive = sum((item.value for item in items if item.status is None or not item.status.is_failure), start=ZERO)
    return min(base, alive)


def target(facts: TradeFacts) -> Decimal:
    """What the user should net from this trade, given the latest status we know (DESIGN.md §2)."""
    if facts.status.is_failure:
        return ZERO
    if facts.type is TradeType.DEPOSIT:
        if facts.status is Status.COMPLETED:
            return facts.total_price
        if facts.status is Status.HOLD:
            return facts.pre_credit
        return ZERO
    if facts.status is Status.COMPLETED:
        return -withdrawal_charge(facts.total_price, facts.items)
    if facts.approved_amount is None:
        return ZERO
    return -withdrawal_charge(facts.approved_amount, facts.items)


def review_reason(facts: TradeFacts) -> str | None:
    """Something a person should look at, though the rule still decides the money."""
    if facts.type is not TradeType.WITHDRAW:
        return None
    if facts.status is Status.COMPLETED and facts.approved_amount is None:
        return "withdrawal completed without an approve verdict from us"
    if (
        facts.status is Status.COMPLETED
        and facts.approved_amount is not None
        and facts.total_price > facts.approved_amount
    ):
        return f"withdrawal charged {facts.total_price}, more than the {facts.approved_amount} we approved"
    return None


class EntryKind(StrEnum):
    PRE_CREDIT = "pre_credit"  # instant credit when a deposit enters hold
    CREDIT = "credit"  # the rest of a deposit on completion
    REVERSAL = "reversal"  # taking back a deposit's credit (reverted, or a late correction)
    DEBIT = "debit"  # a withdrawal's charge, posted before we approve it
    REFUND = "refund"  # a withdrawal's charge given back (failed items, a lower final price)
    ADJUSTMENT = "adjustment"  # an operator's correction, not tied to a trade (reason and actor recorded)


def entry_kind(trade_type: TradeType, status: Status, delta: Decimal) -> EntryKind:
    if trade_type is TradeType.WITHDRAW:
        return EntryKind.DEBIT if delta < 0 else EntryKind.REFUND
    if delta < 0:
        return EntryKind.REVERSAL
    return EntryKind.PRE_CREDIT if status is Status.HOLD else EntryKind.CREDIT


ADJUSTMENT_LIMIT = Decimal(1_000_000)
"""An adjustment moves less than this either way: a slip of a few zeros must not reach the books."""
ADJUSTMENT_SCALE = 2
"""Adjustments are whole cents: an operator types an amount, never a sub-cent remainder."""


def adjustment_allowed(*, available: Decimal, amount: Decimal, allow_debt: bool) -> bool:
    """Whether an operator's adjustment may be posted: a credit always; a charge only when it leaves the user's
    available balance at zero or above, unless the operator says the debt is intended."""
    return amount > 0 or allow_debt or available + amount >= 0


class VerdictAction(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: VerdictAction
    reason: str | None = None

    @classmethod
    def approve(cls) -> Verdict:
        return cls(VerdictAction.APPROVE)

    @classmethod
    def reject(cls, reason: str) -> Verdict:
        return cls(VerdictAction.REJECT, reason)


def approval_verdict(*, user_known: bool, charge: Decimal, authorised: Decimal | None, available: Decimal) -> Verdict:
    """Whether to approve a withdrawal: a known user, within what they authorised, covered by their balance."""
    if not user_known:
        return Verdict.reject("unknown user")
    if charge <= ZERO:
        return Verdict.reject("withdrawal has no positive price")
    if authorised is not None and charge > authorised:
        return Verdict.reject(f"price {charge} exceeds the {authorised} the user authorised")
    if available < charge:
        return Verdict.reject("insufficient balance")
    return Verdict.approve()


_UNRANKED = -1  # an item without a (known) status sorts before every status


def _item_rank(item: Mapping[str, Any]) -> int:
    raw = item.get("status")
    if not isinstance(raw, str):
        return _UNRANKED
    try:
        return parse_status(raw).rank
    except ValueError:
        return _UNRANKED


def merge_items(known: Iterable[Mapping[str, Any]], incoming: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Merge item lists by id, each item keeping its most advanced status, so arrival order does not matter.

    A final item status is never replaced by another one.
    """
    merged: dict[str, dict[str, Any]] = {}
    for item in known:
        merged[str(item.get("id"))] = dict(item)
    for item in incoming:
        key = str(item.get("id"))
        current = merged.get(key)
        if current is None or _item_rank(item) > _item_rank(current):
            merged[key] = dict(item)
    return list(merged.values())
