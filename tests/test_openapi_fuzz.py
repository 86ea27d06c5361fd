"""Schemathesis against our own OpenAPI document: no generated input, valid or not, gets a 500.

The app is built from the session's settings and served in-process by schemathesis's ASGI transport (which runs
its lifespan on an event loop of its own). Requests carry a valid user JWT and the admin key, so the fuzzing gets
past authentication; AssetPay is faked with respx, answering with valid envelopes and, in turn, clean errors.
Bounded: a few examples per operation, one run of a few seconds.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import hypothesis
import hypothesis.strategies as st
import pytest
import respx
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi

from assetpay_merchant.app import create_app
from assetpay_merchant.config import Settings
from tests.assetpay_respx import BASE_URL, register, trade_answer
from tests.gateway.fake_assetpay import fail, item, ok
from tests.gateway.openapi import check_request, template_of
from tests.support import ADMIN_KEY, deliver_trade, trade, user_token

USERS = [f"fuzz-{n}" for n in range(40)]
MAX_EXAMPLES = 20
# Our schema can only say "a number, or a string" for money; drawn as real amounts, prices get past validation.
MONEY = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("9999999999999999.99999999"), places=8)


def with_real_prices(cases: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Positive cases whose `items[].price` / `maxPrice` are decimal amounts (as a frontend sends them)."""

    @st.composite
    def priced(draw: st.DrawFn) -> Any:
        case = draw(cases)
        items = case.body.get("items") if isinstance(case.body, dict) else None
        for entry in items if isinstance(items, list) else []:
            for key in ("price", "maxPrice"):
                if isinstance(entry, dict) and key in entry:
                    entry[key] = str(draw(MONEY))
        return case

    return priced()


class GenericAssetPay:
    """Any AssetPay route our backend calls: a valid answer, and every fourth trade or read a clean refusal (one
    our API answers with a 4xx: the check is that *our* code never fails, so AssetPay's outages stay out)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.calls = 0
        self._turn = itertools.count()
        self._clients: dict[str, str] = {}  # client token -> our user id it was issued for

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        try:
            check_request(request)
        except AssertionError as problem:
            self.problems.append(f"{request.method} {request.url}: {problem}")
            return fail(400, "VALIDATION_FAILED", fields={"request": "does not match the OpenAPI document"})
        template = template_of(request.url.path)
        if template == "/auth/authenticate-client":
            token = f"token-{uuid.uuid4()}"
            self._clients[token] = json.loads(request.content)["clientId"]
            return ok({"token": token})
        turn = next(self._turn)
        if turn % 4 == 3:
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
        if template == "/secure/trades/{tradeId}":
            return fail(404, "NOT_FOUND")
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
    schema.config.generation.update(max_examples=MAX_EXAMPLES, database="none", deterministic=True)
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    yield schema
    schemathesis_asgi.shutdown_lifespans()  # closes the app's engine and HTTP client on its own loop


@pytest.fixture(autouse=True)
async def fuzz_users(client: httpx.AsyncClient) -> None:
    """Registered and funded users the generated requests act as (one after another, so the per-user deposit
    guard does not answer every deposit with 429)."""
    for user_id in USERS:
        steam_id = await register(client, user_id)
        funding = trade(status="completed", total="100000.00", pre="0", user_id=user_id, steam_id=steam_id)
        assert (await deliver_trade(client, funding)).status_code == 200


def test_no_generated_input_gets_a_server_error(api_schema: Any, generic_assetpay: GenericAssetPay) -> None:
    """Positive and negative examples for every operation; every answer is checked with not_a_server_error.

    (schemathesis's own pytest plugin does not run on this pytest, so the operations' strategies are driven with
    hypothesis here, without shrinking: a failure is reported with the request that caused it.)
    """
    users = itertools.cycle(USERS)
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            cases = operation.as_strategy(generation_mode=mode)
            if mode is GenerationMode.POSITIVE:
                cases = with_real_prices(cases)

            @hypothesis.settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            @hypothesis.given(case=cases)
            def run(case: Any) -> None:
                headers = {"Authorization": f"Bearer {user_token(next(users))}", "X-Admin-Key": ADMIN_KEY}
                case.call_and_validate(headers=headers, checks=[not_a_server_error])

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                continue  # nothing negative to say about an operation without inputs
            except (Exception, FailureGroup) as failure:  # every failure is collected, then reported together
                failures.append(f"{operation.label} ({mode.value}): {failure}")
    assert operations >= 10, "the whole API was fuzzed"
    assert generic_assetpay.calls > 0, "the fuzzing reached AssetPay"
    assert not failures, "\n\n".join(failures)
