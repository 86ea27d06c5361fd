"""`POST /webhooks/assetpay`: signatures over HTTP, the test ping, classification, dedupe and approvals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import SecretStr

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.app import web_settings
from assetpay_merchant.config import Settings
from assetpay_merchant.gateway.signature import sign
from assetpay_merchant.services.intake import CRYPTO_UNSUPPORTED
from tests.support import (
    PREVIOUS_WEBHOOK_SECRET,
    WEBHOOK_SECRET,
    balance,
    deliver,
    deliver_trade,
    dumps,
    iso,
    register_user,
    signed,
    trade,
)
from tests.webhooks.helpers import (
    WEBHOOK,
    count,
    deliveries,
    entries,
    error_of,
    funded_user,
    ledger,
    post_raw,
    rows,
    trade_row,
)

T = datetime(2026, 7, 31, 12, 0, 0, tzinfo=UTC)
TS = iso(T)
ZEROS = "0" * 64

# --- the SDK vector, end to end ---------------------------------------------------------------------------------

SDK_BODY = b'{"event":"trade.completed","tradeId":"trade-1"}'
SDK_SIGNATURE = "264a1a0c4deb4462658b9cc21cce4bf2baaf8da9dd7dd1a51bbd71e0f4d81135"


@pytest.fixture
def sdk_secrets(resources: Resources, settings: Settings) -> Iterator[None]:
    """The app configured mid-rotation, as in the SDK's test: current `new-secret`, previous `current-secret`."""
    rotated = settings.model_copy(
        update={
            "assetpay_api_secret": SecretStr("new-secret"),
            "assetpay_api_secret_previous": SecretStr("current-secret"),
        }
    )
    assert rotated.webhook_secrets == (b"new-secret", b"current-secret")
    original = resources.settings
    resources.settings = web_settings(rotated)
    yield
    resources.settings = original


@pytest.mark.usefixtures("sdk_secrets")
@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"t=2026-07-31T12:00:00.000Z,id=delivery-1,s={ZEROS},s1={SDK_SIGNATURE}", id="s1"),
        pytest.param(f"t=2026-07-31T12:00:00.000Z,id=delivery-1,s={SDK_SIGNATURE}", id="s"),
    ],
)
async def test_sdk_vector_is_accepted_over_http(client, engine, freeze_clock, header):
    freeze_clock(T)
    response = await post_raw(client, SDK_BODY, header)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True}
    [stored] = await deliveries(engine)
    assert stored["delivery_id"] == "delivery-1"
    assert stored["kind"] == "unknown"
    assert stored["outcome"] == "stored"
    assert stored["raw_body"] == SDK_BODY.decode()


@pytest.mark.usefixtures("sdk_secrets")
async def test_sdk_vector_with_zeros_only_is_refused_over_http(client, engine, freeze_clock):
    freeze_clock(T)
    response = await post_raw(client, SDK_BODY, f"t=2026-07-31T12:00:00.000Z,id=delivery-1,s={ZEROS}")
    assert response.status_code == 401
    assert error_of(response)["key"] == "SIGNATURE_MISMATCH"
    assert await count(engine, "webhook_deliveries") == 0


# --- the 300 s window, through HTTP with a frozen clock ---------------------------------------------------------


@pytest.mark.parametrize("seconds", [300, -300, 0])
async def test_timestamp_within_300_seconds_is_accepted(client, engine, freeze_clock, seconds):
    raw = dumps({"event": "window"})
    headers = signed(raw, delivery_id="window-ok", at=T)
    freeze_clock(T + timedelta(seconds=seconds))
    response = await client.post(WEBHOOK, content=raw, headers=headers)
    assert response.status_code == 200, response.text
    assert [d["delivery_id"] for d in await deliveries(engine)] == ["window-ok"]


@pytest.mark.parametrize("seconds", [301, -301])
async def test_timestamp_beyond_300_seconds_is_refused(client, engine, freeze_clock, seconds):
    raw = dumps({"event": "window"})
    headers = signed(raw, delivery_id="window-late", at=T)
    freeze_clock(T + timedelta(seconds=seconds))
    response = await client.post(WEBHOOK, content=raw, headers=headers)
    assert response.status_code == 401
    assert error_of(response)["key"] == "SIGNATURE_TIMESTAMP_EXPIRED"
    assert await count(engine, "webhook_deliveries") == 0


