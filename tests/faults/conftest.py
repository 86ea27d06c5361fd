"""A private PostgreSQL cluster for fault tests (started, restarted and stopped by the test), and the app on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn
from fastapi import FastAPI

from assetpay_merchant.config import Settings
from tests.faults.pgcluster import PgCluster, find_bin_dir, free_port
from tests.support import app_settings


def settings_for(database_url: str) -> Settings:
    """The session's test settings (tests/conftest.py), on the private cluster."""
    return app_settings(database_url)


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
