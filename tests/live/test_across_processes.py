"""Several processes on one database behave as one service: an event committed by one process reaches the
clients of another (PostgreSQL LISTEN/NOTIFY, no broker), and `serve --workers 2` shares its clients' news."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import httpx

from tests.live.conftest import live
from tests.processes import serve_process
from tests.support import balance, dumps, ledger_problems, register_user, signed, trade


async def test_a_callback_applied_by_another_process_reaches_this_ones_client(client, served, database_url, tmp_path):
    await register_user(client, "xp-1")
    with serve_process(database_url, tmp_path) as other:
        async with live(served, "xp-1") as connection:
            assert (await connection.next())["type"] == "ready"
            body = dumps({"trade": trade(status="completed", total="12.50", user_id="xp-1")})
            async with httpx.AsyncClient() as http:
                answer = await http.post(f"http://{other}/webhooks/assetpay", content=body, headers=signed(body))
            assert answer.status_code == 200, answer.text
            traded, balanced = await connection.next(), await connection.next()
    assert (traded["type"], traded["data"]["totalPrice"]) == ("trade.updated", "12.50")
    assert (balanced["type"], balanced["data"]["available"]) == ("balance.updated", "12.50")


async def test_clients_of_two_workers_hear_callbacks_landing_on_either(client, database_url, tmp_path: Path):
    await register_user(client, "xp-2")
    with serve_process(database_url, tmp_path, workers=2) as both:
        # Several connections spread over the two workers by the kernel; each must hear every event once.
        sockets = [live(both, "xp-2") for _ in range(4)]
        connections = [await s.__aenter__() for s in sockets]
        try:
            for connection in connections:
                assert (await connection.next())["type"] == "ready"
            async with httpx.AsyncClient() as http:
                for total in ("1.00", "2.00", "3.00"):
                    body = dumps({"trade": trade(status="completed", total=total, user_id="xp-2")})
                    sent = await http.post(f"http://{both}/webhooks/assetpay", content=body, headers=signed(body))
                    assert sent.status_code == 200, sent.text
            for connection in connections:
                assert [(await connection.next())["id"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]
                assert await connection.nothing_within(0.2)
        finally:
            for s in sockets:
                await s.__aexit__(None, None, None)


def _created(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith('assetpay_webhook_deliveries_total{kind="trade",outcome="created"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_of_two_workers_add_up_whichever_answers_the_scrape(client, database_url, tmp_path: Path):
    await register_user(client, "xp-3")
    with serve_process(database_url, tmp_path, workers=2) as both:
        async with httpx.AsyncClient(base_url=f"http://{both}") as http:
            for _ in range(10):  # new connections: the kernel spreads them over both workers
                body = dumps({"trade": trade(status="completed", total="1.00", user_id="xp-3")})
                async with httpx.AsyncClient(base_url=f"http://{both}") as fresh:
                    assert (await fresh.post("/webhooks/assetpay", content=body, headers=signed(body))).is_success
            scrapes = []
            for _ in range(6):
                async with httpx.AsyncClient(base_url=f"http://{both}") as fresh:
                    scrapes.append(_created((await fresh.get("/metrics")).text))
            assert (await http.get("/healthz")).is_success
    assert scrapes == [10.0] * 6


async def test_approvals_for_one_user_raced_across_two_processes_never_overdraw(
    client, served, engine, database_url, tmp_path: Path
):
    """20 withdrawals of 10.00 asking for approval at once, half to each process, against a balance of 75.00:
    exactly seven are approved and debited, whichever process answers."""
    await register_user(client, "xp-4")
    funding = dumps({"trade": trade(status="completed", total="75.00", user_id="xp-4")})
    assert (await client.post("/webhooks/assetpay", content=funding, headers=signed(funding))).is_success
    with serve_process(database_url, tmp_path) as other:
        asks = [
            dumps({"trade": trade(type="withdraw", status="initiated", total="10.00", user_id="xp-4")})
            for _ in range(20)
        ]

        async def ask(http: httpx.AsyncClient, body: bytes) -> str:
            answer = await http.post("/webhooks/assetpay", content=body, headers=signed(body))
            assert answer.status_code == 200, answer.text
            return str(answer.json()["action"])

        async with (
            httpx.AsyncClient(base_url=f"http://{served}", timeout=30) as here,
            httpx.AsyncClient(base_url=f"http://{other}", timeout=30) as there,
        ):
            verdicts = await asyncio.gather(*(ask(here if n % 2 else there, body) for n, body in enumerate(asks)))
    assert verdicts.count("approve") == 7
    assert await balance(client, "xp-4") == Decimal("5.00")
    assert await ledger_problems(engine) == []
