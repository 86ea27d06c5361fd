"""One Python shape per table: the money path's `TradeRow` is the ORM's `trades` table, column for column."""

import dataclasses
import types
import typing

from assetpay_merchant.store.tables import Trade
from assetpay_merchant.store.trades import COLUMNS, TradeRow


def test_trade_row_fields_are_the_table_columns_in_order():
    assert [field.name for field in dataclasses.fields(TradeRow)] == [c.name for c in Trade.__table__.columns]
    assert list(COLUMNS) == [c.name for c in Trade.__table__.columns]


def test_trade_row_is_optional_exactly_where_the_column_is_nullable():
    hints = typing.get_type_hints(TradeRow)
    for column in Trade.__table__.columns:
        hint = hints[column.name]
        optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
        nullable = column.nullable and not column.primary_key and column.server_default is None
        assert optional == nullable, f"{column.name}: dataclass {hint}, column nullable={column.nullable}"


def test_a_new_trade_row_has_a_value_for_every_column():
    row = TradeRow.new(type="deposit", status="initiated")
    assert all(getattr(row, name, dataclasses.MISSING) is not dataclasses.MISSING for name in COLUMNS)
