"""`create_app()`: the FastAPI application, its routes and its resources (built in `lifespan`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta

import httpx
import jwt
from fastapi import FastAPI
from jwt.algorithms import get_default_algorithms

from assetpay_merchant.api import admin, catalog, health, ledger, trades, users, verification, webhooks, ws
from assetpay_merchant.api.auth import TokenVerifier
from assetpay_merchant.api.context import RequestIds
from assetpay_merchant.api.cors import BrowserOrigins
from assetpay_merchant.api.deps import Resources, WebSettings
from assetpay_merchant.api.errors import install_error_handlers
from assetpay_merchant.config import ConfigurationError, Settings
from assetpay_merchant.gateway import AssetPayClient, create_http_client
from assetpay_merchant.gateway.client import CallPolicy, RouteClass
from assetpay_merchant.gateway.transport import BoundedTransport
from assetpay_merchant.observability import redact_server_logs, redact_values
from assetpay_merchant.services import monitoring, reconciliation
from assetpay_merchant.services.cache import TTLCache
from assetpay_merchant.services.catalog import Catalog
from assetpay_merchant.services.live import Hub, purge_periodically
from assetpay_merchant.services.ratelimits import RateLimits, Tier, UserScope, merchant_rates, user_rates
from assetpay_merchant.store.database import Database, StatementTimeouts, create_engine
from assetpay_merchant.store.notifications import Listener

log = logging.getLogger(__name__)

DESCRIPTION = """
The merchant's backend for AssetPay skin trading: balances, trades and the ledger for the frontend, and the
callback endpoint for AssetPay. End users authenticate with `Authorization: Bearer <JWT>` (signed by the merchant
platform, `sub` = user id, `exp` required); the platform itself with `X-Admin-Key`. Money is a decimal string
(`"60.00"`). Errors are `{"error": {"key": "...", "message": "...", "fields": {...}}}`.
"""

LifespanExtension = Callable[[FastAPI], AbstractAsyncContextManager[None]]
KEEPALIVE_CONNECTIONS = 20  # idle connections kept open to AssetPay


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


def http_client(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The shared HTTP client for AssetPay (its owner closes it). Every exchange is bounded in time and size
    (ASSETPAY_REQUEST_DEADLINE_SECONDS, ASSETPAY_MAX_RESPONSE_BYTES), whatever AssetPay or a proxy does."""
    if transport is None:  # httpx builds its pool from `limits` only when it builds the transport itself
        keepalive = min(KEEPALIVE_CONNECTIONS, settings.assetpay_max_connections)
        limits = httpx.Limits(max_connections=settings.assetpay_max_connections, max_keepalive_connections=keepalive)
        transport = httpx.AsyncHTTPTransport(limits=limits)
    return create_http_client(
        connect_timeout=settings.assetpay_connect_timeout_seconds,
        read_timeout=settings.assetpay_read_timeout_seconds,
        max_connections=settings.assetpay_max_connections,
        transport=BoundedTransport(
            transport,
            deadline=settings.assetpay_request_deadline_seconds,
            max_bytes=settings.assetpay_max_response_bytes,
        ),
    )


def assetpay_client(settings: Settings, http: httpx.AsyncClient, policy: CallPolicy | None = None) -> AssetPayClient:
    """The AssetPay client over `http`, with the merchant's credentials (and `policy`: the shared rate budget)."""
    return AssetPayClient(
        http,
        base_url=settings.assetpay_base_url,
        api_key=settings.assetpay_api_key,
        api_secret=settings.assetpay_api_secret,
        merchant_id=settings.assetpay_merchant_id,
        policy=policy,
    )


def rate_limits(settings: Settings, database: Database) -> RateLimits:
    """The merchant's AssetPay budget per route class and the users' allowances, from the tier and the overrides."""
    tier = Tier(settings.assetpay_merchant_tier)
    merchant = {
        RouteClass.INVENTORY: settings.assetpay_rate_inventory_per_minute,
        RouteClass.MARKET: settings.assetpay_rate_market_per_minute,
        RouteClass.DEPOSIT: settings.assetpay_rate_deposit_per_minute,
        RouteClass.WITHDRAW: settings.assetpay_rate_withdraw_per_minute,
        RouteClass.LOOKUP: settings.assetpay_rate_lookup_per_minute,
        RouteClass.OTHER: settings.assetpay_rate_other_per_minute,
    }
    users = {
        UserScope.INVENTORY: settings.user_rate_inventory_per_minute,
        UserScope.MARKET: settings.user_rate_market_per_minute,
        UserScope.TRADES: settings.user_rate_trades_per_minute,
    }
    return RateLimits(database, merchant=merchant_rates(tier, merchant), users=user_rates(tier, users))


def reconcile_rules(settings: Settings, *, older_than: float | None = None) -> reconciliation.Rules:
    """Which trades a reconciliation pass looks at (`older_than` seconds overrides RECONCILE_AFTER_SECONDS)."""
    return reconciliation.Rules(
        quiet_for=timedelta(seconds=settings.reconcile_after_seconds if older_than is None else older_than),
        unknown_after=timedelta(seconds=settings.reconcile_unknown_after_seconds),
        max_trades=settings.reconcile_max_trades,
    )


@asynccontextmanager
async def reconciling(settings: Settings, database: Database, assetpay: AssetPayClient) -> AsyncIterator[None]:
    """The background reconciliation job, every RECONCILE_INTERVAL_SECONDS (0: none), stopped on the way out."""
    interval = settings.reconcile_interval_seconds
    if interval <= 0:
        yield
        return
    job = asyncio.create_task(
        reconciliation.run_periodically(database, assetpay, reconcile_rules(settings), interval=interval),
        name="reconciliation",
    )
    try:
        yield
    finally:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job


