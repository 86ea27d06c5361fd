"""Which web pages may use the API from a browser: the allow-list CORS_ORIGINS (exact origins, checked and written
the way browsers send them by `config`), for the REST API and for the WebSocket handshake alike.

REST: CORS for the `/v1` API only, and only for a listed origin, through Starlette's CORSMiddleware. Every other
request is answered as if CORS did not exist (no `Access-Control-*` header at all), so a page on any other origin
cannot read an answer, and its preflights fail. The webhook (AssetPay calls it server to server) and the ops routes
are outside `/v1` and never answer cross-origin. The admin routes are inside `/v1`, but `X-Admin-Key` is not an
allowed request header: a browser cannot send the admin key cross-origin, which is right, since the key must never
live in a browser.

WebSocket: CORS does not apply to it (a browser opens any socket it is told to and only sends `Origin`), so the
handshake is checked here: an `Origin` that is neither listed nor the server's own is refused with HTTP 403 before
the socket opens, so nothing is ever sent to it. A client that sends no `Origin` is not a browser page and goes on
to authenticate as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

PREFIX = "/v1"
METHODS = ("GET", "POST")  # the end-user API's; PUT is the platform's (admin key), never a browser's
REQUEST_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key")
# What a frontend reads beyond the CORS-safelisted headers (X-Request-Id: to quote in a support ticket).
EXPOSED_HEADERS = ("Retry-After", "Idempotent-Replayed", "X-Request-Id")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class BrowserOrigins:
    """ASGI middleware: CORS for listed origins on `/v1`, and the same allow-list for WebSocket handshakes."""

    def __init__(self, app: ASGIApp, *, origins: Collection[str], max_age: int) -> None:
        self.app = app
        self.origins = frozenset(origins)
        self.cors = CORSMiddleware(
            app,
            allow_origins=sorted(self.origins),
            allow_methods=METHODS,
            allow_headers=REQUEST_HEADERS,
            allow_credentials=True,
            expose_headers=EXPOSED_HEADERS,
            max_age=max_age,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self.may_open(origin, headers.get("host")):
                log.info("refused a WebSocket handshake from origin %r", origin)
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403
                return
        elif scope["type"] == "http" and _covered(scope["path"]) and Headers(scope=scope).get("origin") in self.origins:
            await self.cors(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def may_open(self, origin: str, host: str | None) -> bool:
        """A page on `origin` may open a socket on the server reached as `host`: it is listed, or it is the
        server's own."""
        return origin in self.origins or same_origin(origin, host)


def same_origin(origin: str, host: str | None) -> bool:
    """The page was served by this server: its host and port are the `Host` the handshake was sent to. The scheme
    is not compared (behind a TLS-terminating proxy the server cannot see it; a page on this very host and port is
    ours either way); only its default port is used when a side names none."""
    if host is None:
        return False
    try:
        page = urlsplit(origin)
        server = urlsplit(f"//{host}")
        default = _DEFAULT_PORTS.get(page.scheme)
        if default is None or not page.hostname or page.path or page.username is not None:
            return False
        return (page.hostname, page.port or default) == (server.hostname, server.port or default)
    except ValueError:  # a port that is not a number
        return False


def _covered(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")
