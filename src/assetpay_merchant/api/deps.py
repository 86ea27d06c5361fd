"""The app's shared resources, built in `lifespan` and handed to routes as `Annotated` dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from assetpay_merchant.gateway import AssetPayClient
from assetpay_merchant.services.catalog import Catalog
from assetpay_merchant.services.live import Hub
from assetpay_merchant.store.database import Database


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class WebSettings:
    """What the routes need of the settings (the API edge never reads the environment itself)."""

    admin_api_key: bytes
    webhook_secrets: tuple[bytes, ...]
    webhook_tolerance_seconds: int
    currency: str
    max_webhook_body_bytes: int


@dataclass(slots=True)
class Resources:
    settings: WebSettings
    database: Database
    assetpay: AssetPayClient
    catalog: Catalog
    hub: Hub
    verify_user_token: Callable[[str], str]
    """The end user's id from their bearer token; raises Unauthorized."""
    clock: Callable[[], datetime] = field(default=utc_now)


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


def get_database(resources: ResourcesDep) -> Database:
    return resources.database


DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """A read-only session for one request's views."""
    async with resources.database.reads() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
