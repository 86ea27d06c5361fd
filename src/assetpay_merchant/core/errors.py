"""One error base for the whole service: a stable key, a human message, and the fields at fault.

What kind of failure it is shows in the class; the API edge (`api/errors.py`) alone turns classes into HTTP
statuses. Services raise these, never an HTTP exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class AppError(Exception):
    """An error the caller should see: a stable key and a human message; `retry_after` in seconds when known."""

    key: ClassVar[str] = "BAD_REQUEST"

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        fields: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if key is not None:
            self.key = key  # type: ignore[misc]
        self.fields = dict(fields) if fields else None
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"key": self.key, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}


class BadRequest(AppError):
    key = "BAD_REQUEST"


class Unauthorized(AppError):
    """Who is calling is not proven."""

    key = "UNAUTHORIZED"


class Forbidden(AppError):
    """The caller is known, and not allowed."""

    key = "FORBIDDEN"


class NotFound(AppError):
    key = "NOT_FOUND"


class Conflict(AppError):
    """The request is well-formed but clashes with the current state."""

    key = "CONFLICT"


class ValidationFailed(AppError):
    """The input is malformed; `fields` names each bad field."""

    key = "VALIDATION_FAILED"


class InsufficientBalance(AppError):
    key = "INSUFFICIENT_BALANCE"


class TooManyRequests(AppError):
    key = "RATE_LIMITED"


class Unavailable(AppError):
    """A dependency cannot serve right now; retrying later may work."""

    key = "UNAVAILABLE"


class DatabaseUnavailable(Unavailable):
    key = "DATABASE_UNAVAILABLE"


class PayloadTooLarge(AppError):
    key = "PAYLOAD_TOO_LARGE"


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
