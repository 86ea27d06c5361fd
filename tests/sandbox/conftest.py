"""Fixtures for the sandbox tests: the sandbox app over ASGI, its clock, and the merchant's callback receiver.

No database: the sandbox keeps everything in memory. Time moves only when a test moves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from assetpay_sandbox import Sandbox, create_sandbox_app, sandbox_of
from tests.sandbox.helpers import API_KEY, API_SECRET, CALLBACK_URL, MERCHANT_ID, STEP_SECONDS, Clock, Receiver


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 7, 31, 12, 0, tzinfo=UTC))


@pytest.fixture
def receiver(clock: Clock) -> Receiver:
    return Receiver(clock)


@pytest.fixture
def make_app(clock: Clock, receiver: Receiver) -> Callable[..., FastAPI]:
    def make(**overrides: Any) -> FastAPI:
        options: dict[str, Any] = {
            "api_key": API_KEY,
            "api_secret": API_SECRET,
            "merchant_id": MERCHANT_ID,
            "callback_url": CALLBACK_URL,
            "step_seconds": STEP_SECONDS,
            "clock": clock,
            "callback_transport": receiver.transport,
        }
        return create_sandbox_app(**(options | overrides))

    return make


@pytest.fixture
async def app(make_app: Callable[..., FastAPI]) -> AsyncIterator[FastAPI]:
    application = make_app()
    yield application
    await sandbox_of(application).stop()


@pytest.fixture
def sandbox(app: FastAPI) -> Sandbox:
    return sandbox_of(app)


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test") as client:
        yield client
