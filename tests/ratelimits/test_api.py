"""Our routes under the rate limits: the shared AssetPay quota answers 429 ASSETPAY_QUOTA_EXHAUSTED before AssetPay
is called, one user's burst is cut by their own allowance while another user still gets through, and AssetPay's
broken-setup errors are logged with the fix, counted and shown by /readyz until the same call works again."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.gateway.client import RouteClass
from assetpay_merchant.gateway.errors import SETUP_ERRORS
from assetpay_merchant.services import reconciliation
from assetpay_merchant.services.ratelimits import Rate, UserScope
from assetpay_merchant.services.reconciliation import Rules, run_pass
from tests.assetpay_respx import AssetPay, accept, mocked_assetpay, register, trades_of, unchecked
from tests.gateway.fake_assetpay import fail, item, ok
from tests.ratelimits.conftest import FakeClock, Install
from tests.reconciliation.helpers import Book
from tests.support import auth, balance, deliver_trade, trade

INVENTORY = {"inventory": [item()], "count": 1, "updatedAt": "2026-12-15T12:00:00Z", "collateral": 0}
DEPOSIT = {"items": [{"itemId": "730_12345678901", "price": "10.75"}]}


@pytest.fixture
def assetpay(resources: Resources) -> Iterator[AssetPay]:
    with mocked_assetpay(resources) as fake:
        fake.inventory.reply(ok(INVENTORY))
        fake.market.reply(ok({"items": [item()], "count": 1}))
        yield fake


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_shared_quota_is_a_429_with_retry_after_and_assetpay_is_not_asked(
    client: httpx.AsyncClient, assetpay: AssetPay, install_limits: Install
) -> None:
    install_limits(merchant={RouteClass.INVENTORY: Rate(1, 1 / 20)})
    for user in ("alice", "bob"):
        await register(client, user)
    assert (await client.get("/v1/inventory", headers=auth("alice"))).status_code == 200
    refused = await client.get("/v1/inventory", headers=auth("bob"))
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "20"
    error = refused.json()["error"]
    assert error["key"] == "ASSETPAY_QUOTA_EXHAUSTED"
    assert "shared by all its users" in error["message"]
    assert assetpay.inventory.call_count == 1


async def test_a_deposit_refused_by_the_shared_quota_is_failed_unsent_and_its_key_freed(
    client: httpx.AsyncClient, assetpay: AssetPay, install_limits: Install, engine: AsyncEngine, clock: FakeClock
) -> None:
    install_limits(merchant={RouteClass.DEPOSIT: Rate(1, 1 / 60)})
    for user in ("alice", "bob"):
        await register(client, user)
    assetpay.deposit.reply(accept(user_id="alice"), accept(user_id="bob"))
    assert (await client.post("/v1/deposits", json=DEPOSIT, headers=auth("alice"))).status_code == 201
    headers = {**auth("bob"), "Idempotency-Key": "bob-1"}
    refused = await client.post("/v1/deposits", json=DEPOSIT, headers=headers)
    assert (refused.status_code, refused.json()["error"]["key"]) == (429, "ASSETPAY_QUOTA_EXHAUSTED")
    assert refused.headers["Retry-After"] == "60"
    assert assetpay.deposit.call_count == 1
    [row] = await trades_of(engine, "bob")
    assert (row["status"], row["assetpay_id"]) == ("failed", None)
    clock.advance(60)
    retried = await client.post("/v1/deposits", json=DEPOSIT, headers=headers)  # the same key starts anew
    assert retried.status_code == 201, retried.text
    assert assetpay.deposit.call_count == 2


async def test_one_users_burst_is_cut_by_their_allowance_and_another_user_gets_through(
    client: httpx.AsyncClient, assetpay: AssetPay, install_limits: Install
) -> None:
    install_limits(merchant={RouteClass.INVENTORY: Rate(10, 1 / 6)}, users={UserScope.INVENTORY: Rate.burst(3)})
    for user in ("greedy", "patient"):
        await register(client, user)
    before = metric("assetpay_rate_limited_total", route="inventory", scope="user")
    statuses = [(await client.get("/v1/inventory", headers=auth("greedy"))).status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]
    cut = await client.get("/v1/inventory", headers=auth("greedy"))
    assert cut.json()["error"]["key"] == "TOO_MANY_REQUESTS"
    assert cut.headers["Retry-After"] == "20"
    assert metric("assetpay_rate_limited_total", route="inventory", scope="user") == before + 4
    assert (await client.get("/v1/inventory", headers=auth("patient"))).status_code == 200
    assert assetpay.inventory.call_count == 4  # the merchant's budget kept 6 tokens for everybody else


async def test_market_hits_are_free_and_misses_count_against_the_user(
    client: httpx.AsyncClient, assetpay: AssetPay, install_limits: Install
) -> None:
    install_limits(users={UserScope.MARKET: Rate.burst(2)})
    await register(client, "browser")
    for page in (1, 1, 1, 2):  # one miss, two hits, one miss
        assert (await client.get(f"/v1/market?page={page}", headers=auth("browser"))).status_code == 200
    refused = await client.get("/v1/market?page=3", headers=auth("browser"))
    assert (refused.status_code, refused.json()["error"]["key"]) == (429, "TOO_MANY_REQUESTS")
    assert assetpay.market.call_count == 2


async def test_a_users_trades_beyond_the_allowance_are_refused_and_leave_nothing_recorded(
    client: httpx.AsyncClient, assetpay: AssetPay, install_limits: Install, engine: AsyncEngine
) -> None:
    install_limits(users={UserScope.TRADES: Rate.burst(2)})
    await register(client, "trader")
    assetpay.deposit.reply(accept(user_id="trader"))
    statuses = [(await client.post("/v1/deposits", json=DEPOSIT, headers=auth("trader"))).status_code for _ in range(3)]
    assert statuses == [201, 201, 429]
    assert len(await trades_of(engine, "trader")) == 2
    assert assetpay.deposit.call_count == 2


@pytest.mark.parametrize("key", sorted(SETUP_ERRORS))
async def test_a_broken_setup_is_logged_with_the_fix_counted_and_shown_by_readyz_until_the_call_works(
    client: httpx.AsyncClient,
    assetpay: AssetPay,
    install_limits: Install,
    caplog: pytest.LogCaptureFixture,
    key: str,
) -> None:
    install_limits()
    await register(client, "u1")
    before = metric("assetpay_setup_errors_total", key=key)
    assetpay.deposit.reply(unchecked(fail(403, key, message="as AssetPay says it")), accept(user_id="u1"))
    with caplog.at_level(logging.ERROR, logger="assetpay_merchant.services.ratelimits"):
        refused = await client.post("/v1/deposits", json=DEPOSIT, headers=auth("u1"))
    assert (refused.status_code, refused.json()["error"]["key"]) == (503, "ASSETPAY_SETUP_BROKEN")
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR and key in r.getMessage()]
    assert SETUP_ERRORS[key] in logged.getMessage()
    assert metric("assetpay_setup_errors_total", key=key) == before + 1
    assert metric("assetpay_setup_error_last_seen_timestamp_seconds", key=key) > 0

    ready = await client.get("/readyz")
    assert ready.status_code == 200  # still serving what it can; the warning is for ops
    [warning] = ready.json()["warnings"]
    assert (warning["key"], warning["route"], warning["fix"]) == (key, "deposit", SETUP_ERRORS[key])

    assert (await client.post("/v1/deposits", json=DEPOSIT, headers=auth("u1"))).status_code == 201
    assert "warnings" not in (await client.get("/readyz")).json()


async def test_a_setup_warning_stays_until_its_own_call_works_or_it_grows_old(
    client: httpx.AsyncClient, assetpay: AssetPay, install_limits: Install, clock: FakeClock
) -> None:
    install_limits()
    await register(client, "u1")
    assetpay.deposit.reply(unchecked(fail(400, "MERCHANT_NO_CALLBACK_URL")))
    await client.post("/v1/deposits", json=DEPOSIT, headers=auth("u1"))
    assert (await client.get("/v1/inventory", headers=auth("u1"))).status_code == 200  # another route proves nothing
    assert [w["key"] for w in (await client.get("/readyz")).json()["warnings"]] == ["MERCHANT_NO_CALLBACK_URL"]
    clock.advance(3601)
    assert "warnings" not in (await client.get("/readyz")).json()


def test_the_openapi_document_names_the_429s(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    for method, path in (
        ("get", "/v1/inventory"),
        ("get", "/v1/market"),
        ("post", "/v1/deposits"),
        ("post", "/v1/withdrawals"),
    ):
        response = paths[path][method]["responses"]["429"]
        assert "ASSETPAY_QUOTA_EXHAUSTED" in response["description"], path
        assert "TOO_MANY_REQUESTS" in response["description"], path
        assert "Retry-After" in response["headers"], path


async def test_reconciliation_waits_for_the_lookup_budget_rather_than_stopping(
    client: httpx.AsyncClient,
    assetpay: AssetPay,
    install_limits: Install,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    resources: Resources,
) -> None:
    limits = install_limits(merchant={RouteClass.LOOKUP: Rate(1, 1 / 10)})
    monkeypatch.setattr(reconciliation, "sleep", clock.sleep)
    book = Book()
    assetpay.lookup.reply(book)
    steam_id = await register(client, "u1")
    held = trade(status="hold", total="10.00", pre="6.00", user_id="u1", steam_id=steam_id)
    assert (await deliver_trade(client, held)).status_code == 200
    book.put(trade_id=held["id"], status="completed", total="10.00", pre="6.00", user_id="u1")
    await limits.before_request(RouteClass.LOOKUP)  # the budget is empty: the next token is 10 s away

    short = await run_pass(
        resources.database, resources.assetpay, Rules(quiet_for=timedelta(0), quota_wait=timedelta(seconds=5))
    )
    assert short.stopped == "ASSETPAY_QUOTA_EXHAUSTED"
    assert assetpay.lookup.call_count == 0

    started = clock()
    report = await run_pass(resources.database, resources.assetpay, Rules(quiet_for=timedelta(0)))
    assert (report.stopped, len(report.changes)) == (None, 1)
    assert clock() - started == timedelta(seconds=10)
    assert assetpay.lookup.call_count == 1
    assert await balance(client, "u1") == Decimal("10.00")
