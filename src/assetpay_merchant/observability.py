"""Logging set-up and the Prometheus metrics every part of the service reports to."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

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
MARKET_CACHE_FEED_UPDATES = Counter(
    "market_cache_feed_updates_total",
    "Cached market pages changed because of the realtime feed, by action (patched in place, dropped)",
    ["action"],
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


_QUERY_SECRET = re.compile(r"(?i)\b(token|apiKey|api-key)=[^&\s\"']+")


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


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pgserver narrates every command it runs at INFO; its warnings still come through.
    logging.getLogger("pgserver").setLevel(max(logging.WARNING, root.level))


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
