"""The bucket's arithmetic in PostgreSQL, on a fake clock: refill by elapsed time, the cap, the exact wait for the
next token, draining, and that concurrent takes never spend one token twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.store import ratelimits as buckets
from assetpay_merchant.store.database import Database
from tests.assetpay_respx import register
from tests.ratelimits.conftest import FakeClock

RATE = {"capacity": 3.0, "per_second": 0.5}  # 3 at once, then one every 2 s


async def take(database: Database, clock: FakeClock, key: str = "test:bucket") -> buckets.Take:
    async with database.statements() as db:
        return await buckets.take(db, key, now=clock(), **RATE)


async def test_a_new_bucket_starts_full_and_refuses_when_empty_with_the_exact_wait(
    resources: Resources, clock: FakeClock
) -> None:
    taken = [await take(resources.database, clock) for _ in range(3)]
    assert [(t.taken, t.tokens) for t in taken] == [(True, 2.0), (True, 1.0), (True, 0.0)]
    refused = await take(resources.database, clock)
    assert (refused.taken, refused.tokens, refused.retry_after) == (False, 0.0, 2.0)
    clock.advance(1.5)
    refused = await take(resources.database, clock)
    assert (refused.taken, refused.retry_after) == (False, pytest.approx(0.5))
    clock.advance(0.5)
    assert (await take(resources.database, clock)).taken


async def test_the_refill_is_capped_at_the_capacity(resources: Resources, clock: FakeClock) -> None:
    for _ in range(3):
        assert (await take(resources.database, clock)).taken
    clock.advance(3600)  # worth 1,800 tokens; the bucket holds 3
    assert [(await take(resources.database, clock)).taken for _ in range(4)] == [True, True, True, False]


async def test_a_refusal_spends_nothing(resources: Resources, clock: FakeClock) -> None:
    for _ in range(3):
        await take(resources.database, clock)
    for _ in range(10):
        assert not (await take(resources.database, clock)).taken
    clock.advance(2)
    assert (await take(resources.database, clock)).taken  # the ten refusals did not dig a hole


async def test_buckets_are_independent(resources: Resources, clock: FakeClock) -> None:
    for _ in range(3):
        await take(resources.database, clock, "test:a")
    assert not (await take(resources.database, clock, "test:a")).taken
    assert (await take(resources.database, clock, "test:b")).taken


async def test_a_drain_makes_the_next_token_wait_exactly_that_long(resources: Resources, clock: FakeClock) -> None:
    async with resources.database.statements() as db:
        left = await buckets.drain(db, "test:bucket", seconds=30, now=clock(), **RATE)
    assert left == -14.0  # 1 - 0.5 * 30: the refill pays the debt first
    refused = await take(resources.database, clock)
    assert (refused.taken, refused.retry_after) == (False, 30.0)
    clock.advance(29.9)
    assert not (await take(resources.database, clock)).taken
    clock.advance(0.1)
    assert (await take(resources.database, clock)).taken


async def test_a_drain_never_gives_tokens_back(resources: Resources, clock: FakeClock) -> None:
    async with resources.database.statements() as db:
        await buckets.drain(db, "test:bucket", seconds=60, now=clock(), **RATE)
        assert await buckets.drain(db, "test:bucket", seconds=2, now=clock(), **RATE) == -29.0


async def test_concurrent_takes_from_many_connections_spend_each_token_once(
    resources: Resources, clock: FakeClock
) -> None:
    results = await asyncio.gather(*(take(resources.database, clock) for _ in range(20)))
    assert sum(result.taken for result in results) == 3
    assert sorted(result.tokens for result in results if result.taken) == [0.0, 1.0, 2.0]


async def test_idle_buckets_are_purged_and_busy_ones_kept(resources: Resources, clock: FakeClock) -> None:
    await take(resources.database, clock, "user:old")
    clock.advance(7200)
    await take(resources.database, clock, "user:new")
    await take(resources.database, clock, "assetpay:kept")
    async with resources.database.statements() as db:
        assert await buckets.purge(db, prefix="user:", idle_before=clock() - timedelta(hours=1)) == 1
        keys = [row["key"] for row in await db.fetch("SELECT key FROM rate_buckets ORDER BY key")]
    assert keys == ["assetpay:kept", "user:new"]


def test_a_bucket_needs_a_token_and_a_refill() -> None:
    with pytest.raises(ValueError, match="capacity"):
        asyncio.run(buckets.take(None, "x", capacity=0.5, per_second=1))  # type: ignore[arg-type]


# -- `admit`: the user's profile, their bucket and the merchant's, in one statement ------------------------------

USER_BUCKET = buckets.Bucket("user:market:u-admit", capacity=2, per_second=0.5)
MERCHANT_BUCKET = buckets.Bucket("assetpay:market", capacity=3, per_second=0.5)


async def admit(
    database: Database,
    clock: FakeClock,
    user_id: str = "u-admit",
    *,
    user_bucket: buckets.Bucket | None = USER_BUCKET,
    merchant_bucket: buckets.Bucket | None = MERCHANT_BUCKET,
) -> buckets.Admission:
    async with database.statements() as db:
        return await buckets.admit(db, user_id, user_bucket=user_bucket, merchant_bucket=merchant_bucket, now=clock())


async def tokens(database: Database, key: str) -> float | None:
    async with database.statements() as db:
        value = await db.fetchval("SELECT tokens FROM rate_buckets WHERE key = $1", key)
    return float(value) if value is not None else None


@pytest.fixture
async def user(client: httpx.AsyncClient) -> str:
    await register(client, "u-admit")
    return "u-admit"


async def test_admit_reads_the_user_and_takes_both_buckets_starting_full(
    resources: Resources, clock: FakeClock, user: str
) -> None:
    first = await admit(resources.database, clock)
    assert first.user is not None
    assert first.user.id == user
    assert first.user_take == buckets.Take(True, 1.0, 0.0)
    assert first.merchant_take == buckets.Take(True, 2.0, 0.0)
    second = await admit(resources.database, clock)
    assert (second.user_take, second.merchant_take) == (buckets.Take(True, 0.0, 0.0), buckets.Take(True, 1.0, 0.0))


async def test_a_user_refused_by_admit_spends_nothing_of_the_merchants_bucket(
    resources: Resources, clock: FakeClock, user: str
) -> None:
    for _ in range(2):
        assert (await admit(resources.database, clock)).user_take.taken  # type: ignore[union-attr]
    refused = await admit(resources.database, clock)
    assert refused.user_take == buckets.Take(False, 0.0, 2.0)
    assert refused.merchant_take is None
    assert await tokens(resources.database, MERCHANT_BUCKET.key) == 1.0  # only the two admitted took from it


async def test_an_empty_merchant_bucket_refuses_after_the_user_took_their_token(
    resources: Resources, clock: FakeClock, user: str
) -> None:
    for _ in range(3):
        await take(resources.database, clock, MERCHANT_BUCKET.key)  # RATE: 3 at once, as MERCHANT_BUCKET
    refused = await admit(resources.database, clock)
    assert refused.user_take is not None
    assert refused.user_take.taken
    assert refused.merchant_take == buckets.Take(False, 0.0, 2.0)


async def test_the_merchants_first_take_does_not_spend_the_users_allowance_twice(
    resources: Resources, clock: FakeClock, user: str
) -> None:
    await admit(resources.database, clock, merchant_bucket=None)  # the user's bucket exists, the merchant's not
    admitted = await admit(resources.database, clock)
    assert admitted.user_take == buckets.Take(True, 0.0, 0.0)
    assert admitted.merchant_take == buckets.Take(True, 2.0, 0.0)
    assert await tokens(resources.database, USER_BUCKET.key) == 0.0


async def test_admit_for_no_such_user_takes_nothing(resources: Resources, clock: FakeClock, user: str) -> None:
    await admit(resources.database, clock)
    assert await admit(resources.database, clock, "u-nobody") == buckets.Admission(None, None, None)
    assert await tokens(resources.database, USER_BUCKET.key) == 1.0
    assert await tokens(resources.database, MERCHANT_BUCKET.key) == 2.0


async def test_admit_without_buckets_only_reads_the_user(resources: Resources, clock: FakeClock, user: str) -> None:
    admitted = await admit(resources.database, clock, user_bucket=None, merchant_bucket=None)
    assert admitted.user is not None
    assert (admitted.user_take, admitted.merchant_take) == (None, None)
    only_merchant = await admit(resources.database, clock, user_bucket=None)
    assert only_merchant.merchant_take == buckets.Take(True, 2.0, 0.0)
