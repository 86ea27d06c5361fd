"""`assetpay-merchant trigger SCENARIO`: fire a signed, realistic scenario of AssetPay callbacks at a backend.

Like `stripe trigger`: the trades are played by the sandbox's own rules (`state.SandboxState`, the catalog's
items and prices, `SimTrade.wire()`), every callback is signed the way AssetPay signs it, with the current time,
and the command prints what the backend answered to each delivery. A scenario knows what every answer and the
user's final balance should be, so the exit status says whether the backend kept its books (0) or not (1).

Delivery ids follow the gateway: a fresh one per event, the same one on a retry, a new one per approval attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import re
import secrets
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO

import httpx
import jwt

from assetpay_merchant.config import Settings
from assetpay_merchant.core.vocabulary import MAX_USER_ID_LENGTH, USER_ID_PATTERN
from assetpay_merchant.gateway.signature import SIGNATURE_HEADER, signature_header
from assetpay_sandbox.catalog import CS2, RUST, CatalogItem
from assetpay_sandbox.credentials import SANDBOX_MERCHANT_ID
from assetpay_sandbox.schemas import DepositRequest, WithdrawRequest
from assetpay_sandbox.state import ZERO, SandboxState, SimTrade, trade_body
from assetpay_sandbox.tokens import ClientIdentity
from assetpay_sandbox.wire import dumps, iso

DEFAULT_URL = "http://127.0.0.1:8000"
WEBHOOK_PATH = "/webhooks/assetpay"
CALLBACK_TIMEOUT_SECONDS = 15.0  # what AssetPay allows a callback (ASSETPAY.md §6)
APPROVAL_TIMEOUT_SECONDS = 10.0  # what it allows one approval attempt
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

STEP = timedelta(seconds=15)  # how far the trades' clock moves between two events
HOLD = timedelta(days=7)  # CS2's trade-reversal window
STORM_COPIES = 8  # how often the duplicate storm sends each delivery
STORM_CONCURRENCY = 16  # deliveries in flight at once during the storm

RECEIVED, DUPLICATE, APPROVE, REJECT = "received", "duplicate", "approve", "reject"
APPLIED = frozenset({RECEIVED})
REPEATED = frozenset({RECEIVED, DUPLICATE})  # one copy of a retried delivery is applied, the others are duplicates


class ScenarioError(Exception):
    """The scenario cannot be built for this user (their balance does not leave room for it)."""


# -- what is sent -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One signed POST: the callback body exactly as signed, and the answers the scenario accepts."""

    event: str  # `deposit.hold`, `withdraw.initiated`: the trade's type and status
    trade_id: str
    delivery_id: str
    body: bytes
    expect: frozenset[str]
    note: str = ""
    approval: bool = False


@dataclass(slots=True)
class Phase:
    """Deliveries sent one after another, or (a storm) all at once in a shuffled order."""

    deliveries: list[Delivery] = field(default_factory=list)
    concurrent: bool = False


