"""A fake but deterministic world of skins: every Steam id owns the same inventory on every run, and the market
lists the same items, so developers and tests can rely on ids and prices.

Pure functions only; the sandbox state layers price changes and reservations on top.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from assetpay_merchant.core.vocabulary import GameId, MarketSort

CS2 = int(GameId.CS2)
RUST = int(GameId.RUST)
GAMES = frozenset(int(game) for game in GameId)
SORTS = tuple(sort.value for sort in MarketSort)
CENT = Decimal("0.01")

_CS2_BASE: tuple[tuple[str, str, str], ...] = (
    ("AK-47 | Redline (Field-Tested)", "Rifle", "38.50"),
    ("AWP | Asiimov (Field-Tested)", "Sniper Rifle", "112.00"),
    ("M4A1-S | Printstream (Minimal Wear)", "Rifle", "245.00"),
    ("Glock-18 | Water Elemental (Field-Tested)", "Pistol", "4.20"),
    ("USP-S | Kill Confirmed (Minimal Wear)", "Pistol", "61.75"),
    ("Desert Eagle | Blaze (Factory New)", "Pistol", "640.00"),
    ("AK-47 | Slate (Field-Tested)", "Rifle", "3.10"),
    ("M4A4 | Neo-Noir (Field-Tested)", "Rifle", "17.80"),
    ("AWP | Neo-Noir (Field-Tested)", "Sniper Rifle", "24.60"),
    ("P250 | See Ya Later (Minimal Wear)", "Pistol", "2.35"),
    ("MP9 | Starlight Protector (Field-Tested)", "SMG", "6.90"),
    ("Operation Breakout Weapon Case", "Container", "5.45"),
    ("Revolution Case", "Container", "0.62"),
    ("Sticker | Crown (Foil)", "Sticker", "480.00"),
    ("★ Karambit | Doppler (Factory New)", "Knife", "1150.00"),
    ("★ Sport Gloves | Vice (Field-Tested)", "Gloves", "2890.00"),
    ("FAMAS | Commemoration (Field-Tested)", "Rifle", "9.99"),
    ("Five-SeveN | Hyper Beast (Field-Tested)", "Pistol", "3.48"),
    ("SSG 08 | Dragonfire (Field-Tested)", "Sniper Rifle", "21.30"),
    ("Galil AR | Chatterbox (Field-Tested)", "Rifle", "14.15"),
)
_RUST_BASE: tuple[tuple[str, str, str], ...] = (
    ("Tempered AK47", "Weapon", "42.00"),
    ("Glory AK47", "Weapon", "65.50"),
    ("No Mercy Jacket", "Clothing", "18.25"),
    ("Big Grin", "Clothing", "310.00"),
    ("Alien Red", "Weapon", "120.00"),
    ("Punishment Mask", "Clothing", "95.40"),
    ("Blackout Hoodie", "Clothing", "12.80"),
    ("Whiteout Facemask", "Clothing", "88.00"),
    ("Neon Chest", "Deployable", "3.75"),
    ("Azul Chestplate", "Clothing", "7.60"),
    ("Forest Raiders Garage Door", "Deployable", "5.20"),
    ("Playmat Sleeping Bag", "Deployable", "0.35"),
)
_BASE = {CS2: _CS2_BASE, RUST: _RUST_BASE}
_INVENTORY_SIZE = {CS2: 18, RUST: 10}
_MARKET_SIZE = {CS2: 48, RUST: 24}


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One skin: in a user's inventory (deposits) or listed on the market (withdrawals)."""

    id: str
    asset_id: str
    appid: int
    market_hash_name: str
    type: str
    price: Decimal
    amount: int = 1
    accepted: bool = True
    slot: int = 0  # the market position a listing fills (a sold listing is replaced by the next one)

    @property
    def name(self) -> str:
        """The display name: the market name without the wear in brackets."""
        head, sep, _ = self.market_hash_name.partition(" (")
        return head if sep else self.market_hash_name

    @property
    def exterior(self) -> str | None:
        _, sep, tail = self.market_hash_name.partition(" (")
        return tail.rstrip(")") if sep else None

    @property
    def icon_url(self) -> str:
        digest = hashlib.sha256(self.market_hash_name.encode()).hexdigest()[:32]
        return f"https://community.akamai.steamstatic.com/economy/image/sandbox-{digest}"

    def wire(self) -> dict[str, Any]:
        """The Item object of AssetPay's inventory and market answers."""
        item: dict[str, Any] = {
            "id": self.id,
            "assetId": self.asset_id,
            "appid": self.appid,
            "name": self.name,
            "marketHashName": self.market_hash_name,
            "type": self.type,
            "iconUrl": self.icon_url,
            "tradable": True,
            "amount": self.amount,
            "marketPrice": self.price,
            "offer": {"price": self.price, "accepted": self.accepted},
        }
        if self.exterior:
            item["exterior"] = self.exterior
        return item


