"""`assetpay-merchant serve` as an operator runs it: secure by default, and nothing of the sandbox in it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from assetpay_sandbox.credentials import SANDBOX_API_SECRET
from tests.processes import CLI, SECRETS, clean_env, serve_process
from tests.support import dumps, signed, trade


def run_serve(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [str(CLI), "serve", "--port", "1"], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_serve_without_settings_refuses_to_start_naming_the_variable(tmp_path: Path) -> None:
    result = run_serve(clean_env(), tmp_path)
    assert result.returncode != 0
    assert "DATABASE_URL must be set" in result.stderr


@pytest.mark.parametrize("missing", list(SECRETS))
def test_serve_names_the_first_missing_secret(tmp_path: Path, missing: str) -> None:
    env = clean_env(DATABASE_URL="postgresql://127.0.0.1:1/none", **SECRETS)
    del env[missing]
    result = run_serve(env, tmp_path)
    assert result.returncode != 0
    assert f"{missing} must be set" in result.stderr


def test_serve_refuses_the_env_example_as_shipped(tmp_path: Path) -> None:
    """Copying .env.example and forgetting to fill it in must not give a running service."""
    (tmp_path / ".env").write_text((Path(__file__).parents[1] / ".env.example").read_text())
    result = run_serve(clean_env(), tmp_path)
    assert result.returncode != 0
    assert "must be set" in result.stderr


def test_production_code_never_imports_the_sandbox() -> None:
    probe = (
        "import sys\n"
        "import assetpay_merchant.app, assetpay_merchant.cli\n"
        "from assetpay_merchant.app import create_app\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('assetpay_sandbox'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60, env=clean_env())  # noqa: S603


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A real `serve` process on the test database, with real (test) secrets."""
    with serve_process(database_url, tmp_path) as address:
        yield f"http://{address}"


def test_a_served_backend_refuses_callbacks_signed_with_the_sandbox_secret(served: str) -> None:
    forged = dumps({"trade": trade(status="completed", total="5000.00", user_id="victim")})
    response = httpx.post(
        f"{served}/webhooks/assetpay", content=forged, headers=signed(forged, secret=SANDBOX_API_SECRET.encode())
    )
    assert response.status_code == 401
    assert response.json()["error"]["key"] == "SIGNATURE_MISMATCH"


def test_a_served_backend_has_no_sandbox_routes(served: str) -> None:
    for path in ("/sandbox/_sandbox", "/sandbox/_sandbox/trades", "/_sandbox"):
        assert httpx.get(f"{served}{path}").status_code == 404
    assert httpx.post(f"{served}/sandbox/_sandbox/step").status_code == 404
