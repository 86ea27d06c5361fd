"""AssetPay's wire format, as the sandbox writes it: the response envelope, error keys, JSON and timestamps.

Money leaves as JSON numbers written from Decimals and comes in through `parse_float=Decimal`: no float ever
holds an amount.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import simplejson
from fastapi import Request
from fastapi.responses import Response

# Numeric codes accompany every key (AssetPay's own table is not public; these are the sandbox's, stable).
ERROR_CODES: dict[str, int] = {
    "VALIDATION_FAILED": 1000,
    "INVALID_API_KEY": 1001,
    "INVALID_TOKEN": 1002,
    "NOT_FOUND": 1004,
    "METHOD_NOT_ALLOWED": 1005,
    "ITEMS_UNAVAILABLE": 2001,
    "PRICE_CHANGED": 2002,
    "EXTERNAL_ID_EXISTS": 2003,
    "TOO_MANY_ACTIVE_TRADES": 2004,
    "RATE_LIMITED": 2005,
    "TRADE_NOT_CANCELLABLE": 2006,
    "INVALID_STATE": 2007,
    "INTERNAL_ERROR": 5000,
}

REQUEST_ID_HEADER = "x-request-id"


class SandboxError(Exception):
    """An AssetPay error answer: HTTP status, stable key, message, and optional field reasons or details."""

    def __init__(
        self,
        status: int,
        key: str,
        message: str,
        *,
        fields: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.key = key
        self.message = message
        self.fields = dict(fields) if fields else None
        self.details = dict(details) if details else None
        self.headers = dict(headers) if headers else None

    def payload(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": ERROR_CODES.get(self.key, 9999), "key": self.key, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        if self.details:
            error["details"] = self.details
        return error


def validation_failed(fields: Mapping[str, str]) -> SandboxError:
    """VALIDATION_FAILED naming every rejected field (at most 20), the first five in the message."""
    capped = dict(list(fields.items())[:20])
    named = "; ".join(f"{path}: {reason}" for path, reason in list(capped.items())[:5])
    return SandboxError(400, "VALIDATION_FAILED", f"Validation failed: {named}", fields=capped)


def dumps(value: Any) -> bytes:
    """Compact JSON; Decimals are written as JSON numbers with their exact digits."""
    text: str = simplejson.dumps(value, use_decimal=True, separators=(",", ":"))
    return text.encode()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(raw: bytes) -> Any:
    """Parse a request body; numbers with a fraction become Decimals; NaN and Infinity are refused."""
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SandboxError(400, "VALIDATION_FAILED", f"Body is not valid JSON: {exc}") from None


def iso(moment: datetime) -> str:
    """`2026-07-31T12:00:00.000Z`: UTC with milliseconds, as AssetPay writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def request_id(request: Request) -> str:
    """The caller's `x-request-id` when it sent a sensible one, else a fresh UUID; stable for the request."""
    cached = getattr(request.state, "sandbox_request_id", None)
    if isinstance(cached, str):
        return cached
    sent = request.headers.get(REQUEST_ID_HEADER, "").strip()
    value = sent if 0 < len(sent) <= 128 and sent.isprintable() else str(uuid.uuid4())
    request.state.sandbox_request_id = value
    return value


def _response(request: Request, body: dict[str, Any], status: int, headers: Mapping[str, str] | None) -> Response:
    rid = request_id(request)
    merged = {REQUEST_ID_HEADER: rid, **(headers or {})}
    return Response(
        dumps({"requestId": rid, **body}), status_code=status, media_type="application/json", headers=merged
    )


def ok(request: Request, data: Any, *, status: int = 200) -> Response:
    return _response(request, {"success": True, "data": data}, status, None)


def failure(request: Request, error: SandboxError) -> Response:
    return _response(request, {"success": False, "error": error.payload()}, error.status, error.headers)
