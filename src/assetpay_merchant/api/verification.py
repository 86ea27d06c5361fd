"""`GET /v1/verification`, `POST /v1/verification/start`, `POST /v1/verification/link`: AssetPay's identity
verification for the frontend, with the user's client token. A verified user (level 1) gets a higher instant-credit
cap per deposit.

The flow: start (with the user's email, so other accounts of the same person can link later), open `captureUrl`,
then read the status until the process is final. An account of a person already verified elsewhere links instead.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from assetpay_merchant.api.auth import UNAUTHORIZED, UserId
from assetpay_merchant.api.deps import ResourcesDep
from assetpay_merchant.api.routing import ExactJSONRoute
from assetpay_merchant.api.schemas import BODY_REFUSED, NO_BODY, UPSTREAM, Responses, error
from assetpay_merchant.gateway import (
    LinkedIdentity,
    VerificationLinked,
    VerificationProcess,
    VerificationStarted,
    VerificationStatus,
)
from assetpay_merchant.gateway.models import EMAIL_PATTERN, MAX_EMAIL_LENGTH
from assetpay_merchant.services import verification

router = APIRouter(prefix="/v1", tags=["verification"], route_class=ExactJSONRoute)

_EMAIL = re.compile(EMAIL_PATTERN)
EMAIL_RULE = "must be an email address such as name@example.com (ASCII, no quoted parts or IP literals)"


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise PydanticCustomError("email", EMAIL_RULE)
    return value


Email = Annotated[
    str,
    Field(max_length=MAX_EMAIL_LENGTH),
    AfterValidator(_email),
    # The exact rule, so what the document calls valid is accepted and nothing else is (no `format: email`: JSON
    # Schema tools read that one each their own way).
    WithJsonSchema(
        {"type": "string", "maxLength": MAX_EMAIL_LENGTH, "pattern": EMAIL_PATTERN, "examples": ["name@example.com"]}
    ),
]
"""An email address as AssetPay takes it (gateway/models.py EMAIL_PATTERN; pydantic's EmailStr would need the
email-validator package, which the project does not depend on)."""


# -- shapes ---------------------------------------------------------------------------------------------------------


class VerificationStartIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"email": "player@example.com"}]})

    email: Email | None = Field(
        default=None,
        description="Kept by AssetPay, so that other accounts of the same person can link to this verification",
    )


class VerificationProcessOut(BaseModel):
    dossierId: str = Field(description="Signicat dossier id")
    processId: str | None = Field(description="Signicat process id")
    captureUrl: str = Field(description="Where the user scans the document and takes the selfie (browser or webview)")
    status: str = Field(
        description="CREATED, CAPTURE_PENDING, PROCESSING, ACCEPTED, REJECTED, ERROR or EXPIRED (new values may come)",
        examples=["CAPTURE_PENDING"],
    )
    createdAt: datetime
    completedAt: datetime | None

    @classmethod
    def of(cls, process: VerificationProcess) -> VerificationProcessOut:
        return cls(
            dossierId=process.dossier_id,
            processId=process.process_id,
            captureUrl=process.capture_url,
            status=process.status,
            createdAt=process.created_at,
            completedAt=process.completed_at,
        )


class LinkedIdentityOut(BaseModel):
    id: str = Field(description="AssetPay's id of the verified identity")
    firstName: str | None
    lastName: str | None
    documentCountry: str | None = Field(description="ISO 3166-1 alpha-3 country of the identity document")
    linkedAt: datetime

    @classmethod
    def of(cls, identity: LinkedIdentity) -> LinkedIdentityOut:
        return cls(
            id=identity.id,
            firstName=identity.first_name,
            lastName=identity.last_name,
            documentCountry=identity.document_country,
            linkedAt=identity.linked_at,
        )


class VerificationOut(BaseModel):
    verificationLevel: int = Field(
        ge=0, description="0: not verified; 1: verified (PictureID), with a higher instant-credit cap per deposit"
    )
    email: str | None = Field(description="The email linking goes by (given at a start)")
    latestProcess: VerificationProcessOut | None = Field(description="The latest verification attempt, if any")
    linkedIdentity: LinkedIdentityOut | None = Field(description="The verified identity, once there is one")

    @classmethod
    def of(cls, status: VerificationStatus) -> VerificationOut:
        process, identity = status.latest_process, status.linked_identity
        return cls(
            verificationLevel=status.level,
            email=status.email,
            latestProcess=VerificationProcessOut.of(process) if process is not None else None,
            linkedIdentity=LinkedIdentityOut.of(identity) if identity is not None else None,
        )


class VerificationStartedOut(BaseModel):
    captureUrl: str = Field(description="Open it for the user to scan the document and take the selfie")
    dossierId: str = Field(description="Signicat dossier id (the status's latestProcess.dossierId)")

    @classmethod
    def of(cls, started: VerificationStarted) -> VerificationStartedOut:
        return cls(captureUrl=started.capture_url, dossierId=started.dossier_id)


class VerificationLinkedOut(BaseModel):
    linked: bool = Field(description="The account is linked to a verified identity: verification level 1 at once")

    @classmethod
    def of(cls, linked: VerificationLinked) -> VerificationLinkedOut:
        return cls(linked=linked.linked)


# -- what each route may answer -------------------------------------------------------------------------------------


def _responses(*, not_found: str = "", conflict: str = "", invalid: str = "", unavailable: str = "") -> Responses:
    """The statuses of a route that asks AssetPay with the user's client token, naming the route's own keys."""
    return {
        401: UNAUTHORIZED,
        404: error(f"{not_found}USER_NOT_FOUND: the platform has not registered the user; NOT_FOUND: AssetPay's"),
        409: error(f"{conflict}TRADE_REFUSED: AssetPay refused for a reason it did not name", retry_after=True),
        422: error(
            f"{invalid}VALIDATION_FAILED (`fields`) or INVALID_TRADE_URL: AssetPay refused the stored profile when "
            "issuing the user's client token"
        ),
        429: error("RATE_LIMITED: AssetPay's rate limit", retry_after=True),
        502: UPSTREAM[502],
        503: error(
            f"{unavailable}MAINTENANCE, ASSETPAY_NOT_CONFIGURED, or DATABASE_UNAVAILABLE: retry later",
            retry_after=True,
        ),
        504: UPSTREAM[504],
    }


@router.get(
    "/verification",
    summary="The user's identity verification: level, latest process, linked identity",
    description="Poll it after the user opened `captureUrl` until `latestProcess.status` is final.",
    responses=_responses(),
)
async def verification_status(user_id: UserId, resources: ResourcesDep) -> VerificationOut:
    status = await verification.status(database=resources.database, assetpay=resources.assetpay, user_id=user_id)
    return VerificationOut.of(status)


@router.post(
    "/verification/start",
    summary="Start an identity verification (document scan and selfie)",
    description="One process per user per 30 minutes: while one is open, continue it with the status's "
    "`latestProcess.captureUrl`.",
    responses=_responses(
        conflict="VERIFICATION_ALREADY_VERIFIED: the account is verified already; VERIFICATION_IN_PROGRESS: a "
        "process started in the last 30 minutes is open (Retry-After when AssetPay gives one); ",
        invalid=f"VALIDATION_FAILED: `fields.email` is not an email address, or another body field ({BODY_REFUSED}); ",
        unavailable="VERIFICATION_NOT_AVAILABLE: AssetPay cannot verify identities now; ",
    ),
)
async def start_verification(
    user_id: UserId, resources: ResourcesDep, body: VerificationStartIn | None = None
) -> VerificationStartedOut:
    email = body.email if body is not None else None
    started = await verification.start(
        database=resources.database, assetpay=resources.assetpay, user_id=user_id, email=email
    )
    return VerificationStartedOut.of(started)


@router.post(
    "/verification/link",
    summary="Link the account to the verified identity with the same email",
    description="For an account of a person already verified with another account: the email given at a start "
    "finds the identity. The account is at level 1 at once.",
    responses=_responses(
        not_found="VERIFICATION_IDENTITY_NOT_FOUND: no verified identity has the account's email; ",
        conflict="VERIFICATION_EMAIL_REQUIRED: the account has no email (start with one first); "
        "VERIFICATION_LINK_REFUSED: AssetPay refused the link (a banned identity, or one with too many linked "
        "accounts; its reason is in `message`); VERIFICATION_ALREADY_VERIFIED; ",
        invalid="VALIDATION_FAILED: a body other than none or `{}` (`fields.body`); ",
    ),
    openapi_extra={"requestBody": NO_BODY},
)
async def link_verification(user_id: UserId, resources: ResourcesDep) -> VerificationLinkedOut:
    linked = await verification.link(database=resources.database, assetpay=resources.assetpay, user_id=user_id)
    return VerificationLinkedOut.of(linked)