@asynccontextmanager
async def monitoring_jobs(settings: Settings, database: Database) -> AsyncIterator[None]:
    """The periodic ledger check (LEDGER_CHECK_INTERVAL_SECONDS) and gauge refresh (METRICS_REFRESH_SECONDS),
    each off at 0, stopped on the way out."""
    jobs = []
    if settings.ledger_check_interval_seconds > 0:
        interval = settings.ledger_check_interval_seconds
        jobs.append(asyncio.create_task(monitoring.check_ledger_periodically(database, interval=interval)))
    if settings.metrics_refresh_seconds > 0:
        interval = settings.metrics_refresh_seconds
        jobs.append(asyncio.create_task(monitoring.refresh_gauges_periodically(database, interval=interval)))
    try:
        yield
    finally:
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)


@asynccontextmanager
async def feeding(
    app: FastAPI, settings: Settings, database: Database, assetpay: AssetPayClient, catalog: Catalog
) -> AsyncIterator[None]:
    """AssetPay's realtime feed while ASSETPAY_FEED is on (`app.state.feed`, else None), stopped on the way out."""
    app.state.feed = None
    if not settings.assetpay_feed:
        yield
        return
    api_key = settings.assetpay_api_key
    if api_key is None or not api_key.get_secret_value().strip():
        raise ConfigurationError("ASSETPAY_FEED needs ASSETPAY_API_KEY")
    # Imported only when on: the Socket.IO client (aiohttp included) costs every process ~15 MB.
    from assetpay_merchant.gateway.feed_client import RealtimeFeed
    from assetpay_merchant.services.feed import FeedConsumer, TradeNudges

    nudges = TradeNudges(
        database,
        assetpay,
        delay=settings.assetpay_feed_nudge_delay_seconds,
        concurrency=settings.assetpay_feed_nudge_concurrency,
    )
    feed = RealtimeFeed(
        settings.assetpay_feed_url or settings.assetpay_base_url,
        api_key,
        FeedConsumer(catalog, nudges),
        reconnect_delay=settings.assetpay_feed_reconnect_seconds,
        max_reconnect_delay=max(settings.assetpay_feed_reconnect_max_seconds, settings.assetpay_feed_reconnect_seconds),
        connect_timeout=settings.assetpay_feed_connect_timeout_seconds,
    )
    nudges.start()
    feed.start()
    app.state.feed = feed
    try:
        yield
    finally:
        await feed.stop()
        await nudges.stop()


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
    redact_server_logs()
    redact_values(settings.secret_values())  # in every worker: whatever prints one, the logs show [redacted]
    if not development:
        settings.require_safe()
    database_url = settings.require_database_url()
    verify_user_token = token_verifier(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(
            create_engine(
                database_url,
                transaction_pooling=settings.transaction_pooling,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_max_overflow,
                pool_timeout=settings.db_pool_timeout_seconds,
                timeouts=StatementTimeouts(
                    statement=settings.db_statement_timeout_seconds, lock=settings.db_lock_timeout_seconds
                ),
            ),
            session_url=settings.session_database_url,
        )
        http = http_client(settings, assetpay_transport)
        limits = rate_limits(settings, database)
        assetpay = assetpay_client(settings, http, limits)
        hub = Hub(database, queue_size=settings.ws_queue_size, max_per_user=settings.ws_max_connections_per_user)
        listener = Listener(
            settings.listen_database_url or database_url, on_notify=hub.notify, on_connected=hub.catch_up
        )
        listener.start()
        purge = asyncio.create_task(
            purge_periodically(database, retention=timedelta(hours=settings.event_retention_hours)), name="purge"
        )
        catalog = Catalog(database, assetpay, TTLCache(settings.market_cache_ttl_seconds), limits=limits)
        purge_buckets = asyncio.create_task(limits.purge_periodically(), name="purge-rate-buckets")
        app.state.resources = Resources(
            settings=web_settings(settings),
            database=database,
            assetpay=assetpay,
            catalog=catalog,
            hub=hub,
            verify_user_token=verify_user_token,
            rate_limits=limits,
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                if lifespan_extension is not None:
                    await stack.enter_async_context(lifespan_extension(app))
                # Started once everything else is up, stopped before anything else goes down.
                await stack.enter_async_context(reconciling(settings, database, assetpay))
                await stack.enter_async_context(monitoring_jobs(settings, database))
                await stack.enter_async_context(feeding(app, settings, database, assetpay, catalog))
                log.info("ready" if lifespan_extension is None else "ready (development)")
                # What start-up built lives as long as the process: keep it out of every full garbage collection
                # (measured: 240-470 ms pauses over ~300,000 objects with 500 live clients, stalling callbacks).
                gc.collect()
                gc.freeze()
                yield
        finally:
            purge.cancel()
            purge_buckets.cancel()
            await asyncio.gather(purge, purge_buckets, return_exceptions=True)
            await listener.stop()
            await hub.close()
            await http.aclose()
            await database.dispose()

    app = FastAPI(title="AssetPay merchant backend", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    # Always installed: with CORS_ORIGINS empty it still refuses WebSocket handshakes from other sites' pages.
    app.add_middleware(BrowserOrigins, origins=settings.cors_origins, max_age=settings.cors_max_age_seconds)
    app.add_middleware(RequestIds)  # outermost: even a refused handshake is answered with its request id
    # webhooks first: the busiest route
    for module in (webhooks, users, catalog, verification, ledger, trades, admin, ws, health):
        app.include_router(module.router)
    return app
