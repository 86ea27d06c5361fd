"""How AssetPay's failures reach the merchant's frontend: stable keys of ours, fitting statuses, no secrets.

AssetPay's own 401/403 mean *our* credentials are wrong, so they surface as 502, never as the user's 401.
"""

from __future__ import annotations

import math
from typing import Any

from assetpay_merchant.errors import AppError
from assetpay_merchant.gateway.errors import AssetPayError, ErrorKey

# key -> (our status, our key, message for the frontend)
_MAPPING: dict[str, tuple[int, str, str]] = {
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
    ErrorKey.TIMEOUT: (504, "UPSTREAM_TIMEOUT", "AssetPay did not answer in time"),
    ErrorKey.NETWORK_ERROR: (502, "UPSTREAM_UNAVAILABLE", "AssetPay could not be reached"),
    ErrorKey.UNEXPECTED_RESPONSE: (502, "UPSTREAM_INVALID_RESPONSE", "AssetPay gave an answer we cannot read"),
    ErrorKey.NOT_CONFIGURED: (503, "ASSETPAY_NOT_CONFIGURED", "AssetPay credentials are not configured"),
}


class UpstreamError(AppError):
    """An AssetPay failure, as our API reports it."""

    def __init__(self, message: str, *, upstream: AssetPayError, trade_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.upstream = upstream
        self.trade_id = trade_id

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.upstream.request_id:
            body["error"]["assetpayRequestId"] = self.upstream.request_id
        if self.trade_id is not None:
            body["error"]["tradeId"] = self.trade_id
        return body


def from_assetpay(error: AssetPayError, *, trade_id: str | None = None) -> UpstreamError:
    """Our error for an AssetPay failure. `trade_id`: the trade we recorded, when the outcome is unknown."""
    status = error.status or 0
    if error.key in _MAPPING:
        code, key, message = _MAPPING[error.key]
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
    if error.ambiguous:
        code, key = (504, "UPSTREAM_TIMEOUT") if error.key == ErrorKey.TIMEOUT else (502, "OUTCOME_UNKNOWN")
        message = "AssetPay's answer was lost; the trade is recorded and will be settled, do not start it again"
    headers = {"Retry-After": str(math.ceil(error.retry_after))} if error.retry_after is not None else None
    return UpstreamError(
        message,
        upstream=error,
        trade_id=trade_id,
        key=key,
        status_code=code,
        fields=fields or None,
        headers=headers,
    )
