"""`create_app()`: the FastAPI application, its routes and its resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from assetpay_merchant import health
from assetpay_merchant.catalog import api as catalog_api
from assetpay_merchant.catalog.cache import TTLCache
from assetpay_merchant.config import Settings
from assetpay_merchant.db import create_engine, resolve_database_url, session_factory
from assetpay_merchant.deps import Resources
from assetpay_merchant.errors import error_response, install_error_handlers
from assetpay_merchant.gateway import AssetPayClient, AssetPayError, create_http_client
from assetpay_merchant.ledger import api as ledger_api
from assetpay_merchant.migrate import upgrade_async
from assetpay_merchant.trades import api as trades_api
from assetpay_merchant.upstream import from_assetpay
from assetpay_merchant.users import api as users_api
from assetpay_merchant.webhooks import router as webhooks_router

log = logging.getLogger(__name__)

DESCRIPTION = """
The merchant's backend for AssetPay skin trading: balances, trades and the ledger for the frontend, and the
callback endpoint for AssetPay. End users authenticate with `Authorization: Bearer <JWT>` (HS256, signed by the
merchant platform, `sub` = user id); the platform itself with `X-Admin-Key`. Money is a decimal string (`"60.00"`).
Errors are `{"error": {"key": "...", "message": "...", "fields": {...}}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database_url, embedded = resolve_database_url(settings)
        if embedded is not None:
            await upgrade_async(database_url)  # we own the embedded database, so we keep it at head
        engine = create_engine(database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
        http = create_http_client(
            connect_timeout=settings.assetpay_connect_timeout_seconds,
            read_timeout=settings.assetpay_read_timeout_seconds,
            max_connections=settings.assetpay_max_connections,
        )
        app.state.resources = Resources(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            http=http,
            assetpay=AssetPayClient.from_settings(http, settings),
            market_cache=TTLCache(settings.market_cache_ttl_seconds),
            embedded=embedded,
        )
        log.info("ready (environment=%s, sandbox=%s)", settings.environment.value, settings.uses_sandbox)
        try:
            yield
        finally:
            await http.aclose()
            await engine.dispose()
            if embedded is not None:
                embedded.stop()

    app = FastAPI(title="AssetPay merchant backend", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)

    @app.exception_handler(AssetPayError)
    async def _assetpay_error(_: Request, exc: AssetPayError) -> JSONResponse:
        return error_response(from_assetpay(exc))

    for router in (
        users_api.router,
        catalog_api.router,
        ledger_api.router,
        trades_api.router,
        webhooks_router.router,
        health.router,
    ):
        app.include_router(router)
    return app
