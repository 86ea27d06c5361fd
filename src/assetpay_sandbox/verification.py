"""Identity verification as the gateway runs it behind `/client/verification/*` (a Signicat PictureID), simulated.

A user starts a process (optionally leaving an email); nobody scans a document in the sandbox, so the developer
decides the process with a control route: approval gives the account verification level 1 and ties it to the
verified identity of its email (created on first approval). Other accounts with the same email join that identity
through `/link`, and from then on a reversal on any of them costs all of them trust (`risk.Profiles`).
The errors and their statuses follow the gateway's OpenAPI descriptions; docs/instant-credit.md lists them.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from assetpay_sandbox.risk import (
    Identity,
    Process,
    Profile,
    Profiles,
    external_readiness,
    platform_readiness,
)
from assetpay_sandbox.wire import SandboxError, iso

# AssetPay documents 2300-2302 for verification; the link refusals' codes are the sandbox's own, stable.
VERIFICATION_CODES: dict[str, int] = {
    "VERIFICATION_ALREADY_VERIFIED": 2300,
    "VERIFICATION_IN_PROGRESS": 2301,
    "VERIFICATION_NOT_AVAILABLE": 2302,
    "VERIFICATION_EMAIL_REQUIRED": 2303,
    "VERIFICATION_IDENTITY_NOT_FOUND": 2304,
    "VERIFICATION_IDENTITY_BANNED": 2305,
    "VERIFICATION_MAX_LINKED_ACCOUNTS": 2306,
}
ACTIVE = frozenset({"CREATED", "CAPTURE_PENDING", "PROCESSING"})
# There is no capture page in the sandbox (`.invalid` never resolves): the control routes decide a process.
CAPTURE_URL = "https://id.sandbox.assetpay.invalid/capture/{dossier_id}"

_FIRST_NAMES = ("Alva", "Noah", "Elin", "Hugo", "Maja", "Liam", "Saga", "Oskar")
_LAST_NAMES = ("Lindqvist", "Berg", "Novak", "Moreau", "Fischer", "Kowalski", "Rossi", "Jensen")
_COUNTRIES = ("SWE", "DEU", "FRA", "POL", "ITA", "DNK", "NLD", "ESP")  # ISO 3166-1 alpha-3, as documented


class VerificationError(SandboxError):
    """A refusal of `/client/verification/*`, with its verification error code."""

    def payload(self) -> dict[str, Any]:
        error = super().payload()
        error["code"] = VERIFICATION_CODES[self.key]
        return error


def _window(profiles: Profiles) -> timedelta:
    return timedelta(minutes=profiles.policy.verification_window_minutes)


def _expire(profiles: Profiles, profile: Profile, now: datetime) -> None:
    """A process nobody finished within the window has expired (and no longer blocks a new one)."""
    process = profile.process
    if process is not None and process.status in ACTIVE and now - process.created_at >= _window(profiles):
        process.status = "EXPIRED"
        process.completed_at = process.created_at + _window(profiles)


def start(profiles: Profiles, steam_id: str, *, email: str | None, now: datetime) -> Process:
    """A new verification process, unless the account is verified or a process began within the window."""
    profile = profiles.get(steam_id)
    _expire(profiles, profile, now)
    if profile.verification_level >= 1:
        raise VerificationError(400, "VERIFICATION_ALREADY_VERIFIED", "The account is already verified")
    if not profiles.verification_available:
        raise VerificationError(503, "VERIFICATION_NOT_AVAILABLE", "Identity verification is not available")
    process = profile.process
    if process is not None and process.status in ACTIVE:
        wait = process.created_at + _window(profiles) - now
        raise VerificationError(
            429,
            "VERIFICATION_IN_PROGRESS",
            "A verification was started less than 30 minutes ago; finish it or wait",
            headers={"Retry-After": str(max(1, math.ceil(wait.total_seconds())))},
        )
    if email is not None:
        profile.email = email  # kept on the account for linking other accounts later
    dossier_id = str(uuid.uuid4())
    profile.process = Process(
        dossier_id=dossier_id,
        process_id=str(uuid.uuid4()),
        capture_url=CAPTURE_URL.format(dossier_id=dossier_id),
        status="CAPTURE_PENDING",
        created_at=now,
    )
    return profile.process


def status(profiles: Profiles, steam_id: str, now: datetime) -> dict[str, Any]:
    """`GET /client/verification/status`: level, email, the latest process, the linked identity."""
    profile = profiles.peek(steam_id)
    _expire(profiles, profile, now)
    identity = _identity_of(profiles, profile)
    linked = None
    if identity is not None and profile.linked_at is not None:
        linked = {
            "id": identity.id,
            "firstName": identity.first_name,
            "lastName": identity.last_name,
            "documentCountry": identity.document_country,
            "linkedAt": iso(profile.linked_at),
        }
    return {
        "verificationLevel": profile.verification_level,
        "email": profile.email,
        "latestProcess": None if profile.process is None else _process_wire(profile.process),
        "linkedIdentity": linked,
    }


def link(profiles: Profiles, steam_id: str, now: datetime) -> None:
    """Join the verified identity of the account's email: level 1 at once, and the identity's shared fate."""
    profile = profiles.peek(steam_id)
    if profile.verification_level >= 1:
        raise VerificationError(400, "VERIFICATION_ALREADY_VERIFIED", "The account is already verified")
    if profile.email is None:
        raise VerificationError(
            400, "VERIFICATION_EMAIL_REQUIRED", "The account has no email; give one to /client/verification/start"
        )
    identity = profiles.identity_by_email(profile.email)
    if identity is None:
        raise VerificationError(404, "VERIFICATION_IDENTITY_NOT_FOUND", "No verified identity has this email")
    if identity.banned:
        raise VerificationError(400, "VERIFICATION_IDENTITY_BANNED", "The identity is banned")
    if len(profiles.linked(identity.id)) >= profiles.policy.max_linked_accounts:
        raise VerificationError(
            400,
            "VERIFICATION_MAX_LINKED_ACCOUNTS",
            f"The identity has its maximum of {profiles.policy.max_linked_accounts} linked accounts",
        )
    _join(profiles.get(steam_id), identity, now)


def decide(profiles: Profiles, steam_id: str, *, accept: bool, now: datetime) -> Process:
    """The developer plays Signicat: accept (level 1, a verified identity) or reject the pending process."""
    profile = profiles.peek(steam_id)
    _expire(profiles, profile, now)
    process = profile.process
    if process is None or process.status not in ACTIVE:
        raise SandboxError(409, "INVALID_STATE", "The user has no verification in progress")
    process.status = "ACCEPTED" if accept else "REJECTED"
    process.completed_at = now
    if accept:
        _verify(profiles, profile, now)
    return process


def set_level(profiles: Profiles, steam_id: str, level: int, now: datetime) -> None:
    """The demo shortcut: level 1 verifies the account as an approval would; level 0 unlinks it."""
    profile = profiles.get(steam_id)
    if level >= 1:
        if profile.verification_level < 1:
            _verify(profiles, profile, now)
    else:
        profile.verification_level, profile.identity_id, profile.linked_at = 0, None, None


def set_banned(profiles: Profiles, identity_id: str, banned: bool) -> Identity:
    identity = profiles.identities.get(identity_id)
    if identity is None:
        raise SandboxError(404, "NOT_FOUND", f"Identity {identity_id} not found")
    identity.banned = banned
    return identity


def _verify(profiles: Profiles, profile: Profile, now: datetime) -> None:
    """Tie the account to the identity of its email, creating it: the document proved who the person is, so
    neither a ban nor the linked-accounts limit (both guards of `/link`) stands in the way."""
    identity = profiles.identity_by_email(profile.email) if profile.email else None
    if identity is None:
        identity = _new_identity(profile, now)
        profiles.identities[identity.id] = identity
    _join(profile, identity, now)


def _join(profile: Profile, identity: Identity, now: datetime) -> None:
    profile.identity_id, profile.linked_at, profile.verification_level = identity.id, now, 1


def _new_identity(profile: Profile, now: datetime) -> Identity:
    """A made-up person, the same for the same account on every run."""
    digest = hashlib.sha256(f"assetpay-sandbox-identity:{profile.steam_id}".encode()).digest()
    return Identity(
        id=str(uuid.uuid4()),
        first_name=_FIRST_NAMES[digest[0] % len(_FIRST_NAMES)],
        last_name=_LAST_NAMES[digest[1] % len(_LAST_NAMES)],
        document_country=_COUNTRIES[digest[2] % len(_COUNTRIES)],
        email=profile.email,
        created_at=now,
    )


def _identity_of(profiles: Profiles, profile: Profile) -> Identity | None:
    return profiles.identities.get(profile.identity_id) if profile.identity_id is not None else None


def _process_wire(process: Process) -> dict[str, Any]:
    return {
        "dossierId": process.dossier_id,
        "processId": process.process_id,
        "captureUrl": process.capture_url,
        "status": process.status,
        "createdAt": iso(process.created_at),
        "completedAt": None if process.completed_at is None else iso(process.completed_at),
    }


def user_view(
    profiles: Profiles, steam_id: str, exposure: Decimal, provider_override: Decimal | None = None
) -> dict[str, Any]:
    """The profile and every number the model derives from it, for `GET /_sandbox/users/{steamId}`."""
    profile = profiles.peek(steam_id)
    terms = profiles.terms(steam_id, exposure, provider_override)
    identity = _identity_of(profiles, profile)
    return {
        "steamId": steam_id,
        "trust": profile.trust,
        "history": {
            "completedUsd": profile.history,
            "completedDeposits": profile.completed_deposits,
            "reversals": profile.reversals,
        },
        "clientData": profile.external.wire(),
        "platformReadiness": platform_readiness(profile.history, profiles.policy),
        "externalReadiness": external_readiness(profile.external, profiles.policy),
        "verificationLevel": profile.verification_level,
        "email": profile.email,
        "identity": None
        if identity is None
        else {
            "id": identity.id,
            "firstName": identity.first_name,
            "lastName": identity.last_name,
            "documentCountry": identity.document_country,
            "email": identity.email,
            "banned": identity.banned,
            "linkedAccounts": [p.steam_id for p in profiles.linked(identity.id)],
        },
        "latestProcess": None if profile.process is None else _process_wire(profile.process),
        "providerCollateral": terms.provider,
        "providerCollateralOverride": provider_override,
        "merchantCollateral": terms.merchant,
        "exposure": terms.exposure,
        "available": terms.available,
        "cap": terms.cap,
        "instantCredit": terms.instant_now,
    }
