"""Live-event benchmark: how fast a callback's events reach 1,000 WebSocket clients spread over two processes.

    python bench/realtime.py [--clients 1000] [--rate 200] [--duration 30] [--processes 2] [--database-url URL]

One command, no set-up (the helpers of bench/webhooks.py, imported as a module): a scratch database (on the
PostgreSQL server at --database-url, by default postgresql://postgres@127.0.0.1:5432/postgres, else an embedded
one), migrated; --processes `assetpay-merchant serve` processes on it, each on a free loopback port; --users users
registered through the API; --clients `WS /v1/ws` clients (the `websockets` asyncio client, compression offered as
browsers do), each user's clients on different processes. Then signed deposit callbacks at a steady --rate per
second (an absolute schedule: a late send does not delay the next ones) for a --warmup plus --duration seconds,
round-robin over the processes and over the users (each user's callbacks --users / --rate seconds apart: a `hold`
of a new trade, then its `completed`, ...). Meanwhile every client sends the app-level `{"type": "ping"}` every
--ping-every seconds, as the README's frontend example does, and times the `pong`.

Measured: for every event the database committed (the outbox is the ground truth) and every client of its user,
the time from the callback's 200 answer to the event's arrival at that client (p50/p99 over the measured window),
events lost (never arrived, or later than --grace after the 200), duplicates, order, resyncs and disconnects; the
RSS of each backend process (idle, with its clients, peak under load); CPU per callback by process. Baseline, in
the same processes at the same time: the clients' ping -> pong round trip (see bench/README.md). Targets: p99 <
100 ms, nothing lost or duplicated, RSS < 150 MB per process. Everything started here is stopped and the database
dropped, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
from sqlalchemy.engine import URL
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

import webhooks as bench  # bench/webhooks.py (this directory is sys.path[0])
from assetpay_merchant.store.migrations import upgrade_async

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is optional: /proc/<pid>/status is read instead
    psutil = None

TARGET_P99_MS = 100.0
TARGET_RSS_MB = 150.0
TRADE_UPDATED = "trade.updated"
BALANCE_UPDATED = "balance.updated"
# The backends' settings beyond bench/webhooks.py's App: no reconciliation job (it is the only thing that would ever
# call AssetPay, whose default URL is the production one; this benchmark stays on loopback). App.start drops every
# ASSETPAY_* variable of this environment, so AssetPay's realtime feed (ASSETPAY_FEED) stays off as well.
BACKEND_ENV = {"RECONCILE_INTERVAL_SECONDS": "0"}


log = bench.log


def percentile(values: list[float], share: float) -> float:
    return bench.percentile(sorted(values), share)


def ms(seconds: float) -> float:
    return seconds * 1000


# ---------------------------------------------------------------------------------------------------------------
# the backends


@contextlib.contextmanager
def backend_environment() -> Iterator[None]:
    """BACKEND_ENV in this process's environment while the backends start (App.start copies os.environ)."""
    saved = {name: os.environ.get(name) for name in BACKEND_ENV}
    os.environ.update(BACKEND_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def process_tree(pid: int) -> list[int]:
    """The backend's pid and its descendants' (`serve --workers 1` is one process; this stays right for more)."""
    if psutil is not None:
        with contextlib.suppress(psutil.Error):
            return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
        return []
    return [pid]


def rss_bytes(pid: int) -> int:
    """Resident memory of the backend (and any children): psutil, else /proc/<pid>/status VmRSS."""
    total = 0
    for member in process_tree(pid):
        if psutil is not None:
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(member).memory_info().rss
            continue
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: int) -> float:
    """CPU seconds the backend (and any children) used so far, from /proc/<pid>/stat."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / bench.CpuSnapshot.TICK
    return total


class Cpu:
    """bench.CpuSnapshot (this process, the scratch database's backends, the rest) plus each backend process."""

    def __init__(self, database: str, pids: list[int]) -> None:
        self.machine = bench.CpuSnapshot(database)
        self.backends = [cpu_seconds(pid) for pid in pids]
        self.stalled = {resource: self._stalled(resource) for resource in ("cpu", "io")}

    @staticmethod
    def _stalled(resource: str) -> float:
        """Seconds in which some task waited for the CPU (or for I/O), from Linux's pressure stall information."""
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/pressure/{resource}") as pressure:
            some = pressure.readline().split()
            return int(some[-1].partition("=")[2]) / 1e6
        return math.nan

    @staticmethod
    def pressure(start: Cpu, end: Cpu) -> dict[str, float]:
        """The share of the window in which some task waited for a CPU (for I/O): how contended the machine was."""
        window = end.machine.at - start.machine.at
        return {name: (end.stalled[name] - start.stalled[name]) / window for name in start.stalled if window > 0}

    @staticmethod
    def usage(start: Cpu, end: Cpu) -> dict[str, float]:
        used = bench.CpuSnapshot.usage(start.machine, end.machine)
        mine = 0.0
        for n, (first, last) in enumerate(zip(start.backends, end.backends, strict=True), 1):
            used[f"backend {n}"] = max(0.0, last - first)
            mine += used[f"backend {n}"]
        # CpuSnapshot counted the backends (not its app_pgid) among "other processes".
        used["other processes"] = max(0.0, used.get("other processes", 0.0) - mine)
        return used


class RssWatch:
    """Samples each backend's RSS every `interval` seconds; `peak` since `reset()`."""

    def __init__(self, pids: list[int], interval: float = 0.25) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = [0] * len(pids)
        self.samples = 0

    def reset(self) -> None:
        self.peak = [0] * len(self.pids)

    def sample(self) -> list[int]:
        now = [rss_bytes(pid) for pid in self.pids]
        self.peak = [max(p, n) for p, n in zip(self.peak, now, strict=True)]
        self.samples += 1
        return now

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.interval)


