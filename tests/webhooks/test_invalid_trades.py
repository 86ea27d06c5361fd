"""Trade callbacks we cannot apply: 422 INVALID_TRADE with the fields named, kept for review, no money moved."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.support import auth, balance, deliver, deliver_trade, register_user, trade
from tests.webhooks.helpers import count, deliveries, entries, error_of, funded_user, ledger, trade_row


def _deposit(**changes: Any) -> dict[str, Any]:
    payload = trade(trade_id="t-bad", status="hold", total="100.00", pre="60.00", pending="40.00", user_id="u1")
    payload.update(changes)
    return payload


def _without(*keys: str) -> dict[str, Any]:
    return {k: v for k, v in _deposit().items() if k not in keys}


D = Decimal

CASES = [
    pytest.param(_deposit(totalPrice=D("-100.00")), "trade.totalPrice", "must not be negative", id="negative-total"),
    pytest.param(
        _deposit(preCredit=D("-10.00"), pendingCredit=D("110.00")), "trade.preCredit", "negative", id="neg-pre"
    ),
    pytest.param(
        _deposit(preCredit=D("110.00"), pendingCredit=D("-10.00")), "trade.pendingCredit", "negative", id="neg-pending"
    ),
    pytest.param(
        _deposit(preCredit=D("60.00"), pendingCredit=D("50.00")),
        None,
        "preCredit + pendingCredit must equal totalPrice",
        id="credits-do-not-add-up",
    ),
    pytest.param(
        _deposit(preCredit=D("100.01"), pendingCredit=None),
        None,
        "preCredit + pendingCredit must equal totalPrice",
        id="pre-above-total",
    ),
    pytest.param(_deposit(status="teleported"), "trade.status", "teleported", id="unknown-status"),
    pytest.param(_deposit(status=""), "trade.status", "", id="empty-status"),
    pytest.param(_deposit(type="gift"), "trade.type", "gift", id="unknown-type"),
    pytest.param(_without("id"), "trade.id", "required", id="missing-id"),
    pytest.param(_deposit(id=""), "trade.id", "", id="empty-id"),
    pytest.param(_without("totalPrice"), "trade.totalPrice", "required", id="missing-total"),
    pytest.param(_without("type"), "trade.type", "required", id="missing-type"),
    pytest.param(_without("status"), "trade.status", "required", id="missing-status"),
    pytest.param(
        _deposit(totalPrice=D("100.000000001"), preCredit=D("60.000000001")),
        "trade.totalPrice",
        "more digits",
        id="total-too-many-decimals",
    ),
    pytest.param(
        _deposit(preCredit=D("60.000000001"), pendingCredit=D("39.999999999")),
        "trade.preCredit",
        "more digits",
        id="credit-too-many-decimals",
    ),
    pytest.param(_deposit(totalPrice="NaN"), "trade.totalPrice", "finite", id="nan-total"),
    pytest.param(_deposit(totalPrice="a lot"), "trade.totalPrice", "", id="text-total"),
    pytest.param(
        _deposit(items=[{"id": "i-1", "offer": {"price": D("-5.00")}}]),
        "trade.items.0.offer.price",
        "negative",
        id="negative-item-price",
    ),
    pytest.param(
        _deposit(items=[{"id": "i-1", "offer": {"price": D("5.000000001")}}]),
        "trade.items.0.offer.price",
        "more digits",
        id="item-price-too-many-decimals",
    ),
    pytest.param(
        _deposit(items=[{"id": "i-1", "amount": 0, "offer": {"price": D("100.00")}}]),
        "trade.items.0.amount",
        "positive",
        id="zero-item-amount",
    ),
    pytest.param(_deposit(game="730" * 10), "trade.game", "", id="game-too-long"),
]


@pytest.mark.parametrize(("payload", "field", "reason"), CASES)
async def test_invalid_trade_is_refused_kept_for_review_and_moves_no_money(client, engine, payload, field, reason):
    await funded_user(client, "u1", "25.00")
    before_ledger = await ledger(client, "u1")
    trades_before = await count(engine, "trades")

    response = await deliver_trade(client, payload, delivery_id="d-bad")

    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["key"] == "INVALID_TRADE"
    fields = error["fields"]
    assert fields, error
    assert all(name == "trade" or name.startswith("trade.") for name in fields)
    if field is not None:
        assert field in fields, fields
        assert reason.lower() in fields[field].lower()
    else:
        assert any(reason in text for text in fields.values()), fields
    assert reason.lower() in error["message"].lower()

    [bad] = [d for d in await deliveries(engine) if d["delivery_id"] == "d-bad"]
    assert (bad["kind"], bad["outcome"], bad["trade_id"]) == ("trade", "invalid", None)
    assert bad["detail"] == error["message"]
    assert bad["subject_id"] == (payload.get("id") or None)

    assert await balance(client, "u1") == Decimal("25.00")
    assert await ledger(client, "u1") == before_ledger
    assert await count(engine, "trades") == trades_before
    assert await trade_row(engine, "t-bad") is None


async def test_invalid_approval_is_a_4xx_so_it_rejects_and_debits_nothing(client, engine):
    steam = await funded_user(client, "u1", "100.00")
    payload = trade(type="withdraw", status="initiated", total="-30.00", user_id="u1", steam_id=steam)
    response = await deliver_trade(client, payload)
    assert response.status_code == 422
    assert error_of(response)["key"] == "INVALID_TRADE"
    assert "action" not in response.json()
    assert await balance(client, "u1") == Decimal("100.00")
    assert await entries(engine, "u1") == [(Decimal("100.00"), "credit")]
    assert await count(engine, "approval_verdicts") == 0


async def test_invalid_callback_for_a_known_trade_flags_it_and_changes_nothing_else(client, engine):
    steam = await register_user(client, "u1")
    good = trade(trade_id="t-1", status="hold", total="100.00", pre="60.00", user_id="u1", steam_id=steam)
    assert (await deliver_trade(client, good)).status_code == 200
    before = await trade_row(engine, "t-1")
    assert before is not None
    assert before["needs_review"] is False

    bad = {**good, "status": "completed", "preCredit": Decimal("60.00"), "pendingCredit": Decimal("50.00")}
    response = await deliver_trade(client, bad, delivery_id="d-bad")
    assert response.status_code == 422
    assert error_of(response)["key"] == "INVALID_TRADE"

    after = await trade_row(engine, "t-1")
    assert after is not None
    assert after["needs_review"] is True
    assert after["review_reason"].startswith("invalid callback refused: ")
    assert "preCredit + pendingCredit must equal totalPrice" in after["review_reason"]
    assert (after["status"], after["posted"], after["total_price"]) == ("hold", Decimal("60.00"), Decimal("100.00"))
    assert await balance(client, "u1") == Decimal("60.00")
    assert await entries(engine, "u1") == [(Decimal("60.00"), "pre_credit")]
    [bad_delivery] = [d for d in await deliveries(engine) if d["delivery_id"] == "d-bad"]
    assert (bad_delivery["outcome"], bad_delivery["subject_id"]) == ("invalid", "t-1")

    # A correct completion still applies; the flag stays for a person to clear.
    assert (await deliver_trade(client, {**good, "status": "completed"})).status_code == 200
    assert await balance(client, "u1") == Decimal("100.00")
    final = await trade_row(engine, "t-1")
    assert final is not None
    assert (final["status"], final["needs_review"]) == ("completed", True)


async def test_invalid_callback_replayed_is_refused_again_and_stored_once(client, engine):
    await register_user(client, "u1")
    bad = _deposit(totalPrice=D("-1.00"))
    first = await deliver_trade(client, bad, delivery_id="d-bad")
    second = await deliver_trade(client, bad, delivery_id="d-bad")
    assert (first.status_code, second.status_code) == (422, 422)
    assert error_of(second)["key"] == "INVALID_TRADE"
    assert [(d["delivery_id"], d["outcome"]) for d in await deliveries(engine)] == [("d-bad", "invalid")]


async def test_sub_cent_amounts_within_eight_decimals_are_exact(client, engine):
    """Not every amount with more than two decimals is refused: up to 8 are stored and posted exactly."""
    steam = await register_user(client, "u1")
    payload = trade(
        trade_id="t-1", status="hold", total="0.035", pre="0.021", pending="0.014", user_id="u1", steam_id=steam
    )
    response = await deliver(client, {"trade": payload})
    assert response.status_code == 200, response.text
    assert await balance(client, "u1") == Decimal("0.021")
    assert (await client.get("/v1/balance", headers=auth("u1"))).json()["available"] == "0.021"
