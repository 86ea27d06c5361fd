import uuid
from decimal import Decimal

from tests.support import auth, deliver_trade, register_user, trade


async def _deposits(client, user_id, count):
    steam = await register_user(client, user_id)
    ids = []
    for n in range(count):
        payload = trade(status="completed", total=f"{n + 1}.50", user_id=user_id, steam_id=steam)
        assert (await deliver_trade(client, payload)).status_code == 200
        ids.append(payload["id"])
    return ids


async def test_trades_are_listed_newest_first_with_cursor_pages(client):
    assetpay_ids = await _deposits(client, "pager", 5)
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/trades", params=params, headers=auth("pager"))).json()
        assert len(page["trades"]) <= 2
        seen += [t["assetpayId"] for t in page["trades"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == list(reversed(assetpay_ids))


async def test_trade_shape_carries_money_as_decimal_strings(client):
    [assetpay_id] = await _deposits(client, "shape", 1)
    listed = (await client.get("/v1/trades", headers=auth("shape"))).json()["trades"][0]
    assert listed["assetpayId"] == assetpay_id
    assert listed["type"] == "deposit"
    assert listed["status"] == "completed"
    assert listed["totalPrice"] == "1.50"
    assert listed["preCredit"] == "0.90"
    assert listed["pendingCredit"] == "0.60"
    assert listed["credited"] == "1.50"
    assert listed["items"][0]["price"] == "1.50"
    one = (await client.get(f"/v1/trades/{listed['id']}", headers=auth("shape"))).json()
    assert one == listed


async def test_filters_by_type_and_status(client):
    await _deposits(client, "filter", 2)
    deposits = (await client.get("/v1/trades", params={"type": "deposit"}, headers=auth("filter"))).json()
    assert len(deposits["trades"]) == 2
    withdrawals = (await client.get("/v1/trades", params={"type": "withdraw"}, headers=auth("filter"))).json()
    assert withdrawals["trades"] == []
    held = (await client.get("/v1/trades", params={"status": "hold"}, headers=auth("filter"))).json()
    assert held["trades"] == []


async def test_another_users_trade_is_not_found(client):
    await _deposits(client, "owner", 1)
    await register_user(client, "intruder")
    trade_id = (await client.get("/v1/trades", headers=auth("owner"))).json()["trades"][0]["id"]
    response = await client.get(f"/v1/trades/{trade_id}", headers=auth("intruder"))
    assert response.status_code == 404
    assert response.json()["error"]["key"] == "TRADE_NOT_FOUND"
    assert (await client.get(f"/v1/trades/{uuid.uuid4()}", headers=auth("owner"))).status_code == 404
    assert (await client.get("/v1/trades/not-a-uuid", headers=auth("owner"))).status_code == 404


async def test_bad_cursor_and_limit_are_client_errors(client):
    await register_user(client, "cursors")
    for params in ({"cursor": "%%%"}, {"cursor": "WzFd"}, {"limit": 0}, {"limit": 1000}, {"status": "lost"}):
        response = await client.get("/v1/trades", params=params, headers=auth("cursors"))
        assert response.status_code == 422, params
        assert response.json()["error"]["key"] == "VALIDATION_FAILED"


async def test_ledger_pages_newest_first(client):
    await _deposits(client, "ledger", 3)
    first = (await client.get("/v1/ledger", params={"limit": 2}, headers=auth("ledger"))).json()
    assert [e["amount"] for e in first["entries"]] == ["3.50", "2.50"]
    assert first["entries"][0]["balanceAfter"] == "7.50"
    second = (
        await client.get("/v1/ledger", params={"limit": 2, "cursor": first["nextCursor"]}, headers=auth("ledger"))
    ).json()
    assert [e["amount"] for e in second["entries"]] == ["1.50"]
    assert second["nextCursor"] is None
    assert sum(Decimal(e["amount"]) for e in first["entries"] + second["entries"]) == Decimal("7.50")
