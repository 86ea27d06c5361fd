"""Logging set-up and the Prometheus metrics every part of the service reports to.

Every log line carries what it is about, when known: the request (`request_id`), the user, the trade and the
AssetPay delivery. The edges set them in context variables (the request-id middleware, the auth dependency,
intake, settlement, reconciliation) and the handler's `LogContext` filter stamps them on each record it emits, so
a record that is never emitted costs nothing extra. Standard logging, not structlog: the libraries we run under
(uvicorn, SQLAlchemy, httpx, websockets) all log through it, and one filter and two formatters cover their lines too.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

WEBHOOK_DELIVERIES = Counter(
    "assetpay_webhook_deliveries_total", "AssetPay callbacks received, by kind and outcome", ["kind", "outcome"]
)
WEBHOOK_SECONDS = Histogram(
    "assetpay_webhook_seconds",
    "Time to verify, apply and commit one AssetPay callback",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LEDGER_POSTINGS = Counter("ledger_postings_total", "Ledger entries posted, by kind", ["kind"])
LIVE_CLIENTS = Gauge("live_clients", "WebSocket clients connected", multiprocess_mode="livesum")
LIVE_EVENTS_SENT = Counter("live_events_sent_total", "Live events sent to WebSocket clients, by type", ["type"])
LIVE_RESYNCS = Counter("live_resyncs_total", "WebSocket clients told to resync, by reason", ["reason"])
SETTLEMENTS = Counter(
    "settlements_total",
    "AssetPay trade states applied through the settlement path, by source and outcome",
    ["source", "outcome"],
)
RECONCILIATION_PASSES = Counter(
    "reconciliation_passes_total",
    "Reconciliation passes, by outcome (done, stopped by an AssetPay or database error, skipped: another ran)",
    ["outcome"],
)
RECONCILIATION_LOOKUPS = Counter(
    "reconciliation_lookups_total",
    "Trades reconciliation looked up at AssetPay, by result (found, missing, error)",
    ["result"],
)
RECONCILIATION_HEALED = Counter(
    "reconciliation_healed_total",
    "Trades whose state reconciliation changed, by cause (assetpay: its current state applied; unknown: failed "
    "because AssetPay did not know it after the ambiguity window)",
    ["cause"],
)
RECONCILIATION_FAILURES = Counter(
    "reconciliation_failures_total",
    "What reconciliation could not do, by reason (invalid_snapshot, assetpay_error, database_unavailable, apply_error)",
    ["reason"],
)

FEED_CONNECTED = Gauge(
    "assetpay_feed_connected",
    "1 while this process's connection to AssetPay's realtime feed is up (summed over the workers)",
    multiprocess_mode="livesum",
)
FEED_CONNECTIONS = Counter(
    "assetpay_feed_connections_total",
    "Connection attempts to AssetPay's realtime feed, by outcome (connected; failed; refused: closed right after "
    "opening without a word, how a bad API key shows)",
    ["outcome"],
)
FEED_EVENTS = Counter(
    "assetpay_feed_events_total",
    "Events received from AssetPay's realtime feed, by type (market.upsert, market.patch, market.remove, "
    "market.sync, trade, deposit, withdrawal, other, invalid)",
    ["type"],
)
FEED_NUDGES = Counter(
    "assetpay_feed_nudges_total",
    "Trades the realtime feed named, by result (applied: looked up and applied through settlement; missing: "
    "AssetPay did not know it; lookup_error, invalid, apply_error: nothing applied; dropped: too many waiting)",
    ["result"],
)
APPROVALS = Counter(
    "approvals_total",
    "Withdrawal verdicts decided (each stored once; repeated asks get the stored one), by verdict and reason "
    "(none, unknown_user, no_price, over_authorised, insufficient_balance, crypto_unsupported, crypto_invalid, other)",
    ["verdict", "reason"],
)
APPROVAL_SECONDS = Histogram(
    "approval_seconds",
    "Time from a signed approval ask to its committed answer (decision, debit and commit), by verdict",
    ["verdict"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
# The last check of any process wins ("mostrecent"): with several workers every one may run it, and the newest
# result is the truth.
LEDGER_CHECK_PROBLEMS = Gauge(
    "ledger_check_problems",
    "Mismatches the last completed ledger check found (0: the books balance)",
    multiprocess_mode="mostrecent",
)
LEDGER_CHECK_COMPLETED = Gauge(
    "ledger_check_completed_timestamp_seconds",
    "Unix time the last ledger check completed (passed or failed); 0: none has yet in this deployment",
    multiprocess_mode="mostrecent",
)
LEDGER_CHECK_RUNS = Counter(
    "ledger_check_runs_total",
    "Ledger checks, by result (passed, failed: mismatches found, error: it could not run, skipped: another "
    "process was running it)",
    ["result"],
)
# Refreshed every METRICS_REFRESH_SECONDS by every `serve` process from the same database: the newest value wins.
EXPOSURE_PRE_CREDIT = Gauge(
    "exposure_pre_credit_in_hold",
    "Instant credit paid out on deposits still in hold, in the merchant's currency (what reversals could take back)",
    multiprocess_mode="mostrecent",
)
EXPOSURE_PRE_CREDIT_TRADES = Gauge(
    "exposure_pre_credit_trades", "Deposits in hold with instant credit paid out", multiprocess_mode="mostrecent"
)
EXPOSURE_DEBT = Gauge(
    "exposure_debt",
    "What users with a negative balance owe in all (left by reversals after spending), in the merchant's currency",
    multiprocess_mode="mostrecent",
)
EXPOSURE_DEBT_USERS = Gauge("exposure_debt_users", "Users with a negative balance", multiprocess_mode="mostrecent")
REVIEW_QUEUE = Gauge("review_queue_trades", "Trades flagged for a person to review", multiprocess_mode="mostrecent")
DATABASE_REACHABLE = Gauge(
    "database_reachable",
    "1 when the last periodic read of the gauges reached the database, 0 when it was unavailable",
    multiprocess_mode="mostrecent",
)
GAUGES_REFRESHED = Gauge(
    "gauges_refreshed_timestamp_seconds",
    "Unix time the exposure and review-queue gauges were last read from the database",
    multiprocess_mode="mostrecent",
)

MARKET_CACHE_FEED_UPDATES = Counter(
    "market_cache_feed_updates_total",
    "Cached market pages changed because of the realtime feed, by action (patched in place, dropped)",
    ["action"],
)

RATE_BUDGET_TOKENS = Gauge(
    "assetpay_rate_budget_tokens",
    "Tokens left in the merchant's shared AssetPay budget per route class, as last taken by any process here",
    ["route"],
    multiprocess_mode="mostrecent",
)
RATE_LIMITED = Counter(
    "assetpay_rate_limited_total",
    "Requests refused for rate, by route class and scope (merchant: the shared AssetPay budget was empty; user: "
    "one user's allowance was used up; upstream: AssetPay itself answered 429)",
    ["route", "scope"],
)
SETUP_ERRORS = Counter(
    "assetpay_setup_errors_total",
    "AssetPay errors that mean the merchant's setup is broken (no callback URL, IP denied, ...), by key",
    ["key"],
)
SETUP_ERROR_LAST_SEEN = Gauge(
    "assetpay_setup_error_last_seen_timestamp_seconds",
    "When AssetPay last reported each setup error (Unix time)",
    ["key"],
    multiprocess_mode="max",
)


# Label values known in advance exist from the start (at 0), so `rate()` and `increase()` see a series before the
# first event, and an alert on them is not silent for want of one.
for _result in ("passed", "failed", "error", "skipped"):
    LEDGER_CHECK_RUNS.labels(_result)
for _outcome in ("done", "stopped", "skipped"):
    RECONCILIATION_PASSES.labels(_outcome)
for _cause in ("assetpay", "unknown"):
    RECONCILIATION_HEALED.labels(_cause)
for _reason in ("invalid_snapshot", "assetpay_error", "database_unavailable", "apply_error"):
    RECONCILIATION_FAILURES.labels(_reason)
for _outcome in ("connected", "failed", "refused"):  # 0 while ASSETPAY_FEED is off, too
    FEED_CONNECTIONS.labels(_outcome)
APPROVALS.labels("approve", "none")
for _reason in ("unknown_user", "no_price", "over_authorised", "insufficient_balance", "crypto_unsupported"):
    APPROVALS.labels("reject", _reason)

# The verdict reasons of core.policy and intake, by how they start (some carry amounts), as bounded label values.
_APPROVAL_REASONS = (
    ("unknown user", "unknown_user"),
    ("withdrawal has no positive price", "no_price"),
    ("price ", "over_authorised"),
    ("insufficient balance", "insufficient_balance"),
    ("crypto withdrawals are not supported", "crypto_unsupported"),
    ("crypto withdrawal has no id", "crypto_invalid"),
)


def approval_reason(reason: str | None) -> str:
    """A verdict's reason as a label value: a few fixed words, never the free text (amounts would make a series
    per price)."""
    if reason is None:
        return "none"
    for start, label in _APPROVAL_REASONS:
        if reason.startswith(start):
            return label
    return "other"


def count_approval(verdict: str, reason: str | None) -> None:
    APPROVALS.labels(verdict, approval_reason(reason)).inc()


def record_ledger_check(problems: int | None) -> None:
    """Count one ledger check: `problems` mismatches found, or None when it could not run."""
    if problems is None:
        LEDGER_CHECK_RUNS.labels("error").inc()
        return
    LEDGER_CHECK_PROBLEMS.set(problems)
    LEDGER_CHECK_COMPLETED.set(time.time())
    LEDGER_CHECK_RUNS.labels("failed" if problems else "passed").inc()


# -- what a log line is about ---------------------------------------------------------------------------------------

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
USER_ID: ContextVar[str | None] = ContextVar("user_id", default=None)
TRADE_ID: ContextVar[object | None] = ContextVar("trade_id", default=None)
"""Our trade id (a UUID, turned into text only when a line is written)."""
DELIVERY_ID: ContextVar[str | None] = ContextVar("delivery_id", default=None)

CONTEXT_FIELDS = ("request_id", "user_id", "trade_id", "delivery_id")
_CONTEXT_VARS: tuple[ContextVar[Any], ...] = (REQUEST_ID, USER_ID, TRADE_ID, DELIVERY_ID)
RequestTokens = tuple[Token[Any], ...]


def begin_request(request_id: str) -> RequestTokens:
    """A request starts: its id is set and nothing else is known yet (what a previous request in the same context
    left behind is hidden). Values the request's edges set later last until `end_request`."""
    return (REQUEST_ID.set(request_id), USER_ID.set(None), TRADE_ID.set(None), DELIVERY_ID.set(None))


