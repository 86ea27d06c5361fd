from decimal import Decimal

import pytest

from tests.support import ADMIN_KEY, TRADE_URL, auth, deliver_trade, register_user, trade

PROFILE = {"steamId": "76561198000000042", "tradeUrl": TRADE_URL}


async def test_put_user_creates_then_updates(client):
    created = await client.put("/v1/users/alice", json=PROFILE, headers={"X-Admin-Key": ADMIN_KEY})
    assert created.status_code == 201
    assert created.json()["steamId"] == "76561198000000042"

    client_data = {"totalWager": 1250.5, "kycLevel": 3, "fiatDeposits": True, "registrationDate": None}
    updated = await client.put(
        "/v1/users/alice", json={**PROFILE, "clientData": client_data}, headers={"X-Admin-Key": ADMIN_KEY}
    )
    assert updated.status_code == 200
    assert updated.json()["clientData"] == {
        "totalWager": "1250.5",
        "kycLevel": 3,
        "fiatDeposits": True,
        "registrationDate": None,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**PROFILE, "steamId": "12345"}, "steamId"),
        ({**PROFILE, "tradeUrl": "https://example.com/trade"}, "tradeUrl"),
        ({**PROFILE, "clientData": {"kycLevel": -1}}, "clientData.kycLevel"),
        ({**PROFILE, "clientData": {"totalWager": -5}}, "clientData.totalWager"),
        ({**PROFILE, "clientData": {"favouriteColour": "red"}}, "clientData.favouriteColour"),
        ({"tradeUrl": TRADE_URL}, "steamId"),
    ],
)
async def test_put_user_rejects_bad_profiles_naming_the_field(client, body, field):
    response = await client.put("/v1/users/bob", json=body, headers={"X-Admin-Key": ADMIN_KEY})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["key"] == "VALIDATION_FAILED"
    assert field in error["fields"]
    assert (await client.get("/v1/me", headers=auth("bob"))).status_code == 404


async def test_a_steam_id_belongs_to_one_user(client):
    await register_user(client, "first", "76561198000000077")
    response = await client.put(
        "/v1/users/second", json={**PROFILE, "steamId": "76561198000000077"}, headers={"X-Admin-Key": ADMIN_KEY}
    )
    assert response.status_code == 409
    assert response.json()["error"]["key"] == "STEAM_ID_TAKEN"


async def test_admin_key_is_required_and_checked(client):
    missing = await client.put("/v1/users/carol", json=PROFILE)
    assert missing.status_code == 401
    assert missing.json()["error"]["key"] == "ADMIN_KEY_REQUIRED"
    wrong = await client.put("/v1/users/carol", json=PROFILE, headers={"X-Admin-Key": "not-the-key"})
    assert wrong.status_code == 403
    assert wrong.json()["error"]["key"] == "ADMIN_KEY_INVALID"
    user_jwt = await client.put("/v1/users/carol", json=PROFILE, headers=auth("carol"))
    assert user_jwt.status_code == 401


async def test_me_shows_profile_and_balance(client):
    steam = await register_user(client, "dave")
    await deliver_trade(client, trade(status="hold", total="100.00", pre="60.00", user_id="dave", steam_id=steam))
    response = await client.get("/v1/me", headers=auth("dave"))
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "dave"
    assert body["steamId"] == steam
    assert body["balance"] == {"available": "60.00", "pending": "40.00", "currency": "USD"}
    assert "clientData" not in body


async def test_me_for_an_unregistered_user_is_404(client):
    response = await client.get("/v1/me", headers=auth("nobody"))
    assert response.status_code == 404
    assert response.json()["error"]["key"] == "USER_NOT_FOUND"


async def test_balance_of_a_new_user_is_zero(client):
    await register_user(client, "erin")
    response = await client.get("/v1/balance", headers=auth("erin"))
    assert response.json() == {"available": "0.00", "pending": "0.00", "currency": "USD"}
    assert Decimal(response.json()["available"]) == 0
