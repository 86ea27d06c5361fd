"""The sandbox's instant-credit model: per-user risk profiles and the rules that turn them into collateral.

`docs/instant-credit.md` describes the model in one table; its parameters and worked examples are checked
against this module by the tests, so the two cannot drift apart. Everything here is plain data and Decimal
arithmetic, free of I/O: the sandbox state feeds in a user's exposure and applies the answers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import ROUND_DOWN, ROUND_FLOOR, Decimal
from typing import Any

from assetpay_sandbox.catalog import CENT, RUST

ZERO = Decimal(0)
ONE = Decimal(1)
SCORE = Decimal("0.0001")  # readiness scores and trust are kept to four decimals


@dataclass(frozen=True, slots=True)
class Policy:
    """Every number of the model; the README of the model (docs/instant-credit.md) lists each one by name."""

    trust_start: Decimal = Decimal("0.05")
    trust_max: Decimal = Decimal("1.00")
    trust_min: Decimal = Decimal("-1.00")
    trust_gain_per_usd: Decimal = Decimal("0.001")
    trust_gain_cap: Decimal = Decimal("0.10")
    reversal_penalty_per_usd: Decimal = Decimal("0.004")
    history_full: Decimal = Decimal(60_000)
    wager_full: Decimal = Decimal(250_000)
    wager_points: Decimal = Decimal("0.4")
    kyc_points_per_level: Decimal = Decimal("0.1")
    kyc_top_level: int = 3
    fiat_points: Decimal = Decimal("0.1")
    crypto_points: Decimal = Decimal("0.1")
    both_methods_bonus: Decimal = Decimal("0.1")
    platform_weight: Decimal = Decimal("0.6")
    external_weight: Decimal = Decimal("0.4")
    collateral_scale: Decimal = Decimal(10_000)
    floor_unverified: Decimal = Decimal(25)
    floor_verified: Decimal = Decimal(250)
    cap_unverified: Decimal = Decimal(50)
    cap_verified: Decimal = Decimal(1_000)
    max_linked_accounts: int = 3
    verification_window_minutes: int = 30

    def parameters(self) -> Iterator[tuple[str, Decimal | int]]:
        for spec in fields(self):
            yield spec.name, getattr(self, spec.name)


POLICY = Policy()


# -- what the merchant tells us: clientData ---------------------------------------------------------------------


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    number = Decimal(value)
    return number if number.is_finite() and number >= 0 else None


@dataclass(frozen=True, slots=True)
class External:
    """The clientData fields that feed the model, as last seen on one of the user's client tokens."""

    total_wager: Decimal = ZERO
    kyc_level: int = 0
    fiat_deposits: bool = False
    crypto_deposits: bool = False

    @classmethod
    def from_client_data(cls, data: Mapping[str, Any]) -> External:
        """Each well-typed field counts; a malformed one counts as absent (a token is the merchant's word)."""
        kyc = data.get("kycLevel")
        return cls(
            total_wager=_number(data.get("totalWager")) or ZERO,
            kyc_level=kyc if isinstance(kyc, int) and not isinstance(kyc, bool) and kyc >= 0 else 0,
            fiat_deposits=data.get("fiatDeposits") is True,
            crypto_deposits=data.get("cryptoDeposits") is True,
        )

    def wire(self) -> dict[str, Any]:
        return {
            "totalWager": self.total_wager,
            "kycLevel": self.kyc_level,
            "fiatDeposits": self.fiat_deposits,
            "cryptoDeposits": self.crypto_deposits,
        }


# -- the model ---------------------------------------------------------------------------------------------------


def platform_readiness(history: Decimal, policy: Policy = POLICY) -> Decimal:
    """0 for a new user, 1 from `history_full` USD of completed deposits on."""
    return min(ONE, max(ZERO, history) / policy.history_full).quantize(SCORE, ROUND_DOWN)


