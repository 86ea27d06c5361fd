"""Who is calling: an end user (a JWT from the merchant platform) or the platform itself (X-Admin-Key).

End-user tokens are HS256 with the shared secret, or (a platform that signs with a key pair) RS256/ES256 checked
against its public key. `exp` and `sub` are required; `aud` and `iss` are checked when configured.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from assetpay_merchant.api.deps import ResourcesDep
from assetpay_merchant.api.schemas import error
from assetpay_merchant.core.errors import Forbidden, Unauthorized
from assetpay_merchant.core.vocabulary import MAX_USER_ID_LENGTH
from assetpay_merchant.observability import USER_ID

_bearer = HTTPBearer(auto_error=False, description="JWT issued by the merchant platform; `sub` = user id")
_admin_key = APIKeyHeader(name="X-Admin-Key", auto_error=False, description="Server-to-server key of the platform")

UNAUTHORIZED = error("AUTH_REQUIRED, INVALID_TOKEN, TOKEN_EXPIRED: no valid `Authorization: Bearer <JWT>`")
ADMIN_UNAUTHORIZED = error("ADMIN_KEY_REQUIRED: no X-Admin-Key header")
FORBIDDEN = error("ADMIN_KEY_INVALID: the X-Admin-Key is not the platform's")


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Checks end-user JWTs: signature with `key` under one of `algorithms`, `exp` and `sub` present."""

    key: Any  # the HS256 secret (bytes) or a PEM public key
    algorithms: Sequence[str]
    audience: str | None = None
    issuer: str | None = None

    def __call__(self, token: str) -> str:
        """The user id (`sub`) of a valid token; Unauthorized otherwise."""
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired", key="TOKEN_EXPIRED") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("The token is not valid", key="INVALID_TOKEN") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_USER_ID_LENGTH:
            raise Unauthorized("The token's sub must be a user id", key="INVALID_TOKEN")
        return subject


async def current_user_id(
    resources: ResourcesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> str:
    # async: FastAPI runs a sync dependency in a worker thread, where the user id set for the logs would be lost.
    if credentials is None:
        raise Unauthorized("Send Authorization: Bearer <token>", key="AUTH_REQUIRED")
    user_id = resources.verify_user_token(credentials.credentials)
    USER_ID.set(user_id)  # for the rest of the request's log lines (the request-id middleware ends it)
    return user_id


async def require_admin(resources: ResourcesDep, key: Annotated[str | None, Security(_admin_key)]) -> None:
    if not key:
        raise Unauthorized("Send the X-Admin-Key header", key="ADMIN_KEY_REQUIRED")
    if not hmac.compare_digest(key.encode(), resources.settings.admin_api_key):
        raise Forbidden("The admin key is not valid", key="ADMIN_KEY_INVALID")


UserId = Annotated[str, Depends(current_user_id)]
AdminOnly = Depends(require_admin)
