"""Verification of AssetPay's callback signature (ASSETPAY.md §6).

`X-AssetPay-Signature: t=<ISO-8601>,id=<delivery id>,s=<hex>[,s1=<hex>]`, where each signature is
`hex(HMAC-SHA256(secret, "<id>.<t>." + raw_body))` over the exact header strings and the raw bytes received.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

SIGNATURE_HEADER = "X-AssetPay-Signature"
_SIGNATURE_FIELDS = ("s", "s1")


class SignatureError(Exception):
    """The callback is not provably from AssetPay; `key` says why (every case answers 401)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class SignedDelivery:
    delivery_id: str
    timestamp: datetime


def sign(secret: bytes, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The hex signature AssetPay puts in `s` (or `s1`) for this delivery."""
    message = f"{delivery_id}.{timestamp}.".encode() + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, delivery_id: str, timestamp: str, body: bytes) -> str:
    """A complete header value, as AssetPay would send it (used by the sandbox, tests and benchmarks)."""
    return f"t={timestamp},id={delivery_id},s={sign(secret, delivery_id, timestamp, body)}"


def _parse_header(header: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    for chunk in header.split(","):
        name, sep, value = chunk.strip().partition("=")
        if not sep or not name or not value or name in parts:
            raise SignatureError("SIGNATURE_MALFORMED", "Signature header is malformed")
        parts[name] = value
    for required in ("t", "id", "s"):
        if required not in parts:
            raise SignatureError("SIGNATURE_MALFORMED", f"Signature header has no '{required}'")
    return parts


def _parse_timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SignatureError("SIGNATURE_TIMESTAMP_INVALID", "Signature timestamp is not ISO-8601") from None
    if parsed.tzinfo is None:
        raise SignatureError("SIGNATURE_TIMESTAMP_INVALID", "Signature timestamp has no time zone")
    return parsed


def verify(
    header: str | None,
    body: bytes,
    *,
    secrets: Sequence[bytes],
    now: datetime,
    tolerance_seconds: int = 300,
) -> SignedDelivery:
    """Check the header against the raw body with every configured secret; raise SignatureError otherwise."""
    if header is None or not header.strip():
        raise SignatureError("SIGNATURE_MISSING", f"Missing {SIGNATURE_HEADER} header")
    parts = _parse_header(header)
    timestamp = _parse_timestamp(parts["t"])
    skew = abs((now - timestamp).total_seconds())
    if skew > tolerance_seconds:
        raise SignatureError("SIGNATURE_TIMESTAMP_EXPIRED", f"Signature timestamp is {skew:.0f} s away from now")
    if not secrets:
        raise SignatureError("SIGNATURE_MISMATCH", "No webhook secret is configured")
    received = [parts[name].encode() for name in _SIGNATURE_FIELDS if name in parts]
    matched = False
    # Check every pair, without stopping early, so timing says nothing about which secret matched.
    for secret in secrets:
        expected = sign(secret, parts["id"], parts["t"], body).encode()
        for candidate in received:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("SIGNATURE_MISMATCH", "Signature does not match")
    return SignedDelivery(delivery_id=parts["id"], timestamp=timestamp)
