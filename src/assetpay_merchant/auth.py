"""Who is calling: an end user (HS256 JWT from the merchant platform) or the platform itself (X-Admin-Key)."""

from __future__ import annotations

import hmac
from typing import Annotated

import jwt
from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from assetpay_merchant.deps import SettingsDep
from assetpay_merchant.errors import Forbidden, Unauthorized

_bearer = HTTPBearer(auto_error=False, description="HS256 JWT issued by the merchant platform; `sub` = user id")
_admin_key = APIKeyHeader(name="X-Admin-Key", auto_error=False, description="Server-to-server key of the platform")

MAX_USER_ID_LENGTH = 128


def current_user_id(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> str:
    if credentials is None:
        raise Unauthorized("Send Authorization: Bearer <token>", key="AUTH_REQUIRED")
    try:
        claims = jwt.decode(
            credentials.credentials,
            settings.auth_jwt_secret.get_secret_value(),
            algorithms=["HS256"],
            options={"require": ["sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The token has expired", key="TOKEN_EXPIRED") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("The token is not valid", key="INVALID_TOKEN") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= MAX_USER_ID_LENGTH:
        raise Unauthorized("The token's sub must be a user id", key="INVALID_TOKEN")
    return subject


def require_admin(settings: SettingsDep, key: Annotated[str | None, Security(_admin_key)]) -> None:
    if not key:
        raise Unauthorized("Send the X-Admin-Key header", key="ADMIN_KEY_REQUIRED")
    if not hmac.compare_digest(key.encode(), settings.admin_api_key.get_secret_value().encode()):
        raise Forbidden("The admin key is not valid", key="ADMIN_KEY_INVALID")


UserId = Annotated[str, Depends(current_user_id)]
AdminOnly = Depends(require_admin)
