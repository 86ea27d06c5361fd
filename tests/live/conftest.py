"""Live events over a real socket: the session's app served by uvicorn on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

from tests.support import user_token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serving(app: FastAPI, *, lifespan: str = "off") -> AsyncIterator[str]:
    """`app` behind uvicorn in this event loop; yields its base URL (`lifespan="on"` for an app not yet started)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan=lifespan, log_config=None, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(1000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


@pytest.fixture
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The session's app (already started) on a real port: `host:port`."""
    async with serving(app) as address:
        yield address


class Live:
    """A frontend's live connection, reading messages as JSON."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(5):
            message: dict[str, Any] = json.loads(await self.socket.recv())
        return message

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.socket.recv(), seconds)
        except TimeoutError:
            return True
        return False

    async def send(self, body: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(body))


@asynccontextmanager
async def live(address: str, user_id: str | None = None, **query: Any) -> AsyncIterator[Live]:
    params = dict(query)
    if user_id is not None:
        params["token"] = user_token(user_id)
    url = f"ws://{address}/v1/ws" + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")
    async with connect(url, open_timeout=5, close_timeout=2) as socket:
        yield Live(socket)
