"""`assetpay-merchant admin ...` and `webhooks ...`: the same services as the admin API, on DATABASE_URL, printing
aligned tables or (`--json`) what the API answers; exit 1 when a rule refuses, 2 for bad input or an unknown id."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant import cli
from tests.admin.helpers import ACTOR, adjust, assert_books_balance, available, books, funded, ops, our_trade_id
from tests.support import deliver, deliver_trade, dumps, trade
from tests.webhooks.helpers import rows


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[str]:
    """DATABASE_URL pointing at the test database; the root logger put back as it was after the command ran."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ENVIRONMENT", "test")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield database_url
    root.handlers[:] = handlers
    root.setLevel(level)


class Ran:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def run(cli_env: str, capsys: pytest.CaptureFixture[str]) -> Any:
    async def command(*argv: str) -> Ran:
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, list(argv))  # it runs its own event loop
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return command


async def api(client: httpx.AsyncClient, path: str) -> Any:
    response = await client.get(path, headers=ops())
    assert response.status_code == 200, response.text
    return response.json()


async def flagged(client: httpx.AsyncClient, user_id: str) -> dict[str, Any]:
    deposit = await funded(client, user_id, "40.00")
    assert (await deliver_trade(client, {**deposit, "status": "reverted"})).status_code == 200
    return deposit


# -- admin trades, trade, resolve -----------------------------------------------------------------------------------


async def test_admin_trades_review_prints_the_queue_with_reasons(client: httpx.AsyncClient, run: Any) -> None:
    conflicted = await flagged(client, "u1")
    await funded(client, "u2", "5.00")
    done = await run("admin", "trades", "--review")
    assert done.code == 0, done.err
    header, *lines = done.out.splitlines()
    assert header.split() == ["CREATED", "TRADE", "USER", "TYPE", "STATUS", "TOTAL", "CREDITED", "REVIEW"]
    [row] = [line for line in lines if "u1" in line]
    assert "deposit  completed" in row
    assert row.rstrip().endswith("received reverted after final status completed")
    assert "u2" not in done.out
    assert "1 trade(s)" in done.out

    as_json = await run("admin", "trades", "--review", "--json")
    assert as_json.json() == {
        "trades": (await api(client, "/v1/admin/trades?needsReview=true"))["trades"],
        "more": False,
    }
    assert as_json.json()["trades"][0]["assetpayId"] == conflicted["id"]


async def test_admin_trades_filters_and_limit(client: httpx.AsyncClient, run: Any) -> None:
    await funded(client, "u1", "5.00")
    await funded(client, "u2", "6.00")
    assert (await deliver_trade(client, trade(status="hold", total="7.00", user_id="u2"))).status_code == 200

    def users_of(ran: Ran) -> list[str | None]:
        return [t["userId"] for t in ran.json()["trades"]]

    assert users_of(await run("admin", "trades", "--user", "u2", "--json")) == ["u2", "u2"]
    assert [t["status"] for t in (await run("admin", "trades", "--status", "hold", "--json")).json()["trades"]] == [
        "hold"
    ]
    assert (await run("admin", "trades", "--type", "withdraw", "--json")).json()["trades"] == []
    limited = await run("admin", "trades", "--limit", "2", "--json")
    assert len(limited.json()["trades"]) == 2
    assert limited.json()["more"] is True
    assert "raise --limit" in (await run("admin", "trades", "--limit", "1")).out
    with pytest.raises(SystemExit) as refused:
        await run("admin", "trades", "--limit", "0")
    assert refused.value.code == 2


async def test_admin_resolve_keeps_the_note_and_refuses_twice(
    client: httpx.AsyncClient, engine: AsyncEngine, run: Any
) -> None:
    deposit = await flagged(client, "u1")
    trade_id = await our_trade_id(engine, deposit["id"])
    done = await run("admin", "resolve", trade_id, "--note", "Looked into it: completed stands", "--actor", "carol")
    assert done.code == 0, done.err
    assert f"resolved trade {trade_id}" in done.out
    assert "history:" in done.out
    assert "carol" in done.out
    assert "Looked into it: completed stands" in done.out
    shown = await api(client, f"/v1/admin/trades/{trade_id}")
    assert [(h["actor"], h["note"]) for h in shown["history"]] == [("carol", "Looked into it: completed stands")]
    assert (await run("admin", "trade", trade_id, "--json")).json() == shown

    again = await run("admin", "resolve", trade_id, "--note", "again", "--actor", "carol")
    assert again.code == 1
    assert "TRADE_NOT_IN_REVIEW" in again.err
    unknown = await run("admin", "resolve", str(uuid.uuid4()), "--note", "x", "--actor", "carol")
    assert unknown.code == 2
    assert "TRADE_NOT_FOUND" in unknown.err
    blank = await run("admin", "resolve", trade_id, "--note", "  ", "--actor", "carol")
    assert blank.code == 2
    assert "note" in blank.err
    with pytest.raises(SystemExit) as refused:
        await run("admin", "resolve", "not-a-uuid", "--note", "x", "--actor", "carol")
    assert refused.value.code == 2
    assert len(await rows(engine, "SELECT * FROM trade_history")) == 1


