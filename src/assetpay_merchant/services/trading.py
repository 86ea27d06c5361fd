"""Starting deposits and withdrawals, in named steps that each own one short unit of work:

    record  (our trade, committed with the externalId we will send)
    ask     (AssetPay, with no transaction open)
    settle  (AssetPay's answer, applied by the settlement service)   or   refuse (a definitive no: failed)

The trade is committed *before* AssetPay is called, so a crash or a lost answer can never lose it: the callbacks
find it by externalId, and reconciliation can look it up.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from assetpay_merchant.core.errors import Conflict, InsufficientBalance, NotFound, TooManyRequests
from assetpay_merchant.core.money import ZERO, format_money
from assetpay_merchant.core.policy import Status, TradeType
from assetpay_merchant.gateway import (
    AssetPayClient,
    AssetPayError,
    CancelResult,
    DepositItem,
    ErrorKey,
    OutcomeUnknown,
    WithdrawItem,
)
from assetpay_merchant.gateway import Trade as AssetPayTrade
from assetpay_merchant.gateway.callbacks import TradeSnapshot
from assetpay_merchant.services import settlement
from assetpay_merchant.services.ratelimits import RateLimits, UserScope
from assetpay_merchant.services.settlement import Source
from assetpay_merchant.services.users import USER_NOT_FOUND, identity_of
from assetpay_merchant.store import idempotency, ledger, trades, users
from assetpay_merchant.store.database import Connection, Database
from assetpay_merchant.store.idempotency import Claim, Replay
from assetpay_merchant.store.trades import TradeRow
from assetpay_merchant.store.users import UserRow

log = logging.getLogger(__name__)

# AssetPay's per-user deposit guard, checked here first so a user gets a clear answer without spending a request.
MAX_ACTIVE_DEPOSITS = 5
MAX_RECENT_DEPOSITS = 10
RECENT_WINDOW = timedelta(minutes=5)


class TradeNotStarted(Exception):
    """AssetPay refused the trade we recorded as `trade_id` (it is failed), or its answer was lost (`cause` is an
    OutcomeUnknown: the trade stays recorded and will be settled; never start it again)."""

    def __init__(self, trade_id: uuid.UUID, cause: AssetPayError) -> None:
        super().__init__(str(cause))
        self.trade_id = trade_id
        self.cause = cause


@dataclass(frozen=True, slots=True)
class DepositOrder:
    items: Sequence[DepositItem]
    game: int
    is_instant: bool

    @property
    def total(self) -> Decimal:
        return sum((item.price * (item.amount or 1) for item in self.items), start=ZERO)

    def stored_items(self) -> list[dict[str, Any]]:
        return [{"id": i.item_id, "price": format_money(i.price), "amount": i.amount or 1} for i in self.items]


@dataclass(frozen=True, slots=True)
class WithdrawOrder:
    items: Sequence[WithdrawItem]
    game: int

    @property
    def total(self) -> Decimal:
        """What the user expects to pay: the quoted prices."""
        return sum((item.price for item in self.items), start=ZERO)

    @property
    def authorised(self) -> Decimal:
        """The most the user agreed to pay: each item's maxPrice where given, else its price."""
        return sum((item.max_price or item.price for item in self.items), start=ZERO)

    def stored_items(self) -> list[dict[str, Any]]:
        return [{"id": i.item_id, "price": format_money(i.price), "amount": 1} for i in self.items]


Order = DepositOrder | WithdrawOrder


@dataclass(frozen=True, slots=True)
class Started:
    trade: TradeRow
    related: list[TradeRow]


async def start(
    database: Database,
    assetpay: AssetPayClient,
    *,
    user_id: str,
    order: Order,
    claim: Claim | None,
    now: datetime,
    limits: RateLimits | None = None,
) -> Started:
    """Record, ask, settle. A definitive refusal marks the trade failed; a lost answer leaves it recorded.
    `limits`: the user's allowance of trades started (None: unlimited)."""
    trade, user = await _record(database, user_id=user_id, order=order, claim=claim, now=now, limits=limits)
    if trade.assetpay_id is not None:  # an earlier attempt got through (its callback or answer linked it)
        return Started(trade, [])
    if trade.status != Status.INITIATED:
        raise Conflict("This trade was already refused", key="TRADE_REFUSED")
    external_id = trade.external_id or str(trade.id)
    try:
        answer = await _ask(assetpay, user, order, external_id)
    except AssetPayError as error:
        if error.key == ErrorKey.EXTERNAL_ID_EXISTS and not isinstance(error, OutcomeUnknown):
            # The externalId names this trade only: an earlier attempt (a retry with the same Idempotency-Key)
            # got through. It is ours to look up, never a refusal to mark failed.
            found = await _find(assetpay, external_id)
            if found is not None:
                return await _settle_answer(database, trade.id, found)
            error = OutcomeUnknown.after(error, "AssetPay has a trade with our externalId that a lookup did not find")
        if isinstance(error, OutcomeUnknown):
            log.warning("trade %s: outcome unknown (%s); kept for reconciliation", trade.id, error.key)
        else:
            await _refuse(database, trade.id, error)
        raise TradeNotStarted(trade.id, error) from error
    return await _settle_answer(database, trade.id, answer)


