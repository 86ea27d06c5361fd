"""`POST /v1/admin/adjustments`: one ledger entry of kind `adjustment`, with its reason and actor, the balance and the
live event in the same transaction; refusals move nothing, and Idempotency-Key replays the first answer."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.admin.helpers import ACTOR, adjust, assert_books_balance, available, books, funded, ops
from tests.support import auth, balance, register_user
from tests.webhooks.helpers import error_of, rows


def body(user_id: str = "u1", amount: str = "25.00", **extra: Any) -> dict[str, Any]:
    return {"userId": user_id, "amount": amount, "reason": "Goodwill credit for ticket 881", **extra}


async def test_a_credit_is_one_adjustment_entry_with_its_reason_and_actor(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await funded(client, "u1", "10.00")
    response = await adjust(client, body(amount="25.5"))
    assert response.status_code == 201, response.text
    entry = response.json()
    assert entry == {
        "id": entry["id"],
        "userId": "u1",
        "tradeId": None,
        "amount": "25.50",
        "kind": "adjustment",
        "balanceAfter": "35.50",
        "reason": "Goodwill credit for ticket 881",
        "actor": ACTOR,
        "createdAt": entry["createdAt"],
    }
    assert "Idempotent-Replayed" not in response.headers
    assert await balance(client, "u1") == Decimal("35.50")
    stored = await rows(
        engine, "SELECT amount, kind, trade_id, reason, actor FROM ledger_entries WHERE id = :i", i=entry["id"]
    )
    assert stored == [
        {"amount": Decimal("25.5"), "kind": "adjustment", "trade_id": None, "reason": entry["reason"], "actor": ACTOR}
    ]
    # The user sees it in their own ledger too.
    ledger = (await client.get("/v1/ledger", headers=auth("u1"))).json()["entries"]
    assert [(e["amount"], e["kind"]) for e in ledger] == [("25.50", "adjustment"), ("10.00", "credit")]
    await assert_books_balance(engine)


async def test_the_new_balance_goes_to_the_outbox_in_the_same_transaction(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await funded(client, "u1", "10.00")
    [before] = await rows(engine, "SELECT last_event_id FROM balances WHERE user_id = 'u1'")
    assert (await adjust(client, body(amount="-4.00"))).status_code == 201
    events = await rows(
        engine,
        "SELECT id, type, data FROM events WHERE user_id = 'u1' AND id > :after ORDER BY id",
        after=before["last_event_id"],
    )
    shown = (await client.get("/v1/balance", headers=auth("u1"))).json()
    assert events == [
        {
            "id": before["last_event_id"] + 1,
            "type": "balance.updated",
            "data": {"available": shown["available"], "pending": shown["pending"]},
        }
    ]
    assert shown["available"] == "6.00"


async def test_a_charge_that_would_leave_a_debt_is_refused_and_moves_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await funded(client, "u1", "10.00")
    before = await books(engine)
    response = await adjust(client, body(amount="-10.01"), key="debt-1")
    assert response.status_code == 409, response.text
    error = error_of(response)
    assert error["key"] == "DEBT_NOT_ALLOWED"
    assert "allowDebt" in error["message"]
    assert await books(engine) == before  # no entry, no balance change, no event, and the key is not kept
    await assert_books_balance(engine)

    # The whole balance may be taken; and with allowDebt the debt is posted, never clipped.
    assert (await adjust(client, body(amount="-10.00"))).status_code == 201
    assert await available(engine, "u1") == 0
    response = await adjust(client, body(amount="-2.50", allowDebt=True), key="debt-1")  # the refusal kept no key
    assert response.status_code == 201, response.text
    assert response.json()["balanceAfter"] == "-2.50"
    assert await available(engine, "u1") == Decimal("-2.50")
    await assert_books_balance(engine)


async def test_a_user_in_debt_may_be_credited_but_not_charged_further(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await register_user(client, "u1")
    assert (await adjust(client, body(amount="-5.00", allowDebt=True))).status_code == 201
    before = await books(engine)
    response = await adjust(client, body(amount="-0.01"))
    assert response.status_code == 409
    assert error_of(response)["key"] == "DEBT_NOT_ALLOWED"
    assert await books(engine) == before
    response = await adjust(client, body(amount="3.00"))
    assert response.status_code == 201
    assert response.json()["balanceAfter"] == "-2.00"
    await assert_books_balance(engine)


async def test_an_unknown_user_is_404_and_nothing_is_recorded(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await funded(client, "u1", "10.00")
    before = await books(engine)
    response = await adjust(client, body(user_id="nobody"), key="k-unknown")
    assert response.status_code == 404
    assert error_of(response)["key"] == "USER_NOT_FOUND"
    assert await books(engine) == before


@pytest.mark.parametrize(
    "amount",
    [
        "0",
        "0.00",
        "-0.00",
        "1.234",
        "0.001",
        "+5",
        "1e3",
        " 5",
        "5 ",
        "5.",
        ".5",
        "05",
        "1000000",
        "-1000000.00",
        "1,000",
        "",
        "abc",
        "--5",
        "NaN",
        10.5,
        10,
        None,
        True,
    ],
)
async def test_an_amount_that_is_not_a_nonzero_decimal_string_in_cents_is_422(
    client: httpx.AsyncClient, engine: AsyncEngine, amount: Any
) -> None:
    await funded(client, "u1", "10.00")
    before = await books(engine)
    response = await adjust(client, body(amount=amount))
    assert response.status_code == 422, (amount, response.text)
    error = error_of(response)
    assert error["key"] == "VALIDATION_FAILED"
    assert list(error["fields"]) == ["amount"]
    assert await books(engine) == before


@pytest.mark.parametrize("amount", ["999999.99", "-999999.99", "0.01", "-0.1", "7", "12.5"])
async def test_the_bounds_of_an_amount_are_accepted(
    client: httpx.AsyncClient, engine: AsyncEngine, amount: str
) -> None:
    await register_user(client, "u1")
    response = await adjust(client, body(amount=amount, allowDebt=True))
    assert response.status_code == 201, response.text
    assert Decimal(response.json()["amount"]) == Decimal(amount)
    await assert_books_balance(engine)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"reason": None}, "reason"),
        ({"reason": ""}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": "two\nlines"}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"userId": ""}, "userId"),
        ({"userId": "has space"}, "userId"),
        ({"allowDebt": "true"}, "allowDebt"),
        ({"allowDebt": 1}, "allowDebt"),
        ({"tradeId": "x"}, "tradeId"),
    ],
)
async def test_a_bad_or_missing_field_is_422_naming_it(
    client: httpx.AsyncClient, engine: AsyncEngine, change: dict[str, Any], field: str
) -> None:
    await funded(client, "u1", "10.00")
    before = await books(engine)
    sent = {k: v for k, v in {**body(), **change}.items() if v is not None}
    response = await adjust(client, sent)
    assert response.status_code == 422, response.text
    assert field in error_of(response)["fields"]
    assert await books(engine) == before


@pytest.mark.parametrize("actor", [None, "", "alice smith", "a" * 129, "ops\u00e9"])
async def test_the_actor_is_required_and_must_name_someone(
    client: httpx.AsyncClient, engine: AsyncEngine, actor: str | None
) -> None:
    await funded(client, "u1", "10.00")
    before = await books(engine)
    headers = {name.encode(): value.encode() for name, value in ops(None).items()}
    if actor is not None:
        headers[b"X-Actor"] = actor.encode()  # as sent on the wire (UTF-8 bytes for the non-ASCII one)
    response = await client.post("/v1/admin/adjustments", json=body(), headers=headers)
    assert response.status_code == 422, response.text
    assert "X-Actor" in error_of(response)["fields"]
    assert await books(engine) == before


async def test_the_admin_key_is_required(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await funded(client, "u1", "10.00")
    before = await books(engine)
    response = await client.post("/v1/admin/adjustments", json=body(), headers={"X-Actor": ACTOR})
    assert response.status_code == 401
    assert error_of(response)["key"] == "ADMIN_KEY_REQUIRED"
    response = await client.post("/v1/admin/adjustments", json=body(), headers={**ops(), "X-Admin-Key": "wrong"})
    assert response.status_code == 403
    assert error_of(response)["key"] == "ADMIN_KEY_INVALID"
    response = await client.post("/v1/admin/adjustments", json=body(), headers={**auth("u1"), "X-Actor": ACTOR})
    assert response.status_code == 401  # a user's JWT is not the platform's key
    assert await books(engine) == before


async def test_the_same_key_and_request_get_the_first_answer_and_post_once(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await funded(client, "u1", "10.00")
    first = await adjust(client, body(amount="5.5"), key="adj-1")
    assert first.status_code == 201
    again = await adjust(client, body(amount="5.50"), key="adj-1")  # the same money, written otherwise
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    entries = await rows(engine, "SELECT amount FROM ledger_entries WHERE user_id = 'u1' AND kind = 'adjustment'")
    assert entries == [{"amount": Decimal("5.5")}]
    assert await available(engine, "u1") == Decimal("15.50")
    await assert_books_balance(engine)


@pytest.mark.parametrize(
    ("change", "actor"),
    [
        ({"amount": "5.51"}, ACTOR),
        ({"reason": "another reason"}, ACTOR),
        ({"allowDebt": True}, ACTOR),
        ({}, "bob@ops"),
    ],
    ids=["amount", "reason", "allowDebt", "actor"],
)
async def test_the_same_key_with_another_request_is_409_and_moves_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, change: dict[str, Any], actor: str
) -> None:
    await funded(client, "u1", "10.00")
    assert (await adjust(client, body(amount="5.50"), key="adj-2")).status_code == 201
    before = await books(engine)
    response = await adjust(client, {**body(amount="5.50"), **change}, key="adj-2", actor=actor)
    assert response.status_code == 409, response.text
    assert error_of(response)["key"] == "IDEMPOTENCY_KEY_REUSED"
    assert await books(engine) == before
    await assert_books_balance(engine)


async def test_concurrent_requests_with_one_key_post_once(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await funded(client, "u1", "10.00")
    responses = await asyncio.gather(*(adjust(client, body(amount="1.00"), key="adj-race") for _ in range(8)))
    assert [r.status_code for r in responses] == [201] * 8
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 7
    assert await available(engine, "u1") == Decimal("11.00")
    await assert_books_balance(engine)


async def test_concurrent_charges_never_overdraw(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """The balance row's lock orders them: of ten 3.00 charges on 10.00, exactly three go through."""
    await funded(client, "u1", "10.00")
    responses = await asyncio.gather(*(adjust(client, body(amount="-3.00")) for _ in range(10)))
    assert sorted(r.status_code for r in responses) == [201] * 3 + [409] * 7
    assert await available(engine, "u1") == Decimal("1.00")
    await assert_books_balance(engine)
