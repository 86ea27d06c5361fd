"""Secure by default: settings anyone could know are refused, naming the variable; nothing is open by omission."""

import pytest
from pydantic import SecretStr

from assetpay_merchant.config import WELL_KNOWN_SECRETS, ConfigurationError, Settings
from assetpay_sandbox.credentials import SANDBOX_API_KEY, SANDBOX_API_SECRET
from assetpay_sandbox.dev import DEV_ADMIN_API_KEY, DEV_AUTH_JWT_SECRET, dev_settings, uses_sandbox

PRODUCTION = {
    "database_url": "postgresql://db/assetpay",
    "auth_jwt_secret": SecretStr("a-real-jwt-secret-of-at-least-32-bytes"),
    "admin_api_key": SecretStr("a-real-admin-key"),
    "assetpay_api_key": SecretStr("ap_live_key"),
    "assetpay_api_secret": SecretStr("a-real-api-secret"),
}
RSA_PUBLIC_KEY = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"


def settings(**overrides):
    return Settings(_env_file=None, **(PRODUCTION | overrides))


def test_real_secrets_are_accepted():
    settings().require_safe()


@pytest.mark.parametrize(
    ("field", "variable", "known"),
    [
        ("auth_jwt_secret", "AUTH_JWT_SECRET", DEV_AUTH_JWT_SECRET),
        ("admin_api_key", "ADMIN_API_KEY", DEV_ADMIN_API_KEY),
        ("assetpay_api_key", "ASSETPAY_API_KEY", SANDBOX_API_KEY),
        ("assetpay_api_secret", "ASSETPAY_API_SECRET", SANDBOX_API_SECRET),
    ],
)
def test_missing_empty_or_published_secrets_are_refused_naming_the_variable(field, variable, known):
    for value in (None, SecretStr(""), SecretStr("   "), SecretStr(known), SecretStr(known.upper())):
        with pytest.raises(ConfigurationError, match=variable):
            settings(**{field: value}).require_safe()


def test_every_development_and_sandbox_secret_is_on_the_refused_list():
    assert {DEV_AUTH_JWT_SECRET, DEV_ADMIN_API_KEY, SANDBOX_API_KEY, SANDBOX_API_SECRET} <= WELL_KNOWN_SECRETS


def test_a_short_jwt_secret_is_refused():
    with pytest.raises(ConfigurationError, match="AUTH_JWT_SECRET must be at least 32 bytes"):
        settings(auth_jwt_secret=SecretStr("x" * 31)).require_safe()
    settings(auth_jwt_secret=SecretStr("x" * 32)).require_safe()


def test_a_public_key_replaces_the_shared_secret():
    keyed = settings(auth_jwt_secret=None, auth_jwt_public_key=SecretStr(RSA_PUBLIC_KEY), auth_jwt_algorithm="RS256")
    keyed.require_safe()
    with pytest.raises(ConfigurationError, match="AUTH_JWT_ALGORITHM"):
        settings(auth_jwt_public_key=SecretStr(RSA_PUBLIC_KEY)).require_safe()  # HS256 with a public key
    with pytest.raises(ConfigurationError, match="AUTH_JWT_ALGORITHM"):
        settings(auth_jwt_algorithm="RS256").require_safe()  # RS256 without a public key


def test_a_database_url_is_required():
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        settings(database_url=None).require_safe()


def test_a_published_previous_secret_is_refused_too():
    with pytest.raises(ConfigurationError, match="ASSETPAY_API_SECRET_PREVIOUS"):
        settings(assetpay_api_secret_previous=SecretStr("current-secret")).require_safe()


def test_development_defaults_live_in_dev_only(monkeypatch):
    for name in ("DATABASE_URL", "ASSETPAY_API_SECRET", "ASSETPAY_API_KEY", "AUTH_JWT_SECRET", "ADMIN_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    bare = Settings(_env_file=None)
    assert (bare.auth_jwt_secret, bare.admin_api_key, bare.assetpay_api_secret) == (None, None, None)
    assert uses_sandbox(bare)
    dev = dev_settings(bare)
    assert dev.admin_api_key == SecretStr(DEV_ADMIN_API_KEY)
    assert dev.assetpay_api_secret == SecretStr(SANDBOX_API_SECRET)
    with pytest.raises(ConfigurationError):
        dev.model_copy(update={"database_url": "postgresql://db/x"}).require_safe()


def test_dev_keeps_the_secrets_it_is_given():
    given = settings()
    assert not uses_sandbox(given)
    assert dev_settings(given).admin_api_key == given.admin_api_key


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


def test_empty_lines_of_an_env_file_mean_unset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AUTH_JWT_AUDIENCE=\nAUTH_JWT_ISSUER=\nASSETPAY_MERCHANT_ID=\nADMIN_API_KEY=\n")
    loaded = Settings()
    assert (loaded.auth_jwt_audience, loaded.auth_jwt_issuer, loaded.assetpay_merchant_id) == (None, None, None)
    assert loaded.admin_api_key is None