@dataclass(slots=True)
class Script:
    """Plays the gateway for one user: trades move by the sandbox's rules, and every event they emit becomes a
    delivery of the current phase."""

    who: ClientIdentity
    now: datetime
    state: SandboxState = field(default_factory=lambda: SandboxState(step=STEP, hold=HOLD))
    phases: list[Phase] = field(default_factory=lambda: [Phase()])
    trades: dict[str, SimTrade] = field(default_factory=dict)  # by role: `deposit`, `funding`, `withdrawal`
    change: Decimal = ZERO  # what the scenario should do to the user's available balance
    copies: int = 1

    def _tick(self) -> datetime:
        self.now += STEP
        return self.now

    def _add(self, delivery: Delivery) -> Delivery:
        self.phases[-1].deliveries.append(delivery)
        return delivery

    def _emitted(self, note: str, expect: frozenset[str]) -> Delivery:
        """The one event the last change of a trade emitted, as a delivery (a retried one when in a storm)."""
        (event,) = self.state.events
        self.state.events.clear()
        trade = self.state.trades[event.trade_id]
        delivery_id = str(uuid.uuid4())
        delivery = Delivery(f"{trade.type}.{event.status}", trade.id, delivery_id, event.body, expect, note)
        for _ in range(self.copies - 1):  # a retry keeps its delivery id
            self._add(delivery)
        return self._add(delivery)

    @contextmanager
    def storm(self, copies: int) -> Iterator[None]:
        """Deliveries built inside are sent `copies` times each, concurrently, shuffled; a phase of their own."""
        self.phases.append(Phase(concurrent=True))
        self.copies = copies
        try:
            yield
        finally:
            self.copies = 1
            self.phases.append(Phase())

    # -- deposits --------------------------------------------------------------------------------------------------

    def deposit(self, role: str, *, game: int = CS2, instant: bool = True, at_least: Decimal) -> SimTrade:
        """A deposit of items from the user's inventory worth at least `at_least`, started by the frontend: its
        `initiated` is not announced, the offer reaching the user's inbox (`active`) is. The sandbox's risk model
        decides the instant credit (a new user's is small, so `hold` credits part and `completed` the rest)."""
        owned = [item for item in self.state.inventory(self.who, game) if item.accepted]
        items = _basket(owned, at_least=at_least)
        request = DepositRequest.model_validate(
            {
                "items": [{"itemId": i.id, "price": i.price, "amount": i.amount} for i in items],
                "game": str(game),
                "isInstant": instant,
            }
        )
        trade = self.state.create_deposit(self.who, request, self._tick())
        self.state.events.clear()
        self.trades[role] = trade
        return trade

    def advance(self, trade: SimTrade, *, expect: frozenset[str] = APPLIED) -> Delivery:
        """The trade's next regular step (AssetPay's own path for its type and game)."""
        self.state.advance(trade, self._tick())
        return self._emitted(_describe(trade), expect)

    def revert(self, trade: SimTrade) -> Delivery:
        """The user reversed the accepted offer inside the hold window."""
        self.state.end(trade, "reverted", self._tick(), error=None, reverted_by="user")
        return self._emitted(f"revertedBy user: takes back {_money(trade.pre_credit)}", APPLIED)

    # -- withdrawals -----------------------------------------------------------------------------------------------

    def withdrawal(self, role: str, items: Sequence[CatalogItem]) -> SimTrade:
        """A CS2 withdrawal of market listings at their prices, waiting for the merchant's approval."""
        request = WithdrawRequest.model_validate(
            {"items": [{"itemId": item.id, "price": item.price} for item in items], "game": str(CS2)}
        )
        trade = self.state.create_withdraw(self.who, request, self._tick())
        self.trades[role] = trade
        return trade

    def ask(self, trade: SimTrade, *, expect: str, attempts: int = 1) -> None:
        """The approval ask (`withdraw` + `initiated`): every attempt has a new delivery id."""
        note = f"asks to charge {_money(trade.total_price)} for {len(trade.items)} item(s)"
        for _ in range(attempts):
            body = trade_body(trade)
            self._add(
                Delivery("withdraw.initiated", trade.id, str(uuid.uuid4()), body, frozenset({expect}), note, True)
            )

    def approve(self, trade: SimTrade, *, expect: frozenset[str] = APPLIED) -> Delivery:
        """What follows an approve verdict: the gateway starts buying (`pending`)."""
        self.state.approve(trade, self._tick())
        return self._emitted("approved: buying the items", expect)

    def reject(self, trade: SimTrade, error: str) -> Delivery:
        self.state.reject(trade, self._tick(), error)
        return self._emitted(f"error {error}: nothing was charged", APPLIED)

    def fail_items(self, trade: SimTrade, items: Sequence[CatalogItem], error: str) -> Delivery:
        self.state.fail_items(trade, [item.id for item in items], error, self._tick())
        refund = sum((item.price for item in items), start=ZERO)
        note = f"{len(items)} of {len(trade.items)} item(s) failed ({error}): refunds {_money(refund)}"
        return self._emitted(note, APPLIED)

    def market(self) -> list[CatalogItem]:
        return self.state.market(CS2)


def _describe(trade: SimTrade) -> str:
    """What the new status of a trade means for the user and their money."""
    hold_end = (trade.hold_end_date or trade.updated_at).date().isoformat()
    if trade.type == "deposit":
        if trade.status == "active":
            return f"offer {trade.offer_id} in the user's inbox"
        if trade.status == "hold" and trade.pre_credit:
            return (
                f"accepted: preCredit {_money(trade.pre_credit)} of {_money(trade.total_price)}, hold until {hold_end}"
            )
        if trade.status == "hold":
            return f"accepted: no instant credit, hold until {hold_end}"
        if trade.status == "completed":
            return f"totalPrice {_money(trade.total_price)}: credited in full"
        return ""
    if trade.status == "active":
        return f"offer {trade.offer_id} sent to the user"
    if trade.status == "hold":
        return f"accepted: hold until {hold_end}"
    if trade.status == "completed":
        return f"delivered: charged {_money(trade.charge)}"
    return ""