async def _record(
    database: Database, *, user_id: str, order: Order, claim: Claim | None, now: datetime, limits: RateLimits | None
) -> tuple[TradeRow, UserRow]:
    """Commit our trade (or find the one an earlier attempt with the same key recorded)."""
    async with database.unit_of_work() as uow:
        db = uow.db
        user = await users.get(db, user_id, lock=True)  # one trade start per user at a time
        if user is None:
            raise NotFound(USER_NOT_FOUND, key="USER_NOT_FOUND")
        if claim is not None and claim.trade_id is not None:
            earlier = await trades.lock(db, claim.trade_id)
            refused = earlier is not None and earlier.status == Status.FAILED and earlier.assetpay_id is None
            if earlier is not None and not refused:  # a refused attempt (503, 429) freed the key: start anew
                return earlier, user
        if limits is not None:  # in this transaction: a trade refused below costs the user no allowance
            await limits.check_user(user_id, UserScope.TRADES, db=db)
        if isinstance(order, DepositOrder):
            await _check_deposit_guard(db, user_id, now)
            trade_type, authorised = TradeType.DEPOSIT, None
        else:
            available = await ledger.lock_balance(db, user_id)
            if available < order.total:
                shown = format_money(available), format_money(order.total)
                raise InsufficientBalance("The balance ({}) does not cover this withdrawal ({})".format(*shown))
            trade_type, authorised = TradeType.WITHDRAW, order.authorised
        trade = await trades.insert(db, _our_trade(user, order, trade_type, authorised))
        assert trade is not None  # a fresh uuid and externalId clash with nothing
        if claim is not None:
            await idempotency.attach_trade(db, claim, trade.id)
        return trade, user


def _our_trade(user: UserRow, order: Order, trade_type: TradeType, authorised: Decimal | None) -> TradeRow:
    trade_id = uuid.uuid4()
    return TradeRow.new(
        id=trade_id,
        external_id=str(trade_id),  # sent to AssetPay: the callbacks and lookups find our record by it
        user_id=user.id,
        client_steam_id=user.steam_id,
        external_client_user_id=user.id,
        type=trade_type.value,
        game=str(order.game),
        status=Status.INITIATED.value,
        total_price=order.total,
        authorized_amount=authorised,
        items=order.stored_items(),
        is_instant=order.is_instant if isinstance(order, DepositOrder) else None,
    )


_DEPOSITS_SINCE = """
SELECT count(*) FILTER (WHERE status = ANY($2::text[])) AS active,
       array_agg(created_at ORDER BY created_at) FILTER (WHERE created_at > $3) AS recent
FROM trades
WHERE user_id = $1 AND type = 'deposit' AND NOT (status = 'failed' AND assetpay_id IS NULL)
"""


async def _check_deposit_guard(db: Connection, user_id: str, now: datetime) -> None:
    """AssetPay's limits on one user's deposits (refused attempts do not count)."""
    row = await db.fetchrow(
        _DEPOSITS_SINCE, user_id, [Status.INITIATED.value, Status.ACTIVE.value], now - RECENT_WINDOW
    )
    assert row is not None
    if row["active"] >= MAX_ACTIVE_DEPOSITS:
        raise TooManyRequests(
            f"At most {MAX_ACTIVE_DEPOSITS} deposits may wait for acceptance at once; finish or cancel one first",
            key="TOO_MANY_ACTIVE_TRADES",
        )
    recent: list[datetime] = row["recent"] or []
    if len(recent) >= MAX_RECENT_DEPOSITS:
        oldest = recent[len(recent) - MAX_RECENT_DEPOSITS]
        raise TooManyRequests(
            f"At most {MAX_RECENT_DEPOSITS} deposits per {int(RECENT_WINDOW.total_seconds() // 60)} minutes",
            key="RATE_LIMITED",
            retry_after=max(1, math.ceil((oldest + RECENT_WINDOW - now).total_seconds())),
        )


