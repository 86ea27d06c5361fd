"""`assetpay-merchant sandbox`: the AssetPay sandbox alone, served by uvicorn on a port of its own.

For a backend that should meet a simulated AssetPay over real HTTP (`serve`, end-to-end tests, another language's
client): point its ASSETPAY_BASE_URL here and `--callback-url` at its webhook. The merchant credentials come from
SANDBOX_API_KEY / SANDBOX_API_SECRET / SANDBOX_MERCHANT_ID, else the published sandbox ones (which a served backend
refuses as secrets: set your own for such runs). The state is kept as `dev` keeps it: in `--database-url`, else
DATABASE_URL, else the embedded PostgreSQL under DATA_DIR; `--memory` keeps nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.engine import make_url

from assetpay_merchant.config import Settings
from assetpay_sandbox.app import create_sandbox_app
from assetpay_sandbox.chaos import ChaosError, ChaosSettings
from assetpay_sandbox.credentials import SANDBOX_API_KEY, SANDBOX_API_SECRET, SANDBOX_MERCHANT_ID


@dataclass(frozen=True, slots=True)
class Credentials:
    """The one merchant the sandbox serves."""

    api_key: str
    api_secret: str
    merchant_id: str
    published: bool  # the secret is the one anybody can read in credentials.py

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Credentials:
        secret = environ.get("SANDBOX_API_SECRET") or SANDBOX_API_SECRET
        return cls(
            api_key=environ.get("SANDBOX_API_KEY") or SANDBOX_API_KEY,
            api_secret=secret,
            merchant_id=environ.get("SANDBOX_MERCHANT_ID") or SANDBOX_MERCHANT_ID,
            published=secret == SANDBOX_API_SECRET,
        )


def database_of(settings: Settings, args: argparse.Namespace) -> str | None:
    """Where the state is kept: None with --memory, else --database-url, DATABASE_URL, or the embedded database."""
    if args.memory:
        return None
    url: str | None = args.database_url or settings.database_url
    if url:
        return url
    from assetpay_merchant.store.embedded import EmbeddedPostgres  # heavy: only when it is really wanted

    return EmbeddedPostgres(settings.data_dir / "postgres", keep_running=False).start()


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the sandbox until interrupted (the options are the `sandbox` command's, see cli.py)."""
    import uvicorn

    try:
        chaos = ChaosSettings(
            duplicate_rate=args.duplicate_rate,
            reorder=args.reorder,
            delay=args.delay,
            drop_rate=args.drop_rate,
            approval_timeout_rate=args.approval_timeout_rate,
        )
    except ChaosError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    if not args.step_seconds > 0:
        print("sandbox: --step-seconds must be more than 0", file=sys.stderr)
        return 2
    credentials = Credentials.from_env()
    database_url = database_of(settings, args)
    app = create_sandbox_app(
        api_key=credentials.api_key,
        api_secret=credentials.api_secret,
        merchant_id=credentials.merchant_id,
        callback_url=args.callback_url,
        step_seconds=args.step_seconds,
        hold_seconds=args.hold_seconds,
        chaos=chaos,
        seed=args.seed,
        database_url=database_url,
    )
    base = f"http://{args.host}:{args.port}"
    kept = "in memory only (--memory)" if database_url is None else _where(database_url)
    secret = credentials.api_secret if credentials.published else "(from SANDBOX_API_SECRET)"
    lines = [
        f"AssetPay sandbox on {base}",
        f"  controls          {base}/_sandbox   (API docs {base}/docs)",
        f"  callbacks to      {args.callback_url}",
        f"  api-key           {credentials.api_key}",
        f"  api secret        {secret}",
        f"  merchant id       {credentials.merchant_id}",
        f"  clock             a step every {args.step_seconds:g} s, CS2 hold {app.state.sandbox.hold_seconds:g} s",
        f"  state             {kept}",
    ]
    if not chaos.calm or args.seed is not None:
        switches = ", ".join(f"{key}={value}" for key, value in chaos.wire().items())
        lines.append(f"  chaos             {switches}, seed={args.seed}")
    print("\n" + "\n".join(lines) + "\n", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower(), access_log=False)
    return 0


def _where(url: str) -> str:
    """The database, without its password."""
    return f"kept in {make_url(url).render_as_string(hide_password=True)} (schema assetpay_sandbox)"
