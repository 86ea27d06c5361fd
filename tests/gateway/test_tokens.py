"""Client tokens (ASSETPAY.md §2): the identity's checks, local minting against the SDK's vector, the cache."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from decimal import Decimal

import jwt
import pytest

from assetpay_merchant.gateway import AssetPayError, ClientIdentity, ClientToken, OutcomeUnknown, mint_client_token
from assetpay_merchant.gateway.tokens import TokenCache, token_expiry

MERCHANT_ID = "0b9f9d9e-2f0e-4f7e-9a51-6f0f3c2c1a11"
SECRET = "test-api-secret-value"
STEAM_ID = "76561198000000001"
TRADE_URL = "https://steamcommunity.com/tradeoffer/new/?partner=39734273&token=AbCdEf12"
IAT = 1790337600
VECTOR = (
    "eyJhbGciOiJIUzI1NiIsInVzZXJJZCI6IjBiOWY5ZDllLTJmMGUtNGY3ZS05YTUxLTZmMGYzYzJjMWExMSJ9."
    "eyJtZXJjaGFudElkIjoiMGI5ZjlkOWUtMmYwZS00ZjdlLTlhNTEtNmYwZjNjMmMxYTExIiwiY2xpZW50Ijp7InN0ZWFtSUQiOiI3NjU2MTE5OD"
    "AwMDAwMDAwMSIsInRyYWRlVXJsIjoiaHR0cHM6Ly9zdGVhbWNvbW11bml0eS5jb20vdHJhZGVvZmZlci9uZXcvP3BhcnRuZXI9Mzk3MzQyNzMm"
    "dG9rZW49QWJDZEVmMTIiLCJjbGllbnRJZCI6InVzZXItNyJ9LCJpYXQiOjE3OTAzMzc2MDAsImV4cCI6MTc5MDQyNDAwMH0."
    "zEeJ3WO-yYP6bh8NxxKKN8ehW17UY9w7672SaqHFNbI"
)


def identity(**overrides: object) -> ClientIdentity:
    values: dict[str, object] = {"user_id": "user-7", "steam_id": STEAM_ID, "trade_url": TRADE_URL}
    values.update(overrides)
    return ClientIdentity(**values)  # type: ignore[arg-type]


def segment(token: str, index: int) -> bytes:
    part = token.split(".")[index]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_minting_reproduces_the_sdk_vector():
    token = mint_client_token(identity(), merchant_id=MERCHANT_ID, secret=SECRET, issued_at=IAT, ttl=86_400)
    assert token == VECTOR


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the SDK's short test secret
def test_minted_token_is_a_valid_hs256_jwt_without_typ_and_with_keys_in_order():
    token = mint_client_token(identity(), merchant_id=MERCHANT_ID, secret=SECRET, issued_at=IAT)
    assert "=" not in token
    assert segment(token, 0) == b'{"alg":"HS256","userId":"0b9f9d9e-2f0e-4f7e-9a51-6f0f3c2c1a11"}'
    payload = json.loads(segment(token, 1))
    assert list(payload) == ["merchantId", "client", "iat", "exp"]
    assert list(payload["client"]) == ["steamID", "tradeUrl", "clientId"]
    assert payload["exp"] - payload["iat"] == 86_400  # the default ttl
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert decoded["merchantId"] == MERCHANT_ID
    assert decoded["client"]["clientId"] == "user-7"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret", algorithms=["HS256"], options={"verify_exp": False})


def test_client_data_from_the_profile_goes_into_the_token_exactly():
    user = identity(
        client_data={
            "kycLevel": 3,
            "totalWager": "1250.10",  # as the profile stores it (a decimal string)
            "registrationDate": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            "fiatDeposits": True,
            "cryptoDeposits": None,  # unknown: left out
            "kycHash": "ab12",
        }
    )
    token = mint_client_token(user, merchant_id=MERCHANT_ID, secret=SECRET, issued_at=IAT, ttl=600)
    raw = segment(token, 1)
    # A JSON number written from the Decimal's digits: trailing zero kept, never through a float.
    assert b'"totalWager":1250.10' in raw
    client = json.loads(raw, parse_float=Decimal)["client"]
    assert list(client) == ["steamID", "tradeUrl", "clientData", "clientId"]
    assert client["clientData"] == {
        "totalWager": Decimal("1250.10"),
        "registrationDate": "2024-01-02T03:04:05.000Z",
        "kycHash": "ab12",
        "kycLevel": 3,
        "fiatDeposits": True,
    }
    assert json.loads(raw)["exp"] == IAT + 600


def test_empty_client_data_is_left_out():
    assert "clientData" not in identity(client_data={}).claims()
    assert "clientData" not in identity(client_data={"kycHash": None}).claims()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"steam_id": "7656119800000000"}, "steamId", id="steam-id-short"),
        pytest.param({"steam_id": "86561198000000001"}, "steamId", id="steam-id-prefix"),
        pytest.param({"steam_id": STEAM_ID + "\n"}, "steamId", id="steam-id-newline"),
        pytest.param({"trade_url": TRADE_URL.replace("https", "http")}, "tradeUrl", id="trade-url-http"),
        pytest.param({"trade_url": TRADE_URL + "x"}, "tradeUrl", id="trade-url-long-token"),
        pytest.param({"trade_url": TRADE_URL + "\n"}, "tradeUrl", id="trade-url-newline"),
        pytest.param({"trade_url": "https://evil.example/?partner=1&token=AbCdEf12"}, "tradeUrl", id="trade-url-host"),
        pytest.param({"user_id": ""}, "clientId", id="client-id-empty"),
        pytest.param({"user_id": "u" * 129}, "clientId", id="client-id-too-long"),
        pytest.param({"client_data": {"balance": 5}}, "clientData.balance", id="client-data-unknown-key"),
        pytest.param({"client_data": {"totalWager": "-1"}}, "clientData.totalWager", id="wager-negative"),
        pytest.param({"client_data": {"totalWager": "lots"}}, "clientData.totalWager", id="wager-text"),
        pytest.param({"client_data": {"kycLevel": 1.5}}, "clientData.kycLevel", id="kyc-level-fraction"),
        pytest.param({"client_data": {"kycLevel": True}}, "clientData.kycLevel", id="kyc-level-bool"),
        pytest.param({"client_data": {"fiatDeposits": "yes"}}, "clientData.fiatDeposits", id="fiat-not-bool"),
        pytest.param({"client_data": {"registrationDate": "yesterday"}}, "clientData.registrationDate", id="date"),
    ],
)
def test_identity_is_checked_before_any_token_or_request(overrides, field):
    with pytest.raises(AssetPayError) as caught:
        identity(**overrides)
    error = caught.value
    assert error.key == "VALIDATION_FAILED"
    assert error.fields is not None
    assert field in error.fields
    assert error.status is None
    assert not isinstance(error, OutcomeUnknown)


def test_user_id_of_128_characters_is_fine():
    assert identity(user_id="u" * 128).claims()["clientId"] == "u" * 128


@pytest.mark.parametrize("ttl", [0, -1, 86_401])
def test_ttl_outside_what_assetpay_accepts_is_refused(ttl):
    with pytest.raises(ValueError, match="ttl"):
        mint_client_token(identity(), merchant_id=MERCHANT_ID, secret=SECRET, issued_at=IAT, ttl=ttl)


def test_token_expiry_reads_exp_without_verifying():
    assert token_expiry(VECTOR) == IAT + 86_400
    assert token_expiry("not-a-token") is None
    assert token_expiry("a.!!!.c") is None


def _token(expires: int) -> ClientToken:
    return ClientToken(token=f"token-{expires}", expires_at=datetime.fromtimestamp(expires, UTC))


def test_cache_reuses_a_token_until_five_minutes_before_expiry():
    cache = TokenCache()
    user = identity()
    token = _token(IAT + 3600)
    cache.put(user, token, issued_at=IAT)
    assert cache.get(user, now=IAT) is token
    assert cache.get(user, now=IAT + 3600 - 301) is token
    assert cache.get(user, now=IAT + 3600 - 300) is None  # renewed 5 minutes before expiry


def test_cache_keeps_a_short_token_for_half_its_life():
    cache = TokenCache()
    user = identity()
    cache.put(user, _token(IAT + 120), issued_at=IAT)
    assert cache.get(user, now=IAT + 59) is not None
    assert cache.get(user, now=IAT + 60) is None


def test_cache_does_not_reuse_a_token_after_the_profile_changed():
    cache = TokenCache()
    cache.put(identity(), _token(IAT + 3600), issued_at=IAT)
    assert cache.get(identity(client_data={"kycLevel": 2}), now=IAT) is None
    other_url = TRADE_URL.replace("AbCdEf12", "ZyXwVu98")
    assert cache.get(identity(trade_url=other_url), now=IAT) is None
    assert cache.get(identity(), now=IAT) is not None


def test_cache_is_bounded_and_drops_on_request():
    cache = TokenCache(max_entries=2)
    users = [identity(user_id=f"user-{n}") for n in range(3)]
    for user in users:
        cache.put(user, _token(IAT + 3600), issued_at=IAT)
    assert len(cache) == 2
    assert cache.get(users[0], now=IAT) is None
    cache.drop("user-2")
    assert cache.get(users[2], now=IAT) is None
    assert cache.get(users[1], now=IAT) is not None


def test_token_stays_out_of_repr():
    assert "token-" not in repr(_token(IAT))
