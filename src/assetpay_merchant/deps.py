"""The app's shared resources, built in `lifespan` and handed to routes as `Annotated` dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import httpx
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from assetpay_merchant.catalog.cache import SingleFlight, TTLCache
from assetpay_merchant.config import Settings
from assetpay_merchant.db import EmbeddedPostgres
from assetpay_merchant.gateway import AssetPayClient, Inventory


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    assetpay: AssetPayClient
    market_cache: TTLCache[bytes]
    inventory_flights: SingleFlight[Inventory] = field(default_factory=SingleFlight)
    embedded: EmbeddedPostgres | None = None
    clock: Callable[[], datetime] = utc_now


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


def get_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """A session for one request; the route that writes commits it, and anything uncommitted is rolled back."""
    async with resources.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