class ConnectionWatch:
    """Samples pg_stat_activity every `interval` seconds: connections to the scratch database (the backends' pools,
    their listeners, this script's look-ups), how many of them are busy and how many of those read the outbox for
    the live hub, and connections to the whole server against max_connections."""

    OUTBOX_READ = "%FROM events WHERE user_id = $1 AND id > $2%"  # store/events.py's _SINCE

    def __init__(self, database: URL, interval: float = 0.25) -> None:
        self.database = database
        self.interval = interval
        self.peak = {"scratch_database": 0, "busy": 0, "busy_outbox_reads": 0, "server": 0}
        self.max_connections = 0
        self.busy: list[tuple[float, int, int]] = []  # (when, busy, of which outbox reads)
        self.waits: collections.Counter[str] = collections.Counter()  # state | wait event | query, when crowded

    CROWDED = 10  # busy connections at once: then what they are doing is sampled

    async def _what_they_wait_for(self, connection: asyncpg.Connection) -> None:
        rows = await connection.fetch(
            "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'on CPU') AS wait, "
            "regexp_replace(left(query, 60), '\\s+', ' ', 'g') AS query FROM pg_stat_activity "
            "WHERE datname = current_database() AND state <> 'idle' AND pid <> pg_backend_pid()"
        )
        for row in rows:
            self.waits[f"{row['state']} | {row['wait']} | {row['query'].strip()}"] += 1

    async def run(self) -> None:
        connection = await asyncpg.connect(bench.plain_url(self.database))
        try:
            self.max_connections = int(await connection.fetchval("SHOW max_connections"))
            while True:
                row = await connection.fetchrow(
                    "SELECT count(*) FILTER (WHERE datname = current_database()) AS scratch_database, "
                    "count(*) FILTER (WHERE datname = current_database() AND state <> 'idle' "
                    "AND pid <> pg_backend_pid()) AS busy, "
                    "count(*) FILTER (WHERE datname = current_database() AND state <> 'idle' AND query LIKE $1) "
                    "AS busy_outbox_reads, count(*) AS server "
                    "FROM pg_stat_activity WHERE backend_type = 'client backend'",
                    self.OUTBOX_READ,
                )
                for name in self.peak:
                    self.peak[name] = max(self.peak[name], row[name])
                self.busy.append((time.perf_counter(), row["busy"], row["busy_outbox_reads"]))
                if row["busy"] >= self.CROWDED:
                    await self._what_they_wait_for(connection)
                await asyncio.sleep(self.interval)
        finally:
            await connection.close()


# ---------------------------------------------------------------------------------------------------------------
# the clients


@dataclass(eq=False)
class Client:
    index: int
    user: int
    process: int
    socket: ClientConnection | None = None
    ready_last_id: int = 0
    # (event id, type, arrival on the perf_counter clock, (assetpayId, status) of a trade.updated)
    arrivals: list[tuple[int, str, float, tuple[str, str] | None]] = field(default_factory=list)
    ping_sent: float | None = None
    rtts: list[tuple[float, float]] = field(default_factory=list)  # (sent, round trip seconds)
    resyncs: int = 0
    unexpected: int = 0
    closing: bool = False
    lost_connection: str | None = None

    @property
    def user_id(self) -> str:
        return f"{bench.USER_PREFIX}{self.user}"

    async def read(self) -> None:
        """Record every message until the connection closes (closing it ourselves is not a loss)."""
        assert self.socket is not None
        try:
            async for text in self.socket:
                now = time.perf_counter()
                message = json.loads(text)
                kind, event_id = message.get("type"), message.get("id")
                if kind == "pong":
                    if self.ping_sent is not None:
                        self.rtts.append((self.ping_sent, now - self.ping_sent))
                        self.ping_sent = None
                    else:
                        self.unexpected += 1
                elif isinstance(event_id, int):
                    data = message.get("data") or {}
                    key = (str(data.get("assetpayId")), str(data.get("status"))) if kind == TRADE_UPDATED else None
                    self.arrivals.append((event_id, str(kind), now, key))
                elif kind == "resync":
                    self.resyncs += 1
                else:
                    self.unexpected += 1
        except ConnectionClosed as closed:
            if not self.closing:
                self.lost_connection = f"closed {closed.rcvd.code if closed.rcvd else 'without a close frame'}"
            return
        if not self.closing:
            code = self.socket.close_code
            self.lost_connection = f"closed by the server ({code} {self.socket.close_reason})"

    async def ping(self) -> bool:
        if self.ping_sent is not None or self.socket is None:
            return False  # the previous pong is still out
        self.ping_sent = time.perf_counter()
        try:
            await self.socket.send('{"type":"ping"}')
        except ConnectionClosed:
            self.ping_sent = None
            return False
        return True


def user_token(user: int) -> str:
    claims = {"sub": f"{bench.USER_PREFIX}{user}", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, bench.JWT_SECRET, algorithm="HS256")


async def open_client(client: Client, port: int, compression: bool) -> None:
    url = f"ws://127.0.0.1:{port}/v1/ws?token={user_token(client.user)}"
    client.socket = await connect(
        url,
        open_timeout=30,
        close_timeout=2,
        ping_interval=None,  # the app-level pings below are the keep-alive (and the baseline)
        compression="deflate" if compression else None,
        max_size=2**20,
    )
    async with asyncio.timeout(30):
        ready = json.loads(await client.socket.recv())
    if ready.get("type") != "ready" or (ready.get("data") or {}).get("userId") != client.user_id:
        raise bench.BenchError(f"client {client.index}: expected ready for {client.user_id}, got {ready}")
    client.ready_last_id = int(ready["data"]["lastEventId"])


async def close_clients(clients: list[Client]) -> None:
    semaphore = asyncio.Semaphore(100)

    async def close(client: Client) -> None:
        client.closing = True
        if client.socket is None:
            return
        async with semaphore:
            with contextlib.suppress(WebSocketException, OSError, TimeoutError):
                async with asyncio.timeout(3):
                    await client.socket.close()
        if client.socket.transport is not None:
            client.socket.transport.abort()

    await asyncio.gather(*(close(client) for client in clients), return_exceptions=True)


# ---------------------------------------------------------------------------------------------------------------
# the callbacks


