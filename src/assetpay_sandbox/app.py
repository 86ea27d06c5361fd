"""`create_sandbox_app()`: the AssetPay sandbox as an ASGI app, speaking the gateway's paths and envelope.

AssetPay's routes (`/auth`, `/client`, `/secure`, `/v1/wallets`) answer exactly in the gateway's wire format; the
developer's control routes live outside that namespace, under `/_sandbox`, and need no credentials:

    GET  /_sandbox                         overview (running?, trades, callbacks waiting)
    GET  /_sandbox/trades[?status&type]    every trade;  GET /_sandbox/trades/{id or externalId}
    POST /_sandbox/trades/{ref}/advance    one step; ?to=completed walks the regular path (approval included);
                                           ?to=reverted|failed|declined|canceled [&error=KEY] [&by=user|supplier]
    POST /_sandbox/trades/{ref}/fail-items {"itemIds"?: [...], "error"?: "PURCHASE_FAILED"} on a withdrawal
    POST /_sandbox/step | /tick | /deliver step every live trade now | do what is due | resend waiting callbacks
    GET  /_sandbox/deliveries              the latest callback attempts
    PUT|DELETE /_sandbox/prices/{itemId}   {"price": n}: the current price of an inventory item or listing
    PUT|DELETE /_sandbox/collateral/{steamId}  {"collateral": n}: override the provider collateral the model computes
    GET  /_sandbox/users/{steamId}         the risk profile and its numbers (trust, history, collateral, cap, ...)
    PUT  /_sandbox/users/{steamId}/merchant-collateral  {"amount": n}: the merchant's collateral for the user
    PUT  /_sandbox/users/{steamId}/verification         {"level": 0|1}: verify (or unverify) at once
    POST /_sandbox/users/{steamId}/verification/approve | /decline  decide the verification in progress
    PUT  /_sandbox/identities/{identityId} {"banned": bool}: ban a verified identity (refuses new links)
    PUT  /_sandbox/verification            {"available": bool}: off → VERIFICATION_NOT_AVAILABLE on start

The instant-credit model behind `collateral` and `preCredit` (and identity verification) is docs/instant-credit.md.
    GET|PUT /_sandbox/chaos                the chaos switches (docs/sandbox.md), e.g. {"dropRate": 0.2, "seed": 7}

AssetPay's realtime feed (Socket.IO, websocket transport, `?apiKey=` or `?token=`) is mounted at `/socket.io/`, so
the routes and the feed share one port (feed.py).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from assetpay_sandbox import catalog, tokens, verification
from assetpay_sandbox.chaos import ChaosError, ChaosSettings
from assetpay_sandbox.credentials import SANDBOX_API_KEY, SANDBOX_API_SECRET, SANDBOX_MERCHANT_ID
from assetpay_sandbox.driver import DEFAULT_STEP_SECONDS, Clock, Sandbox, utc_now
from assetpay_sandbox.feed import FEED_PATH, SandboxFeed
from assetpay_sandbox.persistence import SaveAfterRequests
from assetpay_sandbox.schemas import (
    AuthenticateClient,
    DepositRequest,
    Query,
    VerificationStart,
    WithdrawRequest,
    parse_body,
)
from assetpay_sandbox.state import FORCED_ENDINGS, ITEM_ERRORS, TRADE_ERRORS, SimTrade
from assetpay_sandbox.tokens import STEAM_ID, ClientIdentity
from assetpay_sandbox.wire import SandboxError, failure, iso, loads, ok, validation_failed

MAX_TRADE_REFS = 100
MAX_PAGE_SIZE = 500


def create_sandbox_app(
    *,
    api_key: str = SANDBOX_API_KEY,
    api_secret: str = SANDBOX_API_SECRET,
    merchant_id: str = SANDBOX_MERCHANT_ID,
    callback_url: str,
    step_seconds: float = DEFAULT_STEP_SECONDS,
    clock: Clock = utc_now,
    hold_seconds: float | None = None,
    callback_transport: httpx.AsyncBaseTransport | None = None,
    cancel_min_age_seconds: float = 0.0,
    chaos: ChaosSettings | None = None,
    seed: int | None = None,
    database_url: str | None = None,
) -> FastAPI:
    """A simulated AssetPay for one merchant, POSTing signed callbacks to `callback_url`.

    Trades move one status every `step_seconds` (a CS2 hold lasts `hold_seconds`, by default one step) once the
    driver runs: served on its own, the app's lifespan starts it; mounted inside another app, call
    `sandbox_of(app).start()` / `.stop()` from that app's lifespan. `callback_transport` lets tests receive the
    callbacks in-process. `chaos` and `seed` make delivery misbehave reproducibly; with `database_url` the
    sandbox is kept in that database (schema `assetpay_sandbox`) and carries on after a restart.
    """
    sandbox = Sandbox(
        api_key=api_key,
        api_secret=api_secret,
        merchant_id=merchant_id,
        callback_url=callback_url,
        step_seconds=step_seconds,
        hold_seconds=hold_seconds,
        clock=clock,
        callback_transport=callback_transport,
        cancel_min_age_seconds=cancel_min_age_seconds,
        chaos=chaos,
        seed=seed,
        database_url=database_url,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await sandbox.start()
        try:
            yield
        finally:
            await sandbox.stop()

    app = FastAPI(
        title="AssetPay sandbox",
        version="0.8.3-sandbox",
        description="A simulator of the AssetPay gateway for development; see `/_sandbox` for its controls.",
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    _install_error_handlers(app)
    app.include_router(gateway_router)
    app.include_router(control_router)
    app.add_middleware(SaveAfterRequests, touch=sandbox.touch)
    feed = SandboxFeed(sandbox)
    app.state.feed = feed
    app.mount(FEED_PATH, feed.app)
    return app


def sandbox_of(app: FastAPI) -> Sandbox:
    """The Sandbox behind an app made by `create_sandbox_app` (to start, stop or step it)."""
    sandbox: Sandbox = app.state.sandbox
    return sandbox


def _install_error_handlers(app: FastAPI) -> None:
    async def sandbox_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SandboxError)
        return failure(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            return failure(request, SandboxError(405, "METHOD_NOT_ALLOWED", "Method not allowed"))
        if exc.status_code == 404:
            return failure(request, SandboxError(404, "NOT_FOUND", f"Route {request.url.path} not found"))
        return failure(request, SandboxError(exc.status_code, "ERROR", str(exc.detail)))

    async def request_error(request: Request, exc: Exception) -> Response:
        return failure(request, validation_failed({"request": "is invalid"}))

    async def unexpected(request: Request, exc: Exception) -> Response:
        return failure(request, SandboxError(500, "INTERNAL_ERROR", "Internal error"))

    app.add_exception_handler(SandboxError, sandbox_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_error)
    app.add_exception_handler(Exception, unexpected)


# -- helpers shared by the routes ---------------------------------------------------------------------------------


def _sandbox(request: Request) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


def _feed(request: Request) -> SandboxFeed:
    feed: SandboxFeed = request.app.state.feed
    return feed


def _merchant(request: Request) -> Sandbox:
    """The sandbox, once the `api-key` header has been checked."""
    sandbox = _sandbox(request)
    key = request.headers.get("api-key", "")
    if not key or not hmac.compare_digest(key.encode(), sandbox.api_key.encode()):
        raise SandboxError(401, "INVALID_API_KEY", "Missing or invalid api-key header")
    return sandbox


def _client(request: Request) -> tuple[Sandbox, ClientIdentity]:
    """The sandbox and the end user of the `Authorization: Bearer <client token>` header."""
    sandbox = _sandbox(request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SandboxError(401, "INVALID_TOKEN", "Missing client token (Authorization: Bearer <token>)")
    identity = tokens.read(
        token.strip(), secret=sandbox.secret, merchant_id=sandbox.merchant_id, now=int(sandbox.clock().timestamp())
    )
    # Locally minted tokens never pass /auth/authenticate-client: every token refreshes the model's clientData.
    sandbox.state.profiles.observe(identity.steam_id, identity.client_data)
    return sandbox, identity


async def _body(request: Request) -> Any:
    return loads(await request.body())


def _now(sandbox: Sandbox) -> datetime:
    return sandbox.clock()


def _own_withdrawal(sandbox: Sandbox, who: ClientIdentity, ref: str) -> SimTrade:
    trade = sandbox.state.find(ref)
    if trade is None or trade.type != "withdraw" or trade.owner.steam_id != who.steam_id:
        raise SandboxError(404, "NOT_FOUND", f"Withdrawal {ref} not found")
    return trade


# -- AssetPay's routes --------------------------------------------------------------------------------------------

gateway_router = APIRouter()


@gateway_router.post("/auth/authenticate-client", summary="Issue a client token (api-key)")
async def authenticate_client(request: Request) -> Response:
    sandbox = _merchant(request)
    body = parse_body(AuthenticateClient, await _body(request))
    identity = ClientIdentity(
        merchant_id=sandbox.merchant_id,
        steam_id=body.client_steam_id,
        trade_url=body.client_trade_url,
        client_id=body.client_id,
        client_data=body.client_data.model_dump(by_alias=True, exclude_none=True) if body.client_data else {},
    )
    token = tokens.mint(identity, secret=sandbox.secret, issued_at=int(_now(sandbox).timestamp()))
    sandbox.state.profiles.observe(identity.steam_id, identity.client_data)
    return ok(request, {"token": token})


@gateway_router.get("/client/inventory", summary="The end user's inventory and instant-credit collateral")
async def client_inventory(request: Request) -> Response:
    sandbox, who = _client(request)
    query = Query(request.query_params)
    game = query.game()
    refresh = query.flag("refresh")
    accepted_only = query.flag("acceptedOnly")
    search, sort = query.text("search"), query.text("sort")
    min_price, max_price = query.price("minPrice"), query.price("maxPrice")
    page = query.integer("page", 1)
    limit = query.integer("limit", 50, high=MAX_PAGE_SIZE)
    query.check()
    items = [i for i in sandbox.state.inventory(who, game) if i.accepted or not accepted_only]
    chosen = catalog.select(items, search=search, sort=sort, min_price=min_price, max_price=max_price)
    updated_at = sandbox.state.inventory_updated_at(who, game, _now(sandbox), refresh=refresh)
    return ok(
        request,
        {
            "inventory": [item.wire() for item in catalog.page(chosen, page=page, size=limit)],
            "count": len(chosen),
            "updatedAt": iso(updated_at),
            "collateral": sandbox.state.collateral(who),
        },
    )


@gateway_router.get("/client/market", summary="Market listings (withdrawable items)")
async def client_market(request: Request) -> Response:
    sandbox, _ = _client(request)
    query = Query(request.query_params)
    game = query.game()
    search = query.text("search", max_length=100)
    sort = query.choice("sort", catalog.SORTS)
    min_price, max_price = query.price("minPrice"), query.price("maxPrice")
    page = query.integer("page", 1)
    per_page = query.integer("perPage", 50, high=MAX_PAGE_SIZE)
    query.check()
    chosen = catalog.select(
        sandbox.state.market(game), search=search, sort=sort, min_price=min_price, max_price=max_price
    )
    items = [item.wire() for item in catalog.page(chosen, page=page, size=per_page)]
    return ok(request, {"items": items, "count": len(chosen)})


@gateway_router.post("/client/trading/deposit", summary="Deposit skins (the user sells them)")
async def client_deposit(request: Request) -> Response:
    sandbox, who = _client(request)
    body = parse_body(DepositRequest, await _body(request))
    trade = sandbox.state.create_deposit(who, body, _now(sandbox))
    return ok(request, trade.wire())


@gateway_router.post("/client/trading/withdraw", summary="Withdraw skins (the user buys them; CS2)")
async def client_withdraw(request: Request) -> Response:
    sandbox, who = _client(request)
    body = parse_body(WithdrawRequest, await _body(request))
    trade = sandbox.state.create_withdraw(who, body, _now(sandbox))
    return ok(request, trade.wire())


@gateway_router.post("/client/trading/withdraw/{trade_ref}/cancel", summary="Cancel every undelivered item")
async def client_cancel(request: Request, trade_ref: str) -> Response:
    sandbox, who = _client(request)
    trade = _own_withdrawal(sandbox, who, trade_ref)
    return ok(request, sandbox.state.cancel(trade, None, _now(sandbox)))


@gateway_router.post(
    "/client/trading/withdraw/{trade_ref}/items/{item_ref}/cancel", summary="Cancel one undelivered item"
)
async def client_cancel_item(request: Request, trade_ref: str, item_ref: str) -> Response:
    sandbox, who = _client(request)
    trade = _own_withdrawal(sandbox, who, trade_ref)
    if not any(item_ref in (item.id, item.external_id) for item in trade.items):
        raise SandboxError(404, "NOT_FOUND", f"Item {item_ref} not found in withdrawal {trade_ref}")
    result = sandbox.state.cancel(trade, item_ref, _now(sandbox))
    outcome = result["items"][0]
    if outcome["status"] != "cancelled":
        raise SandboxError(400, outcome["reason"], "The item cannot be cancelled")
    return ok(request, {"tradeId": trade.id, **outcome})


@gateway_router.post("/client/verification/start", summary="Start identity verification (PictureID)")
async def verification_start(request: Request) -> Response:
    sandbox, who = _client(request)
    raw = await request.body()
    body = parse_body(VerificationStart, loads(raw) if raw.strip() else {})
    process = verification.start(sandbox.state.profiles, who.steam_id, email=body.email, now=_now(sandbox))
    return ok(request, {"captureUrl": process.capture_url, "dossierId": process.dossier_id})


@gateway_router.get("/client/verification/status", summary="Verification level, email, latest process, identity")
async def verification_status(request: Request) -> Response:
    sandbox, who = _client(request)
    return ok(request, verification.status(sandbox.state.profiles, who.steam_id, _now(sandbox)))


@gateway_router.post("/client/verification/link", summary="Link the account to the verified identity of its email")
async def verification_link(request: Request) -> Response:
    sandbox, who = _client(request)
    verification.link(sandbox.state.profiles, who.steam_id, _now(sandbox))
    return ok(request, {"linked": True})


@gateway_router.get("/secure/trades/{refs}", summary="Trades by id or externalId (comma-separated → array)")
async def secure_trades(request: Request, refs: str) -> Response:
    sandbox = _merchant(request)
    wanted = [ref.strip() for ref in refs.split(",") if ref.strip()]
    if not wanted or len(wanted) > MAX_TRADE_REFS:
        raise validation_failed({"tradeId": f"give 1 to {MAX_TRADE_REFS} comma-separated trade ids or externalIds"})
    if "," not in refs:
        trade = sandbox.state.find(wanted[0])
        if trade is None:
            raise SandboxError(404, "NOT_FOUND", f"Trade {wanted[0]} not found")
        return ok(request, trade.wire())
    found: dict[str, SimTrade] = {}
    for ref in wanted:
        trade = sandbox.state.find(ref)
        if trade is not None:
            found.setdefault(trade.id, trade)
    return ok(request, [trade.wire() for trade in found.values()])


@gateway_router.get("/v1/wallets/me/balance", summary="The merchant's AssetPay wallet")
async def wallet_balance(request: Request) -> Response:
    sandbox = _merchant(request)
    return ok(request, sandbox.state.wallet())


# -- the developer's controls -------------------------------------------------------------------------------------

control_router = APIRouter(prefix="/_sandbox", tags=["sandbox controls"])


def _trade(sandbox: Sandbox, ref: str) -> SimTrade:
    trade = sandbox.state.find(ref)
    if trade is None:
        raise SandboxError(404, "NOT_FOUND", f"Trade {ref} not found")
    return trade


def _money(value: Any, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal) or value < 0:
        raise validation_failed({field: "must be a number of at least 0"})
    return Decimal(value)


@control_router.get("", summary="What the sandbox is and how far it got")
async def overview(request: Request) -> Response:
    sandbox = _sandbox(request)
    return ok(
        request,
        {
            "merchantId": sandbox.merchant_id,
            "callbackUrl": sandbox.callback_url,
            "stepSeconds": sandbox.step_seconds,
            "holdSeconds": sandbox.hold_seconds,
            "persistent": sandbox.store is not None,
            "running": sandbox.running,
            "trades": len(sandbox.state.trades),
            "pendingCallbacks": len(sandbox.outbox),
        },
    )


@control_router.get("/trades", summary="Every trade (filter with ?status= and ?type=)")
async def list_trades(request: Request) -> Response:
    sandbox = _sandbox(request)
    status, kind = request.query_params.get("status"), request.query_params.get("type")
    trades = [
        trade.wire()
        for trade in sandbox.state.trades.values()
        if (status is None or trade.status == status) and (kind is None or trade.type == kind)
    ]
    return ok(request, trades)


@control_router.get("/trades/{ref}", summary="One trade by id or externalId")
async def get_trade(request: Request, ref: str) -> Response:
    return ok(request, _trade(_sandbox(request), ref).wire())


@control_router.post(
    "/trades/{ref}/advance",
    summary="Move a trade: one step, the regular path to ?to=completed, or ?to=reverted|failed|declined|canceled",
)
async def advance_trade(request: Request, ref: str) -> Response:
    sandbox = _sandbox(request)
    trade = _trade(sandbox, ref)
    to, error, by = (request.query_params.get(name) for name in ("to", "error", "by"))
    problems = {}
    if to is not None and to not in FORCED_ENDINGS:
        problems["to"] = f"must be one of {', '.join(FORCED_ENDINGS)}"
    if error is not None and error not in TRADE_ERRORS:
        problems["error"] = "must be an AssetPay trade error key"
    if by is not None and by not in ("user", "supplier"):
        problems["by"] = "must be user or supplier"
    if problems:
        raise validation_failed(problems)
    await sandbox.advance(trade, to=to, error=error, reverted_by=by)
    return ok(request, trade.wire())


@control_router.post(
    "/trades/{ref}/fail-items",
    summary='Fail withdrawal items: body {"itemIds"?: [...], "error"?: "PURCHASE_FAILED"} (all live items if none)',
)
async def fail_items(request: Request, ref: str) -> Response:
    sandbox = _sandbox(request)
    trade = _trade(sandbox, ref)
    raw = await request.body()
    body = loads(raw) if raw.strip() else {}
    item_ids = body.get("itemIds") if isinstance(body, dict) else None
    error = body.get("error", "PURCHASE_FAILED") if isinstance(body, dict) else "PURCHASE_FAILED"
    if item_ids is not None and (not isinstance(item_ids, list) or not all(isinstance(i, str) for i in item_ids)):
        raise validation_failed({"itemIds": "must be a list of item ids"})
    if error not in ITEM_ERRORS:
        raise validation_failed({"error": "must be an AssetPay item error key"})
    await sandbox.fail_items(trade, item_ids, error)
    return ok(request, trade.wire())


@control_router.post("/step", summary="Move every trade in flight one step and retry every pending callback, now")
async def step(request: Request) -> Response:
    return ok(request, await _sandbox(request).step())


@control_router.post("/tick", summary="Do what is due by the clock (what the background driver does)")
async def tick(request: Request) -> Response:
    return ok(request, await _sandbox(request).tick())


@control_router.post("/deliver", summary="Send every pending callback now, ignoring backoff")
async def deliver(request: Request) -> Response:
    return ok(request, await _sandbox(request).deliver())


@control_router.get("/deliveries", summary="The latest callback attempts (newest last)")
async def deliveries(request: Request) -> Response:
    return ok(request, list(_sandbox(request).log))


@control_router.put("/prices/{item_id}", summary='Set the current price of an inventory or market item: {"price": n}')
async def set_price(request: Request, item_id: str) -> Response:
    sandbox = _sandbox(request)
    body = await _body(request)
    price = _money(body.get("price") if isinstance(body, dict) else None, "price")
    if price <= 0:
        raise validation_failed({"price": "must be positive"})
    sandbox.state.price_overrides[item_id] = price
    _feed(request).price_changed(item_id)
    return ok(request, {"itemId": item_id, "price": price})


@control_router.delete("/prices/{item_id}", summary="Back to the catalog price")
async def clear_price(request: Request, item_id: str) -> Response:
    _sandbox(request).state.price_overrides.pop(item_id, None)
    _feed(request).price_changed(item_id)
    return ok(request, {"itemId": item_id})


@control_router.put(
    "/collateral/{steam_id}", summary='Override the provider collateral the model computes: {"collateral": n}'
)
async def set_collateral(request: Request, steam_id: str) -> Response:
    sandbox = _sandbox(request)
    body = await _body(request)
    amount = _money(body.get("collateral") if isinstance(body, dict) else None, "collateral")
    sandbox.state.collateral_overrides[steam_id] = amount
    return ok(request, {"steamId": steam_id, "collateral": amount})


@control_router.delete("/collateral/{steam_id}", summary="Back to the provider collateral the risk model computes")
async def clear_collateral(request: Request, steam_id: str) -> Response:
    _sandbox(request).state.collateral_overrides.pop(steam_id, None)
    return ok(request, {"steamId": steam_id})


# -- risk profiles and identity verification (risk.py, verification.py, docs/instant-credit.md) ----------------


def _steam_id(steam_id: str) -> str:
    if not STEAM_ID.fullmatch(steam_id):
        raise validation_failed({"steamId": "must be a Steam id (76561 and 12 digits)"})
    return steam_id


def _user(request: Request, steam_id: str) -> Response:
    state = _sandbox(request).state
    view = verification.user_view(
        state.profiles, steam_id, state.exposure(steam_id), state.collateral_overrides.get(steam_id)
    )
    return ok(request, view)


async def _field(request: Request, name: str) -> Any:
    body = await _body(request)
    return body.get(name) if isinstance(body, dict) else None


@control_router.get("/users/{steam_id}", summary="A user's risk profile and the instant credit it gives now")
async def get_user(request: Request, steam_id: str) -> Response:
    return _user(request, _steam_id(steam_id))


@control_router.put(
    "/users/{steam_id}/merchant-collateral", summary='The merchant\'s collateral for a user: {"amount": n}'
)
async def set_merchant_collateral(request: Request, steam_id: str) -> Response:
    amount = _money(await _field(request, "amount"), "amount")
    _sandbox(request).state.profiles.get(_steam_id(steam_id)).merchant_collateral = amount
    return _user(request, steam_id)


@control_router.put("/users/{steam_id}/verification", summary='Verify or unverify a user at once: {"level": 0|1}')
async def set_verification(request: Request, steam_id: str) -> Response:
    sandbox = _sandbox(request)
    level = await _field(request, "level")
    if isinstance(level, bool) or level not in (0, 1):
        raise validation_failed({"level": "must be 0 (unverified) or 1 (verified)"})
    verification.set_level(sandbox.state.profiles, _steam_id(steam_id), level, _now(sandbox))
    return _user(request, steam_id)


@control_router.post("/users/{steam_id}/verification/approve", summary="Accept the verification in progress")
async def approve_verification(request: Request, steam_id: str) -> Response:
    sandbox = _sandbox(request)
    verification.decide(sandbox.state.profiles, _steam_id(steam_id), accept=True, now=_now(sandbox))
    return _user(request, steam_id)


@control_router.post("/users/{steam_id}/verification/decline", summary="Reject the verification in progress")
async def decline_verification(request: Request, steam_id: str) -> Response:
    sandbox = _sandbox(request)
    verification.decide(sandbox.state.profiles, _steam_id(steam_id), accept=False, now=_now(sandbox))
    return _user(request, steam_id)


@control_router.put("/identities/{identity_id}", summary='Ban or unban a verified identity: {"banned": bool}')
async def set_identity(request: Request, identity_id: str) -> Response:
    banned = await _field(request, "banned")
    if not isinstance(banned, bool):
        raise validation_failed({"banned": "must be true or false"})
    identity = verification.set_banned(_sandbox(request).state.profiles, identity_id, banned)
    return ok(request, {"id": identity.id, "banned": identity.banned})


@control_router.put("/verification", summary='Make identity verification available or not: {"available": bool}')
async def set_verification_available(request: Request) -> Response:
    available = await _field(request, "available")
    if not isinstance(available, bool):
        raise validation_failed({"available": "must be true or false"})
    _sandbox(request).state.profiles.verification_available = available
    return ok(request, {"available": available})


@control_router.get("/chaos", summary="The chaos switches and the seed of their RNG")
async def get_chaos(request: Request) -> Response:
    return ok(request, _sandbox(request).chaos.wire())


@control_router.put(
    "/chaos",
    summary='Set the chaos switches: {"duplicateRate", "reorder", "delay", "dropRate", "approvalTimeoutRate", '
    '"seed"}; a switch left out is off, a seed restarts the RNG',
)
async def set_chaos(request: Request) -> Response:
    sandbox = _sandbox(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise validation_failed({"body": "must be a JSON object"})
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise validation_failed({"seed": "must be an integer"})
    try:
        settings = ChaosSettings.from_wire(body)
    except ChaosError as exc:
        raise validation_failed(exc.fields) from None
    sandbox.configure_chaos(settings, seed=seed)
    return ok(request, sandbox.chaos.wire())