# --- every 401, and nothing stored for any of them --------------------------------------------------------------


@pytest.fixture
async def hold_deposit(client) -> tuple[str, bytes]:
    """A registered user `u1` and the raw body of a deposit in hold that would credit them 60.00."""
    steam = await register_user(client, "u1")
    payload = trade(trade_id="t-401", status="hold", total="100.00", pre="60.00", user_id="u1", steam_id=steam)
    return "t-401", dumps({"trade": payload})


def _sig(raw: bytes, *, t: str = TS, delivery_id: str = "d-401", secret: bytes = WEBHOOK_SECRET) -> str:
    return sign(secret, delivery_id, t, raw)


def _bad_headers(raw: bytes) -> list[tuple[str, str | None, str]]:
    good = _sig(raw)
    no_tz = "2026-07-31T12:00:00"
    return [
        ("missing", None, "SIGNATURE_MISSING"),
        ("empty", "", "SIGNATURE_MISSING"),
        ("no-equals", "signature", "SIGNATURE_MALFORMED"),
        ("no-t", f"id=d-401,s={good}", "SIGNATURE_MALFORMED"),
        ("no-id", f"t={TS},s={good}", "SIGNATURE_MALFORMED"),
        ("no-s", f"t={TS},id=d-401", "SIGNATURE_MALFORMED"),
        ("empty-s", f"t={TS},id=d-401,s=", "SIGNATURE_MALFORMED"),
        ("duplicated-s", f"t={TS},id=d-401,s={good},s={good}", "SIGNATURE_MALFORMED"),
        ("duplicated-id", f"t={TS},id=d-401,id=d-401,s={good}", "SIGNATURE_MALFORMED"),
        ("unparseable-t", f"t=last-tuesday,id=d-401,s={_sig(raw, t='last-tuesday')}", "SIGNATURE_TIMESTAMP_INVALID"),
        ("t-without-zone", f"t={no_tz},id=d-401,s={_sig(raw, t=no_tz)}", "SIGNATURE_TIMESTAMP_INVALID"),
        ("wrong-secret", f"t={TS},id=d-401,s={_sig(raw, secret=b'someone-else')}", "SIGNATURE_MISMATCH"),
        ("zeros", f"t={TS},id=d-401,s={ZEROS}", "SIGNATURE_MISMATCH"),
        ("other-delivery-id", f"t={TS},id=d-402,s={good}", "SIGNATURE_MISMATCH"),
        ("only-in-unknown-field", f"t={TS},id=d-401,s={ZEROS},s9={good}", "SIGNATURE_MISMATCH"),
    ]


_BAD_HEADER_IDS = [case[0] for case in _bad_headers(b"")]


@pytest.mark.parametrize("case", _BAD_HEADER_IDS)
async def test_every_bad_signature_is_401_with_its_key_and_stores_nothing(
    client, engine, freeze_clock, hold_deposit, case
):
    trade_id, raw = hold_deposit
    [(_, header, key)] = [c for c in _bad_headers(raw) if c[0] == case]
    freeze_clock(T)
    response = await post_raw(client, raw, header)
    assert response.status_code == 401
    assert error_of(response)["key"] == key
    assert await count(engine, "webhook_deliveries") == 0
    assert await trade_row(engine, trade_id) is None
    assert await balance(client, "u1") == Decimal("0")
    assert await ledger(client, "u1") == []


async def test_expired_signature_stores_nothing(client, engine, freeze_clock, hold_deposit):
    trade_id, raw = hold_deposit
    freeze_clock(T + timedelta(minutes=10))
    response = await post_raw(client, raw, f"t={TS},id=d-401,s={_sig(raw)}")
    assert response.status_code == 401
    assert error_of(response)["key"] == "SIGNATURE_TIMESTAMP_EXPIRED"
    assert await count(engine, "webhook_deliveries") == 0
    assert await trade_row(engine, trade_id) is None
    assert await balance(client, "u1") == Decimal("0")


async def test_the_correct_signature_is_accepted(client, engine, freeze_clock, hold_deposit):
    """The control for the 401 cases above: the same body and header shape, signed right, credits the user."""
    trade_id, raw = hold_deposit
    freeze_clock(T)
    response = await post_raw(client, raw, f"t={TS},id=d-401,s={_sig(raw)}")
    assert response.status_code == 200, response.text
    assert await balance(client, "u1") == Decimal("60.00")
    assert [d["delivery_id"] for d in await deliveries(engine)] == ["d-401"]
    stored = await trade_row(engine, trade_id)
    assert stored is not None
    assert stored["posted"] == Decimal("60.00")


