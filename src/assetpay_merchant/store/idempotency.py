"""`Idempotency-Key` rows: the same key and body get the first answer; the same key with another body is a 409; a
request whose outcome was lost can be retried with its key and carries on with the same recorded trade.

A claim is a short lease on the key. Each step runs in the caller's unit of work; the trading service takes and
settles claims in units of work of their own, so no transaction stays open while AssetPay is called.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from assetpay_merchant.core.errors import Conflict
from assetpay_merchant.store.database import Connection
from assetpay_merchant.store.tables import MAX_IDEMPOTENCY_KEY_LENGTH

LEASE = timedelta(seconds=60)
MAX_KEY_LENGTH = MAX_IDEMPOTENCY_KEY_LENGTH


def fingerprint(path: str, body: Any) -> str:
    """What makes two requests "the same": the route and the body, compared as canonical JSON."""
    canonical = json.dumps([path, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """A key we hold the lease on; `trade_id` is set when an earlier attempt already recorded its trade."""

    id: int
    trade_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Replay:
    """The stored answer of an earlier request with the same key and body."""

    status: int
    body: dict[str, Any]


_TAKE = """
INSERT INTO idempotency_keys (user_id, key, fingerprint, locked_until) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING id
"""
_HELD = """
SELECT id, fingerprint, trade_id, response_status, response_body::text AS response_body, locked_until
FROM idempotency_keys WHERE user_id = $1 AND key = $2
FOR UPDATE
"""
_RENEW = "UPDATE idempotency_keys SET locked_until = $2 WHERE id = $1"
_ATTACH = "UPDATE idempotency_keys SET trade_id = $2 WHERE id = $1"
_FINISH = """
UPDATE idempotency_keys SET response_status = $2, response_body = $3::text::jsonb, locked_until = NULL WHERE id = $1
"""
_RELEASE = "UPDATE idempotency_keys SET locked_until = NULL WHERE id = $1"


async def claim(db: Connection, *, user_id: str, key: str, fingerprint: str, now: datetime) -> Claim | Replay:
    """Take the key, or say what to answer: the stored response, or 409 when it is reused or busy."""
    inserted: int | None = await db.fetchval(_TAKE, user_id, key, fingerprint, now + LEASE)
    if inserted is not None:
        return Claim(inserted, None)
    row = await db.fetchrow(_HELD, user_id, key)
    assert row is not None
    if row["fingerprint"] != fingerprint:
        raise Conflict("This Idempotency-Key was used with a different request", key="IDEMPOTENCY_KEY_REUSED")
    if row["response_status"] is not None:
        return Replay(row["response_status"], json.loads(row["response_body"]))
    locked_until: datetime | None = row["locked_until"]
    if locked_until is not None and locked_until > now:
        raise Conflict(
            "A request with this Idempotency-Key is still in progress",
            key="IDEMPOTENCY_KEY_IN_USE",
            retry_after=max(1, int((locked_until - now).total_seconds())),
        )
    await db.execute(_RENEW, row["id"], now + LEASE)
    return Claim(row["id"], row["trade_id"])


async def attach_trade(db: Connection, claim: Claim, trade_id: uuid.UUID) -> None:
    """Remember the trade this key recorded (in the unit of work that records it)."""
    await db.execute(_ATTACH, claim.id, trade_id)


async def finish(db: Connection, claim: Claim, *, status: int, body: dict[str, Any]) -> None:
    """Store the answer every later request with this key and body gets."""
    await db.execute(_FINISH, claim.id, status, json.dumps(body))


async def release(db: Connection, claim: Claim) -> None:
    """The outcome is unknown: free the key for a retry, which will carry on with the recorded trade."""
    await db.execute(_RELEASE, claim.id)
