"""The OpenAPI document frontends generate their clients from: every status each route can answer, with our error
body, and request constraints that are exactly the ones enforced (what the document allows is accepted).

The fuzzing in tests/test_openapi_fuzz.py checks the running API against the document; these pin the document's
promises themselves, so a change to them is a deliberate one.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from assetpay_merchant.api.trades import DepositItemIn, WithdrawItemIn
from assetpay_merchant.api.users import ClientData

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}

STATUSES = {
    ("PUT", "/v1/users/{user_id}"): {200, 201, 401, 403, 409, 422, 503},
    ("GET", "/v1/me"): {200, 401, 404, 503},
    ("POST", "/v1/client-token"): {200, 401, 404, 409, 422, 429, 502, 503, 504},
    ("GET", "/v1/inventory"): {200, 401, 404, 409, 422, 429, 502, 503, 504},
    ("GET", "/v1/market"): {200, 401, 404, 409, 422, 429, 502, 503, 504},
    ("GET", "/v1/verification"): {200, 401, 404, 409, 422, 429, 502, 503, 504},
    ("POST", "/v1/verification/start"): {200, 401, 404, 409, 422, 429, 502, 503, 504},
    ("POST", "/v1/verification/link"): {200, 401, 404, 409, 422, 429, 502, 503, 504},
    ("GET", "/v1/balance"): {200, 401, 503},
    ("GET", "/v1/ledger"): {200, 401, 422, 503},
    ("GET", "/v1/trades"): {200, 401, 422, 503},
    ("GET", "/v1/trades/{trade_id}"): {200, 401, 404, 422, 503},
    ("POST", "/v1/deposits"): {201, 401, 404, 409, 422, 429, 502, 503, 504},
    ("POST", "/v1/withdrawals"): {201, 401, 402, 404, 409, 422, 429, 502, 503, 504},
    ("POST", "/v1/withdrawals/{trade_id}/cancel"): {200, 401, 404, 409, 422, 429, 502, 503, 504},
    ("GET", "/v1/admin/trades"): {200, 401, 403, 422, 503},
    ("GET", "/v1/admin/trades/{trade_id}"): {200, 401, 403, 404, 422, 503},
    ("POST", "/v1/admin/trades/{trade_id}/resolve"): {200, 401, 403, 404, 409, 422, 503},
    ("POST", "/v1/admin/adjustments"): {201, 401, 403, 404, 409, 422, 503},
    ("GET", "/v1/admin/exposure"): {200, 401, 403, 503},
    ("GET", "/v1/admin/users/{user_id}"): {200, 401, 403, 404, 422, 503},
    ("GET", "/healthz"): {200},
    ("GET", "/readyz"): {200, 503},
    ("GET", "/metrics"): {200},
}
"""Every status each of our routes can answer (the webhook route documents its own)."""


@pytest.fixture(scope="module")
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
        if path != "/webhooks/assetpay"
    }


def test_every_route_documents_every_status_it_can_answer(document: dict[str, Any]) -> None:
    documented = {key: {int(status) for status in op["responses"]} for key, op in operations(document).items()}
    assert documented == STATUSES


def test_every_error_is_documented_with_our_error_body(document: dict[str, Any]) -> None:
    for key, operation in operations(document).items():
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == ERROR_BODY, (key, status)
    assert "HTTPValidationError" not in document["components"]["schemas"], "FastAPI's 422 shape is not ours"
    detail = document["components"]["schemas"]["ErrorDetail"]
    assert detail["required"] == ["key", "message"]
    assert detail["properties"]["fields"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "title": "Fields",
        "description": detail["properties"]["fields"]["description"],
    }


def test_every_protected_route_documents_401_and_the_admin_route_403(document: dict[str, Any]) -> None:
    for key, operation in operations(document).items():
        if operation.get("security"):
            assert "401" in operation["responses"], key
    admin_routes = [key for key in operations(document) if key[1] == "/v1/users/{user_id}" or "/admin/" in key[1]]
    assert len(admin_routes) == 7
    for key in admin_routes:
        assert operations(document)[key]["security"] == [{"APIKeyHeader": []}], key
        assert "403" in operations(document)[key]["responses"], key


def test_retry_after_is_documented_where_it_may_be_sent(document: dict[str, Any]) -> None:
    deposit = operations(document)[("POST", "/v1/deposits")]["responses"]
    for status in ("409", "429", "502", "503", "504"):
        assert deposit[status]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}, status


def test_routes_that_take_no_body_say_so(document: dict[str, Any]) -> None:
    for key in (("POST", "/v1/client-token"), ("POST", "/v1/withdrawals/{trade_id}/cancel")):
        body = operations(document)[key]["requestBody"]
        assert body["required"] is False
        assert body["content"]["application/json"]["schema"] == {"type": "object", "maxProperties": 0}


def test_the_idempotency_key_is_a_string_of_at_most_255(document: dict[str, Any]) -> None:
    for key in (("POST", "/v1/deposits"), ("POST", "/v1/withdrawals")):
        [header] = [p for p in operations(document)[key]["parameters"] if p["name"] == "Idempotency-Key"]
        assert header["schema"]["type"] == "string"
        assert header["schema"]["maxLength"] == 255
        assert header["required"] is False


# -- money: what the document allows is accepted, and what it does not is refused ---------------------------------


def money_schema(document: dict[str, Any], model: str, field: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][model]["properties"][field]
    return schema


def branches(schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    string, number = (branch for branch in schema["anyOf"] if branch.get("type") in ("string", "number"))
    assert string["type"] == "string"
    assert number["type"] == "number"
    return string["pattern"], number


EXACT = Context(prec=200)


def grid(low: Decimal, high: Decimal, step: Decimal) -> st.SearchStrategy[Decimal]:
    """Multiples of `step` from low to high (both included), exactly."""
    first, last = (int(EXACT.divide(bound, step)) for bound in (low, high))
    return st.integers(first, last).map(lambda n: EXACT.multiply(Decimal(n), step))


DOCUMENTED = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize(
    ("model", "field", "build"),
    [
        (DepositItemIn, "price", lambda v: {"itemId": "abcde", "price": v}),
        (WithdrawItemIn, "price", lambda v: {"itemId": "abcde", "price": v}),
        (ClientData, "totalWager", lambda v: {"totalWager": v}),
    ],
    ids=["deposit price", "withdrawal price", "totalWager"],
)
def test_an_amount_the_document_allows_is_accepted(
    document: dict[str, Any], model: Any, field: str, build: Any
) -> None:
    pattern, number = branches(money_schema(document, model.__name__, field))
    step = Decimal(str(number["multipleOf"]))
    assert step == (Decimal("1e-64") if field == "totalWager" else Decimal("1e-8"))
    low = (
        Decimal(str(number["minimum"]))
        if "minimum" in number
        else EXACT.add(Decimal(str(number["exclusiveMinimum"])), step)
    )
    top = (
        Decimal(str(number["maximum"]))
        if "maximum" in number
        else EXACT.subtract(Decimal(str(number["exclusiveMaximum"])), step)
    )

    @DOCUMENTED
    @given(text=st.from_regex(pattern, fullmatch=True), amount=grid(low, top, step))
    def accepted(text: str, amount: Decimal) -> None:
        model.model_validate(build(text))  # a decimal string the pattern allows
        model.model_validate(build(amount))  # a JSON number on the grid, read as a Decimal
        if amount == amount.to_integral_value():
            model.model_validate(build(int(amount)))  # and written as an integer

    accepted()


@pytest.mark.parametrize(
    "text",
    [" 1", "1 ", "+1", "-1", "1e2", "1E-8", "1_000", "01", ".5", "1.", "١٢", "1.000000000", "0", "0.00", "NaN", ""],
)
def test_an_amount_string_the_pattern_refuses_is_refused(document: dict[str, Any], text: str) -> None:
    pattern, _ = branches(money_schema(document, "DepositItemIn", "price"))
    assert not re.fullmatch(pattern, text)
    with pytest.raises(ValidationError):
        DepositItemIn.model_validate({"itemId": "abcde", "price": text})


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (Decimal("100000"), True),
        (Decimal("100000.00000000"), True),
        (Decimal("100000.00000001"), False),
        ("100000.00", True),
        ("100000.01", False),
        ("99999.99999999", True),
        (Decimal("1.000000000"), True),  # a JSON number 1.000000000 is 1: a multiple of 0.00000001
        (Decimal("1.000000001"), False),
        (Decimal("0"), False),
        (Decimal("-0.00000001"), False),
    ],
)
def test_a_withdrawal_price_is_bounded_as_documented(value: Any, accepted: bool) -> None:
    try:
        WithdrawItemIn.model_validate({"itemId": "abcde", "price": value})
    except ValidationError:
        assert not accepted
    else:
        assert accepted


def test_a_game_in_a_body_is_a_number_or_its_string(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["DepositIn"]["properties"]["game"]
    assert schema["enum"] == [730, 252490, "730", "252490"]
    example = document["components"]["schemas"]["DepositIn"]["examples"][0]
    assert example["game"] in schema["enum"]