def _money(amount: Decimal) -> str:
    return f"{amount:.2f}"


def _basket(items: Sequence[CatalogItem], *, at_least: Decimal, cap: Decimal = Decimal(300)) -> list[CatalogItem]:
    """At least two of the dearest items under `cap` until they are worth `at_least` (a believable deposit)."""
    chosen: list[CatalogItem] = []
    for item in sorted(items, key=lambda i: (i.price, i.id), reverse=True):
        if item.price > cap:
            continue
        chosen.append(item)
        if len(chosen) >= 2 and sum((i.price * i.amount for i in chosen), start=ZERO) >= at_least:
            break
    if not chosen:
        if not items:
            raise ScenarioError("the user's inventory has nothing AssetPay accepts")
        chosen = [min(items, key=lambda i: i.price)]
    return chosen


def _within(market: Sequence[CatalogItem], budget: Decimal, *, count: int = 3) -> list[CatalogItem]:
    """`count` listings that together cost at most `budget`: the dearest ones under a third of it each."""
    share = budget / count
    chosen = sorted((item for item in market if item.price <= share), key=lambda i: (i.price, i.id), reverse=True)
    if len(chosen) < count:
        raise ScenarioError(f"no {count} market listings fit a balance of {_money(budget)}")
    return chosen[:count]


def _beyond(market: Sequence[CatalogItem], available: Decimal) -> list[CatalogItem]:
    """Listings that together cost more than `available`: the cheapest single one that does, else several."""
    single = [item for item in market if item.price > available]
    if single:
        return [min(single, key=lambda i: (i.price, i.id))]
    chosen: list[CatalogItem] = []
    for item in sorted(market, key=lambda i: (i.price, i.id), reverse=True):
        chosen.append(item)
        if sum((i.price for i in chosen), start=ZERO) > available:
            return chosen
    raise ScenarioError(f"the whole market costs less than the balance of {_money(available)}")


# -- the scenarios ------------------------------------------------------------------------------------------------


def deposit_instant(script: Script, before: Decimal) -> None:
    deposit = script.deposit("deposit", at_least=Decimal(100))
    script.advance(deposit)  # active
    script.advance(deposit)  # hold: preCredit
    script.advance(deposit)  # completed: the rest
    script.change = deposit.total_price


def deposit_rust(script: Script, before: Decimal) -> None:
    deposit = script.deposit("deposit", game=RUST, at_least=Decimal(50))
    script.advance(deposit)  # active
    script.advance(deposit)  # completed: Rust has no hold
    script.change = deposit.total_price


def deposit_reverted_after_spend(script: Script, before: Decimal) -> None:
    deposit = script.deposit("deposit", at_least=Decimal(100))
    script.advance(deposit)  # active
    script.advance(deposit)  # hold: preCredit is credited and may be spent
    withdrawal = script.withdrawal(
        "withdrawal", _within(script.market(), min(deposit.pre_credit, before + deposit.pre_credit))
    )
    script.ask(withdrawal, expect=APPROVE)  # spends (part of) the preCredit
    script.approve(withdrawal)
    for _ in ("active", "hold", "completed"):
        script.advance(withdrawal)
    script.revert(deposit)  # takes the preCredit back: the user is left owing what they spent
    script.change = -withdrawal.total_price


def _funded(script: Script, before: Decimal) -> tuple[SimTrade, Decimal]:
    """A completed CS2 deposit without instant credit; returns it and what the user may then spend on its account."""
    funding = script.deposit("funding", instant=False, at_least=Decimal(150))
    for _ in ("active", "hold", "completed"):
        script.advance(funding)
    return funding, min(funding.total_price, before + funding.total_price)


def withdrawal_approved(script: Script, before: Decimal) -> None:
    funding, budget = _funded(script, before)
    withdrawal = script.withdrawal("withdrawal", _within(script.market(), budget))
    script.ask(withdrawal, expect=APPROVE)
    script.approve(withdrawal)  # pending
    for _ in ("active", "hold", "completed"):
        script.advance(withdrawal)
    script.change = funding.total_price - withdrawal.total_price


