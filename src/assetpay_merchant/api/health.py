"""`/healthz` (the process answers), `/readyz` (the database answers and is at the migration head), `/metrics`."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from assetpay_merchant.api.deps import ResourcesDep
from assetpay_merchant.api.schemas import error
from assetpay_merchant.observability import METRICS_CONTENT_TYPE, exposition
from assetpay_merchant.store.schema_version import HEAD_REVISION

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database reachable and migrated to head",
    description="`warnings` lists what AssetPay reported broken in the merchant's setup lately (no callback URL, "
    "this server's IP denied, ...), each with the fix. They do not make the process unready: it serves what it "
    "can, and restarting it or routing around it would fix nothing.",
    responses={503: error("DATABASE_UNAVAILABLE or MIGRATIONS_PENDING: not ready to serve")},
)
async def readyz(resources: ResourcesDep) -> JSONResponse:
    expected = HEAD_REVISION
    try:
        async with resources.database.engine.connect() as connection:
            current = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    except (SQLAlchemyError, OSError) as exc:
        log.warning("readiness check failed: %s", exc)
        return _not_ready("DATABASE_UNAVAILABLE", "The database cannot be reached or is not migrated")
    if current != expected:
        return _not_ready("MIGRATIONS_PENDING", f"Database is at {current}, code expects {expected}")
    body: dict[str, object] = {"status": "ready", "database": "ok", "migration": current}
    limits = resources.rate_limits
    warnings = limits.setup.warnings() if limits is not None else []
    if warnings:
        body["warnings"] = warnings
    return JSONResponse(body)


def _not_ready(key: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"key": key, "message": message}}, status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(exposition(), media_type=METRICS_CONTENT_TYPE)
