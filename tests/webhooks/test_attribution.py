"""Whose trade is it: callbacks for trades we never started, unknown users and their later adoption; the legacy
edition's spellings; and how the trade then reads through `GET /v1/trades/{id}`."""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import REGISTRY

from tests.support import ADMIN_KEY, TRADE_URL, auth, balance, deliver_trade, new_steam_id, register_user, trade
from tests.webhooks.helpers import count, deliveries, entries, funded_user, trade_row


async def test_trade_we_never_started_is_created_and_attributed_by_external_client_user_id(client, engine):
    await register_user(client, "u1")
    payload = trade(trade_id="t-1", status="hold", total="100.00", pre="60.00", user_id="u1")
    response = await deliver_trade(client, payload)
    assert response.json() == {"received": True}
    stored = await trade_row(engine, "t-1")
    assert stored is not None
    assert (stored["user_id"], stored["external_client_user_id"], stored["external_id"]) == ("u1", "u1", None)
    assert stored["needs_review"] is False
    assert await balance(client, "u1") == Decimal("60.00")


async def test_trade_without_our_user_id_is_attributed_by_steam_id(client, engine):
    steam = await register_user(client, "u1")
    payload = trade(trade_id="t-1", status="hold", total="100.00", pre="60.00", steam_id=steam)
    assert (await deliver_trade(client, payload)).status_code == 200
    stored = await trade_row(engine, "t-1")
    assert stored is not None
    assert (stored["user_id"], stored["client_steam_id"]) == ("u1", steam)
    assert await balance(client, "u1") == Decimal("60.00")


async def test_external_client_user_id_wins_over_the_steam_id(client, engine):
    steam_2 = await register_user(client, "u2")  # registered first, so a plain "first row found" would pick u2
    await register_user(client, "u1")
    payload = trade(trade_id="t-1", status="completed", total="100.00", user_id="u1", steam_id=steam_2)
    assert (await deliver_trade(client, payload)).status_code == 200
    assert await balance(client, "u1") == Decimal("100.00")
    assert await balance(client, "u2") == Decimal("0")
    assert await entries(engine, "u2") == []


async def test_unknown_external_client_user_id_falls_back_to_the_steam_id(client, engine):
    steam = await register_user(client, "u1")
    payload = trade(trade_id="t-1", status="completed", total="100.00", user_id="not-ours", steam_id=steam)
    assert (await deliver_trade(client, payload)).status_code == 200
    stored = await trade_row(engine, "t-1")
    assert stored is not None
    assert stored["user_id"] == "u1"
    assert await balance(client, "u1") == Decimal("100.00")


async def test_unknown_users_trade_is_stored_flagged_and_posts_nothing(client, engine):
    await register_user(client, "bystander")
    payload = trade(trade_id="t-1", status="completed", total="100.00", user_id="ghost", steam_id=new_steam_id())
    response = await deliver_trade(client, payload, delivery_id="d-ghost")
    assert response.status_code == 200
    assert response.json() == {"received": True}
    stored = await trade_row(engine, "t-1")
    assert stored is not None
    assert (stored["user_id"], stored["status"], stored["posted"]) == (None, "completed", Decimal("0"))
    assert stored["needs_review"] is True
    assert "no user of ours" in stored["review_reason"]
    assert await count(engine, "ledger_entries") == 0
    assert await balance(client, "bystander") == Decimal("0")
    [stored_delivery] = await deliveries(engine)
    assert (stored_delivery["delivery_id"], stored_delivery["trade_id"]) == ("d-ghost", stored["id"])


async def test_trade_with_no_user_fields_at_all_is_stored_and_flagged(client, engine):
    payload = trade(trade_id="t-1", status="hold", total="10.00", pre="6.00")
    assert (await deliver_trade(client, payload)).status_code == 200
    stored = await trade_row(engine, "t-1")
    assert stored is not None
    assert (stored["user_id"], stored["needs_review"], stored["posted"]) == (None, True, Decimal("0"))
    assert await count(engine, "ledger_entries") == 0


async def test_approval_for_an_unknown_user_is_rejected_and_flagged(client, engine):
    payload = trade(trade_id="w-1", type="withdraw", status="initiated", total="30.00", user_id="ghost")
    response = await deliver_trade(client, payload)
    assert response.status_code == 200
    assert response.json() == {"action": "reject", "reason": "unknown user"}
    again = await deliver_trade(client, payload)
    assert again.json() == {"action": "reject", "reason": "unknown user"}
    stored = await trade_row(engine, "w-1")
    assert stored is not None
    assert (stored["user_id"], stored["approved_amount"], stored["posted"]) == (None, None, Decimal("0"))
    assert stored["needs_review"] is True
    assert await count(engine, "ledger_entries") == 0


async def test_rejected_approval_is_not_revived_when_the_user_registers(client, engine):
    payload = trade(trade_id="w-1", type="withdraw", status="initiated", total="30.00", user_id="u9")
    assert (await deliver_trade(client, payload)).json() == {"action": "reject", "reason": "unknown user"}
    await funded_user(client, "u9", "100.00")
    assert (await deliver_trade(client, payload)).json() == {"action": "reject", "reason": "unknown user"}
    assert await balance(client, "u9") == Decimal("100.00")
    assert await entries(engine, "u9") == [(Decimal("100.00"), "credit")]