@dataclass(slots=True)
class Callback:
    k: int
    user: int
    process: int
    trade_id: str
    status: str
    scheduled: float
    started: float = math.nan
    answered: float = math.nan
    http_status: int = 0
    error: str | None = None


class SenderPool:
    """Keep-alive connections (bench/webhooks.py's RawSender) to one backend, as many as are in flight at once.

    A connection idle for longer than IDLE_SECONDS is closed rather than reused: uvicorn closes keep-alive
    connections after 5 s, and a request written into one it is closing is lost."""

    IDLE_SECONDS = 3.0

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[float, bench.RawSender]] = []
        self.opened = 0

    async def post(self, delivery: bench.Delivery) -> tuple[int, bytes]:
        sender = None
        while self.idle and sender is None:
            since, candidate = self.idle.pop()
            if time.perf_counter() - since < self.IDLE_SECONDS:
                sender = candidate
            else:
                await candidate.close()
        if sender is None:
            sender = bench.RawSender(self.port)
            self.opened += 1
        try:
            answer = await sender.post(delivery)
        except BaseException:
            await sender.close()
            raise
        self.idle.append((time.perf_counter(), sender))
        return answer

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        for _, sender in idle:
            await sender.close()


class Load:
    """--rate callbacks per second on an absolute schedule: callback k is due at start + k / rate."""

    def __init__(self, args: argparse.Namespace, pools: list[SenderPool]) -> None:
        self.args = args
        self.pools = pools
        self.rng = random.Random(args.seed)
        self.in_hold: dict[int, bench.BenchTrade] = {}
        self.callbacks: list[Callback] = []

    def next_delivery(self, k: int, due: float) -> tuple[Callback, bench.Delivery]:
        """User k mod --users: a hold of a new trade, or the completion of the user's trade in hold."""
        user = k % self.args.users + 1
        trade = self.in_hold.pop(user, None)
        if trade is None:
            trade = bench.new_trade(self.rng, self.args.users)
            trade.user = user
            self.in_hold[user] = trade
            status = "hold"
        else:
            status = "completed"
        callback = Callback(k, user, k % len(self.pools), trade.id, status, due)
        return callback, bench.Delivery.sign(status, bench.callback_body(trade, status))

    async def run(self, start: float) -> None:
        total = round(self.args.rate * (self.args.warmup + self.args.duration))
        in_flight: set[asyncio.Task[None]] = set()
        try:
            for k in range(total):
                due = start + k / self.args.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                callback, delivery = self.next_delivery(k, due)
                self.callbacks.append(callback)
                task = asyncio.create_task(self.send(callback, delivery))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.wait(in_flight, timeout=60)
        finally:
            for task in in_flight:
                task.cancel()

    async def send(self, callback: Callback, delivery: bench.Delivery) -> None:
        callback.started = time.perf_counter()
        try:
            status, content = await self.pools[callback.process].post(delivery)
        except (httpx.HTTPError, OSError, ValueError, IndexError) as exc:  # IndexError: RawSender read EOF
            callback.error = f"{type(exc).__name__}: {exc}"
            return
        callback.answered = time.perf_counter()
        callback.http_status = status
        if status != 200 or json.loads(content) != {"received": True}:
            callback.error = f"HTTP {status} {content[:200].decode(errors='replace')}"


async def ping_clients(clients: list[Client], every: float, until: float) -> int:
    """Each client pings once every `every` seconds (staggered: clients / every pings per second in all)."""
    if every <= 0 or not clients:
        return 0
    interval, skipped, start = every / len(clients), 0, time.perf_counter()
    for n in range(10**9):
        due = start + n * interval
        if due >= until:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if not await clients[n % len(clients)].ping():
            skipped += 1
    return skipped


