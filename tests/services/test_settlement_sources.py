"""Property: the same AssetPay trade snapshots, fed through every source, in any order, duplicated, some of them
before their user registered, end in the same books.

Hypothesis draws one to three users (some registering only after part of their trades arrived: their trades are
adopted on registration), a generous funding deposit each, then deposits and withdrawals with legal status paths.
Every snapshot is applied one to three times, the whole lot shuffled, each time through a randomly drawn source:
`Source.CALLBACK` through the real `POST /webhooks/assetpay`, `TRADING_ANSWER`, `RECONCILIATION` and
`REALTIME_NUDGE` through `settlement.apply` in a unit of work of our own. The books are then compared with

  (a) a model of the ledger rule written here from README's table ("The ledger"), not from `core/policy.py`, and
  (b) the books of a twin world: the same snapshots (fresh ids) applied once each, in path order, as callbacks only,
      to users registered before anything arrived.

Funding is twice every withdrawal's price plus one, and applied before any approval is asked, so every approval is
approved whatever the order; an approval ask (`withdraw` + `initiated`) of a user not registered yet would be
rejected for an unknown user, so those are only sent after the user registered.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.gateway.callbacks import TradeSnapshot, decode_json
from assetpay_merchant.services import settlement
from assetpay_merchant.services.settlement import Source
from tests.support import balance, deliver_trade, dumps, ledger_problems, new_steam_id, register_user, trade

ZERO = Decimal(0)
SOURCES = [Source.CALLBACK, Source.TRADING_ANSWER, Source.RECONCILIATION, Source.REALTIME_NUDGE]

# Legal lives of a trade (ASSETPAY.md §5); a path may skip steps and stop early.
DEPOSIT_PATHS = [
    ["initiated", "active", "hold", "completed"],
    ["initiated", "active", "hold", "reverted"],
    ["initiated", "active", "completed"],
    ["initiated", "active", "failed"],
    ["initiated", "failed"],
]
WITHDRAWAL_PATHS = [
    ["initiated", "pending", "active", "hold", "completed"],
    ["initiated", "pending", "active", "completed"],
    ["initiated", "pending", "active", "failed"],
    ["initiated", "pending", "failed"],
    ["initiated", "failed"],
]
FAILURES = {"failed", "canceled", "declined", "reverted"}


def cents(amount: int) -> Decimal:
    return Decimal(amount).scaleb(-2)


# --- the model: README "The ledger", written out ----------------------------------------------------------------


def deposit_target(final: str, total: Decimal, pre_credit: Decimal) -> Decimal:
    if final == "hold":
        return pre_credit
    if final == "completed":
        return total
    return ZERO  # initiated, pending, active; failed, canceled, declined, reverted


def withdrawal_target(final: str, approved: Decimal, final_total: Decimal) -> Decimal:
    """Every withdrawal here is asked for approval and approved (the user is funded generously)."""
    if final in FAILURES:
        return ZERO
    if final == "completed":
        return -final_total  # a lower final price refunds the rest
    return -approved  # in flight after our approve verdict


# --- the plan: abstract trades, instantiated in each world with fresh ids ---------------------------------------


@dataclass
class Step:
    """One snapshot of a trade, without the ids (they differ per world)."""

    status: str  # as sent, in either API edition's spelling
    total: Decimal
    pre: Decimal | None = None
    pending: Decimal | None = None


@dataclass
class Plan:
    key: int
    user: int  # index into the world's users
    type: str
    identity: str  # how the snapshots name the user: "user" (externalClientUserId), "steam" (clientSteamID), "both"
    item_id: str
    steps: list[Step]
    target: Decimal


@dataclass
class World:
    users: list[str]
    steams: list[str]
    trade_ids: dict[int, str] = field(default_factory=dict)

    @classmethod
    def fresh(cls, name: str, users: int, plans: list[Plan]) -> World:
        world = cls(
            users=[f"{name}-{uuid.uuid4().hex[:12]}" for _ in range(users)],
            steams=[new_steam_id() for _ in range(users)],
        )
        world.trade_ids = {plan.key: str(uuid.uuid4()) for plan in plans}
        return world

    def payload(self, plan: Plan, step: Step) -> dict[str, Any]:
        user_id = self.users[plan.user] if plan.identity in ("user", "both") else None
        steam_id = self.steams[plan.user] if plan.identity in ("steam", "both") else None
        return trade(
            trade_id=self.trade_ids[plan.key],
            type=plan.type,
            status=step.status,
            total=step.total,
            pre=step.pre,
            pending=step.pending,
            user_id=user_id,
            steam_id=steam_id,
            items=[{"id": plan.item_id, "appid": 730, "offer": {"price": step.total}}],
        )


def spell(status: str, data: st.DataObject) -> str:
    """Either API edition's spelling (upper case; ESCROW for hold). The approval ask keeps the current one."""
    if status == "initiated":
        return status
    if status == "hold" and data.draw(st.booleans(), label="escrow"):
        return "ESCROW"
    return status.upper() if data.draw(st.booleans(), label="upper") else status


