"""What we do with a callback whose signature checked out: record it once, then route it by kind.

Approvals never take the generic "acknowledge" path: a bare 2xx would approve a purchase. Trade events and
approvals are applied by the settlement service, in the unit of work this module opens per callback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from assetpay_merchant.core import policy
from assetpay_merchant.gateway.callbacks import Callback, CallbackKind, InvalidJSON, InvalidTrade, classify, decode_json
from assetpay_merchant.gateway.signature import SignedDelivery
from assetpay_merchant.observability import APPROVAL_SECONDS, DELIVERY_ID, TRADE_ID, WEBHOOK_DELIVERIES, count_approval
from assetpay_merchant.services import settlement
from assetpay_merchant.services.settlement import Source
from assetpay_merchant.store import approvals, deliveries, delivery_log, trades
from assetpay_merchant.store.database import Database, UnitOfWork
from assetpay_merchant.store.delivery_log import StoredDelivery

log = logging.getLogger(__name__)

AWAITING_APPROVAL = "awaiting_approval"
CRYPTO_UNSUPPORTED = "crypto withdrawals are not supported by this merchant"
RECEIVED: dict[str, Any] = {"received": True}


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """The answer for AssetPay, and what we did (the delivery's recorded outcome)."""

    body: dict[str, Any]
    outcome: str
    settled: settlement.Settled | None = None


_VERDICTS = frozenset(action.value for action in policy.VerdictAction)


async def receive(database: Database, delivery: SignedDelivery, raw: bytes, callback: Callback) -> IntakeResult:
    """Apply one signed callback in a unit of work of its own. Called at the edge of the callback's request: the
    delivery and trade it names stay in the request's log context."""
    started = time.perf_counter()
    DELIVERY_ID.set(delivery.delivery_id)
    async with database.unit_of_work() as uow:
        result = await _handle(uow, delivery, raw, callback)
        uow.after_commit(lambda: WEBHOOK_DELIVERIES.labels(callback.kind.value, result.outcome).inc())
    if result.settled is not None:
        TRADE_ID.set(result.settled.trade.id)
    if result.outcome in _VERDICTS:  # what AssetPay waits for before the purchase goes ahead, repeats included
        APPROVAL_SECONDS.labels(result.outcome).observe(time.perf_counter() - started)
    return result


async def refuse(database: Database, delivery: SignedDelivery, raw: bytes, body: Any, error: InvalidTrade) -> None:
    """Keep a callback we refused, for a person to review; flag the trade it names if we know it."""
    trade = body.get("trade") if isinstance(body, dict) else None
    subject_id = str(trade.get("id"))[:128] if isinstance(trade, dict) and trade.get("id") else None
    DELIVERY_ID.set(delivery.delivery_id)
    async with database.unit_of_work() as uow:
        await _record(uow, delivery, raw, kind="trade", subject_id=subject_id, outcome="invalid", detail=error.message)
        if subject_id is not None:
            await trades.flag_by_assetpay_id(uow.db, subject_id, f"invalid callback refused: {error.message}")
        uow.after_commit(lambda: WEBHOOK_DELIVERIES.labels("trade", "invalid").inc())
    log.warning("callback %s refused: %s", delivery.delivery_id, error.message)


async def _record(
    uow: UnitOfWork,
    delivery: SignedDelivery,
    raw: bytes,
    *,
    kind: str,
    subject_id: str | None,
    outcome: str = "received",
    detail: str | None = None,
) -> int | None:
    return await deliveries.record(
        uow.db,
        delivery_id=delivery.delivery_id,
        signed_at=delivery.timestamp,
        kind=kind,
        raw_body=raw.decode(),
        subject_id=subject_id,
        outcome=outcome,
        detail=detail,
    )


def _asks_for_verdict(callback: Callback) -> bool:
    return callback.kind is CallbackKind.APPROVAL or (
        callback.kind is CallbackKind.CRYPTO_WITHDRAWAL
        and str(callback.body["withdrawal"].get("status", "")).lower() == AWAITING_APPROVAL
    )


async def _handle(uow: UnitOfWork, delivery: SignedDelivery, raw: bytes, callback: Callback) -> IntakeResult:
    row_id = await _record(uow, delivery, raw, kind=callback.kind.value, subject_id=callback.subject_id)
    if row_id is None and not _asks_for_verdict(callback):
        return IntakeResult({**RECEIVED, "duplicate": True}, "duplicate")
    result = await _route(uow, callback, delivery_id=delivery.delivery_id, row_id=row_id)
    if row_id is not None and result.settled is None:  # settlement records its outcome itself, with the trade
        await _set_outcome(uow, row_id, result)
    return result


async def _set_outcome(uow: UnitOfWork, row_id: int, result: IntakeResult) -> None:
    trade_id = result.settled.trade.id if result.settled is not None else None
    await deliveries.set_outcome(uow.db, row_id, outcome=result.outcome, trade_id=trade_id)


async def _route(uow: UnitOfWork, callback: Callback, *, delivery_id: str, row_id: int | None = None) -> IntakeResult:
    """What a recorded callback does, by kind: trade events and approvals go through the settlement path.
    `row_id`: the delivery's new row, whose outcome the settlement records with the trade."""
    if callback.trade is not None:  # a trade event, or (withdraw + initiated) an approval
        asks = callback.kind is CallbackKind.APPROVAL
        settled = await settlement.apply(
            uow, callback.trade, source=Source.CALLBACK, decide_approval=asks, delivery=row_id
        )
        if settled.verdict is not None:
            result = IntakeResult(verdict_body(settled.verdict), settled.verdict.action.value, settled)
        else:
            result = IntakeResult(RECEIVED, settled.outcome, settled)
    elif _asks_for_verdict(callback):
        verdict = await _crypto_verdict(uow, callback)
        result = IntakeResult(verdict_body(verdict), verdict.action.value)
    else:
        if callback.kind is CallbackKind.UNKNOWN:
            log.warning("unknown callback %s stored without action", delivery_id)
        result = IntakeResult(RECEIVED, "stored")
    return result


@dataclass(frozen=True, slots=True)
class Replayed:
    """What replaying a stored callback did: `result` as receiving it now would have answered, or (it still does
    not validate) `refused` saying why."""

    delivery: StoredDelivery
    result: IntakeResult | None = None
    refused: str | None = None


async def replay(database: Database, delivery_id: str) -> Replayed | None:
    """Apply a stored callback again, through the same routing and settlement path as `receive` (its signature was
    checked when it arrived). What was applied changes nothing: the settlement posts `target - posted`, and a
    withdrawal's verdict is the stored one. A callback refused as invalid is read again and, when it now
    validates, applied, and its recorded outcome updated. None: no delivery has this id."""
    async with database.unit_of_work() as uow:
        stored = await delivery_log.find(uow.db, delivery_id, lock=True)  # one replay of it at a time
        if stored is None:
            return None
        try:
            callback = classify(decode_json(stored.raw_body.encode()))
        except (InvalidTrade, InvalidJSON) as error:
            return Replayed(stored, refused=error.message if isinstance(error, InvalidTrade) else str(error))
        result = await _route(uow, callback, delivery_id=delivery_id)
        if stored.outcome == delivery_log.INVALID:
            await _set_outcome(uow, stored.id, result)
    return Replayed(stored, result)


async def _crypto_verdict(uow: UnitOfWork, callback: Callback) -> policy.Verdict:
    """Crypto is not supported yet: every crypto withdrawal is rejected, once, with a clear reason."""
    if not callback.subject_id:  # a bare 2xx would approve it: refuse what we cannot even name
        return policy.Verdict.reject("crypto withdrawal has no id")
    subject, subject_id = approvals.CRYPTO_WITHDRAWAL, callback.subject_id
    decided = await approvals.stored(uow.db, subject=subject, subject_id=subject_id) is None
    await approvals.store(
        uow.db, subject=subject, subject_id=subject_id, verdict=policy.Verdict.reject(CRYPTO_UNSUPPORTED)
    )
    verdict = await approvals.stored(uow.db, subject=subject, subject_id=subject_id)
    assert verdict is not None
    if decided:  # counted once per withdrawal, like the trades' verdicts
        uow.after_commit(lambda: count_approval(verdict.action.value, verdict.reason))
    return verdict


def verdict_body(verdict: policy.Verdict) -> dict[str, Any]:
    if verdict.action is policy.VerdictAction.APPROVE:
        return {"action": "approve"}
    return {"action": "reject", "reason": verdict.reason}
