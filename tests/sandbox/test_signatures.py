"""The sandbox signs its callbacks exactly as AssetPay does: the published signature vector, byte for byte."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from assetpay_merchant.gateway.signature import SIGNATURE_HEADER, verify
from assetpay_sandbox import Sandbox

# The vector AssetPay's SDK tests publish (docs: secret, delivery id, timestamp, body → s).
SECRET = "current-secret"
DELIVERY_ID = "delivery-1"
MOMENT = datetime(2026, 7, 31, 12, 0, tzinfo=UTC)
BODY = b'{"event":"trade.completed","tradeId":"trade-1"}'
EXPECTED = "t=2026-07-31T12:00:00.000Z,id=delivery-1,s=264a1a0c4deb4462658b9cc21cce4bf2baaf8da9dd7dd1a51bbd71e0f4d81135"


async def test_a_callback_carries_the_vectors_signature_over_the_raw_bytes() -> None:
    sent: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    sandbox = Sandbox(
        api_key="ap_vector",
        api_secret=SECRET,
        merchant_id="00000000-0000-4000-8000-000000000001",
        callback_url="https://merchant.test/webhooks/assetpay",
        clock=lambda: MOMENT,
        callback_transport=httpx.MockTransport(receive),
    )
    try:
        answer = await sandbox._post(BODY, DELIVERY_ID, "trade-1", "completed", kind="event")
    finally:
        await sandbox.stop()
    assert answer.ok
    (request,) = sent
    assert request.content == BODY
    assert request.headers[SIGNATURE_HEADER] == EXPECTED
    # ... and the backend's own check accepts it with that secret, and only with it.
    verify(request.headers[SIGNATURE_HEADER], request.content, secrets=(SECRET.encode(),), now=MOMENT)
