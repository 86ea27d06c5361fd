"""`GET /v1/admin/exposure` against sums the test works out itself, and `GET /v1/admin/users/{id}`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.services.admin import RECENT
from tests.admin.helpers import ACTOR, adjust, assert_books_balance, funded, ops
from tests.support import deliver_trade, iso, register_user, trade
from tests.webhooks.helpers import error_of


async def exposure(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/admin/exposure", headers=ops())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_nothing_at_risk_on_empty_books(client: httpx.AsyncClient) -> None:
    assert await exposure(client) == {
        "preCreditInHold": {"total": "0.00", "trades": 0, "byHoldEndDate": []},
        "debts": {"users": 0, "total": "0.00"},
        "currency": "USD",
    }


@dataclass
class Deposit:
    """One deposit as the test drives it: the statuses it goes through, and what the test expects it to hold."""

    user_id: str
    total: str
    pre: str
    statuses: tuple[str, ...]
    hold_end: datetime | None = None

    def payload(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"holdEndDate": iso(self.hold_end)} if self.hold_end is not None else {}
        return trade(total=self.total, pre=self.pre, user_id=self.user_id, **extra)

    @property
    def credited(self) -> Decimal:
        """What the rule says it has credited, by its last status (DESIGN §2), worked out here, not by the code."""
        last = self.statuses[-1]
        return {"hold": Decimal(self.pre), "completed": Decimal(self.total)}.get(last, Decimal(0))


async def test_exposure_is_the_precredit_in_hold_by_day_and_the_debts(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    day = datetime(2026, 12, 20, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    for user_id in ("u1", "u2", "u3", "u4", "u5"):
        await register_user(client, user_id)
    deposits = [
        Deposit("u1", "100.00", "60.00", ("hold",), day + timedelta(hours=10)),
        Deposit("u1", "50.00", "30.50", ("hold",), day + timedelta(hours=23, minutes=30)),
        # 00:30 at UTC+2 is still the 20th in UTC.
        Deposit("u2", "20.00", "12.25", ("active", "hold"), datetime(2026, 12, 21, 0, 30, tzinfo=plus_two)),
        Deposit("u2", "15.00", "9.00", ("hold",), day + timedelta(days=3)),
        Deposit("u2", "8.00", "5.00", ("hold",)),  # no end date from AssetPay
        Deposit("u3", "70.00", "42.00", ("hold", "completed"), day),  # done: nothing at risk
        Deposit("u3", "10.00", "0", ("hold",), day),  # no instant credit: nothing at risk
        Deposit("u4", "60.00", "60.00", ("hold",), day),  # spent below, then reverted: a debt
        Deposit("ghost", "90.00", "54.00", ("hold",), day),  # nobody's: nothing was credited
    ]
    payloads = []
    for deposit in deposits:
        payload = deposit.payload()
        payloads.append(payload)
        for status in deposit.statuses:
            assert (await deliver_trade(client, {**payload, "status": status})).status_code == 200
    # u4 spends the preCredit on a withdrawal we approve, then the deposit is reverted.
    approval = await deliver_trade(client, trade(type="withdraw", status="initiated", total="45.00", user_id="u4"))
    assert approval.json() == {"action": "approve"}
    assert (await deliver_trade(client, {**payloads[7], "status": "reverted"})).status_code == 200
    deposits[7].statuses += ("reverted",)
    # u5 owes what an operator charged on purpose.
    assert (
        await adjust(client, {"userId": "u5", "amount": "-7.50", "reason": "chargeback", "allowDebt": True})
    ).status_code == 201

    # What the test expects, from its own model of the books.
    balances: dict[str, Decimal] = defaultdict(Decimal)
    held: dict[str | None, tuple[int, Decimal]] = {}
    for deposit in deposits:
        if deposit.user_id == "ghost":
            continue
        balances[deposit.user_id] += deposit.credited
        if deposit.statuses[-1] == "hold" and deposit.credited > 0:
            key = deposit.hold_end.astimezone(UTC).date().isoformat() if deposit.hold_end else None
            count, total = held.get(key, (0, Decimal(0)))
            held[key] = (count + 1, total + deposit.credited)
    balances["u4"] -= Decimal("45.00")
    balances["u5"] -= Decimal("7.50")
    debts = [amount for amount in balances.values() if amount < 0]
    by_day = sorted(held.items(), key=lambda item: (item[0] is None, item[0] or ""))

    assert await exposure(client) == {
        "preCreditInHold": {
            "total": f"{sum(total for _, total in held.values()):.2f}",
            "trades": sum(count for count, _ in held.values()),
            "byHoldEndDate": [{"date": key, "trades": n, "total": f"{total:.2f}"} for key, (n, total) in by_day],
        },
        "debts": {"users": len(debts), "total": f"{-sum(debts):.2f}"},
        "currency": "USD",
    }
    # The model's figures, spelled out: 60 + 30.50 + 12.25 on the 20th, 9 on the 23rd, 5 without a date; u4 owes 45
    # (60 credited, 45 spent, 60 taken back) and u5 7.50.
    assert (await exposure(client))["preCreditInHold"]["total"] == "116.75"
    assert (await exposure(client))["debts"] == {"users": 2, "total": "52.50"}
    await assert_books_balance(engine)


async def test_a_users_overview_shows_profile_balance_trades_and_entries(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    deposit = await funded(client, "u1", "10.00")
    pending = trade(status="hold", total="20.00", pre="12.00", user_id="u1")
    assert (await deliver_trade(client, pending)).status_code == 200
    assert (await adjust(client, {"userId": "u1", "amount": "-2.00", "reason": "fee correction"})).status_code == 201
    await funded(client, "u2", "99.00")  # someone else's: not shown

    response = await client.get("/v1/admin/users/u1", headers=ops())
    assert response.status_code == 200, response.text
    overview = response.json()
    assert overview["user"]["id"] == "u1"
    assert overview["user"]["steamId"].startswith("76561")
    assert overview["balance"] == {"available": "20.00", "pending": "8.00", "currency": "USD"}
    assert [(t["assetpayId"], t["status"], t["userId"]) for t in overview["trades"]] == [
        (pending["id"], "hold", "u1"),
        (deposit["id"], "completed", "u1"),
    ]
    assert [(e["kind"], e["amount"], e["balanceAfter"], e["reason"], e["actor"]) for e in overview["entries"]] == [
        ("adjustment", "-2.00", "20.00", "fee correction", ACTOR),
        ("pre_credit", "12.00", "22.00", None, None),
        ("credit", "10.00", "10.00", None, None),
    ]
    await assert_books_balance(engine)


async def test_the_overview_shows_the_newest_only(client: httpx.AsyncClient) -> None:
    await register_user(client, "u1")
    sent = []
    for n in range(RECENT + 2):
        payload = trade(status="completed", total=f"{n + 1}.00", pre="0", user_id="u1")
        assert (await deliver_trade(client, payload)).status_code == 200
        sent.append(payload["id"])
    overview = (await client.get("/v1/admin/users/u1", headers=ops())).json()
    assert [t["assetpayId"] for t in overview["trades"]] == list(reversed(sent))[:RECENT]
    assert [e["amount"] for e in overview["entries"]] == [f"{n}.00" for n in range(RECENT + 2, 2, -1)]


async def test_an_unknown_user_is_404_and_a_bad_id_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/admin/users/nobody", headers=ops())
    assert response.status_code == 404
    assert error_of(response)["key"] == "USER_NOT_FOUND"
    response = await client.get("/v1/admin/users/bad%20id", headers=ops())
    assert response.status_code == 422
