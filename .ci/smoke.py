"""The quick start, for real: `assetpay-merchant dev` with no DATABASE_URL and no AssetPay credentials.

Starts it on a free port with an empty data directory, waits until it is ready, then registers a user, delivers a
callback signed with the sandbox secret and reads the balance back; fetches the /demo storefront and takes a deposit
through the public API and the sandbox to hold; stops it with Ctrl-C (SIGINT), starts it again on the same data
directory and finds the trade still in hold at the sandbox, then completes it. Stops the server whatever happens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import jwt
import simplejson

from assetpay_merchant.gateway.signature import signature_header
from assetpay_sandbox.credentials import SANDBOX_API_SECRET
from assetpay_sandbox.dev import DEV_ADMIN_API_KEY, DEV_AUTH_JWT_SECRET

STARTUP_SECONDS = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"assetpay-merchant dev exited early with {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("assetpay-merchant dev did not become ready in time")


def exercise(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as http:
        ping = http.post("/webhooks/assetpay", json={"test": True, "message": "ping"})
        assert ping.status_code == 200, ping.text
        profile = {
            "steamId": "76561198000000001",
            "tradeUrl": "https://steamcommunity.com/tradeoffer/new/?partner=39734273&token=AbCdEf12",
        }
        created = http.put("/v1/users/smoke", json=profile, headers={"X-Admin-Key": DEV_ADMIN_API_KEY})
        assert created.status_code in (200, 201), created.text
        trade = {
            "id": str(uuid.uuid4()),
            "type": "deposit",
            "status": "hold",
            "totalPrice": Decimal("10.75"),
            "preCredit": Decimal("4.25"),
            "pendingCredit": Decimal("6.50"),
            "externalClientUserId": "smoke",
        }
        body = simplejson.dumps({"trade": trade}, use_decimal=True).encode()
        timestamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        header = signature_header(SANDBOX_API_SECRET.encode(), f"smoke-{uuid.uuid4()}", timestamp, body)
        delivered = http.post(
            "/webhooks/assetpay",
            content=body,
            headers={"X-AssetPay-Signature": header, "Content-Type": "application/json"},
        )
        assert delivered.status_code == 200, delivered.text
        token = jwt.encode({"sub": "smoke", "exp": int(time.time()) + 60}, DEV_AUTH_JWT_SECRET, algorithm="HS256")
        balance = http.get("/v1/balance", headers={"Authorization": f"Bearer {token}"}).json()
        assert balance == {"available": "4.25", "pending": "6.50", "currency": "USD"}, balance
        print(f"smoke ok: ping answered, deposit pre-credited, balance {balance}")


def trade_through_the_sandbox(base: str) -> str:
    """The storefront's flow on the public API: register, inventory, deposit; the sandbox takes it to hold.
    Returns AssetPay's id of the deposit."""
    token = jwt.encode({"sub": "smoke-demo", "exp": int(time.time()) + 600}, DEV_AUTH_JWT_SECRET, algorithm="HS256")
    user = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=30) as http:
        page = http.get("/demo/")
        assert page.status_code == 200, page.text[:200]
        assert "text/html" in page.headers["content-type"]
        profile = {
            "steamId": "76561198000000002",
            "tradeUrl": "https://steamcommunity.com/tradeoffer/new/?partner=39734274&token=AbCdEf13",
        }
        created = http.put("/v1/users/smoke-demo", json=profile, headers={"X-Admin-Key": DEV_ADMIN_API_KEY})
        assert created.status_code in (200, 201), created.text
        items = [i for i in http.get("/v1/inventory", headers=user).json()["items"] if i.get("accepted") is not False]
        deposit = http.post(
            "/v1/deposits",
            json={"items": [{"itemId": items[0]["id"], "price": items[0]["price"]}], "isInstant": True},
            headers=user | {"Idempotency-Key": str(uuid.uuid4())},
        )
        assert deposit.status_code == 201, deposit.text
        trade = deposit.json()
        wait_for(lambda: http.get(f"/v1/trades/{trade['id']}", headers=user).json()["status"] == "hold", "hold")
        print(f"smoke ok: /demo served, deposit {trade['id']} in hold through the sandbox")
        return str(trade["assetpayId"])


def finish_after_restart(base: str, assetpay_id: str) -> None:
    """After a restart the sandbox still has the trade in hold; completing it credits the whole price."""
    token = jwt.encode({"sub": "smoke-demo", "exp": int(time.time()) + 600}, DEV_AUTH_JWT_SECRET, algorithm="HS256")
    user = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=30) as http:
        kept = http.get(f"/sandbox/_sandbox/trades/{assetpay_id}")
        assert kept.status_code == 200, kept.text
        assert kept.json()["data"]["status"] == "hold", kept.text
        total = Decimal(str(kept.json()["data"]["totalPrice"]))
        moved = http.post(f"/sandbox/_sandbox/trades/{assetpay_id}/advance", params={"to": "completed"})
        assert moved.status_code == 200, moved.text
        wait_for(lambda: Decimal(http.get("/v1/balance", headers=user).json()["available"]) == total, "credit")
        print(f"smoke ok: the trade in hold survived the restart and completed, balance {total}")


def wait_for(condition: Callable[[], bool], what: str, *, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"smoke: no {what} after {seconds:g} s")
        time.sleep(0.3)


@contextmanager
def dev(env: dict[str, str], port: int) -> Iterator[str]:
    """`assetpay-merchant dev` until Ctrl-C (SIGINT), as a person runs it."""
    base = f"http://127.0.0.1:{port}"
    cli = Path(sys.executable).with_name("assetpay-merchant")
    process = subprocess.Popen([str(cli), "dev", "--port", str(port)], env=env)  # noqa: S603
    try:
        wait_ready(base, process)
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "ASSETPAY_", "AUTH_JWT_", "ADMIN_API_KEY", "SANDBOX_"))
    }
    env |= {"SANDBOX_STEP_SECONDS": "1", "SANDBOX_HOLD_SECONDS": "3600"}  # a hold that outlasts the restart
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="assetpay-smoke-") as data_dir:
        env["DATA_DIR"] = data_dir
        with dev(env, port) as base:
            exercise(base)
            in_hold = trade_through_the_sandbox(base)
        with dev(env, port) as base:  # the same embedded database: the sandbox's state is still there
            finish_after_restart(base, in_hold)


if __name__ == "__main__":
    main()
