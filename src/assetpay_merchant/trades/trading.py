"""Starting deposits and withdrawals: record the trade, then ask AssetPay, then store its answer.

The trade is committed *before* AssetPay is called, with the externalId we send, so a crash or a lost answer can
never lose it: the callbacks find it by externalId, and reconciliation can look it up. This module therefore owns
several short transactions per request, and never keeps one open across a call to AssetPay.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from assetpay_merchant import idempotency
from assetpay_merchant.db import driver_connection, driver_reads, driver_transaction
from assetpay_merchant.errors import AppError, Conflict, NotFound
from assetpay_merchant.gateway import (
    AssetPayClient,
    AssetPayError,
    ClientIdentity,
    DepositItem,
    ErrorKey,
    WithdrawItem,
)
from assetpay_merchant.gateway import Trade as AssetPayTrade
from assetpay_merchant.ledger.policy import Status, TradeType
from assetpay_merchant.ledger.service import lock_balance, settle
from assetpay_merchant.money import ZERO, format_money
from assetpay_merchant.trades import service as records
from assetpay_merchant.trades.models import Trade
from assetpay_merchant.trades.service import TradeRow, merge_callback
from assetpay_merchant.upstream import from_assetpay
from assetpay_merchant.users.models import User
from assetpay_merchant.webhooks.payloads import TradePayload

log = logging.getLogger(__name__)

# AssetPay's per-user deposit guard, checked here first so a user gets a clear answer without spending a request.
MAX_ACTIVE_DEPOSITS = 5
MAX_RECENT_DEPOSITS = 10
RECENT_WINDOW = timedelta(minutes=5)
_ACTIVE = (Status.INITIATED.value, Status.ACTIVE.value)


class InsufficientBalance(AppError):
    status_code = 402
    key = "INSUFFICIENT_BALANCE"


class TooManyDeposits(AppError):
    status_code = 429


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
    trade: Trade | TradeRow
    related: list[TradeRow]


def identity_of(user: User) -> ClientIdentity:
    return ClientIdentity(
        user_id=user.id, steam_id=user.steam_id, trade_url=user.trade_url, client_data=user.client_data or None
    )


_IDENTITY = "SELECT steam_id, trade_url, client_data::text FROM users WHERE id = $1"


async def identity(engine: AsyncEngine, user_id: str) -> ClientIdentity:
    """The user as AssetPay should see them, read in one statement (the catalog routes ask on every request)."""
    async with driver_reads(engine) as db:
        row = await db.fetchrow(_IDENTITY, user_id)
    if row is None:
        raise NotFound("No such user: the platform registers users with PUT /v1/users/{id}", key="USER_NOT_FOUND")
    steam_id, trade_url, client_data = row
    return ClientIdentity(
        user_id=user_id, steam_id=steam_id, trade_url=trade_url, client_data=json.loads(client_data) or None
    )


async def load_user(session: AsyncSession, user_id: str, *, lock: bool = False) -> User:
    query = select(User).where(User.id == user_id)
    user = await session.scalar(query.with_for_update() if lock else query)
    if user is None:
        raise NotFound("No such user: the platform registers users with PUT /v1/users/{id}", key="USER_NOT_FOUND")
    return user


async def _check_deposit_guard(session: AsyncSession, user_id: str, now: datetime) -> None:
    refused = (Trade.status == Status.FAILED.value) & Trade.assetpay_id.is_(None)
    deposits = select(func.count()).where(Trade.user_id == user_id, Trade.type == TradeType.DEPOSIT.value, ~refused)
    active = await session.scalar(deposits.where(Trade.status.in_(_ACTIVE)))
    if (active or 0) >= MAX_ACTIVE_DEPOSITS:
        raise TooManyDeposits(
            f"At most {MAX_ACTIVE_DEPOSITS} deposits may wait for acceptance at once; finish or cancel one first",
            key="TOO_MANY_ACTIVE_TRADES",
        )
    window_start = now - RECENT_WINDOW
    recent = (
        (
            await session.execute(
                select(Trade.created_at)
                .where(
                    Trade.user_id == user_id,
                    Trade.type == TradeType.DEPOSIT.value,
                    ~refused,
                    Trade.created_at > window_start,
                )
                .order_by(Trade.created_at)
            )
        )
        .scalars()
        .all()
    )
    if len(recent) >= MAX_RECENT_DEPOSITS:
        oldest = recent[len(recent) - MAX_RECENT_DEPOSITS]
        wait = max(1, math.ceil((oldest + RECENT_WINDOW - now).total_seconds()))
        raise TooManyDeposits(
            f"At most {MAX_RECENT_DEPOSITS} deposits per {int(RECENT_WINDOW.total_seconds() // 60)} minutes",
            key="RATE_LIMITED",
            headers={"Retry-After": str(wait)},
        )


async def _record(
    sessions: async_sessionmaker[AsyncSession],
    *,
    user_id: str,
    order: Order,
    claim: idempotency.Claim | None,
    now: datetime,
) -> tuple[Trade, User]:
    """Commit our trade (or find the one an earlier attempt with the same key recorded)."""
    async with sessions.begin() as session:
        user = await load_user(session, user_id, lock=True)  # one trade start per user at a time
        if claim is not None and claim.trade_id is not None:
            earlier = await session.get(Trade, claim.trade_id)
            refused = earlier is not None and earlier.status == Status.FAILED.value and earlier.assetpay_id is None
            if earlier is not None and not refused:  # a refused attempt (503, 429) freed the key: start anew
                return earlier, user
        if isinstance(order, DepositOrder):
            await _check_deposit_guard(session, user_id, now)
            trade_type, authorised = TradeType.DEPOSIT, None
        else:
            available = await lock_balance(await driver_connection(session), user_id)
            if available < order.total:
                raise InsufficientBalance(f"The balance ({available}) does not cover this withdrawal ({order.total})")
            trade_type, authorised = TradeType.WITHDRAW, order.authorised
        trade_id = uuid.uuid4()
        trade = Trade(
            id=trade_id,
            external_id=str(trade_id),
            user_id=user_id,
            client_steam_id=user.steam_id,
            external_client_user_id=user_id,
            type=trade_type.value,
            game=str(order.game),
            status=Status.INITIATED.value,
            total_price=order.total,
            authorized_amount=authorised,
            items=order.stored_items(),
            is_instant=order.is_instant if isinstance(order, DepositOrder) else None,
        )
        session.add(trade)
        await session.flush()
        if claim is not None:
            await idempotency.attach_trade(session, claim, trade_id)
        return trade, user


async def _store_answer(engine: AsyncEngine, trade_id: uuid.UUID, answer: AssetPayTrade) -> Started:
    """Fold AssetPay's answer (and the other offers of a split basket) into our records."""
    async with driver_transaction(engine) as db:
        trade = await records.lock(db, trade_id)
        assert trade is not None
        try:
            payload = TradePayload.model_validate(answer.raw)
        except ValidationError as exc:
            trade.assetpay_id = trade.assetpay_id or answer.id
            trade.flag(f"AssetPay's answer did not validate: {exc.errors()[0].get('msg')}")
            await records.save(db, trade)
            return Started(trade, [])
        merge_callback(trade, payload)
        await settle(db, trade)
        await records.save(db, trade)  # linked first, so a sibling sharing our externalId cannot match it
        related = []
        for other in answer.related_trades:
            try:
                other_payload = TradePayload.model_validate(other.raw)
            except ValidationError:
                trade.flag(f"related trade {other.id} did not validate")
                await records.save(db, trade)
                continue
            sibling = await records.lock_for_callback(db, other_payload)
            merge_callback(sibling, other_payload)
            if sibling.user_id is None:
                sibling.user_id = trade.user_id
            await settle(db, sibling)
            await records.save(db, sibling)
            related.append(sibling)
        return Started(trade, related)


