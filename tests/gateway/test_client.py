"""The AssetPay client against a scripted AssetPay at the HTTP boundary (no database).

Every request the client sends is checked against the OpenAPI document (tests/data), and every faked answer
follows the documented shapes: see tests/gateway/fake_assetpay.py and tests/gateway/openapi.py.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from assetpay_merchant.core.vocabulary import GameId
from assetpay_merchant.gateway import (
    AssetPayClient,
    AssetPayError,
    ClientIdentity,
    DepositItem,
    Item,
    OutcomeUnknown,
    RetryPolicy,
    WithdrawItem,
    create_http_client,
    mint_client_token,
)
from tests.gateway.fake_assetpay import (
    BASE_URL,
    MERCHANT_ID,
    TRADE_URL,
    FakeAssetPay,
    bare,
    fail,
    item,
    ok,
    trade,
)
from tests.gateway.openapi import check_request, check_response

API_KEY = "ap_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
API_SECRET = "merchant-api-secret-that-must-never-leak"
NOW = 1_790_337_600

AUTH = "/auth/authenticate-client"
INVENTORY = "/client/inventory"
MARKET = "/client/market"
DEPOSIT = "/client/trading/deposit"
WITHDRAW = "/client/trading/withdraw"
CANCEL = "/client/trading/withdraw/{tradeId}/cancel"
TRADES = "/secure/trades/{tradeId}"

USER = ClientIdentity(
    user_id="user-7",
    steam_id="76561198000000001",
    trade_url=TRADE_URL,
    client_data={"totalWager": "1250.50", "kycLevel": 1, "fiatDeposits": True},
)
POLICY = RetryPolicy(attempts=3, base_delay=0.1, max_delay=2.0)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def fake() -> FakeAssetPay:
    return FakeAssetPay()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def http(fake: FakeAssetPay) -> AsyncIterator[httpx.AsyncClient]:
    async with create_http_client(transport=fake.transport()) as client:
        yield client


def _client(http: httpx.AsyncClient, clock: Clock, sleeps: Sleeps, *, merchant_id: str | None) -> AssetPayClient:
    return AssetPayClient(
        http,
        base_url=BASE_URL,
        api_key=SecretStr(API_KEY),
        api_secret=SecretStr(API_SECRET),
        merchant_id=merchant_id,
        retry=POLICY,
        clock=clock,
        sleep=sleeps,
        jitter=lambda: 1.0,  # the longest wait of each step, so the waits are predictable
    )


@pytest.fixture
def assetpay(http: httpx.AsyncClient, clock: Clock, sleeps: Sleeps) -> AssetPayClient:
    """Mints client tokens locally (merchant id configured)."""
    return _client(http, clock, sleeps, merchant_id=MERCHANT_ID)


@pytest.fixture
def remote(http: httpx.AsyncClient, clock: Clock, sleeps: Sleeps) -> AssetPayClient:
    """No merchant id: client tokens come from POST /auth/authenticate-client."""
    return _client(http, clock, sleeps, merchant_id=None)


def inventory_data(collateral: str = "123.45") -> dict[str, Any]:
    return {
        "inventory": [item(price="10.75"), item(item_id="730_99999999999", price="0.03")],
        "count": 2,
        "updatedAt": "2026-07-31T12:00:00.000Z",
        "collateral": Decimal(collateral),
    }


def issued_token(now: float, ttl: int, *, user: ClientIdentity = USER) -> str:
    """A token as AssetPay's authenticate-client would issue it (signed with a key we do not know)."""
    return mint_client_token(user, merchant_id="gateway", secret="their-key", issued_at=int(now), ttl=ttl)


def bearer(request: httpx.Request) -> str:
    return request.headers["authorization"].removeprefix("Bearer ")


DEPOSIT_ITEMS = [DepositItem("730_12345678901", Decimal("10.75"))]


# -- client tokens ----------------------------------------------------------------------------------------------


async def test_minted_token_is_cached_and_renewed_five_minutes_before_expiry(assetpay, fake, clock):
    first = await assetpay.client_token(USER)
    assert not fake.requests  # minted locally: no request, no rate limit
    assert first.expires_at == datetime.fromtimestamp(NOW + 86_400, UTC)
    clock.now = NOW + 86_400 - 301
    assert await assetpay.client_token(USER) is first
    clock.now = NOW + 86_400 - 300
    renewed = await assetpay.client_token(USER)
    assert renewed.token != first.token
    assert renewed.expires_at == datetime.fromtimestamp(clock.now + 86_400, UTC)


async def test_a_changed_profile_gets_a_fresh_token(assetpay):
    first = await assetpay.client_token(USER)
    richer = ClientIdentity(
        user_id=USER.user_id, steam_id=USER.steam_id, trade_url=USER.trade_url, client_data={"kycLevel": 3}
    )
    second = await assetpay.client_token(richer)
    assert second.token != first.token
    assert '"kycLevel":3' in json.dumps(json.loads(_payload(second.token)), separators=(",", ":"))


def _payload(token: str) -> bytes:
    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


