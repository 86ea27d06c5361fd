"""The bucket's arithmetic in PostgreSQL, on a fake clock: refill by elapsed time, the cap, the exact wait for the
next token, draining, and that concurrent takes never spend one token twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.store import ratelimits as buckets
from assetpay_merchant.store.database import Database
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
