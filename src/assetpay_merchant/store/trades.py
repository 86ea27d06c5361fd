"""The `trades` table on the money path: `TradeRow`, and finding, locking, recording and saving trades.

This is the hot path of every callback, so it speaks plain SQL on the unit of work's driver connection (one
prepared statement per step). `TradeRow` is the same table as the ORM's `Trade`: its fields are the table's
columns, in the table's order (a test holds them together), and the SQL below is built from the table itself.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from assetpay_merchant.core import policy
from assetpay_merchant.core.money import ZERO
from assetpay_merchant.store.database import Connection, Record
from assetpay_merchant.store.tables import Trade

UNKNOWN_USER = "no user of ours matches externalClientUserId or clientSteamID"


@dataclass(slots=True)
class TradeRow:
    """One row of `trades`, held under its row lock while a unit of work changes it."""

    id: uuid.UUID
    assetpay_id: str | None
    external_id: str | None
    user_id: str | None
    client_steam_id: str | None
    external_client_user_id: str | None
    type: str
    game: str
    status: str
    total_price: Decimal
    pre_credit: Decimal
    pending_credit: Decimal
    authorized_amount: Decimal | None
    approved_amount: Decimal | None
    posted: Decimal
    items: list[dict[str, Any]]
    is_instant: bool | None
    error: str | None
    hold_end_date: datetime | None
    needs_review: bool
    review_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def new(cls, **columns: Any) -> TradeRow:
        """A trade not yet recorded: the given columns, the table's defaults for the rest (the timestamps are the
        database's, set when it is inserted)."""
        now = datetime.now(UTC)
        defaults: dict[str, Any] = {
            "id": uuid.uuid4(),
            "assetpay_id": None,
            "external_id": None,
            "user_id": None,
            "client_steam_id": None,
            "external_client_user_id": None,
            "game": "730",
            "total_price": ZERO,
            "pre_credit": ZERO,
            "pending_credit": ZERO,
            "authorized_amount": None,
            "approved_amount": None,
            "posted": ZERO,
            "items": [],
            "is_instant": None,
            "error": None,
            "hold_end_date": None,
            "needs_review": False,
            "review_reason": None,
            "created_at": now,
            "updated_at": now,
        }
        return cls(**(defaults | columns))

    @classmethod
    def from_record(cls, record: Record | dict[str, Any]) -> TradeRow:
        values = dict(record)
        values["items"] = json.loads(values["items"])
        return cls(**values)

    def flag(self, reason: str) -> None:
        """Mark for a person to look at; reasons accumulate, each once."""
        reasons = self.review_reason.split("; ") if self.review_reason else []
        if reason not in reasons:
            self.review_reason = "; ".join([*reasons, reason])
        self.needs_review = True

    def unflag(self, reason: str) -> None:
        """Withdraw one reason, now resolved; the flag stays while other reasons remain."""
        remaining = [r for r in (self.review_reason or "").split("; ") if r and r != reason]
        self.review_reason = "; ".join(remaining) or None
        self.needs_review = bool(remaining)

    def facts(self) -> policy.TradeFacts:
        """What the ledger policy needs to know of this trade."""
        trade_type = policy.TradeType(self.type)
        return policy.TradeFacts(
            type=trade_type,
            status=policy.Status(self.status),
            total_price=self.total_price,
            pre_credit=self.pre_credit,
            approved_amount=self.approved_amount,
            items=ledger_items(self.items) if trade_type is policy.TradeType.WITHDRAW else (),
        )


def ledger_items(stored: Sequence[dict[str, Any]]) -> list[policy.Item]:
    """Stored items as the policy sees them: unit price, count and (on withdrawals) their own status."""
    items = []
    for item in stored:
        status = item.get("status")
        items.append(
            policy.Item(
                price=Decimal(str(item.get("price", "0"))),
                amount=Decimal(str(item.get("amount", 1))),
                status=policy.parse_status(status) if status else None,
            )
        )
    return items


