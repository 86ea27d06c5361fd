"""`create_storefront_app()`: the demo storefront's static page, and `POST /api/session`, the demo's stand-in for
the merchant PLATFORM.

    GET  /demo/                 the page (static/index.html, app.js, style.css)
    POST /demo/api/session      {"userId", "clientData"?, "verificationLevel"?: 0|1}
                                → {"userId", "steamId", "token", "expiresAt"}

**In production this endpoint is your platform's job and never runs for a browser.** When a user signs in to your
site, your servers (1) register or update them with this backend, `PUT /v1/users/{id}` with `X-Admin-Key`, server
to server, with clientData taken from your own records (AssetPay's risk model trusts it: it must never come from
the browser), and (2) mint the user's JWT (`sub` = your user id, `exp`) that the frontend sends as
`Authorization: Bearer`. Here the browser picks the clientData so you can watch it move the instant credit.

Sandbox only: step 3 sets the user's AssetPay verification level through the sandbox's control route; real users
raise it by verifying their identity with AssetPay (`POST /v1/verification/start`).
"""

from __future__ import annotations

import hashlib
import time
from base64 import urlsafe_b64encode
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp

from assetpay_merchant.config import Settings
from assetpay_merchant.core.vocabulary import MAX_USER_ID_LENGTH, USER_ID_PATTERN

STATIC = Path(__file__).with_name("static")
SESSION_SECONDS = 3600
"""How long a demo JWT lasts; the page asks for a new one when the API or the WebSocket says it expired."""
STEAM_ID64_BASE = 76561197960265728
"""SteamID64 of account 0: a SteamID64 is this plus the account id, which trade URLs carry as `partner`."""
_BACKEND = "http://backend.internal"


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    userId: str = Field(min_length=1, max_length=MAX_USER_ID_LENGTH, pattern=USER_ID_PATTERN)
    clientData: dict[str, Any] = Field(
        default_factory=dict, description="Passed to PUT /v1/users as is: the backend validates it"
    )
    verificationLevel: Literal[0, 1] = 0


class SessionOut(BaseModel):
    userId: str
    steamId: str
    token: str = Field(description="The user's JWT: `Authorization: Bearer <token>` on /v1, first message on /v1/ws")
    expiresAt: datetime


def demo_steam_account(user_id: str) -> tuple[str, str]:
    """A stable, made-up Steam account (SteamID64 and trade URL) for a demo user id; the platform knows the real
    ones from the user's Steam login."""
    digest = hashlib.sha256(f"assetpay-demo:{user_id}".encode()).digest()
    account_id = 1 + int.from_bytes(digest[:8], "big") % 999_999_999
    token = urlsafe_b64encode(digest[8:14]).decode()  # 8 characters of [A-Za-z0-9_-]
    trade_url = f"https://steamcommunity.com/tradeoffer/new/?partner={account_id}&token={token}"
    return str(STEAM_ID64_BASE + account_id), trade_url


def _error(status: int, key: str, message: str, fields: dict[str, str] | None = None) -> JSONResponse:
    """The backend's error shape, so the page handles every error the same way."""
    error: dict[str, Any] = {"key": key, "message": message}
    if fields:
        error["fields"] = fields
    return JSONResponse({"error": error}, status_code=status)


def _passed_on(response: httpx.Response, what: str) -> JSONResponse:
    """A refusal from the backend (already `{"error": ...}`) or the sandbox (AssetPay's envelope), re-rendered."""
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    key = error.get("key") or "PLATFORM_ERROR"
    message = f"{what}: {error.get('message') or response.text[:200]}"
    return _error(response.status_code, key, message, error.get("fields"))


def create_storefront_app(backend: ASGIApp, settings: Settings) -> FastAPI:
    """The storefront, to mount at `/demo` of the dev app `backend`, which it calls in-process for the platform's
    part (as your platform would call the backend over your network). `settings` are dev's effective settings."""
    app = FastAPI(title="AssetPay demo storefront", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        fields = {".".join(str(p) for p in e["loc"][1:]) or "body": e["msg"] for e in exc.errors()}
        return _error(422, "VALIDATION_FAILED", "The session request is not valid", fields)

    @app.post("/api/session", response_model=SessionOut, summary="Demo only: what your platform does at sign-in")
    async def session(body: SessionIn) -> Any:
        if settings.auth_jwt_secret is None or settings.admin_api_key is None:
            return _error(503, "DEMO_UNAVAILABLE", "The demo mints HS256 JWTs: AUTH_JWT_SECRET must be set")
        steam_id, trade_url = demo_steam_account(body.userId)
        transport = httpx.ASGITransport(app=backend)
        async with httpx.AsyncClient(transport=transport, base_url=_BACKEND, timeout=30) as http:
            # 1. The platform registers the user (server to server, with the admin key: never from a browser).
            registered = await http.put(
                f"/v1/users/{body.userId}",
                headers={"X-Admin-Key": settings.admin_api_key.get_secret_value()},
                json={"steamId": steam_id, "tradeUrl": trade_url, "clientData": body.clientData},
            )
            if registered.status_code not in (200, 201):
                return _passed_on(registered, "Registering the user failed")
            # (Sandbox only) AssetPay's identity verification, done: the level raises the instant-credit cap.
            verified = await http.put(
                f"/sandbox/_sandbox/users/{steam_id}/verification", json={"level": body.verificationLevel}
            )
            if verified.status_code != 200:
                return _passed_on(verified, "Setting the sandbox verification level failed")
        # 2. The platform mints the user's JWT, signed with the secret it shares with the backend.
        expires = int(time.time()) + SESSION_SECONDS
        claims: dict[str, Any] = {"sub": body.userId, "iat": expires - SESSION_SECONDS, "exp": expires}
        if settings.auth_jwt_audience:
            claims["aud"] = settings.auth_jwt_audience
        if settings.auth_jwt_issuer:
            claims["iss"] = settings.auth_jwt_issuer
        token = jwt.encode(claims, settings.auth_jwt_secret.get_secret_value(), algorithm="HS256")
        return SessionOut(
            userId=body.userId, steamId=steam_id, token=token, expiresAt=datetime.fromtimestamp(expires, UTC)
        )

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app
