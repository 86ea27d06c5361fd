"""`POST /webhooks/assetpay`: every AssetPay callback arrives here."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from assetpay_merchant.api.deps import resources_of
from assetpay_merchant.core.errors import PayloadTooLarge, Unauthorized
from assetpay_merchant.gateway.callbacks import InvalidJSON, InvalidTrade, classify, decode_json, is_test_ping
from assetpay_merchant.gateway.signature import SIGNATURE_HEADER, SignatureError, verify
from assetpay_merchant.observability import WEBHOOK_DELIVERIES, WEBHOOK_SECONDS
from assetpay_merchant.services import intake

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
        413: {"description": "The body is larger than any callback AssetPay sends"},
        422: {"description": "A trade callback we cannot apply; kept for review, nothing moved"},
        503: {"description": "The database is unavailable; AssetPay retries (Retry-After)"},
    },
)
async def assetpay_callback(request: Request) -> JSONResponse:
    started = time.perf_counter()
    resources = resources_of(request)  # read directly: no dependency resolution on the busiest route
    settings = resources.settings
    raw = await _body(request, settings.max_webhook_body_bytes)
    header = request.headers.get(SIGNATURE_HEADER)
    if header is None and _is_unsigned_ping(raw):
        log.info("AssetPay test ping answered")
        return JSONResponse({"received": True, "test": True})
    try:
        delivery = verify(
            header,
            raw,
            secrets=settings.webhook_secrets,
            now=resources.clock(),
            tolerance_seconds=settings.webhook_tolerance_seconds,
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
        await intake.refuse(resources.database, delivery, raw, body, error)
        raise
    result = await intake.receive(resources.database, delivery, raw, callback)
    WEBHOOK_SECONDS.observe(time.perf_counter() - started)
    return JSONResponse(result.body)


async def _body(request: Request, limit: int) -> bytes:
    """The raw body, refused past `limit` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Callbacks are at most {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Callbacks are at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_unsigned_ping(raw: bytes) -> bool:
    try:
        body: Any = decode_json(raw)
    except InvalidJSON:
        return False
    return is_test_ping(body)
