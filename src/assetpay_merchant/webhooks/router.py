"""`POST /webhooks/assetpay`: every AssetPay callback arrives here."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from assetpay_merchant.db import driver_transaction
from assetpay_merchant.deps import get_resources
from assetpay_merchant.errors import Unauthorized
from assetpay_merchant.gateway.signature import SIGNATURE_HEADER, SignatureError, verify
from assetpay_merchant.observability import LEDGER_POSTINGS, WEBHOOK_DELIVERIES, WEBHOOK_SECONDS
from assetpay_merchant.webhooks import intake
from assetpay_merchant.webhooks.payloads import InvalidJSON, InvalidTrade, classify, decode_json, is_test_ping

log = logging.getLogger(__name__)
router = APIRouter(tags=["webhooks"])


@router.post(
    "/webhooks/assetpay",
    summary="Receive an AssetPay callback",
    description=(
        'Trade events, withdrawal approvals (answered with `{"action": "approve"}` or '
        '`{"action": "reject", "reason": ...}`), crypto events and the unsigned test ping. '
        f"Every call but the ping must carry a valid `{SIGNATURE_HEADER}`."
    ),
    responses={
        401: {"description": "Missing, malformed, stale or wrong signature, or a body that is not JSON"},
        422: {"description": "A trade callback we cannot apply; kept for review, nothing moved"},
    },
)
async def assetpay_callback(request: Request) -> JSONResponse:
    started = time.perf_counter()
    resources = get_resources(request)  # read directly: no dependency resolution on the busiest route
    raw = await request.body()
    header = request.headers.get(SIGNATURE_HEADER)
    if header is None and _is_unsigned_ping(raw):
        log.info("AssetPay test ping answered")
        return JSONResponse({"received": True, "test": True})
    try:
        delivery = verify(
            header,
            raw,
            secrets=resources.settings.webhook_secrets,
            now=resources.clock(),
            tolerance_seconds=resources.settings.webhook_tolerance_seconds,
        )
        body = decode_json(raw)
    except SignatureError as exc:
        WEBHOOK_DELIVERIES.labels("unverified", exc.key.lower()).inc()
        raise Unauthorized(exc.message, key=exc.key) from None
    except InvalidJSON:
        WEBHOOK_DELIVERIES.labels("unverified", "invalid_json").inc()
        raise Unauthorized("The body is not valid JSON", key="INVALID_JSON") from None

    try:
        callback = classify(body)
    except InvalidTrade as error:
        async with driver_transaction(resources.engine) as db:
            await intake.record_invalid(db, delivery, raw, body, error)
        WEBHOOK_DELIVERIES.labels("trade", "invalid").inc()
        log.warning("callback %s refused: %s", delivery.delivery_id, error.message)
        raise
    async with driver_transaction(resources.engine) as db:
        result = await intake.handle(db, delivery, raw, callback)

    WEBHOOK_DELIVERIES.labels(callback.kind.value, result.outcome).inc()
    for posting in result.postings:
        LEDGER_POSTINGS.labels(posting.kind.value).inc()
    WEBHOOK_SECONDS.observe(time.perf_counter() - started)
    return JSONResponse(result.body)


def _is_unsigned_ping(raw: bytes) -> bool:
    try:
        body: Any = decode_json(raw)
    except InvalidJSON:
        return False
    return is_test_ping(body)
