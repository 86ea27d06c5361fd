"""Every log line names what it is about (request, user, trade, delivery), in text and JSON, and shows no secret."""

from __future__ import annotations

import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from fastapi.security import HTTPAuthorizationCredentials

from assetpay_merchant.api.auth import current_user_id
from assetpay_merchant.api.deps import Resources
from assetpay_merchant.gateway.callbacks import classify
from assetpay_merchant.gateway.signature import SignedDelivery
from assetpay_merchant.observability import (
    DELIVERY_ID,
    REQUEST_ID,
    TRADE_ID,
    USER_ID,
    JsonFormatter,
    LogContext,
    TextFormatter,
    begin_request,
    end_request,
    log_context,
    logging_config,
    redact,
    redact_values,
)
from assetpay_merchant.services import intake
from tests.support import deliver, register_user, trade, user_token


def _record(message: str = "hello %s", *args: object, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("assetpay_merchant.test", logging.WARNING, __file__, 1, message, args or None, None)
    record.__dict__.update(fields)
    return record


def test_text_lines_carry_the_known_context_after_the_message_and_nothing_for_the_unknown() -> None:
    tokens = begin_request("req-1")
    try:
        USER_ID.set("u-42")
        record = _record("hello %s", "world")
        assert LogContext().filter(record)
        line = TextFormatter().format(record)
    finally:
        end_request(tokens)
    assert line.endswith("WARNING assetpay_merchant.test: hello world request_id=req-1 user_id=u-42")
    assert "trade_id" not in line
    assert "delivery_id" not in line
    bare = _record("nothing known")
    LogContext().filter(bare)
    assert TextFormatter().format(bare).endswith("assetpay_merchant.test: nothing known")


def test_json_lines_carry_the_context_as_fields() -> None:
    trade_id = uuid.uuid4()
    with log_context(trade_id=trade_id, delivery_id="dlv-9"):
        record = _record("applied")
        LogContext().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "applied"
    assert entry["trade_id"] == str(trade_id)
    assert entry["delivery_id"] == "dlv-9"
    assert "request_id" not in entry
    assert "user_id" not in entry
    assert TRADE_ID.get() is None
    assert DELIVERY_ID.get() is None


def test_a_value_the_caller_passed_wins_and_odd_values_are_quoted() -> None:
    with log_context(trade_id="from-context"):
        record = _record("x", trade_id='has "quotes" and spaces')
        LogContext().filter(record)
    assert TextFormatter().format(record).endswith(r'x trade_id="has \"quotes\" and spaces"')


def test_the_traceback_comes_after_the_context() -> None:
    tokens = begin_request("req-err")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
        LogContext().filter(record)
    finally:
        end_request(tokens)
    first, *rest = TextFormatter().format(record).splitlines()
    assert first.endswith("x: failed request_id=req-err")
    assert rest[-1] == "ValueError: boom"


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("GET /v1/ws?since=3&token=eyJhbGciOi.eyJzdWIiOiJ1In0.c2lnbmF0dXJl HTTP/1.1", "since=3&token=[redacted]"),
        ("Authorization: Bearer abc.def-ghi", "Bearer [redacted]"),
        ("connect postgresql://app:s3cr3t-pw@db:5432/x failed", "postgresql://app:[redacted]@db:5432/x"),
        ('< TEXT \'{"type": "auth", "token": "opaque-token-value"}\'', '"token": "[redacted]"'),
        ("feed /socket.io/?apiKey=ap_live_123&EIO=4", "apiKey=[redacted]&EIO=4"),
        ("client token eyJhbGciOiJIUzI1NiJ9.eyJtZXJjaGFudElkIjoibSJ9.sig-value", "client token [redacted]"),
    ],
)
def test_credentials_are_blanked_by_their_shape(line: str, kept: str) -> None:
    assert kept in redact(line)


def test_configured_secrets_are_blanked_wherever_they_appear() -> None:
    redact_values(["a-configured-secret-value", "short"])
    assert redact("oops: a-configured-secret-value!") == "oops: [redacted]!"
    assert redact("a short word") == "a short word"  # too short to be one of ours: the settings refuse those


def _capture(json_lines: bool) -> tuple[logging.Handler, io.StringIO]:
    """A handler configured exactly as `logging_config` configures the real one, writing to a buffer."""
    config = logging_config("INFO", json_lines=json_lines)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(config["formatters"]["line"]["()"]())
    handler.addFilter(config["filters"]["context"]["()"]())
    return handler, stream


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    handler, stream = _capture(json_lines=True)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


async def test_a_callback_request_logs_its_request_and_delivery_and_answers_the_id(
    client: httpx.AsyncClient, captured: io.StringIO
) -> None:
    delivery_id = f"dlv-{uuid.uuid4()}"
    answer = await client.post(
        "/webhooks/assetpay", content=b"", headers={"X-Request-Id": "edge-7f3a:1"}
    )  # unsigned, not a ping: refused before anything is recorded
    assert answer.headers["x-request-id"] == "edge-7f3a:1"
    broken = {"trade": {"id": "t-" + uuid.uuid4().hex, "type": "deposit", "status": "hold"}}  # no price, no items
    refused = await deliver(client, broken, delivery_id=delivery_id)
    assert refused.status_code == 422
    request_id = refused.headers["x-request-id"]
    assert len(request_id) == 32  # none was sent: a fresh one
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    [line] = [line for line in lines if line["message"].startswith(f"callback {delivery_id} refused")]
    assert line["request_id"] == request_id
    assert line["delivery_id"] == delivery_id
    assert REQUEST_ID.get() is None
    assert DELIVERY_ID.get() is None


@pytest.mark.parametrize("sent", ["", "has space", "x" * 129, 'quote"', "ünïcode", "-leading-dash"])
async def test_a_request_id_that_is_not_a_sane_token_is_replaced(client: httpx.AsyncClient, sent: str) -> None:
    answer = await client.get("/healthz", headers={"X-Request-Id": sent.encode()})
    assert answer.headers["x-request-id"] != sent
    assert len(answer.headers["x-request-id"]) == 32


async def test_the_auth_dependency_names_the_user_for_the_rest_of_the_request(resources: Resources) -> None:
    tokens = begin_request("req-auth")
    try:
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=user_token("u-ctx"))
        assert await current_user_id(resources, credentials) == "u-ctx"
        assert USER_ID.get() == "u-ctx"
    finally:
        end_request(tokens)
    assert USER_ID.get() is None


async def test_intake_names_the_delivery_and_our_trade(client: httpx.AsyncClient, resources: Resources) -> None:
    await register_user(client, "u-intake-ctx")
    body = {"trade": trade(user_id="u-intake-ctx", status="hold")}
    delivery = SignedDelivery(delivery_id=f"dlv-{uuid.uuid4()}", timestamp=datetime.now(UTC))
    tokens = begin_request("req-intake")
    try:
        result = await intake.receive(resources.database, delivery, b"{}", classify(body))
        assert result.settled is not None
        assert DELIVERY_ID.get() == delivery.delivery_id
        assert TRADE_ID.get() == result.settled.trade.id
    finally:
        end_request(tokens)
