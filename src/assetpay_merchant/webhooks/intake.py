"""What we do with a callback whose signature checked out: record it once, then route it by kind.

Approvals never take the generic "acknowledge" path: a bare 2xx would approve a purchase. Everything runs in the
caller's transaction, on its driver connection (this is the hot path; see trades/service.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from assetpay_merchant.db import Connection
from assetpay_merchant.gateway.signature import SignedDelivery
from assetpay_merchant.ledger import approvals, policy
from assetpay_merchant.ledger.service import Posting, facts_of, settle
from assetpay_merchant.trades.service import UNKNOWN_USER, TradeRow, lock_for_callback, merge_callback, save
from assetpay_merchant.webhooks.payloads import Callback, CallbackKind, InvalidTrade

log = logging.getLogger(__name__)

AWAITING_APPROVAL = "awaiting_approval"

_RECORD = """
INSERT INTO webhook_deliveries (delivery_id, kind, outcome, detail, subject_id, signed_at, raw_body)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (delivery_id) DO NOTHING
RETURNING id
"""
_OUTCOME = "UPDATE webhook_deliveries SET outcome = $2, trade_id = $3 WHERE id = $1"
_FLAG_INVALID = """
UPDATE trades SET needs_review = true, review_reason = $2, updated_at = now()
WHERE assetpay_id = $1 AND review_reason IS NULL
"""


@dataclass(slots=True)
class IntakeResult:
    """The answer for AssetPay, and what changed (to be announced once the transaction has committed)."""

    body: dict[str, Any]
    outcome: str
    trade: TradeRow | None = None
    postings: list[Posting] = field(default_factory=list)


async def record_delivery(
    db: Connection,
    delivery: SignedDelivery,
    *,
    kind: str,
    raw: bytes,
    subject_id: str | None,
    outcome: str = "received",
    detail: str | None = None,
) -> int | None:
    """Insert the delivery; None when its id was seen before (a retry or a replay)."""
    row_id: int | None = await db.fetchval(
        _RECORD, delivery.delivery_id, kind, outcome, detail, subject_id, delivery.timestamp, raw.decode()
    )
    return row_id


async def record_invalid(db: Connection, delivery: SignedDelivery, raw: bytes, body: Any, error: InvalidTrade) -> None:
    """Keep a callback we refused, for a person to review; flag the trade it names if we know it."""
    trade = body.get("trade") if isinstance(body, dict) else None
    subject_id = str(trade.get("id"))[:128] if isinstance(trade, dict) and trade.get("id") else None
    await record_delivery(
        db, delivery, kind="trade", raw=raw, subject_id=subject_id, outcome="invalid", detail=error.message
    )
    if subject_id is not None:
        await db.execute(_FLAG_INVALID, subject_id, f"invalid callback refused: {error.message}"[:1000])


async def _apply_trade(db: Connection, callback: Callback) -> IntakeResult:
    assert callback.trade is not None
    trade = await lock_for_callback(db, callback.trade)
    step = merge_callback(trade, callback.trade)
    if trade.user_id is None:
        trade.flag(UNKNOWN_USER)
    reason = policy.review_reason(facts_of(trade))
    if reason is not None:
        trade.flag(reason)
    posting = await settle(db, trade)
    await save(db, trade)
    outcome = "created" if trade.created else step.value
    return IntakeResult({"received": True}, outcome, trade, [posting] if posting else [])


async def _approve_withdrawal(db: Connection, callback: Callback) -> IntakeResult:
    assert callback.trade is not None
    trade = await lock_for_callback(db, callback.trade)
    merge_callback(trade, callback.trade)
    verdict, posting = await approvals.decide_withdrawal(db, trade, charge=callback.trade.total_price)
    await save(db, trade)
    return IntakeResult(_verdict_body(verdict), verdict.action.value, trade, [posting] if posting else [])


async def _crypto_withdrawal(db: Connection, callback: Callback) -> IntakeResult:
    withdrawal = callback.body["withdrawal"]
    status = str(withdrawal.get("status", "")).lower()
    if status == AWAITING_APPROVAL:
        if not callback.subject_id:  # a bare 2xx would approve it: refuse what we cannot even name
            return IntakeResult(_verdict_body(policy.Verdict.reject("crypto withdrawal has no id")), "reject")
        verdict = await approvals.decide_crypto_withdrawal(db, callback.subject_id)
        return IntakeResult(_verdict_body(verdict), verdict.action.value)
    return IntakeResult({"received": True}, "stored")


def _verdict_body(verdict: policy.Verdict) -> dict[str, Any]:
    if verdict.action is policy.VerdictAction.APPROVE:
        return {"action": "approve"}
    return {"action": "reject", "reason": verdict.reason}


async def handle(db: Connection, delivery: SignedDelivery, raw: bytes, callback: Callback) -> IntakeResult:
    """Apply one signed callback inside the caller's transaction."""
    row_id = await record_delivery(db, delivery, kind=callback.kind.value, raw=raw, subject_id=callback.subject_id)
    asks_for_verdict = callback.kind is CallbackKind.APPROVAL or (
        callback.kind is CallbackKind.CRYPTO_WITHDRAWAL
        and str(callback.body["withdrawal"].get("status", "")).lower() == AWAITING_APPROVAL
    )
    if row_id is None and not asks_for_verdict:
        return IntakeResult({"received": True, "duplicate": True}, "duplicate")

    if callback.kind is CallbackKind.APPROVAL:
        result = await _approve_withdrawal(db, callback)
    elif callback.kind is CallbackKind.TRADE:
        result = await _apply_trade(db, callback)
    elif callback.kind is CallbackKind.CRYPTO_WITHDRAWAL:
        result = await _crypto_withdrawal(db, callback)
    else:
        if callback.kind is CallbackKind.UNKNOWN:
            log.warning("unknown callback %s stored without action", delivery.delivery_id)
        result = IntakeResult({"received": True}, "stored")

    if row_id is not None:
        await db.execute(_OUTCOME, row_id, result.outcome, result.trade.id if result.trade else None)
    return result
