"""The sandbox's trades and the gateway's rules for them, in memory and free of I/O.

Every change of a trade appends a snapshot of its callback body to `events`; the driver delivers them. Amounts
are Decimals from end to end.
"""

from __future__ import annotations

import json
import math
import secrets
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from assetpay_sandbox import catalog, risk
from assetpay_sandbox.catalog import CS2, RUST, CatalogItem
from assetpay_sandbox.risk import Profiles
from assetpay_sandbox.schemas import DepositRequest, WithdrawRequest
from assetpay_sandbox.tokens import ClientIdentity
from assetpay_sandbox.wire import SandboxError, dumps, iso, validation_failed

ZERO = Decimal(0)
IN_FLIGHT = frozenset({"initiated", "pending", "active", "hold"})
FINAL = frozenset({"completed", "failed", "canceled", "declined", "reverted"})
FAILURES = FINAL - {"completed"}
ITEM_ERRORS = frozenset(
    {
        "LISTING_UNAVAILABLE",
        "NO_LISTING_AT_PRICE",
        "PRICE_CHANGED",
        "TRADE_URL_INVALID",
        "STEAM_ACCOUNT_RESTRICTED",
        "BUYER_TRADE_RESTRICTED",
        "OFFER_NOT_ACCEPTED",
        "MARKET_UNAVAILABLE",
        "PURCHASE_FAILED",
    }
)
TRADE_ERRORS = ITEM_ERRORS | {
    "USER_TRADE_RESTRICTED",
    "USER_INVENTORY_PRIVATE",
    "USER_ESCROW",
    "USER_NOT_FOUND",
    "SERVICE_UNAVAILABLE",
    "MERCHANT_REJECTED",
    "APPROVAL_TIMEOUT",
}
FORCED_ENDINGS = ("completed", "reverted", "failed", "declined", "canceled")

# Per end user (merchant + Steam id), as ASSETPAY.md §3 documents.
MAX_ACTIVE_DEPOSITS = 5
MAX_DEPOSITS_PER_WINDOW = 10
DEPOSIT_WINDOW = timedelta(minutes=5)
MERCHANT_OPENING_BALANCE = Decimal("10000.00")

_DEPOSIT_PATHS = {
    CS2: {"initiated": "active", "active": "hold", "hold": "completed"},
    RUST: {"initiated": "active", "active": "completed"},  # Rust has no trade hold
}
_WITHDRAW_PATH = {"pending": "active", "active": "hold", "hold": "completed"}  # initiated → pending is the approval


def conflict(message: str) -> SandboxError:
    return SandboxError(409, "INVALID_STATE", message)


@dataclass(slots=True)
class SimItem:
    """An item inside a trade; withdrawal items carry their own status and error."""

    id: str
    asset_id: str
    appid: int
    name: str
    market_hash_name: str
    type: str
    icon_url: str
    price: Decimal
    amount: int = 1
    external_id: str | None = None
    status: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, item: CatalogItem, *, price: Decimal, amount: int, **extra: Any) -> SimItem:
        return cls(
            id=item.id,
            asset_id=item.asset_id,
            appid=item.appid,
            name=item.name,
            market_hash_name=item.market_hash_name,
            type=item.type,
            icon_url=item.icon_url,
            price=price,
            amount=amount,
            **extra,
        )

    @property
    def alive(self) -> bool:
        return self.status is None or self.status in IN_FLIGHT

    @property
    def value(self) -> Decimal:
        return self.price * self.amount

    def wire(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": self.id,
            "assetId": self.asset_id,
            "appid": self.appid,
            "name": self.name,
            "marketHashName": self.market_hash_name,
            "type": self.type,
            "iconUrl": self.icon_url,
            "tradable": True,
            "amount": self.amount,
            "offer": {"price": self.price},
        }
        if self.external_id is not None:
            item["externalId"] = self.external_id
        if self.status is not None:
            item["status"] = self.status
        if self.error is not None:
            item["error"] = self.error
        return item


