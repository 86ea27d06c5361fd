"""The `assetpay-merchant` command: serve, migrate, dev, and ledger checks for ops.

`serve`, `migrate` and `ledger check` need DATABASE_URL; `serve` refuses to start with any missing or unsafe
secret. Only `dev` starts an embedded PostgreSQL and the AssetPay sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pydantic import ValidationError
from sqlalchemy.pool import NullPool

from assetpay_merchant.config import ConfigurationError, Settings
from assetpay_merchant.observability import configure_logging
from assetpay_merchant.store.database import Database, create_engine
from assetpay_merchant.store.ledger import check
from assetpay_merchant.store.migrations import upgrade


def serve(app_factory: str, *, host: str, port: int, workers: int, log_level: str) -> None:
    """Run an app factory under uvicorn (`workers` processes share the port)."""
    import uvicorn

    uvicorn.run(
        app_factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level.lower(),
        access_log=False,
    )


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_safe()  # fail here, once, naming the variable, rather than in every worker
    serve(
        "assetpay_merchant.app:create_app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level,
    )
    return 0


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    # Development conveniences live in the sandbox package, which production code never imports.
    from assetpay_sandbox.dev import run

    return run(settings, host=args.host, port=args.port)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    url = settings.require_database_url()
    upgrade(url)
    print(f"database at head ({url.split('@')[-1]})")
    return 0


async def _ledger_check(url: str) -> int:
    database = Database(create_engine(url, poolclass=NullPool))
    try:
        async with database.snapshot() as db:
            problems = await check(db)
    finally:
        await database.dispose()
    for problem in problems:
        print(f"MISMATCH {problem.subject}: {problem.detail}")
    if problems:
        print(f"ledger check failed: {len(problems)} problem(s)")
        return 1
    print("ledger check passed: every balance equals its entries, every trade has posted its target")
    return 0


def cmd_ledger_check(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_ledger_check(settings.require_database_url()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assetpay-merchant", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API against DATABASE_URL (never migrates)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(handler=cmd_serve)

    dev = commands.add_parser("dev", help="run everything on embedded defaults (Postgres, AssetPay sandbox)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(handler=cmd_dev)

    migrate = commands.add_parser("migrate", help="upgrade the database at DATABASE_URL to the newest schema")
    migrate.set_defaults(handler=cmd_migrate)

    ledger = commands.add_parser("ledger", help="ledger tools").add_subparsers(dest="ledger_command", required=True)
    ledger_check = ledger.add_parser("check", help="verify balances against entries and trades against targets")
    ledger_check.set_defaults(handler=cmd_ledger_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
        configure_logging(settings.log_level, json_lines=settings.log_json)
        code: int = args.handler(settings, args)
    except (ConfigurationError, ValidationError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
