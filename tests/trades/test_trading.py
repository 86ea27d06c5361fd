"""Starting deposits and withdrawals through our API, with AssetPay faked at the HTTP boundary (respx).

Every request our backend sends to AssetPay is checked against AssetPay's OpenAPI document (tests/assetpay_respx.py);
the database is the real one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.api.deps import Resources
from tests.assetpay_respx import (
    AssetPay,
    accept,
    ledger_of,
    mocked_assetpay,
    register,
    rows,
    trade_answer,
    trades_of,
)
from tests.gateway.fake_assetpay import fail, ok
from tests.gateway.fake_assetpay import item as assetpay_item
from tests.gateway.fake_assetpay import trade as assetpay_trade
from tests.support import JWT_SECRET, auth, balance, deliver_trade, trade, user_token

ITEM = "730_12345678901"


@pytest.fixture
def assetpay(resources: Resources) -> Iterator[AssetPay]:
    with mocked_assetpay(resources) as fake:
        yield fake


def deposit_body(*prices: str, **extra: Any) -> dict[str, Any]:
    items = [{"itemId": f"730_{index:011d}", "price": price} for index, price in enumerate(prices or ("10.75",))]
    return {"items": items, **extra}


async def post_deposit(client: httpx.AsyncClient, user_id: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return await client.post("/v1/deposits", json=body or deposit_body(), headers=auth(user_id))


async def post_raw(client: httpx.AsyncClient, path: str, user_id: str, raw: bytes) -> httpx.Response:
    headers = {**auth(user_id), "Content-Type": "application/json"}
    return await client.post(path, content=raw, headers=headers)


async def fund(client: httpx.AsyncClient, user_id: str, steam_id: str, amount: str) -> None:
    """Credit the user through a completed deposit callback, as AssetPay would."""
    payload = trade(status="completed", total=amount, pre="0", user_id=user_id, steam_id=steam_id)
    response = await deliver_trade(client, payload)
    assert response.status_code == 200, response.text
    assert await balance(client, user_id) == Decimal(amount)


# -- POST /v1/deposits: validation -------------------------------------------------------------------------------

LONG_ID = "x" * 257


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"items":[]}', "items"),
        (json.dumps({"items": [{"itemId": ITEM, "price": "1"}] * 251}).encode(), "items"),
        (b'{"game":"730"}', "items"),
        (b'{"items":[{"itemId":"abcd","price":"1.00"}]}', "items.0.itemId"),
        (json.dumps({"items": [{"itemId": LONG_ID, "price": "1.00"}]}).encode(), "items.0.itemId"),
        (b'{"items":[{"itemId":"730_12345678901","price":0}]}', "items.0.price"),
        (b'{"items":[{"itemId":"730_12345678901","price":"0"}]}', "items.0.price"),
        (b'{"items":[{"itemId":"730_12345678901","price":-1.5}]}', "items.0.price"),
        (b'{"items":[{"itemId":"730_12345678901","price":"-0.01"}]}', "items.0.price"),
        (b'{"items":[{"itemId":"730_12345678901","price":10.123456789}]}', "items.0.price"),
        (b'{"items":[{"itemId":"730_12345678901","price":"10.123456789"}]}', "items.0.price"),
        (b'{"items":[{"itemId":"730_12345678901","price":"ten"}]}', "items.0.price"),
        (b'{"items":[{"itemId":"730_12345678901"}]}', "items.0.price"),
        (b'{"items":[{"itemId":"730_12345678901","price":"1.00","amount":0}]}', "items.0.amount"),
        (b'{"items":[{"itemId":"730_12345678901","price":"1.00"}],"game":"999"}', "game"),
        (b'{"items":[{"itemId":"730_12345678901","price":"1.00"}],"externalId":"mine"}', "externalId"),
        (b'{"items":[{"itemId":"730_12345678901","price":"1.00"}],"clientData":{"kycLevel":3}}', "clientData"),
        (b'{"items":[{"itemId":"730_12345678901","price":"1.00","maxPrice":"2"}]}', "items.0.maxPrice"),
        (b'{"items":[{"itemId":"730_1234\\u00005678901","price":"1.00"}]}', "items.0.itemId"),
        (b'{"items":[{"itemId":"730_1234\\n5678901","price":"1.00"}]}', "items.0.itemId"),
    ],
)
async def test_invalid_deposits_are_refused_naming_the_field(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine, raw: bytes, field: str
) -> None:
    await register(client, "val")
    response = await post_raw(client, "/v1/deposits", "val", raw)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["key"] == "VALIDATION_FAILED"
    assert field in error["fields"], error
    assert assetpay.router.calls.call_count == 0
    assert await trades_of(engine) == []


@pytest.mark.parametrize(
    ("price", "sent"),
    [
        (b"10.75", Decimal("10.75")),
        (b'"10.75"', Decimal("10.75")),
        (b"12.12345678", Decimal("12.12345678")),
        (b'"0.00000001"', Decimal("0.00000001")),
        (b"3", Decimal(3)),
    ],
)
async def test_a_price_is_accepted_as_a_json_number_or_a_decimal_string(
    client: httpx.AsyncClient, assetpay: AssetPay, price: bytes, sent: Decimal
) -> None:
    await register(client, "prices")
    assetpay.deposit.reply(accept(user_id="prices"))
    raw = b'{"items":[{"itemId":"730_12345678901","price":' + price + b"}]}"
    response = await post_raw(client, "/v1/deposits", "prices", raw)
    assert response.status_code == 201, response.text
    [body] = assetpay.deposit.bodies()
    assert body["items"] == [{"itemId": ITEM, "price": sent}]
    # Written as a JSON number straight from its digits: no float ever rounded it.
    assert f'"price":{sent}'.encode() in assetpay.deposit.requests[0].content
    assert Decimal(response.json()["totalPrice"]) == sent


# -- POST /v1/deposits: record, call, store ----------------------------------------------------------------------


async def test_the_trade_is_recorded_before_assetpay_is_called(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    steam_id = await register(client, "first")
    seen: list[dict[str, Any]] = []

    async def check_then_accept(request: httpx.Request) -> httpx.Response:
        external_id = json.loads(request.content)["externalId"]
        recorded = await rows(engine, "SELECT * FROM trades WHERE external_id = :e", e=external_id)
        assert len(recorded) == 1, "our trade must be committed before AssetPay hears of it"
        seen.extend(recorded)
        return ok(trade_answer(request, user_id="first"))

    assetpay.deposit.reply(check_then_accept)
    response = await post_deposit(client, "first", deposit_body("10.75", "2.25"))
    assert response.status_code == 201, response.text
    [row] = seen
    assert row["status"] == "initiated"
    assert row["assetpay_id"] is None
    assert row["user_id"] == "first"
    assert row["client_steam_id"] == steam_id
    assert row["type"] == "deposit"
    assert row["total_price"] == Decimal("13.00")
    assert str(row["id"]) == response.json()["id"]
    assert row["external_id"] == response.json()["externalId"]


async def test_assetpays_answer_is_stored_and_returned_with_money_as_decimal_strings(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    await register(client, "stored")
    assetpay_id = str(uuid.uuid4())
    assetpay.deposit.reply(accept(user_id="stored", trade_id=assetpay_id, status="active", pre_credit="6.45"))
    response = await post_deposit(client, "stored", deposit_body("10.75", "10.75", isInstant=True))
    assert response.status_code == 201, response.text
    created = response.json()
    [sent] = assetpay.deposit.bodies()
    assert created["assetpayId"] == assetpay_id
    assert created["externalId"] == sent["externalId"]
    assert created["type"] == "deposit"
    assert created["status"] == "active"
    assert created["game"] == "730"
    assert created["totalPrice"] == "21.50"
    assert created["preCredit"] == "6.45"
    assert created["pendingCredit"] == "15.05"
    assert created["credited"] == "0.00"
    assert created["relatedTrades"] == []
    assert [item["price"] for item in created["items"]] == ["10.75", "10.75"]
    [row] = await trades_of(engine, "stored")
    assert str(row["id"]) == created["id"]
    assert row["assetpay_id"] == assetpay_id
    assert row["external_id"] == sent["externalId"]
    assert row["status"] == "active"
    assert (row["total_price"], row["pre_credit"], row["pending_credit"]) == (
        Decimal("21.50"),
        Decimal("6.45"),
        Decimal("15.05"),
    )
    assert row["posted"] == 0
    assert await ledger_of(engine, "stored") == []
    shown = (await client.get(f"/v1/trades/{created['id']}", headers=auth("stored"))).json()
    assert shown == {key: value for key, value in created.items() if key != "relatedTrades"}


@pytest.mark.parametrize("siblings_carry_external_id", [True, False])
async def test_a_basket_split_into_related_trades_records_every_trade(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine, siblings_carry_external_id: bool
) -> None:
    steam_id = await register(client, "split")
    main_id, sibling_ids = str(uuid.uuid4()), [str(uuid.uuid4()), str(uuid.uuid4())]

    def split(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content, parse_float=Decimal)
        external_id = body["externalId"] if siblings_carry_external_id else None
        first, *rest = body["items"]
        siblings = [
            assetpay_trade(
                trade_id=sibling_id,
                status="initiated",
                external_id=external_id,
                total=str(entry["price"]),
                items=[_item(entry)],
                externalClientUserId="split",
                clientSteamID=steam_id,
            )
            for sibling_id, entry in zip(sibling_ids, rest, strict=True)
        ]
        answer = assetpay_trade(
            trade_id=main_id,
            status="initiated",
            external_id=body["externalId"],
            total=str(first["price"]),
            items=[_item(first)],
            externalClientUserId="split",
            clientSteamID=steam_id,
            relatedTrades=siblings,
        )
        return ok(answer)

    assetpay.deposit.reply(split)
    response = await post_deposit(client, "split", deposit_body("5.00", "7.50", "1.25"))
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["assetpayId"] == main_id
    assert created["totalPrice"] == "5.00"
    assert [t["assetpayId"] for t in created["relatedTrades"]] == sibling_ids
    assert [t["totalPrice"] for t in created["relatedTrades"]] == ["7.50", "1.25"]
    recorded = {row["assetpay_id"]: row for row in await trades_of(engine, "split")}
    assert set(recorded) == {main_id, *sibling_ids}
    assert recorded[main_id]["total_price"] == Decimal("5.00")
    assert [item["id"] for item in recorded[main_id]["items"]] == ["730_00000000000"]
    assert recorded[sibling_ids[0]]["total_price"] == Decimal("7.50")
    assert recorded[sibling_ids[1]]["total_price"] == Decimal("1.25")
    # Each offer settles on its own: completing one sibling credits exactly its price.
    done = trade(trade_id=sibling_ids[0], status="completed", total="7.50", pre="0", user_id="split", steam_id=steam_id)
    assert (await deliver_trade(client, done)).status_code == 200
    assert await balance(client, "split") == Decimal("7.50")
    assert len(await trades_of(engine)) == 3


def _item(entry: dict[str, Any]) -> dict[str, Any]:
    return assetpay_item(item_id=entry["itemId"], price=str(entry["price"]))


@pytest.mark.parametrize(("given", "sent"), [({}, True), ({"isInstant": True}, True), ({"isInstant": False}, False)])
async def test_is_instant_is_always_sent_explicitly(
    client: httpx.AsyncClient, assetpay: AssetPay, given: dict[str, Any], sent: bool
) -> None:
    await register(client, "instant")
    assetpay.deposit.reply(accept(user_id="instant"))
    response = await post_deposit(client, "instant", deposit_body("1.00", **given))
    assert response.status_code == 201, response.text
    [body] = assetpay.deposit.bodies()
    assert body["isInstant"] is sent
    assert body["game"] == "730"


async def test_a_rust_deposit_names_its_game(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    await register(client, "rust")
    assetpay.deposit.reply(accept(user_id="rust"))
    response = await post_deposit(client, "rust", deposit_body("1.00", game=252490))
    assert response.status_code == 201, response.text
    assert assetpay.deposit.bodies()[0]["game"] == "252490"
    assert response.json()["game"] == "252490"


async def test_the_client_token_names_our_user_and_carries_the_stored_profile(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    profile = {"totalWager": 1250.5, "registrationDate": "2024-01-02T03:04:05Z", "kycLevel": 2, "fiatDeposits": True}
    steam_id = await register(client, "profiled", client_data=profile)
    assetpay.deposit.reply(accept(user_id="profiled"))
    assert (await post_deposit(client, "profiled")).status_code == 201
    [asked] = assetpay.auth.bodies()
    assert asked["clientId"] == "profiled"
    assert asked["clientSteamId"] == steam_id
    assert asked["clientData"] == {
        "totalWager": Decimal("1250.5"),
        "registrationDate": "2024-01-02T03:04:05Z",
        "kycLevel": 2,
        "fiatDeposits": True,
    }
    # The deposit went out with the token AssetPay issued, never with the API key.
    issued = assetpay.auth.route.calls[0].response.json()["data"]["token"]
    deposit_request = assetpay.deposit.requests[0]
    assert deposit_request.headers["authorization"] == f"Bearer {issued}"
    assert "api-key" not in deposit_request.headers

    # The profile changes on the platform: the next call gets a fresh token with the new data.
    await client.put(
        "/v1/users/profiled",
        json={"steamId": steam_id, "tradeUrl": asked["clientTradeUrl"], "clientData": {**profile, "kycLevel": 3}},
        headers={"X-Admin-Key": "test-admin-key"},
    )
    assert (await post_deposit(client, "profiled")).status_code == 201
    assert [body["clientData"]["kycLevel"] for body in assetpay.auth.bodies()] == [2, 3]


async def test_a_deposit_for_an_unregistered_user_is_404(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    response = await post_deposit(client, "nobody")
    assert response.status_code == 404
    assert response.json()["error"]["key"] == "USER_NOT_FOUND"
    assert assetpay.router.calls.call_count == 0
    assert await trades_of(engine) == []


# -- the per-user deposit guard ----------------------------------------------------------------------------------


async def test_a_sixth_deposit_in_flight_is_refused_without_calling_assetpay(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    steam_id = await register(client, "busy")
    assetpay.deposit.reply(accept(user_id="busy", status="active"))
    created = []
    for _ in range(5):
        response = await post_deposit(client, "busy")
        assert response.status_code == 201, response.text
        created.append(response.json())

    refused = await post_deposit(client, "busy")
    assert refused.status_code == 429
    assert refused.json()["error"]["key"] == "TOO_MANY_ACTIVE_TRADES"
    assert assetpay.deposit.call_count == 5
    assert len(await trades_of(engine, "busy")) == 5

    # One offer is declined: a slot is free again.
    first = created[0]
    declined = trade(trade_id=first["assetpayId"], status="declined", total="10.75", user_id="busy", steam_id=steam_id)
    assert (await deliver_trade(client, declined)).status_code == 200
    assert (await post_deposit(client, "busy")).status_code == 201
    assert assetpay.deposit.call_count == 6


async def test_deposits_assetpay_refused_do_not_count_against_the_guard(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    await register(client, "unlucky")
    assetpay.deposit.reply(*[fail(409, "PRICE_CHANGED")] * 5, accept(user_id="unlucky"))
    for _ in range(5):
        assert (await post_deposit(client, "unlucky")).status_code == 409
    assert (await post_deposit(client, "unlucky")).status_code == 201
    assert assetpay.deposit.call_count == 6


async def test_ten_deposits_in_five_minutes_then_rate_limited_with_retry_after(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    steam_id = await register(client, "eager")
    assetpay.deposit.reply(accept(user_id="eager", status="active"))
    for _ in range(10):
        response = await post_deposit(client, "eager")
        assert response.status_code == 201, response.text
        # Declined right away, so the in-flight limit never trips: only the rate does.
        payload = trade(
            trade_id=response.json()["assetpayId"], status="declined", total="10.75", user_id="eager", steam_id=steam_id
        )
        assert (await deliver_trade(client, payload)).status_code == 200

    limited = await post_deposit(client, "eager")
    assert limited.status_code == 429
    assert limited.json()["error"]["key"] == "RATE_LIMITED"
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= 300
    assert assetpay.deposit.call_count == 10


async def test_the_guard_is_per_user(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    await register(client, "one")
    await register(client, "two")
    assetpay.deposit.reply(accept(user_id="one", status="active"))
    for _ in range(5):
        assert (await post_deposit(client, "one")).status_code == 201
    assert (await post_deposit(client, "one")).status_code == 429
    assert (await post_deposit(client, "two")).status_code == 201


# -- POST /v1/withdrawals ----------------------------------------------------------------------------------------


def withdraw_body(*items: tuple[str, str | None]) -> dict[str, Any]:
    body_items = []
    for index, (price, max_price) in enumerate(items):
        entry = {"itemId": f"listing-{index:04d}", "price": price}
        if max_price is not None:
            entry["maxPrice"] = max_price
        body_items.append(entry)
    return {"items": body_items}


async def post_withdrawal(client: httpx.AsyncClient, user_id: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/withdrawals", json=body, headers=auth(user_id))


@pytest.mark.parametrize("funded", [None, "10.00"])
async def test_a_withdrawal_the_balance_cannot_cover_is_refused_up_front(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine, funded: str | None
) -> None:
    steam_id = await register(client, "short")
    if funded is not None:
        await fund(client, "short", steam_id, funded)
    response = await post_withdrawal(client, "short", withdraw_body(("6.00", None), ("4.01", None)))
    assert response.status_code == 402
    assert response.json()["error"]["key"] == "INSUFFICIENT_BALANCE"
    assert assetpay.router.calls.call_count == 0
    assert [row["type"] for row in await trades_of(engine, "short")] == (["deposit"] if funded else [])


async def test_a_withdrawal_of_exactly_the_balance_goes_ahead(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    steam_id = await register(client, "exact")
    await fund(client, "exact", steam_id, "10.00")
    assetpay.withdraw.reply(accept(user_id="exact"))
    response = await post_withdrawal(client, "exact", withdraw_body(("6.00", None), ("4.00", None)))
    assert response.status_code == 201, response.text
    assert assetpay.withdraw.call_count == 1
    # Nothing is charged before AssetPay asks for approval.
    assert await balance(client, "exact") == Decimal("10.00")


async def test_the_authorised_amount_is_recorded_and_the_ceilings_sent(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    steam_id = await register(client, "ceiling")
    await fund(client, "ceiling", steam_id, "20.00")
    assetpay.withdraw.reply(accept(user_id="ceiling"))
    response = await post_withdrawal(client, "ceiling", withdraw_body(("4.20", "4.40"), ("3.00", None)))
    assert response.status_code == 201, response.text
    [sent] = assetpay.withdraw.bodies()
    assert sent["items"] == [
        {"itemId": "listing-0000", "price": Decimal("4.20"), "maxPrice": Decimal("4.40")},
        {"itemId": "listing-0001", "price": Decimal("3.00")},
    ]
    assert sent["externalId"] == response.json()["externalId"]
    [row] = [r for r in await trades_of(engine, "ceiling") if r["type"] == "withdraw"]
    assert row["authorized_amount"] == Decimal("7.40")


async def _withdrawal(
    client: httpx.AsyncClient, assetpay: AssetPay, user_id: str, *, funded: str = "20.00"
) -> tuple[str, dict[str, Any]]:
    """A funded user with a started withdrawal authorised up to 7.40; returns (Steam id, our trade)."""
    steam_id = await register(client, user_id)
    await fund(client, user_id, steam_id, funded)
    assetpay.withdraw.reply(accept(user_id=user_id, status="initiated"))
    response = await post_withdrawal(client, user_id, withdraw_body(("4.20", "4.40"), ("3.00", None)))
    assert response.status_code == 201, response.text
    return steam_id, response.json()


def approval(created: dict[str, Any], steam_id: str, user_id: str, total: str) -> dict[str, Any]:
    return trade(
        trade_id=created["assetpayId"],
        type="withdraw",
        status="initiated",
        total=total,
        user_id=user_id,
        steam_id=steam_id,
        external_id=created["externalId"],
    )


async def test_an_approval_above_the_authorised_amount_is_rejected(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    steam_id, created = await _withdrawal(client, assetpay, "greedy")
    response = await deliver_trade(client, approval(created, steam_id, "greedy", "7.41"))
    assert response.status_code == 200
    assert response.json()["action"] == "reject"
    assert await balance(client, "greedy") == Decimal("20.00")
    assert [entry["amount"] for entry in await ledger_of(engine, "greedy")] == [Decimal("20.00")]


async def test_an_approval_within_the_authorised_amount_is_approved_and_debited(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    steam_id, created = await _withdrawal(client, assetpay, "buyer")
    response = await deliver_trade(client, approval(created, steam_id, "buyer", "7.40"))
    assert response.status_code == 200
    assert response.json() == {"action": "approve"}
    assert await balance(client, "buyer") == Decimal("12.60")
    shown = (await client.get(f"/v1/trades/{created['id']}", headers=auth("buyer"))).json()
    assert shown["credited"] == "-7.40"
    assert len([row for row in await trades_of(engine, "buyer") if row["type"] == "withdraw"]) == 1


async def test_an_approval_asked_before_assetpay_answers_finds_our_recorded_trade(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    steam_id = await register(client, "early")
    await fund(client, "early", steam_id, "20.00")
    assetpay_id = str(uuid.uuid4())
    verdicts: list[Any] = []

    async def ask_then_answer(request: httpx.Request) -> httpx.Response:
        external_id = json.loads(request.content)["externalId"]
        asked = trade(
            trade_id=assetpay_id,
            type="withdraw",
            status="initiated",
            total="7.00",
            user_id="early",
            steam_id=steam_id,
            external_id=external_id,
        )
        verdicts.append((await deliver_trade(client, asked)).json())
        return ok(trade_answer(request, user_id="early", trade_id=assetpay_id, status="pending", total="7.00"))

    assetpay.withdraw.reply(ask_then_answer)
    response = await post_withdrawal(client, "early", withdraw_body(("4.20", "4.40"), ("3.00", None)))
    assert response.status_code == 201, response.text
    assert verdicts == [{"action": "approve"}]
    assert response.json()["status"] == "pending"
    assert response.json()["credited"] == "-7.00"
    withdrawals = [row for row in await trades_of(engine, "early") if row["type"] == "withdraw"]
    assert len(withdrawals) == 1
    assert withdrawals[0]["assetpay_id"] == assetpay_id
    assert await balance(client, "early") == Decimal("13.00")


async def test_invalid_withdrawals_are_refused_naming_the_field(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    await register(client, "badbuy")
    cases = [
        ({"items": []}, "items"),
        ({"items": [{"itemId": "listing-1", "price": "1.00"}] * 51}, "items"),
        (withdraw_body(("4.40", "4.20")), "items.0"),
        (withdraw_body(("100000.01", None)), "items.0.price"),
        (withdraw_body(("1.123456789", None)), "items.0.price"),
        ({**withdraw_body(("1.00", None)), "slippageBps": 10}, "slippageBps"),
    ]
    for body, field in cases:
        response = await post_withdrawal(client, "badbuy", body)
        assert response.status_code == 422, body
        assert field in response.json()["error"]["fields"], (body, response.json())
    assert assetpay.router.calls.call_count == 0


# -- POST /v1/withdrawals/{id}/cancel ----------------------------------------------------------------------------


def cancel_answer(trade_id: str) -> httpx.Response:
    return ok(
        {
            "tradeId": trade_id,
            "requested": 2,
            "cancelled": 1,
            "failed": 1,
            "items": [
                {"itemId": "listing-0000", "status": "cancelled"},
                {"itemId": "listing-0001", "status": "failed", "reason": "TRADE_CANCEL_TOO_SOON"},
            ],
        }
    )


async def test_cancel_asks_assetpay_with_its_id_and_returns_the_counts(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    _, created = await _withdrawal(client, assetpay, "canceller")
    assetpay.cancel.reply(cancel_answer(created["assetpayId"]))
    response = await client.post(f"/v1/withdrawals/{created['id']}/cancel", headers=auth("canceller"))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "tradeId": created["assetpayId"],
        "requested": 2,
        "cancelled": 1,
        "failed": 1,
        "items": [
            {"itemId": "listing-0000", "status": "cancelled"},
            {"itemId": "listing-0001", "status": "failed", "reason": "TRADE_CANCEL_TOO_SOON"},
        ],
    }
    [request] = assetpay.cancel.requests
    assert request.url.path == f"/client/trading/withdraw/{created['assetpayId']}/cancel"


async def test_cancelling_another_users_withdrawal_is_404(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    _, created = await _withdrawal(client, assetpay, "victim")
    await register(client, "thief")
    response = await client.post(f"/v1/withdrawals/{created['id']}/cancel", headers=auth("thief"))
    assert response.status_code == 404
    assert response.json()["error"]["key"] == "TRADE_NOT_FOUND"
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        response = await client.post(f"/v1/withdrawals/{missing}/cancel", headers=auth("victim"))
        assert response.status_code == 404
    assert assetpay.cancel.call_count == 0


async def test_a_deposit_cannot_be_cancelled_as_a_withdrawal(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    await register(client, "depositor")
    assetpay.deposit.reply(accept(user_id="depositor", status="active"))
    created = (await post_deposit(client, "depositor")).json()
    response = await client.post(f"/v1/withdrawals/{created['id']}/cancel", headers=auth("depositor"))
    assert response.status_code == 404
    assert assetpay.cancel.call_count == 0


async def test_cancelling_a_final_withdrawal_is_409(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    steam_id, created = await _withdrawal(client, assetpay, "late")
    done = trade(
        trade_id=created["assetpayId"],
        type="withdraw",
        status="failed",
        total="7.20",
        user_id="late",
        steam_id=steam_id,
        external_id=created["externalId"],
    )
    assert (await deliver_trade(client, done)).status_code == 200
    response = await client.post(f"/v1/withdrawals/{created['id']}/cancel", headers=auth("late"))
    assert response.status_code == 409
    assert response.json()["error"]["key"] == "TRADE_FINAL"
    assert assetpay.cancel.call_count == 0


async def test_a_cancel_assetpay_refuses_maps_to_our_error(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    _, created = await _withdrawal(client, assetpay, "toolate")
    assetpay.cancel.reply(fail(404, "NOT_FOUND", message="Trade not found"))
    response = await client.post(f"/v1/withdrawals/{created['id']}/cancel", headers=auth("toolate"))
    assert response.status_code == 404
    assert response.json()["error"]["key"] == "NOT_FOUND"


# -- POST /v1/client-token ---------------------------------------------------------------------------------------


async def test_a_client_token_for_the_frontend(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    steam_id = await register(client, "frontend", client_data={"kycLevel": 1})
    response = await client.post("/v1/client-token", headers=auth("frontend"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "expiresAt"}
    issued = assetpay.auth.route.calls[0].response.json()["data"]["token"]
    assert body["token"] == issued
    expires = jwt.decode(issued, options={"verify_signature": False})["exp"]
    assert datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00")) == datetime.fromtimestamp(expires, UTC)
    [asked] = assetpay.auth.bodies()
    assert asked == {
        "clientSteamId": steam_id,
        "clientTradeUrl": asked["clientTradeUrl"],
        "clientData": {"kycLevel": 1},
        "clientId": "frontend",
    }
    assert assetpay.auth.requests[0].headers["api-key"] == "ap_test_key"
    # Reused while it is fresh: a second ask costs AssetPay nothing.
    again = await client.post("/v1/client-token", headers=auth("frontend"))
    assert again.json() == body
    assert assetpay.auth.call_count == 1


async def test_a_client_token_for_an_unregistered_user_is_404(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    response = await client.post("/v1/client-token", headers=auth("stranger"))
    assert response.status_code == 404
    assert response.json()["error"]["key"] == "USER_NOT_FOUND"
    assert assetpay.router.calls.call_count == 0


# -- authentication on every trading and catalog route -----------------------------------------------------------

ROUTES = [
    ("POST", "/v1/deposits", {"items": [{"itemId": ITEM, "price": "1.00"}]}),
    ("POST", "/v1/withdrawals", {"items": [{"itemId": "listing-1", "price": "1.00"}]}),
    ("POST", f"/v1/withdrawals/{uuid.UUID(int=1)}/cancel", None),
    ("POST", "/v1/client-token", None),
    ("GET", "/v1/inventory", None),
    ("GET", "/v1/market", None),
]

FORGERY_KEY = "not-the-platform-secret-but-long-enough"
CREDENTIALS = {
    "missing": ({}, "AUTH_REQUIRED"),
    "expired": ({"Authorization": f"Bearer {user_token('guarded', expires_in=-60)}"}, "TOKEN_EXPIRED"),
    "forged": ({"Authorization": f"Bearer {user_token('guarded', secret=FORGERY_KEY)}"}, None),
    "unsigned": ({"Authorization": "Bearer " + jwt.encode({"sub": "guarded"}, key=None, algorithm="none")}, None),
    "garbage": ({"Authorization": "Bearer not.a.jwt"}, None),
    "no sub": ({"Authorization": "Bearer " + jwt.encode({"exp": 4102444800}, JWT_SECRET, algorithm="HS256")}, None),
    "wrong scheme": ({"Authorization": f"Basic {user_token('guarded')}"}, "AUTH_REQUIRED"),
}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize("credentials", list(CREDENTIALS))
async def test_every_route_needs_a_valid_user_token(
    client: httpx.AsyncClient,
    assetpay: AssetPay,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    credentials: str,
) -> None:
    await register(client, "guarded")
    headers, key = CREDENTIALS[credentials]
    response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401, response.text
    if key is not None:
        assert response.json()["error"]["key"] == key
    assert assetpay.router.calls.call_count == 0


@pytest.mark.parametrize(
    "items",
    [
        [{"itemId": ITEM, "price": "9999999999999999", "amount": 2}],
        [{"itemId": f"730_{n:011d}", "price": "9000000000000000.5"} for n in range(2)],
    ],
)
async def test_a_deposit_total_beyond_what_we_can_store_is_422_not_500(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine, items: list[dict[str, Any]]
) -> None:
    await register(client, "whale")
    assetpay.deposit.reply(accept(user_id="whale"))
    response = await post_deposit(client, "whale", {"items": items})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["key"] == "VALIDATION_FAILED"
    assert "items" in response.json()["error"]["fields"]
    assert assetpay.router.calls.call_count == 0
    assert await trades_of(engine) == []


async def test_a_trade_awaiting_assetpays_word_shows_our_prices_as_decimal_strings(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    await register(client, "tiny")
    assetpay.deposit.reply(httpx.ReadTimeout("read timed out"))
    assetpay.lookup.reply(fail(404, "NOT_FOUND"))
    body = {"items": [{"itemId": ITEM, "price": "0.00000045", "amount": 3}]}
    lost = await post_deposit(client, "tiny", body)
    assert lost.status_code == 504
    shown = (await client.get(f"/v1/trades/{lost.json()['error']['tradeId']}", headers=auth("tiny"))).json()
    assert shown["status"] == "initiated"
    assert shown["assetpayId"] is None
    assert shown["totalPrice"] == "0.00000135"
    assert shown["items"] == [{"id": ITEM, "price": "0.00000045", "amount": 3}]