COLUMNS: tuple[str, ...] = tuple(column.name for column in Trade.__table__.columns)
_SELECTED = ", ".join("items::text AS items" if name == "items" else name for name in COLUMNS)
SELECT_TRADE = f"SELECT {_SELECTED} FROM trades"  # noqa: S608 (the table's own column names, no input)
_INSERTED = [name for name in COLUMNS if name not in ("created_at", "updated_at", "needs_review", "review_reason")]
_PLACEHOLDERS = ", ".join(f"${n}::text::jsonb" if name == "items" else f"${n}" for n, name in enumerate(_INSERTED, 1))
_SAVED = [name for name in COLUMNS if name not in ("id", "external_id", "created_at", "updated_at")]
_ASSIGNMENTS = ", ".join(
    f"{name} = ${n}::text::jsonb" if name == "items" else f"{name} = ${n}" for n, name in enumerate(_SAVED, 2)
)

_FIND_BY_ID = f"{SELECT_TRADE} WHERE id = $1"
_LOCK_BY_ID = f"{_FIND_BY_ID} FOR UPDATE"
_LOCK_BY_REF = f"""
{SELECT_TRADE}
WHERE assetpay_id = $1 OR (external_id = $2 AND assetpay_id IS NULL)
ORDER BY assetpay_id = $1 DESC NULLS LAST
LIMIT 1
FOR UPDATE
"""
# lock_by_ref and, only when there is no such trade yet, find_user_id for the new one: one round trip for the first
# callback of a trade. The user is looked up behind a one-time filter (`t.id IS NULL`), so a trade found costs no
# lookup.
_LOCK_BY_REF_OR_OWNER = f"""
SELECT t.*, owner.id AS owner FROM (SELECT 1) AS one
LEFT JOIN LATERAL ({_LOCK_BY_REF}) AS t ON true
LEFT JOIN LATERAL (
    SELECT id FROM users WHERE (id = $3 OR steam_id = $4) AND t.id IS NULL
    ORDER BY id = $3 DESC NULLS LAST
    LIMIT 1
) AS owner ON true
"""  # noqa: S608 (the table's own column names, no input)
_INSERT = f"""
INSERT INTO trades ({", ".join(_INSERTED)}) VALUES ({_PLACEHOLDERS})
ON CONFLICT DO NOTHING
RETURNING {_SELECTED}
"""  # noqa: S608 (the table's own column names, no input)
_SAVE = f"UPDATE trades SET {_ASSIGNMENTS}, updated_at = now() WHERE id = $1 RETURNING updated_at"  # noqa: S608
_ORPHANS = """
SELECT id FROM trades
WHERE user_id IS NULL AND (external_client_user_id = $1 OR client_steam_id = $2)
ORDER BY id
"""
_FIND_USER = """
SELECT id FROM users WHERE id = $1 OR steam_id = $2
ORDER BY id = $1 DESC NULLS LAST
LIMIT 1
"""
_FLAG_BY_ASSETPAY_ID = """
UPDATE trades SET needs_review = true, review_reason = $2, updated_at = now()
WHERE assetpay_id = $1 AND review_reason IS NULL
"""


def _value(trade: TradeRow, name: str) -> Any:
    value = getattr(trade, name)
    return json.dumps(value) if name == "items" else value


SAVE_PARAMETERS = len(_SAVED) + 1
"""How many parameters `_SAVE` takes: $1 the trade's id, then `save_values(trade)`."""
USER_PARAMETER = _SAVED.index("user_id") + 2
"""The number of `_SAVE`'s parameter that carries the trade's user id."""


def save_statement() -> str:
    """`save`'s UPDATE (RETURNING updated_at), for a statement that saves a trade along with other writes."""
    return _SAVE


def save_values(trade: TradeRow) -> list[Any]:
    """`_SAVE`'s parameters after the trade's id."""
    return [_value(trade, name) for name in _SAVED]