async def loop_lag(samples: list[tuple[float, float]], period: float = 0.01) -> None:
    """How late this process's event loop wakes up: every arrival time measured here is late by about as much."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(period)
        after = time.perf_counter()
        samples.append((after, after - before - period))


# ---------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Summary:
    started_at: str
    host: dict[str, Any]
    settings: dict[str, Any]
    callbacks: dict[str, Any] = field(default_factory=dict)
    delivery: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, Any] = field(default_factory=dict)
    baseline_ms: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_callback: dict[str, float] = field(default_factory=dict)
    bench_loop_lag_ms: dict[str, float] = field(default_factory=dict)
    backend_log_problems: list[str] = field(default_factory=list)
    backend_logs_kept: list[str] = field(default_factory=list)
    postgres_connections: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    timeline: list[dict[str, float]] = field(default_factory=list)
    postgres_waits_when_crowded: dict[str, int] = field(default_factory=dict)
    verdict: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.verdict) and all(self.verdict.values())


def raise_open_files_limit(needed: int) -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to `needed` (within the hard limit); the backends inherit it. Returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise bench.BenchError(f"need {needed} open files, the hard limit is {hard} (ulimit -Hn)")
    return soft, hard


async def run_interruptible(args: argparse.Namespace) -> Summary:
    return await bench.interruptible(run(args))


async def run(args: argparse.Namespace) -> Summary:
    summary = Summary(
        started_at=bench.iso(datetime.now(UTC)),
        host={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_before": os.getloadavg(),
        },
        settings={
            key: getattr(args, key)
            for key in (
                "clients",
                "users",
                "processes",
                "rate",
                "duration",
                "warmup",
                "grace",
                "ping_every",
                "compression",
                "profile",
                "seed",
            )
        },
    )
    summary.settings["code"] = bench.code_version()
    summary.settings["open_files_limit"] = raise_open_files_limit(args.clients + 1024)
    server = await bench.open_server(args.database_url)
    log_dir = Path(tempfile.mkdtemp(prefix="assetpay-bench-realtime-"))
    try:
        summary.settings["embedded_postgres"] = server.embedded is not None
        async with bench.scratch_database(server, args.keep_database) as database:
            await upgrade_async(bench.plain_url(database))
            log("migrated to head")
            await measure(args, database, summary, log_dir)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
        server.stop()
    return summary


async def measure(args: argparse.Namespace, database: URL, summary: Summary, log_dir: Path) -> None:
    profiler = None
    if args.profile:
        bench.RESULTS_DIR.mkdir(exist_ok=True)
        profiler = bench.CProfile(
            bench.RESULTS_DIR / f"profile-realtime-backend1-{time.strftime('%Y%m%d-%H%M%S')}.prof"
        )
    apps = [
        bench.App(database, bench.free_port(), 1, log_dir / f"backend-{n + 1}.log", profiler if n == 0 else None)
        for n in range(args.processes)
    ]
    clients = [
        Client(i, user=i % args.users + 1, process=(i % args.users + 1 + i // args.users) % args.processes)
        for i in range(args.clients)
    ]
    pools = [SenderPool(app.port) for app in apps]
    background: list[asyncio.Task[Any]] = []
    load = Load(args, pools)
    try:
        with backend_environment():
            for app in apps:
                app.start()
        pids = [app.process.pid for app in apps if app.process is not None]
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            for app in apps:
                http.base_url = httpx.URL(app.base_url)
                await app.wait_ready(http)
            http.base_url = httpx.URL(apps[0].base_url)
            await bench.register_users(http, args.users)
        log(f"{len(apps)} backends ready (pids {', '.join(map(str, pids))}); registered {args.users} users")
        connections = ConnectionWatch(database)
        background.append(asyncio.create_task(connections.run()))
        rss = RssWatch(pids)
        await asyncio.sleep(1)
        idle = await asyncio.to_thread(rss.sample)

        connected_at = time.perf_counter()
        semaphore = asyncio.Semaphore(args.connect_concurrency)

        async def open_one(client: Client) -> None:
            async with semaphore:
                await open_client(client, apps[client.process].port, args.compression)

        try:
            await asyncio.gather(*(open_one(client) for client in clients))
        except (WebSocketException, OSError, TimeoutError) as exc:
            tails = "\n".join(app.log_tail(10) for app in apps)
            raise bench.BenchError(f"a client could not connect: {type(exc).__name__}: {exc}\n{tails}") from exc
        background += [asyncio.create_task(client.read()) for client in clients]
        log(f"{len(clients)} clients connected in {time.perf_counter() - connected_at:.1f} s")
        await asyncio.sleep(2)  # let the connections' first reads (ready, replay) settle
        with_clients = await asyncio.to_thread(rss.sample)
        rss.reset()
        background.append(asyncio.create_task(rss.run()))

        lag: list[tuple[float, float]] = []
        background.append(asyncio.create_task(loop_lag(lag)))
        start = time.perf_counter() + 0.1
        measure_from = start + args.warmup
        until = measure_from + args.duration
        pinger = asyncio.create_task(ping_clients(clients, args.ping_every, until))
        background.append(pinger)
        log(
            f"sending {args.rate:g} callbacks/s for {args.warmup:g} s warm-up + {args.duration:g} s "
            f"(load average {os.getloadavg()[0]:.2f})"
        )
        cpu_task = asyncio.create_task(watch_cpu(start, measure_from, until, args, database, pids, profiler))
        background.append(cpu_task)
        await load.run(start)
        cpu = await cpu_task
        if profiler is not None:
            await asyncio.to_thread(profiler.finish)
        summary.host["load_average_after"] = os.getloadavg()
        skipped_pings = await pinger
        committed = await committed_events(database)
        await wait_for_arrivals(clients, committed, load.callbacks, args.grace)
        summary.postgres_connections = {f"{name}_peak": value for name, value in connections.peak.items()}
        summary.postgres_connections["max_connections"] = connections.max_connections
        summary.postgres_waits_when_crowded = dict(connections.waits.most_common(8))
        busy = [(b, r) for at, b, r in connections.busy if measure_from <= at < until]
        summary.postgres_connections["busy_mean_in_window"] = round(sum(b for b, _ in busy) / max(1, len(busy)), 1)
        summary.postgres_connections["busy_outbox_reads_mean_in_window"] = round(
            sum(r for _, r in busy) / max(1, len(busy)), 1
        )
        peak = list(rss.peak)
        summary.memory = [
            {
                "process": n + 1,
                "clients": sum(1 for c in clients if c.process == n),
                "idle_mb": idle[n] / 2**20,
                "with_clients_mb": with_clients[n] / 2**20,
                "peak_mb": peak[n] / 2**20,
                "kb_per_client": (with_clients[n] - idle[n]) / 1024 / max(1, sum(1 for c in clients if c.process == n)),
                "peak_over_idle": peak[n] / idle[n] if idle[n] else math.nan,
            }
            for n in range(len(apps))
        ]
        analyse(args, summary, clients, load.callbacks, committed, measure_from, until, skipped_pings)
        for row in summary.timeline:
            second = [
                b for at, b, _ in connections.busy if int(at - measure_from) == row["second"] and at >= measure_from
            ]
            row["pg_busy_max"] = max(second, default=0)
        silent = summary.delivery.pop("silent_trades")
        summary.delivery["outcomes_of_answered_callbacks_without_events"] = await delivery_outcomes(database, silent)
        window_lag = [value for at, value in lag if measure_from <= at < until]
        summary.bench_loop_lag_ms = {
            "p99": ms(percentile(window_lag, 0.99)),
            "max": ms(max(window_lag, default=math.nan)),
        }
        measured = summary.callbacks["in_window"]
        summary.host["stall_share"] = {
            name.split()[1]: round(cpu.pop(name), 3) for name in list(cpu) if name.startswith("pressure ")
        }
        summary.cpu_seconds = {name: round(value, 3) for name, value in cpu.items()}
        summary.cpu_ms_per_callback = bench.cpu_per(cpu, measured)
        summary.backend_log_problems = [problem for app in apps for problem in log_problems(app)]
        summary.callbacks["connections_opened"] = [pool.opened for pool in pools]
        if profiler is not None:
            summary.profile = profile_breakdown(profiler.output)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        with contextlib.ExitStack() as stopping:  # every backend is stopped, even when stopping one fails
            for app in apps:
                stopping.callback(app.stop)
            await close_clients(clients)
            for pool in pools:
                await pool.close()
    finalise(summary)
    if summary.verdict and not summary.passed:
        summary.backend_logs_kept = keep_logs(apps)


def keep_logs(apps: list[bench.App]) -> list[str]:
    """A failed run's backend logs, copied to bench/results/ (the temporary directory goes)."""
    kept = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n, app in enumerate(apps, 1):
        if app.log_path.is_file() and app.log_path.stat().st_size > 0:
            bench.RESULTS_DIR.mkdir(exist_ok=True)
            target = bench.RESULTS_DIR / f"realtime-{stamp}-backend-{n}.log"
            shutil.copyfile(app.log_path, target)
            kept.append(str(target))
    return kept


