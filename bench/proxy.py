"""Proxy benchmark: market and inventory through the backend against a local stub of AssetPay, and the same
requests straight to the stub, in one run (see bench/README.md).

    python bench/proxy.py [--duration 10] [--senders 16] [--upstream-ms 100]

Reports, for each route: the latency the backend adds (p50/p99 of sequential requests, backend minus direct),
and throughput with concurrent senders as a ratio of the direct throughput: uncached (the market cache off, every
request a different page so nothing is shared), and for the market also cached (one query, cache on).
Targets: added p50 < 2 ms, uncached throughput >= 0.6 of direct, cached market >= 10x direct.

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
TARGETS = {"added_p50_ms": 2.0, "uncached_ratio": 0.6, "cached_ratio": 10.0}


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
    port: int, headers: list[dict[str, str]], path_of: Callable[[int], str], seconds: float
) -> Measured:
    result, counter = Measured(), iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def run(sender: Sender) -> None:
        while time.perf_counter() < deadline:
            status = await sender.get(path_of(next(counter)))
            result.requests += 1
            result.failures += status != 200
        sender.close()

    started = time.perf_counter()
    await asyncio.gather(*(run(Sender(port, h)) for h in headers))
    result.seconds = time.perf_counter() - started
    return result


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
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url, timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} never became ready")


def backend_env(database: str, stub_port: int, cache_ttl: float) -> dict[str, str]:
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


async def measure_route(route: Route, args: argparse.Namespace, stub: int, backend: int, users: list[str]) -> dict:
    upstream_headers = [{"Authorization": "Bearer client-token"} for _ in users]
    backend_headers = [{"Authorization": f"Bearer {token(user)}"} for user in users]
    direct_seq = await sequential(stub, upstream_headers[0], route.upstream, args.sequential)
    backend_seq = await sequential(backend, backend_headers[0], route.backend, args.sequential)
    direct = await concurrent(stub, upstream_headers, route.upstream, args.duration)
    proxied = await concurrent(backend, backend_headers, route.backend, args.duration)
    added_p50 = percentile(backend_seq.latencies_ms, 0.5) - percentile(direct_seq.latencies_ms, 0.5)
    added_p99 = percentile(backend_seq.latencies_ms, 0.99) - percentile(direct_seq.latencies_ms, 0.99)
    return {
        "added_p50_ms": round(added_p50, 3),
        "added_p99_ms": round(added_p99, 3),
        "direct_rps": round(direct.rate, 1),
        "uncached_rps": round(proxied.rate, 1),
        "uncached_ratio": round(proxied.rate / direct.rate, 3),
        "failures": direct_seq.failures + backend_seq.failures + direct.failures + proxied.failures,
    }


async def main(args: argparse.Namespace) -> int:
    stub_port, backend_port = free_port(), free_port()
    users = [f"bench-user-{n}" for n in range(args.senders)]
    results: dict[str, dict] = {}
    stub_command = [sys.executable, __file__, "--serve-stub", str(stub_port), "--upstream-ms", str(args.upstream_ms)]
    async with scratch_database() as database:
        subprocess.run(
            [sys.executable, "-m", "assetpay_merchant.cli", "migrate"],
            env={**os.environ, "DATABASE_URL": database},
            check=True,
            capture_output=True,
        )
        with process(stub_command, dict(os.environ)):
            await asyncio.sleep(0.5)
            for ttl, phase in ((0.0, "uncached"), (args.cache_ttl, "cached")):
                serve = [*SERVE, "--port", str(backend_port), "--workers", str(args.workers)]
                with process(serve, backend_env(database, stub_port, ttl)):
                    await wait_ready(f"http://127.0.0.1:{backend_port}/readyz")
                    if phase == "uncached":
                        await register(backend_port, users)
                        for route in ROUTES:
                            log(f"{route.name}: sequential and concurrent, direct and through the backend")
                            results[route.name] = await measure_route(route, args, stub_port, backend_port, users)
                    else:
                        log("market: one query, cache on")
                        headers = [{"Authorization": f"Bearer {token(user)}"} for user in users]
                        cached = await concurrent(backend_port, headers, lambda n: "/v1/market?page=1", args.duration)
                        market = results["market"]
                        market["cached_rps"] = round(cached.rate, 1)
                        market["cached_ratio"] = round(cached.rate / market["direct_rps"], 2)
                        market["failures"] += cached.failures
    report(results, args)
    passed = (
        all(
            r["added_p50_ms"] < TARGETS["added_p50_ms"]
            and r["uncached_ratio"] >= TARGETS["uncached_ratio"]
            and not r["failures"]
            for r in results.values()
        )
        and results["market"]["cached_ratio"] >= TARGETS["cached_ratio"]
    )
    print(f"RESULT    : {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    phases = f"{args.senders} senders, upstream answers after {args.upstream_ms} ms, {args.duration} s per phase"
    print(f"\n== proxy: {phases} ==")
    for name, r in results.items():
        print(
            f"{name:9s}: added p50 {r['added_p50_ms']:6.2f} ms  p99 {r['added_p99_ms']:6.2f} ms | "
            f"direct {r['direct_rps']:7.1f}/s  uncached {r['uncached_rps']:7.1f}/s (x{r['uncached_ratio']:.2f})"
            + (f"  cached {r['cached_rps']:7.1f}/s (x{r['cached_ratio']:.1f})" if "cached_rps" in r else "")
            + (f"  FAILURES {r['failures']}" if r["failures"] else "")
        )
    print(
        f"targets   : added p50 < {TARGETS['added_p50_ms']} ms, uncached >= x{TARGETS['uncached_ratio']}, "
        f"cached market >= x{TARGETS['cached_ratio']}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrent phase")
    parser.add_argument("--senders", type=int, default=16, help="concurrent senders (one user each)")
    parser.add_argument("--sequential", type=int, default=300, help="requests for the latency figures")
    parser.add_argument("--upstream-ms", type=float, default=100.0, help="how long the stub takes to answer")
    parser.add_argument("--page-size", type=int, default=50, help="items per stub answer")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of the backend (as deployed)")
    parser.add_argument("--cache-ttl", type=float, default=10.0, help="market cache TTL in the cached phase")
    parser.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    arguments = build_parser().parse_args()
    if arguments.serve_stub:
        asyncio.run(serve_stub(arguments.serve_stub, arguments.upstream_ms / 1000, arguments.page_size))
    else:
        sys.exit(asyncio.run(main(arguments)))
