import pytest
from pydantic import SecretStr

from assetpay_merchant.config import (
    DEV_ADMIN_API_KEY,
    DEV_AUTH_JWT_SECRET,
    SANDBOX_API_KEY,
    SANDBOX_API_SECRET,
    ConfigurationError,
    Environment,
    Settings,
)

PRODUCTION = {
    "environment": Environment.PRODUCTION,
    "database_url": "postgresql://db/assetpay",
    "auth_jwt_secret": SecretStr("a-real-jwt-secret-of-at-least-32-bytes"),
    "admin_api_key": SecretStr("a-real-admin-key"),
    "assetpay_api_key": SecretStr("ap_live_key"),
    "assetpay_api_secret": SecretStr("a-real-api-secret"),
}


def settings(**overrides):
    return Settings(_env_file=None, **(PRODUCTION | overrides))


def test_production_with_real_secrets_starts():
    assert not settings().uses_sandbox


@pytest.mark.parametrize(
    ("field", "variable", "default"),
    [
        ("auth_jwt_secret", "AUTH_JWT_SECRET", DEV_AUTH_JWT_SECRET),
        ("admin_api_key", "ADMIN_API_KEY", DEV_ADMIN_API_KEY),
        ("assetpay_api_key", "ASSETPAY_API_KEY", SANDBOX_API_KEY),
        ("assetpay_api_secret", "ASSETPAY_API_SECRET", SANDBOX_API_SECRET),
    ],
)
def test_production_refuses_empty_or_default_secrets_naming_the_variable(field, variable, default):
    for value in ("", "   ", default):
        with pytest.raises(ConfigurationError, match=variable):
            settings(**{field: SecretStr(value)})


def test_production_refuses_missing_assetpay_credentials():
    for field, variable in (("assetpay_api_key", "ASSETPAY_API_KEY"), ("assetpay_api_secret", "ASSETPAY_API_SECRET")):
        with pytest.raises(ConfigurationError, match=variable):
            settings(**{field: None})


def test_production_needs_a_database_url():
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        settings(database_url=None)


def test_development_runs_on_defaults_with_the_sandbox(monkeypatch):
    for name in ("DATABASE_URL", "ASSETPAY_API_SECRET", "ASSETPAY_API_KEY", "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    dev = Settings(_env_file=None)
    assert dev.environment is Environment.DEVELOPMENT
    assert dev.database_url is None
    assert dev.uses_sandbox


def test_webhook_secrets_are_current_then_previous():
    both = settings(assetpay_api_secret_previous=SecretStr("old-secret"))
    assert both.webhook_secrets == (b"a-real-api-secret", b"old-secret")


def test_environment_variables_use_the_fixed_names(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    monkeypatch.setenv("ASSETPAY_BASE_URL", "https://api-staging.assetpay.gg")
    monkeypatch.setenv("ASSETPAY_MERCHANT_ID", "merchant-1")
    loaded = Settings(_env_file=None)
    assert loaded.database_url == "postgresql://elsewhere/db"
    assert loaded.assetpay_base_url == "https://api-staging.assetpay.gg"
    assert loaded.assetpay_merchant_id == "merchant-1"
