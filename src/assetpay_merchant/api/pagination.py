"""Opaque cursors for newest-first lists: the sort key of the last row served, base64url-encoded."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import Query

from assetpay_merchant.core.errors import ValidationFailed

Limit = Annotated[int, Query(ge=1, le=200, description="Rows per page")]
Cursor = Annotated[str | None, Query(max_length=512, description="`nextCursor` of the previous page")]


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, default=str).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise ValidationFailed("The cursor is not valid", fields={"cursor": "not a cursor we issued"}) from None
    if not isinstance(key, list):
        raise ValidationFailed("The cursor is not valid", fields={"cursor": "not a cursor we issued"})
    return key