async def test_without_merchant_id_the_token_is_fetched_with_the_api_key_and_cached(remote, fake, clock):
    fake.on(
        "POST",
        AUTH,
        ok({"token": issued_token(NOW, 3600)}),
        ok({"token": issued_token(NOW + 3300, 3600)}),
    )
    first = await remote.client_token(USER)
    assert first.expires_at == datetime.fromtimestamp(NOW + 3600, UTC)
    (call,) = fake.calls("POST", AUTH)
    assert call.headers["api-key"] == API_KEY
    assert json.loads(call.content, parse_float=Decimal) == {
        "clientSteamId": USER.steam_id,
        "clientTradeUrl": TRADE_URL,
        "clientData": {"totalWager": Decimal("1250.50"), "kycLevel": 1, "fiatDeposits": True},
        "clientId": "user-7",
    }
    clock.now = NOW + 3299
    assert await remote.client_token(USER) is first
    assert len(fake.calls("POST", AUTH)) == 1
    clock.now = NOW + 3300  # five minutes before the exp AssetPay put in the token
    assert (await remote.client_token(USER)).token != first.token
    assert len(fake.calls("POST", AUTH)) == 2


async def test_invalid_token_renews_once_and_replays_the_call(remote, fake):
    fake.on("POST", AUTH, ok({"token": issued_token(NOW, 3600)}), ok({"token": issued_token(NOW + 1, 3600)}))
    fake.on("GET", INVENTORY, fail(401, "INVALID_TOKEN", code=1001), ok(inventory_data()))
    inventory = await remote.inventory(USER)
    assert inventory.collateral == Decimal("123.45")
    first, replay = fake.calls("GET", INVENTORY)
    assert bearer(first) != bearer(replay)
    assert len(fake.calls("POST", AUTH)) == 2
    # The renewed token is the one cached now.
    await remote.inventory(USER)
    assert len(fake.calls("POST", AUTH)) == 2


async def test_invalid_token_is_renewed_only_once(remote, fake, sleeps):
    fake.on("POST", AUTH, ok({"token": issued_token(NOW, 3600)}), ok({"token": issued_token(NOW + 1, 3600)}))
    fake.on("GET", INVENTORY, fail(401, "INVALID_TOKEN", code=1001))
    with pytest.raises(AssetPayError) as caught:
        await remote.inventory(USER)
    assert caught.value.key == "INVALID_TOKEN"
    assert caught.value.status == 401
    assert len(fake.calls("GET", INVENTORY)) == 2
    assert len(fake.calls("POST", AUTH)) == 2
    assert sleeps == []


async def test_invalid_token_on_a_deposit_replays_the_same_body_with_a_new_minted_token(assetpay, fake, clock):
    def refuse(request: httpx.Request) -> httpx.Response:
        clock.now += 5  # so the renewed token differs from the refused one
        return fail(401, "INVALID_TOKEN", code=1001)

    fake.on("POST", DEPOSIT, refuse, ok(trade(external_id="dep-1")))
    result = await assetpay.deposit(USER, DEPOSIT_ITEMS, external_id="dep-1", is_instant=True)
    assert result.external_id == "dep-1"
    first, replay = fake.calls("POST", DEPOSIT)
    assert first.content == replay.content
    assert bearer(first) != bearer(replay)


# -- reads: requests, results ------------------------------------------------------------------------------------


async def test_inventory_sends_documented_query_and_parses_exact_money(assetpay, fake):
    fake.on("GET", INVENTORY, ok(inventory_data("0.10")))
    inventory = await assetpay.inventory(
        USER,
        game=GameId.RUST,
        refresh=True,
        search="AK",
        sort="priceDesc",
        min_price=Decimal("1.50"),
        max_price=Decimal("1E+2"),
        page=2,
        limit=25,
    )
    (request,) = fake.calls("GET", INVENTORY)
    assert dict(request.url.params) == {
        "game": "252490",
        "refresh": "true",
        "search": "AK",
        "sort": "priceDesc",
        "minPrice": "1.50",
        "maxPrice": "100",
        "page": "2",
        "limit": "25",
    }
    assert inventory.collateral == Decimal("0.10")
    assert isinstance(inventory.collateral, Decimal)
    assert inventory.count == 2
    assert [i.price for i in inventory.items] == [Decimal("10.75"), Decimal("0.03")]
    assert inventory.items[0].market_hash_name == "AK-47 | Redline (Field-Tested)"


def test_item_ids_sent_as_numbers_become_text_and_a_boolean_is_refused():
    item = Item.model_validate({"id": 4217, "assetId": 31337000042, "itemId": "730_1", "name": 1995})
    assert (item.id, item.asset_id, item.name) == ("4217", "31337000042", "1995")
    with pytest.raises(ValidationError):
        Item.model_validate({"id": True})


async def test_inventory_defaults_send_only_the_game(assetpay, fake):
    fake.on("GET", INVENTORY, ok(inventory_data()))
    await assetpay.inventory(USER)
    (request,) = fake.calls("GET", INVENTORY)
    assert dict(request.url.params) == {"game": "730"}
    assert request.url.host == "assetpay.test"


