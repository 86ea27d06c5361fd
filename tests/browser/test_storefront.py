"""The reference storefront at /demo: served by `dev` only, and driven in a real headless Chromium against a real
`assetpay-merchant dev` process (its in-process sandbox playing AssetPay, a fresh database). Every amount the page
shows is checked against what the public API answers; trades are moved with the page's own sandbox controls."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from playwright.async_api import Browser, Page, Request, expect

from assetpay_merchant.config import Settings
from assetpay_merchant.core.money import format_money
from assetpay_sandbox.dev import DEV_AUTH_JWT_SECRET, create_dev_app
from assetpay_sandbox.storefront.app import demo_steam_account
from tests.processes import CLI, clean_env, free_port, running
from tests.support import user_token

WAIT_MS = 20_000  # generous: two CPUs are shared with other test runs
MANUAL = "3600"  # sandbox step and hold: nothing moves by itself, the page's sandbox controls move trades


@dataclass(frozen=True)
class DevServer:
    url: str
    log: Path


@pytest.fixture(scope="module")
async def demo_database(scratch: Any) -> str:
    url: str = await scratch.create("assetpay_demo")  # `dev` migrates it
    return url


@contextmanager
def dev_process(database_url: str, workdir: Path) -> Iterator[DevServer]:
    """`assetpay-merchant dev` on a free loopback port, until it answers /readyz; stopped on the way out."""
    port = free_port()
    log_path = workdir / f"dev-{port}.log"
    environment = clean_env(
        DATABASE_URL=database_url,
        DATA_DIR=str(workdir / "data"),
        LOG_LEVEL="WARNING",
        SANDBOX_STEP_SECONDS=MANUAL,
        SANDBOX_HOLD_SECONDS=MANUAL,
    )
    command = [str(CLI), "dev", "--host", "127.0.0.1", "--port", str(port)]
    ready = f"http://127.0.0.1:{port}/readyz"
    with running(command, env=environment, log_path=log_path, ready_url=ready, timeout=90):
        yield DevServer(f"http://127.0.0.1:{port}", log_path)


@pytest.fixture(scope="module")
def dev(demo_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with dev_process(demo_database, tmp_path_factory.mktemp("dev")) as server:
        yield server


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 1700})
    try:
        yield await context.new_page()
    finally:
        await context.close()


MINUS = "\N{MINUS SIGN}"


def shown(amount: Decimal) -> str:
    """An amount as the page shows it: "$1,234.50", and a negative one with a minus sign (U+2212)."""
    whole, _, fraction = format_money(abs(amount)).partition(".")
    return f"{MINUS if amount < 0 else ''}${int(whole):,}.{fraction}"


class Api:
    """The public API as the signed-in user, to check what the page shows against what the backend answers."""

    def __init__(self, base_url: str, user_id: str) -> None:
        token = user_token(user_id, secret=DEV_AUTH_JWT_SECRET)
        self.http = httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.http.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def aclose(self) -> None:
        await self.http.aclose()


@pytest.fixture
async def api_for(dev: DevServer) -> AsyncIterator[Any]:
    clients: list[Api] = []

    def make(user_id: str) -> Api:
        clients.append(Api(dev.url, user_id))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


async def sign_in(page: Page, dev: DevServer, user_id: str, preset: str) -> None:
    await page.goto(f"{dev.url}/demo/")
    await page.select_option("#preset", preset)
    await page.fill("#user-id", user_id)
    await page.click("#sign-in")
    await expect(page.locator("#live-status")).to_have_text("live", timeout=WAIT_MS)
    await expect(page.locator("#balance-available")).to_have_text("$0.00", timeout=WAIT_MS)
    await expect(page.locator("#inventory-items tr").first).to_be_visible(timeout=WAIT_MS)


async def deposit(page: Page, items: list[dict[str, Any]]) -> Any:
    """Tick the items, deposit them, and return the new trade's card."""
    before = await page.locator("li.trade[data-type=deposit]").count()
    for item in items:
        await page.locator(f'#inventory-items tr[data-item-id="{item["id"]}"] input').check()
    await page.click("#deposit-button")
    cards = page.locator("li.trade[data-type=deposit]")
    await expect(cards).to_have_count(before + 1, timeout=WAIT_MS)
    card = cards.first  # newest first
    await expect(card).to_have_attribute("data-status", "initiated", timeout=WAIT_MS)
    return card


async def step_to(card: Any, status: str) -> None:
    """One sandbox step (the page's control on the trade), then the status the WebSocket must bring."""
    await card.locator("button[data-action=step]").click()
    await expect(card).to_have_attribute("data-status", status, timeout=WAIT_MS)


def accepted(inventory: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for item in inventory["items"] if item["accepted"] is not False and item["price"]]