def withdrawal_rejected(script: Script, before: Decimal) -> None:
    funding, _ = _funded(script, before)
    withdrawal = script.withdrawal("withdrawal", _beyond(script.market(), before + funding.total_price))
    script.ask(withdrawal, expect=REJECT)
    script.reject(withdrawal, "MERCHANT_REJECTED")
    script.change = funding.total_price


def withdrawal_partly_failed(script: Script, before: Decimal) -> None:
    funding, budget = _funded(script, before)
    listings = _within(script.market(), budget)
    withdrawal = script.withdrawal("withdrawal", listings)
    script.ask(withdrawal, expect=APPROVE)
    script.approve(withdrawal)  # pending
    script.fail_items(withdrawal, listings[:1], "PURCHASE_FAILED")  # refunded at once
    for _ in ("active", "hold", "completed"):
        script.advance(withdrawal)
    script.change = funding.total_price - sum((item.price for item in listings[1:]), start=ZERO)


def duplicate_storm(script: Script, before: Decimal) -> None:
    deposit = script.deposit("deposit", at_least=Decimal(100))
    with script.storm(STORM_COPIES):
        for _ in ("active", "hold", "completed"):
            script.advance(deposit, expect=REPEATED)
    withdrawal = script.withdrawal(
        "withdrawal", _within(script.market(), min(deposit.total_price, before + deposit.total_price))
    )
    with script.storm(1):
        script.ask(withdrawal, expect=APPROVE, attempts=STORM_COPIES)  # re-asks: new delivery ids, one debit
    with script.storm(STORM_COPIES):
        script.approve(withdrawal, expect=REPEATED)
        for _ in ("active", "hold", "completed"):
            script.advance(withdrawal, expect=REPEATED)
    script.change = deposit.total_price - withdrawal.total_price


@dataclass(frozen=True, slots=True)
class Scenario:
    summary: str
    build: Callable[[Script, Decimal], None]


SCENARIOS: dict[str, Scenario] = {
    "deposit-instant": Scenario(
        "CS2 deposit with instant credit: active, hold (preCredit credited), completed (the rest)", deposit_instant
    ),
    "deposit-rust": Scenario("Rust deposit: active, completed (credited in full, no hold)", deposit_rust),
    "deposit-reverted-after-spend": Scenario(
        "CS2 deposit in hold credits preCredit, a withdrawal spends it, the deposit is reverted: a debt",
        deposit_reverted_after_spend,
    ),
    "withdrawal-approved": Scenario(
        "funded by a deposit; the approval ask is approved, then pending, active, hold, completed",
        withdrawal_approved,
    ),
    "withdrawal-rejected": Scenario(
        "an approval ask for more than the balance is rejected; then failed with MERCHANT_REJECTED",
        withdrawal_rejected,
    ),
    "withdrawal-partly-failed": Scenario(
        "an approved withdrawal loses an item (refunded at once), the rest is delivered", withdrawal_partly_failed
    ),
    "duplicate-storm": Scenario(
        f"every delivery sent {STORM_COPIES} times, concurrently and shuffled, the approval asked "
        f"{STORM_COPIES} times: the balance moves once",
        duplicate_storm,
    ),
}