@pytest.mark.parametrize(
    "where",
    [pytest.param("s", id="previous-secret-in-s"), pytest.param("s1", id="previous-secret-in-s1")],
)
async def test_previous_secret_is_accepted_during_rotation(client, engine, freeze_clock, hold_deposit, where):
    _, raw = hold_deposit
    old = _sig(raw, secret=PREVIOUS_WEBHOOK_SECRET)
    header = f"t={TS},id=d-401,s={old}" if where == "s" else f"t={TS},id=d-401,s={ZEROS},s1={old}"
    freeze_clock(T)
    response = await post_raw(client, raw, header)
    assert response.status_code == 200, response.text
    assert await balance(client, "u1") == Decimal("60.00")


async def test_current_secret_in_s1_is_accepted(client, freeze_clock, hold_deposit):
    _, raw = hold_deposit
    freeze_clock(T)
    response = await post_raw(client, raw, f"t={TS},id=d-401,s={ZEROS},s1={_sig(raw)}")
    assert response.status_code == 200, response.text
    assert await balance(client, "u1") == Decimal("60.00")


async def test_body_reserialised_after_signing_is_refused(client, engine, freeze_clock, hold_deposit):
    trade_id, raw = hold_deposit
    header = f"t={TS},id=d-401,s={_sig(raw)}"
    reserialised = json.dumps(json.loads(raw), sort_keys=True, indent=1).encode()
    assert reserialised != raw
    assert json.loads(reserialised) == json.loads(raw)
    freeze_clock(T)
    response = await post_raw(client, reserialised, header)
    assert response.status_code == 401
    assert error_of(response)["key"] == "SIGNATURE_MISMATCH"
    assert await count(engine, "webhook_deliveries") == 0
    assert await trade_row(engine, trade_id) is None
    assert await balance(client, "u1") == Decimal("0")


async def test_body_with_python_json_default_spacing_is_refused(client, engine, freeze_clock, hold_deposit):
    _, raw = hold_deposit
    header = f"t={TS},id=d-401,s={_sig(raw)}"
    freeze_clock(T)
    response = await post_raw(client, json.dumps(json.loads(raw)).encode(), header)
    assert response.status_code == 401
    assert error_of(response)["key"] == "SIGNATURE_MISMATCH"
    assert await count(engine, "webhook_deliveries") == 0


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"not json at all", id="text"),
        pytest.param(b'{"trade": {"id": "t-1"', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param('{"x":1}'.encode("utf-16"), id="utf16"),
    ],
)
async def test_signed_body_that_is_not_json_is_401_invalid_json(client, engine, raw):
    response = await client.post(WEBHOOK, content=raw, headers=signed(raw))
    assert response.status_code == 401
    assert error_of(response)["key"] == "INVALID_JSON"
    assert await count(engine, "webhook_deliveries") == 0


async def test_401_body_has_exactly_key_and_message(client):
    response = await client.post(WEBHOOK, content=dumps({"event": "x"}))
    assert response.status_code == 401
    assert response.json() == {"error": {"key": "SIGNATURE_MISSING", "message": "Missing X-AssetPay-Signature header"}}


# --- the unsigned test ping -------------------------------------------------------------------------------------


PING = {"test": True, "timestamp": "2026-07-31T12:00:00.000Z", "message": "Webhook test from AssetPay"}


async def test_unsigned_test_ping_is_answered_200_and_changes_nothing(client, engine):
    response = await client.post(WEBHOOK, content=dumps(PING), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.json() == {"received": True, "test": True}
    assert await count(engine, "webhook_deliveries") == 0
    assert await count(engine, "trades") == 0


async def test_unsigned_ping_carrying_a_trade_moves_no_money(client, engine):
    await register_user(client, "u1")
    body = {**PING, "trade": trade(status="completed", total="100.00", user_id="u1")}
    response = await client.post(WEBHOOK, content=dumps(body))
    assert response.status_code == 200
    assert await count(engine, "trades") == 0
    assert await count(engine, "webhook_deliveries") == 0
    assert await balance(client, "u1") == Decimal("0")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({**PING, "test": False}, id="test-false"),
        pytest.param({**PING, "test": "true"}, id="test-string"),
        pytest.param({**PING, "test": 1}, id="test-one"),
        pytest.param({"timestamp": PING["timestamp"], "message": "hello"}, id="no-test"),
        pytest.param({"trade": trade(status="completed")}, id="unsigned-trade"),
        pytest.param([PING], id="ping-in-a-list"),
    ],
)
async def test_other_unsigned_bodies_are_401(client, engine, body):
    response = await client.post(WEBHOOK, content=dumps(body))
    assert response.status_code == 401
    assert error_of(response)["key"] == "SIGNATURE_MISSING"
    assert await count(engine, "webhook_deliveries") == 0
    assert await count(engine, "trades") == 0


