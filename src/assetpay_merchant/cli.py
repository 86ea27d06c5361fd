"""The `assetpay-merchant` command: serve, migrate, dev, and ledger checks and reconciliation for ops.

`serve`, `migrate`, `ledger check` and `reconcile` need DATABASE_URL (`reconcile` also ASSETPAY_API_KEY); `serve`
refuses to start with any missing or unsafe secret. Only `dev` and `sandbox` start an embedded PostgreSQL and the
AssetPay sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from pydantic import ValidationError
from sqlalchemy.pool import NullPool

from assetpay_merchant import ops_cli
from assetpay_merchant.config import ConfigurationError, Settings
from assetpay_merchant.observability import configure_logging, logging_config, record_ledger_check, shared_metrics
from assetpay_merchant.services import reconciliation
from assetpay_merchant.store.database import Database, create_engine
from assetpay_merchant.store.ledger import check
from assetpay_merchant.store.migrations import upgrade


def serve(
    app_factory: str,
    *,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    log_json: bool = False,
    ws_compression: bool = False,
    shutdown_grace: int | None = None,
) -> None:
    """Run an app factory under uvicorn (`workers` processes share the port). WebSocket compression is off unless
    asked for: live events are small, and its state costs ~38 kB per connected client. On SIGTERM uvicorn stops
    accepting, lets the requests in flight finish for at most `shutdown_grace` seconds (None: as long as they take),
    cancels what is left, then runs the lifespan's shutdown."""
    import uvicorn

    uvicorn.run(
        app_factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level.lower(),
        access_log=False,
        log_config=logging_config(log_level, json_lines=log_json),  # every worker logs like this process
        ws_per_message_deflate=ws_compression,
        timeout_graceful_shutdown=shutdown_grace,
    )


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_safe()  # fail here, once, naming the variable, rather than in every worker
    with shared_metrics(args.workers):
        serve(
            "assetpay_merchant.app:create_app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level,
            log_json=settings.log_json,
            ws_compression=settings.ws_compression,
            shutdown_grace=settings.shutdown_grace_seconds,
        )
    return 0


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    # Development conveniences live in the sandbox package, which production code never imports.
    from assetpay_sandbox.dev import run

    return run(settings, host=args.host, port=args.port)


def cmd_trigger(settings: Settings, args: argparse.Namespace) -> int:
    # Dev tooling too: the scenarios are played by the sandbox's rules, in the sandbox package.
    from assetpay_sandbox.trigger import run

    return run(settings, args)


def cmd_sandbox(settings: Settings, args: argparse.Namespace) -> int:
    # The simulator alone, on its own port: sandbox code, so it lives in the sandbox package too.
    from assetpay_sandbox.serve import run

    return run(settings, args)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    url = settings.require_database_url()
    upgrade(url)
    print(f"database at head ({url.split('@')[-1]})")
    return 0


async def _ledger_check(url: str, *, transaction_pooling: bool) -> int:
    database = Database(create_engine(url, poolclass=NullPool, transaction_pooling=transaction_pooling))
    try:
        async with database.snapshot() as db:
            problems = await check(db)
    except BaseException:
        record_ledger_check(None)
        raise
    finally:
        await database.dispose()
    # This process's metrics end with it: ops see a failure by the exit code (and serve's own periodic check).
    record_ledger_check(len(problems))
    for problem in problems:
        print(f"MISMATCH {problem.subject}: {problem.detail}")
    if problems:
        print(f"ledger check failed: {len(problems)} problem(s)")
        return 1
    print("ledger check passed: every balance equals its entries, every trade has posted its target")
    return 0


def cmd_ledger_check(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_ledger_check(settings.require_database_url(), transaction_pooling=settings.transaction_pooling))


EXIT_SKIPPED = 75  # EX_TEMPFAIL: another pass was running; try again later


