"""Settlement: the one way AssetPay's word on a trade moves money.

Every source of a trade's state (a callback, the answer to our trade request, adopting trades when their user
registers, reconciliation, a realtime nudge) is applied here and nowhere else, inside the caller's unit of work:

    lock the trade (recording it if it is new) → fold in AssetPay's snapshot → attribute it to our user →
    decide an approval when one is asked → flag it for review → post `target - posted` → save it →
    write what the user's frontend should hear to the outbox → after commit: count it

This module is the only caller of `store.ledger.post` (which saves the trade with its entry). Order, duplicates and
concurrency are harmless: the trade row lock serialises deliveries of one trade, an older status never moves a trade
back, and what is posted is the difference between the trade's target and what it has already posted.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from assetpay_merchant.core import policy
from assetpay_merchant.core.money import ZERO
from assetpay_merchant.gateway.callbacks import TradeSnapshot
from assetpay_merchant.observability import LEDGER_POSTINGS, SETTLEMENTS, TRADE_ID, count_approval
from assetpay_merchant.services.views import trade_json
from assetpay_merchant.store import approvals, events, ledger, trades
from assetpay_merchant.store.database import UnitOfWork
from assetpay_merchant.store.ledger import Posting
from assetpay_merchant.store.trades import UNKNOWN_USER, TradeRow

APPROVAL_FOR_UNKNOWN_USER = "withdrawal approval asked for an unknown user"


class Source(StrEnum):
    """Where AssetPay's word came from; every source is applied alike."""

    CALLBACK = "callback"
    TRADING_ANSWER = "trading_answer"
    ADOPTION = "adoption"
    RECONCILIATION = "reconciliation"
    REALTIME_NUDGE = "realtime_nudge"


@dataclass(frozen=True, slots=True)
class Settled:
    """What applying one piece of news did to one trade."""

    trade: TradeRow
    source: Source
    outcome: str
    """`created`, or how the news related to what we knew (`advance`, `same`, `stale`, `conflict`), or what was
    done without news (`adopted`, `refused`)."""
    posting: Posting | None = None
    verdict: policy.Verdict | None = None


async def apply(
    uow: UnitOfWork,
    snapshot: TradeSnapshot,
    *,
    source: Source,
    user_id: str | None = None,
    decide_approval: bool = False,
    delivery: int | None = None,
) -> Settled:
    """Apply AssetPay's snapshot of one trade. `user_id`: whose trade it is when AssetPay's fields do not say
    (another offer of a basket a user of ours started). `decide_approval`: AssetPay asks whether this withdrawal
    may go ahead; the verdict (stored once per trade, repeated to every re-ask) is in the result, and an approval
    is debited before it is given. `delivery`: the recorded callback (its `webhook_deliveries` row) that brought
    the snapshot; its outcome (the verdict's action, else the settlement's outcome) is written with the trade."""
    trade, created = await _lock_or_record(uow, snapshot, user_id)
    before = None if created else _shown(trade)
    step = fold(trade, snapshot)
    return await _settle(
        uow,
        trade,
        before=before,
        source=source,
        outcome="created" if created else step.value,
        user_hint=user_id,
        charge=snapshot.total_price if decide_approval else None,
        delivery=delivery,
    )


async def adopt(uow: UnitOfWork, trade_id: uuid.UUID) -> Settled | None:
    """Attribute a trade that arrived before its user registered, and post what it owes or is owed."""
    trade = await trades.lock(uow.db, trade_id)
    if trade is None or trade.user_id is not None:
        return None  # someone else adopted it first
    return await _settle(uow, trade, before=None, source=Source.ADOPTION, outcome="adopted")  # new to the user


async def refuse(uow: UnitOfWork, trade_id: uuid.UUID, *, error: str) -> Settled | None:
    """AssetPay definitively refused to start the trade we recorded: it ends as failed (nothing was posted)."""
    trade = await trades.lock(uow.db, trade_id)
    if trade is None or trade.assetpay_id is not None or trade.status != policy.Status.INITIATED:
        return None  # AssetPay's word on it arrived meanwhile: that stands
    return await _fail(uow, trade, error=error, source=Source.TRADING_ANSWER, outcome="refused")


async def expire(
    uow: UnitOfWork, trade_id: uuid.UUID, *, error: str, source: Source, review: str | None = None
) -> Settled | None:
    """AssetPay does not know a trade still in flight here (past any doubt): it ends as failed, and what it held
    goes back (a withdrawal's debit is refunded, a deposit's credit taken back). `review`: why a person should look."""
    trade = await trades.lock(uow.db, trade_id)
    if trade is None or policy.Status(trade.status).is_final:
        return None
    if review is not None:
        trade.flag(review)
    return await _fail(uow, trade, error=error, source=source, outcome="expired")


