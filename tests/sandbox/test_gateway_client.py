"""Our own AssetPay client against the sandbox: the same code that talks to production works here unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from assetpay_merchant.gateway.client import AssetPayClient, RetryPolicy, create_http_client
from assetpay_merchant.gateway.errors import AssetPayError
from assetpay_merchant.gateway.models import DepositItem, WithdrawItem
from assetpay_merchant.gateway.tokens import ClientIdentity
from assetpay_sandbox import Sandbox
from tests.sandbox.helpers import API_KEY, API_SECRET, MERCHANT_ID, STEAM_ID, TRADE_URL, Clock, Receiver

USER = ClientIdentity(user_id="user-1", steam_id=STEAM_ID, trade_url=TRADE_URL, client_data={"kycLevel": 1})


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    client = create_http_client(transport=httpx.ASGITransport(app=app))
    yield client
    await client.aclose()


def _client(http: httpx.AsyncClient, clock: Clock, *, mint: bool) -> AssetPayClient:
    return AssetPayClient(
        http,
        base_url="http://sandbox.test",
        api_key=SecretStr(API_KEY),
        api_secret=SecretStr(API_SECRET) if mint else None,
        merchant_id=MERCHANT_ID if mint else None,
        retry=RetryPolicy(attempts=1),
        clock=lambda: clock().timestamp(),
    )


@pytest.mark.parametrize("mint", [True, False], ids=["minted-token", "issued-token"])
async def test_deposit_and_withdraw_through_our_client(
    http: httpx.AsyncClient, clock: Clock, sandbox: Sandbox, receiver: Receiver, mint: bool
) -> None:
    assetpay = _client(http, clock, mint=mint)
    inventory = await assetpay.inventory(USER, accepted_only=True, sort="priceAsc")
    assert inventory.count == len(inventory.items) > 0
    assert inventory.collateral == 25  # a new unverified user's floor: kycLevel 1 alone models only $20
    item = inventory.items[0]
    assert item.price is not None

    trade = await assetpay.deposit(USER, [DepositItem(item.id, item.price)], external_id="dep-ours", is_instant=True)
    assert (trade.status, trade.external_id, trade.external_client_user_id) == ("initiated", "dep-ours", "user-1")
    assert trade.pre_credit == min(trade.total_price, 25)
    found = await assetpay.find_trade("dep-ours")
    assert found is not None
    assert found.id == trade.id

    with pytest.raises(AssetPayError) as refused:
        await assetpay.deposit(USER, [DepositItem(item.id, item.price)], external_id="dep-ours", is_instant=True)
    assert refused.value.key == "EXTERNAL_ID_EXISTS"

    listing = (await assetpay.market(USER, sort="priceAsc", per_page=5)).items[0]
    assert listing.price is not None
    withdrawal = await assetpay.withdraw(USER, [WithdrawItem(listing.id, listing.price)], external_id="wd-ours")
    assert withdrawal.status == "initiated"
    cancelled = await assetpay.cancel_withdrawal(USER, "wd-ours")
    assert cancelled.cancelled == 1

    await sandbox.step()
    by_ref = {t.external_id: t for t in await assetpay.get_trades(["dep-ours", "wd-ours", "unknown"])}
    assert by_ref["dep-ours"].status == "active"
    assert by_ref["wd-ours"].status == "canceled"
    assert {r.trade["status"] for r in receiver.received()} == {"initiated", "active", "canceled"}


async def test_errors_reach_our_client_by_key(http: httpx.AsyncClient, clock: Clock) -> None:
    assetpay = _client(http, clock, mint=True)
    item = (await assetpay.inventory(USER, accepted_only=True)).items[0]
    assert item.price is not None
    with pytest.raises(AssetPayError) as stale:
        await assetpay.deposit(USER, [DepositItem(item.id, item.price + 1)], external_id="dep-stale", is_instant=False)
    assert stale.value.key == "PRICE_CHANGED"
    assert stale.value.status == 409
    assert stale.value.request_id
