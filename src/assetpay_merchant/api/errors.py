"""The API edge's one table from errors to HTTP, and the handlers that render every error the same way:
`{"error": {"key": "...", "message": "...", "fields": {...}}}`, with `Retry-After` when known.

This is the only module that knows HTTP statuses. AssetPay's own failures become keys of ours; its 401/403 mean
*our* credentials are wrong, so they surface as 502, never as the user's 401.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from assetpay_merchant.core import errors
from assetpay_merchant.core.errors import AppError, fields_from_pydantic
from assetpay_merchant.gateway import AssetPayError, ErrorKey, OutcomeUnknown
from assetpay_merchant.gateway.errors import SETUP_ERRORS
from assetpay_merchant.services.trading import TradeNotStarted

log = logging.getLogger(__name__)

STATUS: dict[type[AppError], int] = {
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.InsufficientBalance: 402,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.ValidationFailed: 422,
    errors.TooManyRequests: 429,
    errors.Unavailable: 503,
}


def status_of(error: AppError) -> int:
    """The status of the nearest class in the table (a subclass answers like its base)."""
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


# AssetPay's key -> (our status, our key, message for the frontend)
_UPSTREAM: dict[str, tuple[int, str, str]] = {
    ErrorKey.VALIDATION_FAILED: (422, "VALIDATION_FAILED", "AssetPay refused the request: {fields}"),
    ErrorKey.PRICE_CHANGED: (409, "PRICE_CHANGED", "A price changed; refresh and confirm the new price"),
    ErrorKey.ITEMS_UNAVAILABLE: (409, "ITEMS_UNAVAILABLE", "Some items are no longer available"),
    ErrorKey.EXTERNAL_ID_EXISTS: (409, "DUPLICATE_TRADE", "This trade was already started"),
    ErrorKey.INVENTORY_PRIVATE: (409, "INVENTORY_PRIVATE", "The Steam inventory is private; make it public"),
    ErrorKey.USER_NOT_TRADEABLE: (409, "USER_NOT_TRADEABLE", "This Steam account cannot trade right now"),
    ErrorKey.INVALID_TRADEURL: (422, "INVALID_TRADE_URL", "The Steam trade URL on the profile is not valid"),
    ErrorKey.RATE_LIMITED: (429, "RATE_LIMITED", "Too many requests; try again shortly"),
    ErrorKey.TOO_MANY_ACTIVE_TRADES: (429, "TOO_MANY_ACTIVE_TRADES", "Too many trades in progress; finish one first"),
    ErrorKey.STEAM_UNAVAILABLE: (503, "STEAM_UNAVAILABLE", "Steam cannot serve this right now; try again shortly"),
    ErrorKey.NO_BOTS_AVAILABLE: (503, "NO_BOTS_AVAILABLE", "No trading bot is free right now; try again shortly"),
    ErrorKey.FLEET_DEGRADED: (503, "SERVICE_DEGRADED", "Trading is degraded right now; try again shortly"),
    ErrorKey.DEPOSIT_IN_PROGRESS: (409, "DEPOSIT_IN_PROGRESS", "Another deposit is being started; try again"),
    ErrorKey.WITHDRAW_IN_PROGRESS: (409, "WITHDRAW_IN_PROGRESS", "Another withdrawal is being started; try again"),
    ErrorKey.DEPOSITS_PAUSED: (503, "DEPOSITS_PAUSED", "Deposits are paused"),
    ErrorKey.WITHDRAWALS_PAUSED: (503, "WITHDRAWALS_PAUSED", "Withdrawals are paused"),
    ErrorKey.MERCHANT_BALANCE_LOW: (503, "WITHDRAWALS_UNAVAILABLE", "Withdrawals are unavailable right now"),
    ErrorKey.SYSTEM_MAINTENANCE: (503, "MAINTENANCE", "AssetPay is under maintenance; try again later"),
    ErrorKey.NOT_FOUND: (404, "NOT_FOUND", "AssetPay does not know this"),
    # Identity verification. A process in progress is a state to resume (GET /v1/verification has its captureUrl),
    # not a flood of requests: 409, with AssetPay's Retry-After passed on when it sends one.
    ErrorKey.VERIFICATION_ALREADY_VERIFIED: (409, "VERIFICATION_ALREADY_VERIFIED", "The account is already verified"),
    ErrorKey.VERIFICATION_IN_PROGRESS: (
        409,
        "VERIFICATION_IN_PROGRESS",
        "A verification started in the last 30 minutes is still open; continue it or try again later",
    ),
    ErrorKey.VERIFICATION_NOT_AVAILABLE: (503, "VERIFICATION_NOT_AVAILABLE", "Identity verification is unavailable"),
    ErrorKey.VERIFICATION_IDENTITY_NOT_FOUND: (
        404,
        "VERIFICATION_IDENTITY_NOT_FOUND",
        "No verified identity has this account's email; verify with POST /v1/verification/start",
    ),
    ErrorKey.VERIFICATION_LINK_REFUSED: (409, "VERIFICATION_LINK_REFUSED", "AssetPay refused the link: {fields}"),
    ErrorKey.TIMEOUT: (504, "UPSTREAM_TIMEOUT", "AssetPay did not answer in time"),
    ErrorKey.NETWORK_ERROR: (502, "UPSTREAM_UNAVAILABLE", "AssetPay could not be reached"),
    ErrorKey.UNEXPECTED_RESPONSE: (502, "UPSTREAM_INVALID_RESPONSE", "AssetPay gave an answer we cannot read"),
    ErrorKey.NOT_CONFIGURED: (503, "ASSETPAY_NOT_CONFIGURED", "AssetPay credentials are not configured"),
    ErrorKey.QUOTA_EXHAUSTED: (
        429,
        "ASSETPAY_QUOTA_EXHAUSTED",
        "The merchant's AssetPay request quota, shared by all its users, is used up for now; retry after Retry-After",
    ),
    # The merchant's setup at AssetPay is broken (services/ratelimits.py logs the fix): nothing the user can do.
    **dict.fromkeys(
        SETUP_ERRORS,
        (503, "ASSETPAY_SETUP_BROKEN", "AssetPay cannot serve this merchant until its setup is fixed; try later"),
    ),
}
_LOST = "AssetPay's answer was lost; the trade is recorded and will be settled, do not start it again"


class Rendered:
    """An error as the API answers it."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: dict[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def render(error: Exception) -> Rendered:
    """Any error a route may raise, as status, body and headers; anything unexpected is a bare 500."""
    if isinstance(error, AppError):
        return Rendered(status_of(error), error.body(), error.retry_after)
    if isinstance(error, TradeNotStarted):
        return _upstream(error.cause, trade_id=str(error.trade_id))
    if isinstance(error, AssetPayError):
        return _upstream(error)
    return Rendered(500, {"error": {"key": "INTERNAL_ERROR", "message": "Internal server error"}})


