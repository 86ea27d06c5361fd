"""Client tokens (ASSETPAY.md §2): who the end user is, how a token for them is minted, and how long it is reused.

A token is an HS256 JWT that AssetPay checks byte for byte, so it is built by hand rather than with a JWT library:
header `{"alg":"HS256","userId":<merchantId>}` (no `typ`), payload keys in the order merchantId, client, iat, exp,
compact JSON, base64url without padding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import simplejson

from assetpay_merchant.core.vocabulary import MAX_CLIENT_ID_LENGTH, STEAM_ID_PATTERN, TRADE_URL_PATTERN
from assetpay_merchant.gateway.errors import invalid

STEAM_ID = re.compile(STEAM_ID_PATTERN)
TRADE_URL = re.compile(TRADE_URL_PATTERN)
CLIENT_ID_MAX = MAX_CLIENT_ID_LENGTH
DEFAULT_TOKEN_TTL = 86_400
MAX_TOKEN_TTL = 86_400
RENEW_BEFORE = 300
"""Seconds before expiry at which a cached token is replaced."""

# The only clientData keys AssetPay accepts, in the order we send them.
CLIENT_DATA_KEYS = ("totalWager", "registrationDate", "kycHash", "kycLevel", "fiatDeposits", "cryptoDeposits")


def _compact(value: Any) -> bytes:
    """Compact JSON as the SDK writes it (UTF-8, no spaces); Decimals become JSON numbers without a float."""
    return simplejson.dumps(value, use_decimal=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _normalise_client_data(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Stored profile data → what AssetPay accepts (money and counts exact). Returns (clean, problems)."""
    problems: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for key in data:
        if key not in CLIENT_DATA_KEYS:
            problems[f"clientData.{key}"] = "is not a clientData field AssetPay accepts"
    for key in CLIENT_DATA_KEYS:
        value = data.get(key)
        if value is None:
            continue  # absent and null say the same thing
        path = f"clientData.{key}"
        if key == "totalWager":
            wager = _decimal(value)
            if wager is None or not wager.is_finite() or wager < 0:
                problems[path] = "must be a number >= 0"
            else:
                clean[key] = wager
        elif key == "registrationDate":
            stamp = _iso_datetime(value)
            if stamp is None:
                problems[path] = "must be an ISO 8601 date-time"
            else:
                clean[key] = stamp
        elif key == "kycHash":
            if not isinstance(value, str):
                problems[path] = "must be a string"
            else:
                clean[key] = value
        elif key == "kycLevel":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems[path] = "must be an integer >= 0"
            else:
                clean[key] = value
        elif not isinstance(value, bool):  # fiatDeposits, cryptoDeposits
            problems[path] = "must be true or false"
        else:
            clean[key] = value
    return clean, problems


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal | int | str):
        try:
            return Decimal(value)
        except InvalidOperation:
            return None
    if isinstance(value, float):  # a stored JSON number decoded by a driver: its shortest repr, never binary noise
        return Decimal(repr(value))
    return None


