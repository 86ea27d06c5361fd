"""`assetpay-merchant dev`: the backend on development defaults, with this sandbox standing in for AssetPay.

Everything that makes development easy lives here and only here: known secrets, the sandbox's credentials, the
sandbox mounted at `/sandbox` with its control routes. `serve` never imports this package, and refuses every one
of these secrets.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from assetpay_merchant.app import create_app
from assetpay_merchant.config import ConfigurationError, Settings
from assetpay_sandbox.app import create_sandbox_app, sandbox_of
from assetpay_sandbox.credentials import SANDBOX_API_KEY, SANDBOX_API_SECRET, SANDBOX_MERCHANT_ID
from assetpay_sandbox.storefront.app import create_storefront_app

DEV_AUTH_JWT_SECRET = "dev-auth-jwt-secret-change-me-before-production"  # noqa: S105
DEV_ADMIN_API_KEY = "dev-admin-key-change-me"
SANDBOX_PREFIX = "/sandbox"
DEMO_PREFIX = "/demo"  # the reference storefront (assetpay_sandbox/storefront), with the sandbox only
_INTERNAL = "http://backend.internal"
# Quick enough for a person on the storefront to watch a CS2 deposit reach hold, then completed.
DEV_STEP_SECONDS = 3.0
DEV_HOLD_SECONDS = 20.0
SANDBOX_STATE_MEMORY = "memory"
_SANDBOX_HOST = "http://sandbox.internal"


def uses_sandbox(settings: Settings) -> bool:
    """No AssetPay credentials configured: the sandbox stands in for AssetPay."""
    return settings.assetpay_api_secret is None or not settings.assetpay_api_secret.get_secret_value()


def dev_settings(settings: Settings) -> Settings:
    """The configured settings, with development defaults wherever a secret is missing."""
    defaults: dict[str, Any] = {}
    if settings.auth_jwt_secret is None and settings.auth_jwt_public_key is None:
        defaults["auth_jwt_secret"] = SecretStr(DEV_AUTH_JWT_SECRET)
    if settings.admin_api_key is None:
        defaults["admin_api_key"] = SecretStr(DEV_ADMIN_API_KEY)
    if uses_sandbox(settings):
        defaults |= {
            "assetpay_base_url": _SANDBOX_HOST,  # reached in-process, see create_dev_app
            "assetpay_api_key": SecretStr(SANDBOX_API_KEY),
            "assetpay_api_secret": SecretStr(SANDBOX_API_SECRET),
            "assetpay_merchant_id": SANDBOX_MERCHANT_ID,
        }
    return settings.model_copy(update=defaults)


def _seconds(environ: Mapping[str, str], name: str, default: float, *, positive: bool) -> float:
    raw = environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = math.nan
    if not (value > 0 if positive else value >= 0) or math.isinf(value):  # nan fails both
        raise ConfigurationError(f"{name} must be a number of seconds, {'more than 0' if positive else '0 or more'}")
    return value


def sandbox_clock(environ: Mapping[str, str] = os.environ) -> tuple[float, float]:
    """(step, hold) in seconds: SANDBOX_STEP_SECONDS / SANDBOX_HOLD_SECONDS, else dev's defaults."""
    return (
        _seconds(environ, "SANDBOX_STEP_SECONDS", DEV_STEP_SECONDS, positive=True),
        _seconds(environ, "SANDBOX_HOLD_SECONDS", DEV_HOLD_SECONDS, positive=False),
    )


def sandbox_database(environ: Mapping[str, str] = os.environ) -> str | None:
    """Where the sandbox keeps its state: SANDBOX_DATABASE_URL (`dev` sets it to the dev database), or nowhere
    when unset or `memory` (an app made directly, as in tests, starts afresh every time)."""
    url = environ.get("SANDBOX_DATABASE_URL", "").strip()
    return None if url in ("", SANDBOX_STATE_MEMORY) else url


