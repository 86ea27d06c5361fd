"""AssetPay faked for reconciliation: its trade lookups answer from a `Book` the test fills."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from assetpay_merchant.api.deps import Resources
from tests.assetpay_respx import AssetPay, mocked_assetpay
from tests.reconciliation.helpers import Book


@pytest.fixture
def assetpay(resources: Resources) -> Iterator[AssetPay]:
    with mocked_assetpay(resources) as fake:
        yield fake


@pytest.fixture
def book(assetpay: AssetPay) -> Book:
    known = Book()
    assetpay.lookup.reply(known)
    return known
