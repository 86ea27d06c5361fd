"""`Idempotency-Key` on our POSTs: the same key and body get the first answer; the same key with another body is a
409; a request whose outcome was lost can be retried with its key and carries on with the same recorded trade.

A claim is a short lease on the key, taken and released in transactions of their own, so no database
transaction stays open while AssetPay is called.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    String,
    UniqueConstraint,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from assetpay_merchant.db import Base
from assetpay_merchant.errors import Conflict

LEASE = timedelta(seconds=60)
MAX_KEY_LENGTH = 255


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("user_id", "key"),
        CheckConstraint("(response_status IS NULL) = (response_body IS NULL)", name="response_complete"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    fingerprint: Mapped[str] = mapped_column(String(64))
    trade_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("trades.id"))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def fingerprint(path: str, body: Any) -> str:
    """What makes two requests "the same": the route and the body, compared as canonical JSON."""
    canonical = json.dumps([path, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """A key we hold the lease on; `trade_id` is set when an earlier attempt already recorded its trade."""

    id: int
    trade_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    body: dict[str, Any]


async def claim(
    sessions: async_sessionmaker[AsyncSession], *, user_id: str, key: str, fingerprint: str, now: datetime
) -> Claim | Replay:
    """Take the key, or say what to answer: the stored response, or 409 when it is reused or busy."""
    async with sessions.begin() as session:
        inserted = await session.scalar(
            pg_insert(IdempotencyKey)
            .values(user_id=user_id, key=key, fingerprint=fingerprint, locked_until=now + LEASE)
            .on_conflict_do_nothing()
            .returning(IdempotencyKey.id)
        )
        if inserted is not None:
            return Claim(inserted, None)
        row = await session.scalar(
            select(IdempotencyKey).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key).with_for_update()
        )
        assert row is not None
        if row.fingerprint != fingerprint:
            raise Conflict("This Idempotency-Key was used with a different request", key="IDEMPOTENCY_KEY_REUSED")
        if row.response_status is not None and row.response_body is not None:
            return Replay(row.response_status, row.response_body)
        if row.locked_until is not None and row.locked_until > now:
            wait = max(1, int((row.locked_until - now).total_seconds()))
            raise Conflict(
                "A request with this Idempotency-Key is still in progress",
                key="IDEMPOTENCY_KEY_IN_USE",
                headers={"Retry-After": str(wait)},
            )
        row.locked_until = now + LEASE
        return Claim(row.id, row.trade_id)


async def attach_trade(session: AsyncSession, claim: Claim, trade_id: uuid.UUID) -> None:
    """Remember the trade this key recorded (in the transaction that records it)."""
    await session.execute(update(IdempotencyKey).where(IdempotencyKey.id == claim.id).values(trade_id=trade_id))


async def finish(
    sessions: async_sessionmaker[AsyncSession], claim: Claim, *, status: int, body: dict[str, Any]
) -> None:
    """Store the answer every later request with this key and body gets."""
    async with sessions.begin() as session:
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.id == claim.id)
            .values(response_status=status, response_body=body, locked_until=None)
        )


async def release(sessions: async_sessionmaker[AsyncSession], claim: Claim) -> None:
    """The outcome is unknown: free the key for a retry, which will carry on with the recorded trade."""
    async with sessions.begin() as session:
        await session.execute(update(IdempotencyKey).where(IdempotencyKey.id == claim.id).values(locked_until=None))
