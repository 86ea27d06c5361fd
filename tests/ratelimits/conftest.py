"""A fake clock for the buckets, and the shared app's rate limits swapped for tight ones that run on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.gateway.client import RouteClass
from assetpay_merchant.services.ratelimits import Rate, RateLimits, SetupWatch, UserScope


class FakeClock:
    """Time that moves only when the test says so (the buckets are handed it instead of the database's clock)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def timestamp(self) -> float:
        return self.now.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Install = Callable[..., RateLimits]


@pytest.fixture
def install_limits(app: FastAPI, resources: Resources, clock: FakeClock) -> Iterator[Install]:
    """`install_limits(merchant={...}, users={...})`: the app's rate limits, on the fake clock, for this test."""
    originals = resources.assetpay._policy, resources.catalog.limits, resources.rate_limits

    def install(
        *, merchant: Mapping[RouteClass, Rate] | None = None, users: Mapping[UserScope, Rate] | None = None
    ) -> RateLimits:
        limits = RateLimits(
            resources.database,
            merchant=merchant or {},
            users=users or {},
            setup=SetupWatch(clock=clock.timestamp),
            clock=clock,
        )
        resources.assetpay._policy = limits
        resources.catalog.limits = limits
        resources.rate_limits = limits
        return limits

    yield install
    resources.assetpay._policy, resources.catalog.limits, resources.rate_limits = originals