@dataclass(slots=True)
class SimTrade:
    """A trade as the gateway keeps it, plus what the driver needs (`due_at`, approval attempts)."""

    id: str
    type: str
    owner: ClientIdentity
    game: int
    items: list[SimItem]
    total_price: Decimal
    pre_credit: Decimal
    is_instant: bool
    created_at: datetime
    updated_at: datetime
    status: str = "initiated"
    external_id: str | None = None
    offer_id: str | None = None
    active_at: datetime | None = None
    hold_end_date: datetime | None = None
    auto_cancel_at: datetime | None = None
    reverted_by: str | None = None
    error: str | None = None
    due_at: datetime | None = None
    approval_attempts: int = 0
    # Which collateral backs the preCredit of a CS2 deposit (risk.split); Rust's needs none.
    collateral_provider: Decimal = ZERO
    collateral_merchant: Decimal = ZERO
    approved: bool = False

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    @property
    def awaits_approval(self) -> bool:
        return self.type == "withdraw" and self.status == "initiated"

    @property
    def charge(self) -> Decimal:
        """What a withdrawal costs: its total, or the value of the items not failed when some did."""
        if not any(item.status in FAILURES for item in self.items):
            return self.total_price
        return min(self.total_price, sum((i.value for i in self.items if i.status not in FAILURES), start=ZERO))

    def wire(self) -> dict[str, Any]:
        """The Trade object, as AssetPay sends it in answers and in `{"trade": ...}` callbacks."""
        trade: dict[str, Any] = {"id": self.id, "type": self.type, "source": "client"}
        if self.external_id is not None:
            trade["externalId"] = self.external_id
        if self.owner.client_id is not None:
            trade["externalClientUserId"] = self.owner.client_id
        trade |= {
            "merchantId": self.owner.merchant_id,
            "clientUserId": _client_user_id(self.owner),
            "clientTradeUrl": self.owner.trade_url,
            "clientSteamID": self.owner.steam_id,
        }
        if self.offer_id is not None:
            trade["offerID"] = self.offer_id
        trade |= {
            "status": self.status,
            "game": str(self.game),
            "items": [item.wire() for item in self.items],
            "totalPrice": self.total_price,
            # Credits describe a deposit's split (preCredit + pendingCredit = totalPrice); a withdrawal has none.
            "preCredit": self.pre_credit,
            "pendingCredit": self.total_price - self.pre_credit if self.type == "deposit" else ZERO,
            "isInstant": self.is_instant,
        }
        if self.type == "deposit":
            trade["collateral"] = {"merchant": self.collateral_merchant, "provider": self.collateral_provider}
        optional = {
            "holdEndDate": self.hold_end_date,
            "activeAt": self.active_at,
            "autoCancelAt": self.auto_cancel_at,
        }
        trade |= {key: iso(value) for key, value in optional.items() if value is not None}
        if self.reverted_by is not None:
            trade["revertedBy"] = self.reverted_by
        if self.error is not None:
            trade["error"] = self.error
        trade |= {"createdAt": iso(self.created_at), "updatedAt": iso(self.updated_at)}
        return trade


@dataclass(frozen=True, slots=True)
class Event:
    """A status change to announce: the callback body exactly as it will be signed and sent."""

    trade_id: str
    status: str
    body: bytes


class Observer(Protocol):
    """Told of changes as they happen (the realtime feed, feed.py), besides the events the driver delivers.
    Called synchronously from inside the change: it must return at once and never raise."""

    def trade_changed(self, event: Event) -> None: ...

    def listing_replaced(self, game: int, sold: CatalogItem, listed: CatalogItem) -> None: ...


