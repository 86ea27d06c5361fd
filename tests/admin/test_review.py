"""The review queue: `GET /v1/admin/trades` across users with its filters and paging, and resolving a flagged trade,
which takes it off the queue and keeps the note, the actor and the time in its append-only history."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.admin.helpers import ACTOR, assert_books_balance, books, funded, ops, our_trade_id
from tests.support import ADMIN_KEY, deliver, deliver_trade, register_user, trade
from tests.webhooks.helpers import error_of, rows

CONFLICT = "received reverted after final status completed"


async def listed(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/admin/trades", params=params, headers=ops())
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def flagged_by_conflict(client: httpx.AsyncClient, user_id: str) -> dict[str, Any]:
    """A completed deposit that AssetPay then calls reverted: kept for review, not applied."""
    deposit = await funded(client, user_id, "40.00")
    assert (await deliver_trade(client, {**deposit, "status": "reverted"})).status_code == 200
    return deposit


async def resolve(
    client: httpx.AsyncClient, trade_id: str, note: Any = "Checked with AssetPay: completed stands", actor: str = ACTOR
) -> httpx.Response:
    return await client.post(f"/v1/admin/trades/{trade_id}/resolve", json={"note": note}, headers=ops(actor))


async def test_the_review_queue_lists_only_flagged_trades_with_their_reasons(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    conflicted = await flagged_by_conflict(client, "u1")
    plain = await funded(client, "u2", "5.00")
    orphan = trade(status="hold", total="30.00", user_id="ghost")  # no user of ours
    assert (await deliver_trade(client, orphan)).status_code == 200

    queue = (await listed(client, needsReview="true"))["trades"]
    assert [(t["assetpayId"], t["userId"], t["needsReview"], t["reviewReason"]) for t in queue] == [
        (orphan["id"], None, True, "no user of ours matches externalClientUserId or clientSteamID"),
        (conflicted["id"], "u1", True, CONFLICT),
    ]
    assert queue[1]["status"] == "completed"
    assert queue[1]["credited"] == "40.00"

    others = (await listed(client, needsReview="false"))["trades"]
    assert [t["assetpayId"] for t in others] == [plain["id"]]
    assert others[0]["reviewReason"] is None
    everything = (await listed(client))["trades"]
    assert [t["assetpayId"] for t in everything] == [orphan["id"], plain["id"], conflicted["id"]]


async def test_the_filters_combine(client: httpx.AsyncClient) -> None:
    steam_id = await register_user(client, "u1")
    await register_user(client, "u2")
    made = {
        "u1 deposit hold": trade(status="hold", total="10.00", user_id="u1", steam_id=steam_id),
        "u1 deposit completed": trade(status="completed", total="20.00", pre="0", user_id="u1"),
        "u1 withdraw": trade(type="withdraw", status="initiated", total="5.00", user_id="u1"),
        "u2 deposit hold": trade(status="hold", total="30.00", user_id="u2"),
    }
    for payload in made.values():
        assert (await deliver_trade(client, payload)).status_code == 200

    def names(page: dict[str, Any]) -> set[str]:
        ids = {t["assetpayId"] for t in page["trades"]}
        return {name for name, payload in made.items() if payload["id"] in ids}

    assert names(await listed(client, userId="u1")) == {"u1 deposit hold", "u1 deposit completed", "u1 withdraw"}
    assert names(await listed(client, status="hold")) == {"u1 deposit hold", "u2 deposit hold"}
    assert names(await listed(client, type="withdraw")) == {"u1 withdraw"}
    assert names(await listed(client, userId="u1", type="deposit", status="hold")) == {"u1 deposit hold"}
    assert names(await listed(client, userId="u2", type="withdraw")) == set()
    assert names(await listed(client, userId="nobody")) == set()


async def test_pages_are_newest_first_and_cover_every_trade_once(client: httpx.AsyncClient) -> None:
    await register_user(client, "u1")
    sent = []
    for n in range(7):
        payload = trade(status="hold", total=f"{n + 1}.00", user_id="u1")
        assert (await deliver_trade(client, payload)).status_code == 200
        sent.append(payload["id"])
    seen: list[str] = []
    cursor = None
    sizes = []
    while True:
        page = await listed(client, limit=3, **({"cursor": cursor} if cursor else {}))
        sizes.append(len(page["trades"]))
        seen.extend(t["assetpayId"] for t in page["trades"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sizes == [3, 3, 1]
    assert seen == list(reversed(sent))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJ4Il0"}, "cursor"),  # ["x"]: a cursor of someone else's shape
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"status": "escrow"}, "status"),
        ({"type": "refund"}, "type"),
        ({"needsReview": "maybe"}, "needsReview"),
        ({"userId": "has space"}, "userId"),
    ],
)
async def test_a_bad_query_is_422_naming_it(client: httpx.AsyncClient, params: dict[str, Any], field: str) -> None:
    response = await client.get("/v1/admin/trades", params=params, headers=ops())
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["key"] == "VALIDATION_FAILED"
    assert field in error["fields"]


async def test_resolving_takes_the_trade_off_the_queue_and_keeps_the_note(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    deposit = await flagged_by_conflict(client, "u1")
    trade_id = await our_trade_id(engine, deposit["id"])
    [before] = await rows(engine, "SELECT updated_at FROM trades WHERE id = :t", t=trade_id)
    money = await books(engine)

    response = await resolve(client, trade_id)
    assert response.status_code == 200, response.text
    resolved = response.json()
    assert resolved["id"] == trade_id
    assert (resolved["needsReview"], resolved["reviewReason"]) == (False, None)
    [entry] = resolved["history"]
    assert entry == {
        "action": "resolved",
        "note": "Checked with AssetPay: completed stands",
        "actor": ACTOR,
        "reviewReason": CONFLICT,
        "at": entry["at"],
    }
    assert (await listed(client, needsReview="true"))["trades"] == []
    # Taking it off the queue is not news about the trade: what the user sees, and the money, stay as they were.
    [after] = await rows(engine, "SELECT updated_at, needs_review, review_reason FROM trades WHERE id = :t", t=trade_id)
    assert after == {"updated_at": before["updated_at"], "needs_review": False, "review_reason": None}
    assert await books(engine) == money
    await assert_books_balance(engine)

    shown = await client.get(f"/v1/admin/trades/{trade_id}", headers=ops())
    assert shown.status_code == 200
    assert shown.json()["history"] == resolved["history"]


async def test_resolving_a_trade_not_in_review_is_409_and_records_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    deposit = await funded(client, "u1", "10.00")
    trade_id = await our_trade_id(engine, deposit["id"])
    response = await resolve(client, trade_id)
    assert response.status_code == 409
    assert error_of(response)["key"] == "TRADE_NOT_IN_REVIEW"
    assert await rows(engine, "SELECT * FROM trade_history") == []


async def test_resolving_twice_is_409_and_the_history_keeps_one_entry(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    deposit = await flagged_by_conflict(client, "u1")
    trade_id = await our_trade_id(engine, deposit["id"])
    assert (await resolve(client, trade_id)).status_code == 200
    response = await resolve(client, trade_id, note="again")
    assert response.status_code == 409
    assert error_of(response)["key"] == "TRADE_NOT_IN_REVIEW"
    assert len(await rows(engine, "SELECT * FROM trade_history")) == 1


async def test_a_trade_flagged_again_is_resolved_again_and_its_history_grows(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    deposit = await flagged_by_conflict(client, "u1")
    trade_id = await our_trade_id(engine, deposit["id"])
    assert (await resolve(client, trade_id, note="first look")).status_code == 200
    assert (await deliver_trade(client, {**deposit, "status": "failed"})).status_code == 200
    queue = (await listed(client, needsReview="true"))["trades"]
    assert [(t["id"], t["reviewReason"]) for t in queue] == [(trade_id, "received failed after final status completed")]
    response = await resolve(client, trade_id, note="second look", actor="bob@ops")
    assert response.status_code == 200
    assert [(h["note"], h["actor"], h["reviewReason"]) for h in response.json()["history"]] == [
        ("first look", ACTOR, CONFLICT),
        ("second look", "bob@ops", "received failed after final status completed"),
    ]


async def test_an_unknown_trade_is_404(client: httpx.AsyncClient) -> None:
    response = await resolve(client, str(uuid.uuid4()))
    assert response.status_code == 404
    assert error_of(response)["key"] == "TRADE_NOT_FOUND"
    response = await client.get(f"/v1/admin/trades/{uuid.uuid4()}", headers=ops())
    assert response.status_code == 404
    assert error_of(response)["key"] == "TRADE_NOT_FOUND"
    response = await resolve(client, "not-a-uuid")
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("note", "actor", "field"),
    [
        (None, ACTOR, "note"),
        ("", ACTOR, "note"),
        ("   ", ACTOR, "note"),
        ("x" * 2001, ACTOR, "note"),
        ("fine", "", "X-Actor"),
        ("fine", "two words", "X-Actor"),
    ],
)
async def test_a_resolution_needs_a_note_and_an_actor(
    client: httpx.AsyncClient, engine: AsyncEngine, note: str | None, actor: str, field: str
) -> None:
    deposit = await flagged_by_conflict(client, "u1")
    trade_id = await our_trade_id(engine, deposit["id"])
    headers = {"X-Admin-Key": ADMIN_KEY, **({"X-Actor": actor} if actor else {})}
    sent = {"note": note} if note is not None else {}
    response = await client.post(f"/v1/admin/trades/{trade_id}/resolve", json=sent, headers=headers)
    assert response.status_code == 422, response.text
    assert field in error_of(response)["fields"]
    assert await rows(engine, "SELECT * FROM trade_history") == []
    assert [t["id"] for t in (await listed(client, needsReview="true"))["trades"]] == [trade_id]


async def test_an_invalid_callback_naming_a_trade_puts_it_on_the_queue(client: httpx.AsyncClient) -> None:
    deposit = await funded(client, "u1", "10.00")
    bad = {"trade": {**deposit, "totalPrice": "-1"}}
    assert (await deliver(client, bad)).status_code == 422
    [flagged] = (await listed(client, needsReview="true"))["trades"]
    assert flagged["assetpayId"] == deposit["id"]
    assert flagged["reviewReason"].startswith("invalid callback refused")


@pytest.mark.parametrize(
    "statement", ["UPDATE trade_history SET note = 'rewritten'", "DELETE FROM trade_history"], ids=["update", "delete"]
)
async def test_the_history_is_append_only(client: httpx.AsyncClient, engine: AsyncEngine, statement: str) -> None:
    deposit = await flagged_by_conflict(client, "u1")
    assert (await resolve(client, await our_trade_id(engine, deposit["id"]))).status_code == 200
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    [kept] = await rows(engine, "SELECT note FROM trade_history")
    assert kept == {"note": "Checked with AssetPay: completed stands"}


ADMIN_ROUTES = [
    ("GET", "/v1/admin/trades", None),
    ("GET", f"/v1/admin/trades/{uuid.UUID(int=1)}", None),
    ("POST", f"/v1/admin/trades/{uuid.UUID(int=1)}/resolve", {"note": "x"}),
    ("POST", "/v1/admin/adjustments", {"userId": "u1", "amount": "1.00", "reason": "x"}),
    ("GET", "/v1/admin/exposure", None),
    ("GET", "/v1/admin/users/u1", None),
]


@pytest.mark.parametrize(("method", "path", "sent"), ADMIN_ROUTES)
async def test_every_admin_route_wants_the_admin_key(
    client: httpx.AsyncClient, method: str, path: str, sent: dict[str, Any] | None
) -> None:
    for headers, status, key in [
        ({"X-Actor": ACTOR}, 401, "ADMIN_KEY_REQUIRED"),
        ({"X-Actor": ACTOR, "X-Admin-Key": "wrong"}, 403, "ADMIN_KEY_INVALID"),
    ]:
        response = await client.request(method, path, json=sent, headers=headers)
        assert response.status_code == status, (path, response.text)
        assert error_of(response)["key"] == key
