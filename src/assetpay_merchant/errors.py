"""One error type for the whole service, rendered by one handler as `{"error": {"key", "message", ...}}`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class AppError(Exception):
    """An error the client should see: an HTTP status, a stable key and a human message."""

    status_code = 400
    key = "BAD_REQUEST"

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        status_code: int | None = None,
        fields: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if key is not None:
            self.key = key
        if status_code is not None:
            self.status_code = status_code
        self.fields = dict(fields) if fields else None
        self.headers = dict(headers) if headers else None

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"key": self.key, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}


class Unauthorized(AppError):
    status_code = 401
    key = "UNAUTHORIZED"


class Forbidden(AppError):
    status_code = 403
    key = "FORBIDDEN"


class NotFound(AppError):
    status_code = 404
    key = "NOT_FOUND"


class Conflict(AppError):
    status_code = 409
    key = "CONFLICT"


class ValidationFailed(AppError):
    status_code = 422
    key = "VALIDATION_FAILED"


def error_response(error: AppError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def fields_from_pydantic(errors: list[Any], *, root: str = "body") -> dict[str, str]:
    """`[{"loc": ("body", "items", 0, "price"), "msg": ...}]` → `{"items.0.price": msg}` (first reason per field).

    Paths start at `root`'s content; an error about the whole object is reported under `root` itself.
    """
    fields: dict[str, str] = {}
    prefix = "" if root == "body" else f"{root}."
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
        fields.setdefault(prefix + ".".join(loc) if loc else root, str(error.get("msg", "is invalid")))
    return fields


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = fields_from_pydantic(list(exc.errors()))
        names = ", ".join(list(fields)[:5])
        return error_response(ValidationFailed(f"Invalid request: {names}", fields=fields))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        keys = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 401: "UNAUTHORIZED", 403: "FORBIDDEN"}
        key = keys.get(exc.status_code, "HTTP_ERROR")
        return error_response(AppError(str(exc.detail), key=key, status_code=exc.status_code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(AppError("Internal server error", key="INTERNAL_ERROR", status_code=500))
