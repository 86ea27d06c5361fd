"""AssetPay hanging or answering garbage costs only the route that asked it, and that route answers with its key.

A real `assetpay-merchant serve` talks to a stub AssetPay on loopback that never answers, trickles a body that never
ends, answers HTML, JSON cut short, a body shorter than it promised, or 64 MB (declared or not). While the market
call waits on it, the balance, a callback and the health check still answer (asserted: answered while the market
call was still waiting, never how fast); the market call itself ends 504 `UPSTREAM_TIMEOUT` or 502 with its key,
well within the test's generous deadline (the read timeout is configured at 1 s, the whole exchange at 2 s, answers
at 4 MB; reads are tried three times).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.faults.helpers import DEADLINE, Scratch, eventually, fresh_database
from tests.faults.stub_assetpay import Mode, StubAssetPay, stub_assetpay
from tests.processes import ServeProcess
from tests.support import auth, deliver_trade, register_user, trade

MERCHANT_ID = "5e5e5e5e-0000-4000-8000-0000000fa017"  # client tokens are minted locally: only the market call goes out

EXPECTED: dict[Mode, tuple[int, str]] = {
    "hang": (504, "UPSTREAM_TIMEOUT"),
    "trickle": (504, "UPSTREAM_TIMEOUT"),
    "html": (502, "UPSTREAM_INVALID_RESPONSE"),
    "html_502": (502, "UPSTREAM_INVALID_RESPONSE"),
    "cut_json": (502, "UPSTREAM_INVALID_RESPONSE"),
    "short_body": (502, "UPSTREAM_UNAVAILABLE"),
    "huge": (502, "UPSTREAM_UNAVAILABLE"),  # refused unread: its Content-Length is past ASSETPAY_MAX_RESPONSE_BYTES
    "huge_unframed": (502, "UPSTREAM_UNAVAILABLE"),  # refused once ASSETPAY_MAX_RESPONSE_BYTES have arrived
}
SLOW_MODES = {"hang", "trickle"}  # the market call is certainly still waiting while the other routes are asked


@dataclass
class Stack:
    stub: StubAssetPay
    server: ServeProcess


@pytest.fixture(scope="module")
async def stack(scratch: Scratch, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    database_url = await fresh_database(scratch, "fault_assetpay")
    async with stub_assetpay("hang") as stub:
        workdir: Path = tmp_path_factory.mktemp("assetpay-faults")
        server = ServeProcess(
            database_url,
            workdir,
            ASSETPAY_BASE_URL=stub.base_url,
            ASSETPAY_MERCHANT_ID=MERCHANT_ID,
            ASSETPAY_CONNECT_TIMEOUT_SECONDS="1",
            ASSETPAY_READ_TIMEOUT_SECONDS="1",
            ASSETPAY_REQUEST_DEADLINE_SECONDS="2",
            ASSETPAY_MAX_RESPONSE_BYTES=str(4 * 1024 * 1024),
            MARKET_CACHE_TTL_SECONDS="0",
            RECONCILE_INTERVAL_SECONDS="0",
        )
        with server:
            server.start()
            await asyncio.to_thread(server.wait_ready)
            yield Stack(stub, server)


@pytest.mark.parametrize("mode", list(EXPECTED))
async def test_a_misbehaving_assetpay_costs_only_its_route_which_answers_with_its_key(stack: Stack, mode: Mode) -> None:
    stack.stub.mode = mode
    user = f"ap-fault-{mode}"
    asked = len(stack.stub.requests)
    async with httpx.AsyncClient(base_url=stack.server.base_url, timeout=DEADLINE) as http:
        await register_user(http, user)
        started = time.monotonic()
        market = asyncio.create_task(http.get("/v1/market", params={"search": mode}, headers=auth(user)))

        async def reached_assetpay() -> bool:
            return len(stack.stub.requests) > asked or market.done()

        await eventually(reached_assetpay, "the market call reaching the stub")
        # Meanwhile the rest of the API answers.
        callback = await deliver_trade(http, trade(status="completed", total="5.00", pre="0", user_id=user))
        balance = await http.get("/v1/balance", headers=auth(user))
        health = await http.get("/healthz")
        others_first = not market.done()
        answer = await asyncio.wait_for(market, timeout=DEADLINE)
        took = time.monotonic() - started

    assert balance.status_code == 200, balance.text
    assert balance.json()["available"] == "5.00"
    assert callback.status_code == 200, callback.text
    assert health.status_code == 200, health.text
    if mode in SLOW_MODES:
        assert others_first, "the other routes answered only after the market call ended"
    status, key = EXPECTED[mode]
    assert (answer.status_code, answer.json()["error"]["key"]) == (status, key), answer.text
    assert answer.json()["error"]["message"]
    print(
        f"\n{mode}: market {answer.status_code} {key} after {took:.2f} s, {len(stack.stub.requests) - asked} "
        f"request(s) to AssetPay; meanwhile balance {balance.status_code}, callback {callback.status_code}, "
        f"healthz {health.status_code}{' (while the market call still waited)' if others_first else ''}"
    )
