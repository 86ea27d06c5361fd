"""The ledger rule of DESIGN.md §2 as pure functions: every expectation below is written out from the design table,
not computed with the code under test."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from assetpay_merchant.core.policy import (
    FINAL_RANK,
    EntryKind,
    Item,
    Status,
    TradeFacts,
    TradeType,
    Transition,
    VerdictAction,
    approval_verdict,
    entry_kind,
    merge_items,
    parse_status,
    parse_type,
    review_reason,
    target,
    transition,
    withdrawal_charge,
)

D = Decimal
IN_FLIGHT = ["initiated", "pending", "active", "hold"]
FAILURES = ["failed", "canceled", "declined", "reverted"]
FINALS = ["completed", *FAILURES]
ALL = IN_FLIGHT + FINALS
# DESIGN.md §2: initiated < pending < active < hold < final (all finals share one rank).
DESIGN_RANK = {"initiated": 0, "pending": 1, "active": 2, "hold": 3, **dict.fromkeys(FINALS, 4)}


def deposit(status: str, total: str = "100.00", pre: str = "60.00") -> TradeFacts:
    return TradeFacts(type=TradeType.DEPOSIT, status=Status(status), total_price=D(total), pre_credit=D(pre))


def withdrawal(
    status: str, total: str = "100.00", approved: str | None = None, items: tuple[Item, ...] = ()
) -> TradeFacts:
    return TradeFacts(
        type=TradeType.WITHDRAW,
        status=Status(status),
        total_price=D(total),
        approved_amount=D(approved) if approved is not None else None,
        items=items,
    )


# --- statuses, ranks, parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "rank"), DESIGN_RANK.items())
def test_rank_follows_the_design_order(name: str, rank: int) -> None:
    status = Status(name)
    assert status.rank == rank
    assert status.is_final is (rank == 4)
    assert status.is_failure is (name in FAILURES)


def test_final_rank_is_above_every_in_flight_status() -> None:
    assert FINAL_RANK == 4
    assert [Status(s).rank for s in IN_FLIGHT] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("hold", Status.HOLD),
        ("HOLD", Status.HOLD),
        (" Completed ", Status.COMPLETED),
        ("ESCROW", Status.HOLD),  # the older edition's extra in-flight status behaves like hold
        ("escrow", Status.HOLD),
        ("CANCELLED", Status.CANCELED),
        ("INITIATED", Status.INITIATED),
        ("Reverted", Status.REVERTED),
    ],
)
def test_parse_status_accepts_both_editions(raw: str, expected: Status) -> None:
    assert parse_status(raw) is expected


@pytest.mark.parametrize("raw", ["", "done", "holding", "complete", "refunded"])
def test_parse_status_refuses_unknown_names(raw: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the parser's documented contract is a plain ValueError
        parse_status(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("deposit", TradeType.DEPOSIT), ("DEPOSIT", TradeType.DEPOSIT), ("Withdraw", TradeType.WITHDRAW)],
)
def test_parse_type_is_case_insensitive(raw: str, expected: TradeType) -> None:
    assert parse_type(raw) is expected


def test_parse_type_refuses_unknown_types() -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_type("withdrawal")


# --- transitions -------------------------------------------------------------------------------------------------


def _expected_transition(current: str, incoming: str) -> Transition:
    if current == incoming:
        return Transition.SAME
    if current in FINALS and incoming in FINALS:
        return Transition.CONFLICT
    return Transition.ADVANCE if DESIGN_RANK[incoming] > DESIGN_RANK[current] else Transition.STALE


@pytest.mark.parametrize(("current", "incoming"), list(itertools.product(ALL, ALL)))
def test_transition_for_every_pair(current: str, incoming: str) -> None:
    assert transition(Status(current), Status(incoming)) is _expected_transition(current, incoming)


@pytest.mark.parametrize(
    ("current", "incoming", "expected"),
    [
        ("hold", "completed", Transition.ADVANCE),
        ("completed", "hold", Transition.STALE),  # a late hold never moves money back
        ("active", "initiated", Transition.STALE),
        ("initiated", "reverted", Transition.ADVANCE),
        ("completed", "reverted", Transition.CONFLICT),
        ("failed", "completed", Transition.CONFLICT),
        ("completed", "completed", Transition.SAME),
    ],
)
def test_transition_examples(current: str, incoming: str, expected: Transition) -> None:
    assert transition(Status(current), Status(incoming)) is expected


# --- targets: every status of both types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("initiated", "0"),
        ("pending", "0"),
        ("active", "0"),
        ("hold", "60.00"),
        ("completed", "100.00"),
        ("failed", "0"),
        ("canceled", "0"),
        ("declined", "0"),
        ("reverted", "0"),
    ],
)
def test_deposit_target(status: str, expected: str) -> None:
    assert target(deposit(status)) == D(expected)


def test_deposit_hold_without_instant_credit_targets_zero() -> None:
    assert target(deposit("hold", pre="0")) == 0


def test_legacy_escrow_deposit_targets_the_pre_credit() -> None:
    facts = TradeFacts(
        type=TradeType.DEPOSIT, status=parse_status("ESCROW"), total_price=D("10.00"), pre_credit=D("7.25")
    )
    assert target(facts) == D("7.25")


def test_deposit_target_keeps_sub_cent_amounts_exact() -> None:
    assert target(deposit("completed", total="0.035", pre="0.01")) == D("0.035")
    assert target(deposit("hold", total="0.035", pre="0.01")) == D("0.01")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        # before an approve verdict nothing is charged while in flight
        ("initiated", "0"),
        ("pending", "0"),
        ("active", "0"),
        ("hold", "0"),
        # a completed withdrawal was charged, approve or not (review_reason flags the missing verdict)
        ("completed", "-100.00"),
        ("failed", "0"),
        ("canceled", "0"),
        ("declined", "0"),
        ("reverted", "0"),
    ],
)
def test_withdrawal_target_without_approval(status: str, expected: str) -> None:
    assert target(withdrawal(status)) == D(expected)


@pytest.mark.parametrize(
    ("status", "total", "expected"),
    [
        ("initiated", "100.00", "-100.00"),
        ("pending", "100.00", "-100.00"),
        ("active", "100.00", "-100.00"),
        ("hold", "100.00", "-100.00"),
        ("completed", "100.00", "-100.00"),
        ("completed", "82.50", "-82.50"),  # charged less than approved: the rest is refunded
        ("failed", "100.00", "0"),
        ("canceled", "100.00", "0"),
        ("declined", "100.00", "0"),
        ("reverted", "100.00", "0"),
    ],
)
def test_withdrawal_target_after_approval(status: str, total: str, expected: str) -> None:
    assert target(withdrawal(status, total=total, approved="100.00")) == D(expected)


def test_in_flight_withdrawal_is_charged_what_was_approved_not_the_latest_total() -> None:
    # AssetPay may quote a different total on an in-flight event; the user is held to what we approved.
    assert target(withdrawal("active", total="120.00", approved="100.00")) == D("-100.00")


def test_completed_withdrawal_is_charged_its_final_total_even_above_approval() -> None:
    assert target(withdrawal("completed", total="120.00", approved="100.00")) == D("-120.00")


ITEMS_ONE_FAILED = (
    Item(price=D("30.00"), status=Status.ACTIVE),
    Item(price=D("20.00"), status=Status.FAILED),
    Item(price=D("25.00"), amount=D(2), status=Status.ACTIVE),
)


@pytest.mark.parametrize("status", IN_FLIGHT)
def test_partly_failed_withdrawal_in_flight_charges_only_live_items(status: str) -> None:
    assert target(withdrawal(status, approved="100.00", items=ITEMS_ONE_FAILED)) == D("-80.00")


@pytest.mark.parametrize("failure", FAILURES)
def test_every_failure_status_of_an_item_counts_as_failed(failure: str) -> None:
    items = (Item(price=D("40.00"), status=Status.COMPLETED), Item(price=D("60.00"), status=Status(failure)))
    assert target(withdrawal("completed", total="100.00", approved="100.00", items=items)) == D("-40.00")


def test_partly_failed_withdrawal_never_charges_more_than_its_total() -> None:
    # Live items worth 80 but AssetPay finally charged only 70: the lesser is what the user pays.
    assert target(withdrawal("completed", total="70.00", approved="100.00", items=ITEMS_ONE_FAILED)) == D("-70.00")


def test_withdrawal_with_every_item_failed_charges_nothing() -> None:
    items = (Item(price=D("30.00"), status=Status.FAILED), Item(price=D("70.00"), status=Status.CANCELED))
    assert target(withdrawal("hold", approved="100.00", items=items)) == 0


def test_partly_failed_withdrawal_before_approval_charges_nothing() -> None:
    assert target(withdrawal("active", items=ITEMS_ONE_FAILED)) == 0


@pytest.mark.parametrize("failure", FAILURES)
def test_failed_withdrawal_refunds_everything_whatever_its_items_say(failure: str) -> None:
    items = (Item(price=D("100.00"), status=Status.COMPLETED),)
    assert target(withdrawal(failure, approved="100.00", items=items)) == 0


def test_withdrawal_charge_without_failed_items_is_the_base() -> None:
    items = (Item(price=D("70.00"), status=Status.ACTIVE), Item(price=D("50.00")))
    assert withdrawal_charge(D("100.00"), items) == D("100.00")
    assert withdrawal_charge(D("100.00"), ()) == D("100.00")


def test_withdrawal_charge_counts_items_without_status_as_alive() -> None:
    items = (Item(price=D("10.00")), Item(price=D("5.50"), amount=D(3)), Item(price=D("1.00"), status=Status.FAILED))
    assert withdrawal_charge(D("100.00"), items) == D("26.50")


# --- review reasons ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ALL)
def test_deposits_never_need_review_by_rule(status: str) -> None:
    assert review_reason(deposit(status)) is None


def test_withdrawal_completed_without_our_approval_is_flagged() -> None:
    reason = review_reason(withdrawal("completed"))
    assert reason is not None
    assert "without an approve verdict" in reason


def test_withdrawal_charged_more_than_approved_is_flagged() -> None:
    reason = review_reason(withdrawal("completed", total="120.00", approved="100.00"))
    assert reason is not None
    assert "120.00" in reason
    assert "100.00" in reason


@pytest.mark.parametrize(
    "facts",
    [
        withdrawal("completed", total="100.00", approved="100.00"),
        withdrawal("completed", total="90.00", approved="100.00"),
        withdrawal("active", total="120.00", approved="100.00"),
        withdrawal("pending"),
        withdrawal("failed"),
        withdrawal("failed", total="120.00", approved="100.00"),
    ],
)
def test_ordinary_withdrawals_need_no_review(facts: TradeFacts) -> None:
    assert review_reason(facts) is None


# --- entry kinds -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trade_type", "status", "delta", "expected"),
    [
        (TradeType.DEPOSIT, Status.HOLD, "60.00", EntryKind.PRE_CREDIT),
        (TradeType.DEPOSIT, Status.COMPLETED, "40.00", EntryKind.CREDIT),
        (TradeType.DEPOSIT, Status.COMPLETED, "100.00", EntryKind.CREDIT),
        (TradeType.DEPOSIT, Status.REVERTED, "-60.00", EntryKind.REVERSAL),
        (TradeType.DEPOSIT, Status.FAILED, "-60.00", EntryKind.REVERSAL),
        (TradeType.WITHDRAW, Status.INITIATED, "-100.00", EntryKind.DEBIT),
        (TradeType.WITHDRAW, Status.COMPLETED, "-100.00", EntryKind.DEBIT),
        (TradeType.WITHDRAW, Status.COMPLETED, "20.00", EntryKind.REFUND),
        (TradeType.WITHDRAW, Status.ACTIVE, "20.00", EntryKind.REFUND),
        (TradeType.WITHDRAW, Status.FAILED, "100.00", EntryKind.REFUND),
    ],
)
def test_entry_kind(trade_type: TradeType, status: Status, delta: str, expected: EntryKind) -> None:
    assert entry_kind(trade_type, status, D(delta)) is expected


# --- approval verdicts -------------------------------------------------------------------------------------------


def test_approve_when_known_within_authorisation_and_covered() -> None:
    verdict = approval_verdict(user_known=True, charge=D("10.00"), authorised=D("10.00"), available=D("10.00"))
    assert verdict.action is VerdictAction.APPROVE
    assert verdict.reason is None


def test_approve_without_authorisation_when_covered() -> None:
    verdict = approval_verdict(user_known=True, charge=D("10.00"), authorised=None, available=D("10.01"))
    assert verdict.action is VerdictAction.APPROVE


@pytest.mark.parametrize(
    ("known", "charge", "authorised", "available", "reason"),
    [
        (False, "10.00", None, "1000.00", "unknown user"),
        (False, "10.00", "5.00", "0", "unknown user"),  # an unknown user is refused before anything else
        (True, "0", None, "1000.00", "no positive price"),
        (True, "10.01", "10.00", "1000.00", "exceeds"),
        (True, "10.00", None, "9.99", "insufficient balance"),
        (True, "10.00", "20.00", "-5.00", "insufficient balance"),  # a debt covers nothing
    ],
)
def test_reject_with_a_reason(known: bool, charge: str, authorised: str | None, available: str, reason: str) -> None:
    verdict = approval_verdict(
        user_known=known,
        charge=D(charge),
        authorised=D(authorised) if authorised is not None else None,
        available=D(available),
    )
    assert verdict.action is VerdictAction.REJECT
    assert verdict.reason is not None
    assert reason in verdict.reason


# --- merging items -----------------------------------------------------------------------------------------------


def test_merge_keeps_the_most_advanced_status_per_item() -> None:
    known = [{"id": "a", "price": "1.00", "status": "active"}, {"id": "b", "price": "2.00", "status": "failed"}]
    incoming = [{"id": "a", "price": "1.00", "status": "pending"}, {"id": "b", "price": "2.00", "status": "active"}]
    merged = {item["id"]: item["status"] for item in merge_items(known, incoming)}
    assert merged == {"a": "active", "b": "failed"}


def test_merge_never_replaces_a_final_item_status_with_another() -> None:
    known = [{"id": "a", "status": "failed"}]
    assert merge_items(known, [{"id": "a", "status": "completed"}]) == [{"id": "a", "status": "failed"}]


def test_merge_adds_new_items_and_ranks_missing_or_unknown_status_lowest() -> None:
    known = [{"id": "a", "status": "weird"}, {"id": "b"}]
    incoming = [{"id": "a", "status": "initiated"}, {"id": "b", "status": "pending"}, {"id": "c"}]
    merged = {item["id"]: item.get("status") for item in merge_items(known, incoming)}
    assert merged == {"a": "initiated", "b": "pending", "c": None}


def test_merge_accepts_legacy_item_statuses() -> None:
    merged = merge_items([{"id": "a", "status": "ESCROW"}], [{"id": "a", "status": "ACTIVE"}])
    assert merged == [{"id": "a", "status": "ESCROW"}]


# An item's life: some in-flight statuses in order, then at most one final status.
_item_chain = st.tuples(
    st.lists(st.sampled_from(IN_FLIGHT), unique=True).map(lambda s: sorted(s, key=DESIGN_RANK.__getitem__)),
    st.one_of(st.none(), st.sampled_from(FINALS)),
).map(lambda chain: chain[0] + ([chain[1]] if chain[1] else []))


@st.composite
def _deliveries(draw: st.DrawFn) -> list[list[dict[str, str]]]:
    """Snapshots of a basket, each showing every item at some point of its life (as callbacks do)."""
    chains = draw(st.lists(_item_chain.filter(bool), min_size=1, max_size=5))
    count = draw(st.integers(1, 6))
    snapshots = []
    for _ in range(count):
        snapshot = []
        for index, chain in enumerate(chains):
            if draw(st.booleans()) or index == 0:
                snapshot.append({"id": f"item-{index}", "status": draw(st.sampled_from(chain))})
        snapshots.append(snapshot)
    return snapshots


@given(snapshots=_deliveries(), data=st.data())
def test_merge_items_does_not_depend_on_arrival_order(
    snapshots: list[list[dict[str, str]]], data: st.DataObject
) -> None:
    def fold(order: list[list[dict[str, str]]]) -> dict[str, str]:
        merged: list[dict[str, str]] = []
        for snapshot in order:
            merged = merge_items(merged, snapshot)
        return {item["id"]: item["status"] for item in merged}

    shuffled = data.draw(st.permutations(snapshots))
    in_order = fold(snapshots)
    assert fold(shuffled) == in_order
    # ... and each item ends at the most advanced status any snapshot showed for it.
    best: dict[str, str] = {}
    for item in itertools.chain.from_iterable(snapshots):
        if item["id"] not in best or DESIGN_RANK[item["status"]] > DESIGN_RANK[best[item["id"]]]:
            best[item["id"]] = item["status"]
    assert in_order == best