async def test_ping_with_a_bad_signature_header_is_not_a_ping(client, engine):
    response = await post_raw(client, dumps(PING), "t=x")
    assert response.status_code == 401
    assert error_of(response)["key"] == "SIGNATURE_MALFORMED"


async def test_signed_ping_is_stored_as_unknown(client, engine):
    response = await deliver(client, PING, delivery_id="ping-signed")
    assert response.status_code == 200
    assert response.json() == {"received": True}
    [stored] = await deliveries(engine)
    assert (stored["delivery_id"], stored["kind"], stored["outcome"]) == ("ping-signed", "unknown", "stored")


# --- classification ---------------------------------------------------------------------------------------------


async def test_trade_event_is_applied_and_linked_to_its_delivery(client, engine):
    steam = await register_user(client, "u1")
    payload = trade(trade_id="t-1", status="hold", total="100.00", pre="60.00", user_id="u1", steam_id=steam)
    response = await deliver_trade(client, payload, delivery_id="d-1")
    assert response.status_code == 200
    assert response.json() == {"received": True}
    response = await deliver_trade(client, {**payload, "status": "completed"}, delivery_id="d-2")
    assert response.status_code == 200
    assert response.json() == {"received": True}

    stored = await trade_row(engine, "t-1")
    assert stored is not None
    assert (stored["type"], stored["status"], stored["user_id"]) == ("deposit", "completed", "u1")
    assert stored["posted"] == Decimal("100.00")
    assert stored["needs_review"] is False
    found = await deliveries(engine)
    assert [(d["delivery_id"], d["kind"], d["subject_id"], d["trade_id"]) for d in found] == [
        ("d-1", "trade", "t-1", stored["id"]),
        ("d-2", "trade", "t-1", stored["id"]),
    ]
    assert found[1]["outcome"] == "advance"
    assert await entries(engine, "u1") == [(Decimal("60.00"), "pre_credit"), (Decimal("40.00"), "credit")]
    assert await balance(client, "u1") == Decimal("100.00")


async def test_withdrawal_approval_is_approved_and_debited_first(client, engine):
    steam = await funded_user(client, "u1", "100.00")
    payload = trade(trade_id="w-1", type="withdraw", status="initiated", total="30.00", user_id="u1", steam_id=steam)
    response = await deliver_trade(client, payload, delivery_id="ask-1")
    assert response.status_code == 200
    assert response.json() == {"action": "approve"}
    assert await balance(client, "u1") == Decimal("70.00")
    assert await entries(engine, "u1") == [(Decimal("100.00"), "credit"), (Decimal("-30.00"), "debit")]
    stored = await trade_row(engine, "w-1")
    assert stored is not None
    assert (stored["status"], stored["approved_amount"], stored["posted"]) == (
        "initiated",
        Decimal("30.00"),
        Decimal("-30.00"),
    )
    [verdict] = await rows(engine, "SELECT subject, subject_id, verdict, reason, amount FROM approval_verdicts")
    assert verdict == {
        "subject": "trade",
        "subject_id": "w-1",
        "verdict": "approve",
        "reason": None,
        "amount": Decimal("30.00"),
    }
    [_, ask] = await deliveries(engine)
    assert (ask["delivery_id"], ask["kind"], ask["outcome"]) == ("ask-1", "approval", "approve")


async def test_withdrawal_approval_without_enough_balance_is_rejected_with_a_reason(client, engine):
    steam = await funded_user(client, "u1", "10.00")
    payload = trade(trade_id="w-1", type="withdraw", status="initiated", total="30.00", user_id="u1", steam_id=steam)
    response = await deliver_trade(client, payload)
    assert response.status_code == 200
    assert response.json() == {"action": "reject", "reason": "insufficient balance"}
    assert await balance(client, "u1") == Decimal("10.00")
    assert await entries(engine, "u1") == [(Decimal("10.00"), "credit")]
    stored = await trade_row(engine, "w-1")
    assert stored is not None
    assert (stored["approved_amount"], stored["posted"]) == (None, Decimal("0"))