async def find_user_id(db: Connection, *, user_id: str | None, steam_id: str | None) -> str | None:
    """Our user: `user_id` is our own id (AssetPay's `externalClientUserId`); failing that, their Steam id."""
    if user_id is None and steam_id is None:
        return None
    found: str | None = await db.fetchval(_FIND_USER, user_id, steam_id)
    return found


async def find(db: Connection, trade_id: uuid.UUID) -> TradeRow | None:
    """The trade as it stands, unlocked (for reading)."""
    record = await db.fetchrow(_FIND_BY_ID, trade_id)
    return TradeRow.from_record(record) if record is not None else None


async def lock(db: Connection, trade_id: uuid.UUID) -> TradeRow | None:
    """The trade, locked until the unit of work ends."""
    record = await db.fetchrow(_LOCK_BY_ID, trade_id)
    return TradeRow.from_record(record) if record is not None else None


async def lock_by_ref(db: Connection, *, assetpay_id: str, external_id: str | None) -> TradeRow | None:
    """The trade AssetPay calls `assetpay_id`, or (one we recorded before AssetPay answered) our `external_id`."""
    record = await db.fetchrow(_LOCK_BY_REF, assetpay_id, external_id)
    return TradeRow.from_record(record) if record is not None else None


async def lock_by_ref_or_owner(
    db: Connection, *, assetpay_id: str, external_id: str | None, user_id: str | None, steam_id: str | None
) -> tuple[TradeRow | None, str | None]:
    """`lock_by_ref`; when there is no such trade, also `find_user_id(user_id, steam_id)` for recording it (None
    when the trade was found). One statement."""
    record = await db.fetchrow(_LOCK_BY_REF_OR_OWNER, assetpay_id, external_id, user_id, steam_id)
    assert record is not None  # the outer SELECT always has its one row
    values = dict(record)
    owner: str | None = values.pop("owner")
    return (TradeRow.from_record(values) if values["id"] is not None else None), owner


async def insert(db: Connection, trade: TradeRow) -> TradeRow | None:
    """Record a new trade; the row (ours, so locked until commit), or None when a unique id was taken first."""
    record = await db.fetchrow(_INSERT, *(_value(trade, name) for name in _INSERTED))
    return TradeRow.from_record(record) if record is not None else None


async def save(db: Connection, trade: TradeRow) -> None:
    """Write back what a unit of work changed in a locked trade."""
    trade.updated_at = await db.fetchval(_SAVE, trade.id, *save_values(trade))


async def orphans(db: Connection, *, user_id: str, steam_id: str) -> list[uuid.UUID]:
    """Trades received for this user before they were registered (nobody's yet)."""
    return [record["id"] for record in await db.fetch(_ORPHANS, user_id, steam_id)]


async def flag_by_assetpay_id(db: Connection, assetpay_id: str, reason: str) -> None:
    """Flag the trade AssetPay calls `assetpay_id` for review, unless it already carries a reason."""
    await db.execute(_FLAG_BY_ASSETPAY_ID, assetpay_id, reason[:1000])


# -- reconciliation ---------------------------------------------------------------------------------------------------

_QUIET_IN_FLIGHT = f"""
{SELECT_TRADE}
WHERE status = ANY($1::text[]) AND updated_at < $2
ORDER BY updated_at, id
LIMIT $3
"""


async def database_now(db: Connection) -> datetime:
    """The database's clock (trade ages are measured with it, whatever the app server's clock says)."""
    now: datetime = await db.fetchval("SELECT now()")
    return now


async def quiet_in_flight(
    db: Connection, *, statuses: Sequence[str], quiet_since: datetime, limit: int
) -> list[TradeRow]:
    """Trades in one of `statuses` that nothing has touched since `quiet_since`, the longest-quiet first (unlocked,
    for reading). Ours that AssetPay never acknowledged (`assetpay_id` NULL, `initiated`) are among them."""
    records = await db.fetch(_QUIET_IN_FLIGHT, list(statuses), quiet_since, limit)
    return [TradeRow.from_record(record) for record in records]
