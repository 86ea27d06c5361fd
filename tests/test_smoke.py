from decimal import Decimal

from tests.support import balance, deliver_trade, register_user, trade


async def test_deposit_hold_then_completed(client):
    steam = await register_user(client, "u1")
    payload = trade(status="hold", total="100.00", pre="60.00", user_id="u1", steam_id=steam)
    r = await deliver_trade(client, payload)
    assert r.status_code == 200, r.text
    assert await balance(client, "u1") == Decimal("60.00")
    r = await deliver_trade(client, {**payload, "status": "completed"})
    assert r.status_code == 200, r.text
    assert await balance(client, "u1") == Decimal("100.00")
