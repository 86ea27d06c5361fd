"""The outbox: what settlement changes is written as events in the same transaction, numbered per user, in the
shapes the REST routes answer with."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text

from assetpay_merchant.store import events
from assetpay_merchant.store.database import Database
from tests.support import auth, deliver_trade, register_user, trade


async def user_events(engine, user_id: str) -> list[events.Event]:
    async with Database(engine).statements() as db:
        return await events.since(db, user_id, 0)


async def test_a_callback_writes_the_trade_and_the_balance_as_the_api_shows_them(client, engine):
    await register_user(client, "ev-1")
    payload = trade(status="hold", total="100.00", pre="60.00", user_id="ev-1")
    assert (await deliver_trade(client, payload)).status_code == 200

    written = await user_events(engine, "ev-1")
    assert [(e.id, e.type) for e in written] == [(1, "trade.updated"), (2, "balance.updated")]
    [ours] = (await client.get("/v1/trades", headers=auth("ev-1"))).json()["trades"]
    assert written[0].data == (await client.get(f"/v1/trades/{ours['id']}", headers=auth("ev-1"))).json()
    balance = (await client.get("/v1/balance", headers=auth("ev-1"))).json()
    assert written[1].data == {k: v for k, v in balance.items() if k != "currency"}
    assert (balance["available"], balance["pending"]) == ("60.00", "40.00")


async def test_duplicates_and_stale_news_announce_nothing(client, engine):
    await register_user(client, "ev-2")
    payload = trade(status="completed", total="10.00", user_id="ev-2")
    await deliver_trade(client, payload, delivery_id="d-ev-2")
    await deliver_trade(client, payload, delivery_id="d-ev-2")  # the same delivery again
    await deliver_trade(client, payload)  # the same news, another delivery
    await deliver_trade(client, {**payload, "status": "hold"})  # older news
    assert [e.id for e in await user_events(engine, "ev-2")] == [1, 2]


async def test_event_ids_count_up_per_user_without_gaps(client, engine):
    for user in ("ev-a", "ev-b"):
        await register_user(client, user)
    for n in range(3):
        for user in ("ev-a", "ev-b"):
            await deliver_trade(client, trade(status="completed", total=str(n + 1), user_id=user))
    for user in ("ev-a", "ev-b"):
        written = await user_events(engine, user)
        assert [e.id for e in written] == list(range(1, 7))
        assert written[-1].data["available"] == "6.00"
        async with Database(engine).statements() as db:
            assert await events.last_id(db, user) == 6


async def test_a_refused_callback_announces_nothing(client, engine):
    await register_user(client, "ev-3")
    bad = trade(status="hold", total="10.00", pre="20.00", user_id="ev-3")  # credits do not add up: refused
    assert (await deliver_trade(client, bad)).status_code == 422
    assert await user_events(engine, "ev-3") == []


async def test_money_text_matches_the_api(engine):
    async with engine.connect() as connection:
        for amount, shown in (("60", "60.00"), ("-5.5", "-5.50"), ("0.035", "0.035"), ("0.00000001", "0.00000001")):
            value = (await connection.execute(text("SELECT money_text(:a)"), {"a": Decimal(amount)})).scalar_one()
            assert value == shown