@dataclass(slots=True)
class SandboxState:
    """Every trade of the one sandbox merchant, the per-user guards and risk profiles, and the developer's knobs."""

    step: timedelta
    hold: timedelta
    cancel_min_age: timedelta = timedelta(0)
    trades: dict[str, SimTrade] = field(default_factory=dict)
    live: dict[str, SimTrade] = field(default_factory=dict)  # the trades not final yet
    by_user: dict[str, list[SimTrade]] = field(default_factory=dict)  # by Steam id
    external_ids: dict[str, str] = field(default_factory=dict)
    market_generations: dict[int, dict[int, int]] = field(default_factory=dict)  # game → slot → restocks
    price_overrides: dict[str, Decimal] = field(default_factory=dict)
    collateral_overrides: dict[str, Decimal] = field(default_factory=dict)  # replace the modelled provider collateral
    profiles: Profiles = field(default_factory=Profiles)  # trust, history, verification, merchant collateral per user
    inventory_fetched: dict[tuple[str, int], datetime] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    observers: list[Observer] = field(default_factory=list, repr=False, compare=False)

    # -- looking things up ---------------------------------------------------------------------------------------

    def find(self, ref: str) -> SimTrade | None:
        """A trade by its id or by the merchant's externalId."""
        trade_id = ref if ref in self.trades else self.external_ids.get(ref)
        return self.trades.get(trade_id) if trade_id is not None else None

    def of_user(self, steam_id: str, trade_type: str) -> Iterator[SimTrade]:
        return (t for t in self.by_user.get(steam_id, ()) if t.type == trade_type)

    def _priced(self, items: Iterable[CatalogItem]) -> list[CatalogItem]:
        return [catalog.with_price(item, self.price_overrides.get(item.id)) for item in items]

    def inventory(self, who: ClientIdentity, game: int) -> list[CatalogItem]:
        """The user's inventory: the generated one plus what their completed withdrawals delivered, less what is
        in a live or completed deposit (those skins left it)."""
        gone = {
            item.id
            for trade in self.of_user(who.steam_id, "deposit")
            if trade.status not in FAILURES
            for item in trade.items
        }
        received = [
            CatalogItem(
                id=f"{item.appid}_{item.asset_id}",
                asset_id=item.asset_id,
                appid=item.appid,
                market_hash_name=item.market_hash_name,
                type=item.type,
                price=item.price,
            )
            for trade in self.of_user(who.steam_id, "withdraw")
            if trade.status == "completed" and trade.game == game
            for item in trade.items
            if item.status == "completed"
        ]
        owned = [*catalog.inventory(who.steam_id, game), *received]
        return self._priced(item for item in owned if item.id not in gone)

    def inventory_updated_at(self, who: ClientIdentity, game: int, now: datetime, *, refresh: bool) -> datetime:
        """When the inventory was last fetched from "Steam": cached for 15 minutes unless refreshed."""
        key = (who.steam_id, game)
        fetched = self.inventory_fetched.get(key)
        if refresh or fetched is None or now - fetched > timedelta(minutes=15):
            self.inventory_fetched[key] = fetched = now
        return fetched

    def market(self, game: int) -> list[CatalogItem]:
        """The market as it stands: a listing bought by a withdrawal is replaced by a fresh one."""
        return self._priced(catalog.market(game, self.market_generations.get(game)))

    def exposure(self, steam_id: str) -> Decimal:
        """The preCredit of the user's CS2 deposits still in flight: advanced, and at risk until they end."""
        return sum(
            (t.pre_credit for t in self.of_user(steam_id, "deposit") if t.game == CS2 and t.status in IN_FLIGHT),
            start=ZERO,
        )

    def credit_terms(self, steam_id: str) -> risk.Terms:
        return self.profiles.terms(steam_id, self.exposure(steam_id), self.collateral_overrides.get(steam_id))

    def collateral(self, who: ClientIdentity) -> Decimal:
        """Instant credit available now (the inventory's `collateral`): what the next deposit could get up front."""
        return self.credit_terms(who.steam_id).instant_now

    def wallet(self) -> dict[str, Any]:
        """The merchant's AssetPay wallet: paid for completed deposits, charged for withdrawals."""
        balance, pending, escrow = MERCHANT_OPENING_BALANCE, ZERO, ZERO
        for trade in self.trades.values():
            if trade.type == "deposit":
                if trade.status == "completed":
                    balance += trade.total_price
                elif trade.status == "hold":
                    escrow += trade.total_price
            elif trade.approved and trade.status in IN_FLIGHT:
                balance -= trade.charge
                pending += trade.charge
            elif trade.status == "completed":
                balance -= trade.charge
        return {"balance": balance, "pendingBalance": pending, "escrowBalance": escrow, "currency": "USD"}

    # -- creating trades -----------------------------------------------------------------------------------------

    def _check_external_id(self, external_id: str | None) -> None:
        if external_id is not None and external_id in self.external_ids:
            raise SandboxError(409, "EXTERNAL_ID_EXISTS", f"A trade with externalId {external_id!r} already exists")

    @staticmethod
    def _check_duplicates(item_ids: list[str]) -> None:
        seen: set[str] = set()
        duplicates = {}
        for index, item_id in enumerate(item_ids):
            if item_id in seen:
                duplicates[f"items.{index}.itemId"] = "is listed twice"
            seen.add(item_id)
        if duplicates:
            raise validation_failed(duplicates)

    def _check_guards(self, who: ClientIdentity, now: datetime) -> None:
        deposits = list(self.of_user(who.steam_id, "deposit"))
        if sum(t.status in ("initiated", "active") for t in deposits) >= MAX_ACTIVE_DEPOSITS:
            raise SandboxError(
                429,
                "TOO_MANY_ACTIVE_TRADES",
                f"At most {MAX_ACTIVE_DEPOSITS} deposits may be initiated or active at once",
            )
        recent = sorted(t.created_at for t in deposits if now - t.created_at < DEPOSIT_WINDOW)
        if len(recent) >= MAX_DEPOSITS_PER_WINDOW:
            wait = recent[-MAX_DEPOSITS_PER_WINDOW] + DEPOSIT_WINDOW - now
            raise SandboxError(
                429,
                "RATE_LIMITED",
                f"At most {MAX_DEPOSITS_PER_WINDOW} deposits per 5 minutes",
                headers={"Retry-After": str(max(1, math.ceil(wait.total_seconds())))},
            )

    def _register(self, trade: SimTrade) -> SimTrade:
        self.trades[trade.id] = trade
        self.live[trade.id] = trade
        self.by_user.setdefault(trade.owner.steam_id, []).append(trade)
        if trade.external_id is not None:
            self.external_ids[trade.external_id] = trade.id
        return trade

    def create_deposit(self, who: ClientIdentity, request: DepositRequest, now: datetime) -> SimTrade:
        """A deposit in `initiated`, after the gateway's checks (externalId, guards, availability, exact prices)."""
        game = int(request.game)
        self._check_duplicates([item.item_id for item in request.items])
        self._check_external_id(request.external_id)
        self._check_guards(who, now)
        owned = {item.id: item for item in self.inventory(who, game)}
        unavailable = [
            wanted.item_id
            for wanted in request.items
            if (found := owned.get(wanted.item_id)) is None or not found.accepted or wanted.amount > found.amount
        ]
        if unavailable:
            raise SandboxError(
                400, "ITEMS_UNAVAILABLE", "Some items cannot be deposited", details={"items": unavailable}
            )
        changed = [
            {"itemId": wanted.item_id, "price": owned[wanted.item_id].price}
            for wanted in request.items
            if wanted.price != owned[wanted.item_id].price
        ]
        if changed:
            raise SandboxError(409, "PRICE_CHANGED", "Item prices have changed", details={"items": changed})
        items = [SimItem.of(owned[w.item_id], price=owned[w.item_id].price, amount=w.amount) for w in request.items]
        total = sum((item.value for item in items), start=ZERO)
        credit = risk.split(self.credit_terms(who.steam_id), game=game, is_instant=request.is_instant, total=total)
        trade = SimTrade(
            id=str(uuid.uuid4()),
            type="deposit",
            owner=who,
            game=game,
            items=items,
            total_price=total,
            pre_credit=credit.pre_credit,
            is_instant=request.is_instant,
            created_at=now,
            updated_at=now,
            external_id=request.external_id,
            due_at=now + self.step,
            collateral_provider=credit.provider,
            collateral_merchant=credit.merchant,
        )
        self._register(trade)
        self._emit(trade)
        return trade

    def create_withdraw(self, who: ClientIdentity, request: WithdrawRequest, now: datetime) -> SimTrade:
        """A withdrawal in `initiated`, waiting for the merchant's approval; a lower current price is charged."""
        if int(request.game) != CS2:
            raise validation_failed({"game": "withdrawals are CS2 (730) only"})
        self._check_duplicates([item.item_id for item in request.items])
        self._check_external_id(request.external_id)
        listed = {item.id: item for item in self.market(CS2)}
        unavailable = [wanted.item_id for wanted in request.items if wanted.item_id not in listed]
        if unavailable:
            raise SandboxError(
                400, "ITEMS_UNAVAILABLE", "Some items are no longer listed", details={"items": unavailable}
            )
        items, changed = [], []
        for wanted in request.items:
            listing = listed[wanted.item_id]
            ceiling = wanted.max_price
            if ceiling is None:
                ceiling = wanted.price * (1 + Decimal(request.slippage_bps) / 10_000)
            if listing.price > max(wanted.price, ceiling):
                changed.append({"itemId": wanted.item_id, "price": listing.price})
                continue
            items.append(
                SimItem.of(listing, price=listing.price, amount=1, external_id=wanted.external_id, status="initiated")
            )
        if changed:
            raise SandboxError(409, "PRICE_CHANGED", "Item prices have risen", details={"items": changed})
        generations = self.market_generations.setdefault(CS2, {})
        for wanted in request.items:  # bought: the listing leaves the market and its slot is restocked
            slot = listed[wanted.item_id].slot
            generations[slot] = generations.get(slot, 0) + 1
        if self.observers:
            restocked = {listing.slot: listing for listing in self.market(CS2)}
            for wanted in request.items:
                sold = listed[wanted.item_id]
                for observer in self.observers:
                    observer.listing_replaced(CS2, sold, restocked[sold.slot])
        auto_cancel = None if request.auto_cancel == 720 else now + timedelta(minutes=request.auto_cancel)
        trade = SimTrade(
            id=str(uuid.uuid4()),
            type="withdraw",
            owner=who,
            game=CS2,
            items=items,
            total_price=sum((item.value for item in items), start=ZERO),
            pre_credit=ZERO,
            is_instant=False,
            created_at=now,
            updated_at=now,
            external_id=request.external_id,
            auto_cancel_at=auto_cancel,
            due_at=now,  # ask for approval straight away
        )
        return self._register(trade)

    # -- moving trades -------------------------------------------------------------------------------------------

    def _emit(self, trade: SimTrade) -> None:
        event = Event(trade.id, trade.status, trade_body(trade))
        self.events.append(event)
        for observer in self.observers:
            observer.trade_changed(event)

    def _set(self, trade: SimTrade, status: str, now: datetime) -> None:
        """Move the trade (and its live withdrawal items) to `status`, schedule its next step, announce it."""
        trade.status = status
        trade.updated_at = now
        for item in trade.items:
            if item.status is not None and item.alive:
                item.status = status
        if status == "active" and trade.offer_id is None:
            trade.offer_id = str(7_000_000_000 + secrets.randbelow(1_000_000_000))
            trade.active_at = now
        if status == "hold":
            trade.hold_end_date = now + self.hold
        trade.due_at = None if trade.is_final else now + (self.hold if status == "hold" else self.step)
        if trade.is_final:
            self.live.pop(trade.id, None)  # a CS2 deposit's exposure ends with it (see `exposure`)
            if trade.type == "deposit" and status == "completed":
                self.profiles.record_completion(trade.owner.steam_id, trade.total_price)
            elif trade.type == "deposit" and status == "reverted":
                self.profiles.record_reversal(trade.owner.steam_id, trade.total_price)
        self._emit(trade)

    def advance(self, trade: SimTrade, now: datetime) -> None:
        """One regular step along the trade's path (an initiated withdrawal needs an approval instead)."""
        if trade.awaits_approval:
            raise conflict("A withdrawal in initiated moves on only with the merchant's approval")
        path = _DEPOSIT_PATHS[trade.game] if trade.type == "deposit" else _WITHDRAW_PATH
        following = path.get(trade.status)
        if following is None:
            raise conflict(f"The trade is {trade.status}; it does not move any more")
        self._set(trade, following, now)

    def approve(self, trade: SimTrade, now: datetime) -> None:
        trade.approved = True
        self._set(trade, "pending", now)

    def reject(self, trade: SimTrade, now: datetime, error: str) -> None:
        """The merchant said no (or never answered): the withdrawal fails before anything is bought."""
        trade.error = error
        self._set(trade, "failed", now)

    def end(self, trade: SimTrade, status: str, now: datetime, *, error: str | None, reverted_by: str | None) -> None:
        """Force a final status (`reverted`, `failed`, `declined`, `canceled`) the way the gateway could."""
        if status not in ("reverted", "failed", "declined", "canceled"):
            raise ValueError(f"cannot force {status!r}")
        if trade.is_final:
            raise conflict(f"The trade is already {trade.status}")
        if status == "reverted":
            if trade.status != "hold":
                raise conflict("Only a trade in hold can be reverted")
            trade.reverted_by = reverted_by or "user"
        elif status in ("declined", "canceled") and trade.status == "hold":
            raise conflict(f"A trade in hold was accepted already; it cannot be {status}")
        if status in ("failed", "declined"):
            default = "PURCHASE_FAILED" if trade.type == "withdraw" else "SERVICE_UNAVAILABLE"
            trade.error = error or ("OFFER_NOT_ACCEPTED" if status == "declined" else default)
            for item in trade.items:
                if item.status is not None and item.alive and trade.error in ITEM_ERRORS:
                    item.error = trade.error
        self._set(trade, status, now)

    def fail_items(self, trade: SimTrade, item_ids: list[str] | None, error: str, now: datetime) -> None:
        """Some withdrawal items could not be bought or delivered; the trade fails when none is left."""
        if trade.type != "withdraw" or trade.status not in ("pending", "active"):
            raise conflict("Only items of a withdrawal in pending or active can fail")
        chosen = [
            i for i in trade.items if i.alive and (item_ids is None or i.id in item_ids or i.external_id in item_ids)
        ]
        if not chosen:
            raise conflict("None of those items is still in flight")
        for item in chosen:
            item.status, item.error = "failed", error
        self._settle(trade, now)

    def cancel(self, trade: SimTrade, item_ref: str | None, now: datetime) -> dict[str, Any]:
        """Cancel undelivered withdrawal items (initiated or pending); the answer lists every attempt."""
        outcomes: list[dict[str, Any]] = []
        for item in trade.items:
            if item_ref is not None and item_ref not in (item.id, item.external_id):
                continue
            if item.status in FINAL:
                if item_ref is not None:
                    outcomes.append(_refused(item, "TRADE_NOT_CANCELLABLE"))
                continue
            if item.status not in ("initiated", "pending"):
                outcomes.append(_refused(item, "TRADE_NOT_CANCELLABLE"))
            elif now - trade.created_at < self.cancel_min_age:
                outcomes.append(_refused(item, "TRADE_CANCEL_TOO_SOON"))
            else:
                item.status = "canceled"
                outcome: dict[str, Any] = {"itemId": item.id, "status": "cancelled"}
                if item.external_id is not None:
                    outcome["externalId"] = item.external_id
                outcomes.append(outcome)
        cancelled = sum(o["status"] == "cancelled" for o in outcomes)
        if cancelled:
            self._settle(trade, now)
        return {
            "tradeId": trade.id,
            "requested": len(outcomes),
            "cancelled": cancelled,
            "failed": len(outcomes) - cancelled,
            "items": outcomes,
        }

    def _settle(self, trade: SimTrade, now: datetime) -> None:
        """After items changed: end the trade when no item is left alive, else announce the item changes."""
        if any(item.alive for item in trade.items):
            trade.updated_at = now
            self._emit(trade)
        elif all(item.status == "canceled" for item in trade.items):
            self._set(trade, "canceled", now)
        else:
            errors = {item.error for item in trade.items if item.error is not None}
            trade.error = errors.pop() if len(errors) == 1 else None
            self._set(trade, "failed", now)

    # -- kept across restarts (persistence.py) -------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """Everything this state keeps, JSON-able (Decimals as strings, times ISO-8601); `load` reads it back.
        The clock settings (step, hold, cancel_min_age) are the running sandbox's, not kept; the indexes (live,
        by_user, external_ids) are rebuilt from the trades."""
        return {
            "trades": [_dump_trade(trade) for trade in self.trades.values()],
            "marketGenerations": {
                str(game): {str(slot): count for slot, count in slots.items()}
                for game, slots in self.market_generations.items()
            },
            "priceOverrides": {item_id: str(price) for item_id, price in self.price_overrides.items()},
            "collateralOverrides": {steam_id: str(amount) for steam_id, amount in self.collateral_overrides.items()},
            "profiles": self.profiles.dump(),
            "inventoryFetched": [
                [steam_id, game, at.isoformat()] for (steam_id, game), at in self.inventory_fetched.items()
            ],
            "events": [dump_event(event) for event in self.events],
        }

    def load(self, data: Mapping[str, Any]) -> None:
        """Replace what this state keeps with a `dump()`; a key missing (an older dump) leaves that part empty.
        In place, so whoever holds this state (the driver, the observers) keeps holding the loaded one."""
        self.trades.clear()
        self.live.clear()
        self.by_user.clear()
        self.external_ids.clear()
        for raw in data.get("trades", ()):
            trade = _load_trade(raw)
            self.trades[trade.id] = trade
            if not trade.is_final:
                self.live[trade.id] = trade
            self.by_user.setdefault(trade.owner.steam_id, []).append(trade)
            if trade.external_id is not None:
                self.external_ids[trade.external_id] = trade.id
        self.market_generations = {
            int(game): {int(slot): int(count) for slot, count in slots.items()}
            for game, slots in data.get("marketGenerations", {}).items()
        }
        self.price_overrides = {k: Decimal(v) for k, v in data.get("priceOverrides", {}).items()}
        self.collateral_overrides = {k: Decimal(v) for k, v in data.get("collateralOverrides", {}).items()}
        self.profiles = Profiles.load(data.get("profiles", {}), self.profiles.policy)
        self.inventory_fetched = {
            (steam_id, int(game)): datetime.fromisoformat(at) for steam_id, game, at in data.get("inventoryFetched", ())
        }
        self.events = [load_event(raw) for raw in data.get("events", ())]


def trade_body(trade: SimTrade) -> bytes:
    """The callback body for the trade as it is now: `{"trade": Trade}`, compact, money as JSON numbers."""
    return dumps({"trade": trade.wire()})


def _client_user_id(who: ClientIdentity) -> str:
    """AssetPay's own id of the end user: stable per merchant and Steam id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"assetpay-sandbox:{who.merchant_id}:{who.steam_id}"))


