"""`assetpay-merchant sandbox` as a real process: it serves, its callbacks reach a receiver over real HTTP, it stops
cleanly, and with a database a restarted one carries on."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from assetpay_merchant.cli import main
from assetpay_merchant.gateway.signature import SIGNATURE_HEADER, verify
from tests.conftest import ScratchDatabases
from tests.processes import CLI, clean_env, free_port

API_KEY = "ap_e2e_key"
API_SECRET = "e2e-sandbox-secret-not-the-published-one"
MERCHANT_ID = "22222222-3333-4444-8555-666666666666"
TRADE_URL = "https://steamcommunity.com/tradeoffer/new/?partner=39734273&token=AbCdEf12"


class CallbackReceiver:
    """The merchant's webhook on a real port: records every verified callback and answers 200."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                # Signed with our secret, and stamped with the real clock's time (checked within ±300 s).
                header = self.headers[SIGNATURE_HEADER]
                delivery = verify(header, raw, secrets=[API_SECRET.encode()], now=datetime.now(UTC))
                receiver.received.append((delivery.delivery_id, json.loads(raw)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/assetpay"

    def statuses(self, trade_id: str) -> list[str]:
        return [body["trade"]["status"] for _, body in list(self.received) if body["trade"]["id"] == trade_id]


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    callbacks = CallbackReceiver()
    thread = threading.Thread(target=callbacks.server.serve_forever, daemon=True)
    thread.start()
    yield callbacks
    callbacks.server.shutdown()
    callbacks.server.server_close()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextmanager
def sandbox_process(workdir: Path, *args: str) -> Iterator[str]:
    """`assetpay-merchant sandbox` with test credentials, until /_sandbox answers; yields its base URL, and on the way
    out stops it with SIGTERM and checks it exited cleanly."""
    port = free_port()
    log_path = workdir / f"sandbox-{port}.log"
    env = clean_env(
        SANDBOX_API_KEY=API_KEY, SANDBOX_API_SECRET=API_SECRET, SANDBOX_MERCHANT_ID=MERCHANT_ID, LOG_LEVEL="WARNING"
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603
            [str(CLI), "sandbox", "--port", str(port), *args],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{base}/_sandbox", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        try:
            _wait_for(answers, "the sandbox to answer", timeout=60)
            yield base
        finally:
            process.terminate()
            try:
                code = process.wait(timeout=30)
            finally:
                process.kill()
    # uvicorn shuts down gracefully (lifespan: the final save), then re-raises the signal it caught.
    assert code in (0, -signal.SIGTERM), log_path.read_text()
    assert "Traceback" not in log_path.read_text()


def _deposit(base: str) -> dict[str, Any]:
    with httpx.Client(base_url=base, timeout=10) as http:
        body = {"clientSteamId": "76561198000000001", "clientTradeUrl": TRADE_URL, "clientId": "e2e"}
        token = http.post("/auth/authenticate-client", json=body, headers={"api-key": API_KEY}).json()["data"]["token"]
        headers = {"Authorization": f"Bearer {token}"}
        params = {"acceptedOnly": "true", "sort": "priceAsc"}
        item = http.get("/client/inventory", params=params, headers=headers).json()["data"]["inventory"][0]
        wanted = {"items": [{"itemId": item["id"], "price": item["offer"]["price"]}], "isInstant": True}
        answer = http.post("/client/trading/deposit", json=wanted, headers=headers)
        assert answer.status_code == 200, answer.text
        trade: dict[str, Any] = answer.json()["data"]
        return trade


def test_the_sandbox_serves_alone_and_calls_back(tmp_path: Path, receiver: CallbackReceiver) -> None:
    flags = ("--duplicate-rate", "1", "--seed", "5", "--step-seconds", "0.2", "--hold-seconds", "0.4")
    with sandbox_process(tmp_path, "--memory", "--callback-url", receiver.url, *flags) as base:
        overview = httpx.get(f"{base}/_sandbox").json()["data"]
        assert overview["merchantId"] == MERCHANT_ID
        assert (overview["persistent"], overview["running"]) == (False, True)
        chaos = httpx.get(f"{base}/_sandbox/chaos").json()["data"]
        assert (chaos["duplicateRate"], chaos["seed"]) == (1, 5)
        trade = _deposit(base)
        _wait_for(lambda: receiver.statuses(trade["id"]).count("completed") == 2, "completed, twice")
    ids = [delivery_id for delivery_id, body in receiver.received if body["trade"]["status"] == "completed"]
    assert ids[0] == ids[1], "the duplicate carries the same delivery id"
    assert set(receiver.statuses(trade["id"])) == {"initiated", "active", "hold", "completed"}


@pytest.fixture
async def sandbox_db(scratch: ScratchDatabases) -> str:
    return await scratch.create("assetpay_sandbox_cmd")


def test_a_restarted_sandbox_keeps_its_trades(tmp_path: Path, receiver: CallbackReceiver, sandbox_db: str) -> None:
    flags = ("--database-url", sandbox_db, "--callback-url", receiver.url, "--step-seconds", "0.2")
    with sandbox_process(tmp_path, *flags, "--hold-seconds", "3600") as base:
        trade = _deposit(base)
        _wait_for(lambda: "hold" in receiver.statuses(trade["id"]), "the trade to reach hold")
    # Stopped (SIGTERM, like Ctrl-C); the next one on the same database finds the trade still in its hold.
    with sandbox_process(tmp_path, *flags, "--hold-seconds", "3600") as base:
        kept = httpx.get(f"{base}/_sandbox/trades/{trade['id']}").json()["data"]
        assert kept["status"] == "hold"
        moved = httpx.post(f"{base}/_sandbox/trades/{trade['id']}/advance", params={"to": "completed"})
        assert moved.json()["data"]["status"] == "completed"
        _wait_for(lambda: "completed" in receiver.statuses(trade["id"]), "the completed callback")
    assert receiver.statuses(trade["id"]) == ["initiated", "active", "hold", "completed"]


def test_bad_flags_are_refused() -> None:
    with pytest.raises(SystemExit) as refused:
        main(["sandbox", "--drop-rate", "2"])
    assert refused.value.code == 2
    with pytest.raises(SystemExit):
        main(["sandbox", "--memory", "--database-url", "postgresql://x/y"])
