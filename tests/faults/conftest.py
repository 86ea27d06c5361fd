"""A private PostgreSQL cluster for fault tests (started, restarted and stopped by the test), and the app on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from assetpay_merchant.config import Settings
from tests.faults.pgcluster import PgCluster, find_bin_dir, free_port
from tests.support import ADMIN_KEY, JWT_SECRET, PREVIOUS_WEBHOOK_SECRET, WEBHOOK_SECRET


def settings_for(database_url: str) -> Settings:
    """The session `settings` fixture of tests/conftest.py, on the private cluster."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        auth_jwt_secret=SecretStr(JWT_SECRET),
        admin_api_key=SecretStr(ADMIN_KEY),
        assetpay_api_key=SecretStr("ap_test_key"),
        assetpay_api_secret=SecretStr(WEBHOOK_SECRET.decode()),
        assetpay_api_secret_previous=SecretStr(PREVIOUS_WEBHOOK_SECRET.decode()),
        assetpay_base_url="https://assetpay.test",
        db_pool_size=30,
        db_max_overflow=120,
    )


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """The app behind uvicorn on a free local port, in this event loop; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", log_config=None, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError("uvicorn did not start (see the log above)")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


@pytest.fixture
async def cluster() -> AsyncIterator[PgCluster]:
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    pg = PgCluster(bin_dir)
    try:
        await asyncio.to_thread(pg.init)
        await asyncio.to_thread(pg.start)
        yield pg
    finally:
        await asyncio.to_thread(pg.cleanup)