def end_request(tokens: RequestTokens) -> None:
    for var, token in zip(_CONTEXT_VARS, tokens, strict=True):
        var.reset(token)


@contextmanager
def log_context(*, trade_id: object | None = None, delivery_id: str | None = None) -> Iterator[None]:
    """Lines logged inside are about this trade (and delivery); for jobs that go through many, one at a time."""
    trade = TRADE_ID.set(trade_id) if trade_id is not None else None
    delivery = DELIVERY_ID.set(delivery_id) if delivery_id is not None else None
    try:
        yield
    finally:
        if delivery is not None:
            DELIVERY_ID.reset(delivery)
        if trade is not None:
            TRADE_ID.reset(trade)


class LogContext(logging.Filter):
    """Stamps the context (request, user, trade, delivery) on every record a handler emits; a value the caller
    passed itself (`extra={"trade_id": ...}`) is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        for name, var in zip(CONTEXT_FIELDS, _CONTEXT_VARS, strict=True):
            if fields.get(name) is None:
                fields[name] = var.get()
        return True


def _context_of(record: logging.LogRecord) -> Iterator[tuple[str, str]]:
    fields = record.__dict__
    for name in CONTEXT_FIELDS:
        value = fields.get(name)
        if value is not None:
            yield name, str(value)


_BARE = re.compile(r"[^\s\"=]+")


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then ` request_id=... user_id=... trade_id=... delivery_id=...` for those
    known (a value with spaces or quotes is quoted), on the first line, before any traceback. Secrets are blanked."""

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        for name, value in _context_of(record):
            line += f" {name}={value}" if _BARE.fullmatch(value) else f" {name}={json.dumps(value)}"
        return line

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: time, level, logger, message, the context fields that are known,
    and the exception. Secrets are blanked."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update(_context_of(record))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


