"""The merchant's shared AssetPay budget, through the real client: a request the budget refuses never reaches
AssetPay, two "processes" (two clients, two RateLimits, one database) never send more than the budget between them,
and AssetPay's own 429 drains the budget for everyone until its Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.gateway import AssetPayClient, AssetPayError, ErrorKey
from assetpay_merchant.gateway.client import RouteClass
from assetpay_merchant.gateway.tokens import ClientIdentity
from assetpay_merchant.services.ratelimits import Rate, RateLimits, SetupWatch, Tier, merchant_rates
from tests.gateway.fake_assetpay import MERCHANT_ID, TRADE_URL, fail, item, ok
from tests.ratelimits.conftest import FakeClock

USER = ClientIdentity(user_id="u1", steam_id="76561198000000001", trade_url=TRADE_URL)
INVENTORY = {"inventory": [item()], "count": 1, "updatedAt": None, "collateral": 0}


class Upstream:
    """AssetPay as a MockTransport that counts what reached it and answers with `reply`."""

    def __init__(self, reply: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.calls: list[str] = []
        self.reply = reply or (lambda request: ok(INVENTORY))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.url.path)
        return self.reply(request)


def client(upstream: Upstream, limits: RateLimits) -> AssetPayClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    return AssetPayClient(
        http,
        base_url="https://assetpay.test",
        api_key=None,
        merchant_id=MERCHANT_ID,
        policy=limits,
        api_secret=SecretStr("a-secret-of-our-own"),
    )


def limits_on(resources: Resources, clock: FakeClock, **rates: Rate) -> RateLimits:
    merchant = {RouteClass(route): rate for route, rate in rates.items()}
    return RateLimits(
        resources.database, merchant=merchant, users={}, setup=SetupWatch(clock=clock.timestamp), clock=clock
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_an_empty_budget_refuses_before_assetpay_is_called(resources: Resources, clock: FakeClock) -> None:
    upstream = Upstream()
    assetpay = client(upstream, limits_on(resources, clock, inventory=Rate(2, 1 / 30)))
    refused_before = metric("assetpay_rate_limited_total", route="inventory", scope="merchant")
    await assetpay.inventory(USER)
    await assetpay.inventory(USER)
    assert metric("assetpay_rate_budget_tokens", route="inventory") == 0.0
    with pytest.raises(AssetPayError) as refused:
        await assetpay.inventory(USER)
    assert refused.value.key == ErrorKey.QUOTA_EXHAUSTED
    assert refused.value.status is None  # nothing was sent
    assert refused.value.retry_after == pytest.approx(30.0)
    assert "shared AssetPay quota" in refused.value.message
    assert len(upstream.calls) == 2
    assert metric("assetpay_rate_limited_total", route="inventory", scope="merchant") == refused_before + 1
    clock.advance(30)
    await assetpay.inventory(USER)
    assert len(upstream.calls) == 3


async def test_route_classes_have_budgets_of_their_own(resources: Resources, clock: FakeClock) -> None:
    upstream = Upstream(lambda request: ok(INVENTORY if "inventory" in request.url.path else {"items": [], "count": 0}))
    assetpay = client(upstream, limits_on(resources, clock, inventory=Rate(1, 1 / 60), market=Rate(1, 1 / 60)))
    await assetpay.inventory(USER)
    await assetpay.market(USER)  # the inventory budget is empty; the market's is not
    with pytest.raises(AssetPayError):
        await assetpay.market(USER)
    assert upstream.calls == ["/client/inventory", "/client/market"]


async def test_two_processes_never_send_more_than_the_shared_budget(resources: Resources, clock: FakeClock) -> None:
    upstream = Upstream()
    rate = Rate(5, 1 / 60)
    first, second = (client(upstream, limits_on(resources, clock, inventory=rate)) for _ in range(2))

    async def ask(assetpay: AssetPayClient) -> str:
        try:
            await assetpay.inventory(USER)
        except AssetPayError as error:
            return error.key
        return "sent"

    results = await asyncio.gather(*(ask(first if n % 2 else second) for n in range(24)))
    assert results.count("sent") == len(upstream.calls) == 5
    assert results.count(ErrorKey.QUOTA_EXHAUSTED) == 19
    clock.advance(120)  # two more tokens, for whichever process asks first
    results = await asyncio.gather(*(ask(first if n % 2 else second) for n in range(10)))
    assert results.count("sent") == 2
    assert len(upstream.calls) == 7


async def test_assetpays_429_drains_the_budget_of_every_process_until_its_retry_after(
    resources: Resources, clock: FakeClock
) -> None:
    told = Upstream(lambda request: fail(429, "RATE_LIMITED", headers={"retry-after": "45"}))
    other = Upstream()
    rate = Rate(10, 1)
    first = client(told, limits_on(resources, clock, inventory=rate))
    second = client(other, limits_on(resources, clock, inventory=rate))
    with pytest.raises(AssetPayError) as limited:
        await first.inventory(USER)
    assert (limited.value.key, limited.value.status) == ("RATE_LIMITED", 429)
    with pytest.raises(AssetPayError) as refused:
        await second.inventory(USER)  # the other process was never told, and holds off all the same
    assert refused.value.key == ErrorKey.QUOTA_EXHAUSTED
    assert refused.value.retry_after == pytest.approx(45.0)
    assert other.calls == []
    clock.advance(45)
    await second.inventory(USER)
    assert other.calls == ["/client/inventory"]


async def test_one_users_too_many_active_trades_does_not_drain_the_merchants_budget(
    resources: Resources, clock: FakeClock
) -> None:
    upstream = Upstream(lambda request: fail(429, "TOO_MANY_ACTIVE_TRADES", headers={"retry-after": "60"}))
    limits = limits_on(resources, clock, inventory=Rate(3, 1))
    with pytest.raises(AssetPayError):
        await client(upstream, limits).inventory(USER)
    async with resources.database.statements() as db:
        tokens = await db.fetchval("SELECT tokens FROM rate_buckets WHERE key = 'assetpay:inventory'")
    assert tokens == 2.0


async def test_routes_without_a_budget_are_not_counted(resources: Resources, clock: FakeClock) -> None:
    upstream = Upstream(lambda request: ok({"tradeId": "t1", "requested": 1, "cancelled": 1, "failed": 0, "items": []}))
    assetpay = client(upstream, limits_on(resources, clock, inventory=Rate(1, 1)))
    for _ in range(3):
        await assetpay.cancel_withdrawal(USER, "trade-1")
    assert len(upstream.calls) == 3
    async with resources.database.statements() as db:
        assert await db.fetchval("SELECT count(*) FROM rate_buckets") == 0


def test_the_tiers_budgets_never_let_more_than_the_limit_through_in_a_minute() -> None:
    for tier, published in (
        (Tier.UNVERIFIED, {"inventory": 10, "deposit": 5, "lookup": 30, "market": 30}),
        (Tier.VERIFIED, {"inventory": 1000, "deposit": 500, "lookup": 3000}),
    ):
        rates = merchant_rates(tier, {})
        for route, limit in published.items():
            rate = rates[RouteClass(route)]
            assert rate.capacity + 60 * rate.per_second == limit, (tier, route)
            assert rate.capacity >= 1
    overridden = merchant_rates(Tier.UNVERIFIED, {RouteClass.INVENTORY: 60, RouteClass.OTHER: 12})
    assert overridden[RouteClass.INVENTORY] == Rate(10, 50 / 60)
    assert overridden[RouteClass.OTHER] == Rate(2, 10 / 60)
    assert RouteClass.OTHER not in merchant_rates(Tier.VERIFIED, {RouteClass.OTHER: None})