async def delivery_outcomes(database: URL, trade_ids: list[str]) -> dict[str, int]:
    """What the backends recorded (webhook_deliveries.outcome) for callbacks answered 200 that made no event."""
    if not trade_ids:
        return {}
    connection = await asyncpg.connect(bench.plain_url(database))
    try:
        rows = await connection.fetch(
            "SELECT outcome, count(*) AS n FROM webhook_deliveries WHERE subject_id = ANY($1::text[]) GROUP BY 1",
            trade_ids,
        )
    finally:
        await connection.close()
    return {row["outcome"]: row["n"] for row in rows}


def log_problems(app: bench.App) -> list[str]:
    """How many ERROR lines the backend logged, with the first three distinct messages."""
    try:
        lines = app.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    errors = [line for line in lines if " ERROR " in line]
    if not errors:
        return []
    shown = list(dict.fromkeys(line.split(" ", 2)[-1][:160] for line in errors))[:3]
    return [f"{app.base_url}: {len(errors)} ERROR lines, e.g. {' | '.join(shown)}"]


async def watch_cpu(
    start: float,
    measure_from: float,
    until: float,
    args: argparse.Namespace,
    database: URL,
    pids: list[int],
    profiler: bench.CProfile | None,
) -> dict[str, float]:
    """CPU use during the measured window (and backend 1's profile); the tables are analyzed halfway through the
    warm-up (see bench/webhooks.py: the plans cached for empty tables would otherwise stay)."""
    await asyncio.sleep(max(0.0, start + args.warmup / 2 - time.perf_counter()))
    try:
        await bench.analyze(database)
    except (OSError, asyncpg.PostgresError) as exc:  # e.g. the server's max_connections reached: measure anyway
        log(f"WARNING: could not ANALYZE the scratch database: {type(exc).__name__}: {exc}")
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    first = await asyncio.to_thread(Cpu, str(database.database), pids)
    if profiler is not None:
        profiler.start()
    await asyncio.sleep(max(0.0, until - time.perf_counter()))
    if profiler is not None:
        profiler.stop()
    last = await asyncio.to_thread(Cpu, str(database.database), pids)
    return Cpu.usage(first, last) | {f"pressure {name}": share for name, share in Cpu.pressure(first, last).items()}


# Where backend 1's CPU goes (`--profile cprofile`): the first pattern a function's file (or a C function's name)
# contains; then bench/webhooks.py's layers.
PROFILE_LAYERS = [
    ("assetpay_merchant/services/live", "live hub (services/live.py)"),
    ("assetpay_merchant/api/ws", "WS route (api/ws.py)"),
    ("assetpay_merchant/store/notifications", "LISTEN (store/notifications.py)"),
    ("assetpay_merchant/store/events", "outbox (store/events.py)"),
    ("websockets", "websockets (frames, permessage-deflate)"),
    ("zlib", "websockets (frames, permessage-deflate)"),
    *bench.LAYERS,
]


def profile_layer(where: str) -> str | None:
    return next((layer for pattern, layer in PROFILE_LAYERS if pattern in where), None)


def profile_breakdown(path: Path, top: int = 25) -> dict[str, Any]:
    """Seconds by layer (a C function of no known layer is charged to its callers) and the costliest functions."""
    import pstats

    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    layers: collections.Counter[str] = collections.Counter()
    functions = []
    for (filename, line, name), (_, calls, own, cumulative, callers) in stats.items():
        where = f"{filename}:{line}({name})" if filename != "~" else name
        functions.append((own, cumulative, calls, where))
        layer = profile_layer(filename) if filename != "~" else profile_layer(name)
        if layer is None and filename == "~" and callers:
            total = sum(caller[2] for caller in callers.values()) or 1.0
            for (caller_file, _, caller_name), caller in callers.items():
                owner = profile_layer(caller_file) or profile_layer(caller_name) or "other"
                layers[owner] += own * caller[2] / total
            continue
        layers[layer or "other"] += own
    total = sum(layers.values())
    functions.sort(reverse=True)
    return {
        "file": str(path),
        "seconds": total,
        "layers": {name: seconds for name, seconds in layers.most_common()},
        "top_own": [
            {"own_s": own, "cumulative_s": cumulative, "calls": calls, "function": where.replace(str(Path.cwd()), ".")}
            for own, cumulative, calls, where in functions[:top]
        ],
    }


# The outbox: (user id, event id) -> (type, AssetPay trade id, status) of every committed event.
Committed = dict[str, list[tuple[int, str, str | None, str | None]]]


async def committed_events(database: URL) -> Committed:
    connection = await asyncpg.connect(bench.plain_url(database))
    try:
        rows = await connection.fetch(
            "SELECT user_id, id, type, data->>'assetpayId' AS trade, data->>'status' AS status "
            "FROM events ORDER BY user_id, id"
        )
    finally:
        await connection.close()
    committed: Committed = collections.defaultdict(list)
    for row in rows:
        committed[row["user_id"]].append((row["id"], row["type"], row["trade"], row["status"]))
    return committed


