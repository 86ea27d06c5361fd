"""Reconciliation passes against the real database, with AssetPay faked at the HTTP boundary (respx, checked against
its OpenAPI document): callbacks and answers dropped on purpose are healed, exactly once, and the books add up."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.services.reconciliation import UNKNOWN_ERROR, VANISHED, Cause, Change, Report, Rules, run_pass
from assetpay_merchant.store.database import Database, create_engine
from tests.assetpay_respx import AssetPay, ledger_of, register, trades_of
from tests.gateway.fake_assetpay import fail, ok
from tests.reconciliation.helpers import Book, backdate, books
from tests.support import auth, balance, deliver_trade, ledger_problems, register_user, trade

NOW = Rules(quiet_for=timedelta(0))
DEPOSIT = {"items": [{"itemId": "730_12345678901", "price": "10.75"}]}


async def reconcile(resources: Resources, rules: Rules = NOW, **options: Any) -> Report:
    return await run_pass(resources.database, resources.assetpay, rules, **options)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def held_deposit(client: httpx.AsyncClient, user_id: str, *, total: str = "100.00", pre: str = "60.00") -> str:
    """A registered user's deposit in hold (pre-credited) whose later callbacks never come; its AssetPay id."""
    steam_id = await register_user(client, user_id)
    payload = trade(status="hold", total=total, pre=pre, user_id=user_id, steam_id=steam_id)
    assert (await deliver_trade(client, payload)).status_code == 200
    assert await balance(client, user_id) == Decimal(pre)
    trade_id: str = payload["id"]
    return trade_id


async def lost_deposit(
    client: httpx.AsyncClient, assetpay: AssetPay, engine: AsyncEngine, user_id: str
) -> dict[str, Any]:
    """A deposit started through POST /v1/deposits whose answer from AssetPay was lost: recorded, unacknowledged."""
    await register(client, user_id)
    assetpay.deposit.reply(httpx.ReadTimeout("read timed out"))
    response = await client.post("/v1/deposits", json=DEPOSIT, headers=auth(user_id))
    assert response.status_code == 504, response.text
    [row] = await trades_of(engine, user_id)
    assert (row["status"], row["assetpay_id"]) == ("initiated", None)
    return row


async def approved_withdrawal(client: httpx.AsyncClient, user_id: str, *, funds: str, price: str) -> str:
    """A funded user's withdrawal that we approved (and debited); its AssetPay id."""
    steam_id = await register_user(client, user_id)
    funding = trade(status="completed", total=funds, pre="0", user_id=user_id, steam_id=steam_id)
    assert (await deliver_trade(client, funding)).status_code == 200
    asked = trade(type="withdraw", status="initiated", total=price, user_id=user_id, steam_id=steam_id)
    response = await deliver_trade(client, asked)
    assert response.status_code == 200, response.text
    assert response.json()["action"] == "approve"
    assert await balance(client, user_id) == Decimal(funds) - Decimal(price)
    trade_id: str = asked["id"]
    return trade_id


async def ours(engine: AsyncEngine, assetpay_id: str) -> dict[str, Any]:
    [row] = [row for row in await trades_of(engine) if row["assetpay_id"] == assetpay_id]
    return row


# -- healing ------------------------------------------------------------------------------------------------------


async def test_a_deposit_whose_answer_was_lost_is_linked_and_settled(
    client: httpx.AsyncClient, assetpay: AssetPay, book: Book, engine: AsyncEngine, resources: Resources
) -> None:
    row = await lost_deposit(client, assetpay, engine, "lost")
    # AssetPay had created it after all, and it has moved on to hold since.
    book.put(
        trade_id="ap-lost", status="hold", total="10.75", pre="6.00", user_id="lost", external_id=row["external_id"]
    )
    book.asked.clear()
    healed = metric("reconciliation_healed_total", cause="assetpay")

    report = await reconcile(resources)

    assert book.asked == [[row["external_id"]]]  # looked up by our externalId: AssetPay's id was never heard
    assert report.changes == [
        Change(row["id"], "ap-lost", "deposit", "initiated", "hold", Decimal("6.00"), Cause.ASSETPAY)
    ]
    assert (report.selected, report.looked_up, report.found, report.missing, report.failures) == (1, 1, 1, 0, 0)
    assert report.clean
    linked = await ours(engine, "ap-lost")
    assert linked["id"] == row["id"]
    assert (linked["status"], linked["posted"]) == ("hold", Decimal("6.00"))
    assert await balance(client, "lost") == Decimal("6.00")
    assert await ledger_problems(engine) == []
    assert metric("reconciliation_healed_total", cause="assetpay") == healed + 1

    before = await books(engine)
    again = await reconcile(resources)
    assert again.changes == []
    assert again.found == 1  # looked up again (by AssetPay's id now), and nothing to do
    assert book.asked[-1] == ["ap-lost"]
    assert await books(engine) == before


