"""`create_app()`: the FastAPI application, its routes and its resources (built in `lifespan`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import jwt
from fastapi import FastAPI
from jwt.algorithms import get_default_algorithms

from assetpay_merchant.api import catalog, health, ledger, trades, users, webhooks
from assetpay_merchant.api.auth import TokenVerifier
from assetpay_merchant.api.deps import Resources, WebSettings
from assetpay_merchant.api.errors import install_error_handlers
from assetpay_merchant.config import ConfigurationError, Settings
from assetpay_merchant.gateway import AssetPayClient, create_http_client
from assetpay_merchant.services.cache import TTLCache
from assetpay_merchant.services.catalog import Catalog
from assetpay_merchant.store.database import Database, create_engine

log = logging.getLogger(__name__)

DESCRIPTION = """
The merchant's backend for AssetPay skin trading: balances, trades and the ledger for the frontend, and the
callback endpoint for AssetPay. End users authenticate with `Authorization: Bearer <JWT>` (signed by the merchant
platform, `sub` = user id, `exp` required); the platform itself with `X-Admin-Key`. Money is a decimal string
(`"60.00"`). Errors are `{"error": {"key": "...", "message": "...", "fields": {...}}}`.
"""

LifespanExtension = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def token_verifier(settings: Settings) -> TokenVerifier:
    public_key = settings.auth_jwt_public_key.get_secret_value() if settings.auth_jwt_public_key else ""
    if public_key.strip():
        key: str | bytes = public_key.replace("\\n", "\n")  # a PEM may come as one line with literal \n
    else:
        assert settings.auth_jwt_secret is not None
        key = settings.auth_jwt_secret.get_secret_value().encode()
    try:  # a key the algorithm cannot use must stop the start, not fail every request
        get_default_algorithms()[settings.auth_jwt_algorithm].prepare_key(key)
    except (KeyError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
        variable = "AUTH_JWT_PUBLIC_KEY" if public_key.strip() else "AUTH_JWT_SECRET"
        raise ConfigurationError(f"{variable} is not a usable {settings.auth_jwt_algorithm} key: {exc}") from None
    return TokenVerifier(
        key, [settings.auth_jwt_algorithm], audience=settings.auth_jwt_audience, issuer=settings.auth_jwt_issuer
    )


def web_settings(settings: Settings) -> WebSettings:
    assert settings.admin_api_key is not None
    return WebSettings(
        admin_api_key=settings.admin_api_key.get_secret_value().encode(),
        webhook_secrets=settings.webhook_secrets,
        webhook_tolerance_seconds=settings.webhook_tolerance_seconds,
        currency=settings.currency,
        max_webhook_body_bytes=settings.max_webhook_body_bytes,
    )


def create_app(
    settings: Settings | None = None,
    *,
    development: bool = False,
    assetpay_transport: httpx.AsyncBaseTransport | None = None,
    lifespan_extension: LifespanExtension | None = None,
) -> FastAPI:
    """The service. It refuses to be built with settings anyone could exploit (`ConfigurationError` names the
    variable), unless `development` says these are `dev`'s own defaults. `assetpay_transport` and
    `lifespan_extension` let `dev` put its in-process sandbox where AssetPay would be."""
    settings = settings or Settings()
    if not development:
        settings.require_safe()
    database_url = settings.require_database_url()
    verify_user_token = token_verifier(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(
            create_engine(
                database_url,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_max_overflow,
                pool_timeout=settings.db_pool_timeout_seconds,
            )
        )
        http = create_http_client(
            connect_timeout=settings.assetpay_connect_timeout_seconds,
            read_timeout=settings.assetpay_read_timeout_seconds,
            max_connections=settings.assetpay_max_connections,
            transport=assetpay_transport,
        )
        assetpay = AssetPayClient(
            http,
            base_url=settings.assetpay_base_url,
            api_key=settings.assetpay_api_key,
            api_secret=settings.assetpay_api_secret,
            merchant_id=settings.assetpay_merchant_id,
        )
        app.state.resources = Resources(
            settings=web_settings(settings),
            database=database,
            assetpay=assetpay,
            catalog=Catalog(database, assetpay, TTLCache(settings.market_cache_ttl_seconds)),
            verify_user_token=verify_user_token,
        )
        try:
            if lifespan_extension is None:
                log.info("ready")
                yield
            else:
                async with lifespan_extension(app):
                    log.info("ready (development)")
                    yield
        finally:
            await http.aclose()
            await database.dispose()

    app = FastAPI(title="AssetPay merchant backend", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    for module in (webhooks, users, catalog, ledger, trades, health):  # webhooks first: the busiest route
        app.include_router(module.router)
    return app
