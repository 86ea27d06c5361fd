"""`WS /v1/ws` as DESIGN.md §5 fixes it: auth, ready, events after commit in the REST shapes, only one's own,
ping/pong, resume with `since` (in order, none twice), resync when the past is gone, connection limits."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text
from websockets.exceptions import ConnectionClosed

from assetpay_merchant.services.live import Hub, purge_periodically
from assetpay_merchant.store import events
from assetpay_merchant.store.database import Database
from tests.live.conftest import live
from tests.support import auth, deliver_trade, register_user, trade, user_token


async def closed_with(connection, code: int) -> bool:
    try:
        message = await connection.next()
    except ConnectionClosed as closed:
        return closed.rcvd is not None and closed.rcvd.code == code
    raise AssertionError(f"expected the socket to close with {code}, got {message}")


@pytest.mark.parametrize("token", ["garbage", user_token("someone", expires_in=-10)])
async def test_a_bad_or_expired_token_closes_4401_and_sends_nothing(served, token):
    async with live(served, token=token) as connection:
        assert await closed_with(connection, 4401)


async def test_no_token_at_all_closes_4401(served):
    async with live(served) as connection:
        await connection.send({"type": "hello"})
        assert await closed_with(connection, 4401)


async def test_ready_then_the_trade_and_balance_as_the_rest_routes_show_them(client, served):
    await register_user(client, "ws-1")
    async with live(served, "ws-1") as connection:
        assert await connection.next() == {"type": "ready", "id": None, "data": {"userId": "ws-1", "lastEventId": 0}}
        assert (
            await deliver_trade(client, trade(status="hold", total="50.00", pre="30.00", user_id="ws-1"))
        ).is_success
        traded, balanced = await connection.next(), await connection.next()
    assert (traded["type"], traded["id"], balanced["type"], balanced["id"]) == (
        "trade.updated",
        1,
        "balance.updated",
        2,
    )
    shown = (await client.get(f"/v1/trades/{traded['data']['id']}", headers=auth("ws-1"))).json()
    assert traded["data"] == shown
    assert balanced["data"] == (await client.get("/v1/balance", headers=auth("ws-1"))).json()


async def test_auth_by_first_message_and_ping_pong(client, served):
    await register_user(client, "ws-2")
    async with live(served) as connection:
        await connection.send({"type": "auth", "token": user_token("ws-2")})
        assert (await connection.next())["type"] == "ready"
        await connection.send({"type": "ping"})
        assert await connection.next() == {"type": "pong", "id": None, "data": {}}


async def test_a_user_sees_only_their_own_events(client, served):
    for user in ("ws-mine", "ws-theirs"):
        await register_user(client, user)
    async with live(served, "ws-mine") as mine:
        await mine.next()
        await deliver_trade(client, trade(status="completed", total="1.00", user_id="ws-theirs"))
        await deliver_trade(client, trade(status="completed", total="2.00", user_id="ws-mine"))
        first = await mine.next()
        assert first["data"]["totalPrice"] == "2.00"
        assert (await mine.next())["type"] == "balance.updated"
        assert await mine.nothing_within(0.3)


async def test_resume_with_since_replays_what_was_missed_in_order_none_twice(client, served):
    await register_user(client, "ws-3")
    for total in ("1.00", "2.00", "3.00"):
        await deliver_trade(client, trade(status="completed", total=total, user_id="ws-3"))  # events 1..6
    async with live(served, "ws-3", since=2) as connection:
        assert (await connection.next())["data"]["lastEventId"] == 6
        replayed = [await connection.next() for _ in range(4)]
        assert [m["id"] for m in replayed] == [3, 4, 5, 6]
        await deliver_trade(client, trade(status="completed", total="4.00", user_id="ws-3"))
        assert [(await connection.next())["id"] for _ in range(2)] == [7, 8]
        assert await connection.nothing_within(0.3)


async def test_since_beyond_what_is_kept_gets_resync(client, served, engine):
    await register_user(client, "ws-4")
    for total in ("1.00", "2.00"):
        await deliver_trade(client, trade(status="completed", total=total, user_id="ws-4"))
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM events WHERE user_id = 'ws-4' AND id <= 2"))  # purged
    async with live(served, "ws-4", since=1) as connection:
        assert (await connection.next())["type"] == "ready"
        assert await connection.next() == {"type": "resync", "id": None, "data": {}}
        await deliver_trade(client, trade(status="completed", total="3.00", user_id="ws-4"))
        assert (await connection.next())["id"] == 5  # live from the newest on


async def test_since_that_is_not_a_number_closes_4400(client, served):
    async with live(served, "ws-5", since="yesterday") as connection:
        assert await closed_with(connection, 4400)


async def test_too_many_connections_for_one_user_closes_4429(client, served, resources):
    limit = resources.hub._max_per_user
    sockets = [live(served, "ws-6") for _ in range(limit)]
    opened = [await s.__aenter__() for s in sockets]
    try:
        for connection in opened:
            assert (await connection.next())["type"] == "ready"
        async with live(served, "ws-6") as extra:
            assert await closed_with(extra, 4429)
    finally:
        for s in sockets:
            await s.__aexit__(None, None, None)


async def test_a_client_that_falls_behind_is_marked_and_others_keep_going(client, engine):
    """A full queue marks the slow client behind (it is then told to resync and closed); the fast one gets all."""
    await register_user(client, "ws-slow")
    hub = Hub(Database(engine), queue_size=4)
    slow, fast = hub.subscribe("ws-slow", after=0), hub.subscribe("ws-slow", after=0)
    received = []
    for total in ("1.00", "2.00", "3.00"):
        await deliver_trade(client, trade(status="completed", total=total, user_id="ws-slow"))  # two events each
        hub.kick("ws-slow")
        received += [(await asyncio.wait_for(fast.queue.get(), 5)).id for _ in range(2)]
    assert received == [1, 2, 3, 4, 5, 6]
    assert slow.behind.is_set()
    assert slow.queue.qsize() == 4  # what it had room for; the rest it will never get from this connection
    await hub.close()


async def test_events_are_numbered_in_commit_order_under_concurrency(client, engine):
    await register_user(client, "ws-race")
    await asyncio.gather(
        *(deliver_trade(client, trade(status="completed", total="1.00", user_id="ws-race")) for _ in range(20))
    )
    async with Database(engine).statements() as db:
        written = await events.since(db, "ws-race", 0)
    assert [e.id for e in written] == list(range(1, 41))
    balances = [e.data["available"] for e in written if e.type == events.BALANCE_UPDATED]
    assert balances == [f"{n}.00" for n in range(1, 21)]  # each balance event saw every earlier commit


async def test_a_socket_that_falls_behind_is_told_to_resync_and_closed_4408(client, served, resources, monkeypatch):
    await register_user(client, "ws-7")
    monkeypatch.setattr(resources.hub, "_queue_size", 1)  # room for one event: a completed deposit brings two
    async with live(served, "ws-7") as connection:
        assert (await connection.next())["type"] == "ready"
        await deliver_trade(client, trade(status="completed", total="1.00", user_id="ws-7"))
        messages = []
        while (message := await connection.next())["type"] != "resync":
            messages.append(message["type"])
        assert messages == ["trade.updated"]  # what fitted in its queue
        assert await closed_with(connection, 4408)


async def test_events_past_the_retention_are_purged_and_the_rest_kept(client, engine):
    await register_user(client, "ws-old")
    for total in ("1.00", "2.00"):
        await deliver_trade(client, trade(status="completed", total=total, user_id="ws-old"))
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE events SET created_at = now() - interval '3 days' WHERE id <= 2"))
    task = asyncio.create_task(purge_periodically(Database(engine), retention=timedelta(hours=48), interval=60))
    try:
        for _ in range(100):
            async with Database(engine).statements() as db:
                kept = [e.id for e in await events.since(db, "ws-old", 0)]
            if kept == [3, 4]:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert kept == [3, 4]