def cut(path: list[str], data: st.DataObject) -> list[str]:
    """The path, stopped early (half the time) or not, with some middle steps skipped (the first and last are kept)."""
    if data.draw(st.booleans(), label="stopped early"):
        path = path[: data.draw(st.integers(1, len(path)), label="cut")]
    return [s for i, s in enumerate(path) if i in (0, len(path) - 1) or data.draw(st.booleans(), label="keep")]


def plan_funding(key: int, user: int, amount: Decimal, identity: str) -> Plan:
    step = Step("completed", amount, ZERO, amount)
    return Plan(key, user, "deposit", identity, f"fund-{key}", [step], amount)


def plan_deposit(key: int, user: int, identity: str, data: st.DataObject) -> Plan:
    path = cut(data.draw(st.sampled_from(DEPOSIT_PATHS), label="deposit path"), data)
    total = data.draw(st.integers(1, 50_000), label="deposit cents")
    pre = data.draw(st.integers(0, total), label="pre cents")
    steps = [Step(spell(s, data), cents(total), cents(pre), cents(total - pre)) for s in path]
    return Plan(
        key, user, "deposit", identity, f"skin-{key}", steps, deposit_target(path[-1], cents(total), cents(pre))
    )


def plan_withdrawal(key: int, user: int, identity: str, data: st.DataObject) -> Plan:
    path = cut(data.draw(st.sampled_from(WITHDRAWAL_PATHS), label="withdrawal path"), data)
    total = data.draw(st.integers(1, 50_000), label="withdrawal cents")
    final_total = total
    if path[-1] == "completed" and data.draw(st.booleans(), label="cheaper"):
        final_total = data.draw(st.integers(1, total), label="final cents")
    steps = [Step(spell(s, data), cents(final_total if s == "completed" else total)) for s in path]
    target = withdrawal_target(path[-1], cents(total), cents(final_total))
    return Plan(key, user, "withdraw", identity, f"skin-{key}", steps, target)


@dataclass(frozen=True)
class Delivery:
    plan: Plan
    step: Step
    source: Source

    @property
    def asks(self) -> bool:
        """`withdraw` + `initiated`: AssetPay asks for our approval."""
        return self.plan.type == "withdraw" and self.step.status == "initiated"


# --- applying a snapshot through a source ------------------------------------------------------------------------


async def apply(client: httpx.AsyncClient, resources: Resources, payload: dict[str, Any], source: Source) -> str | None:
    """Apply one snapshot through `source`; the approval verdict when one was asked, else None."""
    asks = payload["type"] == "withdraw" and payload["status"] == "initiated"
    if source is Source.CALLBACK:
        response = await deliver_trade(client, payload)
        assert response.status_code == 200, response.text
        return response.json().get("action") if asks else None
    # As the trading answer, reconciliation and realtime nudge get it: AssetPay's JSON, money as exact decimals.
    snapshot = TradeSnapshot.model_validate(decode_json(dumps(payload)))
    async with resources.database.unit_of_work() as uow:
        settled = await settlement.apply(uow, snapshot, source=source, decide_approval=asks)
    if asks:
        assert settled.verdict is not None
        return settled.verdict.action.value
    assert settled.verdict is None
    return None


# --- reading the books -------------------------------------------------------------------------------------------


async def trade_rows(engine: AsyncEngine, ids: list[str]) -> dict[str, dict[str, Any]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT assetpay_id, user_id, status, total_price, pre_credit, approved_amount, posted "
                "FROM trades WHERE assetpay_id = ANY(:ids)"
            ),
            {"ids": ids},
        )
        rows = [dict(row._mapping) for row in result]
    by_id = {row["assetpay_id"]: row for row in rows}
    assert len(by_id) == len(rows) == len(ids), "one trade row per AssetPay trade, whatever the sources"
    return by_id


async def entry_sums(engine: AsyncEngine, users: list[str]) -> dict[str, Decimal]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT user_id, sum(amount) FROM ledger_entries WHERE user_id = ANY(:u) GROUP BY user_id"),
            {"u": users},
        )
        found = dict(result.all())
    return {user: found.get(user, ZERO) for user in users}


async def stored_balances(engine: AsyncEngine, users: list[str]) -> dict[str, Decimal]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT user_id, available FROM balances WHERE user_id = ANY(:u)"), {"u": users}
        )
        return dict(result.all())


async def book_problems(engine: AsyncEngine) -> list[str]:
    """`store.ledger.check` (the ops check) on one snapshot, as text."""
    return [f"{p.subject}: {p.detail}" for p in await ledger_problems(engine)]


# --- the property ------------------------------------------------------------------------------------------------


