"""Settings, read from the environment (and a `.env` file) with pydantic-settings.

The variable names of DESIGN.md §3 are fixed; everything else has a sensible default. Outside development the
service refuses to start with an empty or default secret and names the variable to set.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Development defaults: good enough on a laptop, refused anywhere else.
DEV_AUTH_JWT_SECRET = "dev-auth-jwt-secret-change-me-before-production"  # noqa: S105
DEV_ADMIN_API_KEY = "dev-admin-key-change-me"
SANDBOX_API_KEY = "ap_sandbox"
SANDBOX_API_SECRET = "sandbox-api-secret"  # noqa: S105
SANDBOX_MERCHANT_ID = "00000000-0000-4000-8000-000000005a4d"
PRODUCTION_ASSETPAY_URL = "https://api.assetpay.gg"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class ConfigurationError(RuntimeError):
    """The settings cannot run safely; the message names the variable to fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    environment: Environment = Environment.DEVELOPMENT
    database_url: str | None = None
    data_dir: Path = Path(".data")
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)

    assetpay_base_url: str = PRODUCTION_ASSETPAY_URL
    assetpay_api_key: SecretStr | None = None
    assetpay_api_secret: SecretStr | None = None
    assetpay_api_secret_previous: SecretStr | None = None
    assetpay_merchant_id: str | None = None

    auth_jwt_secret: SecretStr = SecretStr(DEV_AUTH_JWT_SECRET)
    admin_api_key: SecretStr = SecretStr(DEV_ADMIN_API_KEY)

    assetpay_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    assetpay_read_timeout_seconds: float = Field(default=30.0, gt=0)
    assetpay_max_connections: int = Field(default=50, ge=1)
    market_cache_ttl_seconds: float = Field(default=10.0, ge=0)

    webhook_tolerance_seconds: int = Field(default=300, ge=1)
    currency: str = "USD"
    log_level: str = "INFO"
    log_json: bool = False

    @model_validator(mode="after")
    def _refuse_unsafe_secrets(self) -> Settings:
        if self.environment is not Environment.PRODUCTION:
            return self
        checks = {
            "AUTH_JWT_SECRET": (self.auth_jwt_secret, DEV_AUTH_JWT_SECRET),
            "ADMIN_API_KEY": (self.admin_api_key, DEV_ADMIN_API_KEY),
            "ASSETPAY_API_KEY": (self.assetpay_api_key, SANDBOX_API_KEY),
            "ASSETPAY_API_SECRET": (self.assetpay_api_secret, SANDBOX_API_SECRET),
        }
        for name, (value, default) in checks.items():
            secret = value.get_secret_value() if value is not None else ""
            if not secret.strip() or secret == default:
                raise ConfigurationError(
                    f"{name} must be set to a real secret when ENVIRONMENT={self.environment.value}"
                )
        if not self.database_url:
            raise ConfigurationError("DATABASE_URL must be set when ENVIRONMENT=production")
        return self

    @property
    def uses_sandbox(self) -> bool:
        """No AssetPay credentials in development: the built-in sandbox stands in for AssetPay."""
        return self.environment is not Environment.PRODUCTION and self.assetpay_api_secret is None

    @cached_property
    def webhook_secrets(self) -> tuple[bytes, ...]:
        """The secrets a callback signature may be made with: the current one first, then the previous one."""
        current = self.assetpay_api_secret or SecretStr(SANDBOX_API_SECRET if self.uses_sandbox else "")
        secrets = [s.get_secret_value() for s in (current, self.assetpay_api_secret_previous) if s is not None]
        return tuple(s.encode() for s in secrets if s)
