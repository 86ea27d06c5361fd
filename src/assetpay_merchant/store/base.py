"""The declarative base and the column type of every amount."""

from __future__ import annotations

from sqlalchemy import MetaData, Numeric
from sqlalchemy.orm import DeclarativeBase

from assetpay_merchant.core.money import MONEY_PRECISION, MONEY_SCALE

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MoneyColumn = Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
