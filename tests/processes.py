"""Real `assetpay-merchant serve` processes for tests that need more than one process, or the command itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import ADMIN_KEY, JWT_SECRET, WEBHOOK_SECRET

CLI = Path(sys.executable).with_name("assetpay-merchant")
SECRETS = {
    "AUTH_JWT_SECRET": JWT_SECRET,
    "ADMIN_API_KEY": ADMIN_KEY,
    "ASSETPAY_API_KEY": "ap_test_key",
    "ASSETPAY_API_SECRET": WEBHOOK_SECRET.decode(),
}


def clean_env(**values: str) -> dict[str, str]:
    """The machine's environment without any of our settings, plus `values`."""
    ours = ("DATABASE_URL", "ASSETPAY_", "AUTH_JWT_", "ADMIN_API_KEY", "ENVIRONMENT", "DATA_DIR", "RECONCILE_")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)} | values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_process(database_url: str, workdir: Path, *, workers: int = 1, **env: str) -> Iterator[str]:
    """`assetpay-merchant serve` on the database with real (test) secrets, until it answers /readyz; yields
    `host:port`, and stops it on the way out."""
    port = free_port()
    log_path = workdir / f"serve-{port}.log"
    environment = clean_env(DATABASE_URL=database_url, LOG_LEVEL="WARNING", **SECRETS) | env
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603
            [str(CLI), "serve", "--port", str(port), "--workers", str(workers)],
            env=environment,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"serve did not become ready:\n{log_path.read_text()[-3000:]}"
                time.sleep(0.2)
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            finally:
                process.kill()
