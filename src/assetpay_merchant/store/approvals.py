"""Our stored answers to AssetPay's "may this withdrawal go ahead?": one verdict per subject, for ever."""

from __future__ import annotations

import uuid
from decimal import Decimal

from assetpay_merchant.core import policy
from assetpay_merchant.store.database import Connection

TRADE = "trade"
CRYPTO_WITHDRAWAL = "crypto_withdrawal"

_STORED = "SELECT verdict, reason FROM approval_verdicts WHERE subject = $1 AND subject_id = $2"
_STORE = """
INSERT INTO approval_verdicts (subject, subject_id, trade_id, verdict, reason, amount)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING
"""


async def stored(db: Connection, *, subject: str, subject_id: str) -> policy.Verdict | None:
    row = await db.fetchrow(_STORED, subject, subject_id)
    return policy.Verdict(policy.VerdictAction(row["verdict"]), row["reason"]) if row is not None else None


async def store(
    db: Connection,
    *,
    subject: str,
    subject_id: str,
    verdict: policy.Verdict,
    trade_id: uuid.UUID | None = None,
    amount: Decimal | None = None,
) -> None:
    """Keep the verdict, unless one is stored already (the first one stands)."""
    await db.execute(_STORE, subject, subject_id, trade_id, verdict.action.value, verdict.reason, amount)