def _refused(item: SimItem, reason: str) -> dict[str, Any]:
    outcome: dict[str, Any] = {"itemId": item.id, "status": "failed", "reason": reason}
    if item.external_id is not None:
        outcome["externalId"] = item.external_id
    return outcome


# -- the JSON form of trades and events (SandboxState.dump/load) -------------------------------------------------


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()  # full precision, unlike the wire's milliseconds


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _dump_item(item: SimItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "assetId": item.asset_id,
        "appid": item.appid,
        "name": item.name,
        "marketHashName": item.market_hash_name,
        "type": item.type,
        "iconUrl": item.icon_url,
        "price": str(item.price),
        "amount": item.amount,
        "externalId": item.external_id,
        "status": item.status,
        "error": item.error,
    }


def _load_item(raw: Mapping[str, Any]) -> SimItem:
    return SimItem(
        id=raw["id"],
        asset_id=raw["assetId"],
        appid=raw["appid"],
        name=raw["name"],
        market_hash_name=raw["marketHashName"],
        type=raw["type"],
        icon_url=raw["iconUrl"],
        price=Decimal(raw["price"]),
        amount=raw["amount"],
        external_id=raw.get("externalId"),
        status=raw.get("status"),
        error=raw.get("error"),
    )


def _dump_trade(trade: SimTrade) -> dict[str, Any]:
    owner = trade.owner
    return {
        "id": trade.id,
        "type": trade.type,
        "owner": {
            "merchantId": owner.merchant_id,
            "steamId": owner.steam_id,
            "tradeUrl": owner.trade_url,
            "clientId": owner.client_id,
            # As it came over the wire: JSON text keeps its numbers exact (Decimal in, Decimal out).
            "clientData": dumps(owner.client_data).decode(),
        },
        "game": trade.game,
        "items": [_dump_item(item) for item in trade.items],
        "totalPrice": str(trade.total_price),
        "preCredit": str(trade.pre_credit),
        "isInstant": trade.is_instant,
        "createdAt": _time(trade.created_at),
        "updatedAt": _time(trade.updated_at),
        "status": trade.status,
        "externalId": trade.external_id,
        "offerId": trade.offer_id,
        "activeAt": _time(trade.active_at),
        "holdEndDate": _time(trade.hold_end_date),
        "autoCancelAt": _time(trade.auto_cancel_at),
        "revertedBy": trade.reverted_by,
        "error": trade.error,
        "dueAt": _time(trade.due_at),
        "approvalAttempts": trade.approval_attempts,
        "approved": trade.approved,
        "collateralProvider": str(trade.collateral_provider),
        "collateralMerchant": str(trade.collateral_merchant),
    }


