"""Proxy benchmark: market and inventory through the backend against a local stub of AssetPay, and the same
requests straight to the stub, in one run (see bench/README.md).

    python bench/proxy.py [--duration 10] [--senders 16] [--upstream-ms 100]

Reports, for each route, the backend beside a minimal pass-through peer (bench/proxy_peer.py: FastAPI on uvicorn,
one `async def` JWT check, one upstream call, JSON re-encoded), both measured the same way against the same stub:
the latency each adds over going straight to the stub (p50 one request at a time; p50/p99 with concurrent
senders), the CPU each spends per request, and throughput with concurrent senders as a ratio of the direct
throughput: uncached (the market cache off, every request a different page so nothing is shared), and for the
market also cached (one query, cache on).
Targets (ratios to figures of the same run, so a busy machine moves both sides): added p50 one at a time <= 1.5x
the peer's; added p99 with concurrent senders <= 2x the peer's; uncached throughput >= 0.9 of direct; cached
market >= 10x direct.

The stub answers every request after `--upstream-ms`, standing in for the network and AssetPay's own work; it
does next to nothing else, so the direct figures measure the upstream's latency, not the stub's CPU. Everything
runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt

REPO = Path(__file__).resolve().parents[1]
SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
JWT_SECRET = "bench-jwt-secret-of-at-least-32-bytes"
ADMIN_KEY = "bench-admin-key"
MERCHANT_ID = "0b9f9d9e-2f0e-4f7e-9a51-6f0f3c2c1a11"
TRADE_URL = "https://steamcommunity.com/tradeoffer/new/?partner=39734273&token=AbCdEf12"
SERVE = [sys.executable, "-m", "assetpay_merchant.cli", "serve"]
PEER = [sys.executable, "-m", "uvicorn", "proxy_peer:app", "--app-dir", str(REPO / "bench"), "--host", "127.0.0.1"]
TARGETS = {"p50_vs_peer": 1.5, "p99_vs_peer": 2.0, "uncached_ratio": 0.9, "cached_ratio": 10.0}
TICK = os.sysconf("SC_CLK_TCK")
RATE_LIMIT_VARIABLES = (
    "ASSETPAY_RATE_INVENTORY_PER_MINUTE",
    "ASSETPAY_RATE_MARKET_PER_MINUTE",
    "USER_RATE_INVENTORY_PER_MINUTE",
    "USER_RATE_MARKET_PER_MINUTE",
)
"""The backend's shared rate budgets on these routes (services/ratelimits.py): set so high that they never refuse,
while every request still pays for its bucket (a PostgreSQL statement before each AssetPay call)."""


def log(message: str) -> None:
    print(f"[proxy {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


# -- the stub upstream: a bare asyncio HTTP server, run in a process of its own ----------------------------------


def _items(count: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"listing-{n:06d}",
            "itemId": f"{n:016x}",
            "appid": 730,
            "name": f"AK-47 | Redline #{n}",
            "marketHashName": f"AK-47 | Redline (Field-Tested) #{n}",
            "iconUrl": "https://community.cloudflare.steamstatic.com/economy/image/bench",
            "tradable": True,
            "marketPrice": 12.34,
            "offer": {"price": 10.75 + n / 100, "delivery": "instant", "accepted": True},
        }
        for n in range(count)
    ]


def _envelope(data: object) -> bytes:
    return json.dumps({"requestId": "bench", "success": True, "data": data}).encode()


async def serve_stub(port: int, delay: float, page_size: int) -> None:
    market = _envelope({"items": _items(page_size), "count": 5000})
    inventory = _envelope(
        {"inventory": _items(page_size), "count": page_size, "collateral": 60, "updatedAt": "2026-11-21T12:00:00Z"}
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while request := await reader.readline():
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass  # GETs only: no body to read
                path = request.split()[1]
                body = market if path.startswith(b"/client/market") else inventory
                await asyncio.sleep(delay)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body
                )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# -- a cheap load generator: one keep-alive HTTP/1.1 connection per sender ---------------------------------------


class Sender:
    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"127.0.0.1:{port}", **headers}.items())
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> int:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        writer.write(f"GET {path} HTTP/1.1\r\n{self.head}\r\n".encode())
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


@dataclass
class Measured:
    requests: int = 0
    failures: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0

    def p(self, share: float) -> float:
        return percentile(self.latencies_ms, share)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def sequential(port: int, headers: dict[str, str], path_of: Callable[[int], str], count: int) -> Measured:
    sender, result = Sender(port, headers), Measured()
    for n in range(count):
        started = time.perf_counter()
        status = await sender.get(path_of(n))
        result.latencies_ms.append((time.perf_counter() - started) * 1000)
        result.requests += 1
        result.failures += status != 200
    sender.close()
    return result


async def concurrent(
    port: int, headers: list[dict[str, str]], path_of: Callable[[int], str], seconds: float, pgid: int | None = None
) -> Measured:
    """`len(headers)` senders for `seconds`; `pgid`: the process group whose CPU time is counted meanwhile."""
    result, counter = Measured(), iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def run(sender: Sender) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status = await sender.get(path_of(next(counter)))
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.requests += 1
            result.failures += status != 200
        sender.close()

    cpu_before = group_cpu(pgid) if pgid is not None else 0.0
    started = time.perf_counter()
    await asyncio.gather(*(run(Sender(port, h)) for h in headers))
    result.seconds = time.perf_counter() - started
    if pgid is not None:
        result.cpu_seconds = group_cpu(pgid) - cpu_before
    return result


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) the live processes of a process group have used (the server and its workers)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                raw = stat.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


# -- the backend -------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    name = f"assetpay_proxy_bench_{os.getpid()}"
    admin = await asyncpg.connect(SERVER)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield SERVER.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group, stopped (with any workers it started) when the block ends."""
    child = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        yield child
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(900):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url, timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} never became ready")