async def _mark_refused(sessions: async_sessionmaker[AsyncSession], trade_id: uuid.UUID, error: AssetPayError) -> None:
    async with sessions.begin() as session:
        trade = await session.scalar(select(Trade).where(Trade.id == trade_id).with_for_update())
        if trade is not None and trade.assetpay_id is None and trade.status == Status.INITIATED.value:
            trade.status = Status.FAILED.value
            trade.error = error.key[:64]


async def start(
    sessions: async_sessionmaker[AsyncSession],
    assetpay: AssetPayClient,
    *,
    engine: AsyncEngine,
    user_id: str,
    order: Order,
    claim: idempotency.Claim | None,
    now: datetime,
) -> Started:
    """Record, call, store. A definitive refusal marks the trade failed; an unknown outcome leaves it recorded."""
    trade, user = await _record(sessions, user_id=user_id, order=order, claim=claim, now=now)
    if trade.assetpay_id is not None:  # an earlier attempt got through (its callback or answer linked it)
        return Started(trade, [])
    if trade.status != Status.INITIATED.value:
        raise Conflict("This trade was already refused", key="TRADE_REFUSED")
    identity = identity_of(user)
    external_id = trade.external_id or str(trade.id)
    try:
        if isinstance(order, DepositOrder):
            answer = await assetpay.deposit(
                identity, order.items, external_id=external_id, is_instant=order.is_instant, game=order.game
            )
        else:
            answer = await assetpay.withdraw(identity, order.items, external_id=external_id, game=order.game)
    except AssetPayError as error:
        if error.key == ErrorKey.EXTERNAL_ID_EXISTS and not error.ambiguous:
            # The externalId names this trade only: an earlier attempt (a retry with the same Idempotency-Key)
            # got through. It is ours to look up, never a refusal to mark failed.
            found = await _find(assetpay, external_id)
            if found is not None:
                return await _store_answer(engine, trade.id, found)
            error = error.as_ambiguous("AssetPay has a trade with our externalId that a lookup did not find")
        if error.ambiguous:
            log.warning("trade %s: outcome unknown (%s); kept for reconciliation", trade.id, error.key)
        else:
            await _mark_refused(sessions, trade.id, error)
        raise from_assetpay(error, trade_id=str(trade.id)) from None
    return await _store_answer(engine, trade.id, answer)


async def _find(assetpay: AssetPayClient, external_id: str) -> AssetPayTrade | None:
    try:
        return await assetpay.find_trade(external_id)
    except AssetPayError as error:
        log.warning("lookup of externalId %s failed (%s)", external_id, error.key)
        return None


async def cancel_withdrawal(
    sessions: async_sessionmaker[AsyncSession], assetpay: AssetPayClient, *, user_id: str, trade_id: str
) -> Any:
    """Ask AssetPay to cancel what can still be cancelled; the refund arrives through the trade's callbacks."""
    async with sessions() as session:
        user = await load_user(session, user_id)
        try:
            key = uuid.UUID(trade_id)
        except ValueError:
            key = None
        trade = await session.get(Trade, key) if key is not None else None
    if trade is None or trade.user_id != user_id or trade.type != TradeType.WITHDRAW.value:
        raise NotFound("No such withdrawal", key="TRADE_NOT_FOUND")
    if Status(trade.status).is_final:
        raise Conflict(f"The withdrawal is already {trade.status}; nothing is left to cancel", key="TRADE_FINAL")
    reference = trade.assetpay_id or trade.external_id
    assert reference is not None
    try:
        return await assetpay.cancel_withdrawal(identity_of(user), reference)
    except AssetPayError as error:
        raise from_assetpay(error) from None
