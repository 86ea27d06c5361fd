"""Webhook throughput benchmark: the app's signed-callback intake against pgbench doing the same SQL.

    python bench/webhooks.py [--duration 20] [--senders 16] [--workers 2] [--database-url URL]

One command, no set-up: it creates a scratch database (on the PostgreSQL server at --database-url, by default
postgresql://postgres@127.0.0.1:5432/postgres, or on an embedded server when that one is not reachable), migrates it,
serves the app from it with `assetpay-merchant serve` on a free loopback port, registers --users users through the
API, and then, for --duration seconds after a --warmup, has --senders concurrent senders post signed AssetPay trade
callbacks that walk deposits through hold -> completed (or hold -> reverted), --duplicate-share of them exact
resends (same delivery id, header and body) of an earlier delivery. Every answer must be 200.

Then pgbench runs, on the same database for the same time with as many clients, the same work in one round trip
per delivery (bench/webhook_delivery_1rt.sql calling the PL/pgSQL bench_delivery() of
bench/webhook_delivery_function.sql, created in the scratch database), and bench/webhook_delivery.sql, the same
statements the app sends per callback; the summary compares the app with both (targets: app / one-trip pgbench
>= 0.40, p99 < 50 ms; with --runs N: the median run's ratio, p99 in four runs of five). The ledger is checked
after each phase (`assetpay_merchant.store.ledger.check`, plus the balances the senders expect), the scratch
database is dropped, and every process started here is stopped, also on errors. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import importlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import simplejson
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from assetpay_merchant.gateway.signature import SIGNATURE_HEADER, signature_header
from assetpay_merchant.store.database import Database, create_engine
from assetpay_merchant.store.embedded import EmbeddedPostgres
from assetpay_merchant.store.ledger import check
from assetpay_merchant.store.migrations import upgrade_async

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PGBENCH_SCRIPT = BENCH_DIR / "webhook_delivery.sql"
PGBENCH_ONE_TRIP_SCRIPT = BENCH_DIR / "webhook_delivery_1rt.sql"
PGBENCH_FUNCTION = BENCH_DIR / "webhook_delivery_function.sql"
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

WEBHOOK_SECRET = "bench-webhook-secret"  # a throw-away secret for a throw-away app
ADMIN_KEY = "bench-admin-key"
JWT_SECRET = "bench-jwt-secret-of-at-least-32-bytes"
TRADE_URL = "https://steamcommunity.com/tradeoffer/new/?partner=39734273&token=AbCdEf12"
STEAM_ID_BASE = 76561198100000000  # user i has Steam id STEAM_ID_BASE + i (the pgbench script knows this too)
USER_PREFIX = "bench-user-"  # user i is USER_PREFIX + str(i), i = 1..users (the pgbench script knows this too)
CENT = Decimal("0.01")
PRE_CREDIT_SHARE = Decimal("0.6")
MAX_IN_HOLD_PER_SENDER = 4
RECENT_DELIVERIES = 2000  # duplicates resend one of these (well inside the 300 s signature tolerance)

TARGET_RATIO = 0.40
"""App deliveries/s over pgbench's tps on the one-round-trip version of the same work."""
TARGET_P99_MS = 50.0
TARGET_P99_SHARE = 0.8
"""With --runs: the share of runs whose p99 must be under TARGET_P99_MS (four of five)."""

ITEMS = [
    ("AK-47 | Redline (Field-Tested)", "AK-47 | Redline"),
    ("AWP | Asiimov (Battle-Scarred)", "AWP | Asiimov"),
    ("M4A1-S | Printstream (Minimal Wear)", "M4A1-S | Printstream"),
    ("Glock-18 | Fade (Factory New)", "Glock-18 | Fade"),
    ("USP-S | Kill Confirmed (Well-Worn)", "USP-S | Kill Confirmed"),
]
ICON = "https://community.cloudflare.steamstatic.com/economy/image/-9a81dlWLwJ2UUGcVs_nsVtzdOEdtWwKGZZLQHTxDZ7I56KU0Zwwo4NUX4oFJZEHLbXH5ApeO4YmlhxYQknCRvCo04DEVlxkKgpot7HxfDhjxszJemkV09-5lpKKqPrxN7LEmyVQ7MEpiLuSrYmnjQO3-UdsZGHyd4_Bd1RvNQ7T_FDrw-_ng5Pu75iY1zI97bhLsvQz"

T = TypeVar("T")


# The app's SQL that bench/webhook_delivery.sql copies, by fingerprint (sha256 of the whitespace-collapsed text),
# and the other SQL of those modules (not on the trade-callback path). When they change, the summary warns that the
# script may no longer do the app's work: update the script, then these (`--sql-fingerprints` prints them).
SQL_MODULES = (
    "assetpay_merchant.store.deliveries",
    "assetpay_merchant.store.trades",
    "assetpay_merchant.store.ledger",
    "assetpay_merchant.store.events",
)
MIRRORED_SQL = {
    "assetpay_merchant.store.deliveries._RECORD": "462620d33f9c",
    "assetpay_merchant.store.trades._LOCK_BY_REF_OR_OWNER": "506a171d16f9",
    "assetpay_merchant.store.trades._INSERT": "b29e27269a64",
    "assetpay_merchant.store.ledger._POST_AND_SAVE": "222a0100c404",
    "assetpay_merchant.store.events._APPEND": "f2cd3b688342",
}
OTHER_SQL = {
    "assetpay_merchant.store.trades._LOCK_BY_REF",  # a new trade's insert lost a race; a user given by the caller
    "assetpay_merchant.store.trades._FIND_USER",  # attributing a trade recorded without a user
    "assetpay_merchant.store.deliveries._OUTCOME",  # callbacks that settle no trade (crypto, unknown kinds)
    "assetpay_merchant.store.trades._SAVE",  # saving a trade without posting (flagging an unreadable answer)
    "assetpay_merchant.store.ledger._POST",  # operators' adjustments
    "assetpay_merchant.store.trades.SELECT_TRADE",
    "assetpay_merchant.store.trades._FIND_BY_ID",
    "assetpay_merchant.store.trades._LOCK_BY_ID",
    "assetpay_merchant.store.trades._ORPHANS",
    "assetpay_merchant.store.trades._FLAG_BY_ASSETPAY_ID",
    "assetpay_merchant.store.trades._QUIET_IN_FLIGHT",
    "assetpay_merchant.store.ledger.SELECT_TRADE",
    "assetpay_merchant.store.ledger._BALANCES_OFF",
    "assetpay_merchant.store.ledger._TRADES_WITH_ENTRIES",
    "assetpay_merchant.store.events._SINCE",
    "assetpay_merchant.store.events._HAS",
    "assetpay_merchant.store.events._LAST",
    "assetpay_merchant.store.events._PURGE",
}
SQL_PATTERN = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)


