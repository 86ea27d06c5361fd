"""Where the app's CPU time per webhook delivery goes, measured stage by stage in one process (no profiler).

    python bench/webhook_breakdown.py [--deliveries 2000] [--rounds 3] [--database-url URL]

Companion of bench/webhooks.py (whose load, bodies and helpers it reuses). On a scratch database it runs the same
kind of deliveries (hold -> completed | reverted, 10 % exact duplicates) one after another, each stage on its own
fresh trades, the stages taking turns for --rounds rounds (each keeps its cheapest round), and reports CPU
milliseconds per delivery (`time.process_time`: waiting for PostgreSQL or for a CPU is not counted, so the numbers
hold up on a busy machine better than throughput does):

  verify        gateway.signature.verify (HMAC over the raw body)
  decode        payloads.decode_json (json, Decimal numbers)
  classify      gateway.callbacks.classify (pydantic TradeSnapshot)
  intake        services.intake.receive (its own unit of work): the app's SQL and its logic around it
  bare SQL      the same statements (the app's own SQL constants) on a plain asyncpg connection, no app logic
  asgi          the whole route through FastAPI/Starlette (the ASGI app called directly: no uvicorn, no sockets)
  empty tx      Database.unit_of_work with nothing in it (pool checkout and ping, BEGIN, COMMIT)
  SELECT 1      one round trip on asyncpg

CPU ms is this process's CPU per delivery (intake and bare SQL without verify/decode/classify, which have rows of
their own); wall ms is the time per delivery one after another; PG CPU ms is what the scratch database's backends
spent per delivery. intake - bare SQL is the app's Python around its SQL; asgi - (verify + decode + classify +
intake) is FastAPI, Starlette, the route and the response; bench/webhooks.py's "app" CPU per delivery minus asgi
is uvicorn, HTTP parsing and the sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from pydantic import SecretStr

import webhooks as bench  # bench/webhooks.py (this directory is sys.path[0])
from assetpay_merchant.app import create_app
from assetpay_merchant.config import Settings
from assetpay_merchant.gateway.callbacks import classify, decode_json
from assetpay_merchant.gateway.signature import SIGNATURE_HEADER, SignedDelivery, verify
from assetpay_merchant.services import intake
from assetpay_merchant.store.database import Database, create_engine


@dataclass(frozen=True, slots=True)
class Step:
    """One delivery of the workload, with what the raw-SQL stage needs to know about it."""

    delivery: bench.Delivery
    delivery_key: int
    trade: bench.BenchTrade

    @property
    def items_json(self) -> str:
        """The trade's items as the app stores them (TradeItem.stored())."""
        item = self.trade.item
        stored = {
            "id": item["id"],
            "assetId": item["assetId"],
            "marketHashName": item["marketHashName"],
            "name": item["name"],
            "iconUrl": item["iconUrl"],
            "price": f"{self.trade.total:.2f}",
            "amount": 1,
        }
        return json.dumps([stored])


def workload(count: int, users: int, seed: int) -> list[Step]:
    """Deliveries in an order a sender could send them: holds, their endings, and exact duplicates."""
    rng = random.Random(seed)
    steps: list[Step] = []
    in_hold: list[bench.BenchTrade] = []
    first: list[Step] = []
    while len(steps) < count:
        if first and rng.random() < 0.10:
            original = rng.choice(first[-500:])
            steps.append(
                Step(
                    bench.Delivery("duplicate", original.delivery.headers, original.delivery.body),
                    original.delivery_key,
                    original.trade,
                )
            )
            continue
        if not in_hold or (len(in_hold) < 4 and rng.random() < 0.5):
            trade = bench.new_trade(rng, users)
            step = Step(bench.Delivery.sign("hold", bench.callback_body(trade, "hold")), len(steps) + 1, trade)
            in_hold.append(trade)
        else:
            trade = in_hold.pop(rng.randrange(len(in_hold)))
            status = "reverted" if rng.random() < 0.2 else "completed"
            step = Step(bench.Delivery.sign(status, bench.callback_body(trade, status)), len(steps) + 1, trade)
        steps.append(step)
        first.append(step)
    return steps


def cpu_per_call(steps: list[Any], work: Callable[[Any], object]) -> float:
    started = time.process_time()
    for step in steps:
        work(step)
    return (time.process_time() - started) * 1000 / len(steps)


@dataclass(frozen=True, slots=True)
class Row:
    cpu: float  # ms of this process's CPU per call
    wall: float | None = None  # ms per call, calls one after another
    postgres: float | None = None  # ms of CPU per call in the scratch database's backends


