"""Token buckets in PostgreSQL, one row each, shared by every process on the database.

A bucket is `(key, tokens, updated_at)`. It is refilled lazily: whoever takes from it first adds what the time
since `updated_at` earned (`per_second` a second, never above `capacity`), so nothing runs in the background and an
idle bucket costs nothing. Taking is one statement on an autocommit connection (or inside the caller's transaction):
the row lock of the UPDATE makes concurrent takes from every process queue for the row, so two can never spend the
same token. A missing row is a full bucket (the first take creates it); so is a row idle for longer than a full
refill, which is why idle rows can be purged without changing anything.

Time is the database's (`clock_timestamp()`), the one clock every process shares; tests pass `now` instead.
`updated_at` never moves backwards, so a bucket stamped in the future (a clock step, or a drain until then) refills
nothing until that moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from assetpay_merchant.store.database import Connection

_REFILLED = "least($2::float8, b.tokens + $3::float8 * greatest(0, extract(epoch FROM c.now - b.updated_at)::float8))"
"""The bucket's tokens at `c.now`: what it had, plus what the elapsed time earned, capped at the capacity."""

_TAKE = f"""
WITH c AS (SELECT coalesce($4::timestamptz, clock_timestamp()) AS now),
taken AS (
    UPDATE rate_buckets AS b
    SET tokens = {_REFILLED} - 1, updated_at = greatest(b.updated_at, c.now)
    FROM c
    WHERE b.key = $1 AND {_REFILLED} >= 1
    RETURNING b.tokens
)
SELECT true AS taken, tokens FROM taken
UNION ALL
SELECT false, {_REFILLED} FROM rate_buckets AS b, c WHERE b.key = $1 AND NOT EXISTS (SELECT FROM taken)
"""  # noqa: S608 (a constant expression)

_CREATE = """
INSERT INTO rate_buckets (key, tokens, updated_at) VALUES ($1, $2, coalesce($3::timestamptz, clock_timestamp()))
ON CONFLICT (key) DO NOTHING
"""

_DRAIN = f"""
WITH c AS (SELECT coalesce($5::timestamptz, clock_timestamp()) AS now)
INSERT INTO rate_buckets AS b (key, tokens, updated_at) SELECT $1, $4::float8, c.now FROM c
ON CONFLICT (key) DO UPDATE
SET tokens = least({_REFILLED.replace("c.now", "excluded.updated_at")}, excluded.tokens),
    updated_at = greatest(b.updated_at, excluded.updated_at)
RETURNING tokens
"""  # noqa: S608 (a constant expression)

_PURGE = "DELETE FROM rate_buckets WHERE key LIKE $1 || '%' AND updated_at < $2"


@dataclass(frozen=True, slots=True)
class Take:
    """What a take found: `taken` a token or not, the tokens left, and (refused) the seconds until one is there."""

    taken: bool
    tokens: float
    retry_after: float


async def take(db: Connection, key: str, *, capacity: float, per_second: float, now: datetime | None = None) -> Take:
    """Take one token from the bucket `key` if it has one, atomically; a bucket never used before starts full."""
    if capacity < 1 or per_second <= 0:
        raise ValueError("a bucket needs capacity >= 1 and per_second > 0")
    row = await db.fetchrow(_TAKE, key, capacity, per_second, now)
    if row is None:  # the first take ever (or since a purge): the bucket starts full, then the take is repeated
        await db.execute(_CREATE, key, float(capacity), now)
        row = await db.fetchrow(_TAKE, key, capacity, per_second, now)
        assert row is not None
    tokens = float(row["tokens"])
    if row["taken"]:
        return Take(True, tokens, 0.0)
    return Take(False, tokens, (1 - tokens) / per_second)


async def drain(
    db: Connection,
    key: str,
    *,
    capacity: float,
    per_second: float,
    seconds: float,
    now: datetime | None = None,
) -> float:
    """Empty the bucket so that its next token comes `seconds` from now (never sooner than it would anyway);
    the tokens it holds afterwards (below 1: a debt the refill pays off first)."""
    if per_second <= 0:
        raise ValueError("per_second must be > 0")
    target = 1 - per_second * max(0.0, seconds)
    tokens = await db.fetchval(_DRAIN, key, capacity, per_second, target, now)
    return float(tokens)


async def purge(db: Connection, *, prefix: str, idle_before: datetime) -> int:
    """Delete the buckets under `prefix` untouched since `idle_before` (full by then: nothing is lost)."""
    status: str = await db.execute(_PURGE, prefix, idle_before)
    return int(status.split()[-1])