async def test_holds_whose_completed_callbacks_never_came_are_completed_in_batches(
    client: httpx.AsyncClient, book: Book, engine: AsyncEngine, resources: Resources
) -> None:
    users = ["h1", "h2", "h3"]
    ids = [await held_deposit(client, user) for user in users]
    for user, trade_id in zip(users, ids, strict=True):
        book.put(trade_id=trade_id, status="completed", total="100.00", user_id=user)

    report = await reconcile(resources, Rules(quiet_for=timedelta(0), batch_size=2))

    assert book.asked == [ids[:2], ids[2:]]  # the longest-quiet first, at most batch_size refs per request
    assert [(c.assetpay_id, c.status_before, c.status_after, c.posted) for c in report.changes] == [
        (trade_id, "hold", "completed", Decimal("40.00")) for trade_id in ids
    ]
    for user in users:
        assert await balance(client, user) == Decimal("100.00")
        assert [entry["kind"] for entry in await ledger_of(engine, user)] == ["pre_credit", "credit"]
    assert await ledger_problems(engine) == []

    before = await books(engine)
    again = await reconcile(resources)
    assert (again.selected, again.changes) == (0, [])  # completed is final: never looked at again
    assert await books(engine) == before


async def test_only_quiet_trades_in_flight_are_looked_up(
    client: httpx.AsyncClient, book: Book, engine: AsyncEngine, resources: Resources
) -> None:
    quiet = await held_deposit(client, "quiet")
    fresh = await held_deposit(client, "fresh")
    steam_id = await register_user(client, "done")
    assert (
        await deliver_trade(client, trade(status="completed", user_id="done", steam_id=steam_id))
    ).status_code == 200
    await backdate(engine, (await ours(engine, quiet))["id"], hours=1)
    book.put(trade_id=quiet, status="hold", total="100.00", pre="60.00", user_id="quiet")

    report = await reconcile(resources, Rules())  # the defaults: untouched for 10 minutes

    assert book.asked == [[quiet]]  # not the fresh one, not the final one
    assert (report.selected, report.changes) == (1, [])
    assert fresh


# -- two passes at once -------------------------------------------------------------------------------------------


async def test_two_passes_at_once_one_does_the_work_and_nothing_is_posted_twice(
    client: httpx.AsyncClient,
    assetpay: AssetPay,
    book: Book,
    engine: AsyncEngine,
    database_url: str,
    resources: Resources,
) -> None:
    trade_id = await held_deposit(client, "twice")
    book.put(trade_id=trade_id, status="completed", total="100.00", user_id="twice")
    one_finished = asyncio.Event()

    async def slow_lookup(request: httpx.Request) -> httpx.Response:
        # Whoever got the lock holds it here until the other pass has finished.
        await asyncio.wait_for(one_finished.wait(), timeout=10)
        return book(request)

    assetpay.lookup.reply(slow_lookup)
    engines = [create_engine(database_url, pool_size=2), create_engine(database_url, pool_size=2)]

    async def one_pass(database: Database) -> Report:
        try:
            return await run_pass(database, resources.assetpay, NOW)
        finally:
            one_finished.set()

    try:
        reports = await asyncio.gather(*(one_pass(Database(each)) for each in engines))
    finally:
        for each in engines:
            await each.dispose()

    skipped = [report for report in reports if report.skipped]
    worked = [report for report in reports if not report.skipped]
    assert len(skipped) == 1
    assert len(worked) == 1
    assert [(c.status_after, c.posted) for c in worked[0].changes] == [("completed", Decimal("40.00"))]
    assert (skipped[0].changes, skipped[0].looked_up) == ([], 0)
    assert assetpay.lookup.call_count == 1
    assert [entry["amount"] for entry in await ledger_of(engine, "twice")] == [Decimal("60.00"), Decimal("40.00")]
    assert await ledger_problems(engine) == []