async def test_market_sends_documented_query(assetpay, fake):
    fake.on("GET", MARKET, ok({"items": [item(price="4.20", itemId="0010f8d48278ccb8")], "count": 1}))
    page = await assetpay.market(USER, search="Redline", sort="priceAsc", min_price=Decimal(0), page=1, per_page=10)
    (request,) = fake.calls("GET", MARKET)
    assert dict(request.url.params) == {
        "game": "730",
        "search": "Redline",
        "sort": "priceAsc",
        "minPrice": "0",
        "page": "1",
        "perPage": "10",
    }
    assert page.count == 1
    assert page.items[0].price == Decimal("4.20")
    assert page.items[0].item_id == "0010f8d48278ccb8"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sort": "cheapest"}, "sort"),
        ({"search": "x" * 101}, "search"),
        ({"min_price": Decimal("-1")}, "minPrice"),
        ({"page": 0}, "page"),
        ({"per_page": -5}, "perPage"),
        ({"game": 0}, "game"),
    ],
)
async def test_market_input_is_checked_before_sending(assetpay, fake, kwargs, field):
    with pytest.raises(AssetPayError) as caught:
        await assetpay.market(USER, **kwargs)
    assert caught.value.key == "VALIDATION_FAILED"
    assert caught.value.fields is not None
    assert field in caught.value.fields
    assert not fake.requests


