"""Adjustments: an operator's correction of a user's balance, posted as one ledger entry of kind `adjustment`.

An adjustment is not a trade, so it does not go through settlement; it goes through the ledger's own entry point
for it (`store.ledger.post_adjustment`, the same statement that posts a trade's entries), in one unit of work:

    the user exists → the Idempotency-Key (a repeat gets the first answer) → lock the balance →
    a charge must not leave a debt unless allowed → post the entry with its reason and actor →
    balance.updated to the outbox → the answer stored for the key → commit

Everything happens in that one transaction, so a refusal leaves nothing behind, the key included: only an
adjustment that was posted has an answer to replay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from assetpay_merchant.core import policy
from assetpay_merchant.core.errors import Conflict, NotFound, ValidationFailed
from assetpay_merchant.core.money import CENT, format_money
from assetpay_merchant.observability import LEDGER_POSTINGS
from assetpay_merchant.services.admin import LedgerEntryView, check_actor, check_text
from assetpay_merchant.services.users import USER_NOT_FOUND
from assetpay_merchant.store import events, idempotency, ledger, users
from assetpay_merchant.store.database import Database
from assetpay_merchant.store.entries import EntryRow

ROUTE = "/v1/admin/adjustments"
"""What an Idempotency-Key's fingerprint is taken over, with the request (as deposits use their route): the API
and the CLI share it, so a retry through either gets the first answer."""
MAX_REASON_LENGTH = 500
_INTEGER_DIGITS = len(str(int(policy.ADJUSTMENT_LIMIT))) - 1
assert Decimal(10) ** _INTEGER_DIGITS == policy.ADJUSTMENT_LIMIT, "the pattern spells a power of ten"
assert policy.ADJUSTMENT_SCALE == 2, "the pattern spells cents"
AMOUNT_PATTERN = rf"^-?(?:[1-9][0-9]{{0,{_INTEGER_DIGITS - 1}}}(?:\.[0-9]{{1,2}})?|0\.(?:0[1-9]|[1-9][0-9]?))$"
"""A signed, non-zero amount in cents, below ADJUSTMENT_LIMIT either way: "25.00", "-7.5", "0.01"."""
AMOUNT_RE = re.compile(AMOUNT_PATTERN)


@dataclass(frozen=True, slots=True)
class Adjustment:
    """What an operator asks: move `amount` (negative: take it) on the user's balance, for `reason`."""

    user_id: str
    amount: Decimal
    reason: str
    actor: str
    allow_debt: bool = False

    def fingerprint(self) -> str:
        """Two requests are "the same" when they ask for the same thing, amounts compared as money."""
        request = {
            "userId": self.user_id,
            "amount": format_money(self.amount),
            "reason": self.reason,
            "actor": self.actor,
            "allowDebt": self.allow_debt,
        }
        return idempotency.fingerprint(ROUTE, request)


AMOUNT_RULE = (
    f"a non-zero decimal string with at most 2 decimals, below {policy.ADJUSTMENT_LIMIT} either way, "
    'such as "25.00" or "-7.50"'
)


def _invalid_amount() -> ValidationFailed:
    return ValidationFailed("Invalid amount", fields={"amount": AMOUNT_RULE})


def parse_amount(text: str) -> Decimal:
    """An amount as an operator types it, by the rule the API's document states (AMOUNT_PATTERN)."""
    if not AMOUNT_RE.fullmatch(text):
        raise _invalid_amount()
    return Decimal(text)  # the pattern admits only plain decimals


def _check(adjustment: Adjustment) -> None:
    amount = adjustment.amount
    if (
        not amount.is_finite()
        or amount == 0
        or abs(amount) >= policy.ADJUSTMENT_LIMIT
        or amount != amount.quantize(CENT)
    ):
        raise _invalid_amount()
    check_text("reason", adjustment.reason, MAX_REASON_LENGTH)
    check_actor(adjustment.actor)


@dataclass(frozen=True, slots=True)
class Adjusted:
    """The answer (the entry, as LedgerEntryView renders it); `replayed`: the first answer given to this key."""

    entry: dict[str, Any]
    replayed: bool


async def adjust(database: Database, adjustment: Adjustment, *, key: str | None, now: datetime) -> Adjusted:
    """Post the adjustment (see the module's docstring). Raises NotFound (USER_NOT_FOUND), Conflict (DEBT_NOT_ALLOWED:
    a charge that would leave a debt, without `allow_debt`; IDEMPOTENCY_KEY_REUSED: the key with another request)."""
    _check(adjustment)
    if key is not None and len(key) > idempotency.MAX_KEY_LENGTH:  # as on deposits, any string up to the limit
        raise ValidationFailed(
            "Invalid Idempotency-Key", fields={"Idempotency-Key": f"at most {idempotency.MAX_KEY_LENGTH} characters"}
        )
    user_id = adjustment.user_id
    async with database.unit_of_work() as uow:
        db = uow.db
        if await users.get(db, user_id) is None:
            raise NotFound(USER_NOT_FOUND, key="USER_NOT_FOUND")
        claim = None
        if key is not None:
            # Keys are the adjusted user's, as a deposit's are the depositor's; a concurrent request with the same
            # key waits here for this transaction, then replays its answer.
            outcome = await idempotency.claim(
                db, user_id=user_id, key=key, fingerprint=adjustment.fingerprint(), now=now
            )
            if isinstance(outcome, idempotency.Replay):
                return Adjusted(outcome.body, replayed=True)
            claim = outcome
        await ledger.ensure_balance(db, user_id)
        available = await ledger.lock_balance(db, user_id)
        if not policy.adjustment_allowed(
            available=available, amount=adjustment.amount, allow_debt=adjustment.allow_debt
        ):
            raise Conflict(
                f"Taking {format_money(-adjustment.amount)} from an available balance of {format_money(available)} "
                "would leave it below zero; allow the debt (allowDebt, --allow-debt) if it is intended",
                key="DEBT_NOT_ALLOWED",
            )
        posting = await ledger.post_adjustment(
            db, user_id=user_id, amount=adjustment.amount, reason=adjustment.reason, actor=adjustment.actor
        )
        await events.append(db, user_id, trade=None, balance=True)  # the user's frontend sees the new balance live
        entry = LedgerEntryView.of(
            EntryRow(
                id=posting.id,
                user_id=user_id,
                trade_id=None,
                amount=posting.amount,
                kind=posting.kind.value,
                balance_after=posting.balance_after,
                reason=adjustment.reason,
                actor=adjustment.actor,
                created_at=posting.created_at,
            )
        ).model_dump(mode="json")
        if claim is not None:
            await idempotency.finish(db, claim, status=201, body=entry)
        uow.after_commit(lambda: LEDGER_POSTINGS.labels(posting.kind.value).inc())
    return Adjusted(entry, replayed=False)
