"""The trading vocabulary shared by our API, the AssetPay client and the database: defined here, once."""

from __future__ import annotations

from decimal import Decimal
from enum import IntEnum, StrEnum


class GameId(IntEnum):
    """AssetPay's games: an integer in query strings, a string (`"730"`) in bodies."""

    CS2 = 730
    RUST = 252490


class MarketSort(StrEnum):
    RELEVANCE = "relevance"
    PRICE_ASC = "priceAsc"
    PRICE_DESC = "priceDesc"
    NAME_ASC = "nameAsc"
    NAME_DESC = "nameDesc"


STEAM_ID_PATTERN = r"^76561\d{12}$"
"""A SteamID64: 76561 followed by 12 digits."""
TRADE_URL_PATTERN = r"^https://steamcommunity\.com/tradeoffer/new/\?partner=\d{1,10}&token=[A-Za-z0-9_-]{8}$"
"""A Steam trade offer URL, exactly as AssetPay accepts it."""
ITEM_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""No control characters: an item id is stored (JSONB cannot hold NUL) and sent on to AssetPay."""
USER_ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
"""Our users' ids, as the merchant platform names them."""

MAX_USER_ID_LENGTH = 128
MAX_CLIENT_ID_LENGTH = 128
MAX_EXTERNAL_ID_LENGTH = 128
MIN_ITEM_ID_LENGTH = 5
MAX_ITEM_ID_LENGTH = 256
MAX_DEPOSIT_ITEMS = 250
MAX_WITHDRAW_ITEMS = 50
MAX_ITEM_AMOUNT = 10_000
MAX_WITHDRAW_PRICE = Decimal(100_000)
MAX_REFS_PER_LOOKUP = 100