async def test_a_float_price_is_a_programming_error(assetpay, fake):
    with pytest.raises(TypeError, match="Decimal"):
        await assetpay.inventory(USER, min_price=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Decimal"):
        await assetpay.deposit(USER, [DepositItem("730_12345678901", 10.75)], external_id="d", is_instant=False)  # type: ignore[arg-type]
    assert not fake.requests


async def test_every_request_has_its_own_uuid_request_id(assetpay, fake):
    fake.on("GET", INVENTORY, bare(502), ok(inventory_data()))
    await assetpay.inventory(USER)
    await assetpay.inventory(USER)
    ids = [r.headers["x-request-id"] for r in fake.requests]
    assert len(ids) == 3
    assert len(set(ids)) == 3
    assert all(str(uuid.UUID(i)) == i for i in ids)


# -- trades lookup -----------------------------------------------------------------------------------------------


async def test_get_trades_joins_refs_and_parses_the_array(assetpay, fake):
    fake.on("GET", TRADES, ok([trade(external_id="a-1"), trade(external_id="b-2", status="hold", total="60.00")]))
    trades = await assetpay.get_trades(["a-1", "b-2"])
    (request,) = fake.calls("GET", TRADES)
    assert request.url.raw_path == b"/secure/trades/a-1,b-2"
    assert request.headers["api-key"] == API_KEY
    assert [t.external_id for t in trades] == ["a-1", "b-2"]
    assert trades[1].total_price == Decimal("60.00")
    assert trades[1].status == "hold"


async def test_get_trades_with_one_ref_accepts_the_single_object(assetpay, fake):
    fake.on("GET", TRADES, ok(trade(external_id="only")))
    (found,) = await assetpay.get_trades(["only"])
    assert found.external_id == "only"
    assert found.raw["externalId"] == "only"


async def test_get_trades_unknown_single_ref_is_empty_and_find_trade_none(assetpay, fake):
    fake.on("GET", TRADES, fail(404, "NOT_FOUND", code=4040))
    assert await assetpay.get_trades(["nope"]) == []
    assert await assetpay.find_trade("nope") is None
    assert len(fake.calls("GET", TRADES)) == 2  # a 404 is an answer, not something to retry


async def test_get_trades_bare_404_is_not_taken_for_no_trade(assetpay, fake):
    fake.on("GET", TRADES, bare(404, "Not Found"))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.get_trades(["x-1"])
    assert caught.value.key == "UNEXPECTED_RESPONSE"


async def test_get_trades_fetches_at_most_100_per_request_and_encodes_refs(assetpay, fake):
    fake.on("GET", TRADES, ok([]))
    refs = [f"ext-{n}" for n in range(149)] + ["a/b"]
    assert await assetpay.get_trades(refs) == []
    first, second = fake.calls("GET", TRADES)
    assert first.url.raw_path.count(b",") == 99
    assert second.url.raw_path.endswith(b",a%2Fb")
    assert await assetpay.get_trades([]) == []
    with pytest.raises(AssetPayError) as caught:
        await assetpay.get_trades(["a,b"])
    assert caught.value.fields == {"refs.0": "must be 1 to 128 characters without a comma"}


async def test_trade_results_are_typed_and_lenient(assetpay, fake):
    fake.check_responses = False  # the older edition's upper-case status is outside today's enum
    related = trade(external_id="ext-9", total="5.25")
    fake.on(
        "GET",
        TRADES,
        ok(
            trade(
                external_id="ext-9",
                status="HOLD",
                type="DEPOSIT",
                total="15.75",
                preCredit=Decimal("9.45"),
                pendingCredit=Decimal("6.30"),
                collateral={"merchant": Decimal("5.00"), "provider": Decimal("4.45")},
                holdEndDate="2026-08-07T12:00:00.000Z",
                relatedTrades=[related],
                somethingNew={"x": 1},
            )
        ),
    )
    found = await assetpay.find_trade("ext-9")
    assert found is not None
    assert (found.type, found.status) == ("deposit", "hold")
    assert found.pre_credit + found.pending_credit == found.total_price == Decimal("15.75")
    assert found.collateral is not None
    assert found.collateral.provider == Decimal("4.45")
    assert found.related_trades[0].total_price == Decimal("5.25")
    assert found.hold_end_date == datetime(2026, 8, 7, 12, tzinfo=UTC)
    assert found.model_extra is not None
    assert found.model_extra["somethingNew"] == {"x": 1}


# -- writes: bodies ----------------------------------------------------------------------------------------------


async def test_deposit_body_is_exact_and_has_no_extra_keys(assetpay, fake):
    fake.on("POST", DEPOSIT, ok(trade(external_id="dep-1", total="10.30")))
    items = [
        DepositItem("730_12345678901", Decimal("0.1") + Decimal("0.2")),
        DepositItem("252490_5555555", Decimal("10.000"), amount=3),
    ]
    result = await assetpay.deposit(USER, items, external_id="dep-1", is_instant=True)
    (request,) = fake.calls("POST", DEPOSIT)
    assert request.content == (
        b'{"items":[{"itemId":"730_12345678901","price":0.3},'
        b'{"itemId":"252490_5555555","price":10.000,"amount":3}],'
        b'"game":"730","externalId":"dep-1","isInstant":true}'
    )
    assert result.total_price == Decimal("10.30")
    assert result.type == "deposit"


async def test_deposit_sends_is_instant_false_explicitly(assetpay, fake):
    fake.on("POST", DEPOSIT, ok(trade(external_id="dep-2")))
    await assetpay.deposit(USER, DEPOSIT_ITEMS, external_id="dep-2", is_instant=False, game=GameId.RUST)
    (body,) = fake.bodies("POST", DEPOSIT)
    assert body["isInstant"] is False
    assert body["game"] == "252490"


async def test_withdraw_body_carries_every_option_documented(assetpay, fake):
    fake.on("POST", WITHDRAW, ok(trade(type="withdraw", external_id="wd-1", total="99999.99")))
    items = [
        WithdrawItem("listing-1", Decimal("99999.99"), max_price=Decimal("100000"), external_id="wd-1-a"),
        WithdrawItem("listing-2", Decimal("0.01")),
    ]
    result = await assetpay.withdraw(USER, items, external_id="wd-1", slippage_bps=150, auto_cancel=720)
    (body,) = fake.bodies("POST", WITHDRAW)
    assert body == {
        "items": [
            {
                "itemId": "listing-1",
                "price": Decimal("99999.99"),
                "maxPrice": Decimal("100000"),
                "externalId": "wd-1-a",
            },
            {"itemId": "listing-2", "price": Decimal("0.01")},
        ],
        "game": "730",
        "externalId": "wd-1",
        "slippageBps": 150,
        "autoCancel": 720,
    }
    assert result.type == "withdraw"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.deposit(USER, [], external_id="d", is_instant=True), "items"),
        (
            lambda c: c.deposit(USER, [DepositItem("7301", Decimal(1))], external_id="d", is_instant=True),
            "items.0.itemId",
        ),
        (
            lambda c: c.deposit(USER, [DepositItem("730_12345", Decimal(0))], external_id="d", is_instant=True),
            "items.0.price",
        ),
        (
            lambda c: c.deposit(USER, [DepositItem("730_12345", Decimal("NaN"))], external_id="d", is_instant=True),
            "items.0.price",
        ),
        (
            lambda c: c.deposit(
                USER, [DepositItem("730_12345", Decimal(1), amount=0)], external_id="d", is_instant=True
            ),
            "items.0.amount",
        ),
        (lambda c: c.deposit(USER, DEPOSIT_ITEMS * 251, external_id="d", is_instant=True), "items"),
        (lambda c: c.deposit(USER, DEPOSIT_ITEMS, external_id="", is_instant=True), "externalId"),
        (lambda c: c.deposit(USER, DEPOSIT_ITEMS, external_id="x" * 129, is_instant=True), "externalId"),
        (
            lambda c: c.withdraw(USER, [WithdrawItem("listing-1", Decimal("100000.01"))], external_id="w"),
            "items.0.price",
        ),
        (
            lambda c: c.withdraw(USER, [WithdrawItem("listing-1", Decimal(5), max_price=Decimal(4))], external_id="w"),
            "items.0.maxPrice",
        ),
        (lambda c: c.withdraw(USER, [WithdrawItem("listing-1", Decimal(5))] * 51, external_id="w"), "items"),
        (
            lambda c: c.withdraw(USER, [WithdrawItem("listing-1", Decimal(5))], external_id="w", slippage_bps=2001),
            "slippageBps",
        ),
        (
            lambda c: c.withdraw(USER, [WithdrawItem("listing-1", Decimal(5))], external_id="w", auto_cancel=29),
            "autoCancel",
        ),
        (lambda c: c.cancel_withdrawal(USER, ""), "tradeId"),
    ],
)
async def test_write_input_is_checked_before_anything_is_sent(assetpay, fake, call, field):
    with pytest.raises(AssetPayError) as caught:
        await call(assetpay)
    assert caught.value.key == "VALIDATION_FAILED"
    assert caught.value.fields is not None
    assert field in caught.value.fields
    assert not isinstance(caught.value, OutcomeUnknown)
    assert not fake.requests


