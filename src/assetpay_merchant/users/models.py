from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from assetpay_merchant.db import Base

STEAM_ID_PATTERN = r"^76561\d{12}$"
TRADE_URL_PATTERN = r"^https://steamcommunity\.com/tradeoffer/new/\?partner=\d{1,10}&token=[A-Za-z0-9_-]{8}$"


class User(Base):
    """An end user of the merchant, known by the merchant's own id."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(f"steam_id ~ '{STEAM_ID_PATTERN}'", name="steam_id_format"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    steam_id: Mapped[str] = mapped_column(String(17), unique=True)
    trade_url: Mapped[str] = mapped_column(Text)
    client_data: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
