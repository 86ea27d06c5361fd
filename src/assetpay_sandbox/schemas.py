"""The request bodies and query strings AssetPay accepts, validated as strictly as the real gateway does.

Bodies are `additionalProperties: false` at the top level; JSON numbers arrive as int or Decimal (never float) and
strings are never coerced into numbers. Every refusal is VALIDATION_FAILED naming the fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from assetpay_merchant.core.vocabulary import (
    MAX_DEPOSIT_ITEMS,
    MAX_EXTERNAL_ID_LENGTH,
    MAX_ITEM_AMOUNT,
    MAX_ITEM_ID_LENGTH,
    MAX_WITHDRAW_ITEMS,
    MAX_WITHDRAW_PRICE,
    MIN_ITEM_ID_LENGTH,
)
from assetpay_sandbox.catalog import GAMES
from assetpay_sandbox.tokens import STEAM_ID, TRADE_URL
from assetpay_sandbox.wire import validation_failed


def _json_number(value: Any) -> Any:
    """A JSON number (int or Decimal), never a string or a boolean."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError("must be a number")
    return Decimal(value)


Number = Annotated[Decimal, BeforeValidator(_json_number)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Part(BaseModel):
    """A nested object: strict types, but extra keys are tolerated, as in AssetPay's schema."""

    model_config = ConfigDict(strict=True, extra="ignore")


def _game(value: str) -> str:
    if not value.isdigit() or int(value) not in GAMES:
        raise ValueError("must be '730' (CS2) or '252490' (Rust)")
    return value


class ClientData(_Part):
    total_wager: Number | None = Field(default=None, alias="totalWager", ge=0)
    registration_date: str | None = Field(default=None, alias="registrationDate")
    kyc_hash: str | None = Field(default=None, alias="kycHash")
    kyc_level: int | None = Field(default=None, alias="kycLevel", ge=0)
    fiat_deposits: bool | None = Field(default=None, alias="fiatDeposits")
    crypto_deposits: bool | None = Field(default=None, alias="cryptoDeposits")

    @field_validator("registration_date")
    @classmethod
    def _date_time(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError("must be an ISO-8601 date-time") from None
        return value


class AuthenticateClient(_Body):
    client_steam_id: str = Field(alias="clientSteamId", pattern=STEAM_ID.pattern)
    client_trade_url: str = Field(alias="clientTradeUrl", pattern=TRADE_URL.pattern)
    client_data: ClientData | None = Field(default=None, alias="clientData")
    client_id: str | None = Field(default=None, alias="clientId", max_length=128)


class DepositItem(_Part):
    item_id: str = Field(alias="itemId", min_length=MIN_ITEM_ID_LENGTH, max_length=MAX_ITEM_ID_LENGTH)
    price: Number = Field(gt=0)
    amount: int = Field(default=1, ge=1, le=MAX_ITEM_AMOUNT)


class DepositRequest(_Body):
    items: list[DepositItem] = Field(min_length=1, max_length=MAX_DEPOSIT_ITEMS)
    game: str = "730"
    external_id: str | None = Field(default=None, alias="externalId", min_length=1, max_length=MAX_EXTERNAL_ID_LENGTH)
    is_instant: bool = Field(default=False, alias="isInstant")

    _check_game = field_validator("game")(_game)


class WithdrawItem(_Part):
    item_id: str = Field(alias="itemId", min_length=MIN_ITEM_ID_LENGTH, max_length=MAX_ITEM_ID_LENGTH)
    price: Number = Field(gt=0, le=MAX_WITHDRAW_PRICE)
    max_price: Number | None = Field(default=None, alias="maxPrice", gt=0, le=MAX_WITHDRAW_PRICE)
    external_id: str | None = Field(default=None, alias="externalId", min_length=1, max_length=MAX_EXTERNAL_ID_LENGTH)


class WithdrawRequest(_Body):
    items: list[WithdrawItem] = Field(min_length=1, max_length=MAX_WITHDRAW_ITEMS)
    slippage_bps: int = Field(default=0, alias="slippageBps", ge=0, le=2000)
    auto_cancel: int = Field(default=30, alias="autoCancel", ge=30, le=720)
    game: str = "730"
    external_id: str | None = Field(default=None, alias="externalId", min_length=1, max_length=MAX_EXTERNAL_ID_LENGTH)

    _check_game = field_validator("game")(_game)


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class VerificationStart(_Body):
    email: str | None = Field(default=None, max_length=254)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.fullmatch(value):
            raise ValueError("must be an email address")
        return value


BodyT = TypeVar("BodyT", bound=BaseModel)


def parse_body(model: type[BodyT], body: Any) -> BodyT:
    """Validate a decoded JSON body; VALIDATION_FAILED with `{dotted.path: reason}` otherwise."""
    if not isinstance(body, dict):
        raise validation_failed({"body": "must be a JSON object"})
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        fields: dict[str, str] = {}
        for error in exc.errors():
            path = ".".join(str(part) for part in error["loc"]) or "body"
            reason = (
                "is not allowed" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
            )
            fields.setdefault(path, reason)
        raise validation_failed(fields) from None


class Query:
    """Typed access to a query string; every bad value is collected and refused together."""

    def __init__(self, params: Mapping[str, str]) -> None:
        self.params = params
        self.errors: dict[str, str] = {}

    def text(self, name: str, *, max_length: int | None = None) -> str | None:
        value = self.params.get(name)
        if value is not None and max_length is not None and len(value) > max_length:
            self.errors[name] = f"must be at most {max_length} characters"
        return value or None

    def integer(self, name: str, default: int, *, low: int = 1, high: int | None = None) -> int:
        raw = self.params.get(name)
        if raw is None or raw in ("", "null"):
            return default
        if not re.fullmatch(r"-?\d+", raw):
            self.errors[name] = "must be an integer"
            return default
        value = int(raw)
        if value < low or (high is not None and value > high):
            self.errors[name] = f"must be between {low} and {high}" if high else f"must be at least {low}"
            return default
        return value

    def price(self, name: str) -> Decimal | None:
        raw = self.params.get(name)
        if raw is None or raw in ("", "null"):
            return None
        try:
            value = Decimal(raw)
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite() or value < 0:
            self.errors[name] = "must be a number of at least 0"
            return None
        return value

    def flag(self, name: str) -> bool:
        raw = self.params.get(name)
        if raw is None or raw == "":
            return False
        if raw not in ("true", "false", "0", "1"):
            self.errors[name] = "must be true or false"
        return raw in ("true", "1")

    def game(self) -> int:
        value = self.integer("game", 730)
        if "game" not in self.errors and value not in GAMES:
            self.errors["game"] = "must be 730 (CS2) or 252490 (Rust)"
        return value if value in GAMES else 730

    def choice(self, name: str, options: tuple[str, ...]) -> str | None:
        value = self.params.get(name)
        if value is not None and value not in options:
            self.errors[name] = f"must be one of {', '.join(options)}"
            return None
        return value

    def check(self) -> None:
        if self.errors:
            raise validation_failed(self.errors)