def app_sql_fingerprints() -> dict[str, str]:
    """Every module-level SQL string of the callback path's modules, by fingerprint."""
    found = {}
    for module_name in SQL_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if isinstance(value, str) and SQL_PATTERN.match(value):
                found[f"{module_name}.{name}"] = hashlib.sha256(" ".join(value.split()).encode()).hexdigest()[:12]
    return found


def sql_drift() -> list[str]:
    """How the app's SQL differs from what bench/webhook_delivery.sql was written against."""
    try:
        current = app_sql_fingerprints()
    except ImportError as exc:
        return [f"cannot read the app's SQL: {exc}"]
    drift = [f"{name} changed" for name, print_ in MIRRORED_SQL.items() if current.get(name, print_) != print_]
    drift += [f"{name} is gone" for name in MIRRORED_SQL if name not in current]
    drift += [f"{name} is new" for name in current if name not in MIRRORED_SQL and name not in OTHER_SQL]
    return drift


class BenchError(RuntimeError):
    """The benchmark could not run (as opposed to running and missing its targets)."""


# ---------------------------------------------------------------------------------------------------------------
# small helpers


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(share * len(sorted_values))))
    return sorted_values[rank - 1]


def plain_url(url: URL) -> str:
    """A libpq/asyncpg URL (no `+asyncpg` driver suffix), password kept."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def is_loopback(url: URL) -> bool:
    host = url.host or url.query.get("host")
    if host is None or (isinstance(host, str) and host.startswith("/")):
        return True  # the default or a Unix socket: this machine
    return str(host) in {"127.0.0.1", "localhost", "::1"}


# ---------------------------------------------------------------------------------------------------------------
# the database server and the scratch database


@dataclass
class Server:
    url: URL  # the maintenance database on the server (CREATE/DROP DATABASE run there)
    pgbench: str
    embedded: EmbeddedPostgres | None = None
    temp_dir: tempfile.TemporaryDirectory[str] | None = None

    def database(self, name: str) -> URL:
        return self.url.set(database=name)

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
        if self.temp_dir is not None:
            self.temp_dir.cleanup()
            self.temp_dir = None


async def reachable(url: URL) -> bool:
    try:
        connection = await asyncpg.connect(plain_url(url), timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await connection.close()
    return True


def embedded_pgbench() -> str:
    import pgserver  # type: ignore[import-untyped]

    candidate = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pgbench"
    if not candidate.is_file():
        raise BenchError(f"the embedded PostgreSQL has no pgbench at {candidate}")
    return str(candidate)


async def open_server(database_url: str | None) -> Server:
    """The server at --database-url; else the local default; else (no URL given) an embedded one in a temp dir."""
    url = make_url(database_url or DEFAULT_SERVER)
    if url.get_backend_name() != "postgresql":
        raise BenchError(f"--database-url must be a PostgreSQL URL, got {url.get_backend_name()!r}")
    url = url.set(drivername="postgresql")
    if not is_loopback(url):
        raise BenchError(f"refusing a database that is not on this machine: {url.host}")
    if await reachable(url):
        return Server(url=url, pgbench=shutil.which("pgbench") or embedded_pgbench())
    if database_url is not None:
        raise BenchError(f"cannot connect to {url.render_as_string()}")
    log(f"no PostgreSQL at {url.render_as_string()}: starting an embedded one")
    temp_dir = tempfile.TemporaryDirectory(prefix="assetpay-bench-pg-")
    embedded = EmbeddedPostgres(Path(temp_dir.name), database="postgres")
    try:
        started = await asyncio.to_thread(embedded.start)
    except BaseException:
        embedded.stop()
        temp_dir.cleanup()
        raise
    return Server(url=make_url(started), pgbench=embedded_pgbench(), embedded=embedded, temp_dir=temp_dir)


async def admin(server: Server, statement: str) -> None:
    connection = await asyncpg.connect(plain_url(server.url), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def scratch_database(server: Server, keep: bool) -> AsyncIterator[URL]:
    name = f"assetpay_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    await admin(server, f'CREATE DATABASE "{name}"')
    log(f"created scratch database {name}")
    try:
        yield server.database(name)
    finally:
        if keep:
            log(f"kept scratch database {name} (--keep-database)")
        else:
            await admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            log(f"dropped scratch database {name}")


# ---------------------------------------------------------------------------------------------------------------
# the app, as a subprocess


class App:
    """`assetpay-merchant serve` in its own process group, so that it and its uvicorn workers stop together."""

    def __init__(
        self, database: URL, port: int, workers: int, log_path: Path, profiler: CProfile | None = None
    ) -> None:
        self.database = database
        self.profiler = profiler
        self.port = port
        self.workers = workers
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        script = Path(sys.executable).parent / "assetpay-merchant"
        found = str(script) if script.is_file() else shutil.which("assetpay-merchant")
        launcher = [found] if found else [sys.executable, "-m", "assetpay_merchant.cli"]
        command = [*launcher, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]
        return self.profiler.wrap(command) if self.profiler is not None else command

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("ASSETPAY_")}
        env.update(
            DATABASE_URL=plain_url(self.database),
            ASSETPAY_API_SECRET=WEBHOOK_SECRET,
            ASSETPAY_API_SECRET_PREVIOUS="",
            ASSETPAY_API_KEY="ap_bench_key",
            ADMIN_API_KEY=ADMIN_KEY,
            AUTH_JWT_SECRET=JWT_SECRET,
            LOG_LEVEL="WARNING",
            LOG_JSON="false",
        )
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(
                self.command(),
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.profiler is not None:
            self.profiler.pid = self.process.pid
        log(f"app started (pid {self.process.pid}, {self.workers} worker(s)) on {self.base_url}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_ready(self, client: httpx.AsyncClient, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise BenchError(f"the app exited before it was ready:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                response = await client.get("/readyz", timeout=2)
                if response.status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise BenchError(f"the app was not ready after {within:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # The group is the one start_new_session made for this process: the app and its workers, nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        log(f"app stopped (exit {process.returncode})")


class CpuSnapshot:
    """CPU seconds used so far, from /proc (Linux): the whole machine, and by who (app, bench, PostgreSQL, pgbench).

    Other work on the machine (tests, builds) skews every figure on a 2-core box; the difference between two
    snapshots says how much of the window went to someone else.
    """

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, database: str, app_pgid: int | None = None, pgbench_pid: int | None = None) -> None:
        self.database = database
        self.at = time.perf_counter()
        self.busy = self.idle = 0.0
        self.groups: collections.Counter[str] = collections.Counter()
        try:
            with open("/proc/stat") as stat:
                values = [float(v) / self.TICK for v in stat.readline().split()[1:]]
        except OSError:
            return
        self.idle = values[3] + values[4]  # idle + iowait
        self.busy = sum(values[:8]) - self.idle  # user nice system idle iowait irq softirq steal
        me = os.getpid()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    raw = stat.read()
            except OSError:
                continue
            pid = int(entry.name)
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2 :].split()
            seconds = (int(fields[11]) + int(fields[12])) / self.TICK
            if app_pgid is not None and int(fields[2]) == app_pgid:
                self.groups["app"] += seconds
            elif pid == me:
                self.groups["bench client"] += seconds
            elif pid == pgbench_pid:
                self.groups["pgbench"] += seconds
            elif comm == "postgres":
                self.groups[self._postgres_group(pid)] += seconds

    def _postgres_group(self, pid: int) -> str:
        """`postgres: [cluster:] <user> <database> <client> <state>`: our backend, another database's, or shared."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                title = cmdline.read().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            return "postgres"
        if title[:1] != ["postgres:"]:
            return "postgres (shared)"  # the postmaster
        words = title[1:]
        if words and words[0].endswith(":"):  # a cluster name, e.g. "15/main:"
            words = words[1:]
        if len(words) >= 3 and words[1] == self.database:
            return "postgres"
        if len(words) >= 3 and ("(" in words[2] or words[2] == "[local]"):
            return "other databases"  # a backend of another database on the same server
        return "postgres (shared)"  # postmaster, WAL writer, checkpointer, autovacuum: partly ours

    @staticmethod
    def usage(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
        """CPU seconds per group between the snapshots, plus `other processes` (the rest of the busy time)."""
        used = {name: max(0.0, end.groups[name] - start.groups[name]) for name in end.groups}
        busy = max(0.0, end.busy - start.busy)
        used["other processes"] = max(0.0, busy - sum(used.values()))
        used["machine busy"] = busy
        used["window"] = end.at - start.at
        return used


class Profiler:
    """Profiles the app during the measured window: `start()` when it opens, `stop()` when it closes."""

    output: Path

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def finish(self) -> None:
        """Wait for the profile to be written."""

    def kill(self) -> None: ...


class PySpy(Profiler):
    """py-spy sampling the app (and its workers) as collapsed stacks (`--format raw`)."""

    RATE = 250

    def __init__(self, app_pid: int, duration: float, output: Path) -> None:
        self.command = [
            shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(app_pid),
            "--subprocesses",
            "--gil",  # only the thread holding the GIL: Python work, not waits
            "--rate",
            str(self.RATE),
            "--duration",
            str(max(1, round(duration))),
            "--format",
            "raw",
            "--output",
            str(output),
        ]
        self.output = output
        self.process: subprocess.Popen[bytes] | None = None
        if not Path(self.command[0]).is_file():
            raise BenchError("--profile py-spy needs py-spy (pip install py-spy)")

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def finish(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise BenchError("py-spy did not finish") from None
        if process.returncode != 0:
            raise BenchError(f"py-spy failed: {stderr.decode(errors='replace').strip()[-500:]}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class CProfile(Profiler):
    """cProfile inside the app (bench/profiled_serve.py), CPU clock, switched on and off by signal."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.pid: int | None = None

    def wrap(self, command: list[str]) -> list[str]:
        """The app's command line, run under bench/profiled_serve.py instead of the console script."""
        return [
            sys.executable,
            str(BENCH_DIR / "profiled_serve.py"),
            str(self.output),
            *command[command.index("serve") :],
        ]

    def start(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGUSR1)

    def stop(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGUSR2)

    def finish(self) -> None:
        deadline = time.monotonic() + 30
        while not self.output.is_file() or self.output.stat().st_size == 0:
            if time.monotonic() > deadline:
                raise BenchError("the profiled app did not write its profile")
            time.sleep(0.1)
        time.sleep(0.5)  # let it finish writing


# Where a profiled function belongs, by the first pattern its file (or, for C functions, its name) contains.
LAYERS = [
    ("asyncpg", "asyncpg (driver)"),
    ("sqlalchemy", "SQLAlchemy (ORM + Core)"),
    ("pydantic", "pydantic"),
    ("fastapi", "FastAPI"),
    ("starlette", "Starlette"),
    ("uvicorn", "uvicorn + httptools"),
    ("httptools", "uvicorn + httptools"),
    ("simplejson", "JSON"),
    ("json", "JSON"),
    ("hmac", "signature (HMAC)"),
    ("hashlib", "signature (HMAC)"),
    ("gateway/signature", "signature (HMAC)"),
    ("prometheus_client", "Prometheus metrics"),
    ("assetpay_merchant", "app code (assetpay_merchant)"),
    ("greenlet", "asyncio / greenlet / anyio"),
    ("asyncio", "asyncio / greenlet / anyio"),
    ("uvloop", "asyncio / greenlet / anyio"),
    ("anyio", "asyncio / greenlet / anyio"),
    ("logging", "logging"),
    ("decimal", "Decimal"),
    ("uuid", "uuid"),
    ("datetime", "datetime"),
    ("enum", "enum"),
]


def layer_of(where: str) -> str | None:
    for pattern, layer in LAYERS:
        if pattern in where:
            return layer
    return None


def profile_layers(profiler: Profiler) -> tuple[dict[str, float], float]:
    """(seconds per layer, seconds in all) from a py-spy raw file or a cProfile dump."""
    layers: collections.Counter[str] = collections.Counter()
    if isinstance(profiler, PySpy):
        for line in profiler.output.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")[1:]  # the first is the process
            # The deepest frame that belongs somewhere known takes the sample ("self time by layer").
            layer = next((layer_of(frame) for frame in reversed(frames) if layer_of(frame)), None)
            layers[layer or "other (native / unattributed)"] += int(count) / PySpy.RATE
    else:
        import pstats

        stats = pstats.Stats(str(profiler.output)).stats  # type: ignore[attr-defined]
        for (filename, _, name), (_, _, own, _, callers) in stats.items():
            layer = layer_of(filename) if filename != "~" else layer_of(name)
            if layer is None and filename == "~" and callers:
                # A C function of no known layer (isinstance, getattr, ...): charged to its callers' layers.
                total = sum(caller[2] for caller in callers.values()) or 1.0
                for (caller_file, _, caller_name), caller in callers.items():
                    owner = layer_of(caller_file) or layer_of(caller_name) or "other"
                    layers[owner] += own * caller[2] / total
                continue
            layers[layer or "other"] += own
    return dict(layers), sum(layers.values())


# ---------------------------------------------------------------------------------------------------------------
# the load: signed trade callbacks


@dataclass
class BenchTrade:
    id: str
    external_id: str
    user: int
    total: Decimal
    pre: Decimal
    item: dict[str, Any]
    created_at: str

    @property
    def pending(self) -> Decimal:
        return self.total - self.pre


def new_trade(rng: random.Random, users: int) -> BenchTrade:
    total = (Decimal(rng.randint(1_000, 200_000)) * CENT).quantize(CENT)
    market_hash_name, name = rng.choice(ITEMS)
    item = {
        "id": f"item-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}",
        "assetId": str(rng.randint(30_000_000_000, 39_999_999_999)),
        "appid": 730,
        "marketHashName": market_hash_name,
        "name": name,
        "iconUrl": ICON,
        "tradable": True,
        "offer": {"price": total},
        "amount": 1,
    }
    return BenchTrade(
        id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        external_id=f"bench-dep-{uuid.UUID(int=rng.getrandbits(128)).hex}",
        user=rng.randint(1, users),
        total=total,
        pre=(total * PRE_CREDIT_SHARE).quantize(CENT),
        item=item,
        created_at=iso(datetime.now(UTC)),
    )


def callback_body(trade: BenchTrade, status: str) -> bytes:
    """`{"trade": Trade}` as AssetPay sends it: compact JSON, money as JSON numbers written from Decimals."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "id": trade.id,
        "type": "deposit",
        "source": "client",
        "externalId": trade.external_id,
        "externalClientUserId": f"{USER_PREFIX}{trade.user}",
        "clientSteamID": str(STEAM_ID_BASE + trade.user),
        "clientTradeUrl": TRADE_URL,
        "offerID": "7" + trade.id.replace("-", "")[:11].translate(str.maketrans("abcdef", "123456")),
        "status": status,
        "game": "730",
        "items": [trade.item],
        "totalPrice": trade.total,
        "preCredit": trade.pre,
        "pendingCredit": trade.pending,
        "isInstant": True,
        "collateral": {"merchant": trade.pre, "provider": 0},
        "holdEndDate": iso(now + timedelta(days=7)),
        "createdAt": trade.created_at,
        "updatedAt": iso(now),
    }
    if status == "reverted":
        body["revertedBy"] = "user"
    return simplejson.dumps({"trade": body}, use_decimal=True, separators=(",", ":")).encode()


def _sample() -> tuple[bytes, str]:
    """A hold callback of the load and its items as the app stores them (`TradeItem.stored()`), for pgbench."""
    trade = new_trade(random.Random(0), 1)
    item = trade.item
    stored = {key: item[key] for key in ("id", "assetId", "marketHashName", "name", "iconUrl")}
    stored.update(price=f"{trade.total:.2f}", amount=1)
    return callback_body(trade, "hold"), json.dumps([stored])


SAMPLE_BODY, SAMPLE_ITEMS = _sample()  # pgbench's -D raw_body / -D items
# The trade as `trade.updated` carries it (services/views.py), for pgbench's -D trade_view: same size, same shape.
SAMPLE_VIEW = json.dumps(
    {
        "id": str(uuid.UUID(int=1)),
        "assetpayId": str(uuid.UUID(int=2)),
        "externalId": "bench-dep-0",
        "type": "deposit",
        "status": "hold",
        "game": "730",
        "items": json.loads(SAMPLE_ITEMS),
        "totalPrice": "1019.89",
        "preCredit": "611.93",
        "pendingCredit": "407.96",
        "credited": "611.93",
        "error": None,
        "holdEndDate": "2026-12-09T01:19:30.855000Z",
        "createdAt": "2026-12-02T01:19:30.855000Z",
        "updatedAt": "2026-12-02T01:19:30.855000Z",
    }
)


@dataclass(frozen=True, slots=True)
class Delivery:
    kind: str  # hold | completed | reverted | duplicate
    headers: dict[str, str]
    body: bytes

    @classmethod
    def sign(cls, kind: str, body: bytes) -> Delivery:
        delivery_id = f"dlv-{uuid.uuid4()}"
        header = signature_header(WEBHOOK_SECRET.encode(), delivery_id, iso(datetime.now(UTC)), body)
        return cls(kind, {SIGNATURE_HEADER: header, "Content-Type": "application/json"}, body)


@dataclass
class LoadStats:
    latencies: list[float] = field(default_factory=list)  # seconds, measured window only
    by_kind: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    sent: collections.Counter[str] = field(default_factory=collections.Counter)  # every send, warm-up included
    measured: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    failure_count: int = 0
    duplicates_unrecognised: int = 0
    expected: dict[int, Decimal] = field(default_factory=lambda: collections.defaultdict(Decimal))
    trades: int = 0

    def fail(self, message: str) -> None:
        self.failure_count += 1
        if len(self.failures) < 10:
            self.failures.append(message)


WEBHOOK_PATH = "/webhooks/assetpay"


class HttpxSender:
    """`--client httpx`: posts through the one shared httpx.AsyncClient."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(self, delivery: Delivery) -> tuple[int, bytes]:
        response = await self.client.post(WEBHOOK_PATH, content=delivery.body, headers=delivery.headers)
        return response.status_code, response.content

    async def close(self) -> None:
        pass


class RawSender:
    """`--client raw` (the default): hand-written HTTP/1.1 on a keep-alive connection of its own, ~1/8 of httpx CPU.

    On a 2-core machine the load generator competes with the app for CPU; this keeps its share small.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, delivery: Delivery) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = [
            f"POST {WEBHOOK_PATH} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            f"Content-Length: {len(delivery.body)}",
        ]
        head += [f"{name}: {value}" for name, value in delivery.headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + delivery.body)
        try:
            status_line = await self.reader.readline()
            length, close = 0, False
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                    close = True
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise httpx.RemoteProtocolError(f"connection lost: {exc}") from exc
        if close:
            await self.close()
        return int(status_line.split()[1]), body

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class Load:
    """--senders senders; each walks its own deposits hold -> completed|reverted."""

    def __init__(self, client: httpx.AsyncClient, port: int, args: argparse.Namespace) -> None:
        self.client = client
        self.port = port
        self.args = args
        self.stats = LoadStats()
        self.recent: collections.deque[Delivery] = collections.deque(maxlen=RECENT_DELIVERIES)

    async def run(self, start: float) -> tuple[float, float]:
        """Warm up, then measure; returns (measure start, measure end) on the perf_counter clock."""
        measure_from = start + self.args.warmup
        until = measure_from + self.args.duration
        await asyncio.gather(
            *(
                self.sender(random.Random(self.args.seed * 1000 + n), measure_from, until)
                for n in range(self.args.senders)
            )
        )
        return measure_from, until

    async def sender(self, rng: random.Random, measure_from: float, until: float) -> None:
        poster = RawSender(self.port) if self.args.client == "raw" else HttpxSender(self.client)
        try:
            await self.walk(poster, rng, measure_from, until)
        finally:
            await poster.close()

    async def walk(
        self, poster: HttpxSender | RawSender, rng: random.Random, measure_from: float, until: float
    ) -> None:
        in_hold: list[BenchTrade] = []
        while time.perf_counter() < until:
            if self.recent and rng.random() < self.args.duplicate_share:
                original = self.recent[rng.randrange(len(self.recent))]
                await self.send(poster, Delivery("duplicate", original.headers, original.body), measure_from)
                continue
            if not in_hold or (len(in_hold) < MAX_IN_HOLD_PER_SENDER and rng.random() < 0.5):
                trade = new_trade(rng, self.args.users)
                delivery = Delivery.sign("hold", callback_body(trade, "hold"))
                if await self.send(poster, delivery, measure_from):
                    in_hold.append(trade)
                    self.stats.trades += 1
                    self.stats.expected[trade.user] += trade.pre
                continue
            trade = in_hold.pop(rng.randrange(len(in_hold)))
            status = "reverted" if rng.random() < self.args.revert_share else "completed"
            delivery = Delivery.sign(status, callback_body(trade, status))
            if await self.send(poster, delivery, measure_from):
                self.stats.expected[trade.user] += trade.pending if status == "completed" else -trade.pre

    async def send(self, poster: HttpxSender | RawSender, delivery: Delivery, measure_from: float) -> bool:
        started = time.perf_counter()
        try:
            status, content = await poster.post(delivery)
        except (httpx.HTTPError, OSError) as exc:
            self.stats.fail(f"{delivery.kind}: {type(exc).__name__}: {exc}")
            return False
        finished = time.perf_counter()
        self.stats.sent[delivery.kind] += 1
        if measure_from <= started:  # every send starts before `until`
            self.stats.latencies.append(finished - started)
            self.stats.by_kind[delivery.kind].append(finished - started)
            self.stats.measured[delivery.kind] += 1
        if status != 200:
            self.stats.fail(f"{delivery.kind}: HTTP {status} {content[:300].decode(errors='replace')}")
            return False
        answer = json.loads(content)
        if delivery.kind == "duplicate":
            if answer.get("duplicate") is not True:
                self.stats.duplicates_unrecognised += 1
                self.stats.fail(f"duplicate not recognised: {answer}")
        elif answer != {"received": True}:
            self.stats.fail(f"{delivery.kind}: unexpected answer {answer}")
            return False
        else:
            self.recent.append(delivery)
        return True


async def register_users(client: httpx.AsyncClient, users: int) -> None:
    semaphore = asyncio.Semaphore(16)

    async def put(n: int) -> None:
        async with semaphore:
            response = await client.put(
                f"/v1/users/{USER_PREFIX}{n}",
                json={"steamId": str(STEAM_ID_BASE + n), "tradeUrl": TRADE_URL},
                headers={"X-Admin-Key": ADMIN_KEY},
            )
        if response.status_code not in (200, 201):
            raise BenchError(f"registering user {n} failed: HTTP {response.status_code} {response.text[:300]}")

    await asyncio.gather(*(put(n) for n in range(1, users + 1)))


# ---------------------------------------------------------------------------------------------------------------
# checks on the database


@dataclass
class LedgerReport:
    problems: list[str]
    balance_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.balance_mismatches


async def ledger_report(database: URL, expected: dict[int, Decimal] | None = None) -> LedgerReport:
    engine = create_engine(plain_url(database), poolclass=NullPool)
    try:
        async with Database(engine).snapshot() as db:
            problems = [f"{p.subject}: {p.detail}" for p in await check(db)]
        mismatches: list[str] = []
        if expected is not None:
            connection = await asyncpg.connect(plain_url(database))
            try:
                rows = await connection.fetch("SELECT user_id, available FROM balances")
            finally:
                await connection.close()
            actual = {row["user_id"]: row["available"] for row in rows}
            for user, amount in expected.items():
                got = actual.get(f"{USER_PREFIX}{user}", Decimal(0))
                if got != amount:
                    mismatches.append(f"{USER_PREFIX}{user}: balance {got}, the senders expect {amount}")
    finally:
        await engine.dispose()
    return LedgerReport(problems, mismatches)


async def analyze(database: URL, vacuum: bool = False) -> None:
    connection = await asyncpg.connect(plain_url(database))
    try:
        await connection.execute("VACUUM ANALYZE" if vacuum else "ANALYZE")
    finally:
        await connection.close()


# ---------------------------------------------------------------------------------------------------------------
# pgbench


@dataclass
class PgbenchResult:
    tps: float
    latency_ms: float | None
    transactions: int
    failed: int
    command: list[str]
    output: str
    cpu: dict[str, float]


TPS_PATTERN = re.compile(
    r"^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)", re.M
)


def pgbench_command(
    server: Server, database: URL, args: argparse.Namespace, duration: int, script: Path = PGBENCH_SCRIPT
) -> tuple[list[str], dict[str, str]]:
    host = database.host or database.query.get("host")
    command = [server.pgbench, "-n", "-M", "prepared", "-c", str(args.senders), "-j", str(args.pgbench_threads)]
    command += ["-T", str(duration), "-f", str(script)]
    defines = {
        "users": args.users,
        "dup_pct": round(args.duplicate_share * 100),
        "revert_pct": round(args.revert_share * 100),
        "steam_base": STEAM_ID_BASE,
        "d": 0,
        "t": 0,
        "phase": 0,
        "dkey": 0,
        "tkey": 0,
        "raw_body": SAMPLE_BODY.decode(),
        "items": SAMPLE_ITEMS,
        "trade_view": SAMPLE_VIEW,
    }
    for name, value in defines.items():
        command += ["-D", f"{name}={value}"]
    if host:
        command += ["-h", str(host)]
    if database.port:
        command += ["-p", str(database.port)]
    if database.username:
        command += ["-U", database.username]
    command.append(str(database.database))
    env = dict(os.environ)
    if database.password:
        env["PGPASSWORD"] = str(database.password)
    return command, env


async def run_pgbench(
    server: Server, database: URL, args: argparse.Namespace, script: Path = PGBENCH_SCRIPT
) -> PgbenchResult:
    duration = max(1, round(args.duration))
    command, env = pgbench_command(server, database, args, duration, script)
    log(f"pgbench: {' '.join(command)}")
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    cpu_task = asyncio.create_task(watch_pgbench(str(database.database), process.pid, duration))
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=duration + 120)
        cpu = await cpu_task
    finally:
        cpu_task.cancel()
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = stdout.decode(errors="replace")
    match = TPS_PATTERN.search(output)
    if process.returncode != 0 or match is None:
        raise BenchError(f"pgbench failed (exit {process.returncode}):\n{output[-3000:]}")
    latency = re.search(r"^latency average = ([0-9.]+) ms", output, re.M)
    processed = re.search(r"^number of transactions actually processed: (\d+)", output, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", output, re.M)
    return PgbenchResult(
        tps=float(match.group(1)),
        latency_ms=float(latency.group(1)) if latency else None,
        transactions=int(processed.group(1)) if processed else 0,
        failed=int(failed.group(1)) if failed else 0,
        command=command,
        output=output,
        cpu=cpu,
    )


async def watch_pgbench(database: str, pid: int, duration: int) -> dict[str, float]:
    """CPU use while pgbench runs (sampled inside the run: its backends' CPU time vanishes when they exit)."""
    if duration < 3:
        return {}
    await asyncio.sleep(1)
    first = await asyncio.to_thread(CpuSnapshot, database, None, pid)
    await asyncio.sleep(duration - 1.5)
    last = await asyncio.to_thread(CpuSnapshot, database, None, pid)
    return CpuSnapshot.usage(first, last)


# ---------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Summary:
    started_at: str
    host: dict[str, Any]
    settings: dict[str, Any]
    app: dict[str, Any] = field(default_factory=dict)
    pgbench: dict[str, Any] = field(default_factory=dict)
    """pgbench on bench/webhook_delivery.sql: the app's statements, one round trip each."""
    pgbench_one_trip: dict[str, Any] = field(default_factory=dict)
    """pgbench on bench/webhook_delivery_1rt.sql: the same work in one round trip per delivery (the baseline)."""
    ledger: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None
    """App deliveries/s over the one-round-trip pgbench's tps (the target's ratio)."""
    ratio_statements: float | None = None
    """App deliveries/s over the statement-by-statement pgbench's tps (for comparison)."""
    cpu_ratio: float | None = None
    """The one-round-trip version's CPU per delivery (pgbench + PostgreSQL) over the app's (app + PostgreSQL + load
    generator): the throughput ratio two CPU-bound runs would have on an otherwise idle machine. Steadier than the
    throughput ratio when other work shares the machine; it leaves out what latency alone costs (commit waits)."""
    verdict: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.verdict) and all(self.verdict.values())


async def interruptible(work: Awaitable[T]) -> T:
    """`work`, cancelled by SIGINT or SIGTERM, so that every `finally` runs and nothing is left behind."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await work
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def run_interruptible(args: argparse.Namespace) -> Summary:
    return await interruptible(run(args))


async def run(args: argparse.Namespace) -> Summary:
    summary = Summary(
        started_at=iso(datetime.now(UTC)),
        host={"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        settings={
            key: getattr(args, key)
            for key in (
                "duration",
                "warmup",
                "senders",
                "workers",
                "client",
                "users",
                "duplicate_share",
                "revert_share",
                "seed",
            )
        },
    )
    summary.settings["sql_drift"] = sql_drift()
    summary.settings["code"] = code_version()
    server = await open_server(args.database_url)
    try:
        summary.settings["server"] = server.url.render_as_string(hide_password=True)
        summary.settings["embedded_postgres"] = server.embedded is not None
        async with scratch_database(server, args.keep_database) as database:
            await upgrade_async(plain_url(database))
            log("migrated to head")
            await run_app_phase(args, database, summary)
            if args.pgbench in ("both", "statements"):
                await analyze(database, vacuum=True)
                summary.pgbench = pgbench_summary(await run_pgbench(server, database, args))
                report = await ledger_report(database)
                summary.ledger["after_pgbench"] = {"ok": report.ok, "problems": report.problems[:20]}
            if args.pgbench in ("both", "one-trip"):
                await install_function(database)
                await analyze(database, vacuum=True)
                result = await run_pgbench(server, database, args, PGBENCH_ONE_TRIP_SCRIPT)
                summary.pgbench_one_trip = pgbench_summary(result)
                report = await ledger_report(database)
                summary.ledger["after_pgbench_one_trip"] = {"ok": report.ok, "problems": report.problems[:20]}
    finally:
        server.stop()
    finalise(summary, args)
    return summary


def pgbench_summary(result: PgbenchResult) -> dict[str, Any]:
    return {
        "tps": result.tps,
        "latency_avg_ms": result.latency_ms,
        "transactions": result.transactions,
        "failed": result.failed,
        "command": " ".join(result.command),
        "cpu_seconds": {name: round(value, 3) for name, value in result.cpu.items()},
        "cpu_ms_per_transaction": cpu_per(result.cpu, result.tps * result.cpu.get("window", 0)),
    }


async def install_function(database: URL) -> None:
    """bench_delivery(), the one-round-trip version of a delivery, in the scratch database (and nowhere else)."""
    connection = await asyncpg.connect(plain_url(database))
    try:
        await connection.execute(PGBENCH_FUNCTION.read_text())
    finally:
        await connection.close()


async def run_app_phase(args: argparse.Namespace, database: URL, summary: Summary) -> None:
    log_dir = Path(tempfile.mkdtemp(prefix="assetpay-bench-app-"))
    try:
        await measure_app(args, database, summary, log_dir / "app.log")
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


async def measure_app(args: argparse.Namespace, database: URL, summary: Summary, log_path: Path) -> None:
    profiler: Profiler | None = None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.profile:
        RESULTS_DIR.mkdir(exist_ok=True)
    if args.profile == "cprofile":
        profiler = CProfile(RESULTS_DIR / f"profile-cprofile-w{args.workers}-{stamp}.prof")
    app = App(database, free_port(), args.workers, log_path, profiler if isinstance(profiler, CProfile) else None)
    limits = httpx.Limits(max_connections=args.senders + 4, max_keepalive_connections=args.senders + 4)
    try:
        app.start()
        assert app.process is not None
        if args.profile == "py-spy":
            profiler = PySpy(app.process.pid, args.duration, RESULTS_DIR / f"profile-pyspy-w{args.workers}-{stamp}.txt")
        async with httpx.AsyncClient(base_url=app.base_url, limits=limits, timeout=30, trust_env=False) as client:
            await app.wait_ready(client)
            await register_users(client, args.users)
            log(f"registered {args.users} users; sending for {args.warmup:g} s warm-up + {args.duration:g} s")
            load = Load(client, app.port, args)
            start = time.perf_counter()
            (measure_from, until), cpu = await asyncio.gather(
                load.run(start), watch_window(start, args, database, app.process.pid, profiler)
            )
            if profiler is not None:
                await asyncio.to_thread(profiler.finish)
                log(f"profile written to {profiler.output}")
    finally:
        if profiler is not None:
            profiler.kill()
        app.stop()
    stats = load.stats
    latencies = sorted(stats.latencies)
    measured = sum(stats.measured.values())
    window = until - measure_from
    if profiler is not None and measured:
        layers, total = profile_layers(profiler)
        # Shares of what the profiler saw, put in CPU ms by the app's measured CPU per delivery (cProfile's own
        # overhead and py-spy's wall-clock samples make their absolute figures incomparable).
        app_ms = cpu.get("app", 0.0) * 1000 / measured
        summary.profile = {
            "tool": args.profile,
            "file": str(profiler.output),
            "app_cpu_ms_per_delivery": round(app_ms, 3),
            "layers": {
                name: {"share": round(seconds / total, 4), "ms_per_delivery": round(seconds / total * app_ms, 3)}
                for name, seconds in sorted(layers.items(), key=lambda item: -item[1])
                if total > 0
            },
        }
    summary.app = {
        "deliveries_per_s": measured / window if window > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p90_ms": percentile(latencies, 0.90) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else float("nan"),
        "measured": dict(stats.measured),
        "by_kind_ms": {
            kind: {"p50": percentile(sorted(values), 0.5) * 1000, "p99": percentile(sorted(values), 0.99) * 1000}
            for kind, values in sorted(stats.by_kind.items())
        },
        "sent_total": dict(stats.sent),
        "trades": stats.trades,
        "non_200_or_wrong_answer": stats.failure_count,
        "failures": stats.failures,
        "cpu_seconds": {name: round(value, 3) for name, value in cpu.items()},
        "cpu_ms_per_delivery": cpu_per(cpu, measured),
    }
    if stats.failures:
        log("app answers that were not as expected:\n  " + "\n  ".join(stats.failures))
        log(f"app log tail:\n{app.log_tail()}")
    report = await ledger_report(database, stats.expected)
    summary.ledger["after_app"] = {
        "ok": report.ok,
        "problems": report.problems[:20],
        "balance_mismatches": report.balance_mismatches[:20],
    }


def cpu_per(cpu: dict[str, float], count: float) -> dict[str, float]:
    """CPU milliseconds per delivery (or transaction), by who spent them."""
    if count <= 0:
        return {}
    skip = {"window", "machine busy"}
    return {name: round(value * 1000 / count, 3) for name, value in cpu.items() if name not in skip}


async def watch_window(
    start: float, args: argparse.Namespace, database: URL, app_pgid: int | None, profiler: Profiler | None
) -> dict[str, float]:
    """CPU use during the measured window (and the profiler, started when it opens).

    Halfway through the warm-up the tables are analyzed: a fresh database has no statistics, and the plans the
    app's connections cache for the empty tables (sequential scans of `trades`) would otherwise stay until
    autovacuum comes by, each lock reading the whole growing table. pgbench gets the same (VACUUM ANALYZE first).
    """
    await asyncio.sleep(max(0.0, start + args.warmup / 2 - time.perf_counter()))
    await analyze(database)
    await asyncio.sleep(max(0.0, start + args.warmup - time.perf_counter()))
    first = await asyncio.to_thread(CpuSnapshot, str(database.database), app_pgid)
    if profiler is not None:
        profiler.start()
    await asyncio.sleep(max(0.0, start + args.warmup + args.duration - time.perf_counter()))
    if profiler is not None:
        profiler.stop()
    last = await asyncio.to_thread(CpuSnapshot, str(database.database), app_pgid)
    return CpuSnapshot.usage(first, last)


def code_version() -> str:
    """The commit the app runs from, `+changes` when src/ has uncommitted edits."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "migrations"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+changes" if dirty else commit


def finalise(summary: Summary, args: argparse.Namespace) -> None:
    app, pgb, one = summary.app, summary.pgbench, summary.pgbench_one_trip
    if pgb and pgb["tps"] > 0:
        summary.ratio_statements = app["deliveries_per_s"] / pgb["tps"]
    if one and one["tps"] > 0:
        summary.ratio = app["deliveries_per_s"] / one["tps"]
        theirs = sum(one.get("cpu_ms_per_transaction", {}).get(name, 0.0) for name in ("pgbench", "postgres"))
        ours = sum(app.get("cpu_ms_per_delivery", {}).get(name, 0.0) for name in ("app", "postgres", "bench client"))
        if theirs > 0 and ours > 0:
            summary.cpu_ratio = theirs / ours
    summary.verdict = {
        "all_answers_200": app["non_200_or_wrong_answer"] == 0,
        "ledger_consistent": all(phase["ok"] for phase in summary.ledger.values()),
        f"p99_below_{TARGET_P99_MS:g}ms": app["p99_ms"] < TARGET_P99_MS,
    }
    if summary.ratio is not None:
        summary.verdict[f"ratio_at_least_{TARGET_RATIO:.2f}"] = summary.ratio >= TARGET_RATIO


def cpu_line(per: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in per.items()) or "n/a"


def noisy(cpu: dict[str, float]) -> float:
    """The share of the machine's CPU that went to someone else during a window."""
    window = cpu.get("window", 0.0)
    others = cpu.get("other processes", 0.0) + cpu.get("other databases", 0.0)
    return others / (window * (os.cpu_count() or 1)) if window > 0 else 0.0


def print_summary(summary: Summary) -> None:
    app, pgb, s = summary.app, summary.pgbench, summary.settings
    mix = ", ".join(f"{kind} {count}" for kind, count in sorted(app["measured"].items()))
    lines = [
        "",
        "== webhook throughput ==",
        f"setup     : {s['senders']} senders ({s['client']}), {s['workers']} app worker(s), {s['users']} users, "
        f"{s['duration']:g} s measured after {s['warmup']:g} s warm-up, {os.cpu_count()} CPUs"
        + (" (embedded PostgreSQL)" if s.get("embedded_postgres") else "")
        + f", code {s.get('code', '?')}",
        f"app       : {app['deliveries_per_s']:8.1f} deliveries/s   p50 {app['p50_ms']:6.2f} ms   "
        f"p90 {app['p90_ms']:6.2f} ms   p99 {app['p99_ms']:6.2f} ms   max {app['max_ms']:6.1f} ms",
        f"            measured: {mix}; {app['trades']} trades; non-200/wrong answers: {app['non_200_or_wrong_answer']}",
        "            p50/p99 ms by kind: "
        + ", ".join(f"{kind} {v['p50']:.1f}/{v['p99']:.1f}" for kind, v in app.get("by_kind_ms", {}).items()),
        f"            CPU ms per delivery: {cpu_line(app.get('cpu_ms_per_delivery', {}))}",
    ]
    for label, run, ratio in (
        ("statements", pgb, summary.ratio_statements),
        ("one trip", summary.pgbench_one_trip, summary.ratio),
    ):
        if not run:
            continue
        lines.append(
            f"pgbench   : {label}: {run['tps']:8.1f} tps (without connection time), latency avg "
            f"{run['latency_avg_ms']} ms, {run['failed']} failed"
        )
        lines.append(f"            CPU ms per transaction: {cpu_line(run.get('cpu_ms_per_transaction', {}))}")
        if ratio is not None:
            target = f"; target >= {TARGET_RATIO:.2f}" if run is summary.pgbench_one_trip else ""
            lines.append(f"ratio     : {ratio:.3f} (app / pgbench {label}{target})")
    if summary.cpu_ratio is not None:
        lines.append(
            f"CPU ratio : {summary.cpu_ratio:.3f} (one-trip pgbench + PostgreSQL CPU per transaction over app + "
            "PostgreSQL + client CPU per delivery)"
        )
    for phase, report in summary.ledger.items():
        state = (
            "consistent"
            if report["ok"]
            else "INCONSISTENT: " + "; ".join(report.get("problems", [])[:3] + report.get("balance_mismatches", [])[:3])
        )
        lines.append(f"ledger    : {phase.replace('_', ' ')}: {state}")
    if summary.profile:
        p = summary.profile
        lines.append(
            f"profile   : {p['tool']} ({p['file']}); shares of the app's {p['app_cpu_ms_per_delivery']:.2f} ms "
            "CPU per delivery (with the profiler on):"
        )
        for name, layer in p["layers"].items():
            lines.append(f"            {layer['ms_per_delivery']:6.2f} ms  {layer['share']:4.0%}  {name}")
    for drift in s.get("sql_drift", []):
        lines.append(
            f"WARNING   : the app's SQL moved on ({drift}): bench/webhook_delivery.sql may no longer do its work"
        )
    for phase, cpu in (
        ("app", app.get("cpu_seconds", {})),
        ("pgbench", pgb.get("cpu_seconds", {})),
        ("one-trip pgbench", summary.pgbench_one_trip.get("cpu_seconds", {})),
    ):
        if noisy(cpu) > 0.05:
            lines.append(
                f"WARNING   : other processes used {noisy(cpu):.0%} of the machine during the {phase} run: "
                "figures are skewed, rerun on a quiet machine"
            )
    for name, ok in summary.verdict.items():
        lines.append(f"{'PASS' if ok else 'FAIL'}      : {name}")
    lines.append(f"RESULT    : {'PASS' if summary.passed else 'FAIL'}")
    print("\n".join(lines), flush=True)


def write_json(summary: Summary) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"webhooks-w{summary.settings['workers']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(asdict(summary), indent=2, default=str) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/webhooks.py",
        description="Webhook throughput benchmark (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=20, help="measured seconds (pgbench runs as long)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before measuring")
    parser.add_argument("--senders", type=int, default=16, help="concurrent senders (and pgbench clients)")
    parser.add_argument(
        "--workers", type=int, default=2, help="uvicorn worker processes of the app (2: see bench/README.md)"
    )
    parser.add_argument("--users", type=int, default=200, help="users registered; trades pick one at random")
    parser.add_argument("--duplicate-share", type=float, default=0.10, help="share of sends that resend a delivery")
    parser.add_argument("--revert-share", type=float, default=0.20, help="share of trades reverted, not completed")
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="raw: minimal HTTP/1.1, a keep-alive connection per sender (~0.2 ms CPU per request); httpx: one shared "
        "httpx.AsyncClient (~1.3-1.9 ms CPU per request, more than the app itself: see bench/README.md)",
    )
    parser.add_argument("--pgbench-threads", type=int, default=2, help="pgbench -j")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the senders")
    parser.add_argument(
        "--database-url",
        help=f"PostgreSQL server to create the scratch database on (default {DEFAULT_SERVER}, else embedded)",
    )
    parser.add_argument(
        "--pgbench",
        choices=["both", "one-trip", "statements", "none"],
        default="both",
        help="which pgbench runs follow the app's: the one-round-trip version (the ratio's baseline), the "
        "statement-by-statement one, both, or none",
    )
    parser.add_argument("--skip-pgbench", action="store_const", const="none", dest="pgbench", help="--pgbench none")
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help=f"repeat the whole benchmark; then the ratio target holds for the median run and the p99 target in "
        f"{TARGET_P99_SHARE * 100:.0f}%% of the runs",
    )
    parser.add_argument(
        "--profile",
        choices=["cprofile", "py-spy"],
        help="profile the app during the measured window (cprofile needs --workers 1); see bench/README.md",
    )
    parser.add_argument("--keep-database", action="store_true", help="do not drop the scratch database")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    parser.add_argument(
        "--sql-fingerprints", action="store_true", help="print the app's SQL fingerprints (for MIRRORED_SQL) and exit"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sql_fingerprints:
        for name, fingerprint in app_sql_fingerprints().items():
            print(f'    "{name}": "{fingerprint}",')
        return 0
    if args.senders < 1 or args.workers < 1 or args.users < 1 or args.duration <= 0 or args.warmup < 0:
        print("--senders, --workers, --users and --duration must be positive", file=sys.stderr)
        return 2
    if args.profile == "cprofile" and args.workers != 1:
        print("--profile cprofile needs --workers 1 (use py-spy for several workers)", file=sys.stderr)
        return 2
    if args.runs < 1:
        print("--runs must be positive", file=sys.stderr)
        return 2
    for script in (PGBENCH_SCRIPT, PGBENCH_ONE_TRIP_SCRIPT, PGBENCH_FUNCTION):
        if not script.is_file():
            print(f"missing {script}", file=sys.stderr)
            return 2
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        uvloop = None
    summaries = []
    for number in range(1, args.runs + 1):
        if args.runs > 1:
            log(f"run {number} of {args.runs}")
        try:
            runner = uvloop.run if uvloop is not None else asyncio.run
            summary = runner(run_interruptible(args))
        except BenchError as exc:
            print(f"benchmark could not run: {exc}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted; cleaned up", file=sys.stderr)
            return 130
        print_summary(summary)
        if not args.no_json:
            log(f"results written to {write_json(summary)}")
        summaries.append(summary)
    if args.runs == 1:
        return 0 if summaries[0].passed else 1
    return 0 if print_runs(summaries) else 1


def print_runs(summaries: list[Summary]) -> bool:
    """The verdict over several runs: every answer right and the ledger exact in each, the median run's ratio at
    the target, and p99 under its target in TARGET_P99_SHARE of the runs."""
    ratios = sorted(s.ratio for s in summaries if s.ratio is not None)
    p99s = [s.app["p99_ms"] for s in summaries]
    fast = sum(p99 < TARGET_P99_MS for p99 in p99s)
    needed = math.ceil(TARGET_P99_SHARE * len(summaries))
    median = ratios[len(ratios) // 2] if ratios else None
    checks = {
        "every answer 200 and the ledger exact in every run": all(
            s.verdict.get("all_answers_200") and s.verdict.get("ledger_consistent") for s in summaries
        ),
        f"p99 < {TARGET_P99_MS:g} ms in at least {needed} of {len(summaries)} runs ({fast})": fast >= needed,
    }
    if median is not None:
        checks[f"median ratio >= {TARGET_RATIO:.2f} ({median:.3f})"] = median >= TARGET_RATIO
    lines = ["", f"== {len(summaries)} runs =="]
    for n, s in enumerate(summaries, 1):
        ratio = f"{s.ratio:.3f}" if s.ratio is not None else "n/a"
        ratio += f" (CPU {s.cpu_ratio:.3f})" if s.cpu_ratio is not None else ""
        lines.append(
            f"run {n}     : {s.app['deliveries_per_s']:7.1f}/s  p50 {s.app['p50_ms']:6.2f}"
            f"  p99 {s.app['p99_ms']:6.2f} ms"
            f"  one-trip pgbench {s.pgbench_one_trip.get('tps', float('nan')):7.1f} tps  ratio {ratio}"
            f"  CPU ms/delivery {cpu_line(s.app.get('cpu_ms_per_delivery', {}))}"
        )
    lines += [f"{'PASS' if ok else 'FAIL'}      : {name}" for name, ok in checks.items()]
    passed = all(checks.values())
    lines.append(f"RESULT    : {'PASS' if passed else 'FAIL'}")
    print("\n".join(lines), flush=True)
    return passed


if __name__ == "__main__":
    sys.exit(main())
