"""The AssetPay client: one async object over the app's shared `httpx.AsyncClient` (ASSETPAY.md §1-§4).

    http = create_http_client()                       # in the app's lifespan; closed there too
    assetpay = AssetPayClient.from_settings(http, settings)
    user = ClientIdentity(user_id="u1", steam_id=..., trade_url=..., client_data=profile.client_data)
    inventory = await assetpay.inventory(user, game=GameId.CS2)
    trade = await assetpay.deposit(user, [DepositItem("item-id", Decimal("10.75"))], external_id=..., is_instant=True)

Every call carries a fresh `x-request-id`; every answer is the envelope `{requestId, success, data | error}`, turned
into a typed result or one `AssetPayError`. Reads are retried on network errors, timeouts and unexplained 5xx;
refusals that happened before anything (FLEET_DEGRADED, DEPOSIT_IN_PROGRESS, WITHDRAW_IN_PROGRESS) are retried
everywhere; 429 and an enveloped 503 never are. A trade-creating write is never retried blindly: an unknown outcome
is settled by one resend with the same body (its externalId makes a second trade impossible) and a lookup by
externalId, and is otherwise raised as `OutcomeUnknown`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import httpx
import simplejson
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, SecretStr, ValidationError

from assetpay_merchant.core.vocabulary import (
    MAX_DEPOSIT_ITEMS,
    MAX_EXTERNAL_ID_LENGTH,
    MAX_ITEM_ID_LENGTH,
    MAX_REFS_PER_LOOKUP,
    MAX_WITHDRAW_ITEMS,
    MAX_WITHDRAW_PRICE,
    MIN_ITEM_ID_LENGTH,
    GameId,
    MarketSort,
)
from assetpay_merchant.gateway.errors import REFUSAL_KEYS, AssetPayError, ErrorKey, OutcomeUnknown, invalid
from assetpay_merchant.gateway.models import (
    EMAIL_PATTERN,
    MAX_EMAIL_LENGTH,
    CancelResult,
    DepositItem,
    Inventory,
    MarketPage,
    Trade,
    VerificationLinked,
    VerificationStarted,
    VerificationStatus,
    WithdrawItem,
)
from assetpay_merchant.gateway.tokens import (
    DEFAULT_TOKEN_TTL,
    MAX_TOKEN_TTL,
    ClientIdentity,
    ClientToken,
    TokenCache,
    mint_client_token,
    token_expiry,
)

log = logging.getLogger(__name__)

USER_AGENT = "assetpay-merchant/0.1"

REQUESTS = Counter(
    "assetpay_gateway_requests_total",
    "HTTP requests sent to AssetPay, by operation and outcome",
    ["operation", "outcome"],
)
REQUEST_SECONDS = Histogram(
    "assetpay_gateway_request_seconds",
    "Time for one HTTP request to AssetPay",
    ["operation"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_Model = TypeVar("_Model", bound=BaseModel)


class RouteClass(StrEnum):
    """AssetPay's rate limits are per merchant and per class of route (ASSETPAY.md §10); every request is one."""

    INVENTORY = "inventory"
    MARKET = "market"
    DEPOSIT = "deposit"
    WITHDRAW = "withdraw"
    LOOKUP = "lookup"
    """`GET /secure/trades/{refs}`: reconciliation, the feed's nudges and settling unknown outcomes share it."""
    OTHER = "other"
    """Cancels, identity verification, client tokens: AssetPay publishes no limit for these."""


_ROUTE_CLASSES = {
    "inventory": RouteClass.INVENTORY,
    "market": RouteClass.MARKET,
    "deposit": RouteClass.DEPOSIT,
    "withdraw": RouteClass.WITHDRAW,
    "get_trades": RouteClass.LOOKUP,
}


class CallPolicy(Protocol):
    """What the client consults around every HTTP request it sends (services/ratelimits.py is the one in use).

    It is handed in rather than built here: the budget lives in the database, which the gateway knows nothing of.
    """

    async def before_request(self, route: RouteClass) -> None:
        """Called before each request is sent (retries included); raises an AssetPayError to refuse it unsent."""

    async def after_request(self, route: RouteClass, error: AssetPayError | None) -> None:
        """Called with each request's outcome (None: AssetPay answered with success); must not raise."""


