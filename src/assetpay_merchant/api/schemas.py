"""Shapes shared by the routes' answers."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import PlainSerializer

from assetpay_merchant.core.money import format_money


def _serialise(amount: Any) -> str:
    return format_money(Decimal(amount))


Money = Annotated[Decimal, PlainSerializer(_serialise, return_type=str, when_used="always")]
"""A Decimal that pydantic renders as a decimal string in every JSON answer."""