def external_readiness(external: External, policy: Policy = POLICY) -> Decimal:
    """0..1 from clientData: wager (saturating), KYC level up to the top one, payment methods (both best)."""
    score = policy.wager_points * min(ONE, external.total_wager / policy.wager_full)
    score += policy.kyc_points_per_level * min(external.kyc_level, policy.kyc_top_level)
    if external.fiat_deposits:
        score += policy.fiat_points
    if external.crypto_deposits:
        score += policy.crypto_points
    if external.fiat_deposits and external.crypto_deposits:
        score += policy.both_methods_bonus
    return min(ONE, score).quantize(SCORE, ROUND_DOWN)


def collateral_floor(level: int, policy: Policy = POLICY) -> Decimal:
    return policy.floor_verified if level >= 1 else policy.floor_unverified


def instant_cap(level: int, policy: Policy = POLICY) -> Decimal:
    """The most one deposit may be credited up front, by verification level."""
    return policy.cap_verified if level >= 1 else policy.cap_unverified


def provider_collateral(
    *, trust: Decimal, history: Decimal, external: External, level: int, policy: Policy = POLICY
) -> Decimal:
    """AssetPay's own collateral for the user: readiness scaled by trust, never under the level's floor;
    nothing at all while trust is negative."""
    if trust < 0:
        return ZERO
    readiness = policy.platform_weight * platform_readiness(history, policy)
    readiness += policy.external_weight * external_readiness(external, policy)
    scaled = (policy.collateral_scale * readiness * min(trust, policy.trust_max)).quantize(CENT, ROUND_DOWN)
    return max(collateral_floor(level, policy), scaled).quantize(CENT)


@dataclass(frozen=True, slots=True)
class Terms:
    """What backs a user's next deposit: both collaterals, what their deposits in flight already use, the cap."""

    provider: Decimal
    merchant: Decimal
    exposure: Decimal
    cap: Decimal
    trust: Decimal

    @property
    def available(self) -> Decimal:
        """(provider + merchant) - exposure; negative when collateral shrank under what is already advanced."""
        return self.provider + self.merchant - self.exposure

    @property
    def instant_now(self) -> Decimal:
        """What the next CS2 deposit could be credited up front: min(cap, available), never negative, and
        nothing while trust is negative (merchant collateral does not buy out a bad record)."""
        if self.trust < 0:
            return ZERO
        return max(ZERO, min(self.cap, self.available)).quantize(CENT, ROUND_DOWN)


@dataclass(frozen=True, slots=True)
class Split:
    """A deposit's instant part and which collateral backs it; pending credit is the rest of the total."""

    total: Decimal
    pre_credit: Decimal
    provider: Decimal
    merchant: Decimal

    @property
    def pending_credit(self) -> Decimal:
        return self.total - self.pre_credit


def split(terms: Terms, *, game: int, is_instant: bool, total: Decimal) -> Split:
    """preCredit of a new deposit. Rust has no hold: always in full, backed by nothing. CS2 without isInstant:
    nothing up front. Otherwise min(total, cap, available), drawn on provider collateral first (exposure too)."""
    if game == RUST:
        return Split(total, total, ZERO, ZERO)
    if not is_instant:
        return Split(total, ZERO, ZERO, ZERO)
    pre_credit = min(total, terms.instant_now)
    provider_free = max(ZERO, terms.provider - terms.exposure)
    provider = min(pre_credit, provider_free)
    return Split(total, pre_credit, provider, pre_credit - provider)


def trust_after_completion(trust: Decimal, value: Decimal, policy: Policy = POLICY) -> Decimal:
    """A completed deposit earns trust in proportion to its value, at most `trust_gain_cap` per trade."""
    gain = min(policy.trust_gain_cap, value * policy.trust_gain_per_usd)
    return min(policy.trust_max, trust + gain).quantize(SCORE, ROUND_FLOOR)


def trust_after_reversal(trust: Decimal, value: Decimal, policy: Policy = POLICY) -> Decimal:
    """A reversal costs trust in proportion to the reverted value, uncapped per trade, down to `trust_min`."""
    return max(policy.trust_min, trust - value * policy.reversal_penalty_per_usd).quantize(SCORE, ROUND_FLOOR)


