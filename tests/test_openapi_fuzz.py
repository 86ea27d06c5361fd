"""Schemathesis against our own OpenAPI document, every operation, in positive and negative modes:

- no generated input, valid or not, gets a 5xx (not_a_server_error);
- every answer is one the document lists for the operation, with its media type, body schema and headers
  (status_code_conformance, content_type_conformance, response_schema_conformance, response_headers_conformance);
- an operation that asks for credentials refuses a request without them or with wrong ones (ignored_auth);
- what the document calls valid is accepted (positive_data_acceptance) and what it calls invalid is refused
  (negative_data_rejection);
- and, after it all, nothing moved: every balance is what it was and the sum of its ledger entries.

Each operation gets schemathesis's examples and coverage cases (boundaries, every kind of invalid value, missing
parameters), then a few fuzzed ones per mode. The app is built from the session's settings and served in-process by
schemathesis's ASGI transport (which runs its lifespan on an event loop of its own). Requests carry a valid user JWT
and the admin key, so the cases get past authentication; AssetPay is faked with respx, answering with valid
envelopes and, in turn, clean refusals.

positive_data_acceptance is not asked of an answer that is AssetPay's refusal (the fake refused on purpose), nor of a
422 that names only a rule JSON Schema cannot state, which the document spells out in words instead: a `cursor` that
is not one of ours, a deposit whose total is more than an amount can be, a `maxPrice` below its `price`.
negative_data_rejection is not asked of a case whose only fault is the JSON type of a field pydantic coerces
(LENIENT_FIELDS). A negative case that drops or spoils a credential header gets it as generated, not ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import hypothesis
import pytest
import respx
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.generation.drivers import ExamplesGenerator
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.generation.meta import CoveragePhaseData, CoverageScenario
from schemathesis.generation.overrides import Override
from schemathesis.python import asgi as schemathesis_asgi
from sqlalchemy.ext.asyncio import AsyncEngine

from assetpay_merchant.app import create_app
from assetpay_merchant.config import Settings
from tests.assetpay_respx import BASE_URL, register, rows, trade_answer
from tests.gateway.fake_assetpay import fail, item, ok
from tests.gateway.openapi import check_request, template_of
from tests.support import ADMIN_KEY, deliver_trade, ledger_problems, trade, user_token

USERS = [f"fuzz-{n}" for n in range(40)]
FUNDING = Decimal("10000000.00")  # more than any withdrawal can ask (50 items of at most 100000), so never a 402
FUZZED_EXAMPLES = 40
COVERAGE_CASES = 200
"""At most this many coverage cases per operation (taken evenly across all it yields)."""
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
CHECKS = [
    not_a_server_error,
    ignored_auth,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]
UNSTATABLE_RULES = (
    "not a cursor we issued",
    "not a ledger cursor",
    "not a trades cursor",
    "the deposit's total is larger than an amount can be",
    "maxPrice must not be below price",
)
"""422 reasons for rules a JSON Schema cannot state (api/pagination.py, api/ledger.py, api/trades.py)."""
LENIENT_FIELDS = frozenset({"isInstant", "fiatDeposits", "cryptoDeposits", "amount", "kycLevel", "registrationDate"})
"""Body fields pydantic reads in lax mode: a boolean from 0/1 or "true", an integer from a numeric string, a date-time
from a timestamp. Clients may send these today; the document does not advertise them, and refusing them would break
such clients, so a negative case that only changes one of these fields' type is not asked to be refused."""


