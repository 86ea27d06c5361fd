"""A real `assetpay-merchant serve` (two workers, LOG_LEVEL=DEBUG) through a realistic day, with the sandbox as
AssetPay over real HTTP: its complete log output holds no secret, its lines name their requests and users, and
every metric the shipped alert rules and dashboard use is in its /metrics.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from assetpay_merchant.store.migrations import upgrade_async
from tests.conftest import ScratchDatabases
from tests.e2e.test_real_processes import MERCHANT_ID, sandbox_process
from tests.processes import CLI, SECRETS, clean_env, free_port, serve_process
from tests.support import (
    ADMIN_KEY,
    JWT_SECRET,
    PREVIOUS_WEBHOOK_SECRET,
    TRADE_URL,
    WEBHOOK_SECRET,
    dumps,
    new_steam_id,
    signed,
    trade,
    user_token,
)

DEPLOY = Path(__file__).parents[2] / "deploy"
WAIT_SECONDS = 60


@dataclass
class Served:
    """What the day left behind: every line the backend and the commands logged, the secrets that must not be in
    them, and the backend's last /metrics."""

    logs: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    metrics: str = ""
    request_ids: list[str] = field(default_factory=list)


async def _database_with_password(scratch: ScratchDatabases) -> tuple[str, str]:
    """A migrated database reached as a role of its own with a password (the test server's own URL has none)."""
    url = await scratch.create("assetpay_obs")
    await upgrade_async(url)
    role, password = f"obs_{uuid.uuid4().hex[:8]}", f"pw-{secrets.token_urlsafe(18)}"
    admin = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        await admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        await admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    finally:
        await admin.close()
    parsed = make_url(url).set(username=role, password=password)
    return parsed.render_as_string(hide_password=False), password


async def _until(check: Any, what: str) -> Any:
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.2)
    raise AssertionError(what)  # pragma: no cover - the timeout raises first


def _command(args: list[str], env: dict[str, str], workdir: Path) -> str:
    """Run an ops command as ops would, with the backend's settings; its whole output."""
    done = subprocess.run(  # noqa: S603
        [str(CLI), *args], env=env, cwd=workdir, capture_output=True, text=True, timeout=120, check=False
    )
    return done.stdout + done.stderr


