"""End-user JWTs and the admin key: who may call what."""

import time

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from assetpay_merchant.api.auth import TokenVerifier
from assetpay_merchant.app import create_app
from assetpay_merchant.config import ConfigurationError
from assetpay_merchant.core.errors import Unauthorized
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
    soon = int(time.time()) + 60
    forged = jwt.encode({"sub": "u", "exp": soon}, "another-secret-of-at-least-32-bytes!", algorithm="HS256")
    unsigned = jwt.encode({"sub": "u", "exp": soon}, None, algorithm="none")
    no_sub = jwt.encode({"exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
    numeric_sub = jwt.encode({"sub": 7, "exp": soon}, JWT_SECRET, algorithm="HS256")
    for token in (forged, unsigned, no_sub, numeric_sub, "garbage"):
        response = await client.get("/v1/balance", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert response.json()["error"]["key"] == "INVALID_TOKEN"


async def test_valid_token_reaches_the_route(client):
    await register_user(client, "valid")
    assert (await client.get("/v1/balance", headers=auth("valid"))).status_code == 200


async def test_a_token_without_exp_is_refused(client):
    """A token that never expires would be accepted for ever: `exp` is required."""
    await register_user(client, "no-exp")
    forever = jwt.encode({"sub": "no-exp"}, JWT_SECRET, algorithm="HS256")
    response = await client.get("/v1/balance", headers={"Authorization": f"Bearer {forever}"})
    assert response.status_code == 401
    assert response.json()["error"]["key"] == "INVALID_TOKEN"


def _claims(**extra):
    return {"sub": "u-1", "exp": int(time.time()) + 60, **extra}


def test_audience_and_issuer_are_checked_when_configured():
    verify = TokenVerifier(JWT_SECRET.encode(), ["HS256"], audience="shop-api", issuer="https://shop.example")
    good = jwt.encode(_claims(aud="shop-api", iss="https://shop.example"), JWT_SECRET, algorithm="HS256")
    assert verify(good) == "u-1"
    for claims in (
        _claims(iss="https://shop.example"),
        _claims(aud="other-api", iss="https://shop.example"),
        _claims(aud="shop-api"),
        _claims(aud="shop-api", iss="https://evil.example"),
    ):
        with pytest.raises(Unauthorized):
            verify(jwt.encode(claims, JWT_SECRET, algorithm="HS256"))


def test_unconfigured_audience_is_not_required():
    verify = TokenVerifier(JWT_SECRET.encode(), ["HS256"])
    assert verify(jwt.encode(_claims(aud="anything"), JWT_SECRET, algorithm="HS256")) == "u-1"


@pytest.fixture(scope="module")
def key_pair():
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


async def test_a_platform_signing_with_a_key_pair_is_verified_with_its_public_key(settings, key_pair):
    private, public = key_pair
    keyed = settings.model_copy(
        update={
            "auth_jwt_secret": None,
            "auth_jwt_public_key": SecretStr(public.replace("\n", "\\n")),  # as one line in an env file
            "auth_jwt_algorithm": "ES256",
        }
    )
    app = create_app(keyed)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://backend.test") as http,
    ):
        signed = jwt.encode(_claims(sub="es-user"), private, algorithm="ES256")
        hs = jwt.encode(_claims(sub="es-user"), JWT_SECRET, algorithm="HS256")
        assert (await http.get("/v1/me", headers={"Authorization": f"Bearer {signed}"})).status_code == 404
        refused = await http.get("/v1/me", headers={"Authorization": f"Bearer {hs}"})
        assert refused.status_code == 401  # the shared secret is not a way in any more


def test_an_unusable_public_key_stops_the_start(settings):
    broken = settings.model_copy(update={"auth_jwt_public_key": SecretStr("not a key"), "auth_jwt_algorithm": "RS256"})
    with pytest.raises(ConfigurationError, match="AUTH_JWT_PUBLIC_KEY"):
        create_app(broken)