# -- secrets never reach the logs -----------------------------------------------------------------------------------

_QUERY_SECRET = re.compile(r"(?i)\b(token|apiKey|api-key)=[^&\s\"']+")
# What is a credential by its shape, wherever a library (or we) might print it: JWTs and AssetPay client tokens
# (base64url JSON, `eyJ...`), bearer credentials, passwords in URLs, credential fields of JSON messages (a
# WebSocket's `{"type": "auth", "token": ...}` frame at DEBUG), credential query parameters.
_SHAPES = (
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "[redacted]"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), r"\1[redacted]@"),
    (
        re.compile(r"""(?i)(["']?(?:token|api[-_]?key|api[-_]?secret|secret|password)["']?\s*[:=]\s*["'])[^"']+"""),
        r"\1[redacted]",
    ),
    (re.compile(r"(?i)\b(token|api[-_]?key|api[-_]?secret|password|secret)=[^&\s\"',;)]+"), r"\1=[redacted]"),
)
_MIN_SECRET_LENGTH = 6  # shorter "secrets" would blank ordinary words; the settings refuse them anyway
_secrets: set[str] = set()
_secret_values: re.Pattern[str] | None = None


def redact_values(values: Iterable[str]) -> None:
    """Blank these exact values (the configured secrets) in every line the formatters write, whatever printed
    them; added to those already given."""
    global _secret_values
    _secrets.update(value for value in values if len(value) >= _MIN_SECRET_LENGTH)
    # Longest first, so a secret that contains another is blanked whole.
    alternatives = sorted(_secrets, key=len, reverse=True)
    _secret_values = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None


