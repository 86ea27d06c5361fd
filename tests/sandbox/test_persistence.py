"""The sandbox kept in PostgreSQL: every field survives a dump and load, a stopped sandbox's successor on the same
database carries on where it stopped, changes are saved while it runs, and it all stays in its own schema."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any

import asyncpg
import httpx
import pytest
from alembic import command
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from assetpay_merchant.config import ConfigurationError, Settings
from assetpay_merchant.store import migrations
from assetpay_merchant.store.database import driver_dsn
from assetpay_sandbox import Sandbox, sandbox_of
from assetpay_sandbox.catalog import RUST
from assetpay_sandbox.chaos import ChaosSettings
from assetpay_sandbox.credentials import SANDBOX_MERCHANT_ID
from assetpay_sandbox.dev import create_dev_app, sandbox_clock
from assetpay_sandbox.persistence import SCHEMA, SandboxStore
from assetpay_sandbox.state import SandboxState, SimItem, SimTrade
from tests.conftest import ScratchDatabases
from tests.sandbox.helpers import (
    MERCHANT_ID,
    STEAM_ID,
    Clock,
    Receiver,
    client_token,
    data,
    deposit,
    depositable,
    dumps,
    market,
    withdraw,
)

KEPT = {
    "trades",
    "market_generations",
    "price_overrides",
    "collateral_overrides",
    "profiles",
    "inventory_fetched",
    "events",
}
CONFIGURED = {"step", "hold", "cancel_min_age"}  # the running sandbox's settings, not its state
DERIVED = {"live", "by_user", "external_ids"}  # indexes rebuilt from the trades
TRANSIENT = {"observers"}  # who listens in this process


@pytest.fixture
async def sandbox_db(scratch: ScratchDatabases) -> str:
    return await scratch.create("assetpay_sandbox")


async def _saved(url: str, merchant_id: str = MERCHANT_ID) -> dict[str, Any] | None:
    connection = await asyncpg.connect(driver_dsn(url))
    try:
        text = await connection.fetchval(f"SELECT data FROM {SCHEMA}.snapshots WHERE merchant_id = $1", merchant_id)
    finally:
        await connection.close()
    return None if text is None else json.loads(text)


def _api(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test")


async def _busy_sandbox(api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver, clock: Clock) -> None:
    """A sandbox with something in every field it keeps."""
    sandbox.configure_chaos(ChaosSettings(duplicate_rate=0.5, reorder=True, delay=1, drop_rate=0.1), seed=4)
    rich = await client_token(api, client_id="user-1", clientData={"kycLevel": 2, "totalWager": 1234.5})
    items = await depositable(api, rich)
    await api.put(f"/_sandbox/prices/{items[-1]['id']}", json={"price": 7})
    # Little provider collateral and some of the merchant's: an instant deposit draws on both.
    await api.put(f"/_sandbox/collateral/{STEAM_ID}", json={"collateral": 0.5})
    await api.put(f"/_sandbox/users/{STEAM_ID}/merchant-collateral", json={"amount": 100})
    held = data(await deposit(api, rich, items[:2], isInstant=True, externalId="dep-held"))
    await sandbox.advance(sandbox.state.trades[held["id"]])
    await sandbox.advance(sandbox.state.trades[held["id"]])  # hold: holdEndDate, offer id, activeAt
    reverted = data(await deposit(api, rich, items[2:3], isInstant=True))
    for _ in range(2):
        await sandbox.advance(sandbox.state.trades[reverted["id"]])
    await sandbox.advance(sandbox.state.trades[reverted["id"]], to="reverted", reverted_by="supplier")
    declined = data(await deposit(api, rich, items[3:4], isInstant=False))
    await sandbox.advance(sandbox.state.trades[declined["id"]], to="declined", error="OFFER_NOT_ACCEPTED")

    rust = await client_token(api, "76561198000000003", client_id=None)
    stack = next(i for i in await depositable(api, rust, game=RUST) if i["amount"] > 1)
    body = {"game": str(RUST), "items": [{"itemId": stack["id"], "price": stack["offer"]["price"], "amount": 2}]}
    data(await api.post("/client/trading/deposit", content=dumps(body), headers=rust))

    buyer = await client_token(api, "76561198000000004", client_id="user-4")
    listings = (await market(api, buyer))[:2]
    body = {
        "items": [
            {"itemId": i["id"], "price": i["offer"]["price"], "externalId": f"it-{n}"} for n, i in enumerate(listings)
        ],
        "externalId": "wd-1",
        "autoCancel": 60,
    }
    bought = data(await api.post("/client/trading/withdraw", content=dumps(body), headers=buyer))
    await sandbox.advance(sandbox.state.trades[bought["id"]])  # approved: pending
    await sandbox.fail_items(sandbox.state.trades[bought["id"]], ["it-0"], "PURCHASE_FAILED")
    receiver.approvals = [httpx.Response(503)]
    asked = data(await withdraw(api, buyer, (await market(api, buyer))[:1]))
    await sandbox.advance(sandbox.state.trades[asked["id"]])  # one failed attempt, asked again later

    receiver.script = [httpx.Response(500)] * 3
    clock.advance(60)
    await sandbox.deliver()  # some wait for a retry, some delivered (and maybe duplicated)
    await client_token(api, "76561198000000005")
    await api.get("/client/inventory", headers=rich)  # when the inventory was fetched
    data(await deposit(api, rich, items[4:5], isInstant=False))  # an event not collected yet


def _default(spec: Any) -> Any:
    return spec.default_factory() if spec.default_factory is not MISSING else spec.default


async def test_every_field_survives_a_dump_and_load(
    make_app: Callable[..., FastAPI], receiver: Receiver, clock: Clock
) -> None:
    app = make_app()
    original = sandbox_of(app)
    async with _api(app) as api:
        await _busy_sandbox(api, original, receiver, clock)
    state = original.state

    # What the fixture set covers every field, so a field added without a place in the dump fails here.
    assert {spec.name for spec in fields(SandboxState)} == KEPT | CONFIGURED | DERIVED | TRANSIENT
    assert all(getattr(state, name) for name in KEPT - {"profiles"})
    assert state.profiles.users
    trades = list(state.trades.values())
    items = [item for trade in trades for item in trade.items]
    for cls, objects in ((SimTrade, trades), (SimItem, items)):
        for spec in fields(cls):
            if spec.default is MISSING and spec.default_factory is MISSING:
                continue
            assert any(getattr(o, spec.name) != _default(spec) for o in objects), f"no {cls.__name__}.{spec.name}"
    assert original.outbox
    assert any(d.attempts for d in original.outbox)

    text = json.dumps(original.dump())  # JSON-able as it stands
    copy = sandbox_of(make_app())
    copy.load(json.loads(text))
    loaded = copy.state
    assert loaded.trades == state.trades
    assert list(loaded.live) == list(state.live)
    assert loaded.by_user == state.by_user
    assert loaded.external_ids == state.external_ids
    for name in KEPT:
        assert getattr(loaded, name) == getattr(state, name), name
    assert copy.outbox == original.outbox
    assert copy.chaos.settings == original.chaos.settings
    assert copy.chaos.seed == original.chaos.seed == 4
    assert copy.chaos.rng.getstate() == original.chaos.rng.getstate()
    assert list(copy.log) == list(original.log)
    assert json.dumps(copy.dump()) == text
    # Money came back as Decimals with their digits, not floats.
    (held,) = [t for t in trades if t.external_id == "dep-held"]
    assert str(loaded.trades[held.id].total_price) == str(held.total_price)
    assert loaded.trades[held.id].owner.client_data == held.owner.client_data


async def test_a_restarted_sandbox_carries_on_where_it_stopped(
    make_app: Callable[..., FastAPI], receiver: Receiver, clock: Clock, sandbox_db: str
) -> None:
    first = make_app(database_url=sandbox_db, hold_seconds=60)
    sandbox = sandbox_of(first)
    await sandbox.open()
    async with _api(first) as api:
        headers = await client_token(api)
        trade = data(await deposit(api, headers, (await depositable(api, headers))[:1], isInstant=True))
    await sandbox.step()  # active
    receiver.script = [httpx.Response(503)]
    await sandbox.step()  # hold, whose callback fails and waits for its retry
    (waiting,) = sandbox.outbox
    assert waiting.event.status == "hold"
    await sandbox.stop()  # Ctrl-C: the final save

    second = make_app(database_url=sandbox_db, hold_seconds=60)
    successor = sandbox_of(second)
    await successor.open()
    try:
        carried = successor.state.trades[trade["id"]]
        assert carried.status == "hold"
        assert [d.delivery_id for d in successor.outbox] == [waiting.delivery_id]
        clock.advance(60)
        await successor.tick()  # the retry is due, and so is the end of the hold
        assert carried.status == "completed"
    finally:
        await successor.stop()
    holds = [r for r in receiver.received() if r.trade["status"] == "hold"]
    assert [r.delivery_id for r in holds] == [waiting.delivery_id] * 2, "the same delivery, retried"
    assert receiver.statuses(trade["id"]) == ["initiated", "active", "hold", "hold", "completed"]


async def test_changes_are_saved_while_the_sandbox_runs(make_app: Callable[..., FastAPI], sandbox_db: str) -> None:
    app = make_app(database_url=sandbox_db)
    sandbox = sandbox_of(app)
    await sandbox.open()
    try:
        async with _api(app) as api:
            headers = await client_token(api)
            trade = data(await deposit(api, headers, (await depositable(api, headers))[:1], isInstant=True))
            data(await api.put("/_sandbox/chaos", json={"reorder": True, "seed": 3}))
        for _ in range(100):  # saved within the save delay (0.2 s); waited for, bounded
            saved = await _saved(sandbox_db)
            if saved is not None and saved["chaos"]["seed"] == 3:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the change was never saved")
        assert [t["id"] for t in saved["state"]["trades"]] == [trade["id"]]
        assert saved["chaos"]["settings"]["reorder"] is True
    finally:
        await sandbox.stop()


async def test_a_second_sandbox_of_the_merchant_keeps_its_state_in_memory(
    make_app: Callable[..., FastAPI], sandbox_db: str
) -> None:
    first, second = sandbox_of(make_app(database_url=sandbox_db)), sandbox_of(make_app(database_url=sandbox_db))
    await first.open()
    try:
        await second.open()
        assert second.store is None, "it would overwrite the first one's state"
        assert first.store is not None
        await second.stop()
    finally:
        await first.stop()
    third = sandbox_of(make_app(database_url=sandbox_db))
    await third.open()  # the first one stopped: its lock went with its connection
    assert third.store is not None
    await third.stop()


async def test_the_sandbox_schema_is_its_own(scratch: ScratchDatabases) -> None:
    url = await scratch.create("assetpay_sandbox_schema")
    await asyncio.to_thread(migrations.upgrade, url)
    store = SandboxStore(url, merchant_id=MERCHANT_ID)
    await store.open()
    try:
        await store.save('{"version": 1}')
        connection = await asyncpg.connect(driver_dsn(url))
        try:
            schemas = await connection.fetch(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name = 'snapshots'"
            )
        finally:
            await connection.close()
        assert [tuple(row) for row in schemas] == [(SCHEMA, "snapshots")]
        # The backend's migrations neither made it nor see it: `alembic check` stays clean.
        await asyncio.to_thread(command.check, migrations.alembic_config(url))
    finally:
        await store.close()


async def test_dev_keeps_its_sandbox_and_runs_its_clock(
    database_url: str, sandbox_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_DATABASE_URL", sandbox_db)
    monkeypatch.setenv("SANDBOX_STEP_SECONDS", "7")
    monkeypatch.setenv("SANDBOX_HOLD_SECONDS", "11")
    app = create_dev_app(Settings(_env_file=None, database_url=database_url))
    async with LifespanManager(app), _api(app) as http:
        overview = data(await http.get("/sandbox/_sandbox"))
        assert (overview["stepSeconds"], overview["holdSeconds"], overview["persistent"]) == (7, 11, True)
        data(await http.put("/sandbox/_sandbox/chaos", json={"seed": 12}))
    saved = await _saved(sandbox_db, SANDBOX_MERCHANT_ID)
    assert saved is not None
    assert saved["chaos"]["seed"] == 12, "saved on the way out"


def test_dev_clock_defaults_and_refusals() -> None:
    assert sandbox_clock({}) == (3.0, 20.0)
    assert sandbox_clock({"SANDBOX_STEP_SECONDS": "0.5", "SANDBOX_HOLD_SECONDS": "0"}) == (0.5, 0.0)
    for bad in ({"SANDBOX_STEP_SECONDS": "0"}, {"SANDBOX_HOLD_SECONDS": "-1"}, {"SANDBOX_STEP_SECONDS": "soon"}):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            sandbox_clock(bad)
