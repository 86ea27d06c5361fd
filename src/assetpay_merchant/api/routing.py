"""JSON request bodies, decoded strictly and exactly, before FastAPI sees them.

FastAPI reads a body with `request.json()`; this route class decodes it first, so that:

- a number never passes through a float (`parse_float=Decimal`);
- a body that is not a JSON text we accept is 422 VALIDATION_FAILED with `fields: {"body": <why>}`, like any other
  invalid request, never a 400 or a 500: not UTF-8 (UTF-16 and UTF-32 included; a UTF-8 byte order mark is
  ignored), malformed or truncated, `NaN`/`Infinity`, nested deeper than MAX_DEPTH, a number no field could take
  (too many digits, or an exponent that would make converting it a denial of service); a string holding NUL or an
  unpaired surrogate (neither PostgreSQL nor AssetPay can take them) is named by its path (`items.0.itemId`);
- a POST without a body model (client-token, cancel) refuses any body but none or `{}`, so nothing it does happens
  on the say-so of a body it ignores.

The webhook route does not use this class: its body is verified byte for byte before it is decoded.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any, NoReturn

from fastapi import Request, Response
from fastapi.routing import APIRoute

from assetpay_merchant.core.errors import ValidationFailed

MAX_DEPTH = 32
"""Nesting levels of arrays and objects; our deepest body (a deposit's items) has three."""
MAX_NUMBER_LENGTH = 64
"""Characters of one number literal; no field takes more than 24 digits."""
MAX_EXPONENT = 64
"""Largest exponent (either way) of a number literal: `1e9999999` would take seconds to turn into an integer."""

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class _Refused(ValueError):
    def __init__(self, reason: str, where: tuple[str | int, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = ".".join(str(step) for step in where) or "body"


def _refuse(reason: str, field: str = "body") -> NoReturn:
    message = f"The request body is not acceptable JSON: {reason}" if field == "body" else f"Invalid request: {field}"
    raise ValidationFailed(message, fields={field: reason})


def _number(literal: str) -> Decimal:
    if len(literal) > MAX_NUMBER_LENGTH:
        raise _Refused(f"a number is longer than {MAX_NUMBER_LENGTH} characters")
    value = Decimal(literal)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and abs(exponent) > MAX_EXPONENT:
        raise _Refused(f"a number's exponent is beyond ±{MAX_EXPONENT}")
    return value


def _integer(literal: str) -> int:
    if len(literal) > MAX_NUMBER_LENGTH:
        raise _Refused(f"a number is longer than {MAX_NUMBER_LENGTH} characters")
    return int(literal)


def _constant(name: str) -> NoReturn:
    raise _Refused(f"{name} is not a JSON number")


def _check_string(text: str, where: tuple[str | int, ...]) -> None:
    if "\x00" in text:
        raise _Refused("must not hold NUL (\\u0000)", where)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused("must not hold an unpaired surrogate (\\ud800-\\udfff)", where) from None


def _check_tree(value: Any) -> None:
    """Depth and strings, walked without recursion (a deep tree must not exhaust the stack here either). A string
    at fault is named by its path (`items.0.itemId`); a key at fault by its object's."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict | list) and len(where) >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", where)
        if isinstance(node, dict):
            for key, item in node.items():
                _check_string(key, where)
                stack.append((item, (*where, key)))
        elif isinstance(node, list):
            stack.extend((item, (*where, index)) for index, item in enumerate(node))
        elif isinstance(node, str):
            _check_string(node, where)


def decode_json(raw: bytes) -> Any:
    """The body as JSON (numbers as Decimal or int), or ValidationFailed naming what is wrong with it."""
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        _refuse("it is not UTF-8")
    try:
        value = json.loads(text, parse_float=_number, parse_int=_integer, parse_constant=_constant)
        _check_tree(value)
    except _Refused as refused:
        _refuse(refused.reason, refused.field)
    except RecursionError:
        _refuse(f"nested deeper than {MAX_DEPTH} levels")
    except json.JSONDecodeError as exc:
        _refuse(f"{exc.msg} at line {exc.lineno} column {exc.colno}")
    except ValueError as exc:  # what else the decoder refuses (e.g. an integer past Python's digit limit)
        _refuse(str(exc).split(";")[0])
    return value


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI would read the body as JSON (the same test as its own)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


class _ExactJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = decode_json(await self.body())
        return self._json


class ExactJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None
        refuses_body = not takes_body and bool((self.methods or set()) & _BODY_METHODS)

        async def exact_json_handler(request: Request) -> Response:
            exact = _ExactJSONRequest(request.scope, request.receive)
            if takes_body and _is_json(exact.headers.get("content-type")):
                raw = await exact.body()
                if raw:  # an empty body is FastAPI's to answer ("Field required")
                    exact._json = decode_json(raw)
            elif refuses_body:
                raw = await exact.body()
                if raw.strip() and decode_json(raw) != {}:
                    reason = "this route takes no body (send none, or {})"
                    raise ValidationFailed(f"The request body is not acceptable: {reason}", fields={"body": reason})
            return await handler(exact)

        return exact_json_handler
