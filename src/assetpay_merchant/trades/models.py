from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, DateTime, ForeignKey, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from assetpay_merchant.db import Base
from assetpay_merchant.ledger.policy import Status, TradeType
from assetpay_merchant.money import MoneyColumn


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
    external_id: Mapped[str | None] = mapped_column(String(128), unique=True)
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