async def test_a_deposit_is_estimated_then_credited_live(page: Page, dev: DevServer, api_for: Any, screenshots: Path):
    user = "bob"  # each test its own user: the module's dev process and database are fresh, so runs repeat
    await sign_in(page, dev, user, "bob")
    api = api_for(user)
    navigations: list[str] = []
    balance_reads: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)

    def on_request(request: Request) -> None:
        if urlsplit(request.url).path == "/v1/balance":
            balance_reads.append(request.url)

    page.on("request", on_request)

    inventory = await api.get("/v1/inventory", game=730, limit=100)
    collateral = Decimal(inventory["collateral"])
    assert collateral > 0
    await expect(page.locator("#collateral")).to_have_text(shown(collateral))
    # The two dearest accepted items: worth more than the instant credit, so the estimate splits.
    items = sorted(accepted(inventory), key=lambda item: Decimal(item["price"]), reverse=True)[:2]
    total = sum((Decimal(item["price"]) for item in items), start=Decimal(0))
    now, later = min(total, collateral), total - min(total, collateral)
    assert later > 0, "pick items worth more than the collateral"
    for item in items:
        await page.locator(f'#inventory-items tr[data-item-id="{item["id"]}"] input').check()
    estimate = page.locator("#estimate")
    await expect(estimate).to_contain_text(f"you get {shown(now)} now, {shown(later)} in 7 days")
    await page.uncheck("#is-instant")
    await expect(estimate).to_contain_text(f"you get $0.00 now, {shown(total)} in 7 days")
    await page.check("#is-instant")
    await expect(estimate).to_contain_text(f"you get {shown(now)} now, {shown(later)} in 7 days")
    await page.screenshot(path=screenshots / "1-deposit-estimate.png", full_page=True)

    for item in items:  # `deposit` ticks them again
        await page.locator(f'#inventory-items tr[data-item-id="{item["id"]}"] input').uncheck()
    reads_before = len(balance_reads)
    card = await deposit(page, items)
    # The deposited skins left the inventory.
    for item in items:
        await expect(page.locator(f'#inventory-items tr[data-item-id="{item["id"]}"]')).to_have_count(0)

    available, pending = page.locator("#balance-available"), page.locator("#balance-pending")
    await step_to(card, "active")
    await step_to(card, "hold")
    await expect(available).to_have_text(shown(now), timeout=WAIT_MS)  # the estimate's "now": the preCredit
    await expect(pending).to_have_text(shown(later))
    await expect(page.locator("#ledger-entries tr[data-kind=pre_credit]")).to_have_count(1, timeout=WAIT_MS)
    await page.screenshot(path=screenshots / "2-deposit-in-hold.png", full_page=True)
    await step_to(card, "completed")
    await expect(available).to_have_text(shown(total), timeout=WAIT_MS)
    await expect(pending).to_have_text("$0.00")

    timeline = await card.locator(".timeline li").evaluate_all("steps => steps.map(step => step.dataset.status)")
    assert timeline == ["initiated", "active", "hold", "completed"]
    # Pushed over the WebSocket: the page never asked for the balance again, and never navigated.
    assert balance_reads[reads_before:] == []
    assert navigations == []
    await expect(page.locator("#event-log li[data-type='balance.updated']").first).to_contain_text(
        f"available {shown(total)}"
    )
    ledger = page.locator("#ledger-entries tr")
    await expect(ledger).to_have_count(2, timeout=WAIT_MS)
    assert await ledger.evaluate_all("rows => rows.map(row => row.dataset.kind)") == ["credit", "pre_credit"]
    await page.screenshot(path=screenshots / "3-deposit-completed.png", full_page=True)

    balance = await api.get("/v1/balance")
    assert (Decimal(balance["available"]), Decimal(balance["pending"])) == (total, 0)