async def cpu_per_call_async(
    steps: list[Any], work: Callable[[Any], Awaitable[object]], database: str, minus: float = 0.0
) -> Row:
    """Calls one after another; `minus` (ms) is taken off the CPU figure (parts measured on their own)."""
    before = await asyncio.to_thread(bench.CpuSnapshot, database)
    started, wall = time.process_time(), time.perf_counter()
    for step in steps:
        await work(step)
    cpu, wall = time.process_time() - started, time.perf_counter() - wall
    after = await asyncio.to_thread(bench.CpuSnapshot, database)
    count = len(steps)
    postgres = after.groups["postgres"] - before.groups["postgres"]
    return Row(cpu * 1000 / count - minus, wall * 1000 / count, postgres * 1000 / count)


def signed_delivery(step: Step) -> SignedDelivery:
    return verify(
        step.delivery.headers[SIGNATURE_HEADER],
        step.delivery.body,
        secrets=[bench.WEBHOOK_SECRET.encode()],
        now=datetime.now(UTC),
    )


class BareSql:
    """The app's statements for one delivery (its own SQL constants), on a plain asyncpg connection."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        from assetpay_merchant.ledger import service as ledger_sql
        from assetpay_merchant.trades import service as trade_sql

        self.connection = connection
        self.record, self.outcome = intake._RECORD, intake._OUTCOME
        self.lock, self.find_user = trade_sql._LOCK_FOR_CALLBACK, trade_sql._FIND_USER
        self.insert, self.save, self.post = trade_sql._INSERT_FROM_CALLBACK, trade_sql._SAVE, ledger_sql._POST

    async def apply(self, step: Step) -> None:
        c, trade, kind = self.connection, step.trade, step.delivery.kind
        user, steam = f"{bench.USER_PREFIX}{trade.user}", str(bench.STEAM_ID_BASE + trade.user)
        signed = signed_delivery(step)
        async with c.transaction():
            row_id = await c.fetchval(
                self.record,
                signed.delivery_id,
                "trade",
                "received",
                None,
                trade.id,
                signed.timestamp,
                step.delivery.body.decode(),
            )
            if row_id is None:
                return
            row = await c.fetchrow(self.lock, trade.id, trade.external_id)
            if kind == "hold":
                await c.fetchval(self.find_user, user, steam)
                row = await c.fetchrow(
                    self.insert,
                    uuid.uuid4(),
                    trade.id,
                    trade.external_id,
                    user,
                    steam,
                    user,
                    "deposit",
                    "730",
                    "hold",
                    trade.total,
                    trade.pre,
                    trade.pending,
                    step.items_json,
                    True,
                    None,
                    None,
                )
                amount, entry, status, posted, outcome = trade.pre, "pre_credit", "hold", trade.pre, "created"
            elif kind == "completed":
                amount, entry, status, posted, outcome = trade.pending, "credit", "completed", trade.total, "advance"
            else:
                amount, entry, status, posted, outcome = -trade.pre, "reversal", "reverted", Decimal(0), "advance"
            assert row is not None
            await c.fetchval(self.post, user, amount, row["id"], entry)
            await c.fetchval(
                self.save,
                row["id"],
                trade.id,
                user,
                status,
                "730",
                trade.total,
                trade.pre,
                trade.pending,
                None,
                posted,
                step.items_json,
                True,
                None,
                None,
                False,
                None,
            )
            await c.execute(self.outcome, row_id, outcome, row["id"])


class Asgi:
    """The FastAPI app called as an ASGI callable: routing, dependencies, the handler and the response."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.status = 0

    async def post(self, step: Step) -> None:
        body = step.delivery.body
        headers = [(b"host", b"bench"), (b"content-length", str(len(body)).encode())]
        headers += [(name.lower().encode(), value.encode()) for name, value in step.delivery.headers.items()]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/webhooks/assetpay",
            "raw_path": b"/webhooks/assetpay",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]

        await self.app(scope, receive, send)
        if self.status != 200:
            raise RuntimeError(f"the app answered {self.status}")


async def register(database: str, users: int) -> None:
    connection = await asyncpg.connect(database)
    try:
        await connection.execute(
            "INSERT INTO users (id, steam_id, trade_url) SELECT $1 || i, ($2::bigint + i)::text, $3 "
            "FROM generate_series(1, $4) AS i",
            bench.USER_PREFIX,
            bench.STEAM_ID_BASE,
            bench.TRADE_URL,
            users,
        )
        await connection.execute("INSERT INTO balances (user_id) SELECT id FROM users")
    finally:
        await connection.close()


