"""How AssetPay's failures reach the frontend through our routes (ASSETPAY.md §8), and what they leave recorded.

A definitive refusal marks our trade failed and posts nothing; an unknown outcome (a timeout, an unexplained 5xx
that one resend and a lookup by externalId could not settle) leaves it `initiated` with its externalId, for the
callbacks or reconciliation to settle. AssetPay is faked at the HTTP boundary with respx.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.api.deps import Resources
from tests.assetpay_respx import (
    API_KEY,
    API_SECRET,
    AssetPay,
    Endpoint,
    accept,
    ledger_of,
    mocked_assetpay,
    not_found,
    register,
    rows,
    trade_answer,
    trades_of,
    unchecked,
)
from tests.gateway.fake_assetpay import bare, fail, ok
from tests.support import auth, balance, deliver_trade, trade

DEPOSIT = {"items": [{"itemId": "730_12345678901", "price": "10.75"}]}
WITHDRAWAL = {"items": [{"itemId": "listing-0001", "price": "4.20", "maxPrice": "4.40"}]}


@pytest.fixture
def assetpay(resources: Resources) -> Iterator[AssetPay]:
    with mocked_assetpay(resources) as fake:
        yield fake


async def _funded(client: httpx.AsyncClient, user_id: str) -> None:
    steam_id = await register(client, user_id)
    payload = trade(status="completed", total="50.00", pre="0", user_id=user_id, steam_id=steam_id)
    assert (await deliver_trade(client, payload)).status_code == 200


async def call(client: httpx.AsyncClient, kind: str, user_id: str) -> httpx.Response:
    """One of our routes that reaches AssetPay, for a registered (and, for withdrawals, funded) user."""
    if kind == "deposit":
        await register(client, user_id)
        return await client.post("/v1/deposits", json=DEPOSIT, headers=auth(user_id))
    if kind == "withdraw":
        await _funded(client, user_id)
        return await client.post("/v1/withdrawals", json=WITHDRAWAL, headers=auth(user_id))
    await register(client, user_id)
    return await client.get(f"/v1/{kind}", headers=auth(user_id))


def endpoint(assetpay: AssetPay, kind: str) -> Endpoint:
    endpoint: Endpoint = getattr(assetpay, kind)
    return endpoint


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


async def our_trades(engine: AsyncEngine, user_id: str, kind: str) -> list[dict[str, Any]]:
    return [row for row in await trades_of(engine, user_id) if row["type"] == kind]


# -- one test per key of ASSETPAY.md §8 --------------------------------------------------------------------------

REFUSALS = [
    # AssetPay's key, its HTTP status, our route, our status, our key
    ("VALIDATION_FAILED", 400, "deposit", 422, "VALIDATION_FAILED"),
    ("PRICE_CHANGED", 409, "deposit", 409, "PRICE_CHANGED"),
    ("ITEMS_UNAVAILABLE", 409, "withdraw", 409, "ITEMS_UNAVAILABLE"),
    ("USER_NOT_TRADEABLE", 403, "deposit", 409, "USER_NOT_TRADEABLE"),
    ("INVALID_TRADEURL", 400, "deposit", 422, "INVALID_TRADE_URL"),
    ("INVENTORY_PRIVATE", 403, "inventory", 409, "INVENTORY_PRIVATE"),
    ("INVENTORY_PRIVATE", 403, "deposit", 409, "INVENTORY_PRIVATE"),
    ("STEAM_UNAVAILABLE", 424, "inventory", 503, "STEAM_UNAVAILABLE"),
    ("STEAM_UNAVAILABLE", 424, "deposit", 503, "STEAM_UNAVAILABLE"),
    ("NO_BOTS_AVAILABLE", 503, "deposit", 503, "NO_BOTS_AVAILABLE"),
    ("DEPOSITS_PAUSED", 503, "deposit", 503, "DEPOSITS_PAUSED"),
    ("WITHDRAWALS_PAUSED", 503, "withdraw", 503, "WITHDRAWALS_PAUSED"),
    ("MERCHANT_BALANCE_LOW", 409, "withdraw", 503, "WITHDRAWALS_UNAVAILABLE"),
    ("SYSTEM_MAINTENANCE", 503, "market", 503, "MAINTENANCE"),
    ("SYSTEM_MAINTENANCE", 503, "deposit", 503, "MAINTENANCE"),
    ("RATE_LIMITED", 429, "deposit", 429, "RATE_LIMITED"),
    ("RATE_LIMITED", 429, "market", 429, "RATE_LIMITED"),
    ("TOO_MANY_ACTIVE_TRADES", 429, "deposit", 429, "TOO_MANY_ACTIVE_TRADES"),
]


@pytest.mark.parametrize(
    ("key", "status", "kind", "ours", "our_key"), REFUSALS, ids=[f"{r[0]}-{r[2]}" for r in REFUSALS]
)
async def test_a_refusal_by_key_maps_to_a_clear_error_and_fails_our_trade(
    client: httpx.AsyncClient,
    assetpay: AssetPay,
    engine: AsyncEngine,
    key: str,
    status: int,
    kind: str,
    ours: int,
    our_key: str,
) -> None:
    endpoint(assetpay, kind).reply(fail(status, key, message="AssetPay says no", request_id="req-refusal-1"))
    response = await call(client, kind, "refused")
    assert response.status_code == ours, response.text
    error = error_of(response)
    assert error["key"] == our_key
    assert error["assetpayRequestId"] == "req-refusal-1"
    assert endpoint(assetpay, kind).call_count == 1, "a refusal is not retried"
    if kind in ("deposit", "withdraw"):
        [row] = await our_trades(engine, "refused", kind)
        assert row["status"] == "failed"
        assert row["error"] == key
        assert row["assetpay_id"] is None
        assert row["posted"] == 0
        assert error["tradeId"] == str(row["id"])
        # Nothing moved: only the funding of a withdrawal's user is in the ledger.
        assert [entry["kind"] for entry in await ledger_of(engine, "refused")] == (
            ["credit"] if kind == "withdraw" else []
        )


async def test_validation_failed_names_assetpays_fields(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    fields = {"items.0.price": "must equal the current offer price"}
    assetpay.deposit.reply(fail(400, "VALIDATION_FAILED", message="items.0.price: must equal", fields=fields))
    response = await call(client, "deposit", "fields")
    assert response.status_code == 422
    error = error_of(response)
    assert error["key"] == "VALIDATION_FAILED"
    assert error["fields"] == fields
    assert "items.0.price" in error["message"]


@pytest.mark.parametrize("kind", ["deposit", "market"])
async def test_rate_limited_passes_retry_after_through(
    client: httpx.AsyncClient, assetpay: AssetPay, kind: str
) -> None:
    endpoint(assetpay, kind).reply(fail(429, "RATE_LIMITED", headers={"Retry-After": "17"}))
    response = await call(client, kind, "hasty")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "17"
    assert endpoint(assetpay, kind).call_count == 1


async def test_maintenance_is_503_with_retry_after_and_not_retried(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    assetpay.market.reply(fail(503, "SYSTEM_MAINTENANCE", headers={"Retry-After": "120"}))
    response = await call(client, "market", "patient")
    assert response.status_code == 503
    assert error_of(response)["key"] == "MAINTENANCE"
    assert response.headers["Retry-After"] == "120"
    assert assetpay.market.call_count == 1


async def test_external_id_exists_means_our_trade_went_through(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    """AssetPay already has a trade with our externalId: it is ours, so it is looked up and stored."""
    seen: list[httpx.Request] = []

    def exists(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return fail(409, "EXTERNAL_ID_EXISTS", message="externalId already used")

    def found(request: httpx.Request) -> httpx.Response:
        return ok(trade_answer(seen[0], user_id="twice", trade_id="ap-trade-twice", status="active"))

    assetpay.deposit.reply(exists)
    assetpay.lookup.reply(found)
    response = await call(client, "deposit", "twice")
    assert response.status_code == 201, response.text
    assert response.json()["assetpayId"] == "ap-trade-twice"
    [row] = await trades_of(engine, "twice")
    assert (row["status"], row["assetpay_id"]) == ("active", "ap-trade-twice")
    [lookup] = assetpay.lookup.requests
    assert lookup.url.path == f"/secure/trades/{row['external_id']}"


async def test_external_id_exists_that_no_lookup_finds_leaves_the_trade_for_reconciliation(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    assetpay.deposit.reply(fail(409, "EXTERNAL_ID_EXISTS"))
    assetpay.lookup.reply(not_found())
    response = await call(client, "deposit", "unsure")
    assert response.status_code == 502
    error = error_of(response)
    assert error["key"] == "OUTCOME_UNKNOWN"
    [row] = await trades_of(engine, "unsure")
    assert row["status"] == "initiated"
    assert error["tradeId"] == str(row["id"])


async def test_an_invalid_token_is_renewed_once_and_the_request_replayed(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    assetpay.deposit.reply(fail(401, "INVALID_TOKEN"), accept(user_id="renewed"))
    response = await call(client, "deposit", "renewed")
    assert response.status_code == 201, response.text
    assert assetpay.auth.call_count == 2
    first, second = assetpay.deposit.requests
    assert first.content == second.content
    assert first.headers["authorization"] != second.headers["authorization"]


async def test_an_invalid_token_twice_is_our_credentials_problem_502_not_401(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    assetpay.deposit.reply(fail(401, "INVALID_TOKEN"))
    response = await call(client, "deposit", "stale")
    assert response.status_code == 502
    assert error_of(response)["key"] == "UPSTREAM_AUTH_FAILED"
    assert assetpay.deposit.call_count == 2
    [row] = await trades_of(engine, "stale")
    assert row["status"] == "failed"


# -- AssetPay refusing our credentials is never the user's 401 ---------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_assetpay_refusing_the_api_key_is_502(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine, status: int
) -> None:
    assetpay.auth.reply(fail(status, "UNAUTHORIZED" if status == 401 else "FORBIDDEN", message="bad api-key"))
    await register(client, "keyless")
    token = await client.post("/v1/client-token", headers=auth("keyless"))
    assert token.status_code == 502
    assert error_of(token)["key"] == "UPSTREAM_AUTH_FAILED"
    deposit = await client.post("/v1/deposits", json=DEPOSIT, headers=auth("keyless"))
    assert deposit.status_code == 502
    assert error_of(deposit)["key"] == "UPSTREAM_AUTH_FAILED"
    assert assetpay.deposit.call_count == 0
    [row] = await trades_of(engine, "keyless")
    assert row["status"] == "failed", "nothing reached AssetPay: the trade is definitively refused"


async def test_a_403_on_a_trade_is_502(client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine) -> None:
    assetpay.deposit.reply(fail(403, "FORBIDDEN", message="client token not allowed"))
    response = await call(client, "deposit", "forbidden")
    assert response.status_code == 502
    assert error_of(response)["key"] == "UPSTREAM_AUTH_FAILED"
    [row] = await trades_of(engine, "forbidden")
    assert row["status"] == "failed"


# -- 5xx and unreadable answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        fail(500, "INTERNAL_ERROR", message="boom"),
        bare(502),
        bare(500, "oops"),
    ],
    ids=["enveloped-500", "bare-502", "bare-500"],
)
async def test_a_read_that_keeps_failing_with_5xx_is_502_after_retries(
    client: httpx.AsyncClient, assetpay: AssetPay, reply: httpx.Response
) -> None:
    assetpay.market.reply(reply)
    response = await call(client, "market", "flaky")
    assert response.status_code == 502
    assert error_of(response)["key"] in ("UPSTREAM_ERROR", "UPSTREAM_INVALID_RESPONSE")
    assert assetpay.market.call_count == 3


async def test_a_read_retried_after_a_5xx_succeeds(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    assetpay.market.reply(bare(502), ok({"items": [], "count": 0}))
    response = await call(client, "market", "lucky")
    assert response.status_code == 200
    assert response.json() == {"items": [], "count": 0}
    assert assetpay.market.call_count == 2


@pytest.mark.parametrize(
    "reply",
    [
        unchecked(httpx.Response(200, json={"hello": "world"})),
        unchecked(ok({"count": 3})),
        unchecked(ok({"items": [{"name": "no id"}], "count": 1})),
        httpx.Response(200, content=b"<html>captive portal</html>", headers={"content-type": "text/html"}),
    ],
    ids=["no-envelope", "no-items", "item-without-id", "html"],
)
async def test_an_unreadable_answer_is_502(
    client: httpx.AsyncClient, assetpay: AssetPay, reply: httpx.Response
) -> None:
    assetpay.market.reply(reply)
    response = await call(client, "market", "confused")
    assert response.status_code == 502
    assert error_of(response)["key"] == "UPSTREAM_INVALID_RESPONSE"
    assert assetpay.market.call_count == 1


async def test_an_unexplained_5xx_on_a_deposit_is_resent_once_then_looked_up(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    assetpay.deposit.reply(fail(500, "INTERNAL_ERROR"), bare(502))
    assetpay.lookup.reply(not_found())
    response = await call(client, "deposit", "lost")
    assert response.status_code == 502
    error = error_of(response)
    assert error["key"] == "OUTCOME_UNKNOWN"
    first, second = assetpay.deposit.requests
    assert first.content == second.content, "the resend carries the same externalId"
    [row] = await trades_of(engine, "lost")
    assert row["status"] == "initiated"
    assert row["assetpay_id"] is None
    assert row["external_id"] == json.loads(first.content)["externalId"]
    assert error["tradeId"] == str(row["id"])
    [lookup] = assetpay.lookup.requests
    assert lookup.url.path == f"/secure/trades/{row['external_id']}"
    assert lookup.headers["api-key"] == API_KEY


async def test_an_unreadable_trade_answer_is_read_back_by_externalid(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    bodies: list[httpx.Request] = []

    def created_but_garbled(request: httpx.Request) -> httpx.Response:
        bodies.append(request)
        return unchecked(ok({"id": "ap-garbled"}))

    assetpay.deposit.reply(created_but_garbled)
    assetpay.lookup.reply(lambda _: ok(trade_answer(bodies[0], user_id="garbled", trade_id="ap-garbled")))
    response = await call(client, "deposit", "garbled")
    assert response.status_code == 201, response.text
    assert response.json()["assetpayId"] == "ap-garbled"
    assert assetpay.deposit.call_count == 1, "a write that went through is not sent again"
    [row] = await trades_of(engine, "garbled")
    assert row["assetpay_id"] == "ap-garbled"


# -- timeouts ----------------------------------------------------------------------------------------------------


async def test_a_deposit_timeout_is_504_and_leaves_the_trade_for_the_callbacks(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    assetpay.deposit.reply(httpx.ReadTimeout("read timed out"))
    assetpay.lookup.reply(not_found())
    response = await call(client, "deposit", "slow")
    assert response.status_code == 504
    error = error_of(response)
    assert error["key"] == "UPSTREAM_TIMEOUT"
    assert assetpay.deposit.call_count == 2
    assert assetpay.lookup.call_count == 1
    [row] = await trades_of(engine, "slow")
    assert (row["status"], row["assetpay_id"]) == ("initiated", None)
    assert error["tradeId"] == str(row["id"])
    external_id = json.loads(assetpay.deposit.requests[0].content)["externalId"]
    assert row["external_id"] == external_id

    # AssetPay did create it: its callback links to our recorded trade rather than making a second one.
    steam_id = row["client_steam_id"]
    held = trade(
        trade_id="ap-slow", status="hold", total="10.75", pre="6.00", user_id="slow", steam_id=steam_id,
        external_id=external_id,
    )  # fmt: skip
    assert (await deliver_trade(client, held)).status_code == 200
    [linked] = await trades_of(engine, "slow")
    assert linked["id"] == row["id"]
    assert (linked["assetpay_id"], linked["status"]) == ("ap-slow", "hold")
    assert await balance(client, "slow") == Decimal("6.00")


async def test_a_deposit_timeout_settled_by_the_resend(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    assetpay.deposit.reply(httpx.ReadTimeout("read timed out"), accept(user_id="resent", trade_id="ap-resent"))
    response = await call(client, "deposit", "resent")
    assert response.status_code == 201, response.text
    first, second = assetpay.deposit.requests
    assert first.content == second.content
    assert assetpay.lookup.call_count == 0
    [row] = await trades_of(engine, "resent")
    assert row["assetpay_id"] == "ap-resent"


async def test_a_deposit_timeout_settled_by_the_lookup(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    assetpay.deposit.reply(httpx.ReadTimeout("read timed out"), fail(409, "EXTERNAL_ID_EXISTS"))
    assetpay.lookup.reply(
        lambda _: ok(
            trade_answer(assetpay.deposit.requests[0], user_id="looked", trade_id="ap-looked", status="active")
        )
    )
    response = await call(client, "deposit", "looked")
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "active"
    [row] = await trades_of(engine, "looked")
    assert (row["assetpay_id"], row["status"]) == ("ap-looked", "active")


async def test_a_read_timeout_is_retried_then_504(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    assetpay.market.reply(httpx.ReadTimeout("read timed out"))
    response = await call(client, "market", "waiting")
    assert response.status_code == 504
    assert error_of(response)["key"] == "UPSTREAM_TIMEOUT"
    assert assetpay.market.call_count == 3


async def test_a_connection_never_made_fails_the_trade_without_a_resend(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    assetpay.deposit.reply(httpx.ConnectError("connection refused"))
    response = await call(client, "deposit", "offline")
    assert response.status_code == 502
    assert error_of(response)["key"] == "UPSTREAM_UNAVAILABLE"
    assert assetpay.deposit.call_count == 1
    assert assetpay.lookup.call_count == 0
    [row] = await trades_of(engine, "offline")
    assert row["status"] == "failed"


# -- a crash between recording and AssetPay's answer -------------------------------------------------------------


async def test_a_crash_after_recording_leaves_a_trade_the_callbacks_settle(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    steam_id = await register(client, "crash")
    external_ids: list[str] = []

    async def crash(request: httpx.Request) -> httpx.Response:
        external_id = json.loads(request.content)["externalId"]
        found = await rows(engine, "SELECT status FROM trades WHERE external_id = :e", e=external_id)
        assert found == [{"status": "initiated"}]
        external_ids.append(external_id)
        raise RuntimeError("the process died here")

    assetpay.deposit.reply(crash)
    with pytest.raises(RuntimeError, match="the process died here"):
        await client.post("/v1/deposits", json=DEPOSIT, headers=auth("crash"))
    [external_id] = external_ids
    [row] = await trades_of(engine, "crash")
    assert (row["status"], row["external_id"], row["assetpay_id"]) == ("initiated", external_id, None)

    completed = trade(
        trade_id="ap-crash", status="completed", total="10.75", user_id="crash", steam_id=steam_id,
        external_id=external_id,
    )  # fmt: skip
    assert (await deliver_trade(client, completed)).status_code == 200
    [linked] = await trades_of(engine)
    assert linked["id"] == row["id"]
    assert (linked["assetpay_id"], linked["status"]) == ("ap-crash", "completed")
    assert await balance(client, "crash") == Decimal("10.75")


# -- the merchant's credentials never leak -----------------------------------------------------------------------


async def test_the_api_key_and_secret_never_reach_a_response_or_a_log(
    client: httpx.AsyncClient, assetpay: AssetPay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"api-key {API_KEY} / secret {API_SECRET} not accepted"
    await register(client, "leaky")
    await _funded(client, "rich")
    responses = [await client.post("/v1/client-token", headers=auth("leaky"))]

    assetpay.deposit.reply(
        fail(400, "VALIDATION_FAILED", message=echo, fields={"items.0.price": echo}),
        fail(409, "PRICE_CHANGED", message=[echo, echo]),
        httpx.ReadTimeout(echo),
        httpx.ReadTimeout(echo),
        accept(user_id="leaky"),
    )
    assetpay.lookup.reply(fail(404, "NOT_FOUND", message=echo))
    for _ in range(4):
        responses.append(await client.post("/v1/deposits", json=DEPOSIT, headers=auth("leaky")))
    assetpay.withdraw.reply(fail(503, "WITHDRAWALS_PAUSED", message=echo))
    responses.append(await client.post("/v1/withdrawals", json=WITHDRAWAL, headers=auth("rich")))
    assetpay.market.reply(bare(401, echo), fail(401, "UNAUTHORIZED", message=echo))
    responses.append(await client.get("/v1/market", headers=auth("leaky")))
    responses.append(await client.get("/v1/market", headers=auth("leaky"), params={"page": 2}))
    assetpay.inventory.reply(fail(403, "FORBIDDEN", message=echo, details={"apiKey": API_KEY}))
    responses.append(await client.get("/v1/inventory", headers=auth("leaky")))
    assetpay.auth.reply(fail(401, "UNAUTHORIZED", message=echo))
    await client.put(
        "/v1/users/leaky",
        json={"steamId": "76561198999999999", "tradeUrl": assetpay.auth.bodies()[0]["clientTradeUrl"]},
        headers={"X-Admin-Key": "test-admin-key"},
    )
    responses.append(await client.post("/v1/client-token", headers=auth("leaky")))

    assert [r.status_code for r in responses] == [200, 422, 409, 504, 201, 503, 502, 502, 502, 502]
    formatter = logging.Formatter("%(message)s %(exc_info)s")
    for secret in (API_KEY, API_SECRET):
        for response in responses:
            assert secret not in response.text, response.text
            assert secret not in str(response.headers)
        for record in caplog.records:
            assert secret not in formatter.format(record), record