async def test_cancel_withdrawal_posts_no_body_and_parses_the_result(assetpay, fake):
    trade_id = str(uuid.uuid4())
    fake.on(
        "POST",
        CANCEL,
        ok(
            {
                "tradeId": trade_id,
                "requested": 2,
                "cancelled": 1,
                "failed": 1,
                "items": [
                    {"itemId": "listing-1", "status": "cancelled"},
                    {"itemId": "listing-2", "status": "failed", "reason": "already delivered"},
                ],
            }
        ),
    )
    result = await assetpay.cancel_withdrawal(USER, trade_id)
    (request,) = fake.calls("POST", CANCEL)
    assert request.url.path == f"/client/trading/withdraw/{trade_id}/cancel"
    assert request.content == b""
    assert (result.requested, result.cancelled, result.failed) == (2, 1, 1)
    assert result.items[1].reason == "already delivered"


async def test_cancel_with_unknown_outcome_is_not_resent(assetpay, fake):
    fake.on("POST", CANCEL, httpx.ReadTimeout("timed out"))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.cancel_withdrawal(USER, "wd-1")
    assert caught.value.key == "TIMEOUT"
    assert isinstance(caught.value, OutcomeUnknown)
    assert len(fake.calls("POST", CANCEL)) == 1


# -- errors ------------------------------------------------------------------------------------------------------

ERRORS = [
    (409, "EXTERNAL_ID_EXISTS", {}),
    (401, "INVALID_TOKEN", {}),
    (429, "RATE_LIMITED", {"headers": {"Retry-After": "30"}}),
    (429, "TOO_MANY_ACTIVE_TRADES", {"details": {"active": 5, "limit": 5}}),
    (409, "PRICE_CHANGED", {"details": {"items": [{"itemId": "730_1", "price": Decimal("11.00")}]}}),
    (409, "ITEMS_UNAVAILABLE", {"details": {"items": ["730_1"]}}),
    (403, "USER_NOT_TRADEABLE", {}),
    (400, "INVALID_TRADEURL", {}),
    (403, "INVENTORY_PRIVATE", {}),
    (424, "STEAM_UNAVAILABLE", {}),
    (503, "NO_BOTS_AVAILABLE", {}),
    (503, "DEPOSITS_PAUSED", {}),
    (503, "WITHDRAWALS_PAUSED", {}),
    (403, "MERCHANT_BALANCE_LOW", {}),
    (
        400,
        "VALIDATION_FAILED",
        {
            "fields": {"items.0.price": "must be positive", "tradeurl": "Trade URL must be valid"},
            "message": ["items.0.price: must be positive", "tradeurl: Trade URL must be valid"],
        },
    ),
    (503, "SYSTEM_MAINTENANCE", {"headers": {"Retry-After": "120"}}),
]


@pytest.mark.parametrize(("status", "key", "extra"), ERRORS, ids=[key for _, key, _ in ERRORS])
async def test_each_error_key_is_parsed_with_all_its_fields_and_not_retried(assetpay, fake, sleeps, status, key, extra):
    message = extra.get("message", f"{key.lower()} happened")
    fake.on(
        "GET",
        INVENTORY,
        fail(
            status,
            key,
            code=4000 + status,
            message=message,
            fields=extra.get("fields"),
            details=extra.get("details"),
            headers=extra.get("headers"),
            request_id="req-abc",
        ),
    )
    with pytest.raises(AssetPayError) as caught:
        await assetpay.inventory(USER)
    error = caught.value
    assert error.key == key
    assert error.code == 4000 + status
    assert error.status == status
    assert error.message == ("; ".join(message) if isinstance(message, list) else message)
    assert error.fields == extra.get("fields")
    assert error.details == extra.get("details")
    assert error.request_id == "req-abc"
    assert not isinstance(error, OutcomeUnknown)
    retry_after = extra.get("headers", {}).get("Retry-After")
    assert error.retry_after == (float(retry_after) if retry_after else None)
    # Nothing here is retried; INVALID_TOKEN is replayed once with a renewed token.
    assert len(fake.calls("GET", INVENTORY)) == (2 if key == "INVALID_TOKEN" else 1)
    assert sleeps == []


async def test_an_answer_without_an_envelope_is_an_unexpected_response(assetpay, fake):
    fake.on("GET", INVENTORY, bare(400, "nope"))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.inventory(USER)
    assert caught.value.key == "UNEXPECTED_RESPONSE"
    assert caught.value.status == 400
    assert caught.value.request_id == fake.requests[0].headers["x-request-id"]


async def test_a_success_with_the_wrong_shape_is_an_unexpected_response(assetpay, fake):
    fake.check_responses = False
    fake.on("GET", INVENTORY, ok({"inventory": "??", "count": 1}))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.inventory(USER)
    assert caught.value.key == "UNEXPECTED_RESPONSE"
    assert "Inventory" in caught.value.message


async def test_missing_api_key_is_not_configured(http, clock, sleeps, fake):
    client = AssetPayClient(http, base_url=BASE_URL, clock=clock, sleep=sleeps)
    with pytest.raises(AssetPayError) as caught:
        await client.get_trades(["x-1"])
    assert caught.value.key == "NOT_CONFIGURED"
    assert not fake.requests


# -- retries -----------------------------------------------------------------------------------------------------


async def test_reads_are_retried_on_unexplained_5xx_with_capped_backoff(assetpay, fake, sleeps):
    fake.on(
        "GET",
        INVENTORY,
        fail(500, "INTERNAL_ERROR", code=5000),
        bare(502),
        ok(inventory_data()),
    )
    inventory = await assetpay.inventory(USER)
    assert inventory.count == 2
    assert len(fake.calls("GET", INVENTORY)) == 3
    assert sleeps == [0.1, 0.2]