async def measure(args: argparse.Namespace) -> dict[str, Row]:
    results: dict[str, Row] = {}
    server = await bench.open_server(args.database_url)
    try:
        async with bench.scratch_database(server, keep=False) as url:
            database = bench.plain_url(url)
            name = str(url.database)
            await bench.upgrade_async(database)
            await register(database, args.users)
            count = args.deliveries

            steps = workload(count, args.users, seed=1)
            results["verify"] = Row(cpu_per_call(steps, signed_delivery))
            results["decode"] = Row(cpu_per_call(steps, lambda s: decode_json(s.delivery.body)))
            bodies = [decode_json(s.delivery.body) for s in steps]
            results["classify"] = Row(cpu_per_call(bodies, classify))
            parsing = results["verify"].cpu + results["decode"].cpu + results["classify"].cpu

            database_ = Database(create_engine(database, pool_size=1, max_overflow=0))
            connection = await asyncpg.connect(database)
            settings = Settings(
                database_url=database,
                assetpay_api_key=SecretStr("ap_bench_key"),
                assetpay_api_secret=SecretStr(bench.WEBHOOK_SECRET),
                admin_api_key=SecretStr(bench.ADMIN_KEY),
                auth_jwt_secret=SecretStr(bench.JWT_SECRET),
                log_level="WARNING",
            )
            app = create_app(settings)
            try:
                async with app.router.lifespan_context(app):
                    bare, asgi = BareSql(connection), Asgi(app)

                    async def apply(step: Step) -> None:
                        signed = signed_delivery(step)
                        callback = classify(decode_json(step.delivery.body))
                        await intake.receive(database_, signed, step.delivery.body, callback)

                    async def empty(_: object) -> None:
                        async with database_.unit_of_work():
                            pass

                    async def select_one(_: object) -> None:
                        await connection.fetchval("SELECT 1")

                    stages: list[tuple[str, Callable[[Any], Awaitable[object]], float, bool]] = [
                        ("intake", apply, parsing, True),
                        ("bare SQL", bare.apply, results["verify"].cpu, True),
                        ("asgi", asgi.post, 0.0, True),
                        ("empty tx", empty, 0.0, False),
                        ("SELECT 1", select_one, 0.0, False),
                    ]
                    for n, (_, work, _, deliveries) in enumerate(stages):  # warm up every path, then analyze
                        for step in workload(200, args.users, seed=100 + n) if deliveries else range(200):
                            await work(step)
                    await bench.analyze(url)
                    # Rounds alternate the stages; each stage keeps its cheapest round (the least disturbed).
                    for round_ in range(args.rounds):
                        for n, (stage, work, minus, deliveries) in enumerate(stages):
                            load = workload(count, args.users, seed=1000 * round_ + n) if deliveries else range(count)
                            row = await cpu_per_call_async(list(load), work, name, minus)
                            if stage not in results or row.cpu < results[stage].cpu:
                                results[stage] = row
            finally:
                await connection.close()
                await database_.dispose()
    finally:
        server.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/webhook_breakdown.py", description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000, help="deliveries per stage and round")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all stages; each keeps its cheapest")
    parser.add_argument("--database-url", help="PostgreSQL server for the scratch database (as bench/webhooks.py)")
    args = parser.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]

        results = uvloop.run(measure(args))
    except ImportError:  # pragma: no cover
        results = asyncio.run(measure(args))
    except bench.BenchError as exc:
        print(f"could not run: {exc}", file=sys.stderr)
        return 2
    print(f"\n== CPU per delivery, one delivery at a time ({args.deliveries} per stage, best of {args.rounds}) ==")
    print(f"{'stage':24} {'CPU ms':>8} {'wall ms':>8} {'PG CPU ms':>10}")
    for name, row in results.items():
        wall = "" if row.wall is None else f"{row.wall:8.3f}"
        postgres = "" if row.postgres is None else f"{row.postgres:10.3f}"
        print(f"{name:24} {row.cpu:8.3f} {wall:>8} {postgres:>10}")
    parsing = sum(results[name].cpu for name in ("verify", "decode", "classify"))
    asgi, applied, bare = results["asgi"].cpu, results["intake"].cpu, results["bare SQL"].cpu
    print(f"\nthe app's Python around its SQL (intake - bare SQL)    : {applied - bare:6.3f} ms")
    print(f"FastAPI/Starlette, route, response (asgi - the above)  : {asgi - parsing - applied:6.3f} ms")
    print("uvicorn, HTTP and sockets: bench/webhooks.py's app CPU per delivery minus asgi")
    return 0


if __name__ == "__main__":
    sys.exit(main())
