"""The whole product across real processes on loopback: `assetpay-merchant serve` (real secrets, real PostgreSQL)
meets `assetpay-merchant sandbox` over real HTTP, both under uvicorn; the sandbox's signed callbacks and approval
asks come back through the real webhook.

Every flow a merchant sees runs once calmly, then again with every chaos switch on (duplicates, reordering,
delays, lost attempts, approval answers timing out). Trades move only when the test moves them through the sandbox's
controls (its clock would take an hour a step), so the flows are deterministic; callbacks and approval asks still
go out on the sandbox's own schedule, chaos included. At the end every user's balance must equal an independent
model computed from the sandbox's trades (AssetPay's truth), and `ledger check` must pass.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import CLI, SECRETS, clean_env, free_port, running, serve_process
from tests.support import ADMIN_KEY, TRADE_URL, new_steam_id, user_token

MERCHANT_ID = "5e5e5e5e-0000-4000-8000-00000000e2e0"
CS2, RUST = "730", "252490"
FINAL = {"completed", "failed", "canceled", "declined", "reverted"}
FAILURES = FINAL - {"completed"}
SETTLE_SECONDS = 120  # the longest wait for the backend to agree with the sandbox (chaos retries back off)

CALM: list[str] = []
CHAOS = [
    "--seed", "8",
    "--duplicate-rate", "0.4",
    "--reorder",
    "--delay", "1.5",
    "--drop-rate", "0.25",
    "--approval-timeout-rate", "0.3",
]  # fmt: skip


@contextmanager
def sandbox_process(workdir: Path, *, port: int, callback_url: str, chaos: list[str]) -> Iterator[str]:
    """`assetpay-merchant sandbox` with the test merchant's credentials, until its controls answer."""
    environment = clean_env(
        SANDBOX_API_KEY=SECRETS["ASSETPAY_API_KEY"],
        SANDBOX_API_SECRET=SECRETS["ASSETPAY_API_SECRET"],
        SANDBOX_MERCHANT_ID=MERCHANT_ID,
        LOG_LEVEL="WARNING",
    )
    command = [
        str(CLI), "sandbox", "--memory", "--port", str(port), "--callback-url", callback_url,
        "--step-seconds", "3600", "--hold-seconds", "3600", *chaos,
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with running(command, env=environment, log_path=workdir / f"sandbox-{port}.log", ready_url=f"{base}/_sandbox"):
        yield base


@dataclass
class Stack:
    """The backend and the sandbox, each reached over real HTTP, with the steps of the flows."""

    chaotic: bool
    backend: httpx.AsyncClient
    sandbox: httpx.AsyncClient
    database_url: str

    # -- the merchant platform and the frontend --------------------------------------------------------------

    async def register(self, user_id: str, **client_data: Any) -> str:
        steam_id = new_steam_id()
        profile: dict[str, Any] = {"steamId": steam_id, "tradeUrl": TRADE_URL}
        if client_data:
            profile["clientData"] = client_data
        answer = await self.backend.put(f"/v1/users/{user_id}", json=profile, headers={"X-Admin-Key": ADMIN_KEY})
        assert answer.status_code in (200, 201), answer.text
        return steam_id

    async def as_user(self, user_id: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {user_token(user_id, expires_in=3600)}", **kwargs.pop("headers", {})}
        return await self.backend.request(method, path, headers=headers, **kwargs)

    async def inventory(self, user_id: str, game: str) -> list[dict[str, Any]]:
        answer = await self.as_user(user_id, "GET", "/v1/inventory", params={"game": game, "limit": 100})
        assert answer.status_code == 200, answer.text
        return [item for item in answer.json()["items"] if item.get("accepted") is not False]

    async def cheapest_listings(self, user_id: str, count: int) -> list[dict[str, Any]]:
        answer = await self.as_user(user_id, "GET", "/v1/market", params={"sort": "priceAsc", "perPage": 20})
        assert answer.status_code == 200, answer.text
        return list(answer.json()["items"][:count])

    async def deposit(self, user_id: str, items: list[dict[str, Any]], *, game: str, instant: bool = True) -> dict:
        body = {"items": [{"itemId": i["id"], "price": i["price"]} for i in items], "game": game, "isInstant": instant}
        answer = await self.as_user(
            user_id, "POST", "/v1/deposits", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
        )
        assert answer.status_code == 201, answer.text
        trade: dict[str, Any] = answer.json()
        return trade

    async def withdraw(self, user_id: str, listings: list[dict[str, Any]]) -> httpx.Response:
        body = {"items": [{"itemId": i["id"], "price": i["price"]} for i in listings]}
        return await self.as_user(
            user_id, "POST", "/v1/withdrawals", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
        )

    async def buy(self, user_id: str, listings: list[dict[str, Any]]) -> dict[str, Any]:
        answer = await self.withdraw(user_id, listings)
        assert answer.status_code == 201, answer.text
        trade: dict[str, Any] = answer.json()
        return trade

    async def balance(self, user_id: str) -> tuple[Decimal, Decimal]:
        answer = await self.as_user(user_id, "GET", "/v1/balance")
        assert answer.status_code == 200, answer.text
        return Decimal(answer.json()["available"]), Decimal(answer.json()["pending"])

    async def entries(self, user_id: str) -> list[tuple[str, Decimal]]:
        answer = await self.as_user(user_id, "GET", "/v1/ledger", params={"limit": 100})
        assert answer.status_code == 200, answer.text
        return [(e["kind"], Decimal(e["amount"])) for e in reversed(answer.json()["entries"])]

    # -- AssetPay's side ---------------------------------------------------------------------------------------

    async def at_assetpay(self, ref: str) -> dict[str, Any]:
        answer = await self.sandbox.get(f"/_sandbox/trades/{ref}")
        assert answer.status_code == 200, answer.text
        trade: dict[str, Any] = answer.json()["data"]
        return trade

    async def move(self, ref: str, to: str | None = None) -> dict[str, Any]:
        """One step at AssetPay (`to` unset), or the regular path to completed, or a forced ending."""
        answer = await self.sandbox.post(f"/_sandbox/trades/{ref}/advance", params={"to": to} if to else None)
        assert answer.status_code == 200, answer.text
        trade: dict[str, Any] = answer.json()["data"]
        return trade

    async def fail_items(self, ref: str, item_ids: list[str]) -> None:
        answer = await self.sandbox.post(f"/_sandbox/trades/{ref}/fail-items", json={"itemIds": item_ids})
        assert answer.status_code == 200, answer.text

    async def back_user(self, steam_id: str, *, collateral: int = 500, level: int = 1) -> None:
        """Merchant collateral and a verified identity: enough instant credit to spend in the flows."""
        put = await self.sandbox.put(f"/_sandbox/users/{steam_id}/merchant-collateral", json={"amount": collateral})
        assert put.status_code == 200, put.text
        verified = await self.sandbox.put(f"/_sandbox/users/{steam_id}/verification", json={"level": level})
        assert verified.status_code == 200, verified.text

    async def decided(self, ref: str) -> dict[str, Any]:
        """The withdrawal once AssetPay has the merchant's verdict (or gave up asking)."""
        async with asyncio.timeout(SETTLE_SECONDS):
            while True:
                trade = await self.at_assetpay(ref)
                if trade["status"] != "initiated":
                    return trade
                await asyncio.sleep(0.1)

    async def settled(self, user_id: str, trade: dict[str, Any]) -> dict[str, Any]:
        """Wait until the backend shows the trade in the status AssetPay has it in; returns ours."""
        async with asyncio.timeout(SETTLE_SECONDS):
            while True:
                theirs = await self.at_assetpay(trade["assetpayId"])
                ours = (await self.as_user(user_id, "GET", f"/v1/trades/{trade['id']}")).json()
                if ours["status"] == theirs["status"]:
                    return ours
                await asyncio.sleep(0.1)

    async def quiet(self) -> None:
        """Every callback delivered (chaos duplicates and retries included)."""
        async with asyncio.timeout(SETTLE_SECONDS):
            while True:
                if not (await self.sandbox.get("/_sandbox")).json()["data"]["pendingCallbacks"]:
                    return
                await asyncio.sleep(0.2)


def model_balance(trades: list[dict[str, Any]]) -> Decimal:
    """What AssetPay's trades say the user should hold (DESIGN's ledger rule, from AssetPay's side)."""
    total = Decimal(0)
    for trade in trades:
        status = trade["status"]
        if trade["type"] == "deposit":
            if status == "completed":
                total += Decimal(str(trade["totalPrice"]))
            elif status == "hold":
                total += Decimal(str(trade["preCredit"]))
        elif status not in FAILURES and status != "initiated":
            alive = [i for i in trade["items"] if i.get("status") not in FAILURES]
            total -= min(Decimal(str(trade["totalPrice"])), sum(Decimal(str(i["offer"]["price"])) for i in alive))
    return total


@pytest.fixture(params=["calm", "chaos"])
async def stack(request: pytest.FixtureRequest, scratch: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    """The two processes on a fresh database; the sandbox calm or with every chaos switch on."""
    from assetpay_merchant.store.migrations import upgrade_async

    database_url = await scratch.create("assetpay_e2e")
    await upgrade_async(database_url)
    sandbox_port = free_port()
    backend_env = {
        "ASSETPAY_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
        "ASSETPAY_MERCHANT_ID": MERCHANT_ID,
        "RECONCILE_INTERVAL_SECONDS": "0",
        "MARKET_CACHE_TTL_SECONDS": "0",
    }
    chaos = CHAOS if request.param == "chaos" else CALM
    with serve_process(database_url, tmp_path, **backend_env) as address:
        callback_url = f"http://{address}/webhooks/assetpay"
        with sandbox_process(tmp_path, port=sandbox_port, callback_url=callback_url, chaos=chaos) as sandbox_url:
            async with (
                httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as backend,
                httpx.AsyncClient(base_url=sandbox_url, timeout=30) as sandbox,
            ):
                yield Stack(request.param == "chaos", backend, sandbox, database_url)


async def test_every_flow_settles_exactly_across_real_processes(stack: Stack) -> None:
    s = stack
    users: dict[str, str] = {}  # user id → Steam id
    trades: dict[str, list[dict[str, Any]]] = {}  # user id → our trades

    async def started(user_id: str, trade: dict[str, Any]) -> dict[str, Any]:
        trades.setdefault(user_id, []).append(trade)
        return trade

    # CS2, instant: preCredit at hold, the rest at completed.
    users["instant"] = await s.register(
        "instant", totalWager=250000, kycLevel=3, fiatDeposits=True, cryptoDeposits=True
    )
    await s.back_user(users["instant"])
    items = (await s.inventory("instant", CS2))[:2]
    deposit = await started("instant", await s.deposit("instant", items, game=CS2))
    await s.move(deposit["assetpayId"])  # active
    held = await s.move(deposit["assetpayId"])  # hold
    pre_credit, total = Decimal(str(held["preCredit"])), Decimal(str(held["totalPrice"]))
    assert Decimal(0) < pre_credit <= total
    await s.settled("instant", deposit)
    assert await s.balance("instant") == (pre_credit, total - pre_credit)
    await s.move(deposit["assetpayId"])  # completed
    await s.settled("instant", deposit)
    assert await s.balance("instant") == (total, Decimal(0))

    # CS2, not instant: nothing at hold, everything at completed.
    users["later"] = await s.register("later")
    items = (await s.inventory("later", CS2))[:1]
    deposit = await started("later", await s.deposit("later", items, game=CS2, instant=False))
    await s.move(deposit["assetpayId"])
    held = await s.move(deposit["assetpayId"])
    assert held["preCredit"] == 0
    await s.settled("later", deposit)
    assert (await s.balance("later"))[0] == 0
    await s.move(deposit["assetpayId"], "completed")
    await s.settled("later", deposit)
    assert (await s.balance("later"))[0] == Decimal(str(held["totalPrice"]))

    # Rust: no hold, credited in full.
    users["rust"] = await s.register("rust")
    items = (await s.inventory("rust", RUST))[:2]
    deposit = await started("rust", await s.deposit("rust", items, game=RUST))
    done = await s.move(deposit["assetpayId"], "completed")
    assert done["preCredit"] == done["totalPrice"]
    await s.settled("rust", deposit)
    assert (await s.balance("rust"))[0] == Decimal(str(done["totalPrice"]))

    # A reversal after the user spent the preCredit leaves a debt.
    users["spender"] = await s.register("spender")
    await s.back_user(users["spender"])
    items = (await s.inventory("spender", CS2))[:3]
    deposit = await started("spender", await s.deposit("spender", items, game=CS2))
    await s.move(deposit["assetpayId"])
    held = await s.move(deposit["assetpayId"])
    await s.settled("spender", deposit)
    listing = (await s.cheapest_listings("spender", 1))[0]
    assert Decimal(listing["price"]) <= Decimal(str(held["preCredit"]))
    bought = await s.withdraw("spender", [listing])
    assert bought.status_code == 201, bought.text
    purchase = await started("spender", bought.json())
    if (await s.decided(purchase["assetpayId"]))["status"] != "failed":  # chaos may time every approval out
        await s.move(purchase["assetpayId"], "completed")
    await s.settled("spender", purchase)
    await s.move(deposit["assetpayId"], "reverted")
    await s.settled("spender", deposit)
    available, _ = await s.balance("spender")
    assert available == model_balance([await s.at_assetpay(t["assetpayId"]) for t in trades["spender"]])
    if (await s.at_assetpay(purchase["assetpayId"]))["status"] == "completed":
        assert available == -Decimal(listing["price"])
        assert [kind for kind, _ in await s.entries("spender")][-1] == "reversal"

    # Withdrawals, funded by a Rust deposit (credited in full at once).
    users["buyer"] = await s.register("buyer")
    funding = await started("buyer", await s.deposit("buyer", (await s.inventory("buyer", RUST))[:3], game=RUST))
    await s.move(funding["assetpayId"], "completed")
    await s.settled("buyer", funding)
    funds, _ = await s.balance("buyer")
    listings = await s.cheapest_listings("buyer", 4)
    assert sum(Decimal(i["price"]) for i in listings) < funds

    # ... approved and delivered;
    approved = await started("buyer", await s.buy("buyer", listings[:1]))
    if (await s.decided(approved["assetpayId"]))["status"] != "failed":
        await s.move(approved["assetpayId"], "completed")
    await s.settled("buyer", approved)
    # ... failed after the approval debited it: refunded;
    refunded = await started("buyer", await s.buy("buyer", listings[1:2]))
    if (await s.decided(refunded["assetpayId"]))["status"] != "failed":
        await s.move(refunded["assetpayId"], "failed")
    await s.settled("buyer", refunded)
    # ... partly failed: the undelivered item is refunded, the delivered one charged;
    partly = await started("buyer", await s.buy("buyer", listings[2:4]))
    if (await s.decided(partly["assetpayId"]))["status"] != "failed":
        await s.fail_items(partly["assetpayId"], [listings[2]["id"]])
        await s.move(partly["assetpayId"], "completed")
    await s.settled("buyer", partly)
    # ... approved here, but AssetPay never heard the answer (every ask timed out): it fails, and is refunded.
    if s.chaotic:
        switches = (await s.sandbox.get("/_sandbox/chaos")).json()["data"]
        calm = {key: value for key, value in switches.items() if key != "seed"}
        assert (await s.sandbox.put("/_sandbox/chaos", json=calm | {"approvalTimeoutRate": 1})).status_code == 200
        before, _ = await s.balance("buyer")
        unheard = await started("buyer", await s.buy("buyer", await s.cheapest_listings("buyer", 1)))
        gave_up = await s.decided(unheard["assetpayId"])
        assert (gave_up["status"], gave_up["error"]) == ("failed", "APPROVAL_TIMEOUT")
        await s.settled("buyer", unheard)
        assert (await s.balance("buyer"))[0] == before
        assert (await s.sandbox.put("/_sandbox/chaos", json=calm)).status_code == 200
    # ... refused for the balance: up front when the balance cannot cover it, and never below zero.
    available, _ = await s.balance("buyer")
    too_dear = await s.withdraw("buyer", [{"id": listings[0]["id"], "price": str(available + 1)}])
    assert too_dear.status_code == 402, too_dear.text
    assert too_dear.json()["error"]["key"] == "INSUFFICIENT_BALANCE"

    # Everything AssetPay said has arrived: every balance equals the model and the sum of its entries.
    await s.quiet()
    for user_id, started_trades in trades.items():
        at_assetpay = [await s.at_assetpay(t["assetpayId"]) for t in started_trades]
        for ours, theirs in zip(started_trades, at_assetpay, strict=True):
            await s.settled(user_id, ours)
            assert theirs["status"] in FINAL or theirs["status"] == "hold", theirs
        available, _ = await s.balance(user_id)
        assert available == model_balance(at_assetpay), user_id
        assert available == sum((amount for _, amount in await s.entries(user_id)), start=Decimal(0)), user_id
    check = await asyncio.create_subprocess_exec(
        str(CLI), "ledger", "check", env=clean_env(DATABASE_URL=s.database_url), stdout=asyncio.subprocess.PIPE
    )
    output, _ = await asyncio.wait_for(check.communicate(), timeout=60)
    assert check.returncode == 0, output.decode()

    # The chaos run really was one: every kind of misbehaviour happened, and money still moved exactly once.
    attempts = (await s.sandbox.get("/_sandbox/deliveries")).json()["data"]
    seen = Counter(label for attempt in attempts for label in attempt["chaos"])
    delivered = Counter(a["deliveryId"] for a in attempts if a["kind"] == "event" and a["httpStatus"] == 200)
    asks = Counter(a["tradeId"] for a in attempts if a["kind"] == "approval")
    print(
        f"\n{len(attempts)} attempts, chaos {dict(seen)}, {sum(n > 1 for n in delivered.values())} deliveries "
        f"answered more than once, most approval asks for one trade {max(asks.values())}"
    )
    if s.chaotic:
        assert seen["duplicate"], seen
        assert seen["approval timed out"], seen
        assert seen["not sent"] + seen["answer lost"], seen
        assert any(n > 1 for n in delivered.values())
        assert max(asks.values()) > 1
    else:
        assert not seen