async def _day(backend: httpx.AsyncClient, sandbox: httpx.AsyncClient, address: str, served: Served) -> None:
    """Everything a merchant's day brings, the unhappy paths included."""
    admin = {"X-Admin-Key": ADMIN_KEY}
    steam = {user: new_steam_id() for user in ("obs-1", "obs-2")}
    for user, steam_id in steam.items():
        answer = await backend.put(
            f"/v1/users/{user}", json={"steamId": steam_id, "tradeUrl": TRADE_URL}, headers=admin
        )
        assert answer.status_code == 201, answer.text
    wrong = await backend.put("/v1/users/obs-3", json={}, headers={"X-Admin-Key": ADMIN_KEY + "-wrong"})
    assert wrong.status_code == 403
    assert (await backend.get("/v1/admin/trades")).status_code == 401

    tokens = {user: user_token(user) for user in steam}
    served.secrets |= {f"JWT of {user}": token for user, token in tokens.items()}
    expired = user_token("obs-1", expires_in=-60)
    forged = user_token("obs-1", secret="not-the-platform-secret-but-32-bytes-long")
    served.secrets |= {"expired JWT": expired, "forged JWT": forged}
    for bad in (expired, forged, "garbage-bearer-value"):
        answer = await backend.get("/v1/me", headers={"Authorization": f"Bearer {bad}"})
        assert answer.status_code == 401

    def user(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[name]}"}

    assert (await backend.get("/v1/me", headers=user("obs-1"))).status_code == 200
    client_token = await backend.post("/v1/client-token", headers=user("obs-1"))
    assert client_token.status_code == 200, client_token.text
    served.secrets["client token"] = client_token.json()["token"]

    # A deposit AssetPay (the sandbox) completes; its signed callbacks come back through the webhook.
    traced = {**user("obs-1"), "X-Request-Id": "platform-trace-42"}  # the platform's id, followed into our logs
    inventory = await backend.get("/v1/inventory", params={"game": "730"}, headers=traced)
    assert inventory.status_code == 200, inventory.text
    assert inventory.headers["x-request-id"] == "platform-trace-42"
    served.request_ids.append("platform-trace-42")
    item = next(i for i in inventory.json()["items"] if i.get("accepted") is not False)
    deposit = await backend.post(
        "/v1/deposits",
        json={"items": [{"itemId": item["id"], "price": item["price"]}], "game": "730"},
        headers={**user("obs-1"), "Idempotency-Key": str(uuid.uuid4())},
    )
    assert deposit.status_code == 201, deposit.text
    served.request_ids.append(deposit.headers["x-request-id"])
    trade_id, ref = deposit.json()["id"], deposit.json()["assetpayId"]
    moved = await sandbox.post(f"/_sandbox/trades/{ref}/advance", params={"to": "completed"})
    assert moved.status_code == 200, moved.text

    async def completed() -> bool:
        answer = await backend.get(f"/v1/trades/{trade_id}", headers=user("obs-1"))
        return bool(answer.json()["status"] == "completed")

    await _until(completed, "the deposit did not complete")

    # A withdrawal: AssetPay asks for approval (the user is funded first by an operator's adjustment).
    funded = await backend.post(
        "/v1/admin/adjustments",
        json={"userId": "obs-1", "amount": "500.00", "reason": "observability test"},
        headers={**admin, "X-Actor": "ops@example.com", "Idempotency-Key": str(uuid.uuid4())},
    )
    assert funded.status_code == 201, funded.text
    market = await backend.get("/v1/market", params={"sort": "priceAsc", "perPage": 5}, headers=user("obs-1"))
    assert market.status_code == 200, market.text
    listing = market.json()["items"][0]
    withdrawal = await backend.post(
        "/v1/withdrawals",
        json={"items": [{"itemId": listing["id"], "price": listing["price"]}]},
        headers={**user("obs-1"), "Idempotency-Key": str(uuid.uuid4())},
    )
    assert withdrawal.status_code == 201, withdrawal.text
    withdrawal_ref = withdrawal.json()["assetpayId"]

    async def decided() -> bool:
        answer = await sandbox.get(f"/_sandbox/trades/{withdrawal_ref}")
        return bool(answer.json()["data"]["status"] != "initiated")

    await _until(decided, "AssetPay never had the approval answered")

    # Callbacks signed with the previous secret (a rotation), with a wrong one, and too old.
    held = dumps({"trade": trade(status="hold", total="20.00", user_id="obs-2", steam_id=steam["obs-2"])})
    rotated = await backend.post(
        "/webhooks/assetpay", content=held, headers=signed(held, secret=PREVIOUS_WEBHOOK_SECRET)
    )
    assert rotated.status_code == 200, rotated.text
    unreadable = dumps({"trade": {"id": f"t-{uuid.uuid4()}", "type": "deposit", "status": "hold"}})
    refused = await backend.post("/webhooks/assetpay", content=unreadable, headers=signed(unreadable))
    assert refused.status_code == 422  # kept for review, and logged with its delivery
    for headers in (
        signed(held, secret=b"a-secret-nobody-configured"),
        signed(held, at=datetime.now(UTC) - timedelta(hours=1)),
    ):
        assert (await backend.post("/webhooks/assetpay", content=held, headers=headers)).status_code == 401

    # WebSockets: the token in the query (uvicorn logs the URL), as the first message, and a bad one.
    async with connect(f"ws://{address}/v1/ws?token={tokens['obs-1']}") as socket:
        assert json.loads(await socket.recv())["type"] == "ready"
        assert socket.response is not None
        assert re.fullmatch(r"[0-9a-f]{32}", socket.response.headers["x-request-id"])
    async with connect(f"ws://{address}/v1/ws") as socket:
        await socket.send(json.dumps({"type": "auth", "token": tokens["obs-2"]}))
        assert json.loads(await socket.recv())["type"] == "ready"
    async with connect(f"ws://{address}/v1/ws?token={forged}") as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401