def create_http_client(
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
    write_timeout: float = 10.0,
    pool_timeout: float = 5.0,
    max_connections: int = 50,
    max_keepalive_connections: int = 20,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The one shared HTTP client for AssetPay: build it in the app's lifespan and `aclose()` it there."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=write_timeout, pool=pool_timeout),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive_connections),
        headers={"user-agent": USER_AGENT},
        follow_redirects=False,
        transport=transport,
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a retryable call is repeated (full jitter, exponential, capped)."""

    attempts: int = 3
    """Tries in all, the first included."""
    base_delay: float = 0.25
    max_delay: float = 4.0
    """No single wait is longer; a Retry-After longer than this ends the retries instead."""

    def backoff(self, attempt: int, jitter: float) -> float:
        return jitter * min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))


@dataclass(frozen=True, slots=True)
class _Answer:
    data: Any
    request_id: str


@dataclass(frozen=True, slots=True)
class _Failure:
    error: AssetPayError
    transient: bool
    """A network error, a timeout or an unexplained 5xx: worth repeating when the call is idempotent."""


def _dumps(body: Mapping[str, Any]) -> bytes:
    """Compact JSON; Decimal prices are written as JSON numbers straight from their digits (no float)."""
    return simplejson.dumps(body, use_decimal=True, separators=(",", ":")).encode()


def _plain(amount: Decimal) -> str:
    """A Decimal for a query string, never in exponent form."""
    return format(amount, "f")


class AssetPayClient:
    """AssetPay for this merchant. One instance per app, safe to share between concurrent requests."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: SecretStr | None = None,
        api_secret: SecretStr | None = None,
        merchant_id: str | None = None,
        retry: RetryPolicy | None = None,
        token_ttl: int = DEFAULT_TOKEN_TTL,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        policy: CallPolicy | None = None,
    ) -> None:
        """`policy`: asked before and told after every request (the merchant's shared rate budget); None: none."""
        if not 1 <= token_ttl <= MAX_TOKEN_TTL:
            raise ValueError(f"token_ttl must be 1..{MAX_TOKEN_TTL} seconds")
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key if api_key is not None and api_key.get_secret_value() else None
        self._api_secret = api_secret if api_secret is not None and api_secret.get_secret_value() else None
        self._merchant_id = merchant_id or None
        self._retry = retry or RetryPolicy()
        self._token_ttl = token_ttl
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._policy = policy
        self._tokens = TokenCache()

    def __repr__(self) -> str:
        return f"AssetPayClient(base_url={self._base_url!r}, merchant_id={self._merchant_id!r})"

    @property
    def mints_tokens(self) -> bool:
        """Client tokens are signed here (merchant id and secret known) rather than fetched from AssetPay."""
        return self._merchant_id is not None and self._api_secret is not None

    # -- client tokens ------------------------------------------------------------------------------------------

    async def client_token(self, user: ClientIdentity) -> ClientToken:
        """A client token for the user: the cached one while it has 5 minutes left, else a new one."""
        now = self._clock()
        cached = self._tokens.get(user, now=now)
        if cached is not None:
            return cached
        merchant_id, secret = self._merchant_id, self._api_secret
        if merchant_id is not None and secret is not None:
            issued_at = int(now)
            token = mint_client_token(
                user,
                merchant_id=merchant_id,
                secret=secret.get_secret_value(),
                issued_at=issued_at,
                ttl=self._token_ttl,
            )
            expires = issued_at + self._token_ttl
        else:
            answer = await self._call(
                "authenticate_client",
                "POST",
                "/auth/authenticate-client",
                content=_dumps(user.authenticate_body()),
                idempotent=True,  # it only issues a token, so repeating it is harmless
            )
            data = answer.data
            fetched = data.get("token") if isinstance(data, dict) else None
            if not isinstance(fetched, str) or not fetched:
                raise self._unexpected("authenticate-client answered without a token", answer.request_id)
            token = fetched
            expires = token_expiry(token) or int(now) + DEFAULT_TOKEN_TTL
        result = ClientToken(token=token, expires_at=datetime.fromtimestamp(expires, UTC))
        self._tokens.put(user, result, issued_at=now)
        return result

    # -- reads ----------------------------------------------------------------------------------------------------

    async def inventory(
        self,
        user: ClientIdentity,
        *,
        game: int = GameId.CS2,
        refresh: bool = False,
        accepted_only: bool = False,
        search: str | None = None,
        sort: str | None = None,
        min_price: Decimal | None = None,
        max_price: Decimal | None = None,
        page: int | None = None,
        limit: int | None = None,
        prepaid: bool = False,
    ) -> Inventory:
        """The user's Steam inventory with prices, and the instant credit (`collateral`) available now.
        `prepaid`: the caller has taken the policy's token for the first request already."""
        problems: dict[str, str] = {}
        params = {"game": str(_game(game, problems))}
        if refresh:
            params["refresh"] = "true"
        if accepted_only:
            params["acceptedOnly"] = "true"
        if search:
            params["search"] = search
        if sort:
            params["sort"] = sort
        params.update(_price_range(min_price, max_price, problems))
        params.update(_positive("page", page, problems))
        params.update(_positive("limit", limit, problems))
        if problems:
            raise invalid(problems)
        answer = await self._call(
            "inventory", "GET", "/client/inventory", user=user, params=params, idempotent=True, prepaid=prepaid
        )
        return self._parse(Inventory, answer)

    async def market(
        self,
        user: ClientIdentity,
        *,
        game: int = GameId.CS2,
        search: str | None = None,
        sort: str | None = None,
        min_price: Decimal | None = None,
        max_price: Decimal | None = None,
        page: int | None = None,
        per_page: int | None = None,
        prepaid: bool = False,
    ) -> MarketPage:
        """One page of market listings the user can buy. `prepaid`: as for `inventory`."""
        problems: dict[str, str] = {}
        params = {"game": str(_game(game, problems))}
        if search:
            if len(search) > 100:
                problems["search"] = "must be at most 100 characters"
            params["search"] = search
        if sort:
            if sort not in set(MarketSort):
                problems["sort"] = f"must be one of {', '.join(MarketSort)}"
            params["sort"] = sort
        params.update(_price_range(min_price, max_price, problems))
        params.update(_positive("page", page, problems))
        params.update(_positive("perPage", per_page, problems))
        if problems:
            raise invalid(problems)
        answer = await self._call(
            "market", "GET", "/client/market", user=user, params=params, idempotent=True, prepaid=prepaid
        )
        return self._parse(MarketPage, answer)

    async def get_trades(self, refs: Sequence[str]) -> list[Trade]:
        """Trades by AssetPay id or by our externalId (any number, fetched 100 per request); unknown refs are
        simply missing from the result."""
        problems: dict[str, str] = {}
        for index, ref in enumerate(refs):
            if not isinstance(ref, str) or not 1 <= len(ref) <= MAX_EXTERNAL_ID_LENGTH or "," in ref:
                problems[f"refs.{index}"] = f"must be 1 to {MAX_EXTERNAL_ID_LENGTH} characters without a comma"
        if problems:
            raise invalid(problems)
        trades: list[Trade] = []
        for start in range(0, len(refs), MAX_REFS_PER_LOOKUP):
            chunk = refs[start : start + MAX_REFS_PER_LOOKUP]
            path = "/secure/trades/" + ",".join(quote(ref, safe="") for ref in chunk)
            try:
                answer = await self._call("get_trades", "GET", path, idempotent=True)
            except AssetPayError as error:
                # One unknown ref is a 404 with an envelope; a bare 404 means a wrong base URL, not "no trade".
                if error.status == 404 and error.key != ErrorKey.UNEXPECTED_RESPONSE:
                    continue
                raise
            rows = answer.data if isinstance(answer.data, list) else [answer.data]
            trades.extend(self._parse(Trade, _Answer(row, answer.request_id)) for row in rows)
        return trades

    async def find_trade(self, ref: str) -> Trade | None:
        """One trade by AssetPay id or by our externalId; None when AssetPay does not know it."""
        return next((t for t in await self.get_trades([ref]) if ref in (t.id, t.external_id)), None)

    # -- identity verification ------------------------------------------------------------------------------------
    #
    # No money rides on these: an answer lost on a start or a link is a plain failure (never OutcomeUnknown), and
    # the status read shows what happened. The two writes are not retried, since a start that went through answers
    # a second one with VERIFICATION_IN_PROGRESS.

    async def verification_status(self, user: ClientIdentity) -> VerificationStatus:
        """The user's verification level, the email linking goes by, the latest process and the linked identity."""
        answer = await self._call(
            "verification_status", "GET", "/client/verification/status", user=user, idempotent=True
        )
        return self._parse(VerificationStatus, answer)

    async def start_verification(self, user: ClientIdentity, *, email: str | None = None) -> VerificationStarted:
        """Start a PictureID verification: the user opens `capture_url`. `email`, when given, is stored for linking
        other accounts of the same person later. One process per user per 30 minutes (VERIFICATION_IN_PROGRESS)."""
        body: dict[str, Any] = {}
        if email is not None:
            if not isinstance(email, str) or len(email) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(email):
                raise invalid({"email": f"must be an email address of at most {MAX_EMAIL_LENGTH} characters"})
            body["email"] = email
        answer = await self._verification_write(
            "start_verification", "/client/verification/start", user, content=_dumps(body)
        )
        return self._parse(VerificationStarted, answer)

    async def link_verification(self, user: ClientIdentity) -> VerificationLinked:
        """Link the account to the verified identity with the same email (set by a start): level 1 at once.

        AssetPay documents the refusals (no email on the account, no matching identity, a banned identity, too many
        linked accounts) but not their keys; a refusal whose key this client does not know is named by its status:
        404 is VERIFICATION_IDENTITY_NOT_FOUND, 400/409/422 VERIFICATION_LINK_REFUSED (AssetPay's key kept in the
        message).
        """
        await self.client_token(user)  # a refusal to issue the token is not one to link: get it out of the way first
        try:
            answer = await self._verification_write("link_verification", "/client/verification/link", user)
        except AssetPayError as error:
            refusal = _link_refusal(error)
            if refusal is None:
                raise
            raise refusal from error
        return self._parse(VerificationLinked, answer)

    async def _verification_write(
        self, operation: str, path: str, user: ClientIdentity, *, content: bytes | None = None
    ) -> _Answer:
        try:
            return await self._call(operation, "POST", path, user=user, content=content, idempotent=False)
        except OutcomeUnknown as lost:
            raise _reissued(lost) from lost

    # -- writes ---------------------------------------------------------------------------------------------------

    async def deposit(
        self,
        user: ClientIdentity,
        items: Sequence[DepositItem],
        *,
        external_id: str,
        is_instant: bool,
        game: int = GameId.CS2,
    ) -> Trade:
        """Start a deposit (the user sells skins). `external_id` is ours, unique per merchant; `is_instant` is
        always sent because the gateway's docs and its OpenAPI disagree on the default."""
        problems: dict[str, str] = {}
        _external_id("externalId", external_id, problems)
        body: dict[str, Any] = {"items": [], "game": str(_game(game, problems)), "externalId": external_id}
        if not 1 <= len(items) <= MAX_DEPOSIT_ITEMS:
            problems["items"] = f"must hold 1 to {MAX_DEPOSIT_ITEMS} items"
        for index, item in enumerate(items):
            where = f"items.{index}"
            _item_id(f"{where}.itemId", item.item_id, problems)
            entry: dict[str, Any] = {"itemId": item.item_id, "price": _price(f"{where}.price", item.price, problems)}
            if item.amount is not None:
                if isinstance(item.amount, bool) or not isinstance(item.amount, int) or not 1 <= item.amount <= 10_000:
                    problems[f"{where}.amount"] = "must be an integer from 1 to 10000"
                entry["amount"] = item.amount
            body["items"].append(entry)
        body["isInstant"] = bool(is_instant)
        if problems:
            raise invalid(problems)
        return await self._create_trade("deposit", "/client/trading/deposit", user, body, external_id)

    async def withdraw(
        self,
        user: ClientIdentity,
        items: Sequence[WithdrawItem],
        *,
        external_id: str,
        game: int = GameId.CS2,
        slippage_bps: int | None = None,
        auto_cancel: int | None = None,
    ) -> Trade:
        """Start a withdrawal (the user buys skins; CS2). A lower current price is charged instead of `price`; a
        higher one is refused unless within the item's `max_price` (or `slippage_bps`)."""
        problems: dict[str, str] = {}
        _external_id("externalId", external_id, problems)
        body: dict[str, Any] = {"items": [], "game": str(_game(game, problems)), "externalId": external_id}
        if not 1 <= len(items) <= MAX_WITHDRAW_ITEMS:
            problems["items"] = f"must hold 1 to {MAX_WITHDRAW_ITEMS} items"
        for index, item in enumerate(items):
            where = f"items.{index}"
            _item_id(f"{where}.itemId", item.item_id, problems)
            price = _price(f"{where}.price", item.price, problems, maximum=MAX_WITHDRAW_PRICE)
            entry: dict[str, Any] = {"itemId": item.item_id, "price": price}
            if item.max_price is not None:
                ceiling = _price(f"{where}.maxPrice", item.max_price, problems, maximum=MAX_WITHDRAW_PRICE)
                if f"{where}.price" not in problems and f"{where}.maxPrice" not in problems and ceiling < price:
                    problems[f"{where}.maxPrice"] = "must not be below price"
                entry["maxPrice"] = ceiling
            if item.external_id is not None:
                _external_id(f"{where}.externalId", item.external_id, problems)
                entry["externalId"] = item.external_id
            body["items"].append(entry)
        if slippage_bps is not None:
            _bounded_int("slippageBps", slippage_bps, 0, 2000, problems)
            body["slippageBps"] = slippage_bps
        if auto_cancel is not None:
            _bounded_int("autoCancel", auto_cancel, 30, 720, problems)
            body["autoCancel"] = auto_cancel
        if problems:
            raise invalid(problems)
        return await self._create_trade("withdraw", "/client/trading/withdraw", user, body, external_id)

    async def cancel_withdrawal(self, user: ClientIdentity, trade_id: str) -> CancelResult:
        """Ask AssetPay to cancel what can still be cancelled of a withdrawal (by its id or our externalId).
        Refunds arrive through the trade webhook; this only says what was accepted."""
        problems: dict[str, str] = {}
        _external_id("tradeId", trade_id, problems)
        if problems:
            raise invalid(problems)
        answer = await self._call(
            "cancel_withdrawal",
            "POST",
            f"/client/trading/withdraw/{quote(trade_id, safe='')}/cancel",
            user=user,
            idempotent=False,
        )
        return self._parse(CancelResult, answer)

    # -- the settlement of trade-creating writes ------------------------------------------------------------------

    async def _create_trade(
        self, operation: str, path: str, user: ClientIdentity, body: Mapping[str, Any], external_id: str
    ) -> Trade:
        content = _dumps(body)  # the resend must carry exactly these bytes
        try:
            answer = await self._call(operation, "POST", path, user=user, content=content, idempotent=False)
        except AssetPayError as error:
            if not isinstance(error, OutcomeUnknown):
                raise
            log.warning(
                "AssetPay %s outcome unknown (%s); resending once with externalId %s", operation, error.key, external_id
            )
            return await self._resend(operation, path, user, content, external_id)
        trade = _trade_or_none(answer.data)
        if trade is not None:
            return trade
        # The trade was created but its answer is unreadable: read it back instead of sending anything again.
        unreadable = self._unexpected(f"{operation} answered with an unreadable trade", answer.request_id)
        return await self._look_up(operation, external_id, unreadable)

    async def _resend(self, operation: str, path: str, user: ClientIdentity, content: bytes, external_id: str) -> Trade:
        try:
            answer = await self._call(operation, "POST", path, user=user, content=content, idempotent=False)
        except AssetPayError as error:
            latest = error
        else:
            trade = _trade_or_none(answer.data)
            if trade is not None:
                return trade
            latest = self._unexpected(f"{operation} answered with an unreadable trade", answer.request_id)
        # EXTERNAL_ID_EXISTS means the first try went through; anything else leaves it open. Either way, look.
        return await self._look_up(operation, external_id, latest)

    async def _look_up(self, operation: str, external_id: str, latest: AssetPayError) -> Trade:
        try:
            found = await self.find_trade(external_id)
        except AssetPayError as lookup:
            log.error(
                "AssetPay %s with externalId %s unsettled: lookup failed (%s)", operation, external_id, lookup.key
            )
            raise OutcomeUnknown.after(
                latest, f"lookup by externalId failed with {lookup.key}; keep the trade for reconciliation"
            ) from lookup
        if found is None:
            log.error("AssetPay %s with externalId %s unsettled: no trade found", operation, external_id)
            raise OutcomeUnknown.after(latest, "no trade found by externalId; keep the trade for reconciliation")
        log.info("AssetPay %s with externalId %s settled: trade %s", operation, external_id, found.id)
        return found

    # -- one logical call -----------------------------------------------------------------------------------------

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        user: ClientIdentity | None = None,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        idempotent: bool,
        prepaid: bool = False,
    ) -> _Answer:
        """Send until there is an answer: retry where allowed, renew the client token once on INVALID_TOKEN.
        `prepaid`: the policy's token for the first request was taken by the caller (every later one asks)."""
        renewed = False
        attempt = 1
        route = _ROUTE_CLASSES.get(operation, RouteClass.OTHER)
        while True:
            headers = await self._credentials(user)
            if self._policy is not None and not prepaid:
                await self._policy.before_request(route)  # every request counts against AssetPay's limit
            prepaid = False  # a retry or a replay is a request of its own
            outcome = await self._send(
                operation, method, path, headers=headers, params=params, content=content, write=not idempotent
            )
            if self._policy is not None:
                await self._policy.after_request(route, outcome.error if isinstance(outcome, _Failure) else None)
            if isinstance(outcome, _Answer):
                return outcome
            error = outcome.error
            if user is not None and error.key == ErrorKey.INVALID_TOKEN and not renewed:
                # The token was refused before anything happened, so even a write can be replayed with a new one.
                renewed = True
                self._tokens.drop(user.user_id)
                log.info("AssetPay refused the client token on %s %s; renewing it and replaying once", method, path)
                continue
            delay = self._retry_delay(outcome, attempt, idempotent=idempotent)
            if delay is None:
                raise error
            log.warning(
                "AssetPay %s %s failed with %s (attempt %d/%d); retrying in %.2f s",
                method,
                path,
                error.key,
                attempt,
                self._retry.attempts,
                delay,
            )
            await self._sleep(delay)
            attempt += 1

    def _retry_delay(self, failure: _Failure, attempt: int, *, idempotent: bool) -> float | None:
        error = failure.error
        if attempt >= self._retry.attempts or error.status == 429:
            return None
        if not (error.key in REFUSAL_KEYS or (idempotent and failure.transient)):
            return None
        delay = self._retry.backoff(attempt, self._jitter())
        if error.retry_after is not None:
            if error.retry_after > self._retry.max_delay:
                return None  # the server wants a longer pause than a request should wait: let the caller decide
            delay = max(delay, error.retry_after)
        return delay

    async def _credentials(self, user: ClientIdentity | None) -> dict[str, str]:
        if user is not None:
            token = await self.client_token(user)
            return {"authorization": f"Bearer {token.token}"}
        if self._api_key is None:
            raise AssetPayError(ErrorKey.NOT_CONFIGURED, "ASSETPAY_API_KEY is not configured")
        return {"api-key": self._api_key.get_secret_value()}

    async def _send(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        content: bytes | None,
        write: bool,
    ) -> _Answer | _Failure:
        """One HTTP request, its answer classified. `write`: an unknown outcome is an OutcomeUnknown."""
        sent_id = str(uuid.uuid4())
        request_headers = {"accept": "application/json", "x-request-id": sent_id, **headers}
        if content is not None:
            request_headers["content-type"] = "application/json"
        started = time.perf_counter()
        try:
            response = await self._http.request(
                method, self._base_url + path, params=params, content=content, headers=request_headers
            )
        except httpx.TransportError as exc:
            REQUEST_SECONDS.labels(operation).observe(time.perf_counter() - started)
            REQUESTS.labels(operation, "network_error").inc()
            # Nothing left our side when the connection could not be made; anything later may have arrived.
            never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            key = ErrorKey.TIMEOUT if isinstance(exc, httpx.TimeoutException) else ErrorKey.NETWORK_ERROR
            note = "the request was not sent" if never_sent else "the request may have reached AssetPay"
            log.warning("AssetPay %s %s: %s, %s (x-request-id=%s)", method, path, type(exc).__name__, note, sent_id)
            error = (OutcomeUnknown if write and not never_sent else AssetPayError)(
                key, f"{type(exc).__name__} on {method} {path}: {note}", request_id=sent_id
            )
            return _Failure(error, transient=True)
        elapsed = time.perf_counter() - started
        REQUEST_SECONDS.labels(operation).observe(elapsed)
        return self._classify(operation, method, path, response, sent_id=sent_id, elapsed=elapsed, write=write)

    def _classify(
        self,
        operation: str,
        method: str,
        path: str,
        response: httpx.Response,
        *,
        sent_id: str,
        elapsed: float,
        write: bool,
    ) -> _Answer | _Failure:
        status = response.status_code
        try:
            body = json.loads(response.content, parse_float=Decimal)
        except ValueError:
            body = None
        envelope = body if isinstance(body, dict) else {}
        request_id = envelope.get("requestId") if isinstance(envelope.get("requestId"), str) else None
        request_id = request_id or sent_id
        if envelope.get("success") is True and "data" in envelope and 200 <= status < 300:
            REQUESTS.labels(operation, "ok").inc()
            log.info(
                "AssetPay %s %s -> %d in %.0f ms (x-request-id=%s requestId=%s)",
                method,
                path,
                status,
                elapsed * 1000,
                sent_id,
                request_id,
            )
            return _Answer(envelope["data"], request_id)

        retry_after = self._retry_after(response.headers.get("retry-after"))
        detail = envelope.get("error") if envelope.get("success") is False else None
        if isinstance(detail, dict) and isinstance(detail.get("key"), str):
            key: str = detail["key"]
            # A 5xx that is neither maintenance (503) nor a refusal says nothing about what happened.
            unexplained = status >= 500 and status != 503 and key not in REFUSAL_KEYS
            error = (OutcomeUnknown if write and unexplained else AssetPayError)(
                key,
                self._message(detail.get("message")),
                status=status,
                code=detail["code"] if isinstance(detail.get("code"), int) else None,
                fields={k: self._redact(v) for k, v in (_string_map(detail.get("fields")) or {}).items()},
                details=detail["details"] if isinstance(detail.get("details"), dict) else None,
                request_id=request_id,
                retry_after=retry_after,
            )
        else:
            # No usable envelope (a proxy's error page, a truncated body): a 5xx explains nothing, and a 2xx may
            # mean a write went through.
            unexplained = status >= 500
            error = (OutcomeUnknown if write and (unexplained or 200 <= status < 300) else AssetPayError)(
                ErrorKey.UNEXPECTED_RESPONSE,
                f"HTTP {status} without a usable AssetPay envelope on {method} {path}",
                status=status,
                request_id=request_id,
                retry_after=retry_after,
            )
        REQUESTS.labels(operation, "error").inc()
        log.warning(
            "AssetPay %s %s -> %d %s in %.0f ms (x-request-id=%s requestId=%s)",
            method,
            path,
            status,
            error.key,
            elapsed * 1000,
            sent_id,
            request_id,
        )
        return _Failure(error, transient=unexplained)

    # -- helpers --------------------------------------------------------------------------------------------------

    def _retry_after(self, value: str | None) -> float | None:
        """Retry-After as seconds from now (it may be delta-seconds or an HTTP date)."""
        if not value:
            return None
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return max(0.0, moment.timestamp() - self._clock())

    def _message(self, raw: Any) -> str:
        if isinstance(raw, list):
            text = "; ".join(str(part) for part in raw)
        else:
            text = str(raw) if raw is not None else "AssetPay refused the request"
        return self._redact(text)

    def _redact(self, text: str) -> str:
        """Belt and braces: the merchant's credentials never travel on in a message, whatever AssetPay echoes."""
        for secret in (self._api_key, self._api_secret):
            if secret is not None:
                text = text.replace(secret.get_secret_value(), "[redacted]")
        return text

    def _unexpected(self, message: str, request_id: str | None) -> AssetPayError:
        return AssetPayError(ErrorKey.UNEXPECTED_RESPONSE, message, status=200, request_id=request_id)

    def _parse(self, model: type[_Model], answer: _Answer) -> _Model:
        try:
            return model.model_validate(answer.data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'data'}: {e['msg']}" for e in exc.errors()[:5]
            )
            message = f"AssetPay answered with an unexpected {model.__name__}: {problems}"
            raise self._unexpected(message, answer.request_id) from None