def backend_env(database: str, stub_port: int, cache_ttl: float, rate_limit: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSETPAY_")}
    env.update(
        DATABASE_URL=database,
        ASSETPAY_BASE_URL=f"http://127.0.0.1:{stub_port}",
        ASSETPAY_API_KEY="ap_bench",
        ASSETPAY_API_SECRET="bench-api-secret",
        ASSETPAY_MERCHANT_ID=MERCHANT_ID,
        AUTH_JWT_SECRET=JWT_SECRET,
        ADMIN_API_KEY=ADMIN_KEY,
        MARKET_CACHE_TTL_SECONDS=str(cache_ttl),
        LOG_LEVEL="WARNING",
    )
    env.update((name, str(rate_limit)) for name in RATE_LIMIT_VARIABLES)
    return env


def token(user_id: str) -> str:
    return jwt.encode({"sub": user_id, "exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256")


async def register(port: int, users: list[str]) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for n, user in enumerate(users):
            response = await client.put(
                f"/v1/users/{user}",
                json={"steamId": str(76561198200000000 + n), "tradeUrl": TRADE_URL},
                headers={"X-Admin-Key": ADMIN_KEY},
            )
            response.raise_for_status()


# -- the run -----------------------------------------------------------------------------------------------------


@dataclass
class Route:
    name: str
    upstream: Callable[[int], str]
    backend: Callable[[int], str]


ROUTES = [
    Route("market", lambda n: f"/client/market?game=730&page={n + 1}", lambda n: f"/v1/market?page={n % 10_000 + 1}"),
    Route(
        "inventory",
        lambda n: f"/client/inventory?game=730&page={n + 1}",
        lambda n: f"/v1/inventory?page={n % 10_000 + 1}",
    ),
]


@dataclass(frozen=True)
class Proxy:
    """A server in front of the stub: its port and its process group (for its CPU)."""

    name: str
    port: int
    pgid: int


async def measure_route(
    route: Route, args: argparse.Namespace, stub: int, proxies: list[Proxy], users: list[str]
) -> dict[str, Any]:
    """Straight to the stub, then through each proxy: one at a time, then with `--senders` concurrent senders."""
    upstream_headers = [{"Authorization": "Bearer client-token"} for _ in users]
    user_headers = [{"Authorization": f"Bearer {token(user)}"} for user in users]
    if args.warmup > 0:  # connections opened, pools filled, first-call work done: none of it is measured
        await concurrent(stub, upstream_headers, route.upstream, args.warmup)
        for p in proxies:
            await concurrent(p.port, user_headers, route.backend, args.warmup)
    direct_seq = await sequential(stub, upstream_headers[0], route.upstream, args.sequential)
    sequentials = {p.name: await sequential(p.port, user_headers[0], route.backend, args.sequential) for p in proxies}
    direct = await concurrent(stub, upstream_headers, route.upstream, args.duration)
    concurrents = {}
    for p in proxies:
        with profiled(p, route, args):
            concurrents[p.name] = await concurrent(p.port, user_headers, route.backend, args.duration, p.pgid)
    result: dict[str, Any] = {
        "direct": {
            "sequential_p50_ms": round(direct_seq.p(0.5), 3),
            "concurrent_p50_ms": round(direct.p(0.5), 3),
            "concurrent_p99_ms": round(direct.p(0.99), 3),
            "rps": round(direct.rate, 1),
        },
        "failures": direct_seq.failures + direct.failures,
    }
    for p in proxies:
        seq, conc = sequentials[p.name], concurrents[p.name]
        result[p.name] = {
            "added_p50_ms": round(seq.p(0.5) - direct_seq.p(0.5), 3),
            "added_concurrent_p50_ms": round(conc.p(0.5) - direct.p(0.5), 3),
            "added_concurrent_p99_ms": round(conc.p(0.99) - direct.p(0.99), 3),
            "rps": round(conc.rate, 1),
            "ratio": round(conc.rate / direct.rate, 3),
            "cpu_ms_per_request": round(conc.cpu_seconds * 1000 / conc.requests, 3) if conc.requests else None,
        }
        result["failures"] += seq.failures + conc.failures
    return result


@contextlib.contextmanager
def profiled(proxy: Proxy, route: Route, args: argparse.Namespace) -> Iterator[None]:
    """`--profile`: py-spy samples the backend (all its workers) while its concurrent phase runs."""
    if not args.profile or proxy.name != "backend":
        yield
        return
    output = Path(args.profile).with_suffix(f".{route.name}.txt")
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    command = [py_spy, "record", "--pid", str(proxy.pgid), "--subprocesses", "--format", "raw", "--rate", "200"]
    command += ["--duration", str(max(1, round(args.duration))), "--output", str(output), "--nonblocking"]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        log(f"profile of {route.name} written to {output}")


def verdicts(results: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Each target, by route: the backend against the peer and the direct figures of the same run."""
    checks: dict[str, bool] = {}
    for name, r in results.items():
        backend, peer = r["backend"], r["peer"]
        checks[f"{name}: added p50 <= {TARGETS['p50_vs_peer']}x the peer's"] = backend["added_p50_ms"] <= TARGETS[
            "p50_vs_peer"
        ] * max(peer["added_p50_ms"], 0.0)
        checks[f"{name}: added p99 at {r['senders']} senders <= {TARGETS['p99_vs_peer']}x the peer's"] = backend[
            "added_concurrent_p99_ms"
        ] <= TARGETS["p99_vs_peer"] * max(peer["added_concurrent_p99_ms"], 0.0)
        checks[f"{name}: uncached >= {TARGETS['uncached_ratio']}x direct"] = (
            backend["ratio"] >= TARGETS["uncached_ratio"]
        )
        checks[f"{name}: every answer 200"] = not r["failures"]
    if "cached" in results.get("market", {}):
        checks[f"market: cached >= {TARGETS['cached_ratio']:g}x direct"] = (
            results["market"]["cached"]["ratio"] >= TARGETS["cached_ratio"]
        )
    return checks


async def main(args: argparse.Namespace) -> int:
    stub_port, peer_port = free_port(), free_port()
    users = [f"bench-user-{n}" for n in range(args.senders)]
    results: dict[str, dict[str, Any]] = {}
    stub_command = [
        *(sys.executable, __file__, "--serve-stub", str(stub_port)),
        *("--upstream-ms", str(args.upstream_ms), "--page-size", str(args.page_size)),
    ]
    peer_command = [*PEER, "--port", str(peer_port), "--workers", str(args.workers), "--log-level", "warning"]
    peer_env = {**os.environ, "PEER_UPSTREAM": f"http://127.0.0.1:{stub_port}", "PEER_JWT_SECRET": JWT_SECRET}
    load_before = os.getloadavg()
    async with scratch_database() as database:
        subprocess.run(
            [sys.executable, "-m", "assetpay_merchant.cli", "migrate"],
            env={**os.environ, "DATABASE_URL": database},
            check=True,
            capture_output=True,
        )
        with process(stub_command, dict(os.environ)), process([*peer_command, "--no-access-log"], peer_env) as peer:
            await asyncio.sleep(0.5)
            for ttl, phase in ((0.0, "uncached"), (args.cache_ttl, "cached")):
                backend_port = free_port()  # a fresh one each time: the last server's may linger in TIME_WAIT
                serve = [*SERVE, "--port", str(backend_port), "--workers", str(args.workers)]
                with process(serve, backend_env(database, stub_port, ttl, args.rate_limit)) as backend:
                    await wait_ready(f"http://127.0.0.1:{backend_port}/readyz")
                    if phase == "uncached":
                        await wait_ready(f"http://127.0.0.1:{peer_port}/docs")
                        await register(backend_port, users)
                        proxies = [Proxy("peer", peer_port, peer.pid), Proxy("backend", backend_port, backend.pid)]
                        for route in ROUTES:
                            log(f"{route.name}: one at a time and concurrent: direct, peer, backend")
                            results[route.name] = await measure_route(route, args, stub_port, proxies, users)
                            results[route.name]["senders"] = args.senders
                    else:
                        log("market: one query, cache on")
                        headers = [{"Authorization": f"Bearer {token(user)}"} for user in users]
                        cached = await concurrent(
                            backend_port, headers, lambda n: "/v1/market?page=1", args.duration, backend.pid
                        )
                        market = results["market"]
                        market["cached"] = {
                            "rps": round(cached.rate, 1),
                            "ratio": round(cached.rate / market["direct"]["rps"], 2),
                            "cpu_ms_per_request": round(cached.cpu_seconds * 1000 / max(cached.requests, 1), 3),
                        }
                        market["failures"] += cached.failures
    checks = verdicts(results)
    report(results, checks, args, load_before, os.getloadavg())
    passed = all(checks.values())
    print(f"RESULT    : {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


def report(
    results: dict[str, dict[str, Any]],
    checks: dict[str, bool],
    args: argparse.Namespace,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    phases = f"{args.senders} senders, upstream answers after {args.upstream_ms:g} ms, {args.duration:g} s per phase"
    print(f"\n== proxy: {phases}, {args.workers} worker(s) each ==")
    print(
        f"load      : {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"(1-minute load average, {os.cpu_count()} CPUs)"
    )
    for name, r in results.items():
        d = r["direct"]
        print(
            f"{name:9s}: direct p50 {d['sequential_p50_ms']:.2f} ms one at a time; "
            f"p50/p99 {d['concurrent_p50_ms']:.1f}/{d['concurrent_p99_ms']:.1f} ms at {args.senders}; {d['rps']:.1f}/s"
        )
        for who in ("peer", "backend"):
            x = r[who]
            print(
                f"  {who:7s}: added p50 {x['added_p50_ms']:6.2f} ms one at a time | at {args.senders}: added p50 "
                f"{x['added_concurrent_p50_ms']:6.2f} ms, p99 {x['added_concurrent_p99_ms']:7.2f} ms | "
                f"{x['rps']:7.1f}/s (x{x['ratio']:.2f}) | CPU {x['cpu_ms_per_request']:.2f} ms/request"
            )
        if "cached" in r:
            c = r["cached"]
            print(
                f"  cached : {c['rps']:7.1f}/s (x{c['ratio']:.1f} direct) | "
                f"CPU {c['cpu_ms_per_request']:.2f} ms/request"
            )
        if r["failures"]:
            print(f"  FAILURES {r['failures']}")
    for check, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}      : {check}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrent phase")
    parser.add_argument("--senders", type=int, default=16, help="concurrent senders (one user each)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load per server and route")
    parser.add_argument("--sequential", type=int, default=200, help="requests one at a time, per server and route")
    parser.add_argument("--upstream-ms", type=float, default=100.0, help="how long the stub takes to answer")
    parser.add_argument("--page-size", type=int, default=50, help="items per stub answer")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of the backend and the peer")
    parser.add_argument("--cache-ttl", type=float, default=10.0, help="market cache TTL in the cached phase")
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=10**9,
        help="requests per minute of the backend's merchant and user budgets of the two routes (default: never "
        "binding; AssetPay's real ones would refuse most of this load)",
    )
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="sample the backend with py-spy during its concurrent phases (collapsed stacks, PATH.<route>.txt)",
    )
    parser.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    arguments = build_parser().parse_args()
    if arguments.serve_stub:
        asyncio.run(serve_stub(arguments.serve_stub, arguments.upstream_ms / 1000, arguments.page_size))
    else:
        sys.exit(asyncio.run(main(arguments)))