def _series(exposition: str) -> dict[str, float]:
    return {
        f"{sample.name}{json.dumps(sample.labels, sort_keys=True)}": sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
async def served(scratch: ScratchDatabases, tmp_path_factory: pytest.TempPathFactory) -> Served:
    workdir = tmp_path_factory.mktemp("served")
    database_url, password = await _database_with_password(scratch)
    result = Served()
    result.secrets = {
        "AUTH_JWT_SECRET": JWT_SECRET,
        "ADMIN_API_KEY": ADMIN_KEY,
        "ASSETPAY_API_KEY": SECRETS["ASSETPAY_API_KEY"],
        "ASSETPAY_API_SECRET": WEBHOOK_SECRET.decode(),
        "ASSETPAY_API_SECRET_PREVIOUS": PREVIOUS_WEBHOOK_SECRET.decode(),
        "the database password": password,
    }
    sandbox_port = free_port()
    settings = {
        "LOG_LEVEL": "DEBUG",
        "ASSETPAY_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
        "ASSETPAY_MERCHANT_ID": MERCHANT_ID,
        "ASSETPAY_API_SECRET_PREVIOUS": PREVIOUS_WEBHOOK_SECRET.decode(),
        "MARKET_CACHE_TTL_SECONDS": "0",
        "RECONCILE_INTERVAL_SECONDS": "1",
        "RECONCILE_AFTER_SECONDS": "0",
        "LEDGER_CHECK_INTERVAL_SECONDS": "2",
        "METRICS_REFRESH_SECONDS": "1",
    }
    with serve_process(database_url, workdir, workers=2, **settings) as address:
        callback_url = f"http://{address}/webhooks/assetpay"
        with sandbox_process(workdir, port=sandbox_port, callback_url=callback_url, chaos=[]) as sandbox_url:
            async with (
                httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as backend,
                httpx.AsyncClient(base_url=sandbox_url, timeout=30) as sandbox,
            ):
                await _day(backend, sandbox, address, result)

                async def warmed() -> str | None:
                    # The background jobs have each had a turn (every worker answers for all of them).
                    exposition = (await backend.get("/metrics")).text
                    series = _series(exposition)
                    ran = series.get('ledger_check_runs_total{"result": "passed"}', 0) > 0
                    reconciled = series.get('reconciliation_passes_total{"outcome": "done"}', 0) > 0
                    refreshed = series.get("gauges_refreshed_timestamp_seconds{}", 0) > 0
                    return exposition if ran and reconciled and refreshed else None

                result.metrics = await _until(warmed, "the background jobs never ran")
            environment = clean_env(DATABASE_URL=database_url, **SECRETS) | settings
            commands = [["ledger", "check"], ["reconcile", "--older-than", "0"]]
            result.logs += "".join(_command(args, environment, workdir) for args in commands)
    result.logs += "".join(path.read_text() for path in workdir.glob("serve-*.log"))
    return result


def test_the_logs_hold_no_secret(served: Served) -> None:
    assert "DEBUG" in served.logs  # the whole output was captured, at the most talkative level
    assert "ledger check passed" in served.logs
    leaked = [name for name, value in served.secrets.items() if value in served.logs]
    assert leaked == []
    for name, value in served.secrets.items():
        if value.startswith("eyJ"):  # a JWT: no part of it either (its signature alone is a credential)
            assert not [part for part in value.split(".")[1:] if part in served.logs], name


def test_lines_name_their_request_and_user(served: Served) -> None:
    lines = served.logs.splitlines()
    for request_id in served.request_ids:
        assert any(f"request_id={request_id}" in line for line in lines), request_id
    assert any("user_id=obs-1" in line for line in lines)
    assert any(" refused: " in line and "delivery_id=dlv-" in line for line in lines)
    assert any("reconciliation" in line and "trade_id=" in line for line in lines)


def _promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords, label names or
    label values."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    keywords = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
    names = re.findall(r"(?<![\w$.])([A-Za-z_:][\w:]*)\b(?!\s*\()", expr)
    return {name for name in names if name.lower() not in keywords}


def _alert_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expressions = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            expressions.append(rule["expr"])
    return expressions


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "assetpay-merchant.json").read_text())
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"  # importable: Grafana asks for the data source
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_promql_reader_finds_names_and_nothing_else() -> None:
    expr = 'sum by (le) (rate(approval_seconds_bucket{verdict="approve"}[5m])) / on(x) up > 0.5 and foo_total'
    assert _promql_metrics(expr) == {"approval_seconds_bucket", "up", "foo_total"}


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_the_alerts_and_dashboard_use_is_exported(served: Served, source: str) -> None:
    expressions = _alert_expressions() if source == "alerts" else _dashboard_expressions()
    assert expressions
    used = set().union(*map(_promql_metrics, expressions))
    exported = {sample.name for family in text_string_to_metric_families(served.metrics) for sample in family.samples}
    built_in = {"up"}  # Prometheus' own, per scrape target
    assert sorted(used - exported - built_in) == []