_EMAIL = re.compile(EMAIL_PATTERN)

_LINK_REFUSAL_STATUSES = frozenset({400, 404, 409, 422})


def _reissued(error: AssetPayError, *, key: str | None = None, message: str | None = None) -> AssetPayError:
    """The same failure as a plain AssetPayError, renamed when `key` is given."""
    return AssetPayError(
        key or error.key,
        message or error.message,
        status=error.status,
        code=error.code,
        fields=error.fields,
        details=error.details,
        request_id=error.request_id,
        retry_after=error.retry_after,
    )


def _link_refusal(error: AssetPayError) -> AssetPayError | None:
    """A refusal to link, named by its status (see `link_verification`); None for any other failure."""
    if error.status not in _LINK_REFUSAL_STATUSES or error.key == ErrorKey.UNEXPECTED_RESPONSE:
        return None  # not a refusal AssetPay explained (a bare 404 means a wrong base URL)
    if error.status == 404:
        key = ErrorKey.VERIFICATION_IDENTITY_NOT_FOUND  # the one reason the document gives for a 404 on link
    elif error.key in set(ErrorKey):
        return None  # a key we know already says what happened (VALIDATION_FAILED, RATE_LIMITED, ...)
    else:
        key = ErrorKey.VERIFICATION_LINK_REFUSED
    return _reissued(error, key=key, message=f"{error.message} ({error.key})")


