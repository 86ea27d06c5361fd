"""Every table: the one Python shape of each (the money path's `TradeRow` is checked against `Trade` by a test).

The schema changes only through Alembic migrations; these models are what `alembic check` compares against.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from assetpay_merchant.core.policy import EntryKind, Status, TradeType
from assetpay_merchant.core.vocabulary import MAX_EXTERNAL_ID_LENGTH, MAX_USER_ID_LENGTH, STEAM_ID_PATTERN
from assetpay_merchant.store.base import Base, MoneyColumn

MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_ACTOR_LENGTH = 128


class User(Base):
    """An end user of the merchant, known by the merchant's own id."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(f"steam_id ~ '{STEAM_ID_PATTERN}'", name="steam_id_format"),)

    id: Mapped[str] = mapped_column(String(MAX_USER_ID_LENGTH), primary_key=True)
    steam_id: Mapped[str] = mapped_column(String(17), unique=True)
    trade_url: Mapped[str] = mapped_column(Text)
    client_data: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


def _in(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Trade(Base):
    """A deposit or withdrawal: our record of AssetPay's trade and what it has posted to the ledger so far."""

    __tablename__ = "trades"
    __table_args__ = (
        CheckConstraint(_in("type", [t.value for t in TradeType]), name="type_known"),
        CheckConstraint(_in("status", [s.value for s in Status]), name="status_known"),
        CheckConstraint("total_price >= 0 AND pre_credit >= 0 AND pending_credit >= 0", name="amounts_positive"),
        CheckConstraint("authorized_amount IS NULL OR authorized_amount > 0", name="authorized_positive"),
        CheckConstraint("approved_amount IS NULL OR approved_amount > 0", name="approved_positive"),
        CheckConstraint("needs_review OR review_reason IS NULL", name="review_reason_needs_flag"),
        Index("ix_trades_user_created", "user_id", text("created_at DESC"), text("id DESC")),
        Index("ix_trades_needs_review", "needs_review", postgresql_where=text("needs_review")),
    )
    # Fetch the server-made updated_at with RETURNING at flush: a trade is read after its session has closed.
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    assetpay_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(MAX_EXTERNAL_ID_LENGTH), unique=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    client_steam_id: Mapped[str | None] = mapped_column(String(32))
    external_client_user_id: Mapped[str | None] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(16))
    game: Mapped[str] = mapped_column(String(16), server_default="730")
    status: Mapped[str] = mapped_column(String(16))
    total_price: Mapped[Decimal] = mapped_column(MoneyColumn, server_default="0")
    pre_credit: Mapped[Decimal] = mapped_column(MoneyColumn, server_default="0")
    pending_credit: Mapped[Decimal] = mapped_column(MoneyColumn, server_default="0")
    authorized_amount: Mapped[Decimal | None] = mapped_column(MoneyColumn)
    approved_amount: Mapped[Decimal | None] = mapped_column(MoneyColumn)
    posted: Mapped[Decimal] = mapped_column(MoneyColumn, server_default="0")
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    is_instant: Mapped[bool | None] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(String(64))
    hold_end_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    needs_review: Mapped[bool] = mapped_column(Boolean, server_default="false")
    review_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


TRADE_HISTORY_ACTIONS = ("resolved",)


class TradeHistory(Base):
    """What people did about a trade (taking it off the review queue, with their note). Append-only: a trigger
    refuses UPDATE and DELETE, so the record of who decided what, and why, is never erased."""

    __tablename__ = "trade_history"
    __table_args__ = (
        CheckConstraint(f"action IN ({', '.join(repr(a) for a in TRADE_HISTORY_ACTIONS)})", name="action_known"),
        Index("ix_trade_history_trade_id_id", "trade_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    trade_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("trades.id"))
    action: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(MAX_ACTOR_LENGTH))
    review_reason: Mapped[str | None] = mapped_column(Text)
    """What the trade was flagged for when this was done."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LedgerEntry(Base):
    """One movement of a user's money. Append-only: a trigger refuses UPDATE and DELETE."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_nonzero"),
        CheckConstraint(f"kind IN ({', '.join(repr(k.value) for k in EntryKind)})", name="kind_known"),
        # An adjustment says why and who; it belongs to no trade (a trade's entries are settlement's alone).
        CheckConstraint(
            "kind <> 'adjustment' OR (reason IS NOT NULL AND actor IS NOT NULL AND trade_id IS NULL)",
            name="adjustment_accounted",
        ),
        Index("ix_ledger_entries_user_id_id", "user_id", text("id DESC")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    trade_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("trades.id"), index=True)
    amount: Mapped[Decimal] = mapped_column(MoneyColumn)
    kind: Mapped[str] = mapped_column(String(16))
    balance_after: Mapped[Decimal] = mapped_column(MoneyColumn)
    reason: Mapped[str | None] = mapped_column(Text)
    """Why an operator posted an adjustment (NULL on the entries trades post: their trade says why)."""
    actor: Mapped[str | None] = mapped_column(String(MAX_ACTOR_LENGTH))
    """Who posted an adjustment (the X-Actor of the request, or the CLI's --actor)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Balance(Base):
    """A cache of the sum of a user's ledger entries, kept in the same transaction as every entry."""

    __tablename__ = "balances"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    available: Mapped[Decimal] = mapped_column(MoneyColumn, server_default="0")
    last_event_id: Mapped[int] = mapped_column(BigInteger, server_default="0")
    """The id of the user's newest event: the counter their events are numbered by (one row lock orders them)."""
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


EVENT_TYPES = ("trade.updated", "balance.updated")


class Event(Base):
    """The outbox of live events: written in the transaction that caused them, numbered 1, 2, 3... per user in
    commit order, and kept for replay (`?since=`) until the retention purge."""

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint(f"type IN ({', '.join(repr(t) for t in EVENT_TYPES)})", name="type_known"),
        Index("ix_events_created_at", "created_at"),
    )

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApprovalVerdict(Base):
    """Our one answer to AssetPay's question "may this withdrawal go ahead?", repeated on every re-ask."""

    __tablename__ = "approval_verdicts"
    __table_args__ = (
        UniqueConstraint("subject", "subject_id"),
        CheckConstraint("subject IN ('trade', 'crypto_withdrawal')", name="subject_known"),
        CheckConstraint("verdict IN ('approve', 'reject')", name="verdict_known"),
        CheckConstraint("verdict = 'approve' OR reason IS NOT NULL", name="reject_has_reason"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    subject: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(128))
    trade_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("trades.id"))
    verdict: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    amount: Mapped[Decimal | None] = mapped_column(MoneyColumn)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """Every signed callback we accepted the signature of, with its raw body and what we did with it."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    subject_id: Mapped[str | None] = mapped_column(String(128), index=True)
    trade_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("trades.id"))
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    raw_body: Mapped[str] = mapped_column(Text)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("user_id", "key"),
        CheckConstraint("(response_status IS NULL) = (response_body IS NULL)", name="response_complete"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(MAX_IDEMPOTENCY_KEY_LENGTH))
    fingerprint: Mapped[str] = mapped_column(String(64))
    trade_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("trades.id"))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RateBucket(Base):
    """A token bucket shared by every process: the merchant's AssetPay budget per route, or one user's allowance
    (store/ratelimits.py). Refilled lazily from `updated_at`; a missing row is a full bucket, which is why the
    table is UNLOGGED (migration 0006): a take waits for no WAL flush, and a crash that empties it refills them."""

    __tablename__ = "rate_buckets"
    __table_args__ = {"prefixes": ["UNLOGGED"]}

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