async def test_withdrawal_for_exactly_the_balance_is_approved(client):
    steam = await funded_user(client, "u1", "30.00")
    payload = trade(type="withdraw", status="initiated", total="30.00", user_id="u1", steam_id=steam)
    response = await deliver_trade(client, payload)
    assert response.json() == {"action": "approve"}
    assert await balance(client, "u1") == Decimal("0.00")


def _crypto_withdrawal(withdrawal_id: str | None = "cw-1", status: str = "awaiting_approval") -> dict:
    body = {
        "type": "crypto_withdraw",
        "status": status,
        "steamId": "76561198000000001",
        "chain": "ETH",
        "token": "USDT",
        "amount": "25.00",
        "amountCents": 2500,
        "feeCents": 100,
        "receiveCents": 2400,
    }
    if withdrawal_id is not None:
        body["id"] = withdrawal_id
    return {"withdrawal": body}


@pytest.mark.parametrize("status", ["awaiting_approval", "AWAITING_APPROVAL"])
async def test_crypto_withdrawal_approval_is_rejected_with_a_clear_reason(client, engine, status):
    response = await deliver(client, _crypto_withdrawal(status=status), delivery_id="cw-ask-1")
    assert response.status_code == 200
    assert response.json() == {"action": "reject", "reason": CRYPTO_UNSUPPORTED}
    assert CRYPTO_UNSUPPORTED == "crypto withdrawals are not supported by this merchant"

    again = await deliver(client, _crypto_withdrawal(status=status), delivery_id="cw-ask-2")
    assert again.status_code == 200
    assert again.json() == {"action": "reject", "reason": CRYPTO_UNSUPPORTED}

    same_id = await deliver(client, _crypto_withdrawal(status=status), delivery_id="cw-ask-1")
    assert same_id.json() == {"action": "reject", "reason": CRYPTO_UNSUPPORTED}

    found = await deliveries(engine)
    assert [(d["delivery_id"], d["kind"], d["outcome"], d["subject_id"]) for d in found] == [
        ("cw-ask-1", "crypto_withdrawal", "reject", "cw-1"),
        ("cw-ask-2", "crypto_withdrawal", "reject", "cw-1"),
    ]
    verdicts = await rows(engine, "SELECT subject, subject_id, verdict, reason FROM approval_verdicts")
    assert verdicts == [
        {"subject": "crypto_withdrawal", "subject_id": "cw-1", "verdict": "reject", "reason": CRYPTO_UNSUPPORTED}
    ]


async def test_crypto_withdrawal_approval_without_an_id_is_still_rejected(client, engine):
    """A bare 2xx approves: an approval ask must never be answered with a plain acknowledgement."""
    response = await deliver(client, _crypto_withdrawal(withdrawal_id=None), delivery_id="cw-no-id")
    assert response.status_code == 200
    assert response.json() == {"action": "reject", "reason": "crypto withdrawal has no id"}
    [stored] = await deliveries(engine)
    assert (stored["kind"], stored["outcome"], stored["subject_id"]) == ("crypto_withdrawal", "reject", None)


@pytest.mark.parametrize(
    ("body", "kind", "subject_id"),
    [
        pytest.param(_crypto_withdrawal(status="completed"), "crypto_withdrawal", "cw-1", id="crypto-withdrawal"),
        pytest.param(
            {"deposit": {"id": "cd-1", "steamId": "76561198000000001", "amount": "12.50", "status": "completed"}},
            "crypto_deposit",
            "cd-1",
            id="crypto-deposit",
        ),
        pytest.param({"event": "merchant.updated", "data": {"x": 1}}, "unknown", None, id="unknown-object"),
        pytest.param([1, 2, 3], "unknown", None, id="json-array"),
        pytest.param("hello", "unknown", None, id="json-string"),
        pytest.param({"trade": None}, "unknown", None, id="null-trade"),
        pytest.param({"trade": "t-1"}, "unknown", None, id="trade-not-an-object"),
    ],
)
async def test_non_trade_callbacks_are_stored_and_acknowledged(client, engine, body, kind, subject_id):
    response = await deliver(client, body, delivery_id="d-other")
    assert response.status_code == 200
    assert response.json() == {"received": True}
    [stored] = await deliveries(engine)
    assert (stored["delivery_id"], stored["kind"], stored["outcome"], stored["subject_id"]) == (
        "d-other",
        kind,
        "stored",
        subject_id,
    )
    assert stored["raw_body"] == dumps(body).decode()
    assert await count(engine, "trades") == 0
    assert await count(engine, "ledger_entries") == 0
    assert await count(engine, "approval_verdicts") == 0