async def test_orphan_deposit_is_adopted_and_credited_when_the_user_registers(client, engine):
    steam = new_steam_id()
    payload = trade(trade_id="t-1", status="hold", total="100.00", pre="60.00", user_id="u9", steam_id=steam)
    assert (await deliver_trade(client, payload)).status_code == 200
    assert await count(engine, "ledger_entries") == 0

    response = await client.put(
        "/v1/users/u9", json={"steamId": steam, "tradeUrl": TRADE_URL}, headers={"X-Admin-Key": ADMIN_KEY}
    )
    assert response.status_code == 201, response.text

    assert await balance(client, "u9") == Decimal("60.00")
    stored = await trade_row(engine, "t-1")
    assert stored is not None
    assert (stored["user_id"], stored["posted"]) == ("u9", Decimal("60.00"))
    assert await entries(engine, "u9") == [(Decimal("60.00"), "pre_credit")]

    # Registering again adopts nothing twice; the completion then credits the rest.
    await register_user(client, "u9", steam)
    assert await balance(client, "u9") == Decimal("60.00")
    assert (await deliver_trade(client, {**payload, "status": "completed"})).status_code == 200
    assert await balance(client, "u9") == Decimal("100.00")
    assert await entries(engine, "u9") == [(Decimal("60.00"), "pre_credit"), (Decimal("40.00"), "credit")]


async def test_orphan_known_only_by_steam_id_is_adopted_by_that_steam_id(client, engine):
    steam = new_steam_id()
    payload = trade(trade_id="t-1", status="completed", total="42.50", steam_id=steam)
    assert (await deliver_trade(client, payload)).status_code == 200
    await register_user(client, "u9", steam)
    assert await balance(client, "u9") == Decimal("42.50")
    assert await entries(engine, "u9") == [(Decimal("42.50"), "credit")]


async def test_orphan_is_not_adopted_by_a_different_user(client, engine):
    payload = trade(trade_id="t-1", status="completed", total="42.50", user_id="u9", steam_id=new_steam_id())
    assert (await deliver_trade(client, payload)).status_code == 200
    await register_user(client, "u8")
    assert await balance(client, "u8") == Decimal("0")
    stored = await trade_row(engine, "t-1")
    assert stored is not None
    assert stored["user_id"] is None


async def test_orphan_reaching_the_user_through_a_later_callback_is_credited_once(client, engine):
    """Registered between two callbacks: the next callback attributes the trade and posts its whole target once."""
    steam = new_steam_id()
    payload = trade(trade_id="t-1", status="hold", total="100.00", pre="60.00", user_id="u9", steam_id=steam)
    assert (await deliver_trade(client, payload)).status_code == 200
    await register_user(client, "u9", steam)
    assert (await deliver_trade(client, {**payload, "status": "completed"})).status_code == 200
    assert await balance(client, "u9") == Decimal("100.00")
    assert sum(amount for amount, _ in await entries(engine, "u9")) == Decimal("100.00")


# --- the older edition ------------------------------------------------------------------------------------------


async def test_legacy_upper_case_deposit_hold_then_completed(client, engine):
    steam = await register_user(client, "u1")
    payload = trade(
        trade_id="t-1",
        type="DEPOSIT",
        status="HOLD",
        total="100.00",
        pre="60.00",
        pending="40.00",
        user_id="u1",
        steam_id=steam,
    )
    assert (await deliver_trade(client, payload)).json() == {"received": True}
    assert await balance(client, "u1") == Decimal("60.00")
    assert (await deliver_trade(client, {**payload, "status": "COMPLETED"})).json() == {"received": True}
    assert await balance(client, "u1") == Decimal("100.00")
    stored = await trade_row(engine, "t-1")
    assert stored is not None
    assert (stored["type"], stored["status"]) == ("deposit", "completed")
    assert await entries(engine, "u1") == [(Decimal("60.00"), "pre_credit"), (Decimal("40.00"), "credit")]


async def test_legacy_escrow_is_treated_like_hold(client, engine):
    steam = await register_user(client, "u1")
    payload = trade(
        trade_id="t-1",
        type="DEPOSIT",
        status="ESCROW",
        total="100.00",
        pre="60.00",
        pending="40.00",
        user_id="u1",
        steam_id=steam,
    )
    assert (await deliver_trade(client, payload)).status_code == 200
    assert await balance(client, "u1") == Decimal("60.00")
    stored = await trade_row(engine, "t-1")
    assert stored is not None
    assert (stored["status"], stored["posted"]) == ("hold", Decimal("60.00"))
    # hold after ESCROW is the same status: no new credit.
    assert (await deliver_trade(client, {**payload, "status": "hold"})).status_code == 200
    assert await entries(engine, "u1") == [(Decimal("60.00"), "pre_credit")]


