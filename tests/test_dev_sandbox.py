"""The product end to end on development defaults: the built-in sandbox stands in for AssetPay, mounted in the
app, its signed callbacks coming back through the real webhook endpoint into the real ledger."""

from decimal import Decimal

import httpx
import pytest
from asgi_lifespan import LifespanManager

from assetpay_merchant.config import Settings
from assetpay_sandbox.dev import DEV_ADMIN_API_KEY, DEV_AUTH_JWT_SECRET, create_dev_app
from tests.support import TRADE_URL, ledger_problems, user_token


@pytest.fixture
async def dev_client(database_url):
    app = create_dev_app(Settings(_env_file=None, database_url=database_url))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dev.test") as http:
            http.headers["Authorization"] = f"Bearer {user_token('player', secret=DEV_AUTH_JWT_SECRET)}"
            yield http, app.state.resources


async def _finish(http, trade):
    """Walk the sandbox trade to completion and flush its callbacks to our webhook endpoint."""
    advanced = await http.post(f"/sandbox/_sandbox/trades/{trade['assetpayId']}/advance", params={"to": "completed"})
    assert advanced.status_code == 200, advanced.text
    flushed = await http.post("/sandbox/_sandbox/deliver")
    assert flushed.status_code == 200, flushed.text


async def test_deposit_then_withdraw_through_the_sandbox(dev_client):
    http, resources = dev_client
    registered = await http.put(
        "/v1/users/player",
        json={"steamId": "76561198000000777", "tradeUrl": TRADE_URL},
        headers={"X-Admin-Key": DEV_ADMIN_API_KEY},
    )
    assert registered.status_code == 201, registered.text

    token = await http.post("/v1/client-token")
    assert token.status_code == 200, token.text
    assert token.json()["token"].count(".") == 2

    inventory = await http.get("/v1/inventory")
    assert inventory.status_code == 200, inventory.text
    items = [item for item in inventory.json()["items"] if item.get("accepted") is not False][:2]
    assert len(items) == 2
    total = sum(Decimal(item["price"]) for item in items)
    deposit = await http.post(
        "/v1/deposits", json={"items": [{"itemId": i["id"], "price": i["price"]} for i in items], "isInstant": True}
    )
    assert deposit.status_code == 201, deposit.text
    assert Decimal(deposit.json()["totalPrice"]) == total
    await _finish(http, deposit.json())

    balance = (await http.get("/v1/balance")).json()
    assert Decimal(balance["available"]) == total
    assert balance["pending"] == "0.00"
    kinds = [entry["kind"] for entry in (await http.get("/v1/ledger")).json()["entries"]]
    assert kinds[0] == "credit"

    market = await http.get("/v1/market", params={"maxPrice": str(total), "sort": "priceAsc"})
    assert market.status_code == 200, market.text
    listing = market.json()["items"][0]
    price = Decimal(listing["price"])
    withdrawal = await http.post(
        "/v1/withdrawals", json={"items": [{"itemId": listing["id"], "price": listing["price"]}]}
    )
    assert withdrawal.status_code == 201, withdrawal.text
    await _finish(http, withdrawal.json())

    trade = (await http.get(f"/v1/trades/{withdrawal.json()['id']}")).json()
    assert trade["status"] == "completed"
    assert Decimal(trade["credited"]) == -price
    assert Decimal((await http.get("/v1/balance")).json()["available"]) == total - price
    assert await ledger_problems(resources.database.engine) == []
