"""`assetpay-merchant ledger check`: silent agreement on a consistent ledger, a named mismatch otherwise."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant import cli
from tests.support import deliver_trade, register_user, trade


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[str]:
    """DATABASE_URL pointing at the test database; the root logger put back as it was after the command ran."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ENVIRONMENT", "test")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield database_url
    root.handlers[:] = handlers
    root.setLevel(level)


async def ledger_check(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["ledger", "check"])  # it runs its own event loop
    return code, capsys.readouterr().out


async def some_ledger(client: httpx.AsyncClient) -> dict[str, object]:
    """Two users, a credited deposit, a half-credited one and an approved withdrawal; returns the first deposit."""
    await register_user(client, "u1")
    await register_user(client, "u2")
    deposit = trade(status="completed", total="100.00", user_id="u1")
    for payload in (
        deposit,
        trade(status="hold", total="50.00", pre="30.00", user_id="u2"),
        trade(type="withdraw", status="initiated", total="25.00", user_id="u1"),
    ):
        response = await deliver_trade(client, payload)
        assert response.status_code == 200, response.text
    return deposit


async def test_ledger_check_passes_on_a_consistent_ledger(
    client: httpx.AsyncClient, cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await some_ledger(client)
    code, out = await ledger_check(capsys)
    assert code == 0, out
    assert "ledger check passed" in out
    assert "MISMATCH" not in out


async def test_ledger_check_passes_on_an_empty_ledger(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = await ledger_check(capsys)
    assert code == 0, out


async def test_ledger_check_names_a_tampered_balance(
    client: httpx.AsyncClient, engine: AsyncEngine, cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await some_ledger(client)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE balances SET available = available + 0.01 WHERE user_id = 'u1'"))
    code, out = await ledger_check(capsys)
    assert code != 0
    assert "MISMATCH user u1: balance 75.01" in out
    assert "entries sum to 75.00" in out
    assert "u2" not in out
    assert "ledger check failed: 1 problem(s)" in out


async def test_ledger_check_names_a_missing_balance_row(
    client: httpx.AsyncClient, engine: AsyncEngine, cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await some_ledger(client)
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM balances WHERE user_id = 'u2'"))
    code, out = await ledger_check(capsys)
    assert code != 0
    assert "MISMATCH user u2: entries sum to 30.00" in out
    assert "no balance row" in out


async def test_ledger_check_names_a_tampered_trade(
    client: httpx.AsyncClient, engine: AsyncEngine, cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    deposit = await some_ledger(client)
    async with engine.begin() as connection:
        ours = (
            await connection.execute(
                text("UPDATE trades SET posted = posted - 40 WHERE assetpay_id = :id RETURNING id"),
                {"id": deposit["id"]},
            )
        ).scalar_one()
    code, out = await ledger_check(capsys)
    assert code != 0
    assert f"MISMATCH trade {ours}: posted 60" in out
    assert "entries sum to 100" in out
    assert "its target is 100" in out
    assert "MISMATCH user" not in out  # the balances still add up: only the trade is wrong


async def test_console_script_exit_codes(client: httpx.AsyncClient, engine: AsyncEngine, database_url: str) -> None:
    """The installed command, in its own process: exit 0 when consistent, non-zero with the problem named."""
    await some_ledger(client)
    script = Path(sys.executable).with_name("assetpay-merchant")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "assetpay_merchant.cli"]
    env = {**os.environ, "DATABASE_URL": database_url, "ENVIRONMENT": "test"}

    async def run() -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            *command, "ledger", "check", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode()

    code, out = await run()
    assert code == 0, out
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE balances SET available = 0 WHERE user_id = 'u2'"))
    code, out = await run()
    assert code == 1, out
    assert "MISMATCH user u2" in out
