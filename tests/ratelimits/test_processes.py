"""Two real `assetpay-merchant serve` processes on one database spend one AssetPay budget: a stub AssetPay on
loopback counts what reaches it, and the sum over both processes never exceeds the bucket. AssetPay's 429 to one
process stops the other one too."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.gateway.fake_assetpay import MERCHANT_ID, TRADE_URL
from tests.processes import serve_process
from tests.support import ADMIN_KEY, auth, new_steam_id

INVENTORY = {
    "inventory": [{"id": "730_12345678901", "name": "AK-47 | Redline", "offer": {"price": 10.75}}],
    "count": 1,
    "updatedAt": "2026-12-15T12:00:00Z",
    "collateral": 0,
}


class StubAssetPay(ThreadingHTTPServer):
    """AssetPay's inventory route on loopback: counts the requests; answers `status` (200, or 429 Retry-After)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls = 0
        self.status = 200
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StubAssetPay

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.calls += 1
            status = self.server.status
        if status == 200:
            body: dict[str, Any] = {"requestId": "r", "success": True, "data": INVENTORY}
        else:
            body = {"requestId": "r", "success": False, "error": {"code": 1, "key": "RATE_LIMITED", "message": "slow"}}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        if status == 429:
            self.send_header("retry-after", "30")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def stub() -> Iterator[StubAssetPay]:
    server = StubAssetPay()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def two_processes(database_url: str, tmp_path: Path, stub: StubAssetPay) -> Iterator[tuple[str, str]]:
    env = {
        "ASSETPAY_BASE_URL": stub.url,
        "ASSETPAY_MERCHANT_ID": MERCHANT_ID,
        "ASSETPAY_MERCHANT_TIER": "unverified",
        "ASSETPAY_RATE_INVENTORY_PER_MINUTE": "18",  # a bucket of 3 (a sixth), refilled by 15 a minute
    }
    with serve_process(database_url, tmp_path, **env) as first, serve_process(database_url, tmp_path, **env) as second:
        yield first, second


async def execute(engine: AsyncEngine, sql: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(sql))


async def _inventory(http: httpx.AsyncClient, host: str, user: str) -> httpx.Response:
    return await http.get(f"http://{host}/v1/inventory", headers=auth(user))


async def test_the_sum_of_both_processes_calls_never_exceeds_the_shared_budget(
    two_processes: tuple[str, str], stub: StubAssetPay, engine: AsyncEngine
) -> None:
    first, second = two_processes
    users = [f"user-{n}" for n in range(16)]
    async with httpx.AsyncClient(timeout=30) as http:
        for user in users:
            body = {"steamId": new_steam_id(), "tradeUrl": TRADE_URL}
            answer = await http.put(f"http://{first}/v1/users/{user}", json=body, headers={"X-Admin-Key": ADMIN_KEY})
            assert answer.status_code in (200, 201), answer.text
        # Three tokens, and a refill frozen until an hour from now (a bucket stamped in the future refills nothing
        # until then): what gets through does not depend on how fast this machine is.
        await execute(
            engine,
            "INSERT INTO rate_buckets (key, tokens, updated_at) VALUES ('assetpay:inventory', 3, now() + '1 hour')",
        )
        answers = await asyncio.gather(
            *(_inventory(http, first if n % 2 else second, user) for n, user in enumerate(users))
        )
        assert sorted(answer.status_code for answer in answers) == [200] * 3 + [429] * 13
        assert stub.calls == 3
        refused = [answer for answer in answers if answer.status_code == 429]
        assert {answer.json()["error"]["key"] for answer in refused} == {"ASSETPAY_QUOTA_EXHAUSTED"}
        assert all(int(answer.headers["Retry-After"]) >= 1 for answer in refused)

        # AssetPay's own 429 to the first process drains the bucket for the second one as well.
        await execute(engine, "UPDATE rate_buckets SET tokens = 2, updated_at = now() WHERE key = 'assetpay:inventory'")
        stub.status = 429
        told = await _inventory(http, first, users[0])
        assert (told.status_code, told.json()["error"]["key"]) == (429, "RATE_LIMITED")
        assert stub.calls == 4
        held_off = await _inventory(http, second, users[1])
        assert (held_off.status_code, held_off.json()["error"]["key"]) == (429, "ASSETPAY_QUOTA_EXHAUSTED")
        assert stub.calls == 4  # refused before it was sent