def _upstream(error: AssetPayError, *, trade_id: str | None = None) -> Rendered:
    status = error.status or 0
    if error.key in _UPSTREAM:
        code, key, message = _UPSTREAM[error.key]
    elif status in (401, 403) or error.key == ErrorKey.INVALID_TOKEN:
        code, key, message = 502, "UPSTREAM_AUTH_FAILED", "AssetPay refused the merchant's credentials"
    elif status == 429:
        code, key, message = 429, "RATE_LIMITED", "Too many requests; try again shortly"
    elif status >= 500 or status == 0:
        code, key, message = 502, "UPSTREAM_ERROR", "AssetPay failed to handle the request"
    else:
        code, key, message = 409, "TRADE_REFUSED", f"AssetPay refused the request ({error.key})"
    fields = error.fields or {}
    message = message.format(fields=", ".join(fields) or error.message)
    if isinstance(error, OutcomeUnknown):
        code, key = (504, "UPSTREAM_TIMEOUT") if error.key == ErrorKey.TIMEOUT else (502, "OUTCOME_UNKNOWN")
        message = _LOST
    body: dict[str, Any] = {"key": key, "message": message}
    if fields:
        body["fields"] = fields
    if error.request_id:
        body["assetpayRequestId"] = error.request_id
    if trade_id is not None:
        body["tradeId"] = trade_id
    return Rendered(code, {"error": body}, error.retry_after)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return render(exc).response()

    @app.exception_handler(AssetPayError)
    async def _assetpay_error(_: Request, exc: AssetPayError) -> JSONResponse:
        return render(exc).response()

    @app.exception_handler(TradeNotStarted)
    async def _not_confirmed(_: Request, exc: TradeNotStarted) -> JSONResponse:
        return render(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = fields_from_pydantic(list(exc.errors()))
        names = ", ".join(list(fields)[:5])
        return render(errors.ValidationFailed(f"Invalid request: {names}", fields=fields)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        keys = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 401: "UNAUTHORIZED", 403: "FORBIDDEN"}
        body = {"error": {"key": keys.get(exc.status_code, "HTTP_ERROR"), "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return render(exc).response()
