"""Property: whatever the order, duplication and concurrency of AssetPay's callbacks, every user ends with exactly
what the DESIGN.md §2 table says their trades' final statuses are worth.

Hypothesis draws users, deposits and withdrawals with legal status paths (with steps skipped, cut short, spelled
in either API edition), cent amounts and partial item failures. Every delivery is sent one to three times (the same
delivery id, or a new one), the whole list is shuffled and sent through `POST /webhooks/assetpay` in concurrent
batches. The expected balance comes from a model written here from the design table, not from `ledger/policy.py`.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.ledger.helpers import deliver_ok, problems
from tests.support import balance, deliver_trade, register_user, trade

ZERO = Decimal(0)

# Legal lives of a trade, as ASSETPAY.md §5 tells them. A path sent to us may skip steps and may stop early.
CS2_DEPOSIT_PATHS = [
    ["initiated", "active", "hold", "completed"],
    ["initiated", "active", "hold", "reverted"],
    ["initiated", "active", "declined"],
    ["initiated", "active", "canceled"],
    ["initiated", "active", "failed"],
    ["initiated", "failed"],
    ["initiated", "canceled"],
]
RUST_DEPOSIT_PATHS = [
    ["initiated", "active", "completed"],
    ["initiated", "active", "declined"],
    ["initiated", "failed"],
]
APPROVED_WITHDRAWAL_PATHS = [
    ["initiated", "pending", "active", "hold", "completed"],
    ["initiated", "pending", "active", "completed"],
    ["initiated", "pending", "active", "hold", "reverted"],
    ["initiated", "pending", "active", "declined"],
    ["initiated", "pending", "active", "canceled"],
    ["initiated", "pending", "failed"],
    ["initiated", "failed"],
]
REJECTED_WITHDRAWAL_PATHS = [["initiated", "failed"], ["initiated"]]
IN_FLIGHT = {"initiated", "pending", "active", "hold"}
FAILURES = {"failed", "canceled", "declined", "reverted"}


def cents(amount: int) -> Decimal:
    return Decimal(amount).scaleb(-2)


@dataclass
class Plan:
    """One trade: what we will send, and what the model says it must finally be worth to the user."""

    assetpay_id: str
    user_id: str
    type: str
    expected: Decimal
    verdict: str | None = None  # for withdrawals: the answer every approval ask must get
    deliveries: list[dict[str, Any]] = field(default_factory=list)


def spell(status: str, data: st.DataObject) -> str:
    """The status as either API edition may write it (upper case; ESCROW for hold)."""
    if status == "hold" and data.draw(st.booleans(), label="escrow"):
        return "ESCROW"
    return status.upper() if data.draw(st.booleans(), label="upper") else status


def choose_path(paths: list[list[str]], data: st.DataObject, *, keep_first: bool) -> list[str]:
    path = data.draw(st.sampled_from(paths), label="path")
    path = path[: data.draw(st.integers(1, len(path)), label="cut")]
    kept = [
        status
        for index, status in enumerate(path)
        if (index == 0 and keep_first) or index == len(path) - 1 or data.draw(st.booleans(), label="keep")
    ]
    return kept


# --- the model: DESIGN.md §2, written out ------------------------------------------------------------------------


def expected_deposit(final: str, total: Decimal, pre_credit: Decimal) -> Decimal:
    if final == "hold":
        return pre_credit
    if final == "completed":
        return total
    return ZERO  # initiated, pending, active; failed, canceled, declined, reverted


def expected_withdrawal(final: str, approved: Decimal, final_total: Decimal, alive: Decimal, partly: bool) -> Decimal:
    """An approved withdrawal: minus the approved amount in flight, minus what was charged when completed, zero
    when it failed; with some items failed, never more than the items still alive."""
    if final in FAILURES:
        return ZERO
    charged = final_total if final == "completed" else approved
    if partly:
        charged = min(charged, alive)
    return -charged


# --- building the trades -----------------------------------------------------------------------------------------


def plan_deposit(user_id: str, data: st.DataObject) -> Plan:
    rust = data.draw(st.booleans(), label="rust")
    path = choose_path(RUST_DEPOSIT_PATHS if rust else CS2_DEPOSIT_PATHS, data, keep_first=False)
    total = data.draw(st.integers(1, 250_000), label="total cents")
    pre = 0 if rust else data.draw(st.integers(0, total), label="pre cents")
    plan = Plan(str(uuid.uuid4()), user_id, "deposit", expected_deposit(path[-1], cents(total), cents(pre)))
    item = [{"id": f"skin-{uuid.uuid4().hex[:8]}", "offer": {"price": cents(total)}, "appid": 730}]
    for status in path:
        plan.deliveries.append(
            trade(
                trade_id=plan.assetpay_id,
                type="DEPOSIT" if data.draw(st.booleans(), label="upper type") else "deposit",
                status=spell(status, data),
                total=cents(total),
                pre=cents(pre),
                pending=cents(total - pre),
                user_id=user_id,
                items=item,
                game="252490" if rust else "730",
                isInstant=pre > 0,
            )
        )
    return plan


def plan_withdrawal(user_id: str, data: st.DataObject, *, rich: bool) -> Plan:
    path = choose_path(APPROVED_WITHDRAWAL_PATHS if rich else REJECTED_WITHDRAWAL_PATHS, data, keep_first=True)
    prices = data.draw(st.lists(st.integers(1, 40_000), min_size=1, max_size=3), label="item cents")
    amounts = [data.draw(st.sampled_from([1, 1, 2]), label="amount") for _ in prices]
    total = sum(p * a for p, a in zip(prices, amounts, strict=True))
    # Some items (never all) fail at a later step; a failed item stays failed in every later callback.
    fails_at: dict[int, int] = {}
    if rich and len(path) > 1 and len(prices) > 1:
        for index in data.draw(st.sets(st.integers(0, len(prices) - 1), max_size=len(prices) - 1), label="failing"):
            fails_at[index] = data.draw(st.integers(1, len(path) - 1), label="fails at")
    final_total = total
    if path[-1] == "completed" and data.draw(st.booleans(), label="cheaper"):
        final_total = data.draw(st.integers(1, total), label="final cents")
    alive = sum(p * a for i, (p, a) in enumerate(zip(prices, amounts, strict=True)) if i not in fails_at)

    expected = (
        expected_withdrawal(path[-1], cents(total), cents(final_total), cents(alive), bool(fails_at))
        if rich
        else ZERO  # rejected: never charged
    )
    plan = Plan(str(uuid.uuid4()), user_id, "withdraw", expected, verdict="approve" if rich else "reject")
    item_ids = [f"skin-{uuid.uuid4().hex[:8]}" for _ in prices]
    for step, status in enumerate(path):
        items = [
            {
                "id": item_ids[i],
                "offer": {"price": cents(price)},
                "amount": amounts[i],
                "status": "failed" if i in fails_at and fails_at[i] <= step else status,
            }
            for i, price in enumerate(prices)
        ]
        plan.deliveries.append(
            trade(
                trade_id=plan.assetpay_id,
                type="WITHDRAW" if data.draw(st.booleans(), label="upper type") else "withdraw",
                # the approval ask is always spelled as the current edition does
                status=status if status == "initiated" else spell(status, data),
                total=cents(final_total if status == "completed" else total),
                user_id=user_id,
                items=items,
                **({"error": "MERCHANT_REJECTED" if not rich else "PURCHASE_FAILED"} if status in FAILURES else {}),
            )
        )
    return plan


# --- the property ------------------------------------------------------------------------------------------------


@settings(
    max_examples=40,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow 'explain' replays
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_any_order_duplication_and_concurrency_ends_at_the_design_targets(
    bounded_client: httpx.AsyncClient, engine: AsyncEngine, data: st.DataObject
) -> None:
    client = bounded_client
    plans: list[Plan] = []
    seeds: dict[str, Decimal] = {}
    for _ in range(data.draw(st.integers(1, 3), label="users")):
        user_id = f"prop-{uuid.uuid4().hex[:12]}"
        await register_user(client, user_id)
        rich = data.draw(st.booleans(), label="rich") or data.draw(st.booleans(), label="rich again")
        user_plans = []
        for _ in range(data.draw(st.integers(0 if rich else 1, 4), label="trades")):
            if rich and data.draw(st.booleans(), label="deposit?"):
                user_plans.append(plan_deposit(user_id, data))
            else:
                user_plans.append(plan_withdrawal(user_id, data, rich=rich))
        seeds[user_id] = ZERO
        if rich:
            # Enough, before anything races, to cover every withdrawal twice over: every verdict is "approve".
            withdrawn = sum(Decimal(str(p.deliveries[0]["totalPrice"])) for p in user_plans if p.type == "withdraw")
            seeds[user_id] = 2 * withdrawn + Decimal("1.00")
            await deliver_ok(client, trade(status="completed", total=seeds[user_id], user_id=user_id))
        plans.extend(user_plans)

    # Every delivery one to three times, with its own delivery id or (as approval re-asks do) a new one.
    sends: list[tuple[Plan, dict[str, Any], str]] = []
    for plan in plans:
        for payload in plan.deliveries:
            delivery_id = f"dlv-{uuid.uuid4()}"
            for _ in range(data.draw(st.integers(1, 3), label="copies")):
                fresh = data.draw(st.sampled_from([False, False, True]), label="new delivery id")
                sends.append((plan, payload, f"dlv-{uuid.uuid4()}" if fresh else delivery_id))
    order = data.draw(st.permutations(range(len(sends))), label="order")
    sends = [sends[i] for i in order]

    answers: list[tuple[Plan, dict[str, Any], httpx.Response]] = []
    position = 0
    while position < len(sends):
        size = data.draw(st.integers(1, 12), label="batch")
        batch = sends[position : position + size]
        position += size
        responses = await asyncio.gather(*(deliver_trade(client, p, delivery_id=d) for _, p, d in batch))
        answers.extend((plan, payload, r) for (plan, payload, _), r in zip(batch, responses, strict=True))

    for plan, payload, response in answers:
        assert response.status_code == 200, response.text
        if plan.type == "withdraw" and payload["status"] == "initiated":
            assert response.json()["action"] == plan.verdict, response.text
            if plan.verdict == "reject":
                assert response.json()["reason"]

    async with engine.connect() as connection:
        posted = dict(
            (
                await connection.execute(
                    text("SELECT assetpay_id, posted FROM trades WHERE assetpay_id = ANY(:ids)"),
                    {"ids": [p.assetpay_id for p in plans]},
                )
            ).all()
        )
        flagged = (
            await connection.execute(
                text("SELECT assetpay_id, type, review_reason FROM trades WHERE needs_review AND user_id = ANY(:u)"),
                {"u": list(seeds)},
            )
        ).all()
    for plan in plans:
        assert posted[plan.assetpay_id] == plan.expected, (plan.type, [d["status"] for d in plan.deliveries])
    for _, trade_type, reason in flagged:
        # The only legal surprise: a completed withdrawal whose approval ask arrived after it.
        assert trade_type == "withdraw", reason
        assert reason == "withdrawal completed without an approve verdict from us", reason

    for user_id, seed in seeds.items():
        expected = seed + sum((p.expected for p in plans if p.user_id == user_id), start=ZERO)
        assert await balance(client, user_id) == expected
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text("SELECT amount, balance_after FROM ledger_entries WHERE user_id = :u ORDER BY id"),
                    {"u": user_id},
                )
            ).all()
        assert sum((amount for amount, _ in rows), start=ZERO) == expected
        running = ZERO
        for amount, balance_after in rows:
            running += amount
            assert balance_after == running  # every entry records the balance it really left
    assert await problems(engine) == []