async def test_reads_give_up_after_the_cap(assetpay, fake, sleeps):
    fake.on("GET", INVENTORY, bare(504))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.inventory(USER)
    assert caught.value.status == 504
    assert not isinstance(caught.value, OutcomeUnknown)  # a read changes nothing
    assert len(fake.calls("GET", INVENTORY)) == POLICY.attempts
    assert len(sleeps) == POLICY.attempts - 1


def test_backoff_is_jittered_and_capped():
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=3.0)
    assert [policy.backoff(n, 1.0) for n in range(1, 6)] == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert policy.backoff(2, 0.5) == 1.0
    assert policy.backoff(2, 0.0) == 0.0


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=["read-timeout", "connect-timeout", "connect-error", "dropped"],
)
async def test_reads_are_retried_on_network_errors_and_timeouts(assetpay, fake, sleeps, failure):
    fake.on("GET", MARKET, failure, failure, ok({"items": [], "count": 0}))
    page = await assetpay.market(USER)
    assert page.count == 0
    assert len(fake.calls("GET", MARKET)) == 3


async def test_timeouts_exhausting_the_cap_raise_timeout(assetpay, fake):
    fake.on("GET", MARKET, httpx.ReadTimeout("read timed out"))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.market(USER)
    assert caught.value.key == "TIMEOUT"
    assert caught.value.status is None
    assert len(fake.calls("GET", MARKET)) == 3


async def test_429_is_never_retried_and_retry_after_is_surfaced(assetpay, fake, sleeps):
    fake.on("GET", MARKET, fail(429, "RATE_LIMITED", code=4290, headers={"Retry-After": "1"}))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.market(USER)
    assert caught.value.retry_after == 1.0
    assert len(fake.calls("GET", MARKET)) == 1
    assert sleeps == []


async def test_enveloped_503_is_never_retried_and_retry_after_is_surfaced(assetpay, fake, sleeps):
    fake.on("GET", MARKET, fail(503, "SYSTEM_MAINTENANCE", code=5030, headers={"Retry-After": "1"}))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.market(USER)
    assert (caught.value.key, caught.value.retry_after) == ("SYSTEM_MAINTENANCE", 1.0)
    assert len(fake.calls("GET", MARKET)) == 1
    assert sleeps == []


async def test_a_bare_503_is_unexplained_and_honours_retry_after_as_an_http_date(assetpay, fake, sleeps):
    later = format_datetime(datetime.fromtimestamp(NOW + 2, UTC), usegmt=True)
    fake.on("GET", MARKET, bare(503, headers={"Retry-After": later}), ok({"items": [], "count": 0}))
    await assetpay.market(USER)
    assert len(fake.calls("GET", MARKET)) == 2
    assert sleeps == [2.0]


async def test_a_retry_after_longer_than_the_cap_ends_the_retries(assetpay, fake, sleeps):
    fake.on("GET", MARKET, bare(502, headers={"Retry-After": "60"}))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.market(USER)
    assert caught.value.retry_after == 60.0
    assert len(fake.calls("GET", MARKET)) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    ("status", "key"), [(503, "FLEET_DEGRADED"), (409, "DEPOSIT_IN_PROGRESS"), (409, "WITHDRAW_IN_PROGRESS")]
)
async def test_refusals_are_retried_on_reads(assetpay, fake, sleeps, status, key):
    fake.on("GET", INVENTORY, fail(status, key, code=4999), ok(inventory_data()))
    await assetpay.inventory(USER)
    assert len(fake.calls("GET", INVENTORY)) == 2
    assert sleeps == [0.1]


@pytest.mark.parametrize(
    ("status", "key"), [(503, "FLEET_DEGRADED"), (409, "DEPOSIT_IN_PROGRESS"), (409, "WITHDRAW_IN_PROGRESS")]
)
async def test_refusals_are_retried_even_on_a_deposit_with_the_same_body(assetpay, fake, status, key):
    fake.on("POST", DEPOSIT, fail(status, key, code=4999), ok(trade(external_id="dep-r")))
    result = await assetpay.deposit(USER, DEPOSIT_ITEMS, external_id="dep-r", is_instant=True)
    assert result.external_id == "dep-r"
    first, second = fake.calls("POST", DEPOSIT)
    assert first.content == second.content
    assert not fake.calls("GET", TRADES)


async def test_refusals_stop_at_the_cap_and_are_not_ambiguous(assetpay, fake):
    fake.on("POST", WITHDRAW, fail(409, "WITHDRAW_IN_PROGRESS", code=4999))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.withdraw(USER, [WithdrawItem("listing-1", Decimal(5))], external_id="wd-r")
    assert caught.value.key == "WITHDRAW_IN_PROGRESS"
    assert not isinstance(caught.value, OutcomeUnknown)
    assert len(fake.calls("POST", WITHDRAW)) == POLICY.attempts
    assert not fake.calls("GET", TRADES)


