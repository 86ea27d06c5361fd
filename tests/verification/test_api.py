"""`GET /v1/verification`, `POST /v1/verification/start`, `POST /v1/verification/link`: AssetPay's identity
verification proxied with the user's client token, its refusals mapped to our keys, and nothing stored.

AssetPay is faked at the HTTP boundary with respx; every request is checked against its OpenAPI document and every
faked answer against the documented response (tests/verification/conftest.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.store.base import Base
from tests.assetpay_respx import API_KEY, API_SECRET, AssetPay, Endpoint, register, rows, unchecked
from tests.gateway.fake_assetpay import bare, fail, ok
from tests.support import auth
from tests.verification.conftest import CAPTURE_URL, Verification, identity, process, status_data

ROUTES = [("GET", "/v1/verification"), ("POST", "/v1/verification/start"), ("POST", "/v1/verification/link")]
ROUTE_IDS = ["status", "start", "link"]


async def call(client: httpx.AsyncClient, method: str, path: str, user_id: str, **options: Any) -> httpx.Response:
    return await client.request(method, path, headers=auth(user_id), **options)


def upstream(verify: Verification, path: str) -> Endpoint:
    """The AssetPay route our route ends with (a link first reads the status)."""
    return {"/v1/verification": verify.status, "/v1/verification/start": verify.start}.get(path, verify.link)


def with_email(verify: Verification) -> None:
    """The account has an email, so a link gets past its first question."""
    verify.status.reply(ok(status_data(email="player@example.com")))


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


# -- happy paths -------------------------------------------------------------------------------------------------


async def test_the_status_is_passed_through_in_camel_case(
    client: httpx.AsyncClient, assetpay: AssetPay, verify: Verification
) -> None:
    await register(client, "checked")
    answer = status_data(
        level=1,
        email="Ada@Example.com",
        latest=process("ACCEPTED", completedAt="2026-07-31T12:20:00.000Z"),
        linked=identity(),
    )
    verify.status.reply(ok(answer))
    response = await call(client, "GET", "/v1/verification", "checked")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "verificationLevel": 1,
        "email": "Ada@Example.com",
        "latestProcess": {
            "dossierId": "dossier-1",
            "processId": "process-1",
            "captureUrl": CAPTURE_URL,
            "status": "ACCEPTED",
            "createdAt": "2026-07-31T12:00:00Z",
            "completedAt": "2026-07-31T12:20:00Z",
        },
        "linkedIdentity": {
            "id": "5f0c6f3e-8a3b-4c2d-9e1f-0a1b2c3d4e5f",
            "firstName": "Ada",
            "lastName": "Lovelace",
            "documentCountry": "GBR",
            "linkedAt": "2026-07-31T12:30:00Z",
        },
    }
    [request] = verify.status.requests
    assert request.content == b""
    assert assetpay.client_ids() == ["checked"], "asked with this user's client token"


async def test_an_unverified_user_without_a_process_has_nulls(client: httpx.AsyncClient, verify: Verification) -> None:
    await register(client, "fresh")
    verify.status.reply(ok(status_data()))
    response = await call(client, "GET", "/v1/verification", "fresh")
    assert response.status_code == 200, response.text
    assert response.json() == {"verificationLevel": 0, "email": None, "latestProcess": None, "linkedIdentity": None}


async def test_a_start_sends_the_email_and_answers_the_capture_url(
    client: httpx.AsyncClient, verify: Verification
) -> None:
    await register(client, "starter")
    verify.start.reply(ok({"captureUrl": CAPTURE_URL, "dossierId": "dossier-9"}))
    response = await call(
        client, "POST", "/v1/verification/start", "starter", json={"email": "first.last+cs2@mail.example.co.uk"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"captureUrl": CAPTURE_URL, "dossierId": "dossier-9"}
    assert verify.start.bodies() == [{"email": "first.last+cs2@mail.example.co.uk"}]
    assert verify.start.requests[0].headers["authorization"].startswith("Bearer ")


@pytest.mark.parametrize(
    "options", [{}, {"json": {}}, {"json": {"email": None}}, {"content": b"", "headers": {}}], ids=str
)
async def test_a_start_without_an_email_sends_an_empty_object(
    client: httpx.AsyncClient, verify: Verification, options: dict[str, Any]
) -> None:
    await register(client, "anonymous")
    verify.start.reply(ok({"captureUrl": CAPTURE_URL, "dossierId": "dossier-2"}))
    headers = {**auth("anonymous"), **options.pop("headers", {})}
    response = await client.post("/v1/verification/start", headers=headers, **options)
    assert response.status_code == 200, response.text
    assert verify.start.bodies() == [{}]


async def test_a_link_checks_the_email_then_links_without_a_body(
    client: httpx.AsyncClient, assetpay: AssetPay, verify: Verification
) -> None:
    await register(client, "second-account")
    with_email(verify)
    verify.link.reply(ok({"linked": True}))
    response = await call(client, "POST", "/v1/verification/link", "second-account")
    assert response.status_code == 200, response.text
    assert response.json() == {"linked": True}
    [request] = verify.link.requests
    assert request.content == b""
    assert request.headers["authorization"] == verify.status.requests[0].headers["authorization"]
    assert assetpay.auth.call_count == 1, "one client token serves both calls"


async def test_a_link_for_an_account_without_an_email_is_refused_before_asking(
    client: httpx.AsyncClient, verify: Verification
) -> None:
    await register(client, "no-email")
    verify.status.reply(ok(status_data(email=None)))
    response = await call(client, "POST", "/v1/verification/link", "no-email")
    assert response.status_code == 409
    assert error_of(response)["key"] == "VERIFICATION_EMAIL_REQUIRED"
    assert verify.link.call_count == 0


# -- the client token ----------------------------------------------------------------------------------------------


def happy(verify: Verification, path: str) -> httpx.Response:
    if path == "/v1/verification":
        return ok(status_data())
    if path == "/v1/verification/start":
        return ok({"captureUrl": CAPTURE_URL, "dossierId": "dossier-3"})
    with_email(verify)
    return ok({"linked": True})


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=ROUTE_IDS)
async def test_a_refused_client_token_is_renewed_once_and_the_call_replayed(
    client: httpx.AsyncClient, assetpay: AssetPay, verify: Verification, method: str, path: str
) -> None:
    await register(client, "renewed")
    endpoint = upstream(verify, path)
    endpoint.reply(fail(401, "INVALID_TOKEN"), happy(verify, path))
    response = await call(client, method, path, "renewed")
    assert response.status_code == 200, response.text
    assert assetpay.auth.call_count == 2
    first, second = endpoint.requests
    assert first.content == second.content
    assert first.headers["authorization"] != second.headers["authorization"]


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=ROUTE_IDS)
async def test_a_client_token_refused_twice_is_our_credentials_problem(
    client: httpx.AsyncClient, assetpay: AssetPay, verify: Verification, method: str, path: str
) -> None:
    await register(client, "stale")
    if path == "/v1/verification/link":
        with_email(verify)
    endpoint = upstream(verify, path)
    endpoint.reply(fail(401, "INVALID_TOKEN"))
    response = await call(client, method, path, "stale")
    assert response.status_code == 502
    assert error_of(response)["key"] == "UPSTREAM_AUTH_FAILED"
    assert endpoint.call_count == 2


# -- AssetPay's refusals -------------------------------------------------------------------------------------------

# The document names VERIFICATION_ALREADY_VERIFIED, VERIFICATION_IN_PROGRESS and VERIFICATION_NOT_AVAILABLE for a
# start (ASSETPAY.md: codes 2300-2302; the mapping goes by key, never by code). For a link it lists the refusals
# (no email, no matching identity, a banned identity, too many linked accounts) and a 404, but no keys: the keys of
# the link rows are made up, to show that whatever AssetPay calls them they are named by status.
REFUSALS = [
    # our route, AssetPay's status, key and code, our status and key
    ("start", 400, "VERIFICATION_ALREADY_VERIFIED", 2300, 409, "VERIFICATION_ALREADY_VERIFIED"),
    ("start", 400, "VERIFICATION_IN_PROGRESS", 2301, 409, "VERIFICATION_IN_PROGRESS"),
    ("start", 429, "VERIFICATION_IN_PROGRESS", 2301, 409, "VERIFICATION_IN_PROGRESS"),
    ("start", 503, "VERIFICATION_NOT_AVAILABLE", 2302, 503, "VERIFICATION_NOT_AVAILABLE"),
    ("start", 400, "VALIDATION_FAILED", 1000, 422, "VALIDATION_FAILED"),
    ("start", 429, "RATE_LIMITED", 1000, 429, "RATE_LIMITED"),
    ("start", 503, "SYSTEM_MAINTENANCE", 1000, 503, "MAINTENANCE"),
    ("status", 429, "RATE_LIMITED", 1000, 429, "RATE_LIMITED"),
    ("status", 503, "SYSTEM_MAINTENANCE", 1000, 503, "MAINTENANCE"),
    ("link", 404, "NOT_FOUND", 1000, 404, "VERIFICATION_IDENTITY_NOT_FOUND"),
    ("link", 404, "VERIFIED_IDENTITY_NOT_FOUND", 1000, 404, "VERIFICATION_IDENTITY_NOT_FOUND"),
    ("link", 400, "CLIENT_EMAIL_MISSING", 1000, 409, "VERIFICATION_LINK_REFUSED"),
    ("link", 400, "IDENTITY_BANNED", 1000, 409, "VERIFICATION_LINK_REFUSED"),
    ("link", 400, "IDENTITY_LINK_LIMIT_REACHED", 1000, 409, "VERIFICATION_LINK_REFUSED"),
    ("link", 400, "VERIFICATION_ALREADY_VERIFIED", 2300, 409, "VERIFICATION_ALREADY_VERIFIED"),
    ("link", 400, "VALIDATION_FAILED", 1000, 422, "VALIDATION_FAILED"),
    ("link", 429, "RATE_LIMITED", 1000, 429, "RATE_LIMITED"),
]
PATHS = {"status": ("GET", "/v1/verification"), "start": ("POST", "/v1/verification/start")}
PATHS["link"] = ("POST", "/v1/verification/link")


@pytest.mark.parametrize(
    ("route", "status", "key", "code", "ours", "our_key"),
    REFUSALS,
    ids=[f"{r[0]}-{r[1]}-{r[2]}" for r in REFUSALS],
)
async def test_a_refusal_maps_to_our_key_and_is_not_retried(
    client: httpx.AsyncClient,
    verify: Verification,
    route: str,
    status: int,
    key: str,
    code: int,
    ours: int,
    our_key: str,
) -> None:
    await register(client, "refused")
    method, path = PATHS[route]
    if route == "link":
        with_email(verify)
    endpoint = upstream(verify, path)
    fields = {"email": "must be a valid email"} if key == "VALIDATION_FAILED" else None
    endpoint.reply(fail(status, key, code=code, message="AssetPay says no", fields=fields, request_id="req-v-1"))
    response = await call(client, method, path, "refused")
    assert response.status_code == ours, response.text
    error = error_of(response)
    assert error["key"] == our_key
    assert error["assetpayRequestId"] == "req-v-1"
    assert endpoint.call_count == 1, "a refusal is not retried"
    if fields is not None:
        assert error["fields"] == fields
    if our_key == "VERIFICATION_LINK_REFUSED":
        assert error["message"] == f"AssetPay refused the link: AssetPay says no ({key})"


async def test_a_process_in_progress_passes_assetpays_retry_after_on(
    client: httpx.AsyncClient, verify: Verification
) -> None:
    await register(client, "eager")
    verify.start.reply(fail(429, "VERIFICATION_IN_PROGRESS", code=2301, headers={"Retry-After": "1200"}))
    response = await call(client, "POST", "/v1/verification/start", "eager", json={"email": "eager@example.com"})
    assert response.status_code == 409
    assert error_of(response)["key"] == "VERIFICATION_IN_PROGRESS"
    assert response.headers["Retry-After"] == "1200"
    assert verify.start.call_count == 1


async def test_a_process_in_progress_without_retry_after_has_none(
    client: httpx.AsyncClient, verify: Verification
) -> None:
    await register(client, "twice")
    verify.start.reply(fail(400, "VERIFICATION_IN_PROGRESS", code=2301))
    response = await call(client, "POST", "/v1/verification/start", "twice")
    assert response.status_code == 409
    assert "Retry-After" not in response.headers


async def test_a_bare_404_on_a_link_is_a_wrong_address_not_a_missing_identity(
    client: httpx.AsyncClient, verify: Verification
) -> None:
    await register(client, "misrouted")
    with_email(verify)
    verify.link.reply(bare(404, "<html>Not Found</html>"))
    response = await call(client, "POST", "/v1/verification/link", "misrouted")
    assert response.status_code == 502
    assert error_of(response)["key"] == "UPSTREAM_INVALID_RESPONSE"


# -- AssetPay failing ----------------------------------------------------------------------------------------------

MALFORMED = [
    ("status", unchecked(ok({"email": None, "latestProcess": None, "linkedIdentity": None}))),
    ("status", unchecked(ok(status_data(level=-1)))),
    ("status", unchecked(ok(status_data(latest=process(captureUrl="javascript:alert(1)"))))),
    ("status", unchecked(ok(status_data(latest={"status": "CREATED"})))),
    ("status", unchecked(ok(status_data(linked=identity(linkedAt="yesterday"))))),
    ("start", unchecked(ok({"captureUrl": CAPTURE_URL}))),
    ("start", unchecked(ok({"captureUrl": "/relative/capture", "dossierId": "d"}))),
    ("link", unchecked(ok({}))),
    ("start", httpx.Response(200, content=b"<html>captive portal</html>", headers={"content-type": "text/html"})),
    ("status", unchecked(httpx.Response(200, json={"hello": "world"}))),
]


@pytest.mark.parametrize(("route", "reply"), MALFORMED, ids=[f"{r}-{n}" for n, (r, _) in enumerate(MALFORMED)])
async def test_an_unreadable_answer_is_502(
    client: httpx.AsyncClient, verify: Verification, route: str, reply: httpx.Response
) -> None:
    await register(client, "confused")
    method, path = PATHS[route]
    if route == "link":
        with_email(verify)
    endpoint = upstream(verify, path)
    endpoint.reply(reply)
    response = await call(client, method, path, "confused")
    assert response.status_code == 502, response.text
    assert error_of(response)["key"] == "UPSTREAM_INVALID_RESPONSE"
    assert endpoint.call_count == 1


async def test_a_status_read_is_retried_after_a_5xx(client: httpx.AsyncClient, verify: Verification) -> None:
    await register(client, "lucky")
    verify.status.reply(bare(502), ok(status_data()))
    response = await call(client, "GET", "/v1/verification", "lucky")
    assert response.status_code == 200, response.text
    assert verify.status.call_count == 2


@pytest.mark.parametrize(
    ("route", "calls"), [("status", 3), ("start", 1), ("link", 1)], ids=["status-retried", "start", "link"]
)
@pytest.mark.parametrize("reply", [fail(500, "INTERNAL_ERROR"), bare(502)], ids=["enveloped-500", "bare-502"])
async def test_a_5xx_is_502_and_only_the_read_is_retried(
    client: httpx.AsyncClient, verify: Verification, route: str, calls: int, reply: httpx.Response
) -> None:
    await register(client, "flaky")
    method, path = PATHS[route]
    if route == "link":
        with_email(verify)
    endpoint = upstream(verify, path)
    endpoint.reply(reply)
    response = await call(client, method, path, "flaky")
    assert response.status_code == 502, response.text
    assert error_of(response)["key"] in ("UPSTREAM_ERROR", "UPSTREAM_INVALID_RESPONSE")
    assert endpoint.call_count == calls


@pytest.mark.parametrize(
    ("route", "calls"), [("status", 3), ("start", 1), ("link", 1)], ids=["status-retried", "start", "link"]
)
async def test_a_timeout_is_504(client: httpx.AsyncClient, verify: Verification, route: str, calls: int) -> None:
    await register(client, "slow")
    method, path = PATHS[route]
    if route == "link":
        with_email(verify)
    endpoint = upstream(verify, path)
    endpoint.reply(httpx.ReadTimeout("read timed out"))
    response = await call(client, method, path, "slow")
    assert response.status_code == 504, response.text
    error = error_of(response)
    assert error["key"] == "UPSTREAM_TIMEOUT"
    assert error["message"] == "AssetPay did not answer in time", "not the trade's 'answer was lost' message"
    assert endpoint.call_count == calls


async def test_an_unreachable_assetpay_is_502(client: httpx.AsyncClient, verify: Verification) -> None:
    await register(client, "offline")
    verify.start.reply(httpx.ConnectError("connection refused"))
    response = await call(client, "POST", "/v1/verification/start", "offline")
    assert response.status_code == 502
    assert error_of(response)["key"] == "UPSTREAM_UNAVAILABLE"


# -- who may ask, and what ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=ROUTE_IDS)
async def test_without_a_jwt_it_is_401_and_assetpay_is_not_asked(
    client: httpx.AsyncClient, assetpay: AssetPay, verify: Verification, method: str, path: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 401
    assert error_of(response)["key"] == "AUTH_REQUIRED"
    bad = await client.request(method, path, headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 401
    assert error_of(bad)["key"] == "INVALID_TOKEN"
    assert assetpay.router.calls.call_count == 0


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=ROUTE_IDS)
async def test_an_unregistered_user_gets_the_catalogs_error(
    client: httpx.AsyncClient, assetpay: AssetPay, verify: Verification, method: str, path: str
) -> None:
    ours = await call(client, method, path, "ghost")
    catalog = await call(client, "GET", "/v1/inventory", "ghost")
    assert ours.status_code == catalog.status_code == 404
    assert error_of(ours) == error_of(catalog)
    assert error_of(ours)["key"] == "USER_NOT_FOUND"
    assert assetpay.router.calls.call_count == 0


BAD_EMAILS = [
    "not-an-email",
    "",
    "name@localhost",
    "name@@example.com",
    "two words@example.com",
    ".dot-first@example.com",
    "dot-last.@example.com",
    "two..dots@example.com",
    "name@-hyphen.example.com",
    "name@example.c",
    "name@example.123",
    "name@[192.0.2.1]",
    '"quoted"@example.com',
    "ünïcode@example.com",
    " padded@example.com",
    "name@example.com\n",
    "x" * 64 + "@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 58 + ".com",  # 255 characters
    42,
    ["name@example.com"],
]


@pytest.mark.parametrize("email", BAD_EMAILS, ids=[repr(e)[:40] for e in BAD_EMAILS])
async def test_a_bad_email_is_422_naming_the_field(
    client: httpx.AsyncClient, assetpay: AssetPay, verify: Verification, email: Any
) -> None:
    await register(client, "typo")
    response = await call(client, "POST", "/v1/verification/start", "typo", json={"email": email})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["key"] == "VALIDATION_FAILED"
    assert set(error["fields"]) == {"email"}
    assert "email" in error["message"]
    assert assetpay.router.calls.call_count == 0


GOOD_EMAILS = [
    "a@b.co",
    "o'brien@example.ie",
    "first.last+tag@sub.example.co.uk",
    "UPPER@EXAMPLE.COM",
    "x@xn--80ak6aa92e.xn--p1ai",
    "!#$%&'*+/=?^_`{|}~-@example.org",
    "x" * 64 + "@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 57 + ".com",  # 254 characters
]


@pytest.mark.parametrize("email", GOOD_EMAILS, ids=[e[:40] for e in GOOD_EMAILS])
async def test_a_good_email_is_sent_as_given(client: httpx.AsyncClient, verify: Verification, email: str) -> None:
    await register(client, "careful")
    verify.start.reply(ok({"captureUrl": CAPTURE_URL, "dossierId": "dossier-4"}))
    response = await call(client, "POST", "/v1/verification/start", "careful", json={"email": email})
    assert response.status_code == 200, response.text
    assert verify.start.bodies() == [{"email": email}]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"email": "a@b.co", "name": "Ada"}, "name"), ([], "body"), ("a@b.co", "body")],
    ids=["extra-field", "array", "string"],
)
async def test_a_start_body_is_only_an_email(
    client: httpx.AsyncClient, assetpay: AssetPay, verify: Verification, body: Any, field: str
) -> None:
    await register(client, "extra")
    response = await call(client, "POST", "/v1/verification/start", "extra", json=body)
    assert response.status_code == 422, response.text
    assert field in error_of(response)["fields"]
    assert assetpay.router.calls.call_count == 0


async def test_a_link_takes_no_body(client: httpx.AsyncClient, assetpay: AssetPay, verify: Verification) -> None:
    await register(client, "bodily")
    response = await call(client, "POST", "/v1/verification/link", "bodily", json={"email": "a@b.co"})
    assert response.status_code == 422
    assert set(error_of(response)["fields"]) == {"body"}
    assert assetpay.router.calls.call_count == 0


# -- nothing stored, nothing leaked --------------------------------------------------------------------------------


async def everything(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    return {table.name: await rows(engine, f"SELECT * FROM {table.name}") for table in Base.metadata.sorted_tables}


async def test_the_routes_write_nothing_to_the_database(
    client: httpx.AsyncClient, engine: AsyncEngine, verify: Verification
) -> None:
    await register(client, "observer")
    before = await everything(engine)
    assert {"users", "balances", "trades", "ledger_entries", "events"} <= set(before), "every table is compared"
    verify.status.reply(ok(status_data(email="o@example.com")))
    verify.start.reply(ok({"captureUrl": CAPTURE_URL, "dossierId": "d"}), fail(400, "VERIFICATION_IN_PROGRESS"))
    verify.link.reply(ok({"linked": True}), fail(404, "NOT_FOUND"))
    statuses = [
        (await call(client, "GET", "/v1/verification", "observer")).status_code,
        (await call(client, "POST", "/v1/verification/start", "observer", json={"email": "o@example.com"})).status_code,
        (await call(client, "POST", "/v1/verification/start", "observer")).status_code,
        (await call(client, "POST", "/v1/verification/link", "observer")).status_code,
        (await call(client, "POST", "/v1/verification/link", "observer")).status_code,
        (await call(client, "GET", "/v1/verification", "ghost")).status_code,
    ]
    assert statuses == [200, 200, 409, 200, 404, 404]
    assert await everything(engine) == before


async def test_the_api_key_and_secret_never_reach_a_response_or_a_log(
    client: httpx.AsyncClient, verify: Verification, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"api-key {API_KEY} / secret {API_SECRET} not accepted"
    await register(client, "leaky")
    with_email(verify)
    verify.start.reply(
        fail(400, "VALIDATION_FAILED", message=echo, fields={"email": echo}),
        fail(400, "VERIFICATION_IN_PROGRESS", message=[echo, echo]),
        httpx.ReadTimeout(echo),
    )
    verify.link.reply(
        fail(400, "IDENTITY_BANNED", message=echo, details={"apiKey": API_KEY}), fail(404, "X", message=echo)
    )
    responses = [await call(client, "POST", "/v1/verification/start", "leaky") for _ in range(3)]
    responses += [await call(client, "POST", "/v1/verification/link", "leaky") for _ in range(2)]
    assert [r.status_code for r in responses] == [422, 409, 504, 409, 404]
    assert "[redacted]" in json.dumps(responses[3].json())
    formatter = logging.Formatter("%(message)s %(exc_info)s")
    for secret in (API_KEY, API_SECRET):
        for response in responses:
            assert secret not in response.text, response.text
            assert secret not in str(response.headers)
        for record in caplog.records:
            assert secret not in formatter.format(record), record