async def test_trade_key_wins_over_withdrawal_and_deposit(client, engine):
    steam = await register_user(client, "u1")
    payload = trade(trade_id="t-1", status="hold", total="10.00", pre="6.00", user_id="u1", steam_id=steam)
    body = {"deposit": {"id": "cd-1"}, "withdrawal": _crypto_withdrawal()["withdrawal"], "trade": payload}
    response = await deliver(client, body)
    assert response.json() == {"received": True}
    [stored] = await deliveries(engine)
    assert (stored["kind"], stored["subject_id"]) == ("trade", "t-1")
    assert await balance(client, "u1") == Decimal("6.00")


async def test_withdrawal_key_wins_over_deposit(client, engine):
    body = {"deposit": {"id": "cd-1"}, **_crypto_withdrawal()}
    response = await deliver(client, body)
    assert response.json() == {"action": "reject", "reason": CRYPTO_UNSUPPORTED}
    [stored] = await deliveries(engine)
    assert (stored["kind"], stored["subject_id"]) == ("crypto_withdrawal", "cw-1")


# --- dedupe -----------------------------------------------------------------------------------------------------


async def test_same_delivery_id_twice_posts_once(client, engine):
    steam = await register_user(client, "u1")
    payload = trade(trade_id="t-1", status="hold", total="100.00", pre="60.00", user_id="u1", steam_id=steam)
    first = await deliver_trade(client, payload, delivery_id="d-dup")
    second = await deliver_trade(client, payload, delivery_id="d-dup")
    assert first.json() == {"received": True}
    assert second.status_code == 200
    assert second.json() == {"received": True, "duplicate": True}
    assert await balance(client, "u1") == Decimal("60.00")
    assert await entries(engine, "u1") == [(Decimal("60.00"), "pre_credit")]
    assert [d["delivery_id"] for d in await deliveries(engine)] == ["d-dup"]


async def test_same_delivery_id_with_a_newer_status_is_still_a_duplicate(client, engine):
    """The delivery id is the dedupe key: a second body under the same id is a replay and is not applied."""
    steam = await register_user(client, "u1")
    payload = trade(trade_id="t-1", status="hold", total="100.00", pre="60.00", user_id="u1", steam_id=steam)
    await deliver_trade(client, payload, delivery_id="d-dup")
    second = await deliver_trade(client, {**payload, "status": "completed"}, delivery_id="d-dup")
    assert second.json() == {"received": True, "duplicate": True}
    assert await balance(client, "u1") == Decimal("60.00")


async def test_same_event_with_a_new_delivery_id_posts_nothing_more(client, engine):
    steam = await register_user(client, "u1")
    payload = trade(trade_id="t-1", status="hold", total="100.00", pre="60.00", user_id="u1", steam_id=steam)
    await deliver_trade(client, payload, delivery_id="d-a")
    again = await deliver_trade(client, payload, delivery_id="d-b")
    assert again.json() == {"received": True}
    assert await entries(engine, "u1") == [(Decimal("60.00"), "pre_credit")]
    found = await deliveries(engine)
    assert [(d["delivery_id"], d["outcome"]) for d in found][1] == ("d-b", "same")


async def test_approval_asked_again_with_new_delivery_id_returns_stored_verdict(client, engine):
    steam = await funded_user(client, "u1", "100.00")
    payload = trade(trade_id="w-1", type="withdraw", status="initiated", total="30.00", user_id="u1", steam_id=steam)
    answers = [(await deliver_trade(client, payload, delivery_id=f"ask-{n}")).json() for n in range(3)]
    assert answers == [{"action": "approve"}] * 3
    assert await balance(client, "u1") == Decimal("70.00")
    assert await entries(engine, "u1") == [(Decimal("100.00"), "credit"), (Decimal("-30.00"), "debit")]
    assert await count(engine, "approval_verdicts") == 1
    asks = [d for d in await deliveries(engine) if d["kind"] == "approval"]
    assert [(d["delivery_id"], d["outcome"]) for d in asks] == [
        ("ask-0", "approve"),
        ("ask-1", "approve"),
        ("ask-2", "approve"),
    ]


