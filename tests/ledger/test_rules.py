"""Every row of the ledger table (DESIGN.md §2) and its consequences, through `POST /webhooks/assetpay`.

Each scenario checks the balance, the entries of `GET /v1/ledger` (amount, kind, balanceAfter), the trade's
`credited` from `GET /v1/trades/{id}`, and that the ops check (`ledger.service.check`) finds nothing.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.ledger.helpers import Entry, credited, deliver_ok, entries, fund, problems, scalar, trade_row, trade_view
from tests.support import auth, balance, deliver_trade, register_user, trade

D = Decimal
FAILURES = ["failed", "canceled", "declined", "reverted"]


@pytest.fixture
async def user(client: httpx.AsyncClient) -> str:
    await register_user(client, "u1")
    return "u1"


async def assert_consistent(engine: AsyncEngine) -> None:
    assert await problems(engine) == []


def withdrawal(status: str = "initiated", total: str = "100.00", **kwargs: object) -> dict[str, object]:
    return trade(type="withdraw", status=status, total=total, **kwargs)


def items(*specs: tuple[str, str, str | None]) -> list[dict[str, object]]:
    """Withdrawal items `(id, price, status)`, as AssetPay carries them."""
    built: list[dict[str, object]] = []
    for item_id, price, status in specs:
        item: dict[str, object] = {"id": item_id, "offer": {"price": D(price)}, "marketHashName": f"Skin {item_id}"}
        if status is not None:
            item["status"] = status
        built.append(item)
    return built


# --- deposits ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["initiated", "pending", "active"])
async def test_deposit_in_flight_before_hold_posts_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str, status: str
) -> None:
    payload = trade(status=status, total="100.00", pre="60.00", user_id=user)
    assert await deliver_ok(client, payload) == {"received": True}
    assert await balance(client, user) == 0
    assert await entries(client, user) == []
    assert await credited(client, user, payload["id"]) == 0
    pending = (await client.get("/v1/balance", headers=auth(user))).json()["pending"]
    assert pending == "100.00"
    await assert_consistent(engine)


@pytest.mark.parametrize("spelling", ["hold", "HOLD", "ESCROW", "escrow"])
async def test_deposit_hold_credits_the_pre_credit(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str, spelling: str
) -> None:
    payload = trade(status=spelling, total="100.00", pre="60.00", user_id=user)
    await deliver_ok(client, payload)
    assert await balance(client, user) == D("60.00")
    assert await entries(client, user) == [Entry(D("60.00"), "pre_credit", D("60.00"))]
    view = await trade_view(client, user, payload["id"])
    assert view["credited"] == "60.00"
    assert view["status"] == "hold"
    body = (await client.get("/v1/balance", headers=auth(user))).json()
    assert body == {"available": "60.00", "pending": "40.00", "currency": "USD"}
    await assert_consistent(engine)


async def test_deposit_completed_credits_the_total_price(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    payload = trade(status="completed", total="100.00", pre="60.00", user_id=user)
    await deliver_ok(client, payload)
    assert await balance(client, user) == D("100.00")
    assert await entries(client, user) == [Entry(D("100.00"), "credit", D("100.00"))]
    assert await credited(client, user, payload["id"]) == D("100.00")
    await assert_consistent(engine)


async def test_deposit_hold_then_completed_posts_the_pending_credit_remainder(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    payload = trade(status="active", total="123.45", pre="70.01", user_id=user)
    await deliver_ok(client, payload)
    await deliver_ok(client, {**payload, "status": "hold"})
    assert await credited(client, user, payload["id"]) == D("70.01")
    await deliver_ok(client, {**payload, "status": "completed"})
    assert await balance(client, user) == D("123.45")
    assert await entries(client, user) == [
        Entry(D("70.01"), "pre_credit", D("70.01")),
        Entry(D("53.44"), "credit", D("123.45")),
    ]
    assert await credited(client, user, payload["id"]) == D("123.45")
    assert (await client.get("/v1/balance", headers=auth(user))).json()["pending"] == "0.00"
    await assert_consistent(engine)


async def test_deposit_without_instant_credit_posts_nothing_on_hold(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    payload = trade(status="hold", total="50.00", pre="0", isInstant=False, user_id=user)
    await deliver_ok(client, payload)
    assert await entries(client, user) == []
    await deliver_ok(client, {**payload, "status": "completed"})
    assert await entries(client, user) == [Entry(D("50.00"), "credit", D("50.00"))]
    await assert_consistent(engine)


async def test_rust_deposit_active_then_completed_credits_in_full_once(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    payload = trade(status="active", total="42.10", pre="0", game="252490", user_id=user)
    await deliver_ok(client, payload)
    assert await balance(client, user) == 0
    await deliver_ok(client, {**payload, "status": "completed"})
    await deliver_ok(client, {**payload, "status": "completed"})
    assert await entries(client, user) == [Entry(D("42.10"), "credit", D("42.10"))]
    assert await credited(client, user, payload["id"]) == D("42.10")
    await assert_consistent(engine)


@pytest.mark.parametrize("failure", FAILURES)
async def test_deposit_failing_before_hold_posts_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str, failure: str
) -> None:
    payload = trade(status="active", total="100.00", user_id=user)
    await deliver_ok(client, payload)
    await deliver_ok(client, {**payload, "status": failure})
    assert await balance(client, user) == 0
    assert await entries(client, user) == []
    view = await trade_view(client, user, payload["id"])
    assert (view["status"], view["credited"]) == (failure, "0.00")
    await assert_consistent(engine)


@pytest.mark.parametrize("failure", FAILURES)
async def test_deposit_failing_after_hold_takes_the_pre_credit_back(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str, failure: str
) -> None:
    payload = trade(status="hold", total="100.00", pre="60.00", user_id=user)
    await deliver_ok(client, payload)
    await deliver_ok(client, {**payload, "status": failure, "revertedBy": "user"})
    assert await balance(client, user) == 0
    assert await entries(client, user) == [
        Entry(D("60.00"), "pre_credit", D("60.00")),
        Entry(D("-60.00"), "reversal", D("0.00")),
    ]
    assert await credited(client, user, payload["id"]) == 0
    await assert_consistent(engine)


async def test_reversal_after_the_pre_credit_was_spent_leaves_a_debt(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    deposit = trade(status="hold", total="100.00", pre="60.00", user_id=user)
    await deliver_ok(client, deposit)
    spend = withdrawal(total="50.00", user_id=user)
    assert await deliver_ok(client, spend) == {"action": "approve"}
    assert await balance(client, user) == D("10.00")
    await deliver_ok(client, {**deposit, "status": "reverted", "revertedBy": "supplier"})
    assert await balance(client, user) == D("-50.00")  # never clipped at zero
    body = (await client.get("/v1/balance", headers=auth(user))).json()
    assert body["available"] == "-50.00"
    assert await entries(client, user) == [
        Entry(D("60.00"), "pre_credit", D("60.00")),
        Entry(D("-50.00"), "debit", D("10.00")),
        Entry(D("-60.00"), "reversal", D("-50.00")),
    ]
    assert await credited(client, user, deposit["id"]) == 0
    await assert_consistent(engine)


# --- withdrawals -------------------------------------------------------------------------------------------------


async def test_approved_withdrawal_is_debited_before_the_answer(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "150.00")
    payload = withdrawal(total="100.00", user_id=user)
    assert await deliver_ok(client, payload) == {"action": "approve"}
    assert await balance(client, user) == D("50.00")
    assert (await entries(client, user))[1:] == [Entry(D("-100.00"), "debit", D("50.00"))]
    assert await credited(client, user, payload["id"]) == D("-100.00")
    verdicts = await scalar(engine, "SELECT count(*) FROM approval_verdicts WHERE verdict = 'approve'")
    assert verdicts == 1
    await assert_consistent(engine)


async def test_approval_found_by_steam_id_when_no_user_id(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    steam_id = await register_user(client, "u2")
    await fund(client, "u2", "10.00")
    payload = withdrawal(total="10.00", steam_id=steam_id)
    assert await deliver_ok(client, payload) == {"action": "approve"}
    assert await balance(client, "u2") == 0
    await assert_consistent(engine)


async def test_withdrawal_the_balance_cannot_cover_is_rejected_and_posts_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "99.99")
    payload = withdrawal(total="100.00", user_id=user)
    answer = await deliver_ok(client, payload)
    assert answer["action"] == "reject"
    assert "insufficient balance" in answer["reason"]
    await deliver_ok(client, {**payload, "status": "failed", "error": "MERCHANT_REJECTED"})
    assert await balance(client, user) == D("99.99")
    assert len(await entries(client, user)) == 1
    assert await credited(client, user, payload["id"]) == 0
    await assert_consistent(engine)


async def test_withdrawal_of_an_unknown_user_is_rejected(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    payload = withdrawal(total="1.00", user_id="nobody", steam_id="76561198999999999")
    answer = await deliver_ok(client, payload)
    assert answer["action"] == "reject"
    assert "unknown user" in answer["reason"]
    row = await trade_row(engine, payload["id"])
    assert row["posted"] == 0
    assert row["needs_review"] is True
    assert await scalar(engine, "SELECT count(*) FROM ledger_entries") == 0
    await assert_consistent(engine)


async def test_withdrawal_started_here_is_refused_above_what_the_user_authorised(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "500.00")
    # A withdrawal our API recorded before AssetPay answered: known by our externalId, capped at 100.
    async with engine.begin() as connection:
        for external_id in ("ext-over", "ext-within"):
            await connection.execute(
                text(
                    "INSERT INTO trades (id, external_id, user_id, type, status, total_price, authorized_amount) "
                    "VALUES (:id, :ext, :user, 'withdraw', 'initiated', 100, 100)"
                ),
                {"id": uuid.uuid4(), "ext": external_id, "user": user},
            )
    over = withdrawal(total="100.01", user_id=user, external_id="ext-over")
    answer = await deliver_ok(client, over)
    assert answer["action"] == "reject"
    assert "authorised" in answer["reason"]
    within = withdrawal(total="99.50", user_id=user, external_id="ext-within")
    assert await deliver_ok(client, within) == {"action": "approve"}
    assert await balance(client, user) == D("400.50")
    assert await scalar(engine, "SELECT count(*) FROM trades") == 3  # both linked to ours, none duplicated
    await assert_consistent(engine)


@pytest.mark.parametrize("status", ["pending", "active", "hold"])
async def test_approved_withdrawal_in_flight_stays_debited_once(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str, status: str
) -> None:
    await fund(client, user, "100.00")
    payload = withdrawal(total="100.00", user_id=user)
    await deliver_ok(client, payload)
    await deliver_ok(client, {**payload, "status": status})
    assert await balance(client, user) == 0
    assert [e.kind for e in await entries(client, user)] == ["credit", "debit"]
    assert await credited(client, user, payload["id"]) == D("-100.00")
    await assert_consistent(engine)


async def test_withdrawal_completed_at_the_approved_price_posts_nothing_more(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "100.00")
    payload = withdrawal(total="100.00", user_id=user)
    await deliver_ok(client, payload)
    for status in ("pending", "active", "hold", "completed"):
        await deliver_ok(client, {**payload, "status": status})
    assert await balance(client, user) == 0
    assert len(await entries(client, user)) == 2
    assert await credited(client, user, payload["id"]) == D("-100.00")
    await assert_consistent(engine)


async def test_withdrawal_completed_cheaper_refunds_the_difference(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "100.00")
    payload = withdrawal(total="100.00", user_id=user)
    await deliver_ok(client, payload)
    await deliver_ok(client, {**payload, "status": "pending"})
    await deliver_ok(client, {**payload, "status": "completed", "totalPrice": D("87.66")})
    assert await balance(client, user) == D("12.34")
    assert (await entries(client, user))[1:] == [
        Entry(D("-100.00"), "debit", D("0.00")),
        Entry(D("12.34"), "refund", D("12.34")),
    ]
    assert await credited(client, user, payload["id"]) == D("-87.66")
    row = await trade_row(engine, payload["id"])
    assert row["needs_review"] is False
    await assert_consistent(engine)


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("after", ["initiated", "pending", "active", "hold"])
async def test_failed_withdrawal_is_refunded_in_full(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str, failure: str, after: str
) -> None:
    await fund(client, user, "100.00")
    payload = withdrawal(total="100.00", user_id=user)
    await deliver_ok(client, payload)
    if after != "initiated":
        await deliver_ok(client, {**payload, "status": after})
    await deliver_ok(client, {**payload, "status": failure, "error": "PURCHASE_FAILED"})
    assert await balance(client, user) == D("100.00")
    assert (await entries(client, user))[1:] == [
        Entry(D("-100.00"), "debit", D("0.00")),
        Entry(D("100.00"), "refund", D("100.00")),
    ]
    view = await trade_view(client, user, payload["id"])
    assert (view["status"], view["credited"]) == (failure, "0.00")
    await assert_consistent(engine)


async def test_partly_failed_withdrawal_charges_only_the_live_items(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "100.00")
    payload = withdrawal(
        total="100.00", user_id=user, items=items(("a", "30.00", None), ("b", "20.00", None), ("c", "50.00", None))
    )
    assert await deliver_ok(client, payload) == {"action": "approve"}
    assert await balance(client, user) == 0
    await deliver_ok(
        client,
        {
            **payload,
            "status": "active",
            "items": items(("a", "30.00", "active"), ("b", "20.00", "failed"), ("c", "50.00", "active")),
        },
    )
    assert await balance(client, user) == D("20.00")
    assert await credited(client, user, payload["id"]) == D("-80.00")
    await deliver_ok(
        client,
        {
            **payload,
            "status": "hold",
            "items": items(("a", "30.00", "hold"), ("b", "20.00", "hold"), ("c", "50.00", "failed")),
        },
    )
    # "b" stays failed (a final item status is never undone); "c" failed too: only "a" is charged.
    assert await balance(client, user) == D("70.00")
    await deliver_ok(
        client,
        {
            **payload,
            "status": "completed",
            "items": items(("a", "30.00", "completed"), ("b", "20.00", "failed"), ("c", "50.00", "failed")),
        },
    )
    assert await balance(client, user) == D("70.00")
    assert (await entries(client, user))[1:] == [
        Entry(D("-100.00"), "debit", D("0.00")),
        Entry(D("20.00"), "refund", D("20.00")),
        Entry(D("50.00"), "refund", D("70.00")),
    ]
    view = await trade_view(client, user, payload["id"])
    assert view["credited"] == "-30.00"
    assert {item["id"]: item["status"] for item in view["items"]} == {"a": "completed", "b": "failed", "c": "failed"}
    await assert_consistent(engine)


async def test_item_failure_reported_before_the_approval_is_not_charged(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "100.00")
    base = items(("a", "60.00", "initiated"), ("b", "40.00", "initiated"))
    payload = withdrawal(total="100.00", user_id=user, items=base)
    late = {**payload, "status": "pending", "items": items(("a", "60.00", "pending"), ("b", "40.00", "failed"))}
    await deliver_ok(client, late)
    assert await balance(client, user) == D("100.00")  # nothing approved yet, nothing charged
    assert await deliver_ok(client, payload) == {"action": "approve"}
    assert await balance(client, user) == D("40.00")
    assert await credited(client, user, payload["id"]) == D("-60.00")
    await assert_consistent(engine)


async def test_withdrawal_completed_without_approval_is_charged_and_flagged(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "100.00")
    payload = withdrawal(status="completed", total="30.00", user_id=user)
    await deliver_ok(client, payload)
    assert await balance(client, user) == D("70.00")
    row = await trade_row(engine, payload["id"])
    assert row["needs_review"] is True
    assert "without an approve verdict" in row["review_reason"]
    await assert_consistent(engine)


async def test_late_approval_after_completion_is_approved_without_a_second_charge(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "30.00")
    payload = withdrawal(status="completed", total="30.00", user_id=user)
    await deliver_ok(client, payload)
    assert await balance(client, user) == D("0.00")
    late = await deliver_trade(client, {**payload, "status": "initiated"})
    assert late.json() == {"action": "approve"}
    assert await balance(client, user) == D("0.00")
    assert [e.amount for e in await entries(client, user)] == [D("30.00"), D("-30.00")]
    await assert_consistent(engine)


# --- consequences: duplicates, order, finality -------------------------------------------------------------------


async def test_duplicate_delivery_posts_nothing(client: httpx.AsyncClient, engine: AsyncEngine, user: str) -> None:
    payload = trade(status="hold", total="100.00", pre="60.00", user_id=user)
    first = await deliver_ok(client, payload, delivery_id="dlv-dup")
    again = await deliver_ok(client, payload, delivery_id="dlv-dup")
    assert first == {"received": True}
    assert again == {"received": True, "duplicate": True}
    # The same news under a new delivery id moves nothing either: the difference is zero.
    await deliver_ok(client, payload, delivery_id="dlv-other")
    assert await entries(client, user) == [Entry(D("60.00"), "pre_credit", D("60.00"))]
    assert await scalar(engine, "SELECT count(*) FROM webhook_deliveries") == 2
    await assert_consistent(engine)


async def test_duplicate_of_a_final_status_posts_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    payload = trade(status="completed", total="100.00", user_id=user)
    for _ in range(3):
        await deliver_ok(client, payload)
    assert await entries(client, user) == [Entry(D("100.00"), "credit", D("100.00"))]
    assert (await trade_row(engine, payload["id"]))["needs_review"] is False
    await assert_consistent(engine)


async def test_repeated_approval_asks_get_the_stored_verdict_and_post_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "100.00")
    payload = withdrawal(total="100.00", user_id=user)
    assert await deliver_ok(client, payload) == {"action": "approve"}
    # Every re-ask comes with a new delivery id; and the balance no longer covers it, yet the verdict stands.
    assert await deliver_ok(client, payload) == {"action": "approve"}
    assert await deliver_ok(client, payload, delivery_id="dlv-x") == {"action": "approve"}
    assert await deliver_ok(client, payload, delivery_id="dlv-x") == {"action": "approve"}
    assert await balance(client, user) == 0
    assert len(await entries(client, user)) == 2
    assert await scalar(engine, "SELECT count(*) FROM approval_verdicts") == 1
    await assert_consistent(engine)


async def test_repeated_rejection_stays_a_rejection_after_the_user_is_funded(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    payload = withdrawal(total="10.00", user_id=user)
    first = await deliver_ok(client, payload)
    assert first["action"] == "reject"
    await fund(client, user, "10.00")
    assert await deliver_ok(client, payload) == first
    assert await balance(client, user) == D("10.00")
    await assert_consistent(engine)


async def test_completed_before_hold_credits_the_full_price_once(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    payload = trade(status="completed", total="100.00", pre="60.00", user_id=user)
    await deliver_ok(client, payload)
    await deliver_ok(client, {**payload, "status": "hold"})
    await deliver_ok(client, {**payload, "status": "active"})
    await deliver_ok(client, {**payload, "status": "initiated"})
    assert await balance(client, user) == D("100.00")
    assert await entries(client, user) == [Entry(D("100.00"), "credit", D("100.00"))]
    view = await trade_view(client, user, payload["id"])
    assert (view["status"], view["credited"]) == ("completed", "100.00")
    assert (await trade_row(engine, payload["id"]))["needs_review"] is False
    await assert_consistent(engine)


async def test_reverted_before_hold_posts_nothing_and_the_late_hold_neither(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    payload = trade(status="reverted", total="100.00", pre="60.00", user_id=user)
    await deliver_ok(client, payload)
    await deliver_ok(client, {**payload, "status": "hold"})
    assert await entries(client, user) == []
    assert await credited(client, user, payload["id"]) == 0
    await assert_consistent(engine)


async def test_late_in_flight_status_never_moves_a_refund_back(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "100.00")
    payload = withdrawal(total="100.00", user_id=user)
    await deliver_ok(client, payload)
    await deliver_ok(client, {**payload, "status": "completed", "totalPrice": D("90.00")})
    await deliver_ok(client, {**payload, "status": "active"})
    await deliver_ok(client, {**payload, "status": "hold", "totalPrice": D("100.00")})
    assert await balance(client, user) == D("10.00")
    assert await credited(client, user, payload["id"]) == D("-90.00")
    await assert_consistent(engine)


@pytest.mark.parametrize(
    ("kind", "first", "second", "expected_balance"),
    [
        ("deposit", "completed", "reverted", "100.00"),
        ("deposit", "completed", "failed", "100.00"),
        ("deposit", "reverted", "completed", "0"),
        ("deposit", "declined", "canceled", "0"),
        ("withdraw", "completed", "failed", "0"),
        ("withdraw", "failed", "completed", "100.00"),
    ],
)
async def test_different_final_status_after_a_final_one_is_stored_flagged_not_applied(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    user: str,
    kind: str,
    first: str,
    second: str,
    expected_balance: str,
) -> None:
    if kind == "deposit":
        payload = trade(status="hold", total="100.00", pre="60.00", user_id=user)
    else:
        await fund(client, user, "100.00")
        payload = withdrawal(total="100.00", user_id=user)
    await deliver_ok(client, payload)
    await deliver_ok(client, {**payload, "status": first})
    before = await entries(client, user)
    await deliver_ok(client, {**payload, "status": second}, delivery_id="dlv-conflict")
    assert await balance(client, user) == D(expected_balance)
    assert await entries(client, user) == before
    row = await trade_row(engine, payload["id"])
    assert row["status"] == first
    assert row["needs_review"] is True
    assert second in row["review_reason"]
    stored = await scalar(engine, "SELECT outcome FROM webhook_deliveries WHERE delivery_id = 'dlv-conflict'")
    assert stored == "conflict"
    await assert_consistent(engine)


async def test_the_same_final_status_again_is_not_a_conflict(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    payload = trade(status="hold", total="100.00", user_id=user)
    await deliver_ok(client, payload)
    await deliver_ok(client, {**payload, "status": "reverted"})
    await deliver_ok(client, {**payload, "status": "REVERTED"})
    assert (await trade_row(engine, payload["id"]))["needs_review"] is False
    await assert_consistent(engine)


async def test_trades_of_different_users_stay_apart(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await register_user(client, "alice")
    await register_user(client, "bob")
    deposit = trade(status="completed", total="10.00", user_id="alice")
    await deliver_ok(client, deposit)
    assert await balance(client, "alice") == D("10.00")
    assert await balance(client, "bob") == 0
    assert await entries(client, "bob") == []
    ours = (await trade_view(client, "alice", deposit["id"]))["id"]
    response = await client.get(f"/v1/trades/{ours}", headers=auth("bob"))
    assert response.status_code == 404
    await assert_consistent(engine)


async def test_invalid_trade_callback_moves_nothing(client: httpx.AsyncClient, engine: AsyncEngine, user: str) -> None:
    payload = trade(status="hold", total="100.00", pre="60.00", user_id=user)
    await deliver_ok(client, payload)
    bad = {**payload, "status": "completed", "totalPrice": D("-1")}
    response = await deliver_trade(client, bad)
    assert response.status_code == 422
    assert await balance(client, user) == D("60.00")
    assert (await trade_row(engine, payload["id"]))["status"] == "hold"
    await assert_consistent(engine)


async def test_an_older_snapshot_never_undoes_an_item_refund(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    await fund(client, user, "100.00")
    payload = withdrawal(
        total="100.00", user_id=user, items=items(("a", "60.00", "initiated"), ("b", "40.00", "initiated"))
    )
    await deliver_ok(client, payload)
    await deliver_ok(
        client, {**payload, "status": "hold", "items": items(("a", "60.00", "hold"), ("b", "40.00", "failed"))}
    )
    assert await balance(client, user) == D("40.00")
    # A late snapshot from before the failure (status and item both still in flight) moves nothing back.
    await deliver_ok(
        client, {**payload, "status": "active", "items": items(("a", "60.00", "active"), ("b", "40.00", "active"))}
    )
    await deliver_ok(
        client, {**payload, "status": "hold", "items": items(("a", "60.00", "hold"), ("b", "40.00", "hold"))}
    )
    assert await balance(client, user) == D("40.00")
    assert await credited(client, user, payload["id"]) == D("-60.00")
    await assert_consistent(engine)


async def test_deposit_for_a_user_registered_later_is_credited_on_registration(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    payload = trade(status="completed", total="100.00", user_id="late")
    await deliver_ok(client, payload)
    row = await trade_row(engine, payload["id"])
    assert (row["posted"], row["needs_review"]) == (0, True)
    assert await scalar(engine, "SELECT count(*) FROM ledger_entries") == 0
    await register_user(client, "late")
    assert await balance(client, "late") == D("100.00")
    assert await entries(client, "late") == [Entry(D("100.00"), "credit", D("100.00"))]
    # A later callback finds the trade already settled: nothing more.
    await deliver_ok(client, {**payload, "status": "hold"})
    assert await credited(client, "late", payload["id"]) == D("100.00")
    await assert_consistent(engine)