# -- the per-user profiles ---------------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@dataclass(slots=True)
class Process:
    """One identity verification attempt (a Signicat dossier, as the gateway reports it)."""

    dossier_id: str
    process_id: str
    capture_url: str
    status: str
    created_at: datetime
    completed_at: datetime | None = None

    def dump(self) -> dict[str, Any]:
        return {
            "dossierId": self.dossier_id,
            "processId": self.process_id,
            "captureUrl": self.capture_url,
            "status": self.status,
            "createdAt": _time(self.created_at),
            "completedAt": _time(self.completed_at),
        }

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> Process:
        created_at = _parse_time(raw["createdAt"])
        assert created_at is not None
        return cls(
            dossier_id=raw["dossierId"],
            process_id=raw["processId"],
            capture_url=raw["captureUrl"],
            status=raw["status"],
            created_at=created_at,
            completed_at=_parse_time(raw.get("completedAt")),
        )


@dataclass(slots=True)
class Identity:
    """A verified person; every Steam account linked to it shares its reversals' trust penalty."""

    id: str
    first_name: str
    last_name: str
    document_country: str
    email: str | None
    created_at: datetime
    banned: bool = False

    def dump(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "documentCountry": self.document_country,
            "email": self.email,
            "createdAt": _time(self.created_at),
            "banned": self.banned,
        }

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> Identity:
        created_at = _parse_time(raw["createdAt"])
        assert created_at is not None
        return cls(
            id=raw["id"],
            first_name=raw["firstName"],
            last_name=raw["lastName"],
            document_country=raw["documentCountry"],
            email=raw["email"],
            created_at=created_at,
            banned=bool(raw["banned"]),
        )


@dataclass(slots=True)
class Profile:
    """What the sandbox knows of one user (a Steam id): their record, their verification, their collateral."""

    steam_id: str
    trust: Decimal = POLICY.trust_start
    history: Decimal = ZERO  # USD of completed deposits, less what reversals took back
    completed_deposits: int = 0
    reversals: int = 0
    merchant_collateral: Decimal = ZERO
    external: External = field(default_factory=External)
    verification_level: int = 0
    email: str | None = None
    identity_id: str | None = None
    linked_at: datetime | None = None
    process: Process | None = None

    def provider_collateral(self, policy: Policy = POLICY) -> Decimal:
        return provider_collateral(
            trust=self.trust,
            history=self.history,
            external=self.external,
            level=self.verification_level,
            policy=policy,
        )

    def terms(self, exposure: Decimal, policy: Policy = POLICY, *, provider: Decimal | None = None) -> Terms:
        """The terms of the user's next deposit; `provider` replaces the modelled provider collateral."""
        return Terms(
            provider=self.provider_collateral(policy) if provider is None else provider,
            merchant=self.merchant_collateral,
            exposure=exposure,
            cap=instant_cap(self.verification_level, policy),
            trust=self.trust,
        )

    def dump(self) -> dict[str, Any]:
        """JSON-able: Decimals as strings, times as ISO-8601."""
        return {
            "steamId": self.steam_id,
            "trust": str(self.trust),
            "history": str(self.history),
            "completedDeposits": self.completed_deposits,
            "reversals": self.reversals,
            "merchantCollateral": str(self.merchant_collateral),
            "external": {
                "totalWager": str(self.external.total_wager),
                "kycLevel": self.external.kyc_level,
                "fiatDeposits": self.external.fiat_deposits,
                "cryptoDeposits": self.external.crypto_deposits,
            },
            "verificationLevel": self.verification_level,
            "email": self.email,
            "identityId": self.identity_id,
            "linkedAt": _time(self.linked_at),
            "process": None if self.process is None else self.process.dump(),
        }

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> Profile:
        external = raw["external"]
        return cls(
            steam_id=raw["steamId"],
            trust=Decimal(raw["trust"]),
            history=Decimal(raw["history"]),
            completed_deposits=int(raw["completedDeposits"]),
            reversals=int(raw["reversals"]),
            merchant_collateral=Decimal(raw["merchantCollateral"]),
            external=External(
                total_wager=Decimal(external["totalWager"]),
                kyc_level=int(external["kycLevel"]),
                fiat_deposits=bool(external["fiatDeposits"]),
                crypto_deposits=bool(external["cryptoDeposits"]),
            ),
            verification_level=int(raw["verificationLevel"]),
            email=raw.get("email"),
            identity_id=raw.get("identityId"),
            linked_at=_parse_time(raw.get("linkedAt")),
            process=None if raw.get("process") is None else Process.load(raw["process"]),
        )


