"""Posting to the ledger: the only code that writes ledger entries and balances.

Callers own the transaction and hold the trade row lock; these functions only flush.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from assetpay_merchant.ledger import policy
from assetpay_merchant.ledger.models import Balance, LedgerEntry
from assetpay_merchant.money import ZERO
from assetpay_merchant.trades.models import Trade


@dataclass(frozen=True, slots=True)
class Posting:
    """One entry just posted, and the balance it left."""

    user_id: str
    trade_id: uuid.UUID | None
    amount: Decimal
    kind: policy.EntryKind
    balance_after: Decimal


def ledger_items(stored: Sequence[dict[str, Any]]) -> list[policy.Item]:
    items = []
    for item in stored:
        status = item.get("status")
        items.append(
            policy.Item(
                price=Decimal(str(item.get("price", "0"))),
                amount=Decimal(str(item.get("amount", 1))),
                status=policy.parse_status(status) if status else None,
            )
        )
    return items


def facts_of(trade: Trade) -> policy.TradeFacts:
    return policy.TradeFacts(
        type=policy.TradeType(trade.type),
        status=policy.Status(trade.status),
        total_price=trade.total_price,
        pre_credit=trade.pre_credit,
        approved_amount=trade.approved_amount,
        items=ledger_items(trade.items) if trade.type == policy.TradeType.WITHDRAW else (),
    )


async def ensure_balance(session: AsyncSession, user_id: str) -> None:
    await session.execute(pg_insert(Balance).values(user_id=user_id).on_conflict_do_nothing())


async def lock_balance(session: AsyncSession, user_id: str) -> Decimal:
    """The user's available balance, with its row locked until the transaction ends."""
    available = await session.scalar(select(Balance.available).where(Balance.user_id == user_id).with_for_update())
    return available if available is not None else ZERO


async def post(
    session: AsyncSession, *, user_id: str, trade_id: uuid.UUID | None, amount: Decimal, kind: policy.EntryKind
) -> Posting:
    """Append one entry and move the cached balance by the same amount, in the caller's transaction."""
    balance_after = await session.scalar(
        update(Balance)
        .where(Balance.user_id == user_id)
        .values(available=Balance.available + amount, updated_at=func.now())
        .returning(Balance.available)
    )
    if balance_after is None:
        raise LookupError(f"user {user_id!r} has no balance row")
    await session.execute(
        insert(LedgerEntry).values(
            user_id=user_id, trade_id=trade_id, amount=amount, kind=kind.value, balance_after=balance_after
        )
    )
    return Posting(user_id, trade_id, amount, kind, balance_after)


async def settle(session: AsyncSession, trade: Trade) -> Posting | None:
    """Post `target - posted` for a locked trade, so that it has posted exactly its target."""
    if trade.user_id is None:
        return None
    facts = facts_of(trade)
    delta = policy.target(facts) - trade.posted
    if delta == 0:
        return None
    posting = await post(
        session,
        user_id=trade.user_id,
        trade_id=trade.id,
        amount=delta,
        kind=policy.entry_kind(facts.type, facts.status, delta),
    )
    trade.posted += delta
    return posting


@dataclass(frozen=True, slots=True)
class Discrepancy:
    subject: str
    detail: str


async def check(session: AsyncSession) -> list[Discrepancy]:
    """Every balance equals the sum of its entries; every attributed trade has posted exactly its target."""
    found: list[Discrepancy] = []
    sums = (
        select(LedgerEntry.user_id, func.sum(LedgerEntry.amount).label("total"))
        .group_by(LedgerEntry.user_id)
        .subquery()
    )
    rows = await session.execute(
        select(Balance.user_id, Balance.available, func.coalesce(sums.c.total, 0))
        .outerjoin(sums, sums.c.user_id == Balance.user_id)
        .where(Balance.available != func.coalesce(sums.c.total, 0))
    )
    for user_id, available, total in rows:
        found.append(Discrepancy(f"user {user_id}", f"balance {available} but entries sum to {total}"))
    orphans = await session.execute(
        select(sums.c.user_id, sums.c.total)
        .outerjoin(Balance, Balance.user_id == sums.c.user_id)
        .where(Balance.user_id.is_(None))
    )
    for user_id, total in orphans:
        found.append(Discrepancy(f"user {user_id}", f"entries sum to {total} but there is no balance row"))

    entry_sums = (
        select(LedgerEntry.trade_id, func.sum(LedgerEntry.amount).label("total"))
        .where(LedgerEntry.trade_id.is_not(None))
        .group_by(LedgerEntry.trade_id)
        .subquery()
    )
    trades = await session.stream(
        select(Trade, func.coalesce(entry_sums.c.total, 0))
        .outerjoin(entry_sums, entry_sums.c.trade_id == Trade.id)
        .execution_options(yield_per=1000)
    )
    async for trade, total in trades:
        if trade.posted != total:
            found.append(Discrepancy(f"trade {trade.id}", f"posted {trade.posted} but entries sum to {total}"))
        if trade.user_id is not None and trade.posted != policy.target(facts_of(trade)):
            found.append(
                Discrepancy(
                    f"trade {trade.id}", f"posted {trade.posted} but its target is {policy.target(facts_of(trade))}"
                )
            )
    return found
