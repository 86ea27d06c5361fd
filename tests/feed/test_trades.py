"""`trade` events never move money by themselves: they have the trade looked up at AssetPay, and AssetPay's answer
is applied through the settlement path (source `realtime_nudge`), exactly once however often the feed repeats it.
When the lookup fails or AssetPay does not know the trade, nothing moves."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.assetpay_respx import AssetPay, ledger_of, not_found, register, rows, trades_of
from tests.feed.conftest import FeedServer, Wired, eventually
from tests.gateway.fake_assetpay import bare, fail
from tests.reconciliation.helpers import Book
from tests.support import balance


def claim(trade_id: str) -> dict[str, Any]:
    """What the feed says about a trade: here a lie (completed, for far more) that must never be applied."""
    return {"trade": {"id": trade_id, "type": "deposit", "status": "completed", "totalPrice": 999, "preCredit": 999}}


def nudges(result: str) -> float:
    return REGISTRY.get_sample_value("assetpay_feed_nudges_total", {"result": result}) or 0.0


def settled_by_nudges() -> float:
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "settlements"
        for sample in metric.samples
        if sample.name == "settlements_total" and sample.labels.get("source") == "realtime_nudge"
    )


async def test_a_trade_event_has_the_trade_looked_up_and_applied_once(
    client: httpx.AsyncClient, engine: AsyncEngine, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "nudged")
    book = Book()
    trade = book.put(status="completed", total="10.75", user_id="nudged")
    assetpay.lookup.reply(book)
    applied, settled = nudges("applied"), settled_by_nudges()

    for _ in range(3):  # a burst for one trade is one lookup
        await feed_server.send("trade", claim(trade["id"]))

    async def credited() -> bool:
        return len(await ledger_of(engine, "nudged")) == 1

    await eventually(credited)
    await eventually(lambda: wired.nudges.idle)
    assert assetpay.lookup.call_count == 1
    assert book.asked == [[trade["id"]]]
    assert await balance(client, "nudged") == Decimal("10.75")  # AssetPay's word, not the event's 999
    [row] = await trades_of(engine, "nudged")
    assert (row["assetpay_id"], row["status"], row["posted"]) == (trade["id"], "completed", Decimal("10.75"))

    await feed_server.send("trade", claim(trade["id"]))  # the feed says it again later: looked up again, no money
    await eventually(lambda: assetpay.lookup.call_count == 2 and wired.nudges.idle)
    assert [entry["amount"] for entry in await ledger_of(engine, "nudged")] == [Decimal("10.75")]
    assert nudges("applied") - applied == 2
    assert settled_by_nudges() - settled == 2


async def test_trade_events_for_several_trades_share_one_lookup(
    client: httpx.AsyncClient, engine: AsyncEngine, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "busy")
    book = Book()
    held = book.put(status="hold", total="40.00", pre="30.00", user_id="busy")
    done = book.put(status="completed", total="5.00", user_id="busy")
    assetpay.lookup.reply(book)
    await feed_server.send("trade", claim(held["id"]))
    await feed_server.send("trade", claim(done["id"]))

    async def both() -> bool:
        return len(await ledger_of(engine, "busy")) == 2

    await eventually(both)
    await eventually(lambda: wired.nudges.idle)
    assert book.asked == [[held["id"], done["id"]]]
    assert await balance(client, "busy") == Decimal("35.00")  # the hold's pre-credit and the completed deposit


async def test_a_trade_event_whose_lookup_fails_moves_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "unlucky")
    assetpay.lookup.reply(bare(502))
    failed = nudges("lookup_error")
    await feed_server.send("trade", claim("7c9e6679-7425-40de-944b-e07fc1f90ae7"))
    await eventually(lambda: nudges("lookup_error") > failed and wired.nudges.idle)
    assert assetpay.lookup.call_count >= 1
    assert await rows(engine, "SELECT id FROM trades") == []
    assert await rows(engine, "SELECT id FROM ledger_entries") == []
    assert await balance(client, "unlucky") == Decimal("0")


async def test_a_trade_event_for_a_trade_assetpay_does_not_know_moves_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    assetpay.lookup.reply(not_found())
    missing = nudges("missing")
    await feed_server.send("trade", claim("0f8fad5b-d9cb-469f-a165-70867728950e"))
    await eventually(lambda: nudges("missing") > missing and wired.nudges.idle)
    assert await rows(engine, "SELECT id FROM trades") == []
    assert await rows(engine, "SELECT id FROM ledger_entries") == []


async def test_trade_events_without_a_usable_id_are_skipped(
    assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    for body in ({"trade": {}}, {"trade": {"id": "a,b"}}, "not an object", {"trade": {"id": "x" * 200}}):
        await feed_server.send("trade", body)
    await feed_server.send("deposit", {"funding": {"id": "f-1", "status": "completed", "creditedUsd": 12.5}})
    await feed_server.send("withdrawal", {"funding": {"id": "f-2", "status": "pending"}})
    assert wired.nudges.idle
    assert assetpay.lookup.call_count == 0
    assert wired.feed.connected  # bad events cost themselves only


async def test_a_rate_limited_lookup_pauses_the_nudges_for_its_retry_after(
    client: httpx.AsyncClient, engine: AsyncEngine, assetpay: AssetPay, feed_server: FeedServer, wired: Wired
) -> None:
    await register(client, "patient")
    book = Book()
    trade = book.put(status="completed", total="3.00", user_id="patient")
    limited = fail(429, "RATE_LIMITED", message="Too many requests", headers={"Retry-After": "1"})
    assetpay.lookup.reply(limited, book)
    await feed_server.send("trade", claim(trade["id"]))
    await eventually(lambda: assetpay.lookup.call_count == 1 and wired.nudges.idle)
    refused_at = time.monotonic()
    await feed_server.send("trade", claim(trade["id"]))  # nudged again: looked up once the pause is over

    async def credited() -> bool:
        return len(await ledger_of(engine, "patient")) == 1

    await eventually(credited)
    assert time.monotonic() - refused_at >= 0.9
    assert assetpay.lookup.call_count == 2