@pytest.mark.parametrize(
    "reply",
    [
        fail(400, "VALIDATION_FAILED", code=4000, fields={"items.0.price": "must match the offer price"}),
        fail(409, "PRICE_CHANGED", code=4090),
        fail(429, "RATE_LIMITED", code=4290, headers={"Retry-After": "1"}),
        fail(429, "TOO_MANY_ACTIVE_TRADES", code=4291),
        fail(424, "STEAM_UNAVAILABLE", code=4240),
        fail(503, "SYSTEM_MAINTENANCE", code=5030, headers={"Retry-After": "1"}),
        fail(409, "EXTERNAL_ID_EXISTS", code=4091),
        bare(413, "Payload Too Large"),
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
    ],
    ids=[
        "validation",
        "price-changed",
        "rate-limited",
        "too-many-active",
        "steam",
        "maintenance",
        "external-id-exists",
        "bare-4xx",
        "connect-error",
        "connect-timeout",
    ],
)
async def test_a_deposit_with_a_definite_outcome_is_sent_exactly_once(assetpay, fake, sleeps, reply):
    fake.on("POST", DEPOSIT, reply)
    with pytest.raises(AssetPayError) as caught:
        await assetpay.deposit(USER, DEPOSIT_ITEMS, external_id="dep-once", is_instant=True)
    assert not isinstance(caught.value, OutcomeUnknown)
    assert len(fake.calls("POST", DEPOSIT)) == 1
    assert not fake.calls("GET", TRADES)
    assert sleeps == []


# -- the settlement of an unknown outcome ------------------------------------------------------------------------

AMBIGUOUS = [
    httpx.ReadTimeout("read timed out"),
    httpx.WriteTimeout("write timed out"),
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
    httpx.ReadError("connection reset"),
    fail(500, "INTERNAL_ERROR", code=5000),
    bare(502),
    bare(504),
]
AMBIGUOUS_IDS = ["read-timeout", "write-timeout", "dropped", "reset", "enveloped-500", "bare-502", "bare-504"]


@pytest.mark.parametrize("first", AMBIGUOUS, ids=AMBIGUOUS_IDS)
async def test_unknown_outcome_then_resend_succeeds(assetpay, fake, first):
    fake.on("POST", DEPOSIT, first, ok(trade(external_id="dep-s")))
    result = await assetpay.deposit(USER, DEPOSIT_ITEMS, external_id="dep-s", is_instant=True)
    assert result.external_id == "dep-s"
    original, resend = fake.calls("POST", DEPOSIT)
    assert original.content == resend.content
    assert json.loads(resend.content)["externalId"] == "dep-s"
    assert not fake.calls("GET", TRADES)


async def test_unknown_outcome_then_external_id_exists_then_lookup_finds_it(assetpay, fake):
    created = trade(external_id="dep-x", status="active")
    fake.on("POST", DEPOSIT, httpx.ReadTimeout("read timed out"), fail(409, "EXTERNAL_ID_EXISTS", code=4091))
    fake.on("GET", TRADES, ok(created))
    result = await assetpay.deposit(USER, DEPOSIT_ITEMS, external_id="dep-x", is_instant=True)
    assert result.id == created["id"]
    assert result.status == "active"
    assert len(fake.calls("POST", DEPOSIT)) == 2
    (lookup,) = fake.calls("GET", TRADES)
    assert lookup.url.raw_path == b"/secure/trades/dep-x"
    assert lookup.headers["api-key"] == API_KEY


async def test_unknown_outcome_on_a_withdrawal_is_settled_the_same_way(assetpay, fake):
    created = trade(type="withdraw", external_id="wd-x")
    fake.on("POST", WITHDRAW, fail(500, "INTERNAL_ERROR", code=5000), fail(409, "EXTERNAL_ID_EXISTS", code=4091))
    fake.on("GET", TRADES, ok(created))
    result = await assetpay.withdraw(USER, [WithdrawItem("listing-1", Decimal("12.50"))], external_id="wd-x")
    assert result.id == created["id"]
    first, resend = fake.calls("POST", WITHDRAW)
    assert first.content == resend.content


async def test_lookup_finding_nothing_leaves_the_outcome_ambiguous(assetpay, fake):
    fake.on(
        "POST",
        DEPOSIT,
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        fail(409, "EXTERNAL_ID_EXISTS", code=4091, request_id="req-exists"),
    )
    fake.on("GET", TRADES, fail(404, "NOT_FOUND", code=4040))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.deposit(USER, DEPOSIT_ITEMS, external_id="dep-n", is_instant=True)
    error = caught.value
    assert isinstance(error, OutcomeUnknown)
    assert error.key == "EXTERNAL_ID_EXISTS"
    assert error.request_id == "req-exists"
    assert "reconciliation" in error.message
    assert len(fake.calls("POST", DEPOSIT)) == 2
    assert len(fake.calls("GET", TRADES)) == 1


async def test_lookup_failing_leaves_the_outcome_ambiguous(assetpay, fake):
    fake.on("POST", DEPOSIT, httpx.ReadTimeout("read timed out"))
    fake.on("GET", TRADES, bare(500))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.deposit(USER, DEPOSIT_ITEMS, external_id="dep-f", is_instant=True)
    error = caught.value
    assert isinstance(error, OutcomeUnknown)
    assert error.key == "TIMEOUT"
    assert isinstance(error.__cause__, AssetPayError)
    assert error.__cause__.status == 500
    assert len(fake.calls("POST", DEPOSIT)) == 2  # the one resend, never more
    assert len(fake.calls("GET", TRADES)) == POLICY.attempts  # the lookup is a read: retried


