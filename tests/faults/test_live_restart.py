"""Live clients across a database restart: the listener reconnects by itself and replays from the outbox what was
committed while it could not listen, so a connected client still gets every event, in order, none twice."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from assetpay_merchant.app import create_app
from assetpay_merchant.store.migrations import upgrade_async
from tests.faults.conftest import serve, settings_for
from tests.faults.pgcluster import PgCluster, find_bin_dir
from tests.live.conftest import live
from tests.support import ADMIN_KEY, TRADE_URL, dumps, new_steam_id, signed, trade

pytestmark = pytest.mark.skipif(find_bin_dir() is None, reason="no PostgreSQL binaries (pgserver or system)")


async def deliver_until_accepted(http: httpx.AsyncClient, body: bytes) -> None:
    """As AssetPay does: the same delivery again until it is answered 2xx (bounded)."""
    headers = signed(body)
    for _ in range(200):
        try:
            if (await http.post("/webhooks/assetpay", content=body, headers=headers)).is_success:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the callback was never accepted")


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_connected_client_gets_everything_committed_across_a_restart(cluster: PgCluster, mode: str) -> None:
    await upgrade_async(cluster.url)
    async with serve(create_app(settings_for(cluster.url))) as base, httpx.AsyncClient(base_url=base) as http:
        profile = {"steamId": new_steam_id(), "tradeUrl": TRADE_URL}
        assert (await http.put("/v1/users/lr-1", json=profile, headers={"X-Admin-Key": ADMIN_KEY})).is_success
        async with live(base.removeprefix("http://"), "lr-1") as connection:
            assert (await connection.next())["type"] == "ready"
            await deliver_until_accepted(
                http, dumps({"trade": trade(status="completed", total="1.00", user_id="lr-1")})
            )
            await asyncio.to_thread(cluster.restart, mode)
            # Committed right after the restart, possibly before the listener is back: replayed, not lost.
            for total in ("2.00", "3.00"):
                body = dumps({"trade": trade(status="completed", total=total, user_id="lr-1")})
                await deliver_until_accepted(http, body)
            received = [await connection.next() for _ in range(6)]
            assert [m["id"] for m in received] == [1, 2, 3, 4, 5, 6]
            assert received[-1]["data"]["available"] == "6.00"
            assert await connection.nothing_within(0.5)
