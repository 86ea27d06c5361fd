"""Token buckets in PostgreSQL, one row each, shared by every process on the database.

A bucket is `(key, tokens, updated_at)`. It is refilled lazily: whoever takes from it first adds what the time
since `updated_at` earned (`per_second` a second, never above `capacity`), so nothing runs in the background and an
idle bucket costs nothing. Taking is one statement on an autocommit connection (or inside the caller's transaction):
the row lock of the UPDATE makes concurrent takes from every process queue for the row, so two can never spend the
same token. A missing row is a full bucket (the first take creates it); so is a row idle for longer than a full
refill, which is why idle rows can be purged without changing anything.

`admit` is the catalog's request in one statement: the user's profile, a token of their allowance and, only when
that was taken, one of the merchant's bucket (one round trip before AssetPay is asked, where three statements took two).

Time is the database's (`clock_timestamp()`), the one clock every process shares; tests pass `now` instead.
`updated_at` never moves backwards, so a bucket stamped in the future (a clock step, or a drain until then) refills
nothing until that moment.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from assetpay_merchant.store import users
from assetpay_merchant.store.database import Connection, Record
from assetpay_merchant.store.users import UserRow

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


def _refilled(capacity: str, per_second: str) -> str:
    """`_REFILLED` with the bucket's capacity and rate in other parameters."""
    return (
        _REFILLED.replace("$2::", "{capacity}::")
        .replace("$3::", "{per_second}::")
        .format(capacity=capacity, per_second=per_second)
    )


_ADMIT = f"""
WITH c AS (SELECT coalesce($8::timestamptz, clock_timestamp()) AS now),
u AS (SELECT {users.COLUMNS} FROM users WHERE id = $1),
user_taken AS (
    UPDATE rate_buckets AS b
    SET tokens = {_refilled("$3", "$4")} - 1, updated_at = greatest(b.updated_at, c.now)
    FROM c
    WHERE b.key = $2 AND EXISTS (SELECT FROM u) AND {_refilled("$3", "$4")} >= 1
    RETURNING b.tokens
),
merchant_taken AS (
    UPDATE rate_buckets AS b
    SET tokens = {_refilled("$6", "$7")} - 1, updated_at = greatest(b.updated_at, c.now)
    FROM c
    WHERE b.key = $5 AND EXISTS (SELECT FROM u) AND ($2::text IS NULL OR EXISTS (SELECT FROM user_taken))
        AND {_refilled("$6", "$7")} >= 1
    RETURNING b.tokens
)
SELECT u.*,
    (SELECT tokens FROM user_taken) AS user_taken,
    (SELECT {_refilled("$3", "$4")} FROM rate_buckets AS b WHERE b.key = $2) AS user_tokens,
    (SELECT tokens FROM merchant_taken) AS merchant_taken,
    (SELECT {_refilled("$6", "$7")} FROM rate_buckets AS b WHERE b.key = $5) AS merchant_tokens
FROM c LEFT JOIN u ON true
"""  # noqa: S608 (constant expressions)
"""The user's profile, their bucket's take and then (only when that one was taken) the merchant's, at once. The
bucket reads see the rows as they were before the takes: what a refused take found."""

_PURGE = "DELETE FROM rate_buckets WHERE key LIKE $1 || '%' AND updated_at < $2"


@dataclass(frozen=True, slots=True)
class Take:
    """What a take found: `taken` a token or not, the tokens left, and (refused) the seconds until one is there."""

    taken: bool
    tokens: float
    retry_after: float

    @classmethod
    def found(cls, taken: bool, tokens: float, per_second: float) -> Take:
        return cls(True, tokens, 0.0) if taken else cls(False, tokens, (1 - tokens) / per_second)


async def take(db: Connection, key: str, *, capacity: float, per_second: float, now: datetime | None = None) -> Take:
    """Take one token from the bucket `key` if it has one, atomically; a bucket never used before starts full."""
    if capacity < 1 or per_second <= 0:
        raise ValueError("a bucket needs capacity >= 1 and per_second > 0")
    row = await db.fetchrow(_TAKE, key, capacity, per_second, now)
    if row is None:  # the first take ever (or since a purge): the bucket starts full, then the take is repeated
        await db.execute(_CREATE, key, float(capacity), now)
        row = await db.fetchrow(_TAKE, key, capacity, per_second, now)
        assert row is not None
    return Take.found(bool(row["taken"]), float(row["tokens"]), per_second)


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    capacity: float
    per_second: float

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.per_second <= 0:
            raise ValueError("a bucket needs capacity >= 1 and per_second > 0")


@dataclass(frozen=True, slots=True)
class Admission:
    """What `admit` found: the user (None: no such user, and nothing was taken) and each bucket's take (None: the
    bucket was not asked, or the merchant's was not reached because the user's refused)."""

    user: UserRow | None
    user_take: Take | None
    merchant_take: Take | None


_USER_FIELDS = tuple(field.name for field in fields(UserRow))


async def admit(
    db: Connection,
    user_id: str,
    *,
    user_bucket: Bucket | None,
    merchant_bucket: Bucket | None,
    now: datetime | None = None,
) -> Admission:
    """Read the user's profile and, when they exist, take a token from their bucket and then one from the merchant's
    (only once the user's was taken: a refused user spends nothing of the merchant's), in one statement."""
    row = await _admit(db, user_id, user_bucket, merchant_bucket, now)
    if row["id"] is None:
        return Admission(None, None, None)
    if user_bucket is not None and row["user_tokens"] is None:
        # The user's first take (or their first since a purge): nothing was taken; the buckets start full.
        for bucket in (user_bucket, merchant_bucket):
            if bucket is not None:
                await db.execute(_CREATE, bucket.key, float(bucket.capacity), now)
        row = await _admit(db, user_id, user_bucket, merchant_bucket, now)
    user = users.row_of({name: row[name] for name in _USER_FIELDS})
    user_take = _outcome(row["user_taken"], row["user_tokens"], user_bucket)
    if merchant_bucket is None or (user_take is not None and not user_take.taken):
        return Admission(user, user_take, None)
    if row["merchant_tokens"] is None:  # the merchant's first take: the user's stands, only this one is repeated
        await db.execute(_CREATE, merchant_bucket.key, float(merchant_bucket.capacity), now)
        row = await _admit(db, user_id, None, merchant_bucket, now)
    return Admission(user, user_take, _outcome(row["merchant_taken"], row["merchant_tokens"], merchant_bucket))


async def _admit(db: Connection, user_id: str, ub: Bucket | None, mb: Bucket | None, now: datetime | None) -> Record:
    row = await db.fetchrow(
        _ADMIT,
        user_id,
        ub.key if ub else None,
        ub.capacity if ub else None,
        ub.per_second if ub else None,
        mb.key if mb else None,
        mb.capacity if mb else None,
        mb.per_second if mb else None,
        now,
    )
    assert row is not None  # the statement always answers one row (its columns null when there is no such user)
    return row


def _outcome(taken: float | None, found: float | None, bucket: Bucket | None) -> Take | None:
    if bucket is None:
        return None
    if taken is not None:
        return Take.found(True, float(taken), bucket.per_second)
    return Take.found(False, float(found) if found is not None else 0.0, bucket.per_second)


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