async def _fail(uow: UnitOfWork, trade: TradeRow, *, error: str, source: Source, outcome: str) -> Settled:
    before = _shown(trade)
    trade.status = policy.Status.FAILED.value
    trade.error = error[:64]
    return await _settle(uow, trade, before=before, source=source, outcome=outcome)


async def flag_unreadable(uow: UnitOfWork, trade_id: uuid.UUID, *, assetpay_id: str, reason: str) -> None:
    """AssetPay answered about our trade with something we cannot apply: link it and leave it for a person."""
    trade = await trades.lock(uow.db, trade_id)
    if trade is None:
        return
    trade.assetpay_id = trade.assetpay_id or assetpay_id
    trade.flag(reason)
    await trades.save(uow.db, trade)


# -- the steps ------------------------------------------------------------------------------------------------------


async def _lock_or_record(uow: UnitOfWork, snapshot: TradeSnapshot, user_hint: str | None) -> tuple[TradeRow, bool]:
    """The trade the snapshot is about, locked for the rest of the unit of work; recorded first if it is new.

    Found by AssetPay's id, or (a trade we recorded before AssetPay answered) by our externalId. Concurrent first
    deliveries of one trade race on the unique AssetPay id: one inserts, the others wait for it, then lock its row.
    """
    db = uow.db
    if user_hint is None:  # whose a new trade would be comes with the lock (one round trip)
        trade, user_id = await trades.lock_by_ref_or_owner(
            db,
            assetpay_id=snapshot.id,
            external_id=snapshot.external_id,
            user_id=snapshot.external_client_user_id,
            steam_id=snapshot.client_steam_id,
        )
    else:
        trade = await trades.lock_by_ref(db, assetpay_id=snapshot.id, external_id=snapshot.external_id)
        user_id = user_hint
    if trade is not None:
        return trade, False
    new = _new_trade(snapshot, user_id)
    recorded = await trades.insert(db, new)
    if recorded is None and snapshot.external_id is not None:
        # The externalId is taken by another trade of the same basket (AssetPay split it): keep ours unlinked.
        new.external_id = None
        recorded = await trades.insert(db, new)
    if recorded is not None:
        return recorded, True
    # A concurrent first delivery recorded it: wait for its lock.
    trade = await trades.lock_by_ref(db, assetpay_id=snapshot.id, external_id=snapshot.external_id)
    if trade is None:  # pragma: no cover - the row exists by now, whoever inserted it
        raise LookupError(f"trade {snapshot.id} vanished while being recorded")
    return trade, False


def _new_trade(snapshot: TradeSnapshot, user_id: str | None) -> TradeRow:
    return TradeRow.new(
        assetpay_id=snapshot.id,
        external_id=snapshot.external_id,
        user_id=user_id,
        client_steam_id=snapshot.client_steam_id,
        external_client_user_id=snapshot.external_client_user_id,
        type=snapshot.type.value,
        game=snapshot.game,
        status=snapshot.status.value,
        total_price=snapshot.total_price,
        pre_credit=snapshot.pre_credit or ZERO,
        pending_credit=snapshot.pending_credit or ZERO,
        items=[item.stored() for item in snapshot.items],
        is_instant=snapshot.is_instant,
        error=snapshot.error,
        hold_end_date=snapshot.hold_end_date,
    )


def fold(trade: TradeRow, snapshot: TradeSnapshot) -> policy.Transition:
    """Fold AssetPay's snapshot into the locked trade. Older news never moves a trade back.

    A newer status brings its amounts with it; items merge one by one, each keeping its most advanced status;
    a different final status after a final one is kept for review and not applied. The first word from AssetPay
    on a trade we recorded ourselves replaces our provisional amounts and items with AssetPay's.
    """
    first_word = trade.assetpay_id is None
    if first_word:
        trade.assetpay_id = snapshot.id
        trade.items = []
    step = policy.transition(policy.Status(trade.status), snapshot.status)
    if step is policy.Transition.CONFLICT:
        trade.flag(f"received {snapshot.status.value} after final status {trade.status}")
        return step
    trade.items = policy.merge_items(trade.items, [item.stored() for item in snapshot.items])
    if step is policy.Transition.ADVANCE or first_word:
        trade.status = snapshot.status.value
        trade.game = snapshot.game
        trade.total_price = snapshot.total_price
        if snapshot.pre_credit is not None:
            trade.pre_credit = snapshot.pre_credit
        if snapshot.pending_credit is not None:
            trade.pending_credit = snapshot.pending_credit
        trade.error = snapshot.error or trade.error
        trade.hold_end_date = snapshot.hold_end_date or trade.hold_end_date
        if snapshot.is_instant is not None:
            trade.is_instant = snapshot.is_instant
    return step