async def test_a_withdrawal_from_the_market(page: Page, dev: DevServer, api_for: Any, screenshots: Path):
    user = "alice"
    await sign_in(page, dev, user, "alice")
    api = api_for(user)

    # Filters and paging show exactly what GET /v1/market answers.
    await page.fill("#market-search", "AK-47")
    await page.select_option("#market-sort", "priceAsc")
    await page.fill("#market-per-page", "3")
    await page.click("#market-form button[type=submit]")
    rows = page.locator("#market-items tr")
    for number in (1, 2):
        expected = await api.get("/v1/market", game=730, search="AK-47", sort="priceAsc", perPage=3, page=number)
        pages = -(-expected["count"] // 3)
        assert pages >= 2
        await expect(page.locator("#market-page")).to_have_text(
            f"Page {number} of {pages} · {expected['count']} listings", timeout=WAIT_MS
        )
        ids = [item["id"] for item in expected["items"]]
        await expect(rows).to_have_count(len(ids))
        assert await rows.evaluate_all("rows => rows.map(row => row.dataset.itemId)") == ids
        if number == 1:
            await expect(page.locator("#market-prev")).to_be_disabled()
            await page.click("#market-next")

    # With nothing to spend, a purchase is refused up front, and the page says why.
    await page.fill("#market-search", "")
    await page.fill("#market-max", "5")
    await page.fill("#market-per-page", "10")
    await page.click("#market-form button[type=submit]")
    await expect(page.locator("#market-page")).to_contain_text("Page 1 of", timeout=WAIT_MS)
    prices = [Decimal(p) for p in await rows.evaluate_all("rows => rows.map(row => row.dataset.price)")]
    assert prices
    assert all(price <= 5 for price in prices)
    assert prices == sorted(prices)
    await rows.first.locator("button.buy").click()
    notice = page.locator("#notice")
    await expect(notice).to_contain_text("INSUFFICIENT_BALANCE", timeout=WAIT_MS)
    await expect(notice).to_contain_text("Your balance does not cover this purchase.")
    await expect(page.locator("li.trade[data-type=withdraw]")).to_have_count(0)
    await page.screenshot(path=screenshots / "4-insufficient-balance.png", full_page=True)

    # Fund it: one deposit, completed (the pending part too).
    inventory = await api.get("/v1/inventory", game=730, limit=100)
    item = max(accepted(inventory), key=lambda item: Decimal(item["price"]))
    funds = Decimal(item["price"])
    card = await deposit(page, [item])
    await card.locator("button[data-action=complete]").click()
    await expect(card).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    available = page.locator("#balance-available")
    await expect(available).to_have_text(shown(funds), timeout=WAIT_MS)

    # Buy the dearest listing the balance covers.
    await page.fill("#market-max", str(funds))
    await page.select_option("#market-sort", "priceDesc")
    await page.click("#market-form button[type=submit]")
    expected = await api.get("/v1/market", game=730, sort="priceDesc", maxPrice=str(funds), perPage=10, page=1)
    listing = expected["items"][0]
    price = Decimal(listing["price"])
    row = page.locator(f'#market-items tr[data-item-id="{listing["id"]}"]')
    await row.locator("button.buy").click()
    withdrawal = page.locator("li.trade[data-type=withdraw]").first
    await expect(withdrawal).to_be_visible(timeout=WAIT_MS)
    await expect(notice).to_contain_text("Bought")
    # The backend debits before it approves (AssetPay asks it): the balance drops as soon as AssetPay asked.
    await expect(available).to_have_text(shown(funds - price), timeout=WAIT_MS)
    await withdrawal.locator("button[data-action=complete]").click()
    await expect(withdrawal).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    await expect(available).to_have_text(shown(funds - price))
    await expect(page.locator("#ledger-entries tr").first).to_have_attribute("data-kind", "debit", timeout=WAIT_MS)
    await page.screenshot(path=screenshots / "5-withdrawal-completed.png", full_page=True)

    trade = (await api.get("/v1/trades", type="withdraw"))["trades"][0]
    assert (trade["status"], Decimal(trade["credited"])) == ("completed", -price)
    assert Decimal((await api.get("/v1/balance"))["available"]) == funds - price


async def test_a_reversal_after_spending_leaves_a_debt(page: Page, dev: DevServer, api_for: Any, screenshots: Path):
    user = "carol"
    await sign_in(page, dev, user, "carol")
    api = api_for(user)

    inventory = await api.get("/v1/inventory", game=730, limit=100)
    item = max(accepted(inventory), key=lambda item: Decimal(item["price"]))
    pre_credit = min(Decimal(item["price"]), Decimal(inventory["collateral"]))
    assert pre_credit > 0, "carol is verified: she gets instant credit"
    card = await deposit(page, [item])
    await step_to(card, "active")
    await step_to(card, "hold")
    available = page.locator("#balance-available")
    await expect(available).to_have_text(shown(pre_credit), timeout=WAIT_MS)

    # Spend the instant credit on the dearest listing it covers.
    market = await api.get("/v1/market", game=730, sort="priceDesc", maxPrice=str(pre_credit), perPage=10)
    assert market["items"], "a listing the instant credit covers"
    listing = market["items"][0]
    price = Decimal(listing["price"])
    await page.fill("#market-max", str(pre_credit))
    await page.select_option("#market-sort", "priceDesc")
    await page.click("#market-form button[type=submit]")
    await page.locator(f'#market-items tr[data-item-id="{listing["id"]}"] button.buy').click()
    await expect(available).to_have_text(shown(pre_credit - price), timeout=WAIT_MS)

    # The deposit is reversed in its hold: the credit is taken back, although it was spent.
    await card.locator("button[data-action=revert]").click()
    await expect(card).to_have_attribute("data-status", "reverted", timeout=WAIT_MS)
    await expect(available).to_have_text(shown(-price), timeout=WAIT_MS)
    await expect(available).to_have_class("negative")
    await expect(page.locator("#balance-debt")).to_contain_text(f"You owe {shown(price)}")

    # The ledger says why, one cursor page at a time.
    await page.fill("#ledger-limit", "2")
    await page.locator("#ledger-limit").blur()  # the change event
    entries = page.locator("#ledger-entries tr")
    await expect(entries).to_have_count(2, timeout=WAIT_MS)
    await expect(entries.first).to_have_attribute("data-kind", "reversal")
    await expect(entries.first).to_contain_text(shown(-pre_credit))
    await page.click("#ledger-more")
    await expect(entries).to_have_count(3, timeout=WAIT_MS)
    await expect(page.locator("#ledger-more")).to_be_hidden()
    kinds = await entries.evaluate_all("rows => rows.map(row => row.dataset.kind)")
    assert kinds == ["reversal", "debit", "pre_credit"]
    await page.screenshot(path=screenshots / "6-reversal-debt.png", full_page=True)

    balance = await api.get("/v1/balance")
    assert Decimal(balance["available"]) == -price
    ledger = await api.get("/v1/ledger")
    assert [(e["kind"], Decimal(e["amount"])) for e in ledger["entries"]] == [
        ("reversal", -pre_credit),
        ("debit", -price),
        ("pre_credit", pre_credit),
    ]


def test_the_dev_banner_prints_the_storefront(dev: DevServer):
    assert f"demo storefront   {dev.url}/demo/" in dev.log.read_text()


# -- in-process: what is served where, and the demo platform endpoint ---------------------------------------------


async def test_serve_has_no_storefront(client: httpx.AsyncClient):
    """`serve` runs create_app, which knows nothing of the demo."""
    for path in ("/demo", "/demo/", "/demo/app.js"):
        assert (await client.get(path)).status_code == 404, path
    assert (await client.post("/demo/api/session", json={"userId": "u"})).status_code == 404


@pytest.fixture
async def dev_app(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_dev_app(Settings(_env_file=None, database_url=database_url))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dev.test") as http:
            yield http


async def test_dev_serves_the_page_and_only_the_page(dev_app: httpx.AsyncClient):
    redirected = await dev_app.get("/demo")
    assert redirected.status_code in (307, 308)
    assert redirected.headers["location"].endswith("/demo/")
    index = await dev_app.get("/demo/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in index.text
    script = await dev_app.get("/demo/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert (await dev_app.get("/demo/style.css")).headers["content-type"].startswith("text/css")
    for hidden in ("/demo/app.py", "/demo/__init__.py", "/demo/../app.py"):
        assert (await dev_app.get(hidden)).status_code == 404, hidden


async def test_the_demo_platform_registers_verifies_and_mints(dev_app: httpx.AsyncClient):
    answer = await dev_app.post(
        "/demo/api/session",
        json={"userId": "dana", "clientData": {"totalWager": "1250.50", "kycLevel": 2}, "verificationLevel": 1},
    )
    assert answer.status_code == 200, answer.text
    session = answer.json()
    steam_id, _ = demo_steam_account("dana")
    assert (session["userId"], session["steamId"]) == ("dana", steam_id)
    claims = jwt.decode(session["token"], DEV_AUTH_JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "dana"
    assert claims["exp"] > time.time()

    bearer = {"Authorization": f"Bearer {session['token']}"}
    me = await dev_app.get("/v1/me", headers=bearer)
    assert me.status_code == 200
    assert me.json()["steamId"] == steam_id
    profile = await dev_app.get(f"/sandbox/_sandbox/users/{steam_id}")
    assert profile.status_code == 200, profile.text
    assert '"verificationLevel":1' in profile.text

    again = await dev_app.post("/demo/api/session", json={"userId": "dana", "verificationLevel": 0})
    assert again.status_code == 200, again.text
    assert '"verificationLevel":0' in (await dev_app.get(f"/sandbox/_sandbox/users/{steam_id}")).text


async def test_the_demo_platform_answers_errors_in_the_api_shape(dev_app: httpx.AsyncClient):
    bad_id = await dev_app.post("/demo/api/session", json={"userId": "no spaces", "verificationLevel": 2})
    assert bad_id.status_code == 422
    error = bad_id.json()["error"]
    assert error["key"] == "VALIDATION_FAILED"
    assert set(error["fields"]) == {"userId", "verificationLevel"}

    refused = await dev_app.post("/demo/api/session", json={"userId": "erin", "clientData": {"kycLevel": -1}})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["key"] == "VALIDATION_FAILED"
    assert "clientData.kycLevel" in error["fields"]
    assert error["message"].startswith("Registering the user failed")
