"""JSON request bodies decoded with `parse_float=Decimal`, so a price in a request never passes through a float.

FastAPI reads bodies with `request.json()`; this route class hands it a request whose `json()` keeps numbers exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class _ExactJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), parse_float=Decimal)
        return self._json


class ExactJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def exact_json_handler(request: Request) -> Response:
            return await handler(_ExactJSONRequest(request.scope, request.receive))

        return exact_json_handler
