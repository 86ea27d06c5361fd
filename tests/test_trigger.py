"""`assetpay-merchant trigger`: every scenario played at the real app, its printed answers, the balance it reads
back, the ledger it leaves; and the command itself, against a real `serve` process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant import cli
from assetpay_sandbox.catalog import RUST
from assetpay_sandbox.trigger import (
    SCENARIOS,
    STORM_COPIES,
    JsonPrinter,
    Printer,
    Report,
    Target,
    TextPrinter,
    steam_profile,
    trigger,
)
from tests.processes import CLI, SECRETS, clean_env, free_port, serve_process
from tests.support import ADMIN_KEY, JWT_SECRET, WEBHOOK_SECRET, balance, ledger_problems
from tests.webhooks.helpers import entries, funded_user, rows, trade_row

TARGET = Target(secret=WEBHOOK_SECRET, admin_key=ADMIN_KEY, jwt_secret=JWT_SECRET, url="http://backend.test")
ROW = re.compile(r"^\s*(\d+)  (\S+)\s+([0-9a-f]{8})  ([0-9a-f]{8})\s+(\d{3}|-)  (\S+?):?(?:\s|$)")
FUNDING = [("deposit.active", "received"), ("deposit.hold", "received"), ("deposit.completed", "received")]
WITHDRAWAL_PATH = [
    ("withdraw.pending", "received"),
    ("withdraw.active", "received"),
    ("withdraw.hold", "received"),
    ("withdraw.completed", "received"),
]


async def play(
    app: FastAPI, name: str, *, target: Target = TARGET, json_lines: bool = False, user_id: str | None = None
) -> tuple[Report, str]:
    """Run the scenario at the in-process app; returns the report and what it printed."""
    out = io.StringIO()
    printer: Printer = JsonPrinter(out) if json_lines else TextPrinter(out)
    report = await trigger(name, target, user_id=user_id, transport=httpx.ASGITransport(app=app), printer=printer)
    return report, out.getvalue()


def printed_answers(output: str) -> list[tuple[str, str]]:
    """(event, answer) of every delivery line of the table, in order."""
    return [(match[2], match[6]) for line in output.splitlines() if (match := ROW.match(line))]


async def assert_books(engine: AsyncEngine, report: Report, client: httpx.AsyncClient) -> None:
    """The balance the command read back is the API's, and `ledger check` finds nothing wrong."""
    assert report.ok, report.problems
    assert report.after == report.expected
    assert await balance(client, report.user_id) == report.after
    assert await ledger_problems(engine) == []


