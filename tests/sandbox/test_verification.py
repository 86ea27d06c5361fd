"""Identity verification through the sandbox's HTTP API: AssetPay's three routes, answered in the OpenAPI's shapes
with its documented errors, and the control routes that decide a process in place of Signicat."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.sandbox.helpers import (
    OTHER_STEAM_ID,
    STEAM_ID,
    Clock,
    client_token,
    conforms,
    data,
    dumps,
    error,
)

START, STATUS, LINK = "/client/verification/start", "/client/verification/status", "/client/verification/link"


async def _start(api: httpx.AsyncClient, headers: dict[str, str], body: Any = None) -> httpx.Response:
    content = b"" if body is None else dumps(body)
    response = await api.post(START, content=content, headers=headers)
    conforms("POST", START, response)
    return response


async def _status(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await api.get(STATUS, headers=headers)
    conforms("GET", STATUS, response)
    found: dict[str, Any] = data(response)
    return found


async def _link(api: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    response = await api.post(LINK, headers=headers)
    conforms("POST", LINK, response)
    return response


async def _decide(api: httpx.AsyncClient, steam_id: str, verdict: str) -> httpx.Response:
    return await api.post(f"/_sandbox/users/{steam_id}/verification/{verdict}")


def _code(response: httpx.Response) -> int:
    code: int = response.json()["error"]["code"]
    return code


async def test_an_approved_verification_gives_level_one_and_an_identity(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    assert await _status(api, headers) == {
        "verificationLevel": 0,
        "email": None,
        "latestProcess": None,
        "linkedIdentity": None,
    }
    started = data(await _start(api, headers, {"email": "pat@example.com"}))
    status = await _status(api, headers)
    assert status["email"] == "pat@example.com"
    assert status["latestProcess"]["dossierId"] == started["dossierId"]
    assert status["latestProcess"]["captureUrl"] == started["captureUrl"]
    assert (status["latestProcess"]["status"], status["latestProcess"]["completedAt"]) == ("CAPTURE_PENDING", None)
    assert status["linkedIdentity"] is None

    view = data(await _decide(api, STEAM_ID, "approve"))
    assert (view["verificationLevel"], view["cap"], view["providerCollateral"]) == (1, 1000, 250)
    status = await _status(api, headers)
    assert status["verificationLevel"] == 1
    assert status["latestProcess"]["status"] == "ACCEPTED"
    assert status["latestProcess"]["completedAt"] is not None
    identity = status["linkedIdentity"]
    assert identity["id"] == view["identity"]["id"]
    assert identity["firstName"]
    assert identity["lastName"]
    assert len(identity["documentCountry"]) == 3
    assert data(await api.get("/client/inventory", headers=headers))["collateral"] == 250  # the verified floor


async def test_a_declined_verification_leaves_level_zero_and_may_be_retried(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    data(await _start(api, headers))  # no body: the email is optional
    view = data(await _decide(api, STEAM_ID, "decline"))
    assert (view["verificationLevel"], view["identity"]) == (0, None)
    status = await _status(api, headers)
    assert (status["latestProcess"]["status"], status["email"]) == ("REJECTED", None)
    data(await _start(api, headers, {}))  # a decided process blocks nothing
    error(await _decide(api, OTHER_STEAM_ID, "approve"), 409, "INVALID_STATE")  # nothing to decide


async def test_already_verified(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    data(await api.put(f"/_sandbox/users/{STEAM_ID}/verification", content=dumps({"level": 1})))
    refused = await _start(api, headers, {"email": "pat@example.com"})
    error(refused, 400, "VERIFICATION_ALREADY_VERIFIED")
    assert _code(refused) == 2300
    error(await _link(api, headers), 400, "VERIFICATION_ALREADY_VERIFIED")


async def test_one_process_per_thirty_minutes(api: httpx.AsyncClient, clock: Clock) -> None:
    headers = await client_token(api)
    first = data(await _start(api, headers, {"email": "pat@example.com"}))
    clock.advance(29 * 60)
    refused = await _start(api, headers)
    error(refused, 429, "VERIFICATION_IN_PROGRESS")
    assert _code(refused) == 2301
    assert refused.headers["Retry-After"] == "60"
    clock.advance(60)
    second = data(await _start(api, headers))
    assert second["dossierId"] != first["dossierId"]
    assert (await _status(api, headers))["email"] == "pat@example.com"  # kept from the first start


async def test_an_unfinished_process_expires(api: httpx.AsyncClient, clock: Clock) -> None:
    headers = await client_token(api)
    data(await _start(api, headers))
    clock.advance(30 * 60)
    process = (await _status(api, headers))["latestProcess"]
    assert process["status"] == "EXPIRED"
    assert process["completedAt"] == "2026-07-31T12:30:00.000Z"
    error(await _decide(api, STEAM_ID, "approve"), 409, "INVALID_STATE")


async def test_verification_not_available(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    assert data(await api.put("/_sandbox/verification", content=dumps({"available": False}))) == {"available": False}
    refused = await _start(api, headers)
    error(refused, 503, "VERIFICATION_NOT_AVAILABLE")
    assert _code(refused) == 2302
    await api.put("/_sandbox/verification", content=dumps({"available": True}))
    data(await _start(api, headers))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": 7}, "email"),
        ({"mail": "pat@example.com"}, "mail"),
        ([], "body"),
    ],
)
async def test_start_validates_its_body(api: httpx.AsyncClient, body: Any, field: str) -> None:
    refused = await _start(api, await client_token(api), body)
    assert field in error(refused, 400, "VALIDATION_FAILED")["fields"]


@pytest.mark.parametrize(("method", "path"), [("POST", START), ("GET", STATUS), ("POST", LINK)])
async def test_every_route_needs_a_client_token(api: httpx.AsyncClient, method: str, path: str) -> None:
    response = await api.request(method, path)
    error(response, 401, "INVALID_TOKEN")
    conforms(method, path, response)


async def test_link_joins_the_identity_of_the_same_email(api: httpx.AsyncClient) -> None:
    first = await client_token(api)
    data(await _start(api, first, {"email": "Pat@Example.com"}))
    identity = data(await _decide(api, STEAM_ID, "approve"))["identity"]
    second = await client_token(api, OTHER_STEAM_ID)
    data(await _start(api, second, {"email": "pat@example.com"}))
    assert data(await _link(api, second)) == {"linked": True}
    status = await _status(api, second)
    assert status["verificationLevel"] == 1
    assert status["linkedIdentity"]["id"] == identity["id"]
    assert status["latestProcess"]["status"] == "CAPTURE_PENDING"  # its own process is untouched by the link
    view = data(await api.get(f"/_sandbox/users/{STEAM_ID}"))
    assert view["identity"]["linkedAccounts"] == [STEAM_ID, OTHER_STEAM_ID]


async def test_link_needs_an_email(api: httpx.AsyncClient) -> None:
    refused = await _link(api, await client_token(api))
    error(refused, 400, "VERIFICATION_EMAIL_REQUIRED")
    assert _code(refused) == 2303


async def test_link_needs_a_verified_identity_with_that_email(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    data(await _start(api, headers, {"email": "nobody@example.com"}))
    refused = await _link(api, headers)
    error(refused, 404, "VERIFICATION_IDENTITY_NOT_FOUND")
    assert _code(refused) == 2304


async def _verified_identity(api: httpx.AsyncClient, email: str) -> str:
    data(await _start(api, await client_token(api), {"email": email}))
    identity_id: str = data(await _decide(api, STEAM_ID, "approve"))["identity"]["id"]
    return identity_id


async def test_link_refuses_a_banned_identity(api: httpx.AsyncClient) -> None:
    identity_id = await _verified_identity(api, "pat@example.com")
    banned = await api.put(f"/_sandbox/identities/{identity_id}", content=dumps({"banned": True}))
    assert data(banned) == {"id": identity_id, "banned": True}
    other = await client_token(api, OTHER_STEAM_ID)
    data(await _start(api, other, {"email": "pat@example.com"}))
    refused = await _link(api, other)
    error(refused, 400, "VERIFICATION_IDENTITY_BANNED")
    assert _code(refused) == 2305
    await api.put(f"/_sandbox/identities/{identity_id}", content=dumps({"banned": False}))
    data(await _link(api, other))
    error(await api.put("/_sandbox/identities/unknown", content=dumps({"banned": True})), 404, "NOT_FOUND")
    error(await api.put(f"/_sandbox/identities/{identity_id}", content=dumps({})), 400, "VALIDATION_FAILED")


async def test_link_refuses_an_identity_with_its_maximum_of_accounts(api: httpx.AsyncClient) -> None:
    await _verified_identity(api, "pat@example.com")
    for n in (2, 3):
        headers = await client_token(api, f"7656119800000000{n}")
        data(await _start(api, headers, {"email": "pat@example.com"}))
        data(await _link(api, headers))
    fourth = await client_token(api, "76561198000000004")
    data(await _start(api, fourth, {"email": "pat@example.com"}))
    refused = await _link(api, fourth)
    error(refused, 400, "VERIFICATION_MAX_LINKED_ACCOUNTS")
    assert _code(refused) == 2306


async def test_the_verification_shortcut(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    url = f"/_sandbox/users/{STEAM_ID}/verification"
    verified = data(await api.put(url, content=dumps({"level": 1})))
    assert (verified["verificationLevel"], verified["cap"], verified["instantCredit"]) == (1, 1000, 250)
    assert verified["identity"]["linkedAccounts"] == [STEAM_ID]
    assert (await _status(api, headers))["linkedIdentity"]["id"] == verified["identity"]["id"]
    again = data(await api.put(url, content=dumps({"level": 1})))
    assert again["identity"]["id"] == verified["identity"]["id"]  # idempotent
    unverified = data(await api.put(url, content=dumps({"level": 0})))
    assert (unverified["verificationLevel"], unverified["identity"], unverified["cap"]) == (0, None, 50)
    assert (await _status(api, headers))["linkedIdentity"] is None
    for bad in ({"level": 2}, {"level": True}, {"level": "1"}, {}):
        error(await api.put(url, content=dumps(bad)), 400, "VALIDATION_FAILED")
    error(await api.put("/_sandbox/users/42/verification", content=dumps({"level": 1})), 400, "VALIDATION_FAILED")