@dataclass(slots=True)
class Profiles:
    """Every user's profile and every verified identity: the sandbox's whole risk state, in one object."""

    users: dict[str, Profile] = field(default_factory=dict)
    identities: dict[str, Identity] = field(default_factory=dict)
    verification_available: bool = True  # off: /client/verification/start answers VERIFICATION_NOT_AVAILABLE
    policy: Policy = POLICY

    def get(self, steam_id: str) -> Profile:
        """The user's profile, created on first use."""
        profile = self.users.get(steam_id)
        if profile is None:
            profile = self.users[steam_id] = Profile(steam_id=steam_id, trust=self.policy.trust_start)
        return profile

    def peek(self, steam_id: str) -> Profile:
        """The user's profile, or what a new one would be (without keeping it)."""
        return self.users.get(steam_id) or Profile(steam_id=steam_id, trust=self.policy.trust_start)

    def observe(self, steam_id: str, client_data: Mapping[str, Any]) -> None:
        """The merchant sent fresh clientData on one of the user's tokens: the model uses the latest."""
        self.get(steam_id).external = External.from_client_data(client_data)

    def terms(self, steam_id: str, exposure: Decimal, provider_override: Decimal | None = None) -> Terms:
        return self.peek(steam_id).terms(exposure, self.policy, provider=provider_override)

    def linked(self, identity_id: str) -> list[Profile]:
        return [p for p in self.users.values() if p.identity_id == identity_id]

    def identity_by_email(self, email: str) -> Identity | None:
        wanted = email.casefold()
        return next((i for i in self.identities.values() if i.email and i.email.casefold() == wanted), None)

    def record_completion(self, steam_id: str, value: Decimal) -> None:
        profile = self.get(steam_id)
        profile.trust = trust_after_completion(profile.trust, value, self.policy)
        profile.history += value
        profile.completed_deposits += 1

    def record_reversal(self, steam_id: str, value: Decimal) -> list[str]:
        """Penalise the user, and every account linked to their verified identity; returns who was hit."""
        profile = self.get(steam_id)
        profile.history = max(ZERO, profile.history - value)
        profile.reversals += 1
        hit = [profile]
        if profile.verification_level >= 1 and profile.identity_id is not None:
            hit += [p for p in self.linked(profile.identity_id) if p is not profile]
        for account in hit:
            account.trust = trust_after_reversal(account.trust, value, self.policy)
        return [account.steam_id for account in hit]

    def dump(self) -> dict[str, Any]:
        """JSON-able (Decimals as strings, times ISO-8601); `Profiles.load` reads it back."""
        return {
            "users": [profile.dump() for profile in self.users.values()],
            "identities": [identity.dump() for identity in self.identities.values()],
            "verificationAvailable": self.verification_available,
        }

    @classmethod
    def load(cls, raw: Mapping[str, Any], policy: Policy = POLICY) -> Profiles:
        users = [Profile.load(item) for item in raw.get("users", ())]
        identities = [Identity.load(item) for item in raw.get("identities", ())]
        return cls(
            users={p.steam_id: p for p in users},
            identities={i.id: i for i in identities},
            verification_available=bool(raw.get("verificationAvailable", True)),
            policy=policy,
        )
