"""What goes into and comes out of the AssetPay client: plain values in, typed results out, money as Decimal.

Results are parsed leniently (unknown fields are kept in `model_extra`) so a field AssetPay adds tomorrow does not
break a trade we just created; money fields are Decimals decoded straight from the JSON text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


@dataclass(frozen=True, slots=True)
class DepositItem:
    """One inventory item to deposit; `price` must equal the item's current inventory `offer.price`."""

    item_id: str
    price: Decimal
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class WithdrawItem:
    """One market listing to buy; a higher current price is refused unless it fits `max_price`."""

    item_id: str
    price: Decimal
    max_price: Decimal | None = None
    external_id: str | None = None


class _Result(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _text_id(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ItemOffer(_Result):
    price: Decimal
    delivery: str | None = None
    max_amount: Decimal | None = Field(default=None, alias="maxAmount")
    accepted: bool | None = None


class Item(_Result):
    """An inventory item, market listing or trade item (fields not listed here stay in `model_extra`).

    A page holds up to 500 of them, so ids sent as JSON numbers become text in pydantic's own code
    (`coerce_numbers_to_str`), not in a Python validator called twice per item."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, coerce_numbers_to_str=True)

    id: str
    item_id: str | None = Field(default=None, alias="itemId")
    external_id: str | None = Field(default=None, alias="externalId")
    asset_id: str | None = Field(default=None, alias="assetId")
    appid: int | None = None
    name: str | None = None
    market_hash_name: str | None = Field(default=None, alias="marketHashName")
    icon_url: str | None = Field(default=None, alias="iconUrl")
    tradable: bool | None = None
    amount: Decimal | None = None
    status: str | None = None
    error: str | None = None
    market_price: Decimal | None = Field(default=None, alias="marketPrice")
    offer: ItemOffer | None = None

    @property
    def price(self) -> Decimal | None:
        """The offer price in USD (what a deposit must quote, what a withdrawal costs)."""
        return self.offer.price if self.offer is not None else None


class Inventory(_Result):
    """`GET /client/inventory`: the user's items, and `collateral`, the instant credit available now (USD)."""

    items: list[Item] = Field(alias="inventory")
    count: int
    updated_at: datetime | None = Field(default=None, alias="updatedAt")
    collateral: Decimal


class MarketPage(_Result):
    """`GET /client/market`: one page of listings and the total count."""

    items: list[Item]
    count: int


class Collateral(_Result):
    merchant: Decimal
    provider: Decimal


class Trade(_Result):
    """A trade as AssetPay reports it. Statuses and types are lower-cased (the older edition sent upper case).

    `raw` is the trade object exactly as decoded (Decimals included), for code that parses it its own way.
    """

    id: str
    type: str
    status: str
    source: str | None = None
    external_id: str | None = Field(default=None, alias="externalId")
    external_client_user_id: str | None = Field(default=None, alias="externalClientUserId")
    client_steam_id: str | None = Field(default=None, alias="clientSteamID")
    client_trade_url: str | None = Field(default=None, alias="clientTradeUrl")
    offer_id: str | None = Field(default=None, alias="offerID")
    game: str = "730"
    items: list[Item] = Field(default_factory=list)
    total_price: Decimal = Field(alias="totalPrice")
    pre_credit: Decimal | None = Field(default=None, alias="preCredit")
    pending_credit: Decimal | None = Field(default=None, alias="pendingCredit")
    is_instant: bool | None = Field(default=None, alias="isInstant")
    collateral: Collateral | None = None
    hold_end_date: datetime | None = Field(default=None, alias="holdEndDate")
    reverted_by: str | None = Field(default=None, alias="revertedBy")
    error: str | None = None
    created_at: datetime | None = Field(default=None, alias="createdAt")
    updated_at: datetime | None = Field(default=None, alias="updatedAt")
    related_trades: list[Trade] = Field(default_factory=list, alias="relatedTrades")
    raw: dict[str, Any] = Field(default_factory=dict, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _keep_raw(cls, value: Any) -> Any:
        if isinstance(value, dict) and "raw" not in value:
            return {**value, "raw": value}
        return value

    @field_validator("type", "status", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("id", "game", "offer_id", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _text_id(value)


class CancelledItem(_Result):
    item_id: str = Field(alias="itemId")
    external_id: str | None = Field(default=None, alias="externalId")
    status: str
    reason: str | None = None


class CancelResult(_Result):
    """What a cancel request did, item by item (the refunds themselves arrive through the trade webhook)."""

    trade_id: str = Field(alias="tradeId")
    requested: int
    cancelled: int
    failed: int
    items: list[CancelledItem] = Field(default_factory=list)


# -- identity verification ---------------------------------------------------------------------------------------

MAX_EMAIL_LENGTH = 254
"""The longest address a mail path carries (RFC 5321: 256 octets of path less its angle brackets)."""

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TOP_LABEL = r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])"
EMAIL_PATTERN = rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+{_TOP_LABEL}$"
"""What `start_verification` sends as `email` (AssetPay's `format: email`): an ASCII dot-atom local part, `@`, and a
domain of at least two labels of letters, digits and inner hyphens (at most 63 each) whose last label starts with
a letter and has two characters or more (`xn--` IDNs included). No quoted local parts, IP literals, comments or
Unicode addresses: rarely real, and no mail system of a merchant's users needs them. A plain regex (no look-around)
so that JSON Schema tools generate and check exactly this rule; the total length is capped by MAX_EMAIL_LENGTH."""


def _web_url(value: Any) -> Any:
    """A captureUrl is opened in the user's browser: only an absolute http(s) URL is one to pass on."""
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
    return value


class VerificationProcess(_Result):
    """A Signicat PictureID process (document scan and selfie) AssetPay started for the user."""

    dossier_id: str = Field(alias="dossierId")
    process_id: str | None = Field(default=None, alias="processId")
    capture_url: Annotated[str, AfterValidator(_web_url)] = Field(alias="captureUrl")
    status: str
    """CREATED, CAPTURE_PENDING, PROCESSING, ACCEPTED, REJECTED, ERROR or EXPIRED (kept as sent, so a status
    AssetPay adds later does not make the whole answer unreadable)."""
    created_at: datetime = Field(alias="createdAt")
    completed_at: datetime | None = Field(default=None, alias="completedAt")


class LinkedIdentity(_Result):
    """The verified identity the account is linked to."""

    id: str
    first_name: str | None = Field(default=None, alias="firstName")
    last_name: str | None = Field(default=None, alias="lastName")
    document_country: str | None = Field(default=None, alias="documentCountry")
    linked_at: datetime = Field(alias="linkedAt")


class VerificationStatus(_Result):
    """`GET /client/verification/status`: the user's verification level (0 none, 1 PictureID), the email linking
    goes by, the latest process and the linked identity."""

    level: int = Field(alias="verificationLevel", ge=0)
    email: str | None = None
    latest_process: VerificationProcess | None = Field(default=None, alias="latestProcess")
    linked_identity: LinkedIdentity | None = Field(default=None, alias="linkedIdentity")


class VerificationStarted(_Result):
    """`POST /client/verification/start`: the capture page the user opens to verify."""

    capture_url: Annotated[str, AfterValidator(_web_url)] = Field(alias="captureUrl")
    dossier_id: str = Field(alias="dossierId")


class VerificationLinked(_Result):
    """`POST /client/verification/link`: whether the account is now linked to a verified identity (level 1)."""

    linked: bool