class ProgressBar:
    """A one-line progress bar redrawn in place with \\r (for a terminal)."""

    def __init__(self, stream: TextIO, *, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.width * done // total if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\rreconciling [{bar}] {done}/{total}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


@contextmanager
def _quiet_progress_logs() -> Iterator[None]:
    """At the default INFO level, what the pass logs per request and per trade is what the command prints: keep it
    off stderr (LOG_LEVEL=DEBUG shows it all)."""
    names = ("assetpay_merchant.gateway.client", "assetpay_merchant.services.reconciliation")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


async def _reconcile(settings: Settings, url: str, *, older_than: float | None, dry_run: bool) -> int:
    from assetpay_merchant.app import assetpay_client, http_client, rate_limits, reconcile_rules

    database = Database(
        create_engine(url, pool_size=2, max_overflow=2, transaction_pooling=settings.transaction_pooling),
        session_url=settings.session_database_url,  # the pass's lock needs a session of its own
    )
    http = http_client(settings)
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        with _quiet_progress_logs():
            report = await reconciliation.run_pass(
                database,
                assetpay_client(settings, http, rate_limits(settings, database)),  # the budget `serve` spends too
                reconcile_rules(settings, older_than=older_than),
                dry_run=dry_run,
                progress=bar,
            )
    finally:
        if bar is not None:
            bar.close()
        await http.aclose()
        await database.dispose()
    for change in report.changes:
        print(f"{'would change' if dry_run else 'changed'} {change.describe()}")
    print(report.summary())
    if report.skipped:
        return EXIT_SKIPPED
    return 0 if report.clean else 1


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    url = settings.require_database_url()
    settings.require_assetpay_key()
    return asyncio.run(_reconcile(settings, url, older_than=args.older_than, dry_run=args.dry_run))


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be a number of seconds, 0 or more")
    return seconds


def _rate(value: str) -> float:
    rate = float(value)
    if not 0 <= rate <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError("must be a number from 0 to 1")
    return rate


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

    trigger = commands.add_parser(
        "trigger",
        help="fire a signed scenario of AssetPay callbacks at a backend and check its answers",
        description="Like `stripe trigger`: registers a user, sends the scenario's callbacks signed as AssetPay "
        "signs them, prints the backend's answer to each, and checks the user's balance at the end. Exit 0 when "
        "every answer and the balance are as expected, 1 otherwise, 2 on usage errors.",
    )
    trigger.add_argument("scenario", nargs="?", help="the scenario to run (--list shows them)")
    trigger.add_argument("--list", action="store_true", help="list the scenarios, one line each")
    trigger.add_argument("--url", default="http://127.0.0.1:8000", help="the backend's base URL (default: dev's)")
    trigger.add_argument("--secret", help="callback secret (default: ASSETPAY_API_SECRET, else the sandbox's)")
    trigger.add_argument("--user", metavar="USER_ID", help="the user to play it for (default: trigger-<random>)")
    trigger.add_argument("--admin-key", help="X-Admin-Key to register the user (default: ADMIN_API_KEY, else dev's)")
    trigger.add_argument("--jwt-secret", help="signs the user's JWT (default: AUTH_JWT_SECRET, else dev's)")
    trigger.add_argument("--json", action="store_true", help="one JSON object per line, for scripts")
    trigger.set_defaults(handler=cmd_trigger)

    sandbox = commands.add_parser(
        "sandbox",
        help="serve the AssetPay sandbox alone on its own port (credentials from SANDBOX_API_KEY/_SECRET/_MERCHANT_ID)",
        description="The AssetPay simulator under uvicorn, POSTing signed callbacks to --callback-url. Its state is "
        "kept in --database-url, else DATABASE_URL, else the embedded PostgreSQL under DATA_DIR (--memory: nowhere). "
        "The chaos flags make callback delivery misbehave like the real gateway's (docs/sandbox.md).",
    )
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8100)
    sandbox.add_argument("--callback-url", default="http://127.0.0.1:8000/webhooks/assetpay", metavar="URL")
    sandbox.add_argument("--step-seconds", type=_seconds, default=5.0, metavar="S", help="between statuses (default 5)")
    sandbox.add_argument("--hold-seconds", type=_seconds, default=None, metavar="S", help="CS2 hold (default: a step)")
    kept = sandbox.add_mutually_exclusive_group()
    kept.add_argument("--database-url", metavar="URL", help="keep the state in this PostgreSQL database")
    kept.add_argument("--memory", action="store_true", help="keep nothing: the state ends with the process")
    sandbox.add_argument("--seed", type=int, default=None, help="seed the chaos RNG (a reproducible run)")
    sandbox.add_argument("--duplicate-rate", type=_rate, default=0.0, metavar="0..1", help="deliver again, same id")
    sandbox.add_argument("--reorder", action="store_true", help="deliver callbacks out of order")
    sandbox.add_argument("--delay", type=_seconds, default=0.0, metavar="SECONDS", help="max wait before a callback")
    sandbox.add_argument("--drop-rate", type=_rate, default=0.0, metavar="0..1", help="lose attempts (then retry)")
    sandbox.add_argument(
        "--approval-timeout-rate", type=_rate, default=0.0, metavar="0..1", help="treat approval answers as timed out"
    )
    sandbox.set_defaults(handler=cmd_sandbox)

    migrate = commands.add_parser("migrate", help="upgrade the database at DATABASE_URL to the newest schema")
    migrate.set_defaults(handler=cmd_migrate)

    ledger = commands.add_parser("ledger", help="ledger tools").add_subparsers(dest="ledger_command", required=True)
    ledger_check = ledger.add_parser("check", help="verify balances against entries and trades against targets")
    ledger_check.set_defaults(handler=cmd_ledger_check)

    reconcile = commands.add_parser(
        "reconcile",
        help="look up the trades in flight at AssetPay now and apply their state; print what changed",
        description="One reconciliation pass now: the trades in flight that nothing touched for --older-than "
        "seconds (RECONCILE_AFTER_SECONDS) are looked up at AssetPay and their state applied; those it does not "
        "know after RECONCILE_UNKNOWN_AFTER_SECONDS are failed. Exit 0 when done cleanly, 1 on failures or an "
        f"AssetPay error, {EXIT_SKIPPED} when another pass was running.",
    )
    reconcile.add_argument(
        "--older-than", type=_seconds, default=None, metavar="SECONDS", help="override RECONCILE_AFTER_SECONDS"
    )
    reconcile.add_argument("--dry-run", action="store_true", help="look up and report, change nothing")
    reconcile.set_defaults(handler=cmd_reconcile)
    ops_cli.add_commands(commands)  # admin ..., webhooks ...
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
