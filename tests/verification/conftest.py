"""AssetPay's verification routes faked with respx beside the ones tests/assetpay_respx.py fakes, and builders of
their documented answers (tests/data/assetpay-openapi.json)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from assetpay_merchant.api.deps import Resources
from tests.assetpay_respx import AssetPay, Endpoint, mocked_assetpay

CAPTURE_URL = "https://signicat.example/capture/dossier-1?session=abc"


@dataclass(frozen=True)
class Verification:
    """AssetPay's three verification routes, each an `Endpoint` checked against the OpenAPI document."""

    status: Endpoint
    start: Endpoint
    link: Endpoint

    @property
    def call_count(self) -> int:
        return self.status.call_count + self.start.call_count + self.link.call_count


def _endpoint(fake: AssetPay, method: str, template: str) -> Endpoint:
    return Endpoint(fake, fake.router.route(method=method, path__regex=f"^{template}$"), method, template)


@pytest.fixture
def assetpay(resources: Resources) -> Iterator[AssetPay]:
    with mocked_assetpay(resources) as fake:
        yield fake


@pytest.fixture
def verify(assetpay: AssetPay) -> Verification:
    return Verification(
        status=_endpoint(assetpay, "GET", "/client/verification/status"),
        start=_endpoint(assetpay, "POST", "/client/verification/start"),
        link=_endpoint(assetpay, "POST", "/client/verification/link"),
    )


def process(status: str = "CAPTURE_PENDING", **overrides: Any) -> dict[str, Any]:
    """A `latestProcess` with every field the document requires."""
    return {
        "dossierId": "dossier-1",
        "processId": "process-1",
        "captureUrl": CAPTURE_URL,
        "status": status,
        "createdAt": "2026-07-31T12:00:00.000Z",
        "completedAt": None,
        **overrides,
    }


def identity(**overrides: Any) -> dict[str, Any]:
    """A `linkedIdentity` with every field the document requires."""
    return {
        "id": "5f0c6f3e-8a3b-4c2d-9e1f-0a1b2c3d4e5f",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "documentCountry": "GBR",
        "linkedAt": "2026-07-31T12:30:00.000Z",
        **overrides,
    }


def status_data(
    level: int = 0,
    email: str | None = None,
    latest: dict[str, Any] | None = None,
    linked: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {"verificationLevel": level, "email": email, "latestProcess": latest, "linkedIdentity": linked}
