"""Bounds on every exchange with AssetPay that httpx's own timeouts do not give: a deadline for the whole exchange
(httpx's read timeout is per read, so a body trickled a byte at a time never times out) and a cap on the size of an
answer (httpx would buffer any size in memory).

Failures surface as the httpx errors the client already classifies: past the deadline `httpx.ReadTimeout` (our
504 `UPSTREAM_TIMEOUT`), past the cap `ResponseTooLarge`, a protocol error (502; for a write, an unknown outcome).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx


class ResponseTooLarge(httpx.RemoteProtocolError):
    """AssetPay's answer is larger than any answer of its API can be."""


class BoundedTransport(httpx.AsyncBaseTransport):
    """`inner`, except that each exchange must end within `deadline` seconds and bring at most `max_bytes` of body."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, deadline: float, max_bytes: int) -> None:
        self._inner = inner
        self._deadline = deadline
        self._max_bytes = max_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ends = asyncio.get_running_loop().time() + self._deadline
        try:
            async with asyncio.timeout_at(ends):
                response = await self._inner.handle_async_request(request)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no answer within {self._deadline:g} s", request=request) from None
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            await response.aclose()
            raise ResponseTooLarge(f"an answer of {declared} bytes (at most {self._max_bytes})", request=request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_BoundedStream(response.stream, request, ends=ends, deadline=self._deadline, cap=self._max_bytes),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _BoundedStream(httpx.AsyncByteStream):
    """The body of one answer, read until the exchange's deadline and up to its cap."""

    def __init__(
        self, inner: httpx.AsyncByteStream, request: httpx.Request, *, ends: float, deadline: float, cap: int
    ) -> None:
        self._inner = inner
        self._request = request
        self._ends = ends
        self._deadline = deadline
        self._cap = cap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._inner.__aiter__()
        size = 0
        while True:
            try:
                async with asyncio.timeout_at(self._ends):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                message = f"the answer did not end within {self._deadline:g} s"
                raise httpx.ReadTimeout(message, request=self._request) from None
            size += len(chunk)
            if size > self._cap:
                raise ResponseTooLarge(f"an answer of more than {self._cap} bytes", request=self._request)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
