"""Our record of AssetPay's trades: finding (and locking) the trade a callback is about, and merging what it says."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from assetpay_merchant.ledger.policy import Status, Transition, merge_items, transition
from assetpay_merchant.trades.models import Trade
from assetpay_merchant.users.models import User
from assetpay_merchant.webhooks.payloads import TradePayload

UNKNOWN_USER = "no user of ours matches externalClientUserId or clientSteamID"


async def find_user_id(session: AsyncSession, payload: TradePayload) -> str | None:
    """Our user: `externalClientUserId` is our own id; failing that, the Steam id they traded with."""
    if payload.external_client_user_id is None and payload.client_steam_id is None:
        return None
    conditions = []
    if payload.external_client_user_id is not None:
        conditions.append(User.id == payload.external_client_user_id)
    if payload.client_steam_id is not None:
        conditions.append(User.steam_id == payload.client_steam_id)
    rows = (await session.execute(select(User.id, User.steam_id).where(or_(*conditions)))).all()
    by_id = [user_id for user_id, _ in rows if user_id == payload.external_client_user_id]
    return by_id[0] if by_id else (rows[0][0] if rows else None)


def _match(payload: TradePayload) -> Any:
    """AssetPay's id, or (for a trade we recorded before AssetPay answered) our externalId."""
    if payload.external_id is None:
        return Trade.assetpay_id == payload.id
    return or_(
        Trade.assetpay_id == payload.id,
        (Trade.external_id == payload.external_id) & Trade.assetpay_id.is_(None),
    )


async def _select_locked(session: AsyncSession, payload: TradePayload) -> Trade | None:
    result = await session.execute(
        select(Trade)
        .where(_match(payload))
        .order_by((Trade.assetpay_id == payload.id).desc().nulls_last())
        .limit(1)
        .with_for_update()
    )
    return result.scalar_one_or_none()


def _new_trade_values(payload: TradePayload, user_id: str | None) -> dict[str, Any]:
    return {
        "assetpay_id": payload.id,
        "external_id": payload.external_id,
        "user_id": user_id,
        "client_steam_id": payload.client_steam_id,
        "external_client_user_id": payload.external_client_user_id,
        "type": payload.type.value,
        "game": payload.game,
        "status": payload.status.value,
        "total_price": payload.total_price,
        "pre_credit": payload.pre_credit or 0,
        "pending_credit": payload.pending_credit or 0,
        "items": [item.stored() for item in payload.items],
        "is_instant": payload.is_instant,
        "error": payload.error,
        "hold_end_date": payload.hold_end_date,
    }


async def lock_for_callback(session: AsyncSession, payload: TradePayload) -> tuple[Trade, bool]:
    """The trade this callback is about, locked for the rest of the transaction; created if we never saw it.

    Returns `(trade, created)`. Concurrent first deliveries of one trade race on the unique AssetPay id: one
    inserts, the others wait for it and then lock the row it made.
    """
    trade = await _select_locked(session, payload)
    if trade is not None:
        if trade.user_id is None:  # the user may have been registered since we first saw the trade
            trade.user_id = await find_user_id(session, payload)
        return trade, False
    values = _new_trade_values(payload, await find_user_id(session, payload))
    inserted = await session.scalar(pg_insert(Trade).values(**values).on_conflict_do_nothing().returning(Trade.id))
    if inserted is None and payload.external_id is not None:
        # The externalId is taken by another trade of the same basket (AssetPay split it): keep ours unlinked.
        values["external_id"] = None
        inserted = await session.scalar(pg_insert(Trade).values(**values).on_conflict_do_nothing().returning(Trade.id))
    trade = await _select_locked(session, payload)
    if trade is None:  # pragma: no cover - the row exists by now, whoever inserted it
        raise LookupError(f"trade {payload.id} vanished while being recorded")
    return trade, inserted is not None


def merge_callback(trade: Trade, payload: TradePayload) -> Transition:
    """Fold what a callback says into the locked trade. Older news never moves a trade back.

    A newer status brings its amounts with it; items merge one by one, each keeping its most advanced status;
    a different final status after a final one is kept for review and not applied. The first word from AssetPay
    on a trade we recorded ourselves replaces our provisional amounts and items with AssetPay's.
    """
    first_word = trade.assetpay_id is None
    if first_word:
        trade.assetpay_id = payload.id
        trade.items = []
    step = transition(Status(trade.status), payload.status)
    if step is Transition.CONFLICT:
        trade.flag(f"received {payload.status.value} after final status {trade.status}")
        return step
    incoming_items = [item.stored() for item in payload.items]
    merged = merge_items(trade.items, incoming_items)
    if merged != trade.items:
        trade.items = merged
    if step is Transition.ADVANCE or first_word:
        _adopt(trade, payload)
    return step


def _adopt(trade: Trade, payload: TradePayload) -> None:
    trade.status = payload.status.value
    trade.game = payload.game
    trade.total_price = payload.total_price
    if payload.pre_credit is not None:
        trade.pre_credit = payload.pre_credit
    if payload.pending_credit is not None:
        trade.pending_credit = payload.pending_credit
    trade.error = payload.error or trade.error
    trade.hold_end_date = payload.hold_end_date or trade.hold_end_date
    if payload.is_instant is not None:
        trade.is_instant = payload.is_instant
