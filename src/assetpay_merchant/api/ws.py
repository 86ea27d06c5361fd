"""`WS /v1/ws`: the user's live `trade.updated` and `balance.updated` events.

    connect   /v1/ws?token=<JWT>[&since=<last event id seen>]   (or send {"type": "auth", "token": ...} first)
    server    {"type": "ready", "id": null, "data": {"userId": ..., "lastEventId": n}}
              {"type": "trade.updated", "id": n, "data": <GET /v1/trades/{id}>}
              {"type": "balance.updated", "id": n, "data": <GET /v1/balance>}
              {"type": "resync", "id": null, "data": {}}          refetch your views: what you missed is gone
    client    {"type": "ping"}  →  {"type": "pong", "id": null, "data": {}}

Handshake: a browser page whose `Origin` is neither the server's own nor listed in CORS_ORIGINS is refused with
HTTP 403 before the socket opens (`api/cors.py`); a client that sends no `Origin` is not a browser page.

Close codes: 4401 bad, missing or expired token (nothing else is sent); 4400 a `since` that is not a number;
4408 the client fell behind (after `resync`); 4429 too many connections for this user; 1013 the database is
unavailable (reconnect shortly). The server also sends WebSocket ping frames (uvicorn's, every 20 s), so a dead
peer is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from assetpay_merchant.api.deps import Resources
from assetpay_merchant.core.errors import DatabaseUnavailable, TooManyRequests, Unauthorized
from assetpay_merchant.observability import LIVE_EVENTS_SENT, LIVE_RESYNCS, USER_ID
from assetpay_merchant.services.live import Subscription
from assetpay_merchant.store import events

log = logging.getLogger(__name__)
router = APIRouter()

AUTH_TIMEOUT_SECONDS = 10.0
BAD_TOKEN = 4401
BAD_REQUEST = 4400
FELL_BEHIND = 4408
TOO_MANY = 4429
TRY_AGAIN_LATER = 1013


def message(kind: str, event_id: int | None = None, data: dict[str, Any] | None = None) -> str:
    return json.dumps({"type": kind, "id": event_id, "data": data or {}}, separators=(",", ":"))


@router.websocket("/v1/ws")
async def live(websocket: WebSocket) -> None:
    resources: Resources = websocket.app.state.resources
    await websocket.accept()
    user_id = await _authenticate(websocket, resources)
    if user_id is None:
        await websocket.close(BAD_TOKEN)
        return
    USER_ID.set(user_id)  # the connection's log lines name its user (the request's context is reset at its end)
    raw_since = websocket.query_params.get("since")
    if raw_since is not None and not raw_since.isdigit():
        await websocket.close(BAD_REQUEST, "since must be the id of the last event you saw")
        return
    try:
        async with resources.database.statements() as db:
            last = await events.last_id(db, user_id)
            since = int(raw_since) if raw_since is not None else last
            # Replay is possible when nothing in between has been purged (ids have no gaps).
            replayable = since == last or (since < last and await events.retained(db, user_id, since + 1))
    except DatabaseUnavailable:
        await websocket.close(TRY_AGAIN_LATER, "the database is unavailable; reconnect shortly")
        return
    try:
        subscription = resources.hub.subscribe(user_id, after=since if replayable else last)
    except TooManyRequests as refused:
        await websocket.close(TOO_MANY, refused.message)
        return
    try:
        await websocket.send_text(message("ready", data={"userId": user_id, "lastEventId": last}))
        if not replayable:
            LIVE_RESYNCS.labels("not_retained").inc()
            await websocket.send_text(message("resync"))
        resources.hub.kick(user_id)
        await _serve(websocket, subscription, resources.settings.currency)
    except WebSocketDisconnect:
        pass
    finally:
        resources.hub.unsubscribe(subscription)


async def _authenticate(websocket: WebSocket, resources: Resources) -> str | None:
    token = websocket.query_params.get("token")
    if token is None:
        try:
            first = json.loads(await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT_SECONDS))
        except (TimeoutError, ValueError, WebSocketDisconnect, KeyError, RuntimeError):
            return None
        if isinstance(first, dict) and first.get("type") == "auth" and isinstance(first.get("token"), str):
            token = first["token"]
    if not token:
        return None
    try:
        return resources.verify_user_token(token)
    except Unauthorized:
        return None


async def _serve(websocket: WebSocket, subscription: Subscription, currency: str) -> None:
    """Send the client's events while answering its pings, until either side ends it."""
    lock = asyncio.Lock()  # the sender and the ping answers share one socket

    async def send_events() -> None:
        behind = asyncio.create_task(subscription.behind.wait())
        try:
            while True:
                next_event = asyncio.create_task(subscription.queue.get())
                done, _ = await asyncio.wait({next_event, behind}, return_when=asyncio.FIRST_COMPLETED)
                if next_event not in done:
                    next_event.cancel()
                    LIVE_RESYNCS.labels("fell_behind").inc()
                    async with lock:
                        await websocket.send_text(message("resync"))
                    await websocket.close(FELL_BEHIND, "fell behind: refetch and reconnect")
                    return
                event = next_event.result()
                data = {**event.data, "currency": currency} if event.type == events.BALANCE_UPDATED else event.data
                async with lock:
                    await websocket.send_text(message(event.type, event.id, data))
                LIVE_EVENTS_SENT.labels(event.type).inc()
        finally:
            behind.cancel()

    async def answer_pings() -> None:
        while True:
            text = await websocket.receive_text()
            with contextlib.suppress(ValueError, AttributeError):  # anything but a ping is ignored
                if json.loads(text).get("type") == "ping":
                    async with lock:
                        await websocket.send_text(message("pong"))

    sender = asyncio.create_task(send_events())
    receiver = asyncio.create_task(answer_pings())
    try:
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, WebSocketDisconnect):
                raise error
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
        if websocket.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError):
                await websocket.close()