# -- admin adjust -------------------------------------------------------------------------------------------------


async def test_admin_adjust_posts_once_per_key_and_refuses_a_debt(
    client: httpx.AsyncClient, engine: AsyncEngine, run: Any
) -> None:
    await funded(client, "u1", "10.00")
    done = await run(
        "admin", "adjust", "u1", "25.00", "--reason", "goodwill", "--actor", "dave", "--idempotency-key", "k1"
    )
    assert done.code == 0, done.err
    assert "posted: adjustment" in done.out
    assert "+25.00 to u1, balance now 35.00" in done.out
    again = await run(
        "admin", "adjust", "u1", "25", "--reason", "goodwill", "--actor", "dave", "--idempotency-key", "k1"
    )
    assert again.code == 0
    assert "already posted with this idempotency key" in again.out
    assert await available(engine, "u1") == Decimal("35.00")

    before = await books(engine)
    reused = await run(
        "admin", "adjust", "u1", "26.00", "--reason", "goodwill", "--actor", "dave", "--idempotency-key", "k1"
    )
    assert reused.code == 1
    assert "IDEMPOTENCY_KEY_REUSED" in reused.err
    debt = await run("admin", "adjust", "u1", "-35.01", "--reason", "chargeback", "--actor", "dave")
    assert debt.code == 1
    assert "DEBT_NOT_ALLOWED" in debt.err
    assert await books(engine) == before

    allowed = await run(
        "admin", "adjust", "u1", "-35.01", "--reason", "chargeback", "--actor", "dave", "--allow-debt", "--json"
    )
    assert allowed.code == 0, allowed.err
    assert allowed.json()["balanceAfter"] == "-0.01"
    assert allowed.json()["kind"] == "adjustment"
    assert allowed.json()["actor"] == "dave"
    await assert_books_balance(engine)


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["u1", "1.234", "--reason", "r", "--actor", "dave"], "amount"),
        (["u1", "0", "--reason", "r", "--actor", "dave"], "amount"),
        (["u1", "1e3", "--reason", "r", "--actor", "dave"], "amount"),
        (["u1", "1000000", "--reason", "r", "--actor", "dave"], "amount"),
        (["u1", "5", "--reason", "   ", "--actor", "dave"], "reason"),
        (["u1", "5", "--reason", "r", "--actor", "two words"], "actor"),
        (["u1", "5", "--reason", "r", "--actor", "dave", "--idempotency-key", "k" * 256], "Idempotency-Key"),
        (["nobody", "5", "--reason", "r", "--actor", "dave"], "USER_NOT_FOUND"),
    ],
)
async def test_admin_adjust_refuses_bad_input_with_exit_2_and_moves_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, run: Any, argv: list[str], field: str
) -> None:
    await funded(client, "u1", "10.00")
    before = await books(engine)
    done = await run("admin", "adjust", *argv)
    assert done.code == 2
    assert field in done.err
    assert done.out == ""
    assert await books(engine) == before


async def test_the_cli_and_the_api_share_idempotency_keys(
    client: httpx.AsyncClient, engine: AsyncEngine, run: Any
) -> None:
    await funded(client, "u1", "10.00")
    response = await adjust(client, {"userId": "u1", "amount": "3.00", "reason": "promo"}, key="shared")
    assert response.status_code == 201
    done = await run(
        "admin", "adjust", "u1", "3.00", "--reason", "promo", "--actor", ACTOR, "--idempotency-key", "shared", "--json"
    )
    assert done.code == 0, done.err
    assert done.json() == response.json()
    assert await available(engine, "u1") == Decimal("13.00")


# -- admin exposure, user -------------------------------------------------------------------------------------------


async def test_admin_exposure_and_user_print_what_the_api_answers(client: httpx.AsyncClient, run: Any) -> None:
    await funded(client, "u1", "10.00")
    held = trade(status="hold", total="50.00", pre="30.00", user_id="u1", holdEndDate="2026-12-24T12:00:00Z")
    assert (await deliver_trade(client, held)).status_code == 200
    assert (
        await adjust(client, {"userId": "u1", "amount": "-45.00", "reason": "r", "allowDebt": True})
    ).status_code == 201

    shown = await run("admin", "exposure")
    assert shown.code == 0, shown.err
    assert "preCredit in hold: 30.00 USD on 1 deposit(s)" in shown.out
    assert "2026-12-24" in shown.out
    assert "debts: 1 user(s) owe 5.00 USD" in shown.out
    assert (await run("admin", "exposure", "--json")).json() == await api(client, "/v1/admin/exposure")

    user = await run("admin", "user", "u1")
    assert user.code == 0, user.err
    assert "balance: available -5.00, pending 20.00 USD" in user.out
    assert "adjustment" in user.out
    assert (await run("admin", "user", "u1", "--json")).json() == await api(client, "/v1/admin/users/u1")
    unknown = await run("admin", "user", "nobody")
    assert unknown.code == 2
    assert "USER_NOT_FOUND" in unknown.err