def _iso_datetime(value: Any) -> str | None:
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return None
        return value
    return None


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """The end user as AssetPay should see them.

    `user_id` is our own user id, sent as `clientId` so every trade carries it back as `externalClientUserId`.
    `client_data` must come from the stored profile (the merchant platform's trusted systems), never from the end
    user's request. Formats are checked on construction; a bad value raises AssetPayError(VALIDATION_FAILED).
    """

    user_id: str
    steam_id: str
    trade_url: str
    client_data: Mapping[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        problems: dict[str, str] = {}
        if not isinstance(self.user_id, str) or not 1 <= len(self.user_id) <= CLIENT_ID_MAX:
            problems["clientId"] = f"must be 1 to {CLIENT_ID_MAX} characters"
        if not isinstance(self.steam_id, str) or not STEAM_ID.fullmatch(self.steam_id):
            problems["steamId"] = "must be a SteamID64 (76561 followed by 12 digits)"
        if not isinstance(self.trade_url, str) or not TRADE_URL.fullmatch(self.trade_url):
            problems["tradeUrl"] = "must be a Steam trade offer URL with partner and token"
        clean: dict[str, Any] | None = None
        if self.client_data is not None:
            clean, data_problems = _normalise_client_data(self.client_data)
            problems.update(data_problems)
        if problems:
            raise invalid(problems)
        object.__setattr__(self, "client_data", clean or None)

    def claims(self) -> dict[str, Any]:
        """The token's `client` claim, keys in AssetPay's order: steamID, tradeUrl, clientData?, clientId."""
        claims: dict[str, Any] = {"steamID": self.steam_id, "tradeUrl": self.trade_url}
        if self.client_data:
            claims["clientData"] = dict(self.client_data)
        claims["clientId"] = self.user_id
        return claims

    def authenticate_body(self) -> dict[str, Any]:
        """The body of `POST /auth/authenticate-client` for this user."""
        body: dict[str, Any] = {"clientSteamId": self.steam_id, "clientTradeUrl": self.trade_url}
        if self.client_data:
            body["clientData"] = dict(self.client_data)
        body["clientId"] = self.user_id
        return body

    @property
    def fingerprint(self) -> bytes:
        """Changes whenever anything a token says about the user changes (so a stale token is not reused)."""
        return hashlib.sha256(_compact(self.claims())).digest()


@dataclass(frozen=True, slots=True)
class ClientToken:
    """A client token for one end user and when it expires. The token itself stays out of repr and logs."""

    token: str = field(repr=False)
    expires_at: datetime


def mint_client_token(
    identity: ClientIdentity, *, merchant_id: str, secret: str, issued_at: int, ttl: int = DEFAULT_TOKEN_TTL
) -> str:
    """Sign a client token locally (no request, no rate limit). `issued_at` is a unix time in seconds."""
    if not 1 <= ttl <= MAX_TOKEN_TTL:
        raise ValueError(f"ttl must be 1..{MAX_TOKEN_TTL} seconds")
    header = _b64(_compact({"alg": "HS256", "userId": merchant_id}))
    payload = _b64(
        _compact({"merchantId": merchant_id, "client": identity.claims(), "iat": issued_at, "exp": issued_at + ttl})
    )
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = _b64(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


def token_expiry(token: str) -> int | None:
    """The `exp` of a token AssetPay issued, read without verifying it (only to schedule renewal)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return exp if isinstance(exp, int) and not isinstance(exp, bool) else None


@dataclass(slots=True)
class _Cached:
    fingerprint: bytes
    token: ClientToken
    renew_at: float


class TokenCache:
    """Client tokens per user, reused until `renew_before` seconds before they expire (bounded, least recent out).

    A token is only reused for the same identity: a new trade URL or fresh clientData gets a new token.
    """

    def __init__(self, *, max_entries: int = 10_000, renew_before: int = RENEW_BEFORE) -> None:
        self._entries: OrderedDict[str, _Cached] = OrderedDict()
        self._max_entries = max_entries
        self._renew_before = renew_before

    def get(self, identity: ClientIdentity, *, now: float) -> ClientToken | None:
        entry = self._entries.get(identity.user_id)
        if entry is None or entry.fingerprint != identity.fingerprint or now >= entry.renew_at:
            return None
        self._entries.move_to_end(identity.user_id)
        return entry.token

    def put(self, identity: ClientIdentity, token: ClientToken, *, issued_at: float) -> None:
        expires = token.expires_at.timestamp()
        # A short-lived token is still reused for half its life rather than never.
        margin = min(self._renew_before, max(0.0, (expires - issued_at) / 2))
        self._entries[identity.user_id] = _Cached(identity.fingerprint, token, expires - margin)
        self._entries.move_to_end(identity.user_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def drop(self, user_id: str) -> None:
        self._entries.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._entries)
