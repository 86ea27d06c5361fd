"""The pass-through peer of bench/proxy.py: the least a proxy of the catalog routes can do, on the same stack.

    PEER_UPSTREAM=http://127.0.0.1:PORT PEER_JWT_SECRET=... python -m uvicorn proxy_peer:app --app-dir bench

FastAPI on uvicorn, one `async def` dependency that checks the caller's HS256 JWT, one call to the upstream through
a shared `httpx.AsyncClient`, and the upstream's `data` decoded and re-encoded as JSON. No database, no validation
of the page, no cache. What the backend adds beyond what this adds is the backend's own work.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
import jwt
from fastapi import Depends, FastAPI, HTTPException, Request, Response

UPSTREAM = os.environ.get("PEER_UPSTREAM", "http://127.0.0.1:9")
SECRET = os.environ.get("PEER_JWT_SECRET", "")
UPSTREAM_TOKEN = "Bearer client-token"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=20)
    async with httpx.AsyncClient(base_url=UPSTREAM, limits=limits, timeout=30) as client:
        app.state.http = client
        yield


async def user_id(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "Send Authorization: Bearer <token>")
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp", "sub"]})
    except jwt.InvalidTokenError:
        raise HTTPException(401, "The token is not valid") from None
    return str(claims["sub"])


app = FastAPI(lifespan=lifespan)


@app.get("/v1/{route}")
async def proxy(route: str, request: Request, user: Annotated[str, Depends(user_id)]) -> Response:
    if route not in ("market", "inventory"):
        raise HTTPException(404)
    params = {"game": "730", **request.query_params}
    answer = await request.app.state.http.get(
        f"/client/{route}", params=params, headers={"authorization": UPSTREAM_TOKEN}
    )
    data = json.loads(answer.content)["data"]
    return Response(json.dumps(data, separators=(",", ":")).encode(), media_type="application/json")