def redact(text: str) -> str:
    """`text` with every configured secret and everything shaped like a credential blanked."""
    if _secret_values is not None:
        text = _secret_values.sub("[redacted]", text)
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return text


class RedactQuerySecrets(logging.Filter):
    """Blanks `token=` (and `apiKey=`) values in log lines: uvicorn logs every WebSocket handshake's URL at INFO,
    and `/v1/ws?token=<JWT>` would put users' credentials in the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _QUERY_SECRET.sub(r"\1=[redacted]", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = _QUERY_SECRET.sub(r"\1=[redacted]", record.msg)
        return True


def redact_server_logs() -> None:
    """Install `RedactQuerySecrets` on uvicorn's loggers (once; they live as long as the process)."""
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQuerySecrets) for f in logger.filters):
            logger.addFilter(RedactQuerySecrets())


def logging_config(level: str = "INFO", *, json_lines: bool = False) -> dict[str, Any]:
    """The whole logging set-up as a `logging.config.dictConfig` dict: one stderr handler on the root with the
    context filter and our formatter, and uvicorn's loggers sending their lines to it (instead of their own
    handlers), so that every line is in one format. uvicorn applies it in each worker process it spawns."""
    level = level.upper()
    quiet = logging.getLevelName(max(logging.WARNING, logging.getLevelName(level)))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": LogContext}},
        "formatters": {"line": {"()": JsonFormatter if json_lines else TextFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "line",
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "level": "INFO", "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": level, "propagate": True},
            # pgserver narrates every command it runs at INFO; its warnings still come through.
            "pgserver": {"level": quiet},
        },
    }


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    logging.config.dictConfig(logging_config(level, json_lines=json_lines))


MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


@contextmanager
def shared_metrics(processes: int) -> Iterator[None]:
    """Several worker processes: they keep their metrics in files of one fresh directory, so a scrape of any of
    them reports the sum over all. Set up before the workers start (prometheus-client reads it at import)."""
    if processes <= 1 or os.environ.get(MULTIPROCESS_DIR):
        yield
        return
    directory = tempfile.mkdtemp(prefix="assetpay-metrics-")
    os.environ[MULTIPROCESS_DIR] = directory
    try:
        yield
    finally:
        del os.environ[MULTIPROCESS_DIR]
        shutil.rmtree(directory, ignore_errors=True)


def exposition() -> bytes:
    """The metrics in Prometheus' text format: this process's, or every worker's when they share them."""
    if not os.environ.get(MULTIPROCESS_DIR):
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
