"""Request ids: every HTTP request and WebSocket gets one, every log line about it names it, and the caller sees it.

An incoming `X-Request-Id` that is a sane token (what a proxy or the merchant's platform generated, so one id
follows the call across their logs and ours) is kept; anything else is replaced by a fresh one. The id is answered
in the `X-Request-Id` response header (for a WebSocket, on its handshake's answer).
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from assetpay_merchant.observability import begin_request, end_request

HEADER = "X-Request-Id"
_HEADER = HEADER.lower().encode()
SANE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}")
"""What we accept from outside: short, printable and free of spaces, quotes and separators, so a hostile value
cannot forge log fields or fill the logs."""
_ANSWERS = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})


def incoming(scope: Scope) -> str | None:
    """The caller's request id, when it sent a sane one."""
    for name, value in scope["headers"]:
        if name == _HEADER:
            return value.decode("ascii") if SANE.fullmatch(value) else None
    return None


class RequestIds:
    """ASGI middleware: sets the request id (and a clean log context) for the request's whole life, and answers it
    in `X-Request-Id`. Pure ASGI, so the context it sets is the one the route, its dependencies and the services
    run in."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = incoming(scope) or uuid.uuid4().hex
        header = (_HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] in _ANSWERS:
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        tokens = begin_request(request_id)
        await self.app(scope, receive, send_with_id)
        # Only after a normal end: an exception still on its way out is logged by the server above us, and that
        # line should name the request too. The server runs each request in a task of its own, so nothing leaks.
        end_request(tokens)
