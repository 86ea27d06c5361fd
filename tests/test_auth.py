import time

import jwt

from tests.support import JWT_SECRET, auth, register_user


async def test_missing_token_is_401(client):
    response = await client.get("/v1/balance")
    assert response.status_code == 401
    assert response.json()["error"]["key"] == "AUTH_REQUIRED"


async def test_expired_token_is_401(client):
    token = jwt.encode({"sub": "u", "exp": int(time.time()) - 10}, JWT_SECRET, algorithm="HS256")
    response = await client.get("/v1/balance", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["error"]["key"] == "TOKEN_EXPIRED"


async def test_forged_and_malformed_tokens_are_401(client):
    forged = jwt.encode({"sub": "u"}, "another-secret-of-at-least-32-bytes!", algorithm="HS256")
    unsigned = jwt.encode({"sub": "u"}, None, algorithm="none")
    no_sub = jwt.encode({"exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
    numeric_sub = jwt.encode({"sub": 7}, JWT_SECRET, algorithm="HS256")
    for token in (forged, unsigned, no_sub, numeric_sub, "garbage"):
        response = await client.get("/v1/balance", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert response.json()["error"]["key"] == "INVALID_TOKEN"


async def test_valid_token_reaches_the_route(client):
    await register_user(client, "valid")
    assert (await client.get("/v1/balance", headers=auth("valid"))).status_code == 200
