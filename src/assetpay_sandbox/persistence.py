"""The sandbox's state kept in PostgreSQL, so a trade in hold survives a restart of `dev` or `sandbox`.

One JSONB row per merchant id in the sandbox's own schema, `assetpay_sandbox`, which the sandbox creates itself:
the backend's Alembic migrations never see it (they compare the `public` schema only). While a sandbox runs it holds
a session advisory lock on its merchant id, so two sandboxes cannot overwrite each other's state (the second one to
start keeps its state in memory, and says so).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from starlette.types import ASGIApp, Receive, Scope, Send

from assetpay_merchant.store.database import driver_dsn

log = logging.getLogger(__name__)

SCHEMA = "assetpay_sandbox"
TABLE = f"{SCHEMA}.snapshots"
_CREATE = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        merchant_id text PRIMARY KEY,
        data jsonb NOT NULL,
        saved_at timestamptz NOT NULL DEFAULT now()
    )""",
)
_LOCK_KEY = "assetpay_sandbox:"  # + merchant id, hashed into the advisory lock's key


class SandboxBusy(RuntimeError):
    """Another sandbox of the same merchant is running on this database."""


class SandboxStore:
    """Loads and saves one merchant's sandbox snapshot (a JSON text) on a connection of its own."""

    def __init__(self, url: str, *, merchant_id: str) -> None:
        self.dsn = driver_dsn(url)
        self.merchant_id = merchant_id
        self._connection: asyncpg.Connection | None = None

    async def open(self) -> None:
        """Connect, create the schema and table when missing, and take the merchant's lock (idempotent)."""
        if self._connection is not None and not self._connection.is_closed():
            return
        connection = await asyncpg.connect(self.dsn, timeout=10)
        try:
            async with connection.transaction():
                # Serialised: two first starts at once would both try to create the schema.
                await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", SCHEMA)
                for statement in _CREATE:
                    await connection.execute(statement)
            locked = await connection.fetchval(
                "SELECT pg_try_advisory_lock(hashtext($1))", _LOCK_KEY + self.merchant_id
            )
            if not locked:
                raise SandboxBusy(f"another AssetPay sandbox of merchant {self.merchant_id} runs on this database")
        except BaseException:
            await connection.close()
            raise
        self._connection = connection

    async def load(self) -> dict[str, Any] | None:
        """The saved snapshot, or None when this merchant has none yet."""
        text = await self._live().fetchval(f"SELECT data FROM {TABLE} WHERE merchant_id = $1", self.merchant_id)  # noqa: S608
        if text is None:
            return None
        data: dict[str, Any] = json.loads(text)
        return data

    async def save(self, text: str) -> None:
        """Replace the snapshot with `text` (JSON); reconnects first when the connection was lost."""
        await self.open()
        await self._live().execute(
            f"INSERT INTO {TABLE} (merchant_id, data) VALUES ($1, $2::jsonb) "  # noqa: S608
            "ON CONFLICT (merchant_id) DO UPDATE SET data = EXCLUDED.data, saved_at = now()",
            self.merchant_id,
            text,
        )

    async def close(self) -> None:
        """Disconnect, which also releases the merchant's lock (idempotent)."""
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            await connection.close()

    def _live(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            raise RuntimeError("the sandbox store is not open")
        return self._connection


class SaveAfterRequests:
    """ASGI middleware: after every HTTP request, `touch()` (any route may have changed the sandbox; the save is
    skipped when nothing did)."""

    def __init__(self, app: ASGIApp, *, touch: Callable[[], None]) -> None:
        self.app = app
        self.touch = touch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                self.touch()
