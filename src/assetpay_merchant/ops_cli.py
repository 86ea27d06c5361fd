"""The ops commands of `assetpay-merchant`: `admin ...` (trades and the review queue, resolving, adjustments, a
user's picture, the merchant's exposure) and `webhooks ...` (the stored callbacks, and replaying one).

They work on DATABASE_URL directly, not over HTTP, through the same services as the admin API; they print aligned
tables, or with `--json` exactly what the API answers. Exit codes: 0 done, 1 refused by a rule (a debt, a trade
not in review, a key reused, a callback that still does not validate), 2 bad input or nothing has that id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.pool import NullPool

from assetpay_merchant.config import Settings
from assetpay_merchant.core.errors import AppError, NotFound, ValidationFailed
from assetpay_merchant.core.money import format_money
from assetpay_merchant.core.policy import Status, TradeType
from assetpay_merchant.services import adjustments, admin, intake
from assetpay_merchant.services.admin import AdminTrade, AdminTradeDetail, LedgerEntryView
from assetpay_merchant.store import delivery_log
from assetpay_merchant.store.database import Database, create_engine
from assetpay_merchant.store.review import TradeFilter

EXIT_REFUSED = 1
EXIT_USAGE = 2
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


# -- running and printing -------------------------------------------------------------------------------------------


def _run(settings: Settings, work: Callable[[Database], Awaitable[int]]) -> int:
    """Run `work` on a database of its own; an error of ours is printed with its key, not as a traceback."""
    url = settings.require_database_url()

    async def main() -> int:
        engine = create_engine(url, poolclass=NullPool, transaction_pooling=settings.transaction_pooling)
        database = Database(engine)
        try:
            return await work(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(main())
    except AppError as error:
        return _failed(error)


def _failed(error: AppError) -> int:
    print(f"error {error.key}: {error.message}", file=sys.stderr)
    for field, why in (error.fields or {}).items():
        print(f"  {field}: {why}", file=sys.stderr)
    return EXIT_USAGE if isinstance(error, NotFound | ValidationFailed) else EXIT_REFUSED


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[str] = ()) -> str:
    """Plain aligned columns, two spaces apart; the columns named in `right` (amounts, counts) aligned right."""
    cells = [[_text(value) for value in row] for row in rows]
    widths = [max([len(header), *(len(row[n]) for row in cells)]) for n, header in enumerate(headers)]
    flush_right = {n for n, header in enumerate(headers) if header in set(right)}

    def line(row: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if n in flush_right else cell.ljust(width)
            for n, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in cells)])


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, Decimal):
        return format_money(value)
    return str(value)


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _trades_table(trades: Sequence[AdminTrade]) -> str:
    return table(
        ["CREATED", "TRADE", "USER", "TYPE", "STATUS", "TOTAL", "CREDITED", "REVIEW"],
        (
            [t.createdAt, t.id, t.userId, t.type.value, t.status.value, t.totalPrice, t.credited, t.reviewReason]
            for t in trades
        ),
        right=["TOTAL", "CREDITED"],
    )


def _entries_table(entries: Sequence[LedgerEntryView]) -> str:
    return table(
        ["ENTRY", "AT", "KIND", "AMOUNT", "BALANCE", "TRADE", "ACTOR", "REASON"],
        ([e.id, e.createdAt, e.kind, e.amount, e.balanceAfter, e.tradeId, e.actor, e.reason] for e in entries),
        right=["ENTRY", "AMOUNT", "BALANCE"],
    )


def _print_trade(trade: AdminTradeDetail) -> None:
    print(_trades_table([trade]))
    if trade.history:
        print("\nhistory:")
        print(
            table(
                ["AT", "ACTION", "ACTOR", "WAS FLAGGED FOR", "NOTE"],
                ([h.at, h.action, h.actor, h.reviewReason, h.note] for h in trade.history),
            )
        )


# -- admin ----------------------------------------------------------------------------------------------------------


def cmd_trades(settings: Settings, args: argparse.Namespace) -> int:
    where = TradeFilter(
        needs_review=True if args.review else None, user_id=args.user, status=args.status, type=args.type
    )

    async def work(database: Database) -> int:
        found = await admin.list_trades(database, where, before=None, limit=args.limit)
        if args.json:
            _json({"trades": [t.model_dump(mode="json") for t in found.trades], "more": found.next is not None})
            return 0
        print(_trades_table(found.trades))
        more = f" (more: raise --limit above {args.limit})" if found.next is not None else ""
        print(f"\n{len(found.trades)} trade(s){more}")
        return 0

    return _run(settings, work)


def cmd_trade(settings: Settings, args: argparse.Namespace) -> int:
    async def work(database: Database) -> int:
        trade = await admin.trade_detail(database, args.trade_id)
        _json(trade.model_dump(mode="json")) if args.json else _print_trade(trade)
        return 0

    return _run(settings, work)


def cmd_resolve(settings: Settings, args: argparse.Namespace) -> int:
    async def work(database: Database) -> int:
        trade = await admin.resolve(database, args.trade_id, note=args.note, actor=args.actor)
        if args.json:
            _json(trade.model_dump(mode="json"))
            return 0
        print(f"resolved trade {trade.id}: off the review queue, the note kept in its history\n")
        _print_trade(trade)
        return 0

    return _run(settings, work)


def cmd_adjust(settings: Settings, args: argparse.Namespace) -> int:
    try:
        amount = adjustments.parse_amount(args.amount)
    except ValidationFailed as error:
        return _failed(error)
    adjustment = adjustments.Adjustment(
        user_id=args.user_id, amount=amount, reason=args.reason, actor=args.actor, allow_debt=args.allow_debt
    )

    async def work(database: Database) -> int:
        adjusted = await adjustments.adjust(database, adjustment, key=args.idempotency_key, now=datetime.now(UTC))
        if args.json:
            _json(adjusted.entry)
            return 0
        entry = LedgerEntryView.model_validate(adjusted.entry)
        done = "already posted with this idempotency key" if adjusted.replayed else "posted"
        signed = f"+{format_money(entry.amount)}" if entry.amount > 0 else format_money(entry.amount)
        print(
            f"{done}: adjustment {entry.id}, {signed} to {entry.userId}, balance now {format_money(entry.balanceAfter)}"
        )
        print(f"  by {entry.actor} at {_text(entry.createdAt)}: {entry.reason}")
        return 0

    return _run(settings, work)


def cmd_exposure(settings: Settings, args: argparse.Namespace) -> int:
    async def work(database: Database) -> int:
        exposure = await admin.exposure_now(database, currency=settings.currency)
        if args.json:
            _json(exposure.model_dump(mode="json"))
            return 0
        held, debts, currency = exposure.preCreditInHold, exposure.debts, exposure.currency
        print(f"preCredit in hold: {format_money(held.total)} {currency} on {held.trades} deposit(s)")
        if held.byHoldEndDate:
            days = ([day.date or "no end date", day.trades, day.total] for day in held.byHoldEndDate)
            print(table(["HOLD ENDS", "TRADES", "TOTAL"], days, right=["TRADES", "TOTAL"]))
        print(f"debts: {debts.users} user(s) owe {format_money(debts.total)} {currency}")
        return 0

    return _run(settings, work)


def cmd_user(settings: Settings, args: argparse.Namespace) -> int:
    async def work(database: Database) -> int:
        overview = await admin.user_overview(database, args.user_id, currency=settings.currency)
        if args.json:
            _json(overview.model_dump(mode="json"))
            return 0
        user, balance = overview.user, overview.balance
        print(f"user {user.id}  steam {user.steamId}  registered {_text(user.createdAt)}")
        print(f"trade URL {user.tradeUrl}")
        print(
            f"balance: available {format_money(balance.available)}, pending {format_money(balance.pending)} "
            f"{balance.currency}"
        )
        print(f"\nnewest trades ({len(overview.trades)}):")
        print(_trades_table(overview.trades))
        print(f"\nnewest ledger entries ({len(overview.entries)}):")
        print(_entries_table(overview.entries))
        return 0

    return _run(settings, work)


# -- webhooks -------------------------------------------------------------------------------------------------------


def cmd_webhooks_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(database: Database) -> int:
        async with database.statements() as db:
            found = await delivery_log.recent(db, outcome=args.outcome, limit=args.limit)
        if args.json:
            _json({"deliveries": [_delivery_json(d) for d in found]})
            return 0
        print(
            table(
                ["RECEIVED", "DELIVERY", "KIND", "OUTCOME", "SUBJECT", "TRADE", "DETAIL"],
                ([d.received_at, d.delivery_id, d.kind, d.outcome, d.subject_id, d.trade_id, d.detail] for d in found),
            )
        )
        print(f"\n{len(found)} deliver{'y' if len(found) == 1 else 'ies'}")
        return 0

    return _run(settings, work)


def _delivery_json(delivery: delivery_log.StoredDelivery) -> dict[str, Any]:
    return {
        "deliveryId": delivery.delivery_id,
        "kind": delivery.kind,
        "outcome": delivery.outcome,
        "detail": delivery.detail,
        "subjectId": delivery.subject_id,
        "tradeId": str(delivery.trade_id) if delivery.trade_id is not None else None,
        "signedAt": delivery.signed_at.isoformat(),
        "receivedAt": delivery.received_at.isoformat(),
        "rawBody": delivery.raw_body,
    }


def cmd_webhooks_replay(settings: Settings, args: argparse.Namespace) -> int:
    async def work(database: Database) -> int:
        replayed = await intake.replay(database, args.delivery_id)
        if replayed is None:
            raise NotFound(f"No stored delivery has the id {args.delivery_id!r}", key="DELIVERY_NOT_FOUND")
        report = _replay_report(replayed)
        if args.json:
            _json(report)
        else:
            print(_describe(report))
        return EXIT_REFUSED if replayed.refused is not None else 0

    return _run(settings, work)


def _replay_report(replayed: intake.Replayed) -> dict[str, Any]:
    delivery, result = replayed.delivery, replayed.result
    report: dict[str, Any] = {
        "deliveryId": delivery.delivery_id,
        "kind": delivery.kind,
        "recordedOutcome": delivery.outcome,
        "outcome": result.outcome if result is not None else delivery_log.INVALID,
        "refused": replayed.refused,
        "answer": result.body if result is not None else None,
        "trade": None,
        "posted": None,
    }
    settled = result.settled if result is not None else None
    if settled is not None:
        trade = settled.trade
        report["trade"] = {"id": str(trade.id), "status": trade.status, "userId": trade.user_id}
        if settled.posting is not None:
            posting = settled.posting
            report["posted"] = {
                "entryId": posting.id,
                "amount": format_money(posting.amount),
                "kind": posting.kind.value,
                "balanceAfter": format_money(posting.balance_after),
            }
    return report


def _describe(report: dict[str, Any]) -> str:
    head = f"delivery {report['deliveryId']} ({report['kind']}, recorded outcome {report['recordedOutcome']})"
    if report["refused"] is not None:
        return f"{head}: still does not validate, nothing changed: {report['refused']}"
    lines = [f"{head}: replayed, outcome {report['outcome']}"]
    trade = report["trade"]
    if trade is not None:
        lines.append(f"  trade {trade['id']} of {trade['userId'] or 'no user of ours'}: {trade['status']}")
    posted = report["posted"]
    if posted is not None:
        lines.append(
            f"  posted {posted['kind']} {posted['amount']} (entry {posted['entryId']}), "
            f"balance {posted['balanceAfter']}"
        )
    else:
        lines.append("  nothing posted: the books already held what it says")
    answer = report["answer"]
    if answer is not None and "action" in answer:
        lines.append(f"  answer for AssetPay: {json.dumps(answer)}")
    return "\n".join(lines)


# -- the parser -----------------------------------------------------------------------------------------------------


def _limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_LIMIT}")
    return limit


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (what the admin API answers) for scripts")


def add_commands(commands: Any) -> None:
    """Add `admin` and `webhooks` to the command's subparsers."""
    admin_parser = commands.add_parser("admin", help="ops on trades, users and balances (DATABASE_URL)")
    verbs = admin_parser.add_subparsers(dest="admin_command", required=True)

    trades = verbs.add_parser("trades", help="trades across users, newest first; --review: the review queue")
    trades.add_argument("--review", action="store_true", help="only trades waiting for a person, with the reason")
    trades.add_argument("--user", help="only this user's")
    trades.add_argument("--status", choices=[s.value for s in Status])
    trades.add_argument("--type", choices=[t.value for t in TradeType])
    trades.add_argument(
        "--limit", type=_limit, default=DEFAULT_LIMIT, help=f"at most this many (default {DEFAULT_LIMIT})"
    )
    _json_flag(trades)
    trades.set_defaults(handler=cmd_trades)

    trade = verbs.add_parser("trade", help="one trade with its history")
    trade.add_argument("trade_id", type=uuid.UUID, metavar="TRADE_ID")
    _json_flag(trade)
    trade.set_defaults(handler=cmd_trade)

    resolve = verbs.add_parser("resolve", help="take a trade off the review queue; the note stays in its history")
    resolve.add_argument("trade_id", type=uuid.UUID, metavar="TRADE_ID")
    resolve.add_argument("--note", required=True, help="what was found and decided")
    resolve.add_argument("--actor", required=True, help="who decides (a login or an email)")
    _json_flag(resolve)
    resolve.set_defaults(handler=cmd_resolve)

    adjust = verbs.add_parser(
        "adjust",
        help="post an adjustment to a user's balance (AMOUNT negative to take)",
        description="One ledger entry of kind `adjustment` with its reason and actor. A charge that would leave the "
        "available balance below zero is refused unless --allow-debt.",
    )
    adjust.add_argument("user_id", metavar="USER_ID")
    adjust.add_argument("amount", metavar="AMOUNT", help="e.g. 25.00 or -7.50 (at most 2 decimals)")
    adjust.add_argument("--reason", required=True, help="why; kept with the entry")
    adjust.add_argument("--actor", required=True, help="who posts it (a login or an email)")
    adjust.add_argument("--allow-debt", action="store_true", help="post a charge even if it leaves a debt")
    adjust.add_argument(
        "--idempotency-key", help="repeat safely: the same key and request give the first answer, never a second entry"
    )
    _json_flag(adjust)
    adjust.set_defaults(handler=cmd_adjust)

    exposure = verbs.add_parser("exposure", help="preCredit outstanding in hold, and users' debts")
    _json_flag(exposure)
    exposure.set_defaults(handler=cmd_exposure)

    user = verbs.add_parser("user", help="a user's profile, balance, newest trades and entries")
    user.add_argument("user_id", metavar="USER_ID")
    _json_flag(user)
    user.set_defaults(handler=cmd_user)

    webhooks = commands.add_parser("webhooks", help="the stored AssetPay callbacks (DATABASE_URL)")
    hooks = webhooks.add_subparsers(dest="webhooks_command", required=True)
    listing = hooks.add_parser("list", help="the newest stored callbacks")
    listing.add_argument(
        "--outcome",
        help="only those with this outcome: invalid (refused), advance, same, stale, conflict, approve, ...",
    )
    listing.add_argument(
        "--limit", type=_limit, default=DEFAULT_LIMIT, help=f"at most this many (default {DEFAULT_LIMIT})"
    )
    _json_flag(listing)
    listing.set_defaults(handler=cmd_webhooks_list)

    replay = hooks.add_parser(
        "replay",
        help="apply a stored callback again, through the same path as the webhook (idempotent)",
        description="What was applied changes nothing; a callback refused as invalid is read again and applied if "
        "it now validates. Exit 0 when replayed, 1 when it still does not validate, 2 when no delivery has the id.",
    )
    replay.add_argument("delivery_id", metavar="DELIVERY_ID", help="the delivery id AssetPay signed it with")
    _json_flag(replay)
    replay.set_defaults(handler=cmd_webhooks_replay)
