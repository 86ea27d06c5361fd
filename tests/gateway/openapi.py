"""Checks requests and faked responses against AssetPay's published OpenAPI document (tests/data copy).

`check_request` validates what the client really sent: the path and method exist, the auth header the operation
asks for is there, every query parameter is documented and fits its schema, and the body (decoded with Decimals,
so a number is checked as written) fits the operation's request schema — or is empty when none is documented.
`check_response` validates a faked answer against the documented response for its status (the generic error
envelope of the operation when that status is not listed for it).
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from jsonschema import Draft202012Validator

SPEC_PATH = Path(__file__).resolve().parents[1] / "data" / "assetpay-openapi.json"


@cache
def spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


@cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    compiled = []
    for template in spec()["paths"]:
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        compiled.append((re.compile(f"^{pattern}$"), template))
    # Literal segments win over parameters: /secure/buy/quick before /secure/buy/{tradeId}
    compiled.sort(key=lambda pair: pair[1].count("{"))
    return compiled


def template_of(path: str) -> str:
    for pattern, template in _templates():
        if pattern.match(path):
            return template
    raise AssertionError(f"{path} is not a path of the AssetPay API")


def operation(method: str, template: str) -> dict[str, Any]:
    operations = spec()["paths"][template]
    assert method.lower() in operations, f"{method} {template} is not documented"
    return operations[method.lower()]


def _validate(schema: dict[str, Any], instance: Any, what: str) -> None:
    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, f"{what} does not match the OpenAPI schema: " + "; ".join(
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors[:5]
    )


def _query_value(raw: str, schema: dict[str, Any]) -> Any:
    """A query string value as the schema's type would read it (numbers as Decimal, never float)."""
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "integer" in types and re.fullmatch(r"-?\d+", raw):
        return int(raw)
    if "number" in types:
        try:
            return Decimal(raw)
        except ArithmeticError:
            return raw
    return raw


def check_request(request: httpx.Request) -> tuple[str, dict[str, Any]]:
    """Assert the request is one the OpenAPI document allows; returns (path template, operation)."""
    template = template_of(request.url.raw_path.split(b"?")[0].decode("ascii"))
    op = operation(request.method, template)

    request_id = request.headers.get("x-request-id")
    assert request_id, "every request carries an x-request-id"
    assert str(uuid.UUID(request_id)) == request_id, "x-request-id is a UUID"

    schemes = {name for requirement in op.get("security", []) for name in requirement}
    if schemes == {"ClientToken"}:
        assert request.headers.get("authorization", "").startswith("Bearer "), "a client route needs the token"
        assert "api-key" not in request.headers, "the API key never goes on a client route"
    elif "ApiKeyAuth" in schemes:
        assert request.headers.get("api-key"), "a merchant route needs the api-key header"
        assert "authorization" not in request.headers

    parameters = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "query"}
    for name, raw in request.url.params.multi_items():
        assert name in parameters, f"query parameter {name!r} is not documented for {request.method} {template}"
        schema = parameters[name]["schema"]
        _validate(schema, _query_value(raw, schema), f"query parameter {name}={raw!r}")

    body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body_schema is None:
        assert request.content == b"", f"{request.method} {template} takes no body"
    else:
        assert request.headers.get("content-type") == "application/json"
        body = json.loads(request.content, parse_float=Decimal)
        _validate(body_schema, body, f"body of {request.method} {template}")
    return template, op


def check_response(method: str, template: str, status: int, body: Any) -> None:
    """Assert a faked response has the documented shape."""
    responses = operation(method, template)["responses"]
    documented = responses.get(str(status))
    if documented is None:
        assert status >= 400, f"{status} is not documented for {method} {template}"
        # Every error status shares one envelope; take it from any documented error of the operation.
        documented = next(r for code, r in responses.items() if code.startswith(("4", "5")))
    schema = documented["content"]["application/json"]["schema"]
    _validate(schema, body, f"faked {status} answer of {method} {template}")