async def test_legacy_escrow_then_cancelled_takes_the_credit_back(client, engine):
    steam = await register_user(client, "u1")
    payload = trade(
        trade_id="t-1",
        type="Deposit",
        status="Escrow",
        total="100.00",
        pre="60.00",
        pending="40.00",
        user_id="u1",
        steam_id=steam,
    )
    assert (await deliver_trade(client, payload)).status_code == 200
    assert (await deliver_trade(client, {**payload, "status": "CANCELLED"})).status_code == 200
    assert await balance(client, "u1") == Decimal("0.00")
    assert await entries(engine, "u1") == [(Decimal("60.00"), "pre_credit"), (Decimal("-60.00"), "reversal")]


async def test_legacy_upper_case_withdraw_initiated_is_an_approval(client, engine):
    steam = await funded_user(client, "u1", "100.00")
    payload = trade(trade_id="w-1", type="WITHDRAW", status="INITIATED", total="30.00", user_id="u1", steam_id=steam)
    response = await deliver_trade(client, payload)
    assert response.json() == {"action": "approve"}
    assert await balance(client, "u1") == Decimal("70.00")
    [ask] = [d for d in await deliveries(engine) if d["subject_id"] == "w-1"]
    assert (ask["kind"], ask["outcome"]) == ("approval", "approve")


# --- how the trade reads afterwards -----------------------------------------------------------------------------


async def test_get_trade_shows_money_as_decimal_strings(client, engine):
    steam = await register_user(client, "u1")
    payload = trade(
        trade_id="ap-60",
        status="hold",
        total=Decimal("60"),
        pre=Decimal("36"),
        pending=Decimal("24"),
        user_id="u1",
        steam_id=steam,
        items=[{"id": "item-1", "marketHashName": "AK-47 | Redline", "offer": {"price": Decimal("60")}}],
    )
    assert (await deliver_trade(client, payload)).status_code == 200
    stored = await trade_row(engine, "ap-60")
    assert stored is not None

    response = await client.get(f"/v1/trades/{stored['id']}", headers=auth("u1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == str(stored["id"])
    assert body["assetpayId"] == "ap-60"
    assert (body["type"], body["status"], body["game"]) == ("deposit", "hold", "730")
    assert body["totalPrice"] == "60.00"
    assert body["preCredit"] == "36.00"
    assert body["pendingCredit"] == "24.00"
    assert body["credited"] == "36.00"
    assert body["items"] == [{"id": "item-1", "marketHashName": "AK-47 | Redline", "price": "60.00", "amount": 1}]

    listed = await client.get("/v1/trades", headers=auth("u1"))
    assert [t["assetpayId"] for t in listed.json()["trades"]] == ["ap-60"]
    assert listed.json()["trades"][0]["totalPrice"] == "60.00"

    assert (await deliver_trade(client, {**payload, "status": "completed"})).status_code == 200
    body = (await client.get(f"/v1/trades/{stored['id']}", headers=auth("u1"))).json()
    assert (body["status"], body["credited"]) == ("completed", "60.00")


async def test_another_users_trade_is_not_found(client, engine):
    await register_user(client, "u1")
    await register_user(client, "u2")
    assert (await deliver_trade(client, trade(trade_id="t-1", status="hold", user_id="u1"))).status_code == 200
    stored = await trade_row(engine, "t-1")
    assert stored is not None
    response = await client.get(f"/v1/trades/{stored['id']}", headers=auth("u2"))
    assert response.status_code == 404
    assert response.json()["error"]["key"] == "TRADE_NOT_FOUND"


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_adoption_is_counted_like_every_other_settlement(client, engine):
    """Adoption goes through the settlement path: its posting is counted, and so is the settlement by source."""
    steam = new_steam_id()
    postings = _sample("ledger_postings_total", kind="credit")
    adoptions = _sample("settlements_total", source="adoption", outcome="adopted")
    await deliver_trade(client, trade(trade_id="t-adopt", status="completed", total="30.00", steam_id=steam))
    await register_user(client, "u-adopt", steam)
    assert await balance(client, "u-adopt") == Decimal("30.00")
    assert _sample("ledger_postings_total", kind="credit") == postings + 1
    assert _sample("settlements_total", source="adoption", outcome="adopted") == adoptions + 1


async def test_adoption_applies_the_review_flags_of_the_callback_path(client, engine):
    """A withdrawal completed without our approval, adopted later, is charged and flagged like one that arrived
    for a known user; the unknown-user flag goes once the user is known."""
    steam = new_steam_id()
    await deliver_trade(
        client, trade(trade_id="t-unapproved", type="withdraw", status="completed", total="5.00", steam_id=steam)
    )
    before = await trade_row(engine, "t-unapproved")
    assert before is not None
    assert "no user of ours" in before["review_reason"]
    await register_user(client, "u-unapproved", steam)
    after = await trade_row(engine, "t-unapproved")
    assert after is not None
    assert after["needs_review"]
    assert "without an approve verdict" in after["review_reason"]
    assert "no user of ours" not in after["review_reason"]
    assert await balance(client, "u-unapproved") == Decimal("-5.00")
