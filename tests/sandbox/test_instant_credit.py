"""The sandbox's instant-credit model: docs/instant-credit.md checked against the code, its properties, and the
numbers a merchant meets through the sandbox's HTTP API (trust that grows, reversals that hurt, and hurt every
account of a verified identity)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assetpay_sandbox import Sandbox, risk
from assetpay_sandbox.catalog import CS2, RUST
from assetpay_sandbox.risk import POLICY, External, Profile, Profiles, Terms
from assetpay_sandbox.schemas import DepositRequest
from assetpay_sandbox.state import IN_FLIGHT, MAX_ACTIVE_DEPOSITS, SandboxState, SimTrade
from assetpay_sandbox.tokens import ClientIdentity
from assetpay_sandbox.verification import VERIFICATION_CODES
from tests.sandbox.helpers import (
    MERCHANT_ID,
    OTHER_STEAM_ID,
    STEAM_ID,
    TRADE_URL,
    client_token,
    data,
    deposit,
    depositable,
    dumps,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "instant-credit.md"
THIRD_STEAM_ID = "76561198000000003"


# -- the document ---------------------------------------------------------------------------------------------------


def _tables() -> list[list[dict[str, str]]]:
    """Every markdown table of docs/instant-credit.md, each row keyed by its header."""
    lines = DOC.read_text().splitlines()
    found = []
    for index, line in enumerate(lines[:-1]):
        if line.startswith("|") and lines[index + 1].startswith("| ---") and not lines[index - 1].startswith("|"):
            header = _cells(line)
            rows = []
            for row in lines[index + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(header, _cells(row), strict=True)))
            found.append(rows)
    return found


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(first_column: str) -> list[dict[str, str]]:
    return next(rows for rows in _tables() if rows and next(iter(rows[0])) == first_column)


def _money(cell: str) -> Decimal:
    return Decimal(cell)


def test_the_model_table_names_every_parameter_with_its_value() -> None:
    documented = {
        row["parameter"].strip("`"): Decimal(row["value"]) for row in _table("quantity") if row["parameter"] != "—"
    }
    assert documented == {name: Decimal(value) for name, value in POLICY.parameters()}


EXAMPLES = _table("#")


@pytest.mark.parametrize("row", EXAMPLES, ids=[row["#"] for row in EXAMPLES])
def test_a_worked_example(row: dict[str, str]) -> None:
    level = int(row["level"])
    trust = Decimal(row["trust"])
    client_data = {} if row["clientData"] == "—" else json.loads(row["clientData"].strip("`"), parse_float=Decimal)
    provider = risk.provider_collateral(
        trust=trust, history=_money(row["history"]), external=External.from_client_data(client_data), level=level
    )
    terms = Terms(
        provider=provider,
        merchant=_money(row["merchant"]),
        exposure=_money(row["exposure"]),
        cap=risk.instant_cap(level),
        trust=trust,
    )
    game = int(row["game"])
    split = risk.split(terms, game=game, is_instant=row["isInstant"] == "true", total=_money(row["total"]))
    assert provider == _money(row["provider collateral"])
    assert terms.available == _money(row["available"])
    assert split.pre_credit == _money(row["preCredit"])
    assert split.pending_credit == _money(row["pendingCredit"])
    assert (split.provider, split.merchant) == (_money(row["provider part"]), _money(row["merchant part"]))


TRUST_ROWS = _table("trust before")


@pytest.mark.parametrize("row", TRUST_ROWS, ids=[f"{r['event']}-{r['totalPrice']}" for r in TRUST_ROWS])
def test_a_trust_example(row: dict[str, str]) -> None:
    profiles = Profiles()
    profile = profiles.get(STEAM_ID)
    profile.trust, profile.history = Decimal(row["trust before"]), _money(row["history before"])
    if row["event"] == "completed":
        profiles.record_completion(STEAM_ID, _money(row["totalPrice"]))
    else:
        assert profiles.record_reversal(STEAM_ID, _money(row["totalPrice"])) == [STEAM_ID]
    assert (profile.trust, profile.history) == (Decimal(row["trust after"]), _money(row["history after"]))


def test_the_documented_verification_codes_are_the_ones_answered() -> None:
    documented = {row["key"].strip("`"): int(row["code"]) for row in _table("key")}
    assert documented == VERIFICATION_CODES | {"VALIDATION_FAILED": 1000}


# -- properties of the model ----------------------------------------------------------------------------------------

cents = st.integers(min_value=0, max_value=1_000_000).map(lambda n: Decimal(n) / 100)
trusts = st.integers(min_value=-10_000, max_value=10_000).map(lambda n: Decimal(n) / 10_000)
terms_strategy = st.builds(
    Terms,
    provider=cents,
    merchant=cents,
    exposure=cents,
    cap=st.sampled_from([POLICY.cap_unverified, POLICY.cap_verified]),
    trust=trusts,
)


@settings(max_examples=300)
@given(terms=terms_strategy, game=st.sampled_from([CS2, RUST]), is_instant=st.booleans(), total=cents)
def test_a_split_always_adds_up_and_stays_within_its_bounds(
    terms: Terms, game: int, is_instant: bool, total: Decimal
) -> None:
    split = risk.split(terms, game=game, is_instant=is_instant, total=total)
    assert split.pre_credit + split.pending_credit == total
    assert split.pre_credit >= 0
    assert split.pending_credit >= 0
    assert split.provider + split.merchant == (split.pre_credit if game == CS2 else 0)
    assert split.provider >= 0
    assert split.merchant >= 0
    if game == RUST:
        assert split.pre_credit == total  # always in full: no hold, so no cap and no collateral
    elif not is_instant or terms.trust < 0:
        assert split.pre_credit == 0
    else:
        assert split.pre_credit <= terms.cap
        assert split.pre_credit <= max(Decimal(0), terms.available)
        assert split.pre_credit == min(total, terms.instant_now)
        assert split.provider <= max(Decimal(0), terms.provider - terms.exposure)


externals = st.builds(
    External,
    total_wager=cents,
    kyc_level=st.integers(min_value=0, max_value=9),
    fiat_deposits=st.booleans(),
    crypto_deposits=st.booleans(),
)


@settings(max_examples=200)
@given(trust=trusts, history=cents, external=externals, level=st.sampled_from([0, 1]), more=cents)
def test_provider_collateral_has_a_floor_grows_with_the_record_and_vanishes_with_negative_trust(
    trust: Decimal, history: Decimal, external: External, level: int, more: Decimal
) -> None:
    provider = risk.provider_collateral(trust=trust, history=history, external=external, level=level)
    if trust < 0:
        assert provider == 0
        return
    assert provider >= risk.collateral_floor(level)
    assert provider <= POLICY.collateral_scale
    richer = risk.provider_collateral(trust=trust, history=history + more, external=external, level=level)
    assert richer >= provider
    wagered = External(
        external.total_wager + more, external.kyc_level, external.fiat_deposits, external.crypto_deposits
    )
    assert risk.provider_collateral(trust=trust, history=history, external=wagered, level=level) >= provider
    assert risk.provider_collateral(trust=trust, history=history, external=external, level=1) >= provider


@settings(max_examples=200)
@given(trust=trusts, values=st.lists(st.tuples(st.booleans(), cents), max_size=20))
def test_trust_stays_within_its_bounds_and_gains_at_most_the_cap(
    trust: Decimal, values: list[tuple[bool, Decimal]]
) -> None:
    for completed, value in values:
        after = risk.trust_after_completion(trust, value) if completed else risk.trust_after_reversal(trust, value)
        assert POLICY.trust_min <= after <= max(POLICY.trust_max, trust)
        if completed:
            assert trust - Decimal("0.0001") <= after <= trust + POLICY.trust_gain_cap
        else:
            assert after <= trust
        trust = after


# -- exposure over a user's trades (the sandbox state, no HTTP) -----------------------------------------------------

START = datetime(2026, 7, 31, 12, 0, tzinfo=UTC)
WHO = ClientIdentity(merchant_id=MERCHANT_ID, steam_id=STEAM_ID, trade_url=TRADE_URL)

actions = st.lists(
    st.tuples(
        st.sampled_from(["deposit", "advance", "complete", "revert", "fail"]),
        st.integers(min_value=0, max_value=30),  # which item, or which live trade
        st.sampled_from([CS2, RUST]),
        st.booleans(),  # isInstant
    ),
    min_size=1,
    max_size=25,
)


def _in_flight(state: SandboxState) -> list[SimTrade]:
    return [t for t in state.of_user(STEAM_ID, "deposit") if t.status in IN_FLIGHT]


@settings(max_examples=60, deadline=None)
@given(steps=actions, merchant=st.sampled_from([Decimal(0), Decimal(40), Decimal(300)]), level=st.sampled_from([0, 1]))
def test_exposure_is_the_pre_credit_in_flight_and_is_released_when_a_trade_ends(
    steps: list[tuple[str, int, int, bool]], merchant: Decimal, level: int
) -> None:
    state = SandboxState(step=timedelta(seconds=5), hold=timedelta(seconds=5))
    profile = state.profiles.get(STEAM_ID)
    profile.merchant_collateral, profile.verification_level = merchant, level
    now = START
    for action, pick, game, instant in steps:
        now += timedelta(minutes=1)  # clear of the per-user deposit rate limit
        live = _in_flight(state)
        before = state.exposure(STEAM_ID)
        if action == "deposit":
            owned = [item for item in state.inventory(WHO, game) if item.accepted]
            waiting = sum(t.status in ("initiated", "active") for t in state.of_user(STEAM_ID, "deposit"))
            if not owned or waiting >= MAX_ACTIVE_DEPOSITS:
                continue
            item = owned[pick % len(owned)]
            instant_now = state.collateral(WHO)
            request = DepositRequest.model_validate(
                {
                    "items": [{"itemId": item.id, "price": item.price, "amount": item.amount}],
                    "game": str(game),
                    "isInstant": instant,
                }
            )
            trade = state.create_deposit(WHO, request, now)
            assert trade.pre_credit + (trade.total_price - trade.pre_credit) == trade.total_price
            if game == RUST:
                assert trade.pre_credit == trade.total_price
            elif not instant:
                assert trade.pre_credit == 0
            else:
                assert trade.pre_credit == min(trade.total_price, instant_now)
                assert trade.pre_credit <= risk.instant_cap(level)
                assert trade.collateral_provider + trade.collateral_merchant == trade.pre_credit
            assert state.exposure(STEAM_ID) == before + (trade.pre_credit if game == CS2 else 0)
        elif live:
            trade = live[pick % len(live)]
            if action == "advance" or (action == "revert" and trade.status != "hold"):
                state.advance(trade, now)
            elif action == "complete":
                while not trade.is_final:
                    state.advance(trade, now)
            elif action == "revert":
                state.end(trade, "reverted", now, error=None, reverted_by="user")
            elif trade.status != "hold":
                state.end(trade, "failed", now, error=None, reverted_by=None)
            if trade.is_final:
                released = trade.pre_credit if trade.game == CS2 else 0
                assert state.exposure(STEAM_ID) == before - released
        held = sum((t.pre_credit for t in _in_flight(state) if t.game == CS2), start=Decimal(0))
        assert state.exposure(STEAM_ID) == held
        assert state.collateral(WHO) >= 0
        if state.profiles.get(STEAM_ID).trust < 0:
            assert state.collateral(WHO) == 0
    for trade in _in_flight(state):
        while not trade.is_final:
            state.advance(trade, now)
    assert state.exposure(STEAM_ID) == 0


# -- through the sandbox's HTTP API ---------------------------------------------------------------------------------


def _trust(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.0001"), ROUND_FLOOR)


async def _user(api: httpx.AsyncClient, steam_id: str = STEAM_ID) -> dict[str, Any]:
    found: dict[str, Any] = data(await api.get(f"/_sandbox/users/{steam_id}"))
    return found


async def _walk(api: httpx.AsyncClient, trade_id: str, *, to: str | None = None, steps: int = 0) -> dict[str, Any]:
    trade: dict[str, Any] = {}
    for _ in range(steps):
        trade = data(await api.post(f"/_sandbox/trades/{trade_id}/advance"))
    if to is not None:
        trade = data(await api.post(f"/_sandbox/trades/{trade_id}/advance", params={"to": to}))
    return trade


async def _dearest(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    items = await depositable(api, headers)
    return max(items, key=lambda i: i["offer"]["price"])


async def test_a_new_user_earns_trust_and_history_from_a_completed_deposit(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    fresh = await _user(api)
    assert (fresh["trust"], fresh["providerCollateral"], fresh["cap"], fresh["instantCredit"]) == (
        Decimal("0.05"),
        25,
        50,
        25,
    )
    item = await _dearest(api, headers)
    trade = data(await deposit(api, headers, [item], isInstant=True))
    assert trade["preCredit"] == 25
    assert trade["collateral"] == {"merchant": 0, "provider": 25}
    during = await _user(api)
    assert (during["exposure"], during["available"], during["instantCredit"]) == (25, 0, 0)

    await _walk(api, trade["id"], to="completed")
    after = await _user(api)
    gain = min(POLICY.trust_gain_cap, trade["totalPrice"] * POLICY.trust_gain_per_usd)
    assert after["trust"] == _trust(Decimal("0.05") + gain)
    assert after["history"] == {"completedUsd": trade["totalPrice"], "completedDeposits": 1, "reversals": 0}
    assert after["exposure"] == 0
    # The record now lifts the provider collateral over the floor: 10,000 * 0.6 * P * trust.
    modelled = risk.provider_collateral(trust=after["trust"], history=trade["totalPrice"], external=External(), level=0)
    assert after["providerCollateral"] == modelled > 25
    assert after["instantCredit"] == min(Decimal(50), modelled)


async def test_merchant_collateral_adds_to_the_provider_and_is_named_on_the_trade(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    body = dumps({"amount": Decimal("150")})
    view = data(await api.put(f"/_sandbox/users/{STEAM_ID}/merchant-collateral", content=body))
    assert (view["merchantCollateral"], view["available"], view["instantCredit"]) == (150, 175, 50)
    assert data(await api.get("/client/inventory", headers=headers))["collateral"] == 50
    item = await _dearest(api, headers)
    trade = data(await deposit(api, headers, [item], isInstant=True))
    assert (trade["preCredit"], trade["pendingCredit"]) == (50, trade["totalPrice"] - 50)
    assert trade["collateral"] == {"provider": 25, "merchant": 25}
    verified = data(await api.put(f"/_sandbox/users/{STEAM_ID}/verification", content=dumps({"level": 1})))
    assert (verified["providerCollateral"], verified["cap"], verified["available"]) == (250, 1000, 350)
    second = data(await deposit(api, headers, (await depositable(api, headers))[-1:], isInstant=True))
    assert second["preCredit"] == min(second["totalPrice"], Decimal(350))


@pytest.mark.parametrize("body", [{"amount": -1}, {"amount": "10"}, {}, {"amount": True}])
async def test_merchant_collateral_must_be_a_number_of_at_least_zero(
    api: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await api.put(f"/_sandbox/users/{STEAM_ID}/merchant-collateral", content=dumps(body))
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"amount": "must be a number of at least 0"}
    assert (await api.get("/_sandbox/users/123")).json()["error"]["key"] == "VALIDATION_FAILED"


async def test_a_reversal_makes_trust_negative_and_stops_instant_credit(api: httpx.AsyncClient) -> None:
    headers = await client_token(api)
    await api.put(f"/_sandbox/users/{STEAM_ID}/merchant-collateral", content=dumps({"amount": 500}))
    item = await _dearest(api, headers)
    trade = data(await deposit(api, headers, [item], isInstant=True))
    assert trade["preCredit"] == 50
    await _walk(api, trade["id"], steps=2)  # hold
    reverted = await _walk(api, trade["id"], to="reverted")
    assert reverted["status"] == "reverted"
    after = await _user(api)
    assert after["trust"] == _trust(max(POLICY.trust_min, Decimal("0.05") - trade["totalPrice"] * Decimal("0.004")))
    assert after["trust"] < 0
    assert after["history"]["reversals"] == 1
    assert after["exposure"] == 0  # the reverted trade no longer holds collateral...
    assert (after["providerCollateral"], after["instantCredit"]) == (0, 0)  # ...but the user has lost it all
    assert data(await api.get("/client/inventory", headers=headers))["collateral"] == 0
    cheap = (await depositable(api, headers))[:1]
    nothing = data(await deposit(api, headers, cheap, isInstant=True))
    assert (nothing["preCredit"], nothing["pendingCredit"]) == (0, nothing["totalPrice"])
    assert nothing["collateral"] == {"merchant": 0, "provider": 0}


async def _verify_with_email(api: httpx.AsyncClient, steam_id: str, email: str, *, approve: bool) -> dict[str, str]:
    headers = await client_token(api, steam_id)
    data(await api.post("/client/verification/start", content=dumps({"email": email}), headers=headers))
    if approve:
        data(await api.post(f"/_sandbox/users/{steam_id}/verification/approve"))
    return headers


async def test_a_reversal_on_a_verified_identity_costs_every_linked_account(api: httpx.AsyncClient) -> None:
    headers = await _verify_with_email(api, STEAM_ID, "pat@example.com", approve=True)
    linked = await _verify_with_email(api, OTHER_STEAM_ID, "PAT@example.com", approve=False)
    assert data(await api.post("/client/verification/link", headers=linked)) == {"linked": True}
    await _verify_with_email(api, THIRD_STEAM_ID, "someone@example.com", approve=False)  # same person? no: unlinked
    identity = (await _user(api))["identity"]
    assert identity["linkedAccounts"] == [STEAM_ID, OTHER_STEAM_ID]
    assert (await _user(api, OTHER_STEAM_ID))["verificationLevel"] == 1

    item = await _dearest(api, headers)
    trade = data(await deposit(api, headers, [item], isInstant=True))
    await _walk(api, trade["id"], steps=2)
    await _walk(api, trade["id"], to="reverted")
    penalised = _trust(max(POLICY.trust_min, Decimal("0.05") - trade["totalPrice"] * POLICY.reversal_penalty_per_usd))
    owner, sibling, stranger = [await _user(api, s) for s in (STEAM_ID, OTHER_STEAM_ID, THIRD_STEAM_ID)]
    assert owner["trust"] == sibling["trust"] == penalised
    assert sibling["instantCredit"] == 0
    assert sibling["history"]["reversals"] == 0  # the counters are the reverting account's own
    assert stranger["trust"] == Decimal("0.05")


async def test_without_verification_a_reversal_stays_with_its_account(api: httpx.AsyncClient) -> None:
    headers = await _verify_with_email(api, STEAM_ID, "pat@example.com", approve=False)
    await _verify_with_email(api, OTHER_STEAM_ID, "pat@example.com", approve=False)
    trade = data(await deposit(api, headers, [await _dearest(api, headers)], isInstant=True))
    await _walk(api, trade["id"], steps=2)
    await _walk(api, trade["id"], to="reverted")
    assert (await _user(api))["trust"] < 0
    assert (await _user(api, OTHER_STEAM_ID))["trust"] == Decimal("0.05")


async def test_fresh_client_data_on_a_token_moves_the_provider_collateral(api: httpx.AsyncClient) -> None:
    await client_token(api, clientData={"totalWager": 250000, "kycLevel": 3, "fiatDeposits": True})
    view = await _user(api)
    assert view["clientData"] == {"totalWager": 250000, "kycLevel": 3, "fiatDeposits": True, "cryptoDeposits": False}
    assert (view["externalReadiness"], view["providerCollateral"]) == (Decimal("0.8"), Decimal("160.00"))
    await client_token(api)  # the next token says nothing: the model forgets what it no longer hears
    assert (await _user(api))["providerCollateral"] == 25


# -- kept across restarts -------------------------------------------------------------------------------------------


async def test_profiles_survive_a_dump_and_load(api: httpx.AsyncClient, sandbox: Sandbox) -> None:
    await _verify_with_email(api, STEAM_ID, "pat@example.com", approve=True)
    linked = await _verify_with_email(api, OTHER_STEAM_ID, "pat@example.com", approve=False)
    await api.post("/client/verification/link", headers=linked)
    headers = await client_token(api, THIRD_STEAM_ID, clientData={"totalWager": 123456, "kycLevel": 2})
    await api.post("/client/verification/start", headers=headers)
    await api.put(f"/_sandbox/users/{THIRD_STEAM_ID}/merchant-collateral", content=dumps({"amount": Decimal("12.34")}))
    await api.put("/_sandbox/verification", content=dumps({"available": False}))
    profiles: Profiles = sandbox.state.profiles
    profiles.get(STEAM_ID).trust = Decimal("-0.1234")

    dumped = profiles.dump()
    assert json.loads(json.dumps(dumped)) == dumped  # plain JSON: Decimals as strings, times ISO-8601
    loaded = Profiles.load(json.loads(json.dumps(dumped)))
    assert loaded == profiles
    assert loaded.dump() == dumped
    views = [await _user(api, s) for s in (STEAM_ID, OTHER_STEAM_ID, THIRD_STEAM_ID)]
    sandbox.state.profiles = loaded
    assert [await _user(api, s) for s in (STEAM_ID, OTHER_STEAM_ID, THIRD_STEAM_ID)] == views


def test_a_profile_loads_what_it_dumped() -> None:
    profile = Profile(
        steam_id=STEAM_ID,
        trust=Decimal("0.5"),
        history=Decimal("99.99"),
        external=External(Decimal("10.5"), 1, True, False),
    )
    assert Profile.load(json.loads(json.dumps(profile.dump()))) == profile
