"""CORS as a real browser enforces it: `assetpay-merchant serve` with CORS_ORIGINS listing one origin, and a
frontend page served from a second origin (listed) and from a third one (not listed). The page calls the API with
`fetch()` (Authorization and Idempotency-Key, so the browser sends a preflight first) and opens the WebSocket."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from assetpay_merchant.store.database import create_engine
from tests.processes import serve_process
from tests.support import ADMIN_KEY, TRADE_URL, new_steam_id, user_token

USER = "browser-cors"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>frontend</title></head>
<body><h1>frontend on <span id="origin"></span></h1><pre id="report">running…</pre>
<script type="application/json" id="config">CONFIG</script>
<script>
const config = JSON.parse(document.getElementById("config").textContent);
document.getElementById("origin").textContent = location.origin;

async function withdraw() {
  // Authorization and Idempotency-Key are not CORS-safelisted: the browser asks the server first (a preflight).
  const response = await fetch(`http://${config.api}/v1/withdrawals`, {
    method: "POST",
    credentials: "include",
    headers: {
      "Authorization": `Bearer ${config.token}`,
      "Content-Type": "application/json",
      "Idempotency-Key": config.key,
    },
    body: JSON.stringify({items: [{itemId: "listing-1", price: "5.00"}]}),
  });
  return {status: response.status, body: await response.json(),
          replayed: response.headers.get("Idempotent-Replayed")};
}

async function attempt(call) {
  try { return await call(); } catch (error) { return {error: String(error)}; }
}

function live() {
  return new Promise(resolve => {
    const socket = new WebSocket(`ws://${config.api}/v1/ws?token=${config.token}`);
    socket.onmessage = event => { resolve({message: JSON.parse(event.data)}); socket.close(); };
    socket.onclose = event => resolve({closed: event.code});
  });
}

(async () => {
  const result = {first: await attempt(withdraw), again: await attempt(withdraw), socket: await live()};
  document.getElementById("report").textContent = JSON.stringify(result, null, 2);
  window.outcome = result;  // not `result`: the <pre> with that id would answer to it
})();
</script>
</body></html>
"""


@dataclass
class StaticSite:
    """A frontend page served on its own loopback port: its own origin."""

    server: ThreadingHTTPServer
    page: bytes = b""

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def site() -> Iterator[Any]:
    """Starts static sites on free ports (each another origin) and stops them on the way out."""
    started: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start() -> StaticSite:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(served.page)))
                self.end_headers()
                self.wfile.write(served.page)

            def log_message(self, *_: object) -> None:  # quiet
                pass

        served = StaticSite(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        thread = threading.Thread(target=served.server.serve_forever, daemon=True)
        thread.start()
        started.append((served.server, thread))
        return served

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def register(api: str) -> None:
    response = httpx.put(
        f"http://{api}/v1/users/{USER}",
        json={"steamId": new_steam_id(), "tradeUrl": TRADE_URL},
        headers={"X-Admin-Key": ADMIN_KEY},
        timeout=10,
    )
    assert response.status_code in (200, 201), response.text


async def keys_stored(database_url: str) -> int:
    """Idempotency keys the backend recorded for the user: a withdrawal it was asked for, if any."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            count = await connection.scalar(
                text("SELECT count(*) FROM idempotency_keys WHERE user_id = :user"), {"user": USER}
            )
    finally:
        await engine.dispose()
    return int(count or 0)


async def open_page(browser: Any, site: StaticSite, api: str, screenshot: Path) -> tuple[dict[str, Any], list[str]]:
    """What the frontend page on `site` saw, and what the browser said in its console."""
    config = {"api": api, "token": user_token(USER), "key": str(uuid.uuid4())}
    site.page = PAGE.replace("CONFIG", json.dumps(config)).encode()
    context = await browser.new_context()
    try:
        page = await context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.on("pageerror", lambda error: console.append(f"page error: {error}"))
        await page.goto(site.origin + "/")
        await page.wait_for_function("window.outcome !== undefined", timeout=15_000)
        result: dict[str, Any] = await page.evaluate("window.outcome")
        await page.screenshot(path=str(screenshot), full_page=True)
    finally:
        await context.close()
    return result, console


async def test_a_listed_origin_calls_the_api_and_a_foreign_one_is_kept_out(
    browser, site, database_url, tmp_path, screenshots
):
    listed, foreign = site(), site()
    with serve_process(
        database_url, tmp_path, CORS_ORIGINS=listed.origin, LOG_LEVEL="INFO", RECONCILE_INTERVAL_SECONDS="0"
    ) as api:
        register(api)

        shown, _ = await open_page(browser, listed, api, screenshots / "listed-origin.png")
        assert shown["first"]["status"] == 402, shown  # the API's own answer, readable by the page
        assert shown["first"]["body"]["error"]["key"] == "INSUFFICIENT_BALANCE"
        assert (shown["again"]["status"], shown["again"]["replayed"]) == (402, "true")  # an exposed header
        assert shown["socket"]["message"]["type"] == "ready"
        assert shown["socket"]["message"]["data"]["userId"] == USER
        assert await keys_stored(database_url) == 1

        kept_out, console = await open_page(browser, foreign, api, screenshots / "foreign-origin.png")
        assert "Failed to fetch" in kept_out["first"].get("error", ""), kept_out
        assert any("CORS policy" in line for line in console), console
        assert await keys_stored(database_url) == 1  # the preflight failed, so the POST was never sent
        assert "message" not in kept_out["socket"], kept_out  # refused at the handshake: nothing was received
        assert kept_out["socket"]["closed"] == 1006
        assert any("Unexpected response code: 403" in line for line in console), console
        port = api.rsplit(":", 1)[1]
        assert (
            f"refused a WebSocket handshake from origin '{foreign.origin}'"
            in (tmp_path / f"serve-{port}.log").read_text()
        )
    assert (screenshots / "listed-origin.png").stat().st_size > 0
    assert (screenshots / "foreign-origin.png").stat().st_size > 0
