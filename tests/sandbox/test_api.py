"""The sandbox's AssetPay routes: envelope, credentials, client tokens, inventory, market, trade look-ups."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import httpx
import jwt
import pytest

from assetpay_sandbox import tokens
from tests.sandbox.helpers import (
    API_KEY,
    API_SECRET,
    MERCHANT_ID,
    OTHER_STEAM_ID,
    STEAM_ID,
    TRADE_URL,
    Clock,
    client_token,
    conforms,
    data,
    deposit,
    depositable,
    error,
    inventory,
    market,
)

# ASSETPAY.md §2: the token vector computed from the SDK's token test inputs.
VECTOR_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInVzZXJJZCI6IjBiOWY5ZDllLTJmMGUtNGY3ZS05YTUxLTZmMGYzYzJjMWExMSJ9."
    "eyJtZXJjaGFudElkIjoiMGI5ZjlkOWUtMmYwZS00ZjdlLTlhNTEtNmYwZjNjMmMxYTExIiwiY2xpZW50Ijp7InN0ZWFtSUQiOiI3NjU2MTE5ODAw"
    "MDAwMDAwMSIsInRyYWRlVXJsIjoiaHR0cHM6Ly9zdGVhbWNvbW11bml0eS5jb20vdHJhZGVvZmZlci9uZXcvP3BhcnRuZXI9Mzk3MzQyNzMmdG9r"
    "ZW49QWJDZEVmMTIiLCJjbGllbnRJZCI6InVzZXItNyJ9LCJpYXQiOjE3OTAzMzc2MDAsImV4cCI6MTc5MDQyNDAwMH0."
    "zEeJ3WO-yYP6bh8NxxKKN8ehW17UY9w7672SaqHFNbI"
)


def _segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- client tokens ----------------------------------------------------------------------------------------------------


def test_minted_tokens_match_the_documented_vector() -> None:
    identity = tokens.ClientIdentity(
        merchant_id="0b9f9d9e-2f0e-4f7e-9a51-6f0f3c2c1a11",
        steam_id="76561198000000001",
        trade_url=TRADE_URL,
        client_id="user-7",
    )
    assert tokens.mint(identity, secret=b"test-api-secret-value", issued_at=1790337600) == VECTOR_TOKEN


async def test_authenticate_client_issues_a_token_in_assetpay_format(api: httpx.AsyncClient, clock: Clock) -> None:
    body = {
        "clientSteamId": STEAM_ID,
        "clientTradeUrl": TRADE_URL,
        "clientData": {"kycLevel": 3, "fiatDeposits": True, "totalWager": 1250.5},
        "clientId": "user-1",
    }
    response = await api.post(
        "/auth/authenticate-client", json=body, headers={"api-key": API_KEY, "x-request-id": "req-1"}
    )
    conforms("POST", "/auth/authenticate-client", response)
    assert response.json()["requestId"] == "req-1"
    assert response.headers["x-request-id"] == "req-1"
    token = data(response)["token"]
    assert _segment(token, 0) == {"alg": "HS256", "userId": MERCHANT_ID}
    payload = _segment(token, 1)
    assert list(payload) == ["merchantId", "client", "iat", "exp"]
    assert payload["merchantId"] == MERCHANT_ID
    assert payload["client"] == {
        "steamID": STEAM_ID,
        "tradeUrl": TRADE_URL,
        "clientData": {"totalWager": 1250.5, "kycLevel": 3, "fiatDeposits": True},
        "clientId": "user-1",
    }
    now = int(clock().timestamp())
    assert (payload["iat"], payload["exp"]) == (now, now + 86_400)
    # The same token a merchant would mint locally with the same inputs.
    identity = tokens.ClientIdentity(
        MERCHANT_ID,
        STEAM_ID,
        TRADE_URL,
        "user-1",
        {"totalWager": Decimal("1250.5"), "kycLevel": 3, "fiatDeposits": True},
    )
    assert token == tokens.mint(identity, secret=API_SECRET.encode(), issued_at=now)


@pytest.mark.parametrize("headers", [{}, {"api-key": "ap_wrong"}, {"api-key": ""}])
async def test_merchant_routes_need_the_api_key(api: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await api.post(
        "/auth/authenticate-client", json={"clientSteamId": STEAM_ID, "clientTradeUrl": TRADE_URL}, headers=headers
    )
    error(response, 401, "INVALID_API_KEY")
    conforms("POST", "/auth/authenticate-client", response)
    error(await api.get("/secure/trades/anything", headers=headers), 401, "INVALID_API_KEY")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"clientSteamId": "7656119800000001", "clientTradeUrl": TRADE_URL}, "clientSteamId"),
        ({"clientSteamId": STEAM_ID, "clientTradeUrl": TRADE_URL + "x"}, "clientTradeUrl"),
        ({"clientSteamId": STEAM_ID}, "clientTradeUrl"),
        ({"clientSteamId": STEAM_ID, "clientTradeUrl": TRADE_URL, "clientId": "x" * 129}, "clientId"),
        (
            {"clientSteamId": STEAM_ID, "clientTradeUrl": TRADE_URL, "clientData": {"kycLevel": -1}},
            "clientData.kycLevel",
        ),
        ({"clientSteamId": STEAM_ID, "clientTradeUrl": TRADE_URL, "extra": 1}, "extra"),
    ],
)
async def test_authenticate_client_validates_its_body(api: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    response = await api.post("/auth/authenticate-client", json=body, headers={"api-key": API_KEY})
    found = error(response, 400, "VALIDATION_FAILED")
    assert field in found["fields"]
    assert field in found["message"]
    conforms("POST", "/auth/authenticate-client", response)


async def test_a_body_that_is_not_json_is_refused(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/auth/authenticate-client",
        content=b"{nope",
        headers={"api-key": API_KEY, "content-type": "application/json"},
    )
    error(response, 400, "VALIDATION_FAILED")


async def test_locally_minted_tokens_are_accepted(api: httpx.AsyncClient, clock: Clock) -> None:
    now = int(clock().timestamp())
    identity = tokens.ClientIdentity(MERCHANT_ID, STEAM_ID, TRADE_URL, "user-1")
    ours = tokens.mint(identity, secret=API_SECRET.encode(), issued_at=now - 60, ttl=3600)
    # A token made by another JWT library (it adds `typ`) with the documented claims works as well.
    other = jwt.encode(
        {
            "merchantId": MERCHANT_ID,
            "client": {"steamID": STEAM_ID, "tradeUrl": TRADE_URL},
            "iat": now,
            "exp": now + 60,
        },
        API_SECRET,
        algorithm="HS256",
        headers={"userId": MERCHANT_ID},
    )
    for token in (ours, other):
        response = await api.get("/client/inventory", headers=_bearer(token))
        conforms("GET", "/client/inventory", response)
        assert data(response)["count"] > 0


async def test_bad_client_tokens_are_refused(api: httpx.AsyncClient, clock: Clock) -> None:
    now = int(clock().timestamp())
    identity = tokens.ClientIdentity(MERCHANT_ID, STEAM_ID, TRADE_URL)
    good = tokens.mint(identity, secret=API_SECRET.encode(), issued_at=now)
    header, payload, signature = good.split(".")
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    refused = {
        "no header": {},
        "not bearer": {"Authorization": f"Basic {good}"},
        "garbage": _bearer("not-a-token"),
        "wrong secret": _bearer(tokens.mint(identity, secret=b"another-secret", issued_at=now)),
        "expired": _bearer(tokens.mint(identity, secret=API_SECRET.encode(), issued_at=now - 100, ttl=100)),
        "other merchant": _bearer(
            tokens.mint(
                tokens.ClientIdentity("another-merchant", STEAM_ID, TRADE_URL),
                secret=API_SECRET.encode(),
                issued_at=now,
            )
        ),
        "alg none": _bearer(f"{unsigned_header}.{payload}."),
        "tampered": _bearer(f"{header}.{payload}.{signature[:-2]}AA"),
        "api key instead": {"api-key": API_KEY},
    }
    for case, headers in refused.items():
        response = await api.get("/client/inventory", headers=headers)
        assert response.status_code == 401, case
        error(response, 401, "INVALID_TOKEN")
        conforms("GET", "/client/inventory", response)
    # The same token stops working once the clock passes its expiry.
    assert (await api.get("/client/inventory", headers=_bearer(good))).status_code == 200
    clock.advance(86_400)
    error(await api.get("/client/inventory", headers=_bearer(good)), 401, "INVALID_TOKEN")


async def test_unknown_routes_answer_in_the_envelope(api: httpx.AsyncClient) -> None:
    error(await api.get("/client/nothing-here"), 404, "NOT_FOUND")
    error(await api.delete("/client/inventory"), 405, "METHOD_NOT_ALLOWED")


# -- inventory and market ---------------------------------------------------------------------------------------------


async def test_inventory_is_deterministic_per_steam_id(api: httpx.AsyncClient, clock: Clock) -> None:
    mine = await client_token(api)
    first = data(await api.get("/client/inventory", headers=mine))
    again = data(await api.get("/client/inventory", headers=await client_token(api)))
    assert first["inventory"] == again["inventory"]
    theirs = await inventory(api, await client_token(api, OTHER_STEAM_ID))
    assert {i["id"] for i in theirs}.isdisjoint({i["id"] for i in first["inventory"]})
    assert first["count"] == len(first["inventory"])
    assert first["updatedAt"] == "2026-07-31T12:00:00.000Z"
    for item in first["inventory"]:
        assert item["appid"] == 730
        assert item["id"].startswith("730_")
        assert isinstance(item["offer"]["price"], Decimal)
        assert item["offer"]["price"] == item["offer"]["price"].quantize(Decimal("0.01"))
        assert {"id", "assetId", "marketHashName", "name", "iconUrl"} <= set(item)


async def test_inventory_honours_its_query(api: httpx.AsyncClient, clock: Clock) -> None:
    headers = await client_token(api)
    everything = await inventory(api, headers, limit=100)
    rust = await inventory(api, headers, game=252490)
    assert rust
    assert all(item["appid"] == 252490 for item in rust)
    ascending = [i["offer"]["price"] for i in await inventory(api, headers, sort="priceAsc", limit=100)]
    assert ascending == sorted(ascending)
    descending = [i["offer"]["price"] for i in await inventory(api, headers, sort="priceDesc", limit=100)]
    assert descending == sorted(ascending, reverse=True)
    names = [i["marketHashName"] for i in await inventory(api, headers, sort="nameAsc", limit=100)]
    assert names == sorted(names, key=str.casefold)
    word = everything[0]["marketHashName"].split(" ")[0].lower()
    found = await inventory(api, headers, search=word)
    assert found
    assert all(word in i["marketHashName"].lower() for i in found)
    cheap, dear = Decimal("5"), Decimal("50")
    ranged = await inventory(api, headers, minPrice="5", maxPrice="50", limit=100)
    assert all(cheap <= i["offer"]["price"] <= dear for i in ranged)
    assert len(ranged) == sum(cheap <= i["offer"]["price"] <= dear for i in everything)
    page_one = await inventory(api, headers, limit=5, page=1)
    page_two = await inventory(api, headers, limit=5, page=2)
    assert page_one == everything[:5]
    assert page_two == everything[5:10]
    accepted = await inventory(api, headers, acceptedOnly="true", limit=100)
    assert all(i["offer"]["accepted"] for i in accepted)
    assert len(accepted) < len(everything)  # the fake world has items AssetPay does not buy
    # Cached for 15 minutes unless refreshed.
    clock.advance(60)
    assert data(await api.get("/client/inventory", headers=headers))["updatedAt"] == "2026-07-31T12:00:00.000Z"
    refreshed = data(await api.get("/client/inventory", params={"refresh": "true"}, headers=headers))
    assert refreshed["updatedAt"] == "2026-07-31T12:01:00.000Z"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"game": "1"}, "game"),
        ({"game": "cs"}, "game"),
        ({"page": "0"}, "page"),
        ({"limit": "ten"}, "limit"),
        ({"minPrice": "cheap"}, "minPrice"),
        ({"refresh": "maybe"}, "refresh"),
    ],
)
async def test_inventory_refuses_a_bad_query(api: httpx.AsyncClient, params: dict[str, str], field: str) -> None:
    response = await api.get("/client/inventory", params=params, headers=await client_token(api))
    assert field in error(response, 400, "VALIDATION_FAILED")["fields"]
    conforms("GET", "/client/inventory", response)


async def test_inventory_reports_collateral_from_client_data(api: httpx.AsyncClient) -> None:
    plain = data(await api.get("/client/inventory", headers=await client_token(api)))
    trusted = await client_token(
        api, clientData={"kycLevel": 3, "fiatDeposits": True, "cryptoDeposits": True, "totalWager": 50000}
    )
    rich = data(await api.get("/client/inventory", headers=trusted))
    assert plain["collateral"] == Decimal("25.00")  # a new user's floor (docs/instant-credit.md)
    assert rich["collateral"] == Decimal("50.00")  # the unverified per-deposit cap
    # Under the cap: 10,000 * 0.4 * (0.4 * 50,000/250,000 + 0.3 + 0.1 + 0.1 + 0.1) * trust 0.05
    profile = data(await api.get(f"/_sandbox/users/{STEAM_ID}"))
    assert profile["providerCollateral"] == Decimal("136.00")


async def test_market_lists_and_filters(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    response = await api.get("/client/market", params={"perPage": 10}, headers=headers)
    conforms("GET", "/client/market", response)
    first = data(response)
    assert len(first["items"]) == 10
    assert first["count"] > 10
    every = await market(api, headers, perPage=500)
    assert len(every) == first["count"]
    assert every[:10] == first["items"]
    assert await market(api, headers, perPage=10, page=2) == every[10:20]
    prices = [i["offer"]["price"] for i in await market(api, headers, sort="priceDesc", perPage=500)]
    assert prices == sorted(prices, reverse=True)
    names = [i["marketHashName"] for i in await market(api, headers, sort="nameDesc", perPage=500)]
    assert names == sorted(names, key=str.casefold, reverse=True)
    awp = await market(api, headers, search="awp", perPage=500)
    assert awp
    assert all("awp" in i["marketHashName"].lower() for i in awp)
    cheap = await market(api, headers, maxPrice="10.00", perPage=500)
    assert cheap
    assert all(i["offer"]["price"] <= 10 for i in cheap)
    rust = await market(api, headers, game=252490)
    assert rust
    assert all(i["appid"] == 252490 for i in rust)
    refused = await api.get("/client/market", params={"sort": "cheapest"}, headers=headers)
    assert "sort" in error(refused, 400, "VALIDATION_FAILED")["fields"]
    conforms("GET", "/client/market", refused)
    error(await api.get("/client/market"), 401, "INVALID_TOKEN")


# -- trade look-ups ---------------------------------------------------------------------------------------------------


async def test_secure_trades_by_id_external_id_and_lists(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    items = await depositable(api, headers)
    first = data(await deposit(api, headers, items[:1], externalId="dep-1", isInstant=False))
    second = data(await deposit(api, headers, items[1:2], externalId="dep-2", isInstant=False))
    merchant = {"api-key": API_KEY}

    by_id = await api.get(f"/secure/trades/{first['id']}", headers=merchant)
    conforms("GET", "/secure/trades/{tradeId}", by_id)
    assert data(by_id) == first
    assert data(await api.get("/secure/trades/dep-2", headers=merchant)) == second

    several = await api.get(f"/secure/trades/dep-1,{second['id']},missing,dep-2", headers=merchant)
    conforms("GET", "/secure/trades/{tradeId}", several)
    assert [t["id"] for t in data(several)] == [first["id"], second["id"]]
    assert data(await api.get("/secure/trades/missing,also-missing", headers=merchant)) == []

    missing = await api.get("/secure/trades/missing", headers=merchant)
    error(missing, 404, "NOT_FOUND")
    conforms("GET", "/secure/trades/{tradeId}", missing)
    too_many = ",".join(f"ref-{n}" for n in range(101))
    error(await api.get(f"/secure/trades/{too_many}", headers=merchant), 400, "VALIDATION_FAILED")


async def test_wallet_balance(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/wallets/me/balance", headers={"api-key": API_KEY})
    conforms("GET", "/v1/wallets/me/balance", response)
    assert data(response) == {
        "balance": Decimal("10000.00"),
        "pendingBalance": 0,
        "escrowBalance": 0,
        "currency": "USD",
    }
