"""The AssetPay client's verification calls against a scripted AssetPay (no database, no app): what is sent, what
is refused before sending, and how the failures come out."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from assetpay_merchant.api.verification import VerificationStartIn
from assetpay_merchant.gateway import (
    AssetPayClient,
    AssetPayError,
    ClientIdentity,
    ErrorKey,
    OutcomeUnknown,
    RetryPolicy,
    create_http_client,
)
from assetpay_merchant.gateway.models import EMAIL_PATTERN, MAX_EMAIL_LENGTH
from tests.gateway.fake_assetpay import BASE_URL, TRADE_URL, FakeAssetPay, bare, fail, ok

STATUS = "/client/verification/status"
START = "/client/verification/start"
LINK = "/client/verification/link"
AUTH = "/auth/authenticate-client"
USER = ClientIdentity(user_id="user-7", steam_id="76561198000000001", trade_url=TRADE_URL)


@pytest.fixture
def fake() -> FakeAssetPay:
    return FakeAssetPay()


@pytest.fixture
async def assetpay(fake: FakeAssetPay) -> AsyncIterator[AssetPayClient]:
    """Client tokens come from authenticate-client, so a refusal to issue one can be scripted."""
    fake.on("POST", AUTH, ok({"token": "client-token-1"}))

    async def no_wait(_: float) -> None:
        return None

    async with create_http_client(transport=fake.transport()) as http:
        yield AssetPayClient(
            http,
            base_url=BASE_URL,
            api_key=SecretStr("ap_test_key"),
            retry=RetryPolicy(attempts=3),
            sleep=no_wait,
        )


async def test_a_start_refuses_a_bad_email_before_sending_anything(
    assetpay: AssetPayClient, fake: FakeAssetPay
) -> None:
    with pytest.raises(AssetPayError) as refused:
        await assetpay.start_verification(USER, email="not an email")
    assert refused.value.key == ErrorKey.VALIDATION_FAILED
    assert refused.value.fields is not None
    assert set(refused.value.fields) == {"email"}
    assert fake.requests == []


@pytest.mark.parametrize(
    ("reply", "key"),
    [
        (fail(404, "NOT_FOUND"), ErrorKey.VERIFICATION_IDENTITY_NOT_FOUND),
        (fail(400, "VERIFICATION_IDENTITY_BANNED"), ErrorKey.VERIFICATION_LINK_REFUSED),
        (fail(409, "LINK_LIMIT"), ErrorKey.VERIFICATION_LINK_REFUSED),
        (fail(400, "VALIDATION_FAILED"), ErrorKey.VALIDATION_FAILED),
        (fail(400, "VERIFICATION_ALREADY_VERIFIED", code=2300), ErrorKey.VERIFICATION_ALREADY_VERIFIED),
        (fail(429, "RATE_LIMITED"), ErrorKey.RATE_LIMITED),
        (fail(403, "FORBIDDEN"), "FORBIDDEN"),
        (bare(404), ErrorKey.UNEXPECTED_RESPONSE),
    ],
    ids=["404", "unknown-400", "unknown-409", "validation", "already", "rate", "403", "bare-404"],
)
async def test_a_link_refusal_without_a_known_key_is_named_by_its_status(
    assetpay: AssetPayClient, fake: FakeAssetPay, reply: httpx.Response, key: str
) -> None:
    fake.on("POST", LINK, reply)
    with pytest.raises(AssetPayError) as refused:
        await assetpay.link_verification(USER)
    assert refused.value.key == key
    assert not isinstance(refused.value, OutcomeUnknown)
    assert len(fake.calls("POST", LINK)) == 1


async def test_a_renamed_link_refusal_keeps_assetpays_key_and_request_id(
    assetpay: AssetPayClient, fake: FakeAssetPay
) -> None:
    fake.on("POST", LINK, fail(400, "IDENTITY_BANNED", message="banned", request_id="req-link-1"))
    with pytest.raises(AssetPayError) as refused:
        await assetpay.link_verification(USER)
    assert (refused.value.key, refused.value.status) == (ErrorKey.VERIFICATION_LINK_REFUSED, 400)
    assert refused.value.message == "banned (IDENTITY_BANNED)"
    assert refused.value.request_id == "req-link-1"


async def test_a_refusal_to_issue_the_client_token_is_not_taken_for_a_link_refusal(
    assetpay: AssetPayClient, fake: FakeAssetPay
) -> None:
    fake.on("POST", AUTH, fail(404, "CLIENT_USER_NOT_FOUND"))
    with pytest.raises(AssetPayError) as refused:
        await assetpay.link_verification(USER)
    assert refused.value.key == "CLIENT_USER_NOT_FOUND"
    assert fake.calls("POST", LINK) == []


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("read timed out"), fail(500, "INTERNAL_ERROR"), bare(502)],
    ids=["timeout", "enveloped-500", "bare-502"],
)
async def test_a_lost_answer_to_a_start_is_a_plain_failure_and_not_resent(
    assetpay: AssetPayClient, fake: FakeAssetPay, failure: httpx.Response | Exception
) -> None:
    fake.on("POST", START, failure)
    with pytest.raises(AssetPayError) as failed:
        await assetpay.start_verification(USER, email="a@b.co")
    assert type(failed.value) is AssetPayError, "no money rides on it: never OutcomeUnknown"
    assert len(fake.calls("POST", START)) == 1


async def test_the_status_read_is_retried_after_a_timeout(assetpay: AssetPayClient, fake: FakeAssetPay) -> None:
    answer = {"verificationLevel": 0, "email": None, "latestProcess": None, "linkedIdentity": None}
    fake.on("GET", STATUS, httpx.ReadTimeout("read timed out"), ok(answer))
    status = await assetpay.verification_status(USER)
    assert (status.level, status.email, status.latest_process, status.linked_identity) == (0, None, None, None)
    assert len(fake.calls("GET", STATUS)) == 2


# -- the email rule: one pattern, read the same by the API, the client and JSON Schema tools ----------------------

EMAILS = st.from_regex(EMAIL_PATTERN, fullmatch=True).filter(lambda e: len(e) <= MAX_EMAIL_LENGTH)


@settings(max_examples=200, deadline=None)
@given(email=EMAILS)
def test_every_address_the_pattern_allows_is_accepted_by_the_api(email: str) -> None:
    assert VerificationStartIn.model_validate({"email": email}).email == email


@settings(max_examples=200, deadline=None)
@given(email=st.one_of(EMAILS, st.text(max_size=40), st.emails()))
def test_the_api_accepts_exactly_what_the_pattern_allows(email: str) -> None:
    allowed = re.fullmatch(EMAIL_PATTERN, email) is not None
    try:
        VerificationStartIn.model_validate({"email": email})
    except ValidationError:
        assert not allowed
    else:
        assert allowed