# -- what came back -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One delivery and the backend's answer: `answer` is `received`, `duplicate`, `approve`, `reject`, the
    error key of a refusal, or `unreachable`."""

    step: int
    delivery: Delivery
    http_status: int | None
    answer: str
    detail: str = ""
    response: Any = None

    @property
    def ok(self) -> bool:
        return self.answer in self.delivery.expect


class BackendRefused(Exception):
    """The backend could not be reached, or refused to register the user or show their balance."""


@dataclass(frozen=True, slots=True)
class Target:
    """The backend to fire at and the secrets it was configured with."""

    secret: bytes
    admin_key: str
    jwt_secret: str
    url: str = DEFAULT_URL
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    merchant_id: str = SANDBOX_MERCHANT_ID


@dataclass(slots=True)
class Report:
    """A finished (or stopped) run: every answer, the balance before and after, what went wrong."""

    scenario: str
    url: str
    user_id: str
    steam_id: str
    registered: int
    before: Decimal
    expected: Decimal
    trades: dict[str, SimTrade]
    outcomes: list[Outcome] = field(default_factory=list)
    after: Decimal | None = None
    problems: list[str] = field(default_factory=list)  # beyond single unexpected answers
    over_applied: int = 0  # deliveries the backend applied more than once

    @property
    def unexpected(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.problems and self.after == self.expected

    def repeats(self) -> tuple[int, int]:
        """(deliveries sent more than once, copies answered `duplicate`)."""
        copies = Counter(o.delivery.delivery_id for o in self.outcomes if not o.delivery.approval)
        repeated = {delivery_id for delivery_id, n in copies.items() if n > 1}
        duplicates = sum(o.delivery.delivery_id in repeated and o.answer == DUPLICATE for o in self.outcomes)
        return len(repeated), duplicates


def read_answer(response: httpx.Response, *, approval: bool) -> tuple[str, str, Any]:
    """(answer, detail, parsed body) of the backend's response, read the way AssetPay reads it."""
    try:
        body: Any = json.loads(response.content, parse_float=Decimal)
    except ValueError:
        body = response.text[:500]
    if not response.is_success:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("key"):
            return str(error["key"]), str(error.get("message", "")), body
        return f"HTTP_{response.status_code}", str(body)[:200], body
    fields = body if isinstance(body, dict) else {}
    if fields.get("action") == REJECT:
        return REJECT, str(fields.get("reason") or ""), body
    if approval:  # a 2xx approves unless it rejects: a bare 200 is an approval too
        return APPROVE, "" if fields.get("action") == APPROVE else "a 2xx without an explicit action", body
    if fields.get("duplicate") is True:
        return DUPLICATE, "", body
    if fields.get("received") is True:
        return RECEIVED, "", body
    return "OK", str(body)[:200], body


