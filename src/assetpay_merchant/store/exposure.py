"""What the merchant has at risk, summed by the database: instant credit paid out on deposits still in hold (a
reversal would take it back from a user who may have spent it), and the debts such reversals already left."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from assetpay_merchant.core.policy import Status, TradeType
from assetpay_merchant.store.database import Connection


@dataclass(frozen=True, slots=True)
class HoldDay:
    """Deposits in hold whose hold ends on `day` (UTC; None: AssetPay gave no end date)."""

    day: date | None
    trades: int
    total: Decimal


@dataclass(frozen=True, slots=True)
class Debts:
    users: int
    total: Decimal
    """What those users owe: the sum of their negative balances, as a positive amount."""


# A deposit in hold has posted its target, the preCredit (the ledger check holds every trade to that), so what it
# has posted is exactly the instant credit still at risk; deposits of nobody's (posted nothing) do not count.
_IN_HOLD = """
SELECT (hold_end_date AT TIME ZONE 'UTC')::date AS day, count(*) AS trades, sum(posted) AS total
FROM trades
WHERE type = $1 AND status = $2 AND user_id IS NOT NULL AND posted > 0
GROUP BY day
ORDER BY day NULLS LAST
"""
_DEBTS = "SELECT count(*) AS users, coalesce(sum(-available), 0) AS total FROM balances WHERE available < 0"


async def pre_credit_in_hold(db: Connection) -> list[HoldDay]:
    """Instant credit outstanding on deposits in hold, by the day their hold ends, soonest first."""
    records = await db.fetch(_IN_HOLD, TradeType.DEPOSIT.value, Status.HOLD.value)
    return [HoldDay(record["day"], record["trades"], record["total"]) for record in records]


async def debts(db: Connection) -> Debts:
    """Users whose available balance is below zero, and how much they owe in all."""
    record = await db.fetchrow(_DEBTS)
    assert record is not None
    return Debts(record["users"], record["total"])
