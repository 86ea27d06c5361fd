"""Money is `Decimal` in Python and `NUMERIC(24, 8)` in Postgres; it leaves our API as a decimal string."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import PlainSerializer
from sqlalchemy import Numeric

MONEY_SCALE = 8
MONEY_PRECISION = 24
ZERO = Decimal(0)
CENT = Decimal("0.01")

MoneyColumn = Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True)


def format_money(amount: Decimal) -> str:
    """`Decimal("60")` → `"60.00"`; sub-cent amounts keep their digits (`"0.035"`), never rounded away."""
    if amount == amount.quantize(CENT):
        return f"{amount.quantize(CENT):f}"
    return f"{amount.normalize():f}"


def fits_money_column(amount: Decimal) -> bool:
    """True when Postgres can store the amount exactly (it would silently round a longer fraction)."""
    _, digits, exponent = amount.as_tuple()
    if not isinstance(exponent, int):  # NaN or infinity
        return False
    fraction_digits = max(0, -exponent)
    integer_digits = max(0, len(digits) + exponent)
    return fraction_digits <= MONEY_SCALE and integer_digits <= MONEY_PRECISION - MONEY_SCALE


def _serialise(amount: Any) -> str:
    return format_money(Decimal(amount))


Money = Annotated[Decimal, PlainSerializer(_serialise, return_type=str, when_used="always")]
"""A Decimal that pydantic renders as a decimal string in every JSON answer."""