async def test_deposit_instant_credits_precredit_at_hold_and_the_rest_at_completed(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    report, output = await play(app, "deposit-instant")
    deposit = report.trades["deposit"]
    assert printed_answers(output) == FUNDING
    assert Decimal(0) < deposit.pre_credit < deposit.total_price  # a new user's instant credit covers part of it
    assert await entries(engine, report.user_id) == [
        (deposit.pre_credit, "pre_credit"),
        (deposit.total_price - deposit.pre_credit, "credit"),
    ]
    assert report.before == 0
    assert report.after == deposit.total_price
    assert f"balance {deposit.total_price} (was 0.00, expected {deposit.total_price})  ok" in output
    assert "PASS deposit-instant: 3 deliveries answered as expected" in output
    row = await trade_row(engine, deposit.id)
    assert row is not None
    assert row["user_id"] == report.user_id
    assert row["status"] == "completed"
    await assert_books(engine, report, client)


async def test_deposit_rust_is_credited_in_full_at_completed(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    report, output = await play(app, "deposit-rust")
    deposit = report.trades["deposit"]
    assert deposit.game == RUST
    assert printed_answers(output) == [("deposit.active", "received"), ("deposit.completed", "received")]
    assert await entries(engine, report.user_id) == [(deposit.total_price, "credit")]
    await assert_books(engine, report, client)


async def test_deposit_reverted_after_spend_leaves_a_debt(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    report, output = await play(app, "deposit-reverted-after-spend")
    deposit, withdrawal = report.trades["deposit"], report.trades["withdrawal"]
    assert printed_answers(output) == [
        *FUNDING[:2],
        ("withdraw.initiated", "approve"),
        *WITHDRAWAL_PATH,
        ("deposit.reverted", "received"),
    ]
    assert Decimal(0) < withdrawal.total_price <= deposit.pre_credit  # it spent (part of) the instant credit
    assert await entries(engine, report.user_id) == [
        (deposit.pre_credit, "pre_credit"),
        (-withdrawal.total_price, "debit"),
        (-deposit.pre_credit, "reversal"),
    ]
    assert report.after == -withdrawal.total_price  # negative, never clipped
    assert report.after < 0
    await assert_books(engine, report, client)


async def test_withdrawal_approved_debits_once_and_completes(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    report, output = await play(app, "withdrawal-approved")
    funding, withdrawal = report.trades["funding"], report.trades["withdrawal"]
    assert printed_answers(output) == [*FUNDING, ("withdraw.initiated", "approve"), *WITHDRAWAL_PATH]
    assert funding.pre_credit == 0  # funded without instant credit: all of it at completed
    assert await entries(engine, report.user_id) == [
        (funding.total_price, "credit"),
        (-withdrawal.total_price, "debit"),
    ]
    assert report.after == funding.total_price - withdrawal.total_price
    await assert_books(engine, report, client)


async def test_withdrawal_rejected_for_more_than_the_balance(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    report, output = await play(app, "withdrawal-rejected")
    funding, withdrawal = report.trades["funding"], report.trades["withdrawal"]
    assert printed_answers(output) == [*FUNDING, ("withdraw.initiated", "reject"), ("withdraw.failed", "received")]
    assert withdrawal.total_price > funding.total_price
    assert "reject: insufficient balance" in output
    assert "error MERCHANT_REJECTED" in output
    assert await entries(engine, report.user_id) == [(funding.total_price, "credit")]
    row = await trade_row(engine, withdrawal.id)
    assert row is not None
    assert row["status"] == "failed"
    await assert_books(engine, report, client)


async def test_withdrawal_partly_failed_refunds_the_failed_item(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    report, output = await play(app, "withdrawal-partly-failed")
    funding, withdrawal = report.trades["funding"], report.trades["withdrawal"]
    failed = [item for item in withdrawal.items if item.status == "failed"]
    delivered = [item for item in withdrawal.items if item.status == "completed"]
    assert len(failed) == 1
    assert len(delivered) == 2
    assert (
        printed_answers(output)
        == [
            *FUNDING,
            ("withdraw.initiated", "approve"),
            ("withdraw.pending", "received"),
            ("withdraw.pending", "received"),  # the same status, one item failed
            *WITHDRAWAL_PATH[1:],
        ]
    )
    assert "1 of 3 item(s) failed (PURCHASE_FAILED)" in output
    assert await entries(engine, report.user_id) == [
        (funding.total_price, "credit"),
        (-withdrawal.total_price, "debit"),
        (failed[0].price, "refund"),
    ]
    assert report.after == funding.total_price - sum(item.price for item in delivered)
    await assert_books(engine, report, client)


async def test_duplicate_storm_moves_the_balance_exactly_once(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    report, output = await play(app, "duplicate-storm")
    deposit, withdrawal = report.trades["deposit"], report.trades["withdrawal"]
    assert len(report.outcomes) == (3 + 1 + 4) * STORM_COPIES
    approvals = [o for o in report.outcomes if o.delivery.approval]
    assert [o.answer for o in approvals] == ["approve"] * STORM_COPIES
    assert len({o.delivery.delivery_id for o in approvals}) == STORM_COPIES  # a new id per attempt
    events = [o for o in report.outcomes if not o.delivery.approval]
    assert len({o.delivery.delivery_id for o in events}) == 7
    assert sum(o.answer == "received" for o in events) == 7  # one copy of each applied
    assert sum(o.answer == "duplicate" for o in events) == 7 * (STORM_COPIES - 1)
    assert "7 deliveries sent more than once: 49 copies answered duplicate, each applied once" in output

    found = await rows(
        engine,
        "SELECT e.amount, e.kind, t.assetpay_id FROM ledger_entries e JOIN trades t ON t.id = e.trade_id "
        "WHERE e.user_id = :u ORDER BY e.id",
        u=report.user_id,
    )
    on_deposit = [(r["amount"], r["kind"]) for r in found if r["assetpay_id"] == deposit.id]
    on_withdrawal = [(r["amount"], r["kind"]) for r in found if r["assetpay_id"] == withdrawal.id]
    assert sum(amount for amount, _ in on_deposit) == deposit.total_price  # whatever order hold/completed came in
    assert {kind for _, kind in on_deposit} <= {"pre_credit", "credit"}
    assert on_withdrawal == [(-withdrawal.total_price, "debit")]  # eight asks, one debit
    assert report.after == deposit.total_price - withdrawal.total_price
    await assert_books(engine, report, client)


async def test_an_existing_user_keeps_their_profile_and_balance(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    steam_id = await funded_user(client, "regular", "10.00")
    report, output = await play(app, "deposit-instant", user_id="regular")
    assert report.steam_id == steam_id
    assert report.registered == 200  # updated with the profile it had
    assert report.before == Decimal("10.00")
    assert report.after == Decimal("10.00") + report.trades["deposit"].total_price
    assert "user regular (Steam " + steam_id + "): updated (200), balance 10.00" in output
    await assert_books(engine, report, client)


async def test_json_lines_one_object_per_step(app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    report, output = await play(app, "withdrawal-rejected", json_lines=True)
    lines = [json.loads(line) for line in output.splitlines()]
    assert [line["type"] for line in lines] == ["start"] + ["delivery"] * 5 + ["result"]
    start, *steps, result = lines
    assert start["userId"] == report.user_id
    assert start["balanceBefore"] == "0.00"
    assert [step["step"] for step in steps] == [1, 2, 3, 4, 5]
    assert steps[3]["approval"] is True
    assert steps[3]["httpStatus"] == 200
    assert steps[3]["answer"] == "reject"
    assert steps[3]["response"] == {"action": "reject", "reason": "insufficient balance"}
    assert all(step["ok"] for step in steps)
    assert result["ok"] is True
    assert result["balance"] == {
        "before": "0.00",
        "after": str(report.trades["funding"].total_price),
        "expected": str(report.trades["funding"].total_price),
    }
    await assert_books(engine, report, client)


async def test_a_wrong_secret_is_reported_as_the_backends_401s(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    wrong = Target(secret=b"not-the-callback-secret", admin_key=ADMIN_KEY, jwt_secret=JWT_SECRET, url=TARGET.url)
    report, output = await play(app, "deposit-instant", target=wrong)
    assert not report.ok
    assert [(o.http_status, o.answer) for o in report.outcomes] == [(401, "SIGNATURE_MISMATCH")] * 3
    assert printed_answers(output) == [(event, "SIGNATURE_MISMATCH") for event, _ in FUNDING]
    assert "<< expected received" in output
    assert "MISMATCH" in output.splitlines()[-3]
    assert output.splitlines()[-1].startswith("FAIL deposit-instant: 3 of 3 deliveries answered unexpectedly")
    assert report.after == 0
    assert await entries(engine, report.user_id) == []


def careless_backend(request: httpx.Request) -> httpx.Response:
    """A backend that acknowledges every callback with a bare 200: AssetPay reads that as approving everything."""
    if request.url.path == "/v1/me":
        return httpx.Response(404, json={"error": {"key": "USER_NOT_FOUND", "message": "unknown"}})
    if request.method == "PUT":
        return httpx.Response(201, json={})
    if request.url.path == "/v1/balance":
        return httpx.Response(200, json={"available": "0.00", "pending": "0.00", "currency": "USD"})
    return httpx.Response(200, json={"received": True})


async def test_a_backend_that_approves_blindly_fails_and_the_scenario_stops() -> None:
    out = io.StringIO()
    report = await trigger(
        "withdrawal-rejected", TARGET, transport=httpx.MockTransport(careless_backend), printer=TextPrinter(out)
    )
    assert not report.ok
    ask = report.outcomes[-1]
    assert ask.delivery.approval
    assert ask.answer == "approve"
    assert ask.detail == "a 2xx without an explicit action"
    assert len(report.outcomes) == 4  # the gateway's `failed` is never sent: AssetPay would have bought the items
    assert report.problems[0].startswith("stopped at step 4: the backend answered approve to the approval ask")
    assert "<< expected reject" in out.getvalue()


def test_steam_profiles_are_valid_and_stable() -> None:
    steam_id, trade_url = steam_profile("u-42")
    assert steam_profile("u-42") == (steam_id, trade_url)
    assert steam_profile("u-43")[0] != steam_id
    assert re.fullmatch(r"76561\d{12}", steam_id)
    partner = int(steam_id) - 76561197960265728
    assert re.fullmatch(
        rf"https://steamcommunity\.com/tradeoffer/new/\?partner={partner}&token=[A-Za-z0-9_-]{{8}}", trade_url
    )


# -- the command ----------------------------------------------------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[None]:
    """`cli.main` configures logging; put the root logger back as it was for the tests that follow."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logger")
def test_list_names_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trigger", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(SCENARIOS)
    assert all(len(line.split()) > 3 for line in lines)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trigger", "no-such-scenario"], "unknown scenario 'no-such-scenario'; known scenarios: deposit-instant,"),
        (["trigger"], "name a scenario"),
        (["trigger", "deposit-instant", "--url", "127.0.0.1:8000"], "--url must be an http:// or https://"),
        (["trigger", "deposit-instant", "--user", "has spaces"], "--user must match"),
    ],
)
@pytest.mark.usefixtures("root_logger")
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


@pytest.mark.usefixtures("root_logger")
def test_an_unreachable_backend_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["trigger", "deposit-instant", "--url", url]) == 1
    assert f"FAIL: cannot reach the backend at {url}" in capsys.readouterr().out


def run_trigger(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real console script, in a process of its own."""
    return subprocess.run(  # noqa: S603
        [str(CLI), "trigger", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


async def test_the_console_script_against_a_real_serve_process(
    database_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    # The secrets come from the environment, as they would next to a configured backend.
    env = clean_env(**SECRETS)
    with serve_process(database_url, tmp_path) as address:
        url = f"http://{address}"
        good = await asyncio.to_thread(
            run_trigger, "withdrawal-partly-failed", "--url", url, "--user", "served-1", env=env, cwd=tmp_path
        )
        wrong = await asyncio.to_thread(
            run_trigger, "deposit-instant", "--url", url, "--secret", "wrong", "--json", env=env, cwd=tmp_path
        )

    assert good.returncode == 0, good.stdout + good.stderr
    assert printed_answers(good.stdout)[3] == ("withdraw.initiated", "approve")
    assert len(printed_answers(good.stdout)) == 9
    assert "PASS withdrawal-partly-failed" in good.stdout
    assert good.stderr == ""  # no request logs in the way
    kinds = [kind for _, kind in await entries(engine, "served-1")]
    assert kinds == ["credit", "debit", "refund"]
    assert await ledger_problems(engine) == []

    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    lines: list[dict[str, Any]] = [json.loads(line) for line in wrong.stdout.splitlines()]
    deliveries = [line for line in lines if line["type"] == "delivery"]
    assert [(d["httpStatus"], d["answer"], d["ok"]) for d in deliveries] == [(401, "SIGNATURE_MISMATCH", False)] * 3
    assert lines[-1]["type"] == "result"
    assert lines[-1]["ok"] is False
