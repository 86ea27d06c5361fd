"""Shapes shared by the routes: money in and out, and the one error body every route answers with."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from assetpay_merchant.api.routing import MAX_DEPTH, MAX_EXPONENT, MAX_NUMBER_LENGTH
from assetpay_merchant.core.money import MONEY_PRECISION, MONEY_SCALE
from assetpay_merchant.core.vocabulary import MAX_WITHDRAW_PRICE

# -- money in requests --------------------------------------------------------------------------------------------
#
# An amount is sent as a decimal string ("10.75") or a JSON number (10.75, decoded as a Decimal, never a float). The
# OpenAPI document says exactly what is accepted, so a client generated from it, or a fuzzer, sends only amounts we
# take: a string matches the pattern (plain digits, at most 8 decimals: no sign, exponent, spaces, underscores or
# leading zeros), a number is a multiple of 0.00000001 within the bounds.

INTEGER_DIGITS = MONEY_PRECISION - MONEY_SCALE
"""What `NUMERIC(24, 8)` holds before the point."""
_STEP = Decimal(1).scaleb(-MONEY_SCALE)
_DECIMALS = rf"(?:\.[0-9]{{1,{MONEY_SCALE}}})?"
# 0.00000001 up to 0.99999999: k leading zeros, a non-zero digit, then at most 7 - k more digits.
_BELOW_ONE = "|".join(f"{'0' * k}[1-9][0-9]{{0,{MONEY_SCALE - 1 - k}}}" for k in range(MONEY_SCALE))


def _string_pattern(*, integer_digits: int, power_of_ten: bool, allow_zero: bool) -> str:
    """Plain decimal strings above zero (or at least zero) with at most `integer_digits` before the point, and when
    `power_of_ten` also 10**integer_digits itself (with only zero decimals)."""
    alternatives = [f"[1-9][0-9]{{0,{integer_digits - 1}}}{_DECIMALS}"]
    if power_of_ten:
        alternatives.append(f"1{'0' * integer_digits}(?:\\.0{{1,{MONEY_SCALE}}})?")
    alternatives.append(f"0{_DECIMALS}" if allow_zero else f"0\\.(?:{_BELOW_ONE})")
    return "^(?:" + "|".join(alternatives) + ")$"


def _strict_strings(pattern: str, decimals: int = MONEY_SCALE) -> BeforeValidator:
    """A string must match `pattern` before pydantic reads it as a Decimal (which would take " 1e2", "+1", "1_0")."""
    compiled = re.compile(pattern)

    def check(value: Any) -> Any:
        if isinstance(value, str) and not compiled.fullmatch(value):
            raise ValueError(f'must be a decimal string such as "10.75" (at most {decimals} decimals)')
        return value

    return BeforeValidator(check)


def _money_schema(pattern: str, *, maximum: int | None) -> dict[str, Any]:
    """Above zero, at most `maximum` (or below 10**16), on the 0.00000001 grid: a string or a number."""
    upper: dict[str, Any] = {"maximum": maximum} if maximum is not None else {"exclusiveMaximum": 10**INTEGER_DIGITS}
    number = {"type": "number", "exclusiveMinimum": 0, **upper, "multipleOf": float(_STEP)}
    return {"anyOf": [{"type": "string", "pattern": pattern, "examples": ["10.75"]}, number]}


_ABOVE_ZERO = _string_pattern(integer_digits=INTEGER_DIGITS, power_of_ten=False, allow_zero=False)
_AT_LEAST_ZERO = _string_pattern(integer_digits=INTEGER_DIGITS, power_of_ten=False, allow_zero=True)
_WITHDRAW_DIGITS = len(str(int(MAX_WITHDRAW_PRICE))) - 1
assert Decimal(10) ** _WITHDRAW_DIGITS == MAX_WITHDRAW_PRICE, "the pattern spells a power of ten"
_WITHDRAWABLE = _string_pattern(integer_digits=_WITHDRAW_DIGITS, power_of_ten=True, allow_zero=False)

MoneyIn = Annotated[
    Decimal,
    _strict_strings(_ABOVE_ZERO),
    Field(gt=0, max_digits=MONEY_PRECISION, decimal_places=MONEY_SCALE, allow_inf_nan=False),
    WithJsonSchema(_money_schema(_ABOVE_ZERO, maximum=None)),
]
"""An amount above zero that `NUMERIC(24, 8)` stores: a decimal string or a JSON number."""

WithdrawPriceIn = Annotated[
    Decimal,
    _strict_strings(_WITHDRAWABLE),
    Field(gt=0, le=MAX_WITHDRAW_PRICE, max_digits=MONEY_PRECISION, decimal_places=MONEY_SCALE, allow_inf_nan=False),
    WithJsonSchema(_money_schema(_WITHDRAWABLE, maximum=int(MAX_WITHDRAW_PRICE))),
]
"""A withdrawal price: above zero, at most MAX_WITHDRAW_PRICE."""

_WAGER_SCALE = 64
_WAGER = rf"^(?:0|[1-9][0-9]{{0,{INTEGER_DIGITS - 1}}})(?:\.[0-9]{{1,{_WAGER_SCALE}}})?$"

WagerIn = Annotated[
    Decimal,
    _strict_strings(_WAGER, _WAGER_SCALE),
    Field(ge=0, max_digits=INTEGER_DIGITS + _WAGER_SCALE, decimal_places=_WAGER_SCALE, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _WAGER, "examples": ["1250.50"]},
                {
                    "type": "number",
                    "minimum": 0,
                    "exclusiveMaximum": 10**INTEGER_DIGITS,
                    "multipleOf": float(Decimal(1).scaleb(-_WAGER_SCALE)),
                },
            ]
        }
    ),
]
"""A total of at least zero that is passed on, not stored as money: more decimals are welcome (a platform may sum
floats), up to 64."""

MoneyQuery = Annotated[
    Decimal,
    _strict_strings(_AT_LEAST_ZERO),
    Field(ge=0, max_digits=MONEY_PRECISION, decimal_places=MONEY_SCALE, allow_inf_nan=False),
    WithJsonSchema({"type": "string", "pattern": _AT_LEAST_ZERO, "examples": ["10.75"]}),
]
"""An amount of at least zero in a query string (always a string there)."""


# -- errors -------------------------------------------------------------------------------------------------------


def _no_null_defaults(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        if prop.get("default", ...) is None:
            del prop["default"]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=_no_null_defaults)

    key: str = Field(description="Stable machine-readable key, e.g. VALIDATION_FAILED or PRICE_CHANGED")
    message: str = Field(description="For people; may change at any time")
    fields: dict[str, str] | SkipJsonSchema[None] = Field(
        default=None, description="Each bad field (dotted path, `body` for the whole body) and what is wrong with it"
    )
    tradeId: str | SkipJsonSchema[None] = Field(
        default=None, description="Our trade, recorded before AssetPay refused it or its answer was lost"
    )
    assetpayRequestId: str | SkipJsonSchema[None] = Field(
        default=None, description="AssetPay's request id, when the error came from AssetPay"
    )


class ErrorBody(BaseModel):
    """Every error the API answers: `{"error": {"key": "...", "message": "...", "fields": {...}}}`."""

    error: ErrorDetail


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying, when known",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """A `responses` entry: our error body, with `Retry-After` documented where the answer may carry it."""
    response: dict[str, Any] = {"model": ErrorBody, "description": description}
    if retry_after:
        response["headers"] = RETRY_AFTER
    return response


Responses = dict[int | str, dict[str, Any]]

BODY_REFUSED = (
    f"`fields.body` when the body is not JSON we read: not UTF-8, malformed or truncated, nested deeper than "
    f"{MAX_DEPTH} levels, NaN or Infinity, a number longer than {MAX_NUMBER_LENGTH} characters or with an exponent "
    f"beyond ±{MAX_EXPONENT}; a string holding NUL or an unpaired surrogate is named by its own path"
)
VALIDATION = error(
    f"VALIDATION_FAILED: the request does not match this document; `fields` names each bad field ({BODY_REFUSED})"
)
DATABASE = error(
    "DATABASE_UNAVAILABLE (cannot be reached), DATABASE_BUSY (no free connection in time) or DATABASE_TIMEOUT "
    "(a statement or lock wait ran out of time): nothing was changed; retry after Retry-After",
    retry_after=True,
)
UPSTREAM: Responses = {
    404: error("USER_NOT_FOUND: the platform has not registered the user; NOT_FOUND: AssetPay does not know it"),
    409: error(
        "AssetPay refused: PRICE_CHANGED, ITEMS_UNAVAILABLE, INVENTORY_PRIVATE, USER_NOT_TRADEABLE, "
        "DEPOSIT_IN_PROGRESS, WITHDRAW_IN_PROGRESS, DUPLICATE_TRADE, TRADE_REFUSED",
        retry_after=True,
    ),
    422: error(
        "VALIDATION_FAILED (`fields`): the request does not match this document, or AssetPay refused it; "
        f"INVALID_TRADE_URL: the profile's trade URL. {BODY_REFUSED}"
    ),
    429: error("RATE_LIMITED or TOO_MANY_ACTIVE_TRADES", retry_after=True),
    502: error(
        "UPSTREAM_ERROR, UPSTREAM_UNAVAILABLE, UPSTREAM_INVALID_RESPONSE, UPSTREAM_AUTH_FAILED: AssetPay failed",
        retry_after=True,
    ),
    503: error(
        "DATABASE_UNAVAILABLE, or AssetPay cannot serve it: STEAM_UNAVAILABLE, NO_BOTS_AVAILABLE, SERVICE_DEGRADED, "
        "DEPOSITS_PAUSED, WITHDRAWALS_PAUSED, WITHDRAWALS_UNAVAILABLE, MAINTENANCE, ASSETPAY_NOT_CONFIGURED",
        retry_after=True,
    ),
    504: error("UPSTREAM_TIMEOUT: AssetPay did not answer in time", retry_after=True),
}
"""What a route that calls AssetPay may answer besides its own errors (api/errors.py maps AssetPay's keys)."""

NO_BODY = {
    "required": False,
    "description": "This route takes no body: send none, or `{}`",
    "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
}
"""`openapi_extra={"requestBody": NO_BODY}` for a POST that takes no body (api/routing.py refuses any other)."""