def _trade_or_none(data: Any) -> Trade | None:
    try:
        return Trade.model_validate(data)
    except ValidationError:
        return None


def _string_map(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items()}


def _game(game: int, problems: dict[str, str]) -> int:
    if isinstance(game, bool) or not isinstance(game, int) or game <= 0:
        problems["game"] = "must be a positive integer app id (730 for CS2, 252490 for Rust)"
        return 0
    return int(game)


def _exact(path: str, value: Any) -> Decimal:
    # A float here is a programming error, not bad input: money must never have been a float.
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{path} must be a Decimal, not {type(value).__name__}")
    return Decimal(value)


def _price(path: str, value: Any, problems: dict[str, str], *, maximum: Decimal | None = None) -> Decimal:
    amount = _exact(path, value)
    if not amount.is_finite() or amount <= 0:
        problems[path] = "must be a positive amount"
    elif maximum is not None and amount > maximum:
        problems[path] = f"must be at most {maximum}"
    return amount


def _price_range(minimum: Any, maximum: Any, problems: dict[str, str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in (("minPrice", minimum), ("maxPrice", maximum)):
        if value is None:
            continue
        amount = _exact(name, value)
        if not amount.is_finite() or amount < 0:
            problems[name] = "must be an amount >= 0"
        else:
            params[name] = _plain(amount)
    return params


def _positive(name: str, value: int | None, problems: dict[str, str]) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems[name] = "must be a positive integer"
        return {}
    return {name: str(value)}


def _bounded_int(name: str, value: Any, low: int, high: int, problems: dict[str, str]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems[name] = f"must be an integer from {low} to {high}"


def _external_id(name: str, value: Any, problems: dict[str, str]) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_EXTERNAL_ID_LENGTH:
        problems[name] = f"must be 1 to {MAX_EXTERNAL_ID_LENGTH} characters"


def _item_id(name: str, value: Any, problems: dict[str, str]) -> None:
    if not isinstance(value, str) or not MIN_ITEM_ID_LENGTH <= len(value) <= MAX_ITEM_ID_LENGTH:
        problems[name] = f"must be {MIN_ITEM_ID_LENGTH} to {MAX_ITEM_ID_LENGTH} characters"
