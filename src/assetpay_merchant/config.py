"""Settings, read from the environment (and a `.env` file) with pydantic-settings.

The variable names of the public surface are fixed; everything else has a sensible default. Secure by default:
the service refuses to start with a missing, empty, short or well-known secret and names the variable to set.
Development defaults do not live here at all: `assetpay-merchant dev` brings its own.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PRODUCTION_ASSETPAY_URL = "https://api.assetpay.gg"
MIN_JWT_SECRET_BYTES = 32
ASYMMETRIC_JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

# Published values (documentation, SDK test vectors, placeholders, the sandbox's and old development defaults):
# anyone can sign with them, so they are refused as secrets.
WELL_KNOWN_SECRETS = frozenset(
    {
        "changeme",
        "change-me",
        "secret",
        "password",
        "test",
        "dev-auth-jwt-secret-change-me-before-production",
        "dev-admin-key-change-me",
        "ap_sandbox",
        "sandbox-api-secret",
        "test-api-secret-value",
        "current-secret",
        "new-secret",
    }
)


class ConfigurationError(RuntimeError):
    """The settings cannot run safely; the message names the variable to fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str | None = None
    data_dir: Path = Path(".data")
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long a request waits for a free pooled connection before it is answered 503 `DATABASE_BUSY`."""
    db_statement_timeout_seconds: float = Field(default=5.0, ge=0)
    """PostgreSQL's `statement_timeout` on the app's connections (0: none): a statement running longer is cancelled,
    its transaction rolled back, and the request answered 503 `DATABASE_TIMEOUT`. Below AssetPay's 10 s per
    approval attempt, so a stuck approval is retried rather than timed out."""
    db_lock_timeout_seconds: float = Field(default=3.0, ge=0)
    """PostgreSQL's `lock_timeout` on the app's connections (0: none): the longest a statement waits for a row lock
    (a trade, a balance) before it gives up the same way."""
    listen_database_url: str | None = None
    """Where the live-event listener connects (LISTEN needs a session: past PgBouncer, straight to PostgreSQL);
    unset: DATABASE_URL."""
    database_pooler: Literal["none", "pgbouncer"] = "none"
    """`pgbouncer`: DATABASE_URL goes through PgBouncer in transaction mode, so no prepared statement may outlive
    its transaction (statements are unnamed and never cached; see `store.database.create_engine`), and
    LISTEN_DATABASE_URL must reach PostgreSQL directly. `none`: PostgreSQL directly (or a session-mode pooler)."""

    @field_validator("database_pooler")
    @classmethod
    def _listener_needs_a_session(cls, pooler: str, info: ValidationInfo) -> str:
        if pooler != "none" and not info.data.get("listen_database_url"):
            raise ValueError(
                f"LISTEN_DATABASE_URL must be set, straight to PostgreSQL, when DATABASE_POOLER is {pooler} "
                "(LISTEN needs a session of its own, which transaction pooling does not keep)"
            )
        return pooler

    assetpay_base_url: str = PRODUCTION_ASSETPAY_URL
    assetpay_api_key: SecretStr | None = None
    assetpay_api_secret: SecretStr | None = None
    assetpay_api_secret_previous: SecretStr | None = None
    assetpay_merchant_id: str | None = None

    auth_jwt_secret: SecretStr | None = None
    auth_jwt_public_key: SecretStr | None = None
    auth_jwt_algorithm: str = "HS256"
    auth_jwt_audience: str | None = None
    auth_jwt_issuer: str | None = None
    admin_api_key: SecretStr | None = None

    assetpay_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    assetpay_read_timeout_seconds: float = Field(default=30.0, gt=0)
    assetpay_max_connections: int = Field(default=50, ge=1)
    assetpay_request_deadline_seconds: float = Field(default=60.0, gt=0)
    """The longest one exchange with AssetPay may take, first byte sent to last byte received (the read timeout is
    per read: a body that trickles in would never trip it); past it the call is a timeout."""
    assetpay_max_response_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)
    """The largest answer taken from AssetPay (bigger ones are refused unread, never buffered)."""
    market_cache_ttl_seconds: float = Field(default=10.0, ge=0)

    assetpay_merchant_tier: Literal["unverified", "verified"] = "verified"
    """Which of AssetPay's per-merchant rate limits apply (ASSETPAY.md §10): the defaults of the budgets below.
    Verified by default, so a verified merchant that did not say is not held to a hundredth of its limits; an
    unverified one that did not say backs off, every process at once, at AssetPay's first 429."""
    assetpay_rate_inventory_per_minute: int | None = Field(default=None, ge=1)
    """The merchant's budget of AssetPay requests per minute, shared by every process and user (unset: the tier's)."""
    assetpay_rate_market_per_minute: int | None = Field(default=None, ge=1)
    assetpay_rate_deposit_per_minute: int | None = Field(default=None, ge=1)
    assetpay_rate_withdraw_per_minute: int | None = Field(default=None, ge=1)
    assetpay_rate_lookup_per_minute: int | None = Field(default=None, ge=1)
    """Trade lookups (reconciliation, the realtime feed's nudges, settling a lost answer)."""
    assetpay_rate_other_per_minute: int | None = Field(default=None, ge=1)
    """Cancels, identity verification, client tokens: AssetPay publishes no limit, so unset means no budget."""
    user_rate_inventory_per_minute: int | None = Field(default=None, ge=1)
    """One user's allowance per minute on the routes that make AssetPay work (unset: the tier's)."""
    user_rate_market_per_minute: int | None = Field(default=None, ge=1)
    """Market requests that miss the cache."""
    user_rate_trades_per_minute: int | None = Field(default=None, ge=1)
    """Deposits and withdrawals started."""

    assetpay_feed: bool = False
    """Connect to AssetPay's realtime feed (Socket.IO): market events keep the market cache fresh, trade events have
    the trade looked up and applied."""
    assetpay_feed_url: str | None = None
    """Where the feed is; unset: ASSETPAY_BASE_URL (the feed is at the API host)."""
    assetpay_feed_reconnect_seconds: float = Field(default=30.0, gt=0)
    """Wait before reconnecting; doubled after each failed attempt, up to ASSETPAY_FEED_RECONNECT_MAX_SECONDS."""
    assetpay_feed_reconnect_max_seconds: float = Field(default=300.0, gt=0)
    assetpay_feed_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    assetpay_feed_nudge_delay_seconds: float = Field(default=0.5, ge=0)
    """How long a trade lookup waits for more trade events to join it."""
    assetpay_feed_nudge_concurrency: int = Field(default=2, ge=1)
    """At most this many trade lookups for the feed at once."""

    reconcile_interval_seconds: float = Field(default=60.0, ge=0)
    """How often `serve` runs a reconciliation pass (0: never; `assetpay-merchant reconcile` still can)."""
    reconcile_after_seconds: float = Field(default=600.0, ge=0)
    """A trade in flight that nothing touched for this long is looked up at AssetPay."""
    reconcile_unknown_after_seconds: float = Field(default=3600.0, ge=60)
    """A trade AssetPay does not know is failed once it is this old (younger, its creation may be under way)."""
    reconcile_max_trades: int = Field(default=1000, ge=1)
    """At most this many trades per pass (the longest-quiet first)."""

    ledger_check_interval_seconds: float = Field(default=3600.0, ge=0)
    """How often `serve` checks the books (`ledger_check_*` metrics; 0: never); aligned to the clock, so the
    processes of a deployment run it together and one of them does the work."""
    metrics_refresh_seconds: float = Field(default=30.0, ge=0)
    """How often `serve` reads the exposure and review-queue gauges from the database (0: never)."""

    ws_max_connections_per_user: int = Field(default=5, ge=1)
    ws_compression: bool = False
    """permessage-deflate on WebSocket connections (costs ~38 kB of memory per client; events are small)."""
    ws_queue_size: int = Field(default=256, ge=1)
    """Events waiting for one WebSocket client; a client further behind is told to resync and dropped."""
    event_retention_hours: float = Field(default=48.0, ge=24)
    """How long live events are kept for `?since=` replay."""

    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    """The web pages, by exact origin, that may call the /v1 API from a browser and open its WebSocket
    (comma-separated `scheme://host[:port]`); empty: none but the server's own pages."""
    cors_max_age_seconds: int = Field(default=600, ge=0, le=86_400)
    """How long a browser may reuse a preflight answer (Chromium caps it at 7200)."""

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _exact_origins(cls, value: Any) -> Any:
        """`https://a.example,http://localhost:5173` → each checked and written as a browser sends it."""
        entries = value.split(",") if isinstance(value, str) else value
        if not isinstance(entries, list | tuple | set | frozenset):
            return value  # not a list of origins at all: pydantic says so
        stripped = [entry.strip() if isinstance(entry, str) else entry for entry in entries]
        return tuple(dict.fromkeys(browser_origin(entry) for entry in stripped if entry != ""))  # a trailing comma

    webhook_tolerance_seconds: int = Field(default=300, ge=1)
    max_webhook_body_bytes: int = Field(default=1_048_576, ge=1024)
    currency: str = "USD"
    log_level: str = "INFO"
    log_json: bool = False
    shutdown_grace_seconds: int = Field(default=20, ge=1)
    """On SIGTERM, `serve` stops accepting connections and gives the requests in flight this long to finish before
    it cancels them (uvicorn's `timeout_graceful_shutdown`); keep it below the orchestrator's kill deadline."""

    @field_validator(
        "database_url",
        "listen_database_url",
        "assetpay_api_key",
        "assetpay_api_secret",
        "assetpay_api_secret_previous",
        "assetpay_merchant_id",
        "assetpay_feed_url",
        "auth_jwt_secret",
        "auth_jwt_public_key",
        "auth_jwt_audience",
        "auth_jwt_issuer",
        "admin_api_key",
        "assetpay_rate_inventory_per_minute",
        "assetpay_rate_market_per_minute",
        "assetpay_rate_deposit_per_minute",
        "assetpay_rate_withdraw_per_minute",
        "assetpay_rate_lookup_per_minute",
        "assetpay_rate_other_per_minute",
        "user_rate_inventory_per_minute",
        "user_rate_market_per_minute",
        "user_rate_trades_per_minute",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """`NAME=` in a .env file means "not set", as if the line were not there."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def transaction_pooling(self) -> bool:
        """DATABASE_URL goes through a transaction-mode pooler (PgBouncer)."""
        return self.database_pooler == "pgbouncer"

    @property
    def session_database_url(self) -> str | None:
        """Where connections that need a session of their own go, past the pooler (None: the pool will do)."""
        return self.listen_database_url if self.transaction_pooling else None

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigurationError("DATABASE_URL must be set (a PostgreSQL URL)")
        return self.database_url

    def require_assetpay_key(self) -> None:
        """What looking trades up needs: the merchant API key."""
        _require_secret("ASSETPAY_API_KEY", self.assetpay_api_key)

    def require_safe(self) -> None:
        """Refuse to run with a secret anyone could know; the message names the first variable to fix."""
        self.require_database_url()
        if self.auth_jwt_public_key is not None and self.auth_jwt_public_key.get_secret_value().strip():
            if self.auth_jwt_algorithm not in ASYMMETRIC_JWT_ALGORITHMS:
                raise ConfigurationError(
                    f"AUTH_JWT_ALGORITHM must be one of {', '.join(sorted(ASYMMETRIC_JWT_ALGORITHMS))} "
                    "when AUTH_JWT_PUBLIC_KEY is set"
                )
        else:
            if self.auth_jwt_algorithm != "HS256":
                raise ConfigurationError("AUTH_JWT_ALGORITHM other than HS256 needs AUTH_JWT_PUBLIC_KEY")
            _require_secret("AUTH_JWT_SECRET", self.auth_jwt_secret, min_bytes=MIN_JWT_SECRET_BYTES)
        _require_secret("ADMIN_API_KEY", self.admin_api_key)
        _require_secret("ASSETPAY_API_KEY", self.assetpay_api_key)
        _require_secret("ASSETPAY_API_SECRET", self.assetpay_api_secret)
        if self.assetpay_api_secret_previous is not None and self.assetpay_api_secret_previous.get_secret_value():
            _require_secret("ASSETPAY_API_SECRET_PREVIOUS", self.assetpay_api_secret_previous)

    def secret_values(self) -> tuple[str, ...]:
        """Every configured secret, as text: what the logs must never show (the database passwords included)."""
        secrets = (
            self.auth_jwt_secret,
            self.admin_api_key,
            self.assetpay_api_key,
            self.assetpay_api_secret,
            self.assetpay_api_secret_previous,
        )
        values = [secret.get_secret_value() for secret in secrets if secret is not None]
        for url in (self.database_url, self.listen_database_url):
            try:
                password = urlsplit(url).password if url else None
            except ValueError:
                password = None
            if password:
                values += [password, unquote(password)]  # as written in the URL, and as a driver may print it
        return tuple(value for value in values if value.strip())

    @property
    def webhook_secrets(self) -> tuple[bytes, ...]:
        """The secrets a callback signature may be made with: the current one first, then the previous one."""
        secrets = (self.assetpay_api_secret, self.assetpay_api_secret_previous)
        return tuple(s.get_secret_value().encode() for s in secrets if s is not None and s.get_secret_value())


_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def browser_origin(entry: Any) -> str:
    """`entry` the way a browser writes it in its `Origin` header (lower case, no default port), so an exact
    comparison works; ValueError naming CORS_ORIGINS when it is not one http(s) origin."""
    if entry == "*":
        raise ValueError(
            "CORS_ORIGINS may not be *: with credentials allowed, a wildcard lets any site call the API as its "
            "users; list the exact origin of each frontend"
        )
    if entry == "null":
        raise ValueError(
            "CORS_ORIGINS may not contain null: sandboxed frames and local files send it, so any site can; list "
            "the exact origin of each frontend"
        )
    reason = _not_an_origin(entry)
    if reason is not None:
        raise ValueError(
            f"CORS_ORIGINS entry {entry!r} is not an origin ({reason}): write each as scheme://host[:port], "
            "e.g. https://shop.example.com"
        )
    parts = urlsplit(entry)
    scheme, host, port = parts.scheme.lower(), parts.hostname or "", parts.port
    if ":" in host:
        host = f"[{ipaddress.IPv6Address(host).compressed}]"
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


def _not_an_origin(entry: Any) -> str | None:
    """Why `entry` is not an http(s) origin, or None when it is one."""
    if not isinstance(entry, str):
        return "not text"
    if not entry.isascii() or any(c.isspace() for c in entry):
        return "only ASCII without spaces: a non-ASCII host is written in punycode (xn--...)"
    if "*" in entry:
        return "no wildcards"
    try:
        parts = urlsplit(entry)
        port = parts.port
    except ValueError:
        return "a bad port or host"
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        return "it must start with http:// or https://"
    if parts.username is not None or parts.password is not None:
        return "no user name or password"
    if parts.path or parts.query or parts.fragment or entry.endswith(("?", "#")):
        return "no path, not even a trailing /"
    if port == 0:
        return "port 0"
    host = parts.hostname or ""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "a bad IPv6 address"
        return None
    if not host or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        return "a bad host name"
    return None


def _require_secret(name: str, value: SecretStr | None, *, min_bytes: int = 1) -> None:
    secret = value.get_secret_value() if value is not None else ""
    if not secret.strip():
        raise ConfigurationError(f"{name} must be set")
    if secret.strip().lower() in WELL_KNOWN_SECRETS:
        raise ConfigurationError(f"{name} is a published example value; set a secret of your own")
    if len(secret.encode()) < min_bytes:
        raise ConfigurationError(f"{name} must be at least {min_bytes} bytes long")
