"""`Idempotency-Key` on POST /v1/deposits and /v1/withdrawals: a retry never starts a second trade.

The same key and body get the first answer without reaching AssetPay; the same key with another body is a 409; a
request whose outcome was lost can be retried with its key and carries on with the trade already recorded (same
row, same externalId). AssetPay is faked at the HTTP boundary with respx.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.api.deps import Resources
from tests.assetpay_respx import (
    AssetPay,
    accept,
    mocked_assetpay,
    not_found,
    register,
    rows,
    trade_answer,
    trades_of,
)
from tests.gateway.fake_assetpay import fail, ok
from tests.support import auth, deliver_trade, trade

DEPOSIT = {"items": [{"itemId": "730_12345678901", "price": "10.75"}]}
OTHER_DEPOSIT = {"items": [{"itemId": "730_12345678901", "price": "10.76"}]}


@pytest.fixture
def assetpay(resources: Resources) -> Iterator[AssetPay]:
    with mocked_assetpay(resources) as fake:
        yield fake


def keyed(user_id: str, key: str) -> dict[str, str]:
    return {**auth(user_id), "Idempotency-Key": key}


async def deposit(
    client: httpx.AsyncClient, user_id: str, key: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await client.post("/v1/deposits", json=body or DEPOSIT, headers=keyed(user_id, key))


async def keys(engine: AsyncEngine) -> list[dict[str, Any]]:
    return await rows(engine, "SELECT user_id, key, trade_id, response_status FROM idempotency_keys ORDER BY id")


async def test_the_same_key_and_body_get_the_first_answer_without_reaching_assetpay(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    await register(client, "again")
    assetpay.deposit.reply(accept(user_id="again", status="active"))
    first = await deposit(client, "again", "key-1")
    assert first.status_code == 201, first.text
    second = await deposit(client, "again", "key-1")
    assert second.status_code == 201
    assert second.json() == first.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert assetpay.deposit.call_count == 1
    assert len(await trades_of(engine)) == 1


async def test_a_body_written_differently_but_equal_is_the_same_request(
    client: httpx.AsyncClient, assetpay: AssetPay
) -> None:
    await register(client, "spelling")
    assetpay.deposit.reply(accept(user_id="spelling"))
    first = await deposit(client, "spelling", "key-s", {"items": [{"itemId": "730_12345678901", "price": 10.75}]})
    raw = b'{ "items" : [ { "price" : "10.75", "itemId" : "730_12345678901" } ] }'
    headers = {**keyed("spelling", "key-s"), "Content-Type": "application/json"}
    second = await client.post("/v1/deposits", content=raw, headers=headers)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json()
    assert assetpay.deposit.call_count == 1


async def test_the_same_key_with_another_body_is_409(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    await register(client, "reuser")
    assetpay.deposit.reply(accept(user_id="reuser"))
    assert (await deposit(client, "reuser", "key-2")).status_code == 201
    reused = await deposit(client, "reuser", "key-2", OTHER_DEPOSIT)
    assert reused.status_code == 409
    assert reused.json()["error"]["key"] == "IDEMPOTENCY_KEY_REUSED"
    # ... and on another route.
    withdrawal = {"items": [{"itemId": "listing-0001", "price": "10.75"}]}
    other_route = await client.post("/v1/withdrawals", json=withdrawal, headers=keyed("reuser", "key-2"))
    assert other_route.status_code == 409
    assert other_route.json()["error"]["key"] == "IDEMPOTENCY_KEY_REUSED"
    assert assetpay.deposit.call_count == 1
    assert assetpay.withdraw.call_count == 0
    assert len(await trades_of(engine)) == 1


async def test_keys_belong_to_one_user(client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine) -> None:
    await register(client, "alice")
    await register(client, "bob")
    assetpay.deposit.reply(accept(user_id="alice"), accept(user_id="bob"))
    alice = await deposit(client, "alice", "shared-key")
    bob = await deposit(client, "bob", "shared-key")
    assert (alice.status_code, bob.status_code) == (201, 201)
    assert alice.json()["id"] != bob.json()["id"]
    assert assetpay.deposit.call_count == 2


async def test_a_definitive_refusal_is_replayed(client: httpx.AsyncClient, assetpay: AssetPay) -> None:
    await register(client, "refused")
    assetpay.deposit.reply(fail(409, "PRICE_CHANGED"), accept(user_id="refused"))
    first = await deposit(client, "refused", "key-3")
    second = await deposit(client, "refused", "key-3")
    assert (first.status_code, second.status_code) == (409, 409)
    assert second.json() == first.json()
    assert second.json()["error"]["key"] == "PRICE_CHANGED"
    assert assetpay.deposit.call_count == 1


async def test_a_retry_after_an_unknown_outcome_carries_on_with_the_recorded_trade(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    await register(client, "retrier")
    assetpay.deposit.reply(httpx.ReadTimeout("read timed out"), httpx.ReadTimeout("read timed out"))
    assetpay.lookup.reply(not_found())
    lost = await deposit(client, "retrier", "key-4")
    assert lost.status_code == 504
    trade_id = lost.json()["error"]["tradeId"]

    # The first attempt never reached AssetPay: the retry sends the same trade again and it is created.
    assetpay.deposit.reply(accept(user_id="retrier", trade_id="ap-retried", status="active"))
    retried = await deposit(client, "retrier", "key-4")
    assert retried.status_code == 201, retried.text
    assert retried.json()["id"] == trade_id
    assert retried.json()["assetpayId"] == "ap-retried"
    external_ids = {body["externalId"] for body in assetpay.deposit.bodies()}
    assert external_ids == {retried.json()["externalId"]}
    assert assetpay.deposit.call_count == 3
    [row] = await trades_of(engine)
    assert str(row["id"]) == trade_id
    assert (row["assetpay_id"], row["status"]) == ("ap-retried", "active")
    # Settled now: a third try is a replay.
    replay = await deposit(client, "retrier", "key-4")
    assert replay.json() == retried.json()
    assert assetpay.deposit.call_count == 3


async def test_a_retry_after_an_unknown_outcome_that_had_gone_through_finds_the_trade(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    await register(client, "through")
    assetpay.deposit.reply(httpx.ReadTimeout("read timed out"))
    assetpay.lookup.reply(httpx.ConnectError("no route"))
    lost = await deposit(client, "through", "key-5")
    assert lost.status_code == 504
    first_request = assetpay.deposit.requests[0]

    # AssetPay had created it: the resend is refused as a duplicate externalId, and a lookup finds it.
    assetpay.deposit.reply(fail(409, "EXTERNAL_ID_EXISTS"))
    assetpay.lookup.reply(lambda _: ok(trade_answer(first_request, user_id="through", trade_id="ap-through")))
    retried = await deposit(client, "through", "key-5")
    assert retried.status_code == 201, retried.text
    assert retried.json()["id"] == lost.json()["error"]["tradeId"]
    assert retried.json()["assetpayId"] == "ap-through"
    [row] = await trades_of(engine)
    assert (row["assetpay_id"], row["status"]) == ("ap-through", "initiated")


async def test_a_retry_after_the_callback_linked_the_trade_returns_it(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    steam_id = await register(client, "linked")
    assetpay.deposit.reply(httpx.ReadTimeout("read timed out"))
    assetpay.lookup.reply(not_found())
    lost = await deposit(client, "linked", "key-6")
    assert lost.status_code == 504
    external_id = assetpay.deposit.bodies()[0]["externalId"]
    callback = trade(
        trade_id="ap-linked", status="active", total="10.75", user_id="linked", steam_id=steam_id,
        external_id=external_id,
    )  # fmt: skip
    assert (await deliver_trade(client, callback)).status_code == 200

    retried = await deposit(client, "linked", "key-6")
    assert retried.status_code == 201, retried.text
    assert retried.json()["assetpayId"] == "ap-linked"
    assert retried.json()["status"] == "active"
    assert assetpay.deposit.call_count == 2, "the retry did not send the trade again"
    assert len(await trades_of(engine)) == 1


async def test_a_retry_after_a_retryable_refusal_tries_again(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    """503/429 answers free the key: the retry must really try again, not be told the trade was refused."""
    await register(client, "paused")
    assetpay.deposit.reply(fail(503, "DEPOSITS_PAUSED"), accept(user_id="paused", trade_id="ap-resumed"))
    paused = await deposit(client, "paused", "key-7")
    assert paused.status_code == 503
    resumed = await deposit(client, "paused", "key-7")
    assert resumed.status_code == 201, resumed.text
    assert resumed.json()["assetpayId"] == "ap-resumed"
    assert assetpay.deposit.call_count == 2
    first, second = assetpay.deposit.bodies()
    assert first["externalId"] != second["externalId"], "a refused trade's externalId is not reused"
    statuses = sorted(row["status"] for row in await trades_of(engine))
    assert statuses == ["failed", "initiated"]
    [key] = await keys(engine)
    assert str(key["trade_id"]) == resumed.json()["id"]
    assert key["response_status"] == 201


async def test_a_retry_after_our_own_rate_limit_tries_again(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    steam_id = await register(client, "throttled")
    assetpay.deposit.reply(accept(user_id="throttled", status="active"))
    created = [await deposit(client, "throttled", f"fill-{n}") for n in range(5)]
    assert [r.status_code for r in created] == [201] * 5
    assert (await deposit(client, "throttled", "key-8")).status_code == 429
    declined = trade(
        trade_id=created[0].json()["assetpayId"], status="declined", total="10.75", user_id="throttled",
        steam_id=steam_id,
    )  # fmt: skip
    assert (await deliver_trade(client, declined)).status_code == 200
    assert (await deposit(client, "throttled", "key-8")).status_code == 201
    assert assetpay.deposit.call_count == 6


async def test_concurrent_identical_requests_with_one_key_reach_assetpay_once(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    await register(client, "racer")
    others_answered = asyncio.Event()

    async def slow_accept(request: httpx.Request) -> httpx.Response:
        # Hold the first call until the other requests have had their answer (or given up trying).
        await others_answered.wait()
        return ok(trade_answer(request, user_id="racer"))

    assetpay.deposit.reply(slow_accept)
    tasks = [asyncio.create_task(deposit(client, "racer", "key-race")) for _ in range(8)]
    pending = set(tasks)
    finished: list[asyncio.Task[httpx.Response]] = []
    while len(finished) < len(tasks) - 1 and pending:
        done, pending = await asyncio.wait(pending, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            break  # a second request reached AssetPay and waits there too; the assertions below say so
        finished.extend(done)
    others_answered.set()
    responses = await asyncio.gather(*tasks)

    assert assetpay.deposit.call_count == 1
    created = [r for r in responses if r.status_code == 201]
    busy = [r for r in responses if r.status_code == 409]
    assert len(created) >= 1
    assert len(created) + len(busy) == len(responses)
    assert {r.json()["error"]["key"] for r in busy} <= {"IDEMPOTENCY_KEY_IN_USE"}
    assert all("Retry-After" in r.headers for r in busy)
    assert len({json.dumps(r.json(), sort_keys=True) for r in created}) == 1
    assert len(await trades_of(engine)) == 1


async def test_concurrent_requests_with_different_keys_each_start_a_trade(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    await register(client, "parallel")
    assetpay.deposit.reply(accept(user_id="parallel"))
    responses = await asyncio.gather(*(deposit(client, "parallel", f"key-{n}") for n in range(4)))
    assert [r.status_code for r in responses] == [201] * 4
    assert assetpay.deposit.call_count == 4
    assert len(await trades_of(engine)) == 4


async def test_withdrawals_honour_the_key_too(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine
) -> None:
    steam_id = await register(client, "buyer")
    funding = trade(status="completed", total="20.00", pre="0", user_id="buyer", steam_id=steam_id)
    assert (await deliver_trade(client, funding)).status_code == 200
    assetpay.withdraw.reply(accept(user_id="buyer"))
    body = {"items": [{"itemId": "listing-0001", "price": "4.20"}]}
    first = await client.post("/v1/withdrawals", json=body, headers=keyed("buyer", "wd-key"))
    second = await client.post("/v1/withdrawals", json=body, headers=keyed("buyer", "wd-key"))
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json()
    assert assetpay.withdraw.call_count == 1
    # An insufficient balance is a definitive answer, replayed too.
    big = {"items": [{"itemId": "listing-0002", "price": "99.00"}]}
    refused = [await client.post("/v1/withdrawals", json=big, headers=keyed("buyer", "wd-big")) for _ in range(2)]
    assert [r.status_code for r in refused] == [402, 402]
    assert refused[1].headers.get("Idempotent-Replayed") == "true"


async def test_an_overlong_key_is_refused(client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine) -> None:
    await register(client, "verbose")
    response = await deposit(client, "verbose", "k" * 256)
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["error"]["fields"]
    assert assetpay.router.calls.call_count == 0
    assert await keys(engine) == []
