"""`create_app()`: the FastAPI application, its routes and its resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
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
from assetpay_merchant.sandbox import create_sandbox_app, sandbox_of
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


SANDBOX_PREFIX = "/sandbox"
SANDBOX_URL = f"http://backend.internal{SANDBOX_PREFIX}"


def _mount_sandbox(app: FastAPI) -> FastAPI:
    """The built-in AssetPay sandbox at /sandbox; its callbacks come back to this app in-process."""
    sandbox = create_sandbox_app(
        callback_url="http://backend.internal/webhooks/assetpay",
        callback_transport=httpx.ASGITransport(app=app),
    )
    app.mount(SANDBOX_PREFIX, sandbox)
    return sandbox


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
            # The sandbox is served by this very app: reach it in-process, on no port at all.
            transport=httpx.ASGITransport(app=app) if sandbox is not None else None,
        )
        gateway_settings = settings
        if sandbox is not None:
            gateway_settings = settings.model_copy(update={"assetpay_base_url": SANDBOX_URL})
            await sandbox_of(sandbox).start()
        app.state.resources = Resources(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            http=http,
            assetpay=AssetPayClient.from_settings(http, gateway_settings),
            market_cache=TTLCache(settings.market_cache_ttl_seconds),
            embedded=embedded,
        )
        log.info("ready (environment=%s, sandbox=%s)", settings.environment.value, settings.uses_sandbox)
        try:
            yield
        finally:
            if sandbox is not None:
                await sandbox_of(sandbox).stop()
            await http.aclose()
            await engine.dispose()
            if embedded is not None:
                embedded.stop()

    app = FastAPI(title="AssetPay merchant backend", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    sandbox = _mount_sandbox(app) if settings.uses_sandbox else None

    @app.exception_handler(AssetPayError)
    async def _assetpay_error(_: Request, exc: AssetPayError) -> JSONResponse:
        return error_response(from_assetpay(exc))

    for router in (
        webhooks_router.router,  # first: the busiest route is matched before any other
        users_api.router,
        catalog_api.router,
        ledger_api.router,
        trades_api.router,
        health.router,
    ):
        app.include_router(router)
    return app