# -- webhooks list, replay ------------------------------------------------------------------------------------------


async def test_webhooks_list_outcome_invalid_shows_the_refused_ones(client: httpx.AsyncClient, run: Any) -> None:
    deposit = await funded(client, "u1", "10.00")
    bad = {"trade": {**deposit, "totalPrice": "-1"}}
    assert (await deliver(client, bad, delivery_id="dlv-bad")).status_code == 422
    assert (await deliver_trade(client, {**deposit, "status": "completed"}, delivery_id="dlv-dup")).status_code == 200

    everything = await run("webhooks", "list", "--json")
    assert {d["deliveryId"] for d in everything.json()["deliveries"]} >= {"dlv-bad", "dlv-dup"}
    refused = await run("webhooks", "list", "--outcome", "invalid")
    assert refused.code == 0
    header, *lines = refused.out.strip().splitlines()[:-2]
    assert header.split() == ["RECEIVED", "DELIVERY", "KIND", "OUTCOME", "SUBJECT", "TRADE", "DETAIL"]
    assert len(lines) == 1
    assert "dlv-bad" in lines[0]
    assert "invalid" in lines[0]
    assert "1 delivery" in refused.out
    [stored] = (await run("webhooks", "list", "--outcome", "invalid", "--json")).json()["deliveries"]
    assert json.loads(stored["rawBody"])["trade"]["totalPrice"] == "-1"


async def test_webhooks_replay_of_applied_callbacks_changes_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, run: Any
) -> None:
    await funded(client, "u1", "100.00")
    held = trade(status="hold", total="50.00", pre="30.00", user_id="u1")
    assert (await deliver_trade(client, held, delivery_id="dlv-hold")).status_code == 200
    approval = trade(type="withdraw", status="initiated", total="20.00", user_id="u1")
    assert (await deliver_trade(client, approval, delivery_id="dlv-ask")).json() == {"action": "approve"}
    before = await books(engine)

    done = await run("webhooks", "replay", "dlv-hold")
    assert done.code == 0, done.err
    assert "delivery dlv-hold (trade, recorded outcome created): replayed, outcome same" in done.out
    assert "nothing posted" in done.out
    asked = await run("webhooks", "replay", "dlv-ask", "--json")
    assert asked.code == 0, asked.err
    assert asked.json()["answer"] == {"action": "approve"}
    assert asked.json()["posted"] is None  # the stored verdict stands; no second debit
    assert await books(engine) == before
    assert await available(engine, "u1") == Decimal("110.00")
    await assert_books_balance(engine)


async def test_webhooks_replay_applies_a_refused_callback_once_it_reads(
    client: httpx.AsyncClient, engine: AsyncEngine, run: Any
) -> None:
    await funded(client, "u1", "10.00")
    held = trade(status="hold", total="50.00", pre="30.00", user_id="u1")
    bad = {"trade": {**held, "preCredit": "31.00"}}  # preCredit + pendingCredit != totalPrice: refused
    assert (await deliver(client, bad, delivery_id="dlv-fixed")).status_code == 422
    before = await books(engine)
    still = await run("webhooks", "replay", "dlv-fixed")
    assert still.code == 1
    assert "still does not validate, nothing changed" in still.out
    assert await books(engine) == before

    # As if our reading of it had been fixed: the stored body is one we now accept.
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE webhook_deliveries SET raw_body = :b WHERE delivery_id = 'dlv-fixed'"),
            {"b": dumps({"trade": held}).decode()},
        )
    done = await run("webhooks", "replay", "dlv-fixed", "--json")
    assert done.code == 0, done.err
    assert done.json()["recordedOutcome"] == "invalid"
    assert done.json()["outcome"] == "created"
    assert done.json()["posted"]["amount"] == "30.00"
    assert await available(engine, "u1") == Decimal("40.00")
    [row] = await rows(engine, "SELECT outcome, trade_id FROM webhook_deliveries WHERE delivery_id = 'dlv-fixed'")
    assert row["outcome"] == "created"
    assert str(row["trade_id"]) == done.json()["trade"]["id"]
    # And replaying it again is harmless.
    after = await books(engine)
    again = await run("webhooks", "replay", "dlv-fixed", "--json")
    assert (again.code, again.json()["outcome"], again.json()["posted"]) == (0, "same", None)
    assert await books(engine) == after
    await assert_books_balance(engine)


async def test_webhooks_replay_of_an_unknown_id_is_exit_2(run: Any) -> None:
    done = await run("webhooks", "replay", "dlv-never-seen")
    assert done.code == 2
    assert "DELIVERY_NOT_FOUND" in done.err
    assert "dlv-never-seen" in done.err
