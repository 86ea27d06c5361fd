"""Money is `Decimal` in Python and `NUMERIC(24, 8)` in Postgres; it leaves our API as a decimal string.

No float ever touches an amount."""

from __future__ import annotations

from decimal import Decimal

MONEY_SCALE = 8
MONEY_PRECISION = 24
ZERO = Decimal(0)
CENT = Decimal("0.01")


def format_money(amount: Decimal) -> str:
    """`Decimal("60")` → `"60.00"`; sub-cent amounts keep their digits (`"0.035"`), never rounded away."""
    cents = amount.quantize(CENT)
    return f"{cents:f}" if cents == amount else f"{amount.normalize():f}"


def fits_money_column(amount: Decimal) -> bool:
    """True when Postgres can store the amount exactly (it would silently round a longer fraction)."""
    _, digits, exponent = amount.as_tuple()
    if not isinstance(exponent, int):  # NaN or infinity
        return False
    fraction_digits = max(0, -exponent)
    integer_digits = max(0, len(digits) + exponent)
    return fraction_digits <= MONEY_SCALE and integer_digits <= MONEY_PRECISION - MONEY_SCALE
