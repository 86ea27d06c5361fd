"""AssetPay's word on a trade, as its callbacks and trade answers carry it: parsed strictly enough to keep money
exact and leniently enough to accept both API editions (upper-case statuses, ESCROW).

Bodies are decoded with `parse_float=Decimal`, so a JSON number never passes through a float.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from assetpay_merchant.core.errors import ValidationFailed, fields_from_pydantic
from assetpay_merchant.core.money import ZERO, fits_money_column, format_money
from assetpay_merchant.core.policy import Status, TradeType, parse_status, parse_type


class InvalidJSON(ValueError):
    pass


def decode_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")  # json.loads(bytes) would also sniff UTF-16/32
    except UnicodeDecodeError as exc:
        raise InvalidJSON(str(exc)) from exc
    try:
        body = json.loads(text, parse_float=Decimal)
    except ValueError as exc:  # malformed, or an integer longer than Python converts
        raise InvalidJSON(str(exc)) from exc
    except RecursionError:  # nested deeper than the decoder goes: no trade we accept looks like that
        raise InvalidJSON("JSON nested too deeply") from None
    if "\\u" in text:  # only a \u escape can make a NUL or a lone surrogate (raw ones are not valid JSON)
        problem = _unstorable(body)
        if problem is not None:
            raise InvalidJSON(problem)
    return body


def _unstorable(value: Any) -> str | None:
    """Why PostgreSQL could not store a string in the body (NUL, or a lone UTF-16 surrogate), if one is there."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "NUL characters cannot be stored"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "lone UTF-16 surrogates cannot be stored"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _exact_amount(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value < 0:
        raise ValueError("must not be negative")
    if not fits_money_column(value):
        raise ValueError("has more digits than we can store exactly")
    return value