async def _send(http: httpx.AsyncClient, secret: bytes, step: int, delivery: Delivery) -> Outcome:
    """POST the delivery's exact bytes, signed now, as AssetPay does."""
    timestamp = iso(datetime.now(UTC))
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature_header(secret, delivery.delivery_id, timestamp, delivery.body),
    }
    timeout = APPROVAL_TIMEOUT_SECONDS if delivery.approval else CALLBACK_TIMEOUT_SECONDS
    try:
        response = await http.post(WEBHOOK_PATH, content=delivery.body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return Outcome(step, delivery, None, "unreachable", f"{type(exc).__name__}: {exc}")
    answer, detail, body = read_answer(response, approval=delivery.approval)
    return Outcome(step, delivery, response.status_code, answer, detail, body)


def _stop_reason(outcome: Outcome) -> str | None:
    """Why the scenario cannot go on after this answer: the gateway would not follow the script any more."""
    if outcome.http_status is None:
        return f"stopped at step {outcome.step}: the backend could not be reached ({outcome.detail})"
    if outcome.delivery.approval and not outcome.ok:
        (wanted,) = outcome.delivery.expect
        return (
            f"stopped at step {outcome.step}: the backend answered {outcome.answer} to the approval ask where the "
            f"scenario expects {wanted}; AssetPay would carry on differently"
        )
    return None


class _Backend:
    """The merchant API calls around a scenario: register the user, read their balance."""

    def __init__(self, http: httpx.AsyncClient, target: Target, user_id: str) -> None:
        self.http = http
        self.target = target
        self.user_id = user_id

    def _user_auth(self) -> dict[str, str]:
        claims: dict[str, Any] = {"sub": self.user_id, "exp": int(time.time()) + 600}
        if self.target.jwt_audience is not None:
            claims["aud"] = self.target.jwt_audience
        if self.target.jwt_issuer is not None:
            claims["iss"] = self.target.jwt_issuer
        return {"Authorization": f"Bearer {jwt.encode(claims, self.target.jwt_secret, algorithm='HS256')}"}

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BackendRefused(
                f"cannot reach the backend at {self.target.url}: {type(exc).__name__}: {exc}"
            ) from None

    async def register(self) -> tuple[str, str, int]:
        """PUT the user (admin key); a user the backend knows keeps their Steam id and trade URL."""
        me = await self._call("GET", "/v1/me", headers=self._user_auth())
        if me.status_code == 200:
            profile = me.json()
            steam_id, trade_url = str(profile["steamId"]), str(profile["tradeUrl"])
        elif me.status_code == 404:
            steam_id, trade_url = steam_profile(self.user_id)
        else:
            hint = " (is --jwt-secret the backend's AUTH_JWT_SECRET?)" if me.status_code == 401 else ""
            raise BackendRefused(f"GET /v1/me answered {me.status_code} {_error_text(me)}{hint}")
        put = await self._call(
            "PUT",
            f"/v1/users/{self.user_id}",
            json={"steamId": steam_id, "tradeUrl": trade_url},
            headers={"X-Admin-Key": self.target.admin_key},
        )
        if put.status_code not in (200, 201):
            hint = " (is --admin-key the backend's ADMIN_API_KEY?)" if put.status_code in (401, 403) else ""
            raise BackendRefused(f"PUT /v1/users/{self.user_id} answered {put.status_code} {_error_text(put)}{hint}")
        return steam_id, trade_url, put.status_code

    async def balance(self) -> Decimal:
        response = await self._call("GET", "/v1/balance", headers=self._user_auth())
        if response.status_code != 200:
            raise BackendRefused(f"GET /v1/balance answered {response.status_code} {_error_text(response)}")
        return Decimal(response.json()["available"])


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return f"{error['key']}: {error['message']}"
    except (ValueError, AttributeError, KeyError, TypeError):
        return response.text[:200]


def steam_profile(user_id: str) -> tuple[str, str]:
    """A Steam id and trade URL of the right formats, the same for the same user id on every run."""
    digest = hashlib.sha256(f"assetpay-trigger:{user_id}".encode()).digest()
    steam_id = 76561198000000000 + int.from_bytes(digest[:8], "big") % 1_000_000_000
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    token = "".join(alphabet[byte % len(alphabet)] for byte in digest[8:16])
    partner = steam_id - 76561197960265728  # the account id inside the SteamID64
    return str(steam_id), f"https://steamcommunity.com/tradeoffer/new/?partner={partner}&token={token}"


def fresh_user_id() -> str:
    return f"trigger-{secrets.token_hex(4)}"


async def trigger(
    name: str,
    target: Target,
    *,
    user_id: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    printer: Printer | None = None,
) -> Report:
    """Register the user, play the scenario at the backend, read the balance back; the report says how it went.

    Raises KeyError for an unknown scenario, BackendRefused when the backend cannot be set up for it, and
    ScenarioError when the user's balance leaves no room for it.
    """
    scenario = SCENARIOS[name]
    printer = printer or TextPrinter(sys.stdout)
    user_id = user_id or fresh_user_id()
    async with httpx.AsyncClient(
        base_url=target.url, transport=transport, headers={"User-Agent": "AssetPay-Sandbox-Trigger/1.0"}
    ) as http:
        backend = _Backend(http, target, user_id)
        steam_id, trade_url, registered = await backend.register()
        before = await backend.balance()
        who = ClientIdentity(target.merchant_id, steam_id, trade_url, client_id=user_id)
        # The trades began a few minutes ago, so that every time they carry is in the past.
        script = Script(who, now=datetime.now(UTC) - timedelta(minutes=30))
        scenario.build(script, before)
        report = Report(name, target.url, user_id, steam_id, registered, before, before + script.change, script.trades)
        printer.start(report)
        await _play(http, target.secret, script.phases, report, printer)
        report.after = await backend.balance()
    _check_applied_once(report)
    if report.after != report.expected:
        report.problems.append(f"balance {_money(report.after)}, expected {_money(report.expected)}")
    printer.finish(report)
    return report


async def _play(
    http: httpx.AsyncClient, secret: bytes, phases: Sequence[Phase], report: Report, printer: Printer
) -> None:
    """Send phase after phase, printing each answer as it comes; stop where the gateway would leave the script."""
    shuffle = secrets.SystemRandom().shuffle

    def answered(outcome: Outcome) -> None:
        report.outcomes.append(outcome)
        printer.delivery(outcome)

    for phase in phases:
        first = len(report.outcomes)
        if phase.concurrent:
            deliveries = list(phase.deliveries)
            shuffle(deliveries)
            await _send_all(http, secret, deliveries, report, answered)
        else:
            for delivery in phase.deliveries:
                answered(outcome := await _send(http, secret, len(report.outcomes) + 1, delivery))
                if _stop_reason(outcome) is not None:
                    break
        reasons = [reason for outcome in report.outcomes[first:] if (reason := _stop_reason(outcome)) is not None]
        if reasons:
            report.problems.append(reasons[0])
            return


async def _send_all(
    http: httpx.AsyncClient,
    secret: bytes,
    deliveries: Sequence[Delivery],
    report: Report,
    answered: Callable[[Outcome], None],
) -> None:
    """Send the deliveries concurrently, at most STORM_CONCURRENCY in flight. Steps are numbered in the order the
    answers come back, so the copy that was applied reads before its duplicates."""
    gate = asyncio.Semaphore(STORM_CONCURRENCY)

    async def gated(delivery: Delivery) -> None:
        async with gate:
            outcome = await _send(http, secret, 0, delivery)
        answered(replace(outcome, step=len(report.outcomes) + 1))

    await asyncio.gather(*(gated(delivery) for delivery in deliveries))


def _check_applied_once(report: Report) -> None:
    """Every copy of a delivery but one must be answered `duplicate`: the one that was applied."""
    applied = Counter(o.delivery.delivery_id for o in report.outcomes if o.answer == RECEIVED)
    for delivery_id, times in sorted(applied.items()):
        if times > 1:
            report.over_applied += 1
            report.problems.append(f"delivery {delivery_id} was applied {times} times")


# -- printing -----------------------------------------------------------------------------------------------------


class Printer(ABC):
    """Where a run is reported: a person's terminal or a script's JSON lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def _line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()  # a line per answer as it comes, also through a pipe

    @abstractmethod
    def start(self, report: Report) -> None:
        """The user is registered and the scenario built; nothing sent yet."""

    @abstractmethod
    def delivery(self, outcome: Outcome) -> None:
        """One delivery was answered."""

    @abstractmethod
    def finish(self, report: Report) -> None:
        """The balance was read back: the verdict on the run."""

    @abstractmethod
    def error(self, message: str) -> None:
        """The run could not start or go on (an unreachable backend, a refused registration)."""


class TextPrinter(Printer):
    """One line per delivery: step, event, trade and delivery id prefixes, HTTP status, answer, what it means."""

    def start(self, report: Report) -> None:
        verb = "registered" if report.registered == 201 else "updated"
        self._line(f"trigger {report.scenario} at {report.url}")
        self._line(
            f"user {report.user_id} (Steam {report.steam_id}): {verb} ({report.registered}), "
            f"balance {_money(report.before)}"
        )
        self._line()
        self._line(f"{'step':>4}  {'event':<20}  {'trade':<8}  {'delivery':<8}  {'http':>4}  answer")

    def delivery(self, outcome: Outcome) -> None:
        delivery = outcome.delivery
        answer = f"{outcome.answer}: {outcome.detail}" if outcome.detail else outcome.answer
        line = (
            f"{outcome.step:>4}  {delivery.event:<20}  {delivery.trade_id[:8]:<8}  {delivery.delivery_id[:8]:<8}  "
            f"{outcome.http_status or '-':>4}  {answer:<12}"
        )
        if delivery.note:
            line += f"  {delivery.note}"
        if not outcome.ok:
            line += f"  << expected {' or '.join(sorted(delivery.expect))}"
        self._line(line.rstrip())

    def finish(self, report: Report) -> None:
        self._line()
        repeated, duplicates = report.repeats()
        if repeated:
            applied = (
                "each applied once" if not report.over_applied else f"{report.over_applied} applied more than once"
            )
            self._line(f"{repeated} deliveries sent more than once: {duplicates} copies answered duplicate, {applied}")
        after = "unknown" if report.after is None else _money(report.after)
        mark = "ok" if report.after == report.expected else "MISMATCH"
        self._line(f"balance {after} (was {_money(report.before)}, expected {_money(report.expected)})  {mark}")
        for problem in report.problems:
            self._line(f"  {problem}")
        sent, unexpected = len(report.outcomes), len(report.unexpected)
        if report.ok:
            self._line(f"PASS {report.scenario}: {sent} deliveries answered as expected, balance as expected")
        else:
            self._line(
                f"FAIL {report.scenario}: {unexpected} of {sent} deliveries answered unexpectedly, "
                f"{len(report.problems)} other problem(s)"
            )

    def error(self, message: str) -> None:
        self._line(f"FAIL: {message}")


class JsonPrinter(Printer):
    """One JSON object per line: `start`, a `delivery` per step, then `result` (or `error`); money as strings."""

    def _object(self, value: dict[str, Any]) -> None:
        self._line(dumps(value).decode())

    def start(self, report: Report) -> None:
        self._object(
            {
                "type": "start",
                "scenario": report.scenario,
                "url": report.url,
                "userId": report.user_id,
                "steamId": report.steam_id,
                "registered": report.registered,
                "balanceBefore": _money(report.before),
            }
        )

    def delivery(self, outcome: Outcome) -> None:
        delivery = outcome.delivery
        self._object(
            {
                "type": "delivery",
                "step": outcome.step,
                "event": delivery.event,
                "tradeId": delivery.trade_id,
                "deliveryId": delivery.delivery_id,
                "approval": delivery.approval,
                "httpStatus": outcome.http_status,
                "answer": outcome.answer,
                "detail": outcome.detail,
                "response": outcome.response,
                "expected": sorted(delivery.expect),
                "ok": outcome.ok,
                "note": delivery.note,
            }
        )

    def finish(self, report: Report) -> None:
        repeated, duplicates = report.repeats()
        self._object(
            {
                "type": "result",
                "scenario": report.scenario,
                "userId": report.user_id,
                "ok": report.ok,
                "deliveries": len(report.outcomes),
                "unexpected": len(report.unexpected),
                "repeatedDeliveries": repeated,
                "duplicates": duplicates,
                "balance": {
                    "before": _money(report.before),
                    "after": None if report.after is None else _money(report.after),
                    "expected": _money(report.expected),
                },
                "trades": {role: trade.id for role, trade in report.trades.items()},
                "problems": report.problems,
            }
        )

    def error(self, message: str) -> None:
        self._object({"type": "error", "ok": False, "message": message})


# -- the command --------------------------------------------------------------------------------------------------


def listing() -> str:
    width = max(len(name) for name in SCENARIOS)
    return "\n".join(f"{name:<{width}}  {scenario.summary}" for name, scenario in SCENARIOS.items())


@contextmanager
def _quiet_http_logs() -> Iterator[None]:
    """httpx logs every request at INFO; what it would say is what the command prints."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _usage(message: str) -> int:
    print(f"assetpay-merchant trigger: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(settings: Settings, args: argparse.Namespace) -> int:
    """`assetpay-merchant trigger`: the defaults are what `dev` runs with (the configured secrets, else dev's)."""
    from assetpay_sandbox.dev import dev_settings

    if args.list:
        print(listing())
        return EXIT_OK
    if not args.scenario:
        return _usage(f"name a scenario ({', '.join(SCENARIOS)}), or --list them")
    if args.scenario not in SCENARIOS:
        return _usage(f"unknown scenario {args.scenario!r}; known scenarios: {', '.join(SCENARIOS)}")
    if not args.url.startswith(("http://", "https://")):
        return _usage(f"--url must be an http:// or https:// base URL, not {args.url!r}")
    user_id = args.user
    if user_id is not None and (len(user_id) > MAX_USER_ID_LENGTH or not re.fullmatch(USER_ID_PATTERN, user_id)):
        return _usage(f"--user must match {USER_ID_PATTERN} (at most {MAX_USER_ID_LENGTH} characters)")
    defaults = dev_settings(settings)
    jwt_secret = args.jwt_secret or (defaults.auth_jwt_secret and defaults.auth_jwt_secret.get_secret_value())
    if not jwt_secret:
        return _usage("the backend takes JWTs signed with a key pair (AUTH_JWT_PUBLIC_KEY): pass --jwt-secret")
    assert defaults.assetpay_api_secret is not None  # dev_settings fills both in
    assert defaults.admin_api_key is not None
    target = Target(
        secret=(args.secret or defaults.assetpay_api_secret.get_secret_value()).encode(),
        admin_key=args.admin_key or defaults.admin_api_key.get_secret_value(),
        jwt_secret=jwt_secret,
        url=args.url.rstrip("/"),
        jwt_audience=settings.auth_jwt_audience,
        jwt_issuer=settings.auth_jwt_issuer,
        merchant_id=defaults.assetpay_merchant_id or SANDBOX_MERCHANT_ID,
    )
    printer: Printer = JsonPrinter(sys.stdout) if args.json else TextPrinter(sys.stdout)
    with _quiet_http_logs():
        try:
            report = asyncio.run(trigger(args.scenario, target, user_id=user_id, printer=printer))
        except (BackendRefused, ScenarioError) as exc:
            printer.error(str(exc))
            return EXIT_FAILED
    return EXIT_OK if report.ok else EXIT_FAILED