async def test_approval_replayed_with_the_same_delivery_id_returns_the_verdict_not_an_ack(client, engine):
    steam = await funded_user(client, "u1", "100.00")
    payload = trade(trade_id="w-1", type="withdraw", status="initiated", total="30.00", user_id="u1", steam_id=steam)
    first = await deliver_trade(client, payload, delivery_id="ask-same")
    replay = await deliver_trade(client, payload, delivery_id="ask-same")
    assert first.json() == {"action": "approve"}
    assert replay.status_code == 200
    assert replay.json() == {"action": "approve"}
    assert await balance(client, "u1") == Decimal("70.00")
    assert await entries(engine, "u1") == [(Decimal("100.00"), "credit"), (Decimal("-30.00"), "debit")]
    assert [d["delivery_id"] for d in await deliveries(engine) if d["kind"] == "approval"] == ["ask-same"]


async def test_rejection_replayed_with_the_same_delivery_id_is_still_a_rejection(client, engine):
    steam = await funded_user(client, "u1", "10.00")
    payload = trade(trade_id="w-1", type="withdraw", status="initiated", total="30.00", user_id="u1", steam_id=steam)
    first = await deliver_trade(client, payload, delivery_id="ask-same")
    replay = await deliver_trade(client, payload, delivery_id="ask-same")
    expected = {"action": "reject", "reason": "insufficient balance"}
    assert first.json() == expected
    assert replay.json() == expected


async def test_a_rejection_stands_even_after_the_user_can_afford_it(client, engine):
    steam = await funded_user(client, "u1", "10.00")
    payload = trade(trade_id="w-1", type="withdraw", status="initiated", total="30.00", user_id="u1", steam_id=steam)
    assert (await deliver_trade(client, payload)).json() == {"action": "reject", "reason": "insufficient balance"}
    more = trade(status="completed", total="50.00", pre="0", user_id="u1", steam_id=steam)
    assert (await deliver_trade(client, more)).status_code == 200
    assert await balance(client, "u1") == Decimal("60.00")
    again = await deliver_trade(client, payload)
    assert again.json() == {"action": "reject", "reason": "insufficient balance"}
    assert await balance(client, "u1") == Decimal("60.00")
    assert await count(engine, "approval_verdicts") == 1


async def test_approval_asked_again_at_a_higher_price_keeps_the_verdict_and_the_debit(client, engine):
    steam = await funded_user(client, "u1", "100.00")
    payload = trade(trade_id="w-1", type="withdraw", status="initiated", total="30.00", user_id="u1", steam_id=steam)
    assert (await deliver_trade(client, payload)).json() == {"action": "approve"}
    dearer = await deliver_trade(client, {**payload, "totalPrice": Decimal("90.00")})
    assert dearer.json() == {"action": "approve"}
    assert await balance(client, "u1") == Decimal("70.00")
    assert await entries(engine, "u1") == [(Decimal("100.00"), "credit"), (Decimal("-30.00"), "debit")]


async def test_approved_withdrawal_that_fails_is_refunded_once(client, engine):
    steam = await funded_user(client, "u1", "100.00")
    payload = trade(trade_id="w-1", type="withdraw", status="initiated", total="30.00", user_id="u1", steam_id=steam)
    assert (await deliver_trade(client, payload)).json() == {"action": "approve"}
    failed = {**payload, "status": "failed", "error": "PURCHASE_FAILED"}
    assert (await deliver_trade(client, failed, delivery_id="f-1")).json() == {"received": True}
    assert (await deliver_trade(client, failed, delivery_id="f-2")).json() == {"received": True}
    assert await balance(client, "u1") == Decimal("100.00")
    assert await entries(engine, "u1") == [
        (Decimal("100.00"), "credit"),
        (Decimal("-30.00"), "debit"),
        (Decimal("30.00"), "refund"),
    ]
    # A late approval ask for a trade already failed gets the stored verdict and moves nothing.
    assert (await deliver_trade(client, payload)).json() == {"action": "approve"}
    assert await balance(client, "u1") == Decimal("100.00")
