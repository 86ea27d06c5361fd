"""The one exception the AssetPay client raises, and the error keys worth branching on (ASSETPAY.md §8).

Branch on `key`, never on `message`. Keys AssetPay sends come through unchanged; the client adds a few of its own for
what happens before or around a response (`NETWORK_ERROR`, `TIMEOUT`, `UNEXPECTED_RESPONSE`, `NOT_CONFIGURED`, and
`VALIDATION_FAILED` for input refused before any request), and names the refusals of a verification link, for which
AssetPay documents statuses but no keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class ErrorKey(StrEnum):
    # AssetPay's keys
    EXTERNAL_ID_EXISTS = "EXTERNAL_ID_EXISTS"
    INVALID_TOKEN = "INVALID_TOKEN"  # noqa: S105 (an error key, not a credential)
    RATE_LIMITED = "RATE_LIMITED"
    TOO_MANY_ACTIVE_TRADES = "TOO_MANY_ACTIVE_TRADES"
    PRICE_CHANGED = "PRICE_CHANGED"
    ITEMS_UNAVAILABLE = "ITEMS_UNAVAILABLE"
    USER_NOT_TRADEABLE = "USER_NOT_TRADEABLE"
    INVALID_TRADEURL = "INVALID_TRADEURL"
    INVENTORY_PRIVATE = "INVENTORY_PRIVATE"
    STEAM_UNAVAILABLE = "STEAM_UNAVAILABLE"
    NO_BOTS_AVAILABLE = "NO_BOTS_AVAILABLE"
    DEPOSITS_PAUSED = "DEPOSITS_PAUSED"
    WITHDRAWALS_PAUSED = "WITHDRAWALS_PAUSED"
    MERCHANT_BALANCE_LOW = "MERCHANT_BALANCE_LOW"
    VALIDATION_FAILED = "VALIDATION_FAILED"
    SYSTEM_MAINTENANCE = "SYSTEM_MAINTENANCE"
    NOT_FOUND = "NOT_FOUND"
    FLEET_DEGRADED = "FLEET_DEGRADED"
    DEPOSIT_IN_PROGRESS = "DEPOSIT_IN_PROGRESS"
    WITHDRAW_IN_PROGRESS = "WITHDRAW_IN_PROGRESS"
    # AssetPay's keys of identity verification (POST /client/verification/start)
    VERIFICATION_ALREADY_VERIFIED = "VERIFICATION_ALREADY_VERIFIED"
    VERIFICATION_IN_PROGRESS = "VERIFICATION_IN_PROGRESS"
    VERIFICATION_NOT_AVAILABLE = "VERIFICATION_NOT_AVAILABLE"
    # AssetPay's keys that mean the merchant's own setup at AssetPay is broken (see SETUP_ERRORS)
    MERCHANT_NO_CALLBACK_URL = "MERCHANT_NO_CALLBACK_URL"
    MERCHANT_NO_API_SECRET = "MERCHANT_NO_API_SECRET"  # noqa: S105 (an error key, not a credential)
    CALLBACK_URL_TEST_FAILED = "CALLBACK_URL_TEST_FAILED"
    MERCHANT_CALLBACK_URL_DISABLED = "MERCHANT_CALLBACK_URL_DISABLED"
    API_KEY_IP_DENIED = "API_KEY_IP_DENIED"
    INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"
    # The client's own
    NETWORK_ERROR = "NETWORK_ERROR"
    TIMEOUT = "TIMEOUT"
    UNEXPECTED_RESPONSE = "UNEXPECTED_RESPONSE"
    NOT_CONFIGURED = "NOT_CONFIGURED"
    QUOTA_EXHAUSTED = "ASSETPAY_QUOTA_EXHAUSTED"
    """Refused before sending: the merchant's shared budget of requests for this AssetPay route is used up."""
    # AssetPay documents no keys for its refusals to link a verified identity, only its statuses (404: no verified
    # identity has the account's email); `link_verification` names them by status with these.
    VERIFICATION_IDENTITY_NOT_FOUND = "VERIFICATION_IDENTITY_NOT_FOUND"
    VERIFICATION_LINK_REFUSED = "VERIFICATION_LINK_REFUSED"