class GenericAssetPay:
    """Any AssetPay route our backend calls: a valid answer, and every fourth trade or read a clean refusal (one
    our API answers with a 4xx: the check is that *our* code never fails, so AssetPay's outages stay out)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.calls = 0
        self.refusals = 0
        self._turn = itertools.count()
        self._clients: dict[str, str] = {}  # client token -> our user id it was issued for

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        try:
            check_request(request)
        except AssertionError as problem:
            self.problems.append(f"{request.method} {request.url}: {problem}")
            self.refusals += 1
            return fail(400, "VALIDATION_FAILED", fields={"request": "does not match the OpenAPI document"})
        template = template_of(request.url.path)
        if template == "/auth/authenticate-client":
            token = f"token-{uuid.uuid4()}"
            self._clients[token] = json.loads(request.content)["clientId"]
            return ok({"token": token})
        turn = next(self._turn)
        if turn % 4 == 3:
            self.refusals += 1
            return [
                fail(409, "PRICE_CHANGED"),
                fail(429, "RATE_LIMITED", headers={"Retry-After": "5"}),
                fail(400, "VALIDATION_FAILED", fields={"items.0.price": "must match the offer"}),
            ][turn // 4 % 3]
        if template in ("/client/trading/deposit", "/client/trading/withdraw"):
            user_id = self._clients[request.headers["authorization"].removeprefix("Bearer ")]
            return ok(trade_answer(request, user_id=user_id, status="initiated"))
        if template == "/client/trading/withdraw/{tradeId}/cancel":
            trade_id = request.url.path.split("/")[-2]
            return ok({"tradeId": trade_id, "requested": 1, "cancelled": 1, "failed": 0, "items": []})
        if template == "/client/inventory":
            inventory = [item(item_id="730_12345678901", price="10.75")]
            return ok({"inventory": inventory, "count": 1, "updatedAt": None, "collateral": Decimal("12.5")})
        if template == "/client/market":
            return ok({"items": [item(item_id="listing-0001", price="4.20")], "count": 1})
        self.refusals += 1
        return fail(404, "NOT_FOUND")


@pytest.fixture(scope="module")
def generic_assetpay() -> Iterator[GenericAssetPay]:
    fake = GenericAssetPay()
    with respx.mock(base_url=BASE_URL, assert_all_called=False, assert_all_mocked=True) as router:
        router.route().mock(side_effect=fake)
        yield fake
    assert not fake.problems, fake.problems[:5]


@pytest.fixture(scope="module")
def api_schema(settings: Settings, generic_assetpay: GenericAssetPay) -> Iterator[Any]:
    app = create_app(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(max_examples=FUZZED_EXAMPLES, database="none", deterministic=True)
    yield schema
    schemathesis_asgi.shutdown_lifespans()  # closes the app's engine and HTTP client on its own loop


@pytest.fixture(autouse=True)
async def fuzz_users(client: httpx.AsyncClient) -> None:
    """Registered and funded users the generated requests act as (one after another, so the per-user deposit
    guard does not answer every deposit with 429)."""
    for user_id in USERS:
        steam_id = await register(client, user_id)
        funding = trade(status="completed", total=FUNDING, pre="0", user_id=user_id, steam_id=steam_id)
        assert (await deliver_trade(client, funding)).status_code == 200


def _unstatable(response: Any) -> bool:
    """A 422 naming only rules the document states in words (see UNSTATABLE_RULES)."""
    if response.status_code != 422:
        return False
    try:
        fields = response.json()["error"]["fields"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(fields) and all(any(rule in str(why) for rule in UNSTATABLE_RULES) for why in fields.values())


def _negated_headers(case: Any) -> set[str]:
    """Headers a negative case removed or spoiled on purpose (the valid credentials must not be put back)."""
    if case.meta is None or not case.meta.generation.mode.is_negative:
        return set()
    data = case.meta.phase.data
    named = [(data.parameter_location, data.parameter)]
    named += [(mutation.parameter_location, mutation.parameter) for mutation in data.mutations]
    return {name.lower() for location, name in named if location is ParameterLocation.HEADER and name}


def _only_lenient_type_changes(case: Any) -> bool:
    """Whether a negative case differs from a valid one only in the JSON type of LENIENT_FIELDS."""
    if case.meta is None:
        return False
    data = case.meta.phase.data
    if isinstance(data, CoveragePhaseData):  # location: /properties/clientData/anyOf/0/properties/kycLevel/anyOf/0/type
        parts = (data.location or "").split("/")
        named = [parts[at + 1] for at, part in enumerate(parts[:-1]) if part == "properties"]
        return data.scenario is CoverageScenario.INCORRECT_TYPE and bool(named) and named[-1] in LENIENT_FIELDS
    mutations = data.mutations
    return bool(mutations) and all(
        set(mutation.keywords) <= {"type"} and bool(mutation.path) and str(mutation.path[-1]) in LENIENT_FIELDS
        for mutation in mutations
    )


class Run:
    """Sends cases, checks each answer, and collects every distinct failure (never stops at the first)."""

    def __init__(self, fake: GenericAssetPay) -> None:
        self.fake = fake
        self.users = itertools.cycle(USERS)
        self.failures: dict[tuple[str, str, str], str] = {}
        self.statuses: Counter[tuple[str, str, int]] = Counter()
        self.cases = 0

    def __call__(self, case: Any, mode: GenerationMode) -> None:
        credentials = {"Authorization": f"Bearer {user_token(next(self.users))}", "X-Admin-Key": ADMIN_KEY}
        negated = _negated_headers(case)
        headers = {name: value for name, value in credentials.items() if name.lower() not in negated}
        refusals = self.fake.refusals
        response = case.call(headers=headers)
        self.cases += 1
        self.statuses[(case.operation.label, mode.value, response.status_code)] += 1
        checks = CHECKS
        if self.fake.refusals != refusals or _unstatable(response):
            checks = [check for check in checks if check is not positive_data_acceptance]
        if _only_lenient_type_changes(case):
            checks = [check for check in checks if check is not negative_data_rejection]
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except (Failure, FailureGroup) as failed:
            found = failed.exceptions if isinstance(failed, FailureGroup) else (failed,)
            for failure in found:
                self.failures.setdefault((case.operation.label, mode.value, failure.title), str(failed))

    def fuzz(self, operation: Any, mode: GenerationMode) -> None:
        @hypothesis.settings(
            max_examples=FUZZED_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def send(case: Any) -> None:
            self(case, mode)

        with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # nothing negative to say without inputs
            send()


def _mode_of(case: Any) -> GenerationMode:
    mode: GenerationMode = case.meta.generation.mode if case.meta is not None else GenerationMode.POSITIVE
    return mode


def _evenly(cases: list[Any], limit: int) -> list[Any]:
    step = max(1, len(cases) // limit)
    return cases[::step][:limit]


def fuzz_every_operation(schema: Any, fake: GenericAssetPay) -> tuple[Run, int]:
    """Each operation's examples, coverage cases (both modes), then fuzzed cases in each mode."""
    run = Run(fake)
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        examples = ExamplesGenerator(
            operation=operation, override=Override(), feedback=FeedbackSources(), fill_missing=False
        )
        for case in examples:
            run(case, GenerationMode.POSITIVE)
        generation = schema.config.generation_for(operation=operation, phase="coverage")
        coverage = list(
            schema.iter_coverage_cases(operation, generation_modes=list(MODES), generation_config=generation)
        )
        for case in _evenly(coverage, COVERAGE_CASES):
            run(case, _mode_of(case))
        for mode in MODES:
            run.fuzz(operation, mode)
    return run, operations


