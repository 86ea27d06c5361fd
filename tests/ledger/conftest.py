"""Fixtures of the ledger tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from assetpay_merchant.app import create_app
from assetpay_merchant.config import Settings


@pytest.fixture
async def bounded_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client on an app whose connection pool is production-sized (20 + 5), not the session app's 30 + 120.

    Racing a hundred requests at once must not need a hundred connections: the test server allows 100 in all and
    is shared. The race still happens in Postgres; requests beyond the pool wait for a connection, as in production.
    """
    application = create_app(settings.model_copy(update={"db_pool_size": 20, "db_max_overflow": 5}))
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend.test", timeout=60) as http:
            yield http
