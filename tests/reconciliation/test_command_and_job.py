"""`assetpay-merchant reconcile` end to end (in process, as tests/test_cli.py runs the CLI), and the background job
`serve` runs every RECONCILE_INTERVAL_SECONDS."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from assetpay_merchant import cli
from assetpay_merchant.app import create_app
from assetpay_merchant.config import Settings
from assetpay_merchant.services.reconciliation import LOCK_KEY
from assetpay_merchant.store.database import create_engine
from tests.assetpay_respx import API_KEY, BASE_URL, AssetPay
from tests.gateway.fake_assetpay import fail
from tests.reconciliation.helpers import Book, books
from tests.reconciliation.test_passes import held_deposit, ours
from tests.support import balance, ledger_problems


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[None]:
    """What `reconcile` needs in the environment; the loggers put back as they were after the command ran."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ASSETPAY_API_KEY", API_KEY)
    monkeypatch.setenv("ASSETPAY_BASE_URL", BASE_URL)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def reconcile(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["reconcile", *args])  # it runs its own event loop
    return code, capsys.readouterr().out


# -- the command --------------------------------------------------------------------------------------------------


async def test_reconcile_dry_run_then_for_real_then_nothing_left(
    client: httpx.AsyncClient, book: Book, engine: AsyncEngine, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    trade_id = await held_deposit(client, "cli")
    book.put(trade_id=trade_id, status="completed", total="100.00", user_id="cli")
    ours_id = (await ours(engine, trade_id))["id"]
    before = await books(engine)

    code, out = await reconcile(capsys, "--older-than", "0", "--dry-run")
    assert code == 0, out
    assert f"would change {ours_id} deposit hold -> completed, +40.00 [AssetPay {trade_id}]" in out
    assert "reconciliation (dry run): 1 trade(s) to check, 1 looked up, 1 found" in out
    assert "would change 1 (0 failed as unknown), 0 failure(s)" in out
    assert "\r" not in out  # not a terminal: no progress bar, a summary line
    assert await books(engine) == before

    code, out = await reconcile(capsys)  # RECONCILE_AFTER_SECONDS (10 minutes): the trade is too fresh
    assert code == 0, out
    assert "reconciliation: 0 trade(s) to check" in out
    assert await books(engine) == before

    code, out = await reconcile(capsys, "--older-than", "0")
    assert code == 0, out
    assert f"changed {ours_id} deposit hold -> completed, +40.00 [AssetPay {trade_id}]" in out
    assert "changed 1 (0 failed as unknown)" in out
    assert await balance(client, "cli") == Decimal("100.00")
    assert await ledger_problems(engine) == []

    code, out = await reconcile(capsys, "--older-than", "0")
    assert code == 0, out
    assert "changed 0" in out


async def test_reconcile_exits_1_when_assetpay_stops_the_pass(
    client: httpx.AsyncClient, assetpay: AssetPay, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    await held_deposit(client, "cli-limited")
    assetpay.lookup.reply(fail(429, "RATE_LIMITED"))
    code, out = await reconcile(capsys, "--older-than", "0")
    assert code == 1, out
    assert "stopped early by RATE_LIMITED" in out


async def test_reconcile_skips_while_another_pass_holds_the_lock(
    database_url: str, assetpay: AssetPay, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as holder:
            await holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            code, out = await reconcile(capsys, "--older-than", "0")
            await holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
    finally:
        await engine.dispose()
    assert code == cli.EXIT_SKIPPED, out
    assert "skipped: another pass is running" in out
    assert assetpay.lookup.call_count == 0


async def test_reconcile_needs_the_assetpay_key(
    monkeypatch: pytest.MonkeyPatch, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ASSETPAY_API_KEY")
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["reconcile"])
    assert code == 2
    assert "ASSETPAY_API_KEY must be set" in capsys.readouterr().err


def test_reconcile_refuses_a_negative_age(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["reconcile", "--older-than", "-5"])
    assert "0 or more" in capsys.readouterr().err


def test_the_progress_bar_redraws_one_line() -> None:
    stream = io.StringIO()
    bar = cli.ProgressBar(stream, width=10)
    bar(0, 4)
    bar(2, 4)
    bar(4, 4)
    bar.close()
    assert stream.getvalue() == (
        "\rreconciling [..........] 0/4\rreconciling [#####.....] 2/4\rreconciling [##########] 4/4\n"
    )


# -- the background job -------------------------------------------------------------------------------------------


def job_running() -> bool:
    return any(task.get_name() == "reconciliation" and not task.done() for task in asyncio.all_tasks())


async def test_the_background_job_heals_when_the_interval_is_set(
    client: httpx.AsyncClient, book: Book, engine: AsyncEngine, settings: Settings
) -> None:
    trade_id = await held_deposit(client, "job")
    book.put(trade_id=trade_id, status="completed", total="100.00", user_id="job")
    app = create_app(settings.model_copy(update={"reconcile_interval_seconds": 0.05, "reconcile_after_seconds": 0}))
    async with LifespanManager(app):
        assert job_running()
        for _ in range(100):
            if (await ours(engine, trade_id))["status"] == "completed":
                break
            await asyncio.sleep(0.05)
    assert not job_running()  # stopped with the app
    assert (await ours(engine, trade_id))["status"] == "completed"
    assert await balance(client, "job") == Decimal("100.00")
    assert await ledger_problems(engine) == []


async def test_no_background_job_when_the_interval_is_0(
    client: httpx.AsyncClient, book: Book, engine: AsyncEngine, settings: Settings
) -> None:
    trade_id = await held_deposit(client, "no-job")
    book.put(trade_id=trade_id, status="completed", total="100.00", user_id="no-job")
    app = create_app(settings.model_copy(update={"reconcile_interval_seconds": 0, "reconcile_after_seconds": 0}))
    async with LifespanManager(app):
        assert not job_running()
        await asyncio.sleep(0.3)
    assert book.asked == []
    assert (await ours(engine, trade_id))["status"] == "hold"