async def test_the_api_does_what_its_document_says_and_fuzzing_moves_no_money(
    api_schema: Any, generic_assetpay: GenericAssetPay, engine: AsyncEngine
) -> None:
    """(schemathesis's own pytest plugin does not run on this pytest, so its generators are driven here, in a
    thread of their own, without shrinking: a failure is reported with the request that caused it.)"""
    started = time.monotonic()
    run, operations = await asyncio.to_thread(fuzz_every_operation, api_schema, generic_assetpay)
    elapsed = time.monotonic() - started

    report = "\n\n".join(f"{label} ({mode}): {message}" for (label, mode, _), message in run.failures.items())
    assert not run.failures, report
    assert operations >= 16, "the whole API was fuzzed"
    assert generic_assetpay.calls > 0, "the fuzzing reached AssetPay"
    for label in ("POST /v1/deposits", "POST /v1/withdrawals"):
        accepted = sum(n for (op, _, status), n in run.statuses.items() if op == label and status == 201)
        assert accepted >= 5, f"{label}: the valid bodies the document describes are accepted"

    # Nothing the fuzzing did moved money but what it asked an operator's adjustment of (it holds the admin key):
    # AssetPay only ever answered "initiated" (or refused), which credits and debits nothing, so every balance is
    # its funding (0 for users the fuzzing registered) plus its adjustments, all of it ledgered.
    assert await ledger_problems(engine) == []
    balances = {row["user_id"]: row["available"] for row in await rows(engine, "SELECT * FROM balances")}
    sums = {
        (row["user_id"], row["adjustment"]): (row["total"], row["entries"])
        for row in await rows(
            engine,
            "SELECT user_id, kind = 'adjustment' AS adjustment, sum(amount) AS total, count(*) AS entries "
            "FROM ledger_entries GROUP BY 1, 2",
        )
    }
    adjusted = {user_id: totals for (user_id, adjustment), totals in sums.items() if adjustment}
    ledgered = {user_id: totals for (user_id, adjustment), totals in sums.items() if not adjustment}
    for user_id in USERS:
        adjustment, _ = adjusted.get(user_id, (0, 0))
        assert balances[user_id] == FUNDING + adjustment, user_id
        assert ledgered[user_id] == (FUNDING, 1), user_id
    others = {user_id: amount for user_id, amount in balances.items() if user_id not in USERS}
    assert all(amount == adjusted.get(user_id, (0, 0))[0] for user_id, amount in others.items()), others
    assert set(ledgered) == set(USERS)
    print(f"\n{run.cases} cases over {operations} operations in {elapsed:.1f} s")