async def _settle(
    uow: UnitOfWork,
    trade: TradeRow,
    *,
    before: Sequence[Any] | None,
    source: Source,
    outcome: str,
    user_hint: str | None = None,
    charge: Decimal | None = None,
    delivery: int | None = None,
) -> Settled:
    """Attribute, decide, flag, post the difference to the target, save, announce, and count it once committed.
    `before`: what the user saw of the trade before this news (None: the trade is new to them)."""
    context = TRADE_ID.set(trade.id)  # what is logged meanwhile is about this trade
    try:
        return await _settle_locked(
            uow,
            trade,
            before=before,
            source=source,
            outcome=outcome,
            user_hint=user_hint,
            charge=charge,
            delivery=delivery,
        )
    finally:
        TRADE_ID.reset(context)


async def _settle_locked(
    uow: UnitOfWork,
    trade: TradeRow,
    *,
    before: Sequence[Any] | None,
    source: Source,
    outcome: str,
    user_hint: str | None,
    charge: Decimal | None,
    delivery: int | None,
) -> Settled:
    db = uow.db
    if trade.user_id is None:
        trade.user_id = user_hint or await trades.find_user_id(
            db, user_id=trade.external_client_user_id, steam_id=trade.client_steam_id
        )
        if trade.user_id is not None:
            trade.unflag(UNKNOWN_USER)
    if trade.user_id is None:
        trade.flag(UNKNOWN_USER)
    verdict = await _decide_approval(uow, trade, charge) if charge is not None else None
    reason = policy.review_reason(trade.facts())
    if reason is not None:
        trade.flag(reason)
    told = None if delivery is None else (delivery, verdict.action.value if verdict is not None else outcome)
    posting = await _post_difference(uow, trade, delivery=told)
    if trade.user_id is not None:
        changed = before is None or _shown(trade) != before
        await events.append(
            db,
            trade.user_id,
            trade=trade_json(trade) if changed else None,
            # A deposit's moves change what is pending even when nothing is posted.
            balance=posting is not None or (changed and trade.type == policy.TradeType.DEPOSIT),
        )
    settled = Settled(trade, source, outcome, posting, verdict)
    uow.after_commit(lambda: _count(settled))
    return settled


def _shown(trade: TradeRow) -> tuple[Any, ...]:
    """What the user's frontend sees of a trade: when this changes, the change is announced."""
    return (
        trade.assetpay_id,
        trade.status,
        trade.game,
        trade.total_price,
        trade.pre_credit,
        trade.pending_credit,
        trade.posted,
        trade.error,
        trade.hold_end_date,
        trade.items,
    )


async def _decide_approval(uow: UnitOfWork, trade: TradeRow, charge: Decimal) -> policy.Verdict:
    """The verdict on a locked withdrawal costing `charge` (the price AssetPay asks to approve); an approval sets
    the amount the settlement then debits. Asked again, the stored verdict stands and nothing more is charged."""
    assert trade.assetpay_id is not None
    db = uow.db
    previous = await approvals.stored(db, subject=approvals.TRADE, subject_id=trade.assetpay_id)
    if previous is not None:
        return previous
    available = await ledger.lock_balance(db, trade.user_id) if trade.user_id is not None else ZERO
    verdict = policy.approval_verdict(
        user_known=trade.user_id is not None,
        charge=charge,
        authorised=trade.authorized_amount,
        # What this trade already moved (a late approval after `completed`) is not a second charge.
        available=available - trade.posted,
    )
    if verdict.action is policy.VerdictAction.APPROVE:
        trade.approved_amount = charge
    elif trade.user_id is None:
        trade.flag(APPROVAL_FOR_UNKNOWN_USER)
    await approvals.store(
        db, subject=approvals.TRADE, subject_id=trade.assetpay_id, verdict=verdict, trade_id=trade.id, amount=charge
    )
    uow.after_commit(lambda: count_approval(verdict.action.value, verdict.reason))
    return verdict


async def _post_difference(uow: UnitOfWork, trade: TradeRow, *, delivery: tuple[int, str] | None) -> Posting | None:
    """Post `target - posted` for the locked trade, so that it has posted exactly its target, and save it (one
    statement, with the delivery's outcome when there is one)."""
    delta, kind = ZERO, None
    if trade.user_id is not None:
        facts = trade.facts()
        delta = policy.target(facts) - trade.posted
        if delta != 0:
            kind = policy.entry_kind(facts.type, facts.status, delta)
            trade.posted += delta
    return await ledger.post(uow.db, trade, amount=delta, kind=kind, delivery=delivery)


def _count(settled: Settled) -> None:
    SETTLEMENTS.labels(settled.source.value, settled.outcome).inc()
    if settled.posting is not None:
        LEDGER_POSTINGS.labels(settled.posting.kind.value).inc()
