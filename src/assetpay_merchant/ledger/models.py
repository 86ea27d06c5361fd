from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from assetpay_merchant.db import Base
from assetpay_merchant.ledger.policy import EntryKind
from assetpay_merchant.money import MoneyColumn


class LedgerEntry(Base):
    """One movement of a user's money. Append-only: a trigger refuses UPDATE and DELETE."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_nonzero"),
        CheckConstraint(f"kind IN ({', '.join(repr(k.value) for k in EntryKind)})", name="kind_known"),
        Index("ix_ledger_entries_user_id_id", "user_id", text("id DESC")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    trade_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("trades.id"), index=True)
    amount: Mapped[Decimal] = mapped_column(MoneyColumn)
    kind: Mapped[str] = mapped_column(String(16))
    balance_after: Mapped[Decimal] = mapped_column(MoneyColumn)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Balance(Base):
    """A cache of the sum of a user's ledger entries, kept in the same transaction as every entry."""

    __tablename__ = "balances"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    available: Mapped[Decimal] = mapped_column(MoneyColumn, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


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