@settings(
    max_examples=40,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow 'explain' replays
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_every_source_in_any_order_gets_the_same_books(
    client: httpx.AsyncClient, resources: Resources, engine: AsyncEngine, data: st.DataObject
) -> None:
    n_users = data.draw(st.integers(1, 3), label="users")
    late = [data.draw(st.booleans(), label="registers late") for _ in range(n_users)]
    identities = st.sampled_from(["user", "steam", "both"])

    # The plans: per user, a generous funding deposit and up to three trades.
    fundings: list[Plan] = []
    trades: list[Plan] = []
    key = 0
    for user in range(n_users):
        mine = []
        for _ in range(data.draw(st.integers(0, 3), label="trades")):
            key += 1
            identity = data.draw(identities, label="identity")
            kind = data.draw(st.sampled_from(["deposit", "withdraw"]), label="kind")
            build = plan_deposit if kind == "deposit" else plan_withdrawal
            mine.append(build(key, user, identity, data))
        withdrawn = sum((p.steps[0].total for p in mine if p.type == "withdraw"), start=ZERO)
        key += 1
        fundings.append(plan_funding(key, user, 2 * withdrawn + Decimal("1.00"), data.draw(identities, label="id")))
        trades.extend(mine)
    plans = fundings + trades
    # The model's balance of each user.
    expected = [sum((p.target for p in plans if p.user == user), start=ZERO) for user in range(n_users)]

    # World A: every snapshot one to three times, shuffled, each time through a drawn source.
    a = World.fresh("src", n_users, plans)
    sends = [
        Delivery(plan, step, data.draw(st.sampled_from(SOURCES), label="source"))
        for plan in trades
        for step in plan.steps
        for _ in range(data.draw(st.integers(1, 3), label="copies"))
    ]
    order = data.draw(st.permutations(range(len(sends))), label="order")
    sends = [sends[i] for i in order]
    # What arrives before its late user registers (never an approval ask: that would be rejected, unknown user).
    early = [late[d.plan.user] and not d.asks and data.draw(st.booleans(), label="before registration") for d in sends]

    for user in range(n_users):
        if not late[user]:
            await register_user(client, a.users[user], a.steams[user])
    for funding in fundings:
        source = data.draw(st.sampled_from(SOURCES), label="funding source")
        await apply(client, resources, a.payload(funding, funding.steps[0]), source)
    for delivery, before in zip(sends, early, strict=True):
        if before:
            await apply(client, resources, a.payload(delivery.plan, delivery.step), delivery.source)
    late_sent = {a.trade_ids[d.plan.key] for d, before in zip(sends, early, strict=True) if before}
    late_sent |= {a.trade_ids[f.key] for f in fundings if late[f.user]}
    for row in (await trade_rows(engine, sorted(late_sent))).values():
        # Arrived before its user registered: recorded, attributed to no one, nothing posted.
        assert (row["user_id"], row["posted"]) == (None, ZERO), row
    for user in range(n_users):
        if late[user]:
            await register_user(client, a.users[user], a.steams[user])  # adopts what arrived before
    for delivery, before in zip(sends, early, strict=True):
        if not before:
            verdict = await apply(client, resources, a.payload(delivery.plan, delivery.step), delivery.source)
            assert verdict == ("approve" if delivery.asks else None)

    # World B: the same snapshots once each, in path order, as callbacks, to users registered beforehand.
    b = World.fresh("canon", n_users, plans)
    for user in range(n_users):
        await register_user(client, b.users[user], b.steams[user])
    for plan in plans:
        for step in plan.steps:
            verdict = await apply(client, resources, b.payload(plan, step), Source.CALLBACK)
            assert verdict == ("approve" if Delivery(plan, step, Source.CALLBACK).asks else None)

    # The books: each trade posted the model's target, and the same row in both worlds.
    rows_a = await trade_rows(engine, list(a.trade_ids.values()))
    rows_b = await trade_rows(engine, list(b.trade_ids.values()))
    for plan in plans:
        row_a, row_b = rows_a[a.trade_ids[plan.key]], rows_b[b.trade_ids[plan.key]]
        story = (plan.type, plan.identity, [s.status for s in plan.steps], late[plan.user])
        assert row_a["posted"] == row_b["posted"] == plan.target, story
        assert row_a["user_id"] == a.users[plan.user], story
        assert row_b["user_id"] == b.users[plan.user], story
        for column in ("status", "total_price", "pre_credit", "approved_amount"):
            assert row_a[column] == row_b[column], (column, story)

    # Every balance equals the model, the sum of its entries, and the twin world's.
    for world in (a, b):
        sums = await entry_sums(engine, world.users)
        stored = await stored_balances(engine, world.users)
        for user, user_id in enumerate(world.users):
            assert await balance(client, user_id) == stored[user_id] == sums[user_id] == expected[user], user
    assert await book_problems(engine) == []