def _load_trade(raw: Mapping[str, Any]) -> SimTrade:
    owner = raw["owner"]
    return SimTrade(
        id=raw["id"],
        type=raw["type"],
        owner=ClientIdentity(
            merchant_id=owner["merchantId"],
            steam_id=owner["steamId"],
            trade_url=owner["tradeUrl"],
            client_id=owner.get("clientId"),
            client_data=json.loads(owner.get("clientData") or "{}", parse_float=Decimal),
        ),
        game=raw["game"],
        items=[_load_item(item) for item in raw["items"]],
        total_price=Decimal(raw["totalPrice"]),
        pre_credit=Decimal(raw["preCredit"]),
        is_instant=raw["isInstant"],
        created_at=datetime.fromisoformat(raw["createdAt"]),
        updated_at=datetime.fromisoformat(raw["updatedAt"]),
        status=raw["status"],
        external_id=raw.get("externalId"),
        offer_id=raw.get("offerId"),
        active_at=_parse_time(raw.get("activeAt")),
        hold_end_date=_parse_time(raw.get("holdEndDate")),
        auto_cancel_at=_parse_time(raw.get("autoCancelAt")),
        reverted_by=raw.get("revertedBy"),
        error=raw.get("error"),
        due_at=_parse_time(raw.get("dueAt")),
        approval_attempts=raw.get("approvalAttempts", 0),
        approved=raw.get("approved", False),
        collateral_provider=Decimal(raw.get("collateralProvider", 0)),
        collateral_merchant=Decimal(raw.get("collateralMerchant", 0)),
    )


def dump_event(event: Event) -> dict[str, Any]:
    """An event's JSON form; the body is kept as its exact bytes (UTF-8 JSON), so a resend is byte-identical."""
    return {"tradeId": event.trade_id, "status": event.status, "body": event.body.decode()}


def load_event(raw: Mapping[str, Any]) -> Event:
    return Event(raw["tradeId"], raw["status"], raw["body"].encode())
