"""Client tokens exactly as AssetPay makes them (ASSETPAY.md §2): an HS256 JWT with the merchant id in the header.

The sandbox mints them on `/auth/authenticate-client` and accepts any token of that format signed with its secret,
so tokens minted locally by the merchant backend work too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import simplejson

from assetpay_merchant.core.vocabulary import STEAM_ID_PATTERN, TRADE_URL_PATTERN
from assetpay_sandbox.wire import SandboxError

DEFAULT_TTL_SECONDS = 86_400
STEAM_ID = re.compile(STEAM_ID_PATTERN)
TRADE_URL = re.compile(TRADE_URL_PATTERN)


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """The end user a client token speaks for."""

    merchant_id: str
    steam_id: str
    trade_url: str
    client_id: str | None = None
    client_data: dict[str, Any] = field(default_factory=dict)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _compact(value: Any) -> bytes:
    text: str = simplejson.dumps(value, separators=(",", ":"), ensure_ascii=False, use_decimal=True)
    return text.encode()


def _sign(secret: bytes, signing_input: str) -> str:
    return _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def mint(identity: ClientIdentity, *, secret: bytes, issued_at: int, ttl: int = DEFAULT_TTL_SECONDS) -> str:
    """The token AssetPay would issue: compact JSON, keys in the documented order, no `typ` header."""
    client: dict[str, Any] = {"steamID": identity.steam_id, "tradeUrl": identity.trade_url}
    if identity.client_data:
        client["clientData"] = identity.client_data
    if identity.client_id is not None:
        client["clientId"] = identity.client_id
    header = {"alg": "HS256", "userId": identity.merchant_id}
    payload = {"merchantId": identity.merchant_id, "client": client, "iat": issued_at, "exp": issued_at + ttl}
    signing_input = f"{_b64(_compact(header))}.{_b64(_compact(payload))}"
    return f"{signing_input}.{_sign(secret, signing_input)}"


def _invalid(reason: str) -> SandboxError:
    return SandboxError(401, "INVALID_TOKEN", f"Invalid client token: {reason}")


def read(token: str, *, secret: bytes, merchant_id: str, now: int) -> ClientIdentity:
    """The identity in a valid, unexpired token of this merchant; SandboxError(401, INVALID_TOKEN) otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise _invalid("not a JWT")
    try:
        header = json.loads(_unb64(parts[0]))
        payload = json.loads(_unb64(parts[1]), parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("undecodable") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise _invalid("algorithm must be HS256")
    if not hmac.compare_digest(_sign(secret, f"{parts[0]}.{parts[1]}"), parts[2]):
        raise _invalid("bad signature")
    if not isinstance(payload, dict):
        raise _invalid("payload is not an object")
    exp = payload.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool) or exp <= now:
        raise _invalid("expired")
    if payload.get("merchantId") != merchant_id or header.get("userId", merchant_id) != merchant_id:
        raise _invalid("issued for another merchant")
    client = payload.get("client")
    if not isinstance(client, dict):
        raise _invalid("no client")
    steam_id, trade_url = client.get("steamID"), client.get("tradeUrl")
    if not isinstance(steam_id, str) or not STEAM_ID.match(steam_id):
        raise _invalid("bad steamID")
    if not isinstance(trade_url, str) or not TRADE_URL.match(trade_url):
        raise _invalid("bad tradeUrl")
    client_id = client.get("clientId")
    if client_id is not None and (not isinstance(client_id, str) or len(client_id) > 128):
        raise _invalid("bad clientId")
    client_data = client.get("clientData")
    return ClientIdentity(
        merchant_id=merchant_id,
        steam_id=steam_id,
        trade_url=trade_url,
        client_id=client_id,
        client_data=client_data if isinstance(client_data, dict) else {},
    )
