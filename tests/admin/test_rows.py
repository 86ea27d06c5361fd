"""One Python shape per table: the rows the ops reads return are their tables, column for column (as `TradeRow` is
the trades table), so a column added to a table cannot be silently left out of them."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pytest

from assetpay_merchant.store.delivery_log import StoredDelivery
from assetpay_merchant.store.entries import EntryRow
from assetpay_merchant.store.review import HistoryRow
from assetpay_merchant.store.tables import LedgerEntry, TradeHistory, WebhookDelivery

ROWS = [(HistoryRow, TradeHistory), (EntryRow, LedgerEntry), (StoredDelivery, WebhookDelivery)]


@pytest.mark.parametrize(("row", "table"), ROWS, ids=[row.__name__ for row, _ in ROWS])
def test_the_row_is_the_table_column_for_column(row: Any, table: Any) -> None:
    columns = list(table.__table__.columns)
    assert [field.name for field in dataclasses.fields(row)] == [column.name for column in columns]
    hints = typing.get_type_hints(row)
    for column in columns:
        hint = hints[column.name]
        optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
        nullable = column.nullable and not column.primary_key and column.server_default is None
        assert optional == nullable, f"{column.name}: dataclass {hint}, column nullable={column.nullable}"