async def wait_for_arrivals(
    clients: list[Client], committed: Committed, callbacks: list[Callback], grace: float
) -> None:
    """Until every client has its user's last committed event, or `grace` after the last answer."""
    answered = [c.answered for c in callbacks if not math.isnan(c.answered)]
    deadline = max(answered, default=time.perf_counter()) + grace
    while time.perf_counter() < deadline:
        if all(
            client.lost_connection is not None
            or not committed.get(client.user_id)
            or any(a[0] == committed[client.user_id][-1][0] for a in client.arrivals[-3:])
            for client in clients
        ):
            return
        await asyncio.sleep(0.05)


def analyse(
    args: argparse.Namespace,
    summary: Summary,
    clients: list[Client],
    callbacks: list[Callback],
    committed: Committed,
    measure_from: float,
    until: float,
    skipped_pings: int,
) -> None:
    in_window = [c for c in callbacks if measure_from <= c.scheduled < until]
    round_trips = [c.answered - c.started for c in in_window if c.error is None]
    lateness = [c.started - c.scheduled for c in in_window if not math.isnan(c.started)]
    failed = [c for c in callbacks if c.error is not None]
    summary.callbacks = {
        "sent": len(callbacks),
        "in_window": len(in_window),
        "achieved_rate": len(in_window) / (until - measure_from),
        "failed": len(failed),
        "failures": [f"#{c.k} {c.status} user {c.user}: {c.error}" for c in failed[:10]],
        "round_trip_p50_ms": ms(percentile(round_trips, 0.50)),
        "round_trip_p99_ms": ms(percentile(round_trips, 0.99)),
        "schedule_lateness_p99_ms": ms(percentile(lateness, 0.99)),
        "schedule_lateness_max_ms": ms(max(lateness, default=math.nan)),
    }

    # Which callback each committed event belongs to: a trade.updated by (AssetPay trade id, status); the
    # balance.updated right after it (same transaction, the next id) to the same callback.
    by_key = {(c.trade_id, c.status): c for c in callbacks}
    origin: dict[tuple[str, int], Callback | None] = {}
    without_events = {id(c) for c in callbacks if c.error is None}
    unattributed = 0
    for user_id, events in committed.items():
        previous: tuple[int, Callback | None] = (-1, None)
        for event_id, kind, trade_id, status in events:
            if kind == TRADE_UPDATED:
                callback = by_key.get((str(trade_id), str(status)))
                previous = (event_id, callback)
            else:
                callback = previous[1] if previous[0] == event_id - 1 else None
            origin[(user_id, event_id)] = callback
            if callback is None:
                unattributed += 1
            else:
                without_events.discard(id(callback))

    latencies: dict[str, list[float]] = collections.defaultdict(list)
    by_second: dict[int, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for c in in_window:
        if c.error is None:
            by_second[int(c.scheduled - measure_from)]["callback"].append(c.answered - c.started)
    expected = received = lost_never = lost_late = duplicates = out_of_order = wrong = unknown = early = 0
    for client in clients:
        events = {event[0]: event for event in committed.get(client.user_id, [])}
        wanted = {event_id for event_id in events if event_id > client.ready_last_id}
        expected += len(wanted)
        seen: collections.Counter[int] = collections.Counter()
        highest = client.ready_last_id
        for event_id, kind, arrived, key in client.arrivals:
            received += 1
            seen[event_id] += 1
            if event_id <= highest:
                out_of_order += seen[event_id] == 1
            highest = max(highest, event_id)
            committed_event = events.get(event_id)
            if committed_event is None:
                unknown += 1
                continue
            if kind != committed_event[1] or (key is not None and key != (committed_event[2], committed_event[3])):
                wrong += 1
            callback = origin.get((client.user_id, event_id))
            if callback is None or math.isnan(callback.answered):
                continue
            latency = arrived - callback.answered
            if seen[event_id] == 1 and latency > args.grace:
                lost_late += 1
            if seen[event_id] > 1 or not measure_from <= callback.scheduled < until:
                continue
            early += latency < 0
            where = "same process" if client.process == callback.process else "other process"
            for name in ("all", kind, where):
                latencies[name].append(latency)
            by_second[int(callback.scheduled - measure_from)]["event"].append(latency)
        duplicates += sum(count - 1 for count in seen.values())
        lost_never += len(wanted - seen.keys())

    summary.delivery = {
        "committed_events": sum(len(events) for events in committed.values()),
        "events_per_callback": sum(len(events) for events in committed.values()) / max(1, len(callbacks)),
        "expected_deliveries": expected,
        "received": received,
        "lost": lost_never + lost_late,
        "lost_never_arrived": lost_never,
        "lost_later_than_grace": lost_late,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "wrong_content": wrong,
        "unknown_ids": unknown,
        "events_without_callback": unattributed,
        "answered_callbacks_without_events": len(without_events),
        "silent_trades": sorted({c.trade_id for c in callbacks if id(c) in without_events}),
        "resyncs": sum(c.resyncs for c in clients),
        "unexpected_messages": sum(c.unexpected for c in clients),
        "disconnected": sum(1 for c in clients if c.lost_connection is not None),
        "disconnects": sorted({c.lost_connection for c in clients if c.lost_connection})[:5],
        "arrived_before_the_200": early,
    }

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "count": len(values),
            "p50": ms(percentile(values, 0.50)),
            "p90": ms(percentile(values, 0.90)),
            "p99": ms(percentile(values, 0.99)),
            "max": ms(max(values, default=math.nan)),
        }

    summary.latency_ms = {name: stats(values) for name, values in latencies.items()}
    rtts = [rtt for client in clients for sent, rtt in client.rtts if measure_from <= sent < until]
    for client in clients:
        for sent, rtt in client.rtts:
            if measure_from <= sent < until:
                by_second[int(sent - measure_from)]["ping"].append(rtt)
    # Second by second (p99 ms): whether slow deliveries come in stalls (the machine, the database) or throughout.
    summary.timeline = [
        {"second": second, **{name: round(ms(percentile(values, 0.99)), 1) for name, values in sorted(row.items())}}
        for second, row in sorted(by_second.items())
    ]
    summary.baseline_ms = {"ping_pong": stats(rtts), "pings_skipped": skipped_pings}
    summary.baseline_ms["callback_round_trip"] = {
        "p50": summary.callbacks["round_trip_p50_ms"],
        "p99": summary.callbacks["round_trip_p99_ms"],
    }
    event, ping = summary.latency_ms.get("all", stats([])), summary.baseline_ms["ping_pong"]
    summary.ratios = {
        "event_p50_over_ping_p50": event["p50"] / ping["p50"] if ping["count"] else math.nan,
        "event_p99_over_ping_p99": event["p99"] / ping["p99"] if ping["count"] else math.nan,
        "event_p99_over_callback_p99": event["p99"] / summary.callbacks["round_trip_p99_ms"]
        if round_trips
        else math.nan,
    }


