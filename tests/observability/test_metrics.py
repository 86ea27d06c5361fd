"""The metrics ops alert on: approvals by verdict and reason, approval latency, the ledger check, exposure and the
review queue."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.core import policy
from assetpay_merchant.observability import approval_reason
from assetpay_merchant.services import monitoring
from assetpay_merchant.services.intake import CRYPTO_UNSUPPORTED
from assetpay_merchant.store.ledger import CHECK_LOCK_KEY
from tests.support import deliver, deliver_trade, register_user, trade


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("verdict", "label"),
    [
        (
            policy.approval_verdict(user_known=False, charge=Decimal(5), authorised=None, available=Decimal(9)),
            "unknown_user",
        ),
        (
            policy.approval_verdict(user_known=True, charge=Decimal(0), authorised=None, available=Decimal(9)),
            "no_price",
        ),
        (
            policy.approval_verdict(user_known=True, charge=Decimal(5), authorised=Decimal(4), available=Decimal(9)),
            "over_authorised",
        ),
        (
            policy.approval_verdict(user_known=True, charge=Decimal(5), authorised=None, available=Decimal(1)),
            "insufficient_balance",
        ),
        (policy.approval_verdict(user_known=True, charge=Decimal(5), authorised=None, available=Decimal(9)), "none"),
        (policy.Verdict.reject(CRYPTO_UNSUPPORTED), "crypto_unsupported"),
    ],
)
def test_every_verdict_reason_has_a_bounded_label(verdict: policy.Verdict, label: str) -> None:
    assert approval_reason(verdict.reason) == label


def test_a_reason_nobody_mapped_is_other_never_its_text() -> None:
    assert approval_reason("price 12.34 something new") == "over_authorised"
    assert approval_reason("a brand new reason for 12.34") == "other"


async def _funded(client: httpx.AsyncClient, user_id: str, amount: str) -> str:
    steam = await register_user(client, user_id)
    credited = await deliver_trade(client, trade(status="completed", total=amount, user_id=user_id, steam_id=steam))
    assert credited.status_code == 200, credited.text
    return steam


async def test_approvals_are_counted_once_per_decision_and_every_answer_is_timed(client: httpx.AsyncClient) -> None:
    steam = await _funded(client, "u-approvals", "50.00")
    approved_before = sample("approvals_total", verdict="approve", reason="none")
    rejected_before = sample("approvals_total", verdict="reject", reason="insufficient_balance")
    timed_before = sample("approval_seconds_count", verdict="approve")
    ask = trade(type="withdraw", status="initiated", total="30.00", user_id="u-approvals", steam_id=steam)
    for _ in range(2):  # AssetPay asks again: the stored verdict, not a second decision
        answer = await deliver_trade(client, ask)
        assert answer.json() == {"action": "approve"}
    too_much = trade(type="withdraw", status="initiated", total="30.00", user_id="u-approvals", steam_id=steam)
    assert (await deliver_trade(client, too_much)).json()["action"] == "reject"
    assert sample("approvals_total", verdict="approve", reason="none") == approved_before + 1
    assert sample("approvals_total", verdict="reject", reason="insufficient_balance") == rejected_before + 1
    assert sample("approval_seconds_count", verdict="approve") == timed_before + 2


async def test_crypto_withdrawals_are_counted_as_rejected_once(client: httpx.AsyncClient) -> None:
    before = sample("approvals_total", verdict="reject", reason="crypto_unsupported")
    body = {"withdrawal": {"id": f"cw-{uuid.uuid4()}", "type": "crypto_withdraw", "status": "awaiting_approval"}}
    for _ in range(2):
        assert (await deliver(client, body)).json()["action"] == "reject"
    assert sample("approvals_total", verdict="reject", reason="crypto_unsupported") == before + 1


async def test_the_ledger_check_reports_passes_and_mismatches(
    client: httpx.AsyncClient, resources: Resources, engine: AsyncEngine
) -> None:
    await register_user(client, "u-off")
    passed = sample("ledger_check_runs_total", result="passed")
    assert await monitoring.check_ledger(resources.database) == []
    assert sample("ledger_check_runs_total", result="passed") == passed + 1
    assert sample("ledger_check_problems") == 0
    completed = sample("ledger_check_completed_timestamp_seconds")
    assert completed > 0

    async with engine.begin() as connection:  # a cached balance that no entry explains
        await connection.execute(text("UPDATE balances SET available = available + 5 WHERE user_id = 'u-off'"))
    failed = sample("ledger_check_runs_total", result="failed")
    problems = await monitoring.check_ledger(resources.database)
    assert problems is not None
    assert len(problems) == 1
    assert sample("ledger_check_problems") == 1
    assert sample("ledger_check_runs_total", result="failed") == failed + 1
    assert sample("ledger_check_completed_timestamp_seconds") >= completed


async def test_a_check_another_process_is_running_is_skipped(resources: Resources, engine: AsyncEngine) -> None:
    skipped = sample("ledger_check_runs_total", result="skipped")
    async with engine.begin() as connection:
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHECK_LOCK_KEY})
        assert await monitoring.check_ledger(resources.database) is None
    assert sample("ledger_check_runs_total", result="skipped") == skipped + 1


def test_the_check_runs_on_the_clock_so_processes_run_it_together() -> None:
    assert monitoring.until_next_tick(3600, 7200.0) == 3600
    assert monitoring.until_next_tick(3600, 7200.5 + 3599) == pytest.approx(0.5)
    assert monitoring.until_next_tick(60, 61.0) == 59


async def test_exposure_and_the_review_queue_are_read_into_gauges(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    steam = await register_user(client, "u-exposed")
    held = trade(status="hold", total="100.00", pre="60.00", user_id="u-exposed", steam_id=steam)
    assert (await deliver_trade(client, held)).status_code == 200
    stranger = trade(status="hold", total="10.00", steam_id="76561198999999998")  # nobody's: flagged for review
    assert (await deliver_trade(client, stranger)).status_code == 200
    await monitoring.refresh_gauges(resources.database)
    assert sample("exposure_pre_credit_in_hold") == 60
    assert sample("exposure_pre_credit_trades") == 1
    assert sample("review_queue_trades") == 1
    reverted = await deliver_trade(client, {**held, "status": "reverted"})  # after nothing was spent: no debt
    assert reverted.status_code == 200
    await monitoring.refresh_gauges(resources.database)
    assert sample("exposure_pre_credit_in_hold") == 0
    assert sample("exposure_debt") == 0
    assert sample("gauges_refreshed_timestamp_seconds") > 0
