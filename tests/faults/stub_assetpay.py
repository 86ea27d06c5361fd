"""A misbehaving AssetPay on loopback: a raw asyncio HTTP server that answers every request the way `mode` says
(never, with HTML, with JSON cut short, with a body far larger than any real answer, ...), and counts requests.

Raw sockets rather than a framework, so it can break HTTP itself (a Content-Length it never honours) and hang
without a timer of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["hang", "html", "html_502", "cut_json", "short_body", "huge", "huge_unframed", "trickle"]

HTML = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
CUT_JSON = b'{"requestId":"stub-1","success":true,"data":{"items":[{"id":"730_1","price":1.2'
HUGE_BYTES = 64 * 1024 * 1024  # far beyond any real answer (a market page is tens of kB)
CHUNK = 64 * 1024


@dataclass
class StubAssetPay:
    """The stub's state: what it does now, and what it was asked."""

    mode: Mode = "hang"
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    """Set on the way out: hanging handlers end, so the server closes cleanly."""

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            self.requests.append(request_line)
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            await self.answer(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the backend gave up on us: that is the point
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def answer(self, writer: asyncio.StreamWriter) -> None:
        if self.mode == "hang":
            await self.release.wait()  # read the request, never say a word
            return
        if self.mode == "trickle":
            # Headers at once, then one byte of body now and then: each read is quick, the answer never ends.
            writer.write(_head(200, "application/json", 1_000_000))
            while not self.release.is_set():
                writer.write(b" ")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), timeout=0.2)
            return
        if self.mode == "html":
            writer.write(_head(200, "text/html", len(HTML)) + HTML)
        elif self.mode == "html_502":
            writer.write(_head(502, "text/html", len(HTML)) + HTML)
        elif self.mode == "cut_json":
            writer.write(_head(200, "application/json", len(CUT_JSON)) + CUT_JSON)  # well framed, not JSON
        elif self.mode == "short_body":
            writer.write(_head(200, "application/json", len(CUT_JSON) * 10) + CUT_JSON)  # promises more, hangs up
        elif self.mode in ("huge", "huge_unframed"):
            await self._huge(writer, declared=self.mode == "huge")
            return
        await writer.drain()

    async def _huge(self, writer: asyncio.StreamWriter, *, declared: bool) -> None:
        """A well-formed market page carrying one string HUGE_BYTES long; `declared`: with its Content-Length, else
        delimited by the end of the connection (nothing says how big it is until it has all arrived)."""
        opening, closing = b'{"requestId":"stub-huge","success":true,"data":{"items":[],"count":0,"junk":"', b'"}}'
        length = len(opening) + HUGE_BYTES + len(closing) if declared else None
        writer.write(_head(200, "application/json", length) + opening)
        chunk = b"x" * CHUNK
        for _ in range(HUGE_BYTES // CHUNK):
            if writer.is_closing():
                return  # the backend stopped reading
            writer.write(chunk)
            await writer.drain()
        writer.write(closing)
        await writer.drain()


def _head(status: int, content_type: str, length: int | None) -> bytes:
    reason = {200: "OK", 502: "Bad Gateway"}[status]
    framing = f"Content-Length: {length}\r\n" if length is not None else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{framing}Connection: close\r\n\r\n"
    ).encode()


@asynccontextmanager
async def stub_assetpay(mode: Mode) -> AsyncIterator[StubAssetPay]:
    """The stub listening on a free loopback port until the block ends."""
    stub = StubAssetPay(mode)
    server = await asyncio.start_server(stub.handle, stub.host, 0)
    stub.port = server.sockets[0].getsockname()[1]
    try:
        yield stub
    finally:
        stub.release.set()
        server.close()
        await server.wait_closed()