# -- AssetPay does not know it ------------------------------------------------------------------------------------


async def test_an_approved_withdrawal_assetpay_no_longer_knows_is_failed_and_refunded(
    client: httpx.AsyncClient, book: Book, engine: AsyncEngine, resources: Resources
) -> None:
    trade_id = await approved_withdrawal(client, "gone", funds="50.00", price="20.00")
    row = await ours(engine, trade_id)
    await backdate(engine, row["id"], hours=2)  # older than the ambiguity window (an hour by default)
    healed = metric("reconciliation_healed_total", cause="unknown")

    report = await reconcile(resources, Rules())

    assert book.asked == [[trade_id]]
    assert report.changes == [
        Change(row["id"], trade_id, "withdraw", "initiated", "failed", Decimal("20.00"), Cause.UNKNOWN)
    ]
    assert (report.missing, report.failures) == (1, 0)
    failed = await ours(engine, trade_id)
    assert (failed["status"], failed["posted"], failed["error"]) == ("failed", Decimal(0), UNKNOWN_ERROR)
    assert failed["needs_review"]
    assert VANISHED in failed["review_reason"]
    assert [(e["kind"], e["amount"]) for e in await ledger_of(engine, "gone")] == [
        ("credit", Decimal("50.00")),
        ("debit", Decimal("-20.00")),
        ("refund", Decimal("20.00")),
    ]
    assert await balance(client, "gone") == Decimal("50.00")
    assert await ledger_problems(engine) == []
    assert metric("reconciliation_healed_total", cause="unknown") == healed + 1

    before = await books(engine)
    again = await reconcile(resources, NOW)
    assert (again.selected, again.changes) == (0, [])  # failed is final: never looked at again
    assert await books(engine) == before


async def test_an_unacknowledged_trade_unknown_after_the_window_is_failed_and_a_young_one_left(
    client: httpx.AsyncClient, assetpay: AssetPay, book: Book, engine: AsyncEngine, resources: Resources
) -> None:
    old = await lost_deposit(client, assetpay, engine, "old")
    young = await lost_deposit(client, assetpay, engine, "young")
    await backdate(engine, old["id"], hours=2)
    book.asked.clear()

    report = await reconcile(resources)

    # One batch, then each trade it left out asked about alone before anything is failed.
    assert book.asked == [[old["external_id"], young["external_id"]], [old["external_id"]], [young["external_id"]]]
    assert report.changes == [Change(old["id"], None, "deposit", "initiated", "failed", Decimal(0), Cause.UNKNOWN)]
    assert (report.looked_up, report.found, report.missing) == (2, 0, 2)
    [failed] = await trades_of(engine, "old")
    assert (failed["status"], failed["error"], failed["posted"]) == ("failed", UNKNOWN_ERROR, Decimal(0))
    [left] = await trades_of(engine, "young")
    assert (left["status"], left["assetpay_id"]) == ("initiated", None)
    assert await ledger_of(engine, "old") == []
    assert await ledger_problems(engine) == []


async def test_a_trade_the_batch_left_out_but_assetpay_knows_is_applied_not_failed(
    client: httpx.AsyncClient, assetpay: AssetPay, book: Book, engine: AsyncEngine, resources: Resources
) -> None:
    known = await held_deposit(client, "known")
    shy = await held_deposit(client, "shy")
    for user, trade_id in (("known", known), ("shy", shy)):
        await backdate(engine, (await ours(engine, trade_id))["id"], hours=2)
        book.put(trade_id=trade_id, status="completed", total="100.00", user_id=user)

    def forgetful(request: httpx.Request) -> httpx.Response:
        answer = book(request)
        if "," in request.url.path:  # the batch leaves one out; asked alone, AssetPay knows it
            return ok([t for t in book.trades.values() if t["id"] == known])
        return answer

    assetpay.lookup.reply(forgetful)
    report = await reconcile(resources)
    assert sorted(c.assetpay_id or "" for c in report.changes) == sorted([known, shy])
    assert {c.status_after for c in report.changes} == {"completed"}
    assert await ledger_problems(engine) == []