def finalise(summary: Summary) -> None:
    if not summary.delivery:
        return
    d, c = summary.delivery, summary.callbacks
    p99 = summary.latency_ms.get("all", {}).get("p99", math.nan)
    summary.verdict = {
        "every callback answered 200": c["failed"] == 0,
        f"event latency p99 < {TARGET_P99_MS:g} ms": p99 < TARGET_P99_MS,
        "no event lost": d["lost"] == 0 and d["expected_deliveries"] > 0,
        "no duplicates": d["duplicates"] == 0,
        "in order, as committed, no resync or disconnect": not (
            d["out_of_order"] or d["wrong_content"] or d["unknown_ids"] or d["resyncs"] or d["disconnected"]
        ),
    }
    for memory in summary.memory:
        summary.verdict[f"RSS of backend {memory['process']} < {TARGET_RSS_MB:g} MB"] = (
            memory["peak_mb"] < TARGET_RSS_MB
        )


def noisy(cpu: dict[str, float]) -> float:
    return bench.noisy(cpu)


def print_summary(summary: Summary) -> None:
    s, c, d = summary.settings, summary.callbacks, summary.delivery
    if not d:
        return
    lat, base, r = summary.latency_ms, summary.baseline_ms, summary.ratios
    per_user = s["clients"] / s["users"]
    load_before, load_after = summary.host["load_average_before"][0], summary.host.get("load_average_after", [0])[0]

    def line(values: dict[str, float]) -> str:
        return "   ".join(f"{name} {values[name]:6.1f} ms" for name in ("p50", "p90", "p99", "max"))

    lines = [
        "",
        "== live events over WebSocket ==",
        f"setup     : {s['processes']} backend processes, {s['clients']} clients ({s['users']} users x {per_user:g}, "
        f"each user's on different processes; compression {'deflate' if s['compression'] else 'off'}), "
        f"{s['rate']:g} callbacks/s for {s['duration']:g} s after {s['warmup']:g} s warm-up, pings every "
        f"{s['ping_every']:g} s per client, {summary.host['cpus']} CPUs, load average {load_before:.2f} before / "
        f"{load_after:.2f} after"
        + (" (embedded PostgreSQL)" if s.get("embedded_postgres") else "")
        + f", code {s['code']}",
        f"callbacks : {c['in_window']} in the window ({c['achieved_rate']:.1f}/s), {c['sent']} in all, "
        f"{c['failed']} failed; round trip p50 {c['round_trip_p50_ms']:.1f} ms p99 {c['round_trip_p99_ms']:.1f} ms; "
        f"schedule lateness p99 {c['schedule_lateness_p99_ms']:.1f} ms max {c['schedule_lateness_max_ms']:.1f} ms",
        f"events    : {d['committed_events']} committed ({d['events_per_callback']:.2f} per callback), "
        f"{d['expected_deliveries']} deliveries expected, {d['received']} received; lost {d['lost']} "
        f"(never {d['lost_never_arrived']}, late {d['lost_later_than_grace']}), duplicates {d['duplicates']}, "
        f"out of order {d['out_of_order']}, wrong {d['wrong_content']}, resyncs {d['resyncs']}, "
        f"disconnected {d['disconnected']}",
    ]
    if d["events_without_callback"] or d["answered_callbacks_without_events"]:
        lines.append(
            f"            {d['events_without_callback']} events of no callback of ours, "
            f"{d['answered_callbacks_without_events']} answered callbacks without events (the deliveries' "
            f"outcomes for those trades: {d.get('outcomes_of_answered_callbacks_without_events')})"
        )
    if "all" in lat:
        lines += [
            f"latency   : 200 answer -> client, {lat['all']['count']} deliveries: {line(lat['all'])}",
            *(
                f"            {name:<15} {line(lat[name])}"
                for name in (TRADE_UPDATED, BALANCE_UPDATED, "same process", "other process")
                if name in lat
            ),
            f"            arrived before the callback's 200: {d['arrived_before_the_200']}",
        ]
    if summary.timeline:
        slow = [row for row in summary.timeline if row.get("event", 0) >= TARGET_P99_MS]
        lines.append(
            f"timeline  : {len(slow)} of {len(summary.timeline)} seconds had an event p99 >= {TARGET_P99_MS:g} ms"
            + (
                ": "
                + ", ".join(
                    f"{row['second']}s {row['event']:.0f}/{row.get('callback', 0):.0f}/{row.get('ping', 0):.0f}"
                    f"/{row.get('pg_busy_max', 0)}"
                    for row in slow[:12]
                )
                + " (event/callback/ping p99 ms/PostgreSQL connections busy)"
                if slow
                else ""
            )
        )
    ping = base["ping_pong"]
    lines += [
        f"baseline  : ping -> pong round trip, {ping['count']} pings in the window: {line(ping)}"
        + (f" ({base['pings_skipped']} skipped: pong outstanding)" if base["pings_skipped"] else ""),
        f"ratio     : event / ping p50 {r['event_p50_over_ping_p50']:.2f}, p99 {r['event_p99_over_ping_p99']:.2f}; "
        f"event p99 / callback round trip p99 {r['event_p99_over_callback_p99']:.2f}",
    ]
    for m in summary.memory:
        lines.append(
            f"memory    : backend {m['process']}: idle {m['idle_mb']:.1f} MB, with its {m['clients']} clients "
            f"{m['with_clients_mb']:.1f} MB ({m['kb_per_client']:.0f} kB per client), peak under load "
            f"{m['peak_mb']:.1f} MB ({m['peak_over_idle']:.2f} x idle)"
        )
    lines.append(f"CPU       : ms per callback: {bench.cpu_line(summary.cpu_ms_per_callback)}")
    pg = summary.postgres_connections
    if pg:
        lines.append(
            f"PostgreSQL: peak connections: {pg['scratch_database_peak']} to the scratch database (busy at once: "
            f"peak {pg['busy_peak']}, of which outbox reads {pg['busy_outbox_reads_peak']}; mean in the window "
            f"{pg['busy_mean_in_window']} and {pg['busy_outbox_reads_mean_in_window']}), {pg['server_peak']} to "
            f"the server (max_connections {pg['max_connections']})"
        )
        if summary.postgres_waits_when_crowded:
            lines.append(
                f"            when {ConnectionWatch.CROWDED}+ were busy, they were (state | waiting for | query: "
                "samples):"
            )
            lines += [f"              {what}: {count}" for what, count in summary.postgres_waits_when_crowded.items()]
    lag = summary.bench_loop_lag_ms
    lines.append(
        f"bench loop: lag p99 {lag['p99']:.1f} ms, max {lag['max']:.1f} ms (arrival times are late by as much)"
    )
    stall = summary.host.get("stall_share", {})
    if stall:
        lines.append(
            f"machine   : some task waited for a CPU {stall.get('cpu', math.nan):.0%} of the window, for I/O "
            f"{stall.get('io', math.nan):.0%} (Linux pressure stall information)"
        )
    if noisy(summary.cpu_seconds) > 0.05:
        lines.append(
            f"WARNING   : other processes used {noisy(summary.cpu_seconds):.0%} of the machine during the window: "
            "figures are skewed, rerun on a quiet machine"
        )
    for problem in summary.backend_log_problems:
        lines.append(f"WARNING   : backend log: {problem}")
    for failure in c["failures"][:3]:
        lines.append(f"WARNING   : callback failed ({c['failed']} in all): {failure}")
    if summary.profile:
        p, callbacks_1 = summary.profile, max(1, c["in_window"])
        lines.append(
            f"profile   : backend 1 under cProfile ({p['file']}): {p['seconds'] * 1000 / callbacks_1:.2f} ms CPU "
            "per callback of the whole run (both processes' callbacks; cProfile inflates Python code):"
        )
        for name, seconds in p["layers"].items():
            if seconds / p["seconds"] >= 0.01:
                lines.append(
                    f"            {seconds * 1000 / callbacks_1:6.2f} ms  {seconds / p['seconds']:4.0%}  {name}"
                )
    for path in summary.backend_logs_kept:
        lines.append(f"backend log kept: {path}")
    for name, ok in summary.verdict.items():
        lines.append(f"{'PASS' if ok else 'FAIL'}      : {name}")
    lines.append(f"RESULT    : {'PASS' if summary.passed else 'FAIL'}")
    print("\n".join(lines), flush=True)