def _digest(*parts: object) -> bytes:
    return hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()


def _price(base: str, digest: bytes, low: int, spread: int) -> Decimal:
    """The base price scaled by a factor of low..low+spread percent picked by the digest."""
    factor = Decimal(low + digest[4] % (spread + 1)) / 100
    return max(CENT * 3, (Decimal(base) * factor).quantize(CENT))


def inventory(steam_id: str, game: int) -> list[CatalogItem]:
    """The Steam user's inventory for the game; the same every time for the same Steam id."""
    items = []
    for index in range(_INVENTORY_SIZE[game]):
        digest = _digest("inventory", steam_id, game, index)
        name, kind, base = _BASE[game][int.from_bytes(digest[:4], "big") % len(_BASE[game])]
        asset_id = str(10_000_000_000 + int.from_bytes(digest[8:16], "big") % 90_000_000_000)
        items.append(
            CatalogItem(
                id=f"{game}_{asset_id}",
                asset_id=asset_id,
                appid=game,
                market_hash_name=name,
                type=kind,
                price=_price(base, digest, 85, 30),
                amount=1 if game == CS2 else 1 + digest[5] % 3,
                accepted=digest[6] % 9 != 0,  # about one item in nine is not bought by AssetPay
            )
        )
    return items


def market(game: int, generations: Mapping[int, int] | None = None) -> list[CatalogItem]:
    """The market listings of the game. Each slot holds one listing; when it is bought the slot is restocked with
    the next generation (a new id and price), so the market never runs dry. Ids are stable UUIDs."""
    items = []
    for slot in range(_MARKET_SIZE[game]):
        generation = (generations or {}).get(slot, 0)
        digest = _digest("market", game, slot, generation) if generation else _digest("market", game, slot)
        name, kind, base = _BASE[game][slot % len(_BASE[game])]
        asset_id = str(20_000_000_000 + int.from_bytes(digest[8:16], "big") % 70_000_000_000)
        items.append(
            CatalogItem(
                id=str(uuid.UUID(bytes=digest[16:32], version=4)),
                asset_id=asset_id,
                appid=game,
                market_hash_name=name,
                type=kind,
                price=_price(base, digest, 90, 30),
                slot=slot,
            )
        )
    return items


def with_price(item: CatalogItem, price: Decimal | None) -> CatalogItem:
    return item if price is None else replace(item, price=price)


def select(
    items: Iterable[CatalogItem],
    *,
    search: str | None = None,
    sort: str | None = None,
    min_price: Decimal | None = None,
    max_price: Decimal | None = None,
) -> list[CatalogItem]:
    """Filter by name and price, then order; `relevance` (and anything unknown) keeps the catalog order."""
    needle = (search or "").strip().casefold()
    chosen = [
        item
        for item in items
        if (not needle or needle in item.market_hash_name.casefold())
        and (min_price is None or item.price >= min_price)
        and (max_price is None or item.price <= max_price)
    ]
    if sort in ("priceAsc", "priceDesc"):
        chosen.sort(key=lambda item: (item.price, item.id), reverse=sort == "priceDesc")
    elif sort in ("nameAsc", "nameDesc"):
        chosen.sort(key=lambda item: (item.market_hash_name.casefold(), item.id), reverse=sort == "nameDesc")
    return chosen


def page(items: Sequence[CatalogItem], *, page: int, size: int) -> list[CatalogItem]:
    start = (page - 1) * size
    return list(items[start : start + size])