# -- failures -----------------------------------------------------------------------------------------------------


async def test_a_rate_limit_stops_the_pass_cleanly_and_the_next_one_carries_on(
    client: httpx.AsyncClient, assetpay: AssetPay, book: Book, engine: AsyncEngine, resources: Resources
) -> None:
    users = ["r1", "r2", "r3"]
    ids = [await held_deposit(client, user) for user in users]
    for user, trade_id in zip(users, ids, strict=True):
        book.put(trade_id=trade_id, status="completed", total="100.00", user_id=user)
    limited = fail(429, "RATE_LIMITED", headers={"retry-after": "30"})
    assetpay.lookup.reply(book, limited)
    failures = metric("reconciliation_failures_total", reason="assetpay_error")
    rules = Rules(quiet_for=timedelta(0), batch_size=2)

    report = await reconcile(resources, rules)

    assert report.stopped == "RATE_LIMITED"
    assert (report.failures, report.looked_up) == (1, 2)
    assert not report.clean
    assert [c.assetpay_id for c in report.changes] == ids[:2]
    assert assetpay.lookup.call_count == 2  # a 429 is never retried
    assert [(await ours(engine, t))["status"] for t in ids] == ["completed", "completed", "hold"]
    assert await ledger_problems(engine) == []
    assert metric("reconciliation_failures_total", reason="assetpay_error") == failures + 1

    assetpay.lookup.reply(book)
    carried_on = await reconcile(resources, rules)
    assert carried_on.clean
    assert [c.assetpay_id for c in carried_on.changes] == ids[2:]
    assert await balance(client, "r3") == Decimal("100.00")
    assert await ledger_problems(engine) == []


async def test_a_snapshot_that_does_not_validate_is_counted_and_the_others_applied(
    client: httpx.AsyncClient, book: Book, engine: AsyncEngine, resources: Resources
) -> None:
    bad = await held_deposit(client, "bad")
    good = await held_deposit(client, "good")
    broken = book.put(trade_id=bad, status="completed", total="100.00", user_id="bad")
    broken["preCredit"], broken["pendingCredit"] = Decimal("150.00"), Decimal("0")  # does not add up
    book.put(trade_id=good, status="completed", total="100.00", user_id="good")
    failures = metric("reconciliation_failures_total", reason="invalid_snapshot")

    report = await reconcile(resources)

    assert report.failures == 1
    assert [c.assetpay_id for c in report.changes] == [good]
    assert (await ours(engine, bad))["status"] == "hold"
    assert (await ours(engine, good))["status"] == "completed"
    assert await ledger_problems(engine) == []
    assert metric("reconciliation_failures_total", reason="invalid_snapshot") == failures + 1


# -- dry run ------------------------------------------------------------------------------------------------------


async def test_a_dry_run_reports_what_a_pass_would_change_and_changes_nothing(
    client: httpx.AsyncClient, assetpay: AssetPay, book: Book, engine: AsyncEngine, resources: Resources
) -> None:
    held = await held_deposit(client, "dry-held")
    book.put(trade_id=held, status="completed", total="100.00", user_id="dry-held")
    gone = await approved_withdrawal(client, "dry-gone", funds="50.00", price="20.00")
    await backdate(engine, (await ours(engine, gone))["id"], hours=2)
    lost = await lost_deposit(client, assetpay, engine, "dry-lost")
    book.put(
        trade_id="ap-dry", status="hold", total="10.75", pre="6.00", user_id="dry-lost", external_id=lost["external_id"]
    )
    before = await books(engine)

    preview = await reconcile(resources, dry_run=True)

    assert preview.dry_run
    assert await books(engine) == before
    by_trade = {c.assetpay_id: (c.status_before, c.status_after, c.posted, c.cause) for c in preview.changes}
    assert by_trade == {
        held: ("hold", "completed", Decimal("40.00"), Cause.ASSETPAY),
        gone: ("initiated", "failed", Decimal("20.00"), Cause.UNKNOWN),
        "ap-dry": ("initiated", "hold", Decimal("6.00"), Cause.ASSETPAY),
    }
    assert "would change 3" in preview.summary()

    applied = await reconcile(resources)
    assert sorted(applied.changes, key=str) == sorted(preview.changes, key=str)
    assert await ledger_problems(engine) == []