class _Deferred:
    """An ASGI app that is named before it exists: the sandbox's callbacks go to the backend built after it."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def create_dev_app(settings: Settings | None = None) -> FastAPI:
    """The backend for a laptop: with no AssetPay credentials, the sandbox at /sandbox plays AssetPay, in-process
    (the client reaches it on no port at all, and its signed callbacks come back through the real webhook)."""
    configured = settings or Settings()
    sandboxed = uses_sandbox(configured)
    settings = dev_settings(configured)
    if not sandboxed:
        return create_app(settings, development=True)

    backend = _Deferred()
    step_seconds, hold_seconds = sandbox_clock()
    sandbox = create_sandbox_app(
        api_key=SANDBOX_API_KEY,
        api_secret=SANDBOX_API_SECRET,
        merchant_id=SANDBOX_MERCHANT_ID,
        callback_url=f"{_INTERNAL}/webhooks/assetpay",
        callback_transport=httpx.ASGITransport(app=backend),
        step_seconds=step_seconds,
        hold_seconds=hold_seconds,
        database_url=sandbox_database(),
    )

    @asynccontextmanager
    async def run_sandbox(_: FastAPI) -> AsyncIterator[None]:
        await sandbox_of(sandbox).start()
        try:
            yield
        finally:
            await sandbox_of(sandbox).stop()

    app = create_app(
        settings,
        development=True,
        assetpay_transport=httpx.ASGITransport(app=sandbox),
        lifespan_extension=run_sandbox,
    )
    app.mount(SANDBOX_PREFIX, sandbox)
    app.mount(DEMO_PREFIX, create_storefront_app(app, settings))
    backend.app = app
    return app


DEMO_USER = "demo-user"
DEMO_PROFILE = (
    '{"steamId": "76561198000000001", '
    '"tradeUrl": "https://steamcommunity.com/tradeoffer/new/?partner=39734273&token=AbCdEf12"}'
)


def run(settings: Settings, *, host: str, port: int) -> int:
    """`assetpay-merchant dev`: the configured database (else an embedded one under DATA_DIR), migrated, and the
    backend with the sandbox; prints what a developer needs to start."""
    import jwt

    from assetpay_merchant.cli import serve
    from assetpay_merchant.store.embedded import EmbeddedPostgres
    from assetpay_merchant.store.migrations import upgrade

    url = settings.database_url or EmbeddedPostgres(settings.data_dir / "postgres", keep_running=False).start()
    upgrade(url)
    os.environ["DATABASE_URL"] = url  # the server process builds its app from the environment
    # The sandbox's trades survive a restart too, in the same database (its own schema).
    os.environ.setdefault("SANDBOX_DATABASE_URL", url)
    step_seconds, hold_seconds = sandbox_clock()  # refuse bad values here, not in the server's factory
    effective = dev_settings(settings)
    assert effective.admin_api_key is not None
    admin_key = effective.admin_api_key.get_secret_value()
    base = f"http://{host}:{port}"
    assetpay = f"sandbox ({base}{SANDBOX_PREFIX}/_sandbox)" if uses_sandbox(settings) else effective.assetpay_base_url
    lines = [
        f"AssetPay merchant backend (development) on {base}",
        f"  API docs          {base}/docs",
        *([f"  demo storefront   {base}{DEMO_PREFIX}/"] if uses_sandbox(settings) else []),
        f"  AssetPay          {assetpay}",
        *(
            [f"  sandbox clock     a step every {step_seconds:g} s, CS2 hold {hold_seconds:g} s"]
            if uses_sandbox(settings)
            else []
        ),
        f"  X-Admin-Key       {admin_key}",
    ]
    if effective.auth_jwt_secret is not None:
        token = jwt.encode(
            {"sub": DEMO_USER, "exp": int(time.time()) + 7 * 86400},
            effective.auth_jwt_secret.get_secret_value(),
            algorithm="HS256",
        )
        lines.append(f"  demo user JWT     {token}")
    lines.append(
        f"  register it:      curl -X PUT {base}/v1/users/{DEMO_USER} -H 'X-Admin-Key: {admin_key}' "
        f"-H 'Content-Type: application/json' -d '{DEMO_PROFILE}'"
    )
    print("\n" + "\n".join(lines) + "\n", flush=True)
    serve("assetpay_sandbox.dev:create_dev_app", host=host, port=port, workers=1, log_level=settings.log_level)
    return 0
