"""Answering AssetPay's "may this withdrawal go ahead?": debit first, then approve; one verdict per trade."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from assetpay_merchant.ledger import policy
from assetpay_merchant.ledger.models import ApprovalVerdict
from assetpay_merchant.ledger.service import Posting, lock_balance, settle
from assetpay_merchant.money import ZERO
from assetpay_merchant.trades.models import Trade

CRYPTO_UNSUPPORTED = "crypto withdrawals are not supported by this merchant"


async def stored_verdict(session: AsyncSession, *, subject: str, subject_id: str) -> policy.Verdict | None:
    row = await session.scalar(
        select(ApprovalVerdict).where(ApprovalVerdict.subject == subject, ApprovalVerdict.subject_id == subject_id)
    )
    return policy.Verdict(policy.VerdictAction(row.verdict), row.reason) if row is not None else None


async def decide_withdrawal(
    session: AsyncSession, trade: Trade, *, charge: Decimal
) -> tuple[policy.Verdict, Posting | None]:
    """The verdict for a locked withdrawal; on approve the debit is posted in the same transaction.

    Asked again (every retry has a new delivery id), it returns the stored verdict and posts nothing.
    `charge` is the price AssetPay asks to approve (our record may still hold the price the user quoted).
    """
    assert trade.assetpay_id is not None
    previous = await stored_verdict(session, subject="trade", subject_id=trade.assetpay_id)
    if previous is not None:
        return previous, None
    available = await lock_balance(session, trade.user_id) if trade.user_id is not None else ZERO
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
        posting = await settle(session, trade)
    elif trade.user_id is None:
        trade.flag("withdrawal approval asked for an unknown user")
    session.add(
        ApprovalVerdict(
            subject="trade",
            subject_id=trade.assetpay_id,
            trade_id=trade.id,
            verdict=verdict.action.value,
            reason=verdict.reason,
            amount=charge,
        )
    )
    return verdict, posting


async def decide_crypto_withdrawal(session: AsyncSession, withdrawal_id: str) -> policy.Verdict:
    """Crypto is not supported yet: every crypto withdrawal is rejected, once, with a clear reason."""
    await session.execute(
        pg_insert(ApprovalVerdict)
        .values(subject="crypto_withdrawal", subject_id=withdrawal_id, verdict="reject", reason=CRYPTO_UNSUPPORTED)
        .on_conflict_do_nothing()
    )
    verdict = await stored_verdict(session, subject="crypto_withdrawal", subject_id=withdrawal_id)
    assert verdict is not None
    return verdict
