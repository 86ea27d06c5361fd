"""The `assetpay-merchant` command: serve, migrate, dev, and ledger checks for ops."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import jwt
from pydantic import ValidationError

from assetpay_merchant.config import ConfigurationError, Settings
from assetpay_merchant.db import EmbeddedPostgres, create_engine, session_factory
from assetpay_merchant.ledger.service import check
from assetpay_merchant.migrate import upgrade
from assetpay_merchant.observability import configure_logging

DEMO_USER = "demo-user"


def _database_url(settings: Settings, *, migrate: bool) -> str:
    """The configured database, or an embedded one started here (and kept at head) when none is configured.

    The URL is exported so that uvicorn's workers, started after this, use the same database.
    """
    if settings.database_url:
        url = settings.database_url
        if migrate:
            upgrade(url)
    else:
        url = EmbeddedPostgres(settings.data_dir / "postgres").start()
        upgrade(url)
    os.environ["DATABASE_URL"] = url
    return url


def _serve(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "assetpay_merchant.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    _database_url(settings, migrate=False)
    _serve(settings, args.host, args.port, args.workers)
    return 0


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    _database_url(settings, migrate=True)
    token = jwt.encode(
        {"sub": DEMO_USER, "exp": int(time.time()) + 7 * 86400},
        settings.auth_jwt_secret.get_secret_value(),
        algorithm="HS256",
    )
    base = f"http://{args.host}:{args.port}"
    admin_key = settings.admin_api_key.get_secret_value()
    sandbox = f"built-in sandbox (controls: {base}/sandbox/_sandbox)"
    assetpay = sandbox if settings.uses_sandbox else settings.assetpay_base_url
    print(
        f"\nAssetPay merchant backend (development) on {base}\n"
        f"  API docs          {base}/docs\n"
        f"  AssetPay          {assetpay}\n"
        f"  X-Admin-Key       {admin_key}\n"
        f"  demo user JWT     {token}\n"
        f"  register it:      curl -X PUT {base}/v1/users/{DEMO_USER} -H 'X-Admin-Key: {admin_key}' "
        '-H \'Content-Type: application/json\' -d \'{"steamId": "76561198000000001", '
        '"tradeUrl": "https://steamcommunity.com/tradeoffer/new/?partner=39734273&token=AbCdEf12"}\'\n',
        flush=True,
    )
    _serve(settings, args.host, args.port, 1)
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    url = _database_url(settings, migrate=True)
    print(f"database at head ({url.split('@')[-1]})")
    return 0


async def _ledger_check(url: str) -> int:
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            problems = await check(session)
    finally:
        await engine.dispose()
    for problem in problems:
        print(f"MISMATCH {problem.subject}: {problem.detail}")
    if problems:
        print(f"ledger check failed: {len(problems)} problem(s)")
        return 1
    print("ledger check passed: every balance equals its entries, every trade has posted its target")
    return 0


def cmd_ledger_check(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_ledger_check(_database_url(settings, migrate=False)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assetpay-merchant", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API against the configured database (no migrations)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(handler=cmd_serve)

    dev = commands.add_parser("dev", help="run everything on embedded defaults (Postgres, AssetPay sandbox)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(handler=cmd_dev)

    migrate = commands.add_parser("migrate", help="upgrade the database to the newest schema")
    migrate.set_defaults(handler=cmd_migrate)

    ledger = commands.add_parser("ledger", help="ledger tools").add_subparsers(dest="ledger_command", required=True)
    ledger_check = ledger.add_parser("check", help="verify balances against entries and trades against targets")
    ledger_check.set_defaults(handler=cmd_ledger_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except (ConfigurationError, ValidationError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json_lines=settings.log_json)
    code: int = args.handler(settings, args)
    return code


if __name__ == "__main__":
    sys.exit(main())