def _text_if_number(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _lenient(parse: Any) -> BeforeValidator:
    """Accept either API edition's spelling (any case, legacy names); anything else fails validation."""
    return BeforeValidator(lambda value: parse(value) if isinstance(value, str) else value)


Amount = Annotated[Decimal, AfterValidator(_exact_amount)]
"""Non-negative, finite, and storable exactly in NUMERIC(24, 8). Item prices feed a withdrawal's charge when
items fail, so a negative one would credit the user."""
TextId = Annotated[str, BeforeValidator(_text_if_number)]
TradeStatus = Annotated[Status, _lenient(parse_status)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ItemOffer(_Lenient):
    price: Amount


class TradeItem(_Lenient):
    id: TextId
    asset_id: str | None = Field(default=None, alias="assetId")
    market_hash_name: str | None = Field(default=None, alias="marketHashName")
    name: str | None = None
    icon_url: str | None = Field(default=None, alias="iconUrl")
    amount: Decimal = Decimal(1)
    status: TradeStatus | None = None
    error: str | None = None
    offer: ItemOffer | None = None

    @field_validator("amount")
    @classmethod
    def _amount(cls, value: Decimal) -> Decimal:
        if not value.is_finite() or value <= 0:
            raise ValueError("amount must be positive")
        if not fits_money_column(value):  # bounds int(amount) and price * amount
            raise ValueError("amount has more digits than we can store exactly")
        return value

    @property
    def price(self) -> Decimal:
        return self.offer.price if self.offer is not None else ZERO

    def stored(self) -> dict[str, Any]:
        """The item as we keep and show it: money as a decimal string, nothing AssetPay-internal."""
        shown = {
            "id": self.id,
            "assetId": self.asset_id,
            "marketHashName": self.market_hash_name,
            "name": self.name,
            "iconUrl": self.icon_url,
            "price": format_money(self.price),
            "amount": int(self.amount) if self.amount == self.amount.to_integral() else str(self.amount),
            "status": self.status.value if self.status else None,
            "error": self.error,
        }
        return {key: value for key, value in shown.items() if value is not None}


class TradeSnapshot(_Lenient):
    """AssetPay's Trade at one moment: the body of `{"trade": Trade}` callbacks (withdraw + initiated asks for our
    approval), of trade answers and of lookups."""

    id: TextId = Field(min_length=1, max_length=64)
    type: Annotated[TradeType, _lenient(parse_type)]
    status: TradeStatus
    total_price: Amount = Field(alias="totalPrice")
    pre_credit: Amount | None = Field(default=None, alias="preCredit")
    pending_credit: Amount | None = Field(default=None, alias="pendingCredit")
    external_id: str | None = Field(default=None, alias="externalId", max_length=128)
    external_client_user_id: str | None = Field(default=None, alias="externalClientUserId", max_length=128)
    client_steam_id: str | None = Field(default=None, alias="clientSteamID", max_length=32)
    game: TextId = Field(default="730", max_length=16)
    items: list[TradeItem] = Field(default_factory=list)
    is_instant: bool | None = Field(default=None, alias="isInstant")
    error: str | None = Field(default=None, max_length=64)
    hold_end_date: datetime | None = Field(default=None, alias="holdEndDate")

    @field_validator("hold_end_date")
    @classmethod
    def _storable_moment(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            value.astimezone(UTC)  # as the driver converts it before storing it
        except OverflowError:
            raise ValueError("is out of range") from None
        return value

    @model_validator(mode="after")
    def _credits_add_up(self) -> TradeSnapshot:
        if self.type is not TradeType.DEPOSIT:
            return self
        pre, pending = self.pre_credit, self.pending_credit
        if pre is None:
            pre = ZERO if pending is None else self.total_price - pending
        if pending is None:
            pending = self.total_price - pre
        if pre < 0 or pending < 0 or pre + pending != self.total_price:
            raise ValueError(
                f"preCredit + pendingCredit must equal totalPrice ({pre} + {pending} != {self.total_price})"
            )
        self.pre_credit, self.pending_credit = pre, pending
        return self

    @property
    def asks_for_approval(self) -> bool:
        return self.type is TradeType.WITHDRAW and self.status is Status.INITIATED


class CallbackKind(StrEnum):
    TRADE = "trade"
    APPROVAL = "approval"
    CRYPTO_WITHDRAWAL = "crypto_withdrawal"
    CRYPTO_DEPOSIT = "crypto_deposit"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Callback:
    kind: CallbackKind
    body: Any
    trade: TradeSnapshot | None = None

    @property
    def subject_id(self) -> str | None:
        """The id of what the callback is about (trade id, crypto withdrawal or deposit id), when it has one."""
        if self.trade is not None:
            return self.trade.id
        inner = self.body.get(self.kind_key) if isinstance(self.body, dict) and self.kind_key else None
        value = inner.get("id") if isinstance(inner, dict) else None
        return str(value)[:128] if value is not None else None

    @property
    def kind_key(self) -> str | None:
        return {
            CallbackKind.CRYPTO_WITHDRAWAL: "withdrawal",
            CallbackKind.CRYPTO_DEPOSIT: "deposit",
        }.get(self.kind)


class InvalidTrade(ValidationFailed):
    """A trade callback we cannot apply: kept for review, nothing moved."""

    key = "INVALID_TRADE"


def classify(body: Any) -> Callback:
    """`trade`, then `withdrawal`, then `deposit`; anything else is unknown. Raises InvalidTrade for a bad trade."""
    if not isinstance(body, dict):
        return Callback(CallbackKind.UNKNOWN, body)
    if isinstance(body.get("trade"), dict):
        try:
            trade = TradeSnapshot.model_validate(body["trade"])
        except ValidationError as exc:
            fields = fields_from_pydantic(exc.errors(), root="trade")
            raise InvalidTrade(
                f"Trade callback rejected: {'; '.join(f'{k}: {v}' for k, v in fields.items())}", fields=fields
            ) from exc
        kind = CallbackKind.APPROVAL if trade.asks_for_approval else CallbackKind.TRADE
        return Callback(kind, body, trade)
    if isinstance(body.get("withdrawal"), dict):
        return Callback(CallbackKind.CRYPTO_WITHDRAWAL, body)
    if isinstance(body.get("deposit"), dict):
        return Callback(CallbackKind.CRYPTO_DEPOSIT, body)
    return Callback(CallbackKind.UNKNOWN, body)


def is_test_ping(body: Any) -> bool:
    return isinstance(body, dict) and body.get("test") is True
