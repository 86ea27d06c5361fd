"""Answering AssetPay's "may this withdrawal go ahead?": debit first, then approve; one verdict per trade."""

from __future__ import annotations

from decimal import Decimal

from assetpay_merchant.db import Connection
from assetpay_merchant.ledger import policy
from assetpay_merchant.ledger.service import Posting, lock_balance, settle
from assetpay_merchant.money import ZERO
from assetpay_merchant.trades.service import TradeRow

CRYPTO_UNSUPPORTED = "crypto withdrawals are not supported by this merchant"

_STORED = "SELECT verdict, reason FROM approval_verdicts WHERE subject = $1 AND subject_id = $2"
_STORE = """
INSERT INTO approval_verdicts (subject, subject_id, trade_id, verdict, reason, amount)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING
"""


async def stored_verdict(db: Connection, *, subject: str, subject_id: str) -> policy.Verdict | None:
    row = await db.fetchrow(_STORED, subject, subject_id)
    return policy.Verdict(policy.VerdictAction(row["verdict"]), row["reason"]) if row is not None else None


async def decide_withdrawal(
    db: Connection, trade: TradeRow, *, charge: Decimal
) -> tuple[policy.Verdict, Posting | None]:
    """The verdict for a locked withdrawal costing `charge`; on approve the debit is posted in the same transaction.

    Asked again (every retry has a new delivery id), it returns the stored verdict and posts nothing.
    `charge` is the price AssetPay asks to approve (our record may still hold the price the user quoted).
    """
    assert trade.assetpay_id is not None
    previous = await stored_verdict(db, subject="trade", subject_id=trade.assetpay_id)
    if previous is not None:
        return previous, None
    available = await lock_balance(db, trade.user_id) if trade.user_id is not None else ZERO
    verdict = policy.approval_verdict(
        user_known=trade.user_id is not None,
        charge=charge,
        authorised=trade.authorized_amount,
        # What this trade already moved (a late approval after `completed`) is not a second charge.
        available=available - trade.posted,
    )
    posting = None
    if verdict.action is policy.VerdictAction.APPROVE:
        trade.approved_amount = charge
        posting = await settle(db, trade)
    elif trade.user_id is None:
        trade.flag("withdrawal approval asked for an unknown user")
    await db.execute(_STORE, "trade", trade.assetpay_id, trade.id, verdict.action.value, verdict.reason, charge)
    return verdict, posting


async def decide_crypto_withdrawal(db: Connection, withdrawal_id: str) -> policy.Verdict:
    """Crypto is not supported yet: every crypto withdrawal is rejected, once, with a clear reason."""
    await db.execute(_STORE, "crypto_withdrawal", withdrawal_id, None, "reject", CRYPTO_UNSUPPORTED, None)
    verdict = await stored_verdict(db, subject="crypto_withdrawal", subject_id=withdrawal_id)
    assert verdict is not None
    return verdict