async def test_a_refused_resend_with_nothing_found_stays_ambiguous(assetpay, fake):
    # The first try may still be in flight, so a refusal of the resend proves nothing about it.
    fake.on("POST", DEPOSIT, bare(502), fail(409, "PRICE_CHANGED", code=4090))
    fake.on("GET", TRADES, fail(404, "NOT_FOUND", code=4040))
    with pytest.raises(AssetPayError) as caught:
        await assetpay.deposit(USER, DEPOSIT_ITEMS, external_id="dep-p", is_instant=True)
    assert caught.value.key == "PRICE_CHANGED"
    assert isinstance(caught.value, OutcomeUnknown)
    assert len(fake.calls("POST", DEPOSIT)) == 2


async def test_an_unreadable_success_is_read_back_without_a_resend(assetpay, fake):
    created = trade(external_id="dep-u")
    fake.check_responses = False
    fake.on("POST", DEPOSIT, ok({"id": created["id"], "totalPrice": "not money"}))
    fake.on("GET", TRADES, ok(created))
    result = await assetpay.deposit(USER, DEPOSIT_ITEMS, external_id="dep-u", is_instant=True)
    assert result.id == created["id"]
    assert len(fake.calls("POST", DEPOSIT)) == 1


async def test_lookup_without_api_key_leaves_the_outcome_ambiguous(http, clock, sleeps, fake):
    client = AssetPayClient(
        http, base_url=BASE_URL, api_secret=SecretStr(API_SECRET), merchant_id=MERCHANT_ID, clock=clock, sleep=sleeps
    )
    fake.on("POST", DEPOSIT, httpx.ReadTimeout("read timed out"))
    with pytest.raises(AssetPayError) as caught:
        await client.deposit(USER, DEPOSIT_ITEMS, external_id="dep-k", is_instant=True)
    assert isinstance(caught.value, OutcomeUnknown)
    assert isinstance(caught.value.__cause__, AssetPayError)
    assert caught.value.__cause__.key == "NOT_CONFIGURED"
    assert len(fake.calls("POST", DEPOSIT)) == 2


# -- secrets -----------------------------------------------------------------------------------------------------


async def test_secrets_never_appear_in_errors_or_logs(assetpay, remote, fake, caplog):
    caplog.set_level(logging.DEBUG)
    fake.on("POST", AUTH, ok({"token": issued_token(NOW, 3600)}))
    fake.on(
        "GET",
        INVENTORY,
        fail(400, "VALIDATION_FAILED", code=4000, message=f"bad key {API_KEY} / {API_SECRET}"),
    )
    fake.on("POST", DEPOSIT, httpx.ReadTimeout("read timed out"))
    fake.on("GET", TRADES, fail(401, "UNAUTHORIZED", code=4010, message=f"api-key {API_KEY} refused"))

    errors: list[AssetPayError] = []
    for call in (
        lambda: assetpay.inventory(USER),
        lambda: remote.inventory(USER),
        lambda: assetpay.deposit(USER, DEPOSIT_ITEMS, external_id="dep-s", is_instant=True),
        lambda: assetpay.get_trades(["x-1"]),
    ):
        with pytest.raises(AssetPayError) as caught:
            await call()
        errors.append(caught.value)

    texts = [caplog.text, repr(assetpay), repr(remote)]
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            texts += [str(chain), repr(chain), getattr(chain, "message", "")]
            chain = chain.__cause__
    for text in texts:
        assert API_KEY not in text
        assert API_SECRET not in text
    assert "[redacted]" in errors[0].message
    # The tokens handed out stay out of the logs too, while AssetPay's requestIds are logged.
    for request in fake.requests:
        if "authorization" in request.headers:
            assert bearer(request) not in caplog.text
    assert "requestId=req-" in caplog.text


def test_http_client_has_timeouts_and_pool_limits():
    http = create_http_client(connect_timeout=2.0, read_timeout=15.0)
    assert http.timeout.connect == 2.0
    assert http.timeout.read == 15.0
    assert http.headers["user-agent"].startswith("assetpay-merchant/")


def test_the_openapi_check_is_not_vacuous():
    headers = {"x-request-id": str(uuid.uuid4()), "authorization": "Bearer t", "content-type": "application/json"}
    for body in (
        b'{"items":[{"itemId":"12345","price":1}],"extra":1}',  # additionalProperties: false
        b'{"items":[{"itemId":"12345","price":1}],"game":730}',  # game is a string in bodies
        b'{"items":[{"itemId":"12345","price":0}]}',  # price > 0
    ):
        request = httpx.Request("POST", BASE_URL + DEPOSIT, content=body, headers=headers)
        with pytest.raises(AssertionError, match="does not match the OpenAPI schema"):
            check_request(request)
    query = httpx.Request("GET", BASE_URL + INVENTORY + "?game=730&bogus=1", headers=headers)
    with pytest.raises(AssertionError, match="not documented"):
        check_request(query)
    with pytest.raises(AssertionError, match="does not match the OpenAPI schema"):
        check_response("GET", INVENTORY, 200, {"requestId": "r", "success": True, "data": {"inventory": []}})