REFUSAL_KEYS = frozenset({ErrorKey.FLEET_DEGRADED, ErrorKey.DEPOSIT_IN_PROGRESS, ErrorKey.WITHDRAW_IN_PROGRESS})
"""Refused before anything happened: safe to retry, even a trade-creating write."""

SETUP_ERRORS: dict[str, str] = {
    ErrorKey.MERCHANT_NO_CALLBACK_URL: "no callback URL is set at AssetPay: set it to this service's "
    "https://<host>/webhooks/assetpay in the AssetPay dashboard",
    ErrorKey.MERCHANT_NO_API_SECRET: "the merchant has no API secret at AssetPay, so every withdrawal fails: create "
    "one in the AssetPay dashboard and set it as ASSETPAY_API_SECRET",
    ErrorKey.CALLBACK_URL_TEST_FAILED: "AssetPay's test ping to the callback URL failed: make POST "
    "/webhooks/assetpay reachable from AssetPay (it must answer within 8 s), then save the URL again",
    ErrorKey.MERCHANT_CALLBACK_URL_DISABLED: "AssetPay disabled the callback URL (its deliveries kept failing): fix "
    "the endpoint, then re-enable the URL in the AssetPay dashboard; no callback arrives until then",
    ErrorKey.API_KEY_IP_DENIED: "AssetPay refused the API key from this server's address: add the server's outbound "
    "IP to the key's allow-list in the AssetPay dashboard",
    ErrorKey.INSUFFICIENT_SCOPE: "the API key lacks a scope this call needs: grant it to ASSETPAY_API_KEY's key in "
    "the AssetPay dashboard",
}
"""AssetPay's keys that mean the merchant's setup is broken (ASSETPAY.md §10), each with the fix to name: no user
can fix these, and callbacks may not be arriving at all."""


class AssetPayError(Exception):
    """A call to AssetPay did not give a usable answer.

    `status` is AssetPay's HTTP status (None when no response came back). A write that may have taken effect
    although we could not see it raises the subclass `OutcomeUnknown`. `retry_after` is the server's Retry-After in
    seconds, when it sent one. `request_id` is AssetPay's `requestId`, or the `x-request-id` we sent when no
    envelope came back.
    """

    def __init__(
        self,
        key: str,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        fields: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.key = str(key)  # a plain string, also for ErrorKey members
        self.message = message
        self.status = status
        self.code = code
        self.fields = dict(fields) if fields else None
        self.details = dict(details) if details else None
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no response"
        return f"{self.key} ({where}): {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(key={self.key!r}, status={self.status!r}, code={self.code!r}, "
            f"request_id={self.request_id!r}, retry_after={self.retry_after!r})"
        )


class OutcomeUnknown(AssetPayError):
    """A write that may have taken effect although we could not see it (a timeout, a dropped connection, an
    unexplained 5xx, or a trade write that could not be settled): keep what was recorded and reconcile later."""

    def __str__(self) -> str:
        return f"{super().__str__()} (outcome unknown)"

    @classmethod
    def after(cls, error: AssetPayError, note: str) -> OutcomeUnknown:
        """`error`, now known to leave the outcome open (the original stays the cause)."""
        unknown = cls(
            error.key,
            f"{error.message} ({note})",
            status=error.status,
            code=error.code,
            fields=error.fields,
            details=error.details,
            request_id=error.request_id,
            retry_after=error.retry_after,
        )
        unknown.__cause__ = error
        return unknown


def invalid(fields: Mapping[str, str]) -> AssetPayError:
    """Input refused before any request was made (nothing was sent, so never ambiguous)."""
    names = ", ".join(list(fields)[:5])
    return AssetPayError(ErrorKey.VALIDATION_FAILED, f"Invalid input: {names}", fields=fields)