def write_json(summary: Summary) -> Path:
    bench.RESULTS_DIR.mkdir(exist_ok=True)
    path = bench.RESULTS_DIR / f"realtime-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(asdict(summary), indent=2, default=str) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/realtime.py",
        description="Live-event latency over WebSocket across processes (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--clients", type=int, default=1000, help="WebSocket clients in all (0: none, to see what they cost)"
    )
    parser.add_argument("--users", type=int, help="registered users (default: clients / 2, two clients each)")
    parser.add_argument("--processes", type=int, default=2, help="`assetpay-merchant serve` processes")
    parser.add_argument("--rate", type=float, default=200, help="callbacks per second")
    parser.add_argument("--duration", type=float, default=30, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before measuring")
    parser.add_argument("--grace", type=float, default=5, help="an event later than this after its 200 is lost")
    parser.add_argument("--ping-every", type=float, default=20, help="seconds between a client's pings (0: none)")
    parser.add_argument(
        "--compression",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="offer permessage-deflate, as browsers do",
    )
    parser.add_argument("--connect-concurrency", type=int, default=16, help="clients connecting at once")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the trades")
    parser.add_argument(
        "--database-url",
        help=f"PostgreSQL server to create the scratch database on (default {bench.DEFAULT_SERVER}, else embedded)",
    )
    parser.add_argument(
        "--profile",
        choices=["cprofile"],
        help="run backend 1 under cProfile during the window (bench/profiled_serve.py)",
    )
    parser.add_argument("--keep-database", action="store_true", help="do not drop the scratch database")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.users = args.users or max(1, args.clients // 2 or 500)
    if min(args.users, args.processes, args.connect_concurrency) < 1 or args.clients < 0 or args.rate <= 0:
        print(
            "--users, --processes, --connect-concurrency and --rate must be positive, --clients not negative "
            "(0: callbacks only, to see what the clients cost)",
            file=sys.stderr,
        )
        return 2
    if args.duration <= 0 or args.warmup < 0 or args.grace <= 0:
        print("--duration and --grace must be positive, --warmup not negative", file=sys.stderr)
        return 2
    if -(-args.clients // args.users) > 5:
        print("more than 5 clients per user (WS_MAX_CONNECTIONS_PER_USER): raise --users", file=sys.stderr)
        return 2
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        uvloop = None
    try:
        runner = uvloop.run if uvloop is not None else asyncio.run
        summary = runner(run_interruptible(args))
    except (bench.BenchError, OSError, asyncpg.PostgresError, WebSocketException) as exc:
        print(f"benchmark could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    print_summary(summary)
    if not summary.delivery:
        print("benchmark could not run: no measurement", file=sys.stderr)
        return 2
    if not args.no_json:
        log(f"results written to {write_json(summary)}")
    return 0 if summary.passed else 1


if __name__ == "__main__":
    sys.exit(main())