async def _ask(assetpay: AssetPayClient, user: UserRow, order: Order, external_id: str) -> AssetPayTrade:
    identity = identity_of(user)
    if isinstance(order, DepositOrder):
        return await assetpay.deposit(
            identity, order.items, external_id=external_id, is_instant=order.is_instant, game=order.game
        )
    return await assetpay.withdraw(identity, order.items, external_id=external_id, game=order.game)


async def _settle_answer(database: Database, trade_id: uuid.UUID, answer: AssetPayTrade) -> Started:
    """Apply AssetPay's answer (and the other offers of a split basket) through the settlement path."""
    async with database.unit_of_work() as uow:
        try:
            snapshot = TradeSnapshot.model_validate(answer.raw)
        except ValidationError as exc:
            reason = f"AssetPay's answer did not validate: {exc.errors()[0].get('msg')}"
            await settlement.flag_unreadable(uow, trade_id, assetpay_id=answer.id, reason=reason)
            trade = await trades.lock(uow.db, trade_id)
            assert trade is not None
            return Started(trade, [])
        ours = await settlement.apply(uow, snapshot, source=Source.TRADING_ANSWER)
        related = []
        for other in answer.related_trades:
            try:
                other_snapshot = TradeSnapshot.model_validate(other.raw)
            except ValidationError:
                await settlement.flag_unreadable(
                    uow, trade_id, assetpay_id=answer.id, reason=f"related trade {other.id} did not validate"
                )
                continue
            sibling = await settlement.apply(
                uow, other_snapshot, source=Source.TRADING_ANSWER, user_id=ours.trade.user_id
            )
            related.append(sibling.trade)
        trade = ours.trade if len(related) == len(answer.related_trades) else await trades.lock(uow.db, trade_id)
        assert trade is not None
        return Started(trade, related)


async def _refuse(database: Database, trade_id: uuid.UUID, error: AssetPayError) -> None:
    async with database.unit_of_work() as uow:
        await settlement.refuse(uow, trade_id, error=error.key)


async def _find(assetpay: AssetPayClient, external_id: str) -> AssetPayTrade | None:
    try:
        return await assetpay.find_trade(external_id)
    except AssetPayError as error:
        log.warning("lookup of externalId %s failed (%s)", external_id, error.key)
        return None


async def cancel_withdrawal(
    database: Database, assetpay: AssetPayClient, *, user_id: str, trade_id: str
) -> CancelResult:
    """Ask AssetPay to cancel what can still be cancelled; the refund arrives through the trade's callbacks."""
    try:
        key = uuid.UUID(trade_id)
    except ValueError:
        key = None
    async with database.statements() as db:
        user = await users.get(db, user_id)
        trade = await trades.find(db, key) if key is not None else None
    if user is None:
        raise NotFound(USER_NOT_FOUND, key="USER_NOT_FOUND")
    if trade is None or trade.user_id != user_id or trade.type != TradeType.WITHDRAW:
        raise NotFound("No such withdrawal", key="TRADE_NOT_FOUND")
    if Status(trade.status).is_final:
        raise Conflict(f"The withdrawal is already {trade.status}; nothing is left to cancel", key="TRADE_FINAL")
    reference = trade.assetpay_id or trade.external_id
    assert reference is not None
    return await assetpay.cancel_withdrawal(identity_of(user), reference)


# -- Idempotency-Key: each step its own short unit of work --------------------------------------------------------


async def claim_key(database: Database, *, user_id: str, key: str, fingerprint: str, now: datetime) -> Claim | Replay:
    async with database.unit_of_work() as uow:
        return await idempotency.claim(uow.db, user_id=user_id, key=key, fingerprint=fingerprint, now=now)


async def finish_key(database: Database, claim: Claim, *, status: int, body: dict[str, Any]) -> None:
    async with database.unit_of_work() as uow:
        await idempotency.finish(uow.db, claim, status=status, body=body)


async def release_key(database: Database, claim: Claim) -> None:
    async with database.unit_of_work() as uow:
        await idempotency.release(uow.db, claim)
