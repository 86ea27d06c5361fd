"""Budgeting AssetPay's rate limits, which are per merchant and shared by all its users (ASSETPAY.md §10).

Two kinds of token bucket, both rows of `rate_buckets` (store/ratelimits.py), so every process spends from the
same ones:

- the merchant's budget, one bucket per AssetPay route class. The AssetPay client asks `before_request` before
  every request it sends (it is this module's `RateLimits`, handed in as the gateway's `CallPolicy`); an empty
  bucket refuses the request unsent with `ASSETPAY_QUOTA_EXHAUSTED` and the seconds until the next token. When
  AssetPay answers 429 anyway (a limit tighter than configured, another system on the same merchant), the bucket
  is drained until its Retry-After, so every process backs off, not just the one that was told.
- each user's allowance on our routes that make AssetPay work (inventory requests, market misses, deposits and
  withdrawals): `check_user` refuses with `TOO_MANY_REQUESTS`, so one user's burst cannot spend the merchant's
  budget for everybody.

A merchant bucket is sized so that no 60-second window lets more than the per-minute limit through, whatever
AssetPay's own window is: it holds a sixth of the limit as a burst and refills the rest over the minute
(`Rate.per_minute`). A user's allowance may be spent in one burst (`Rate.burst`): it is about fairness between
users, while the merchant's budget guards AssetPay's limit.

AssetPay's errors that mean the merchant's setup is broken are watched here too (`SetupWatch`): they are logged as
errors naming the fix, counted, and shown by `/readyz` until the same kind of call succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from assetpay_merchant.core.errors import TooManyRequests
from assetpay_merchant.gateway import AssetPayError, ErrorKey
from assetpay_merchant.gateway.client import RouteClass
from assetpay_merchant.gateway.errors import SETUP_ERRORS as SETUP_FIXES
from assetpay_merchant.observability import RATE_BUDGET_TOKENS, RATE_LIMITED, SETUP_ERROR_LAST_SEEN, SETUP_ERRORS
from assetpay_merchant.store import ratelimits as buckets
from assetpay_merchant.store.database import Connection, Database
from assetpay_merchant.store.users import UserRow

log = logging.getLogger(__name__)

MAX_DRAIN_SECONDS = 600.0
"""A Retry-After longer than this is taken as this (a bogus header must not stop every process for hours)."""
USER_PREFIX = "user:"
MERCHANT_PREFIX = "assetpay:"


def _user_key(scope: UserScope, user_id: str) -> str:
    return f"{USER_PREFIX}{scope}:{user_id}"


def _merchant_key(route: RouteClass) -> str:
    return MERCHANT_PREFIX + route


class Tier(StrEnum):
    UNVERIFIED = "unverified"
    VERIFIED = "verified"


class UserScope(StrEnum):
    """What a user's allowance counts: each is a bucket of its own per user."""

    INVENTORY = "inventory"
    MARKET = "market"
    """Market requests that miss the shared cache (a hit costs AssetPay nothing)."""
    TRADES = "trades"
    """Deposits and withdrawals started."""


MERCHANT_LIMITS: Mapping[Tier, Mapping[RouteClass, int]] = {
    # AssetPay's limits per minute (ASSETPAY.md §3, §10). The verified market limit is not published; the
    # inventory one is used.
    Tier.UNVERIFIED: {
        RouteClass.INVENTORY: 10,
        RouteClass.MARKET: 30,
        RouteClass.DEPOSIT: 5,
        RouteClass.WITHDRAW: 5,
        RouteClass.LOOKUP: 30,
    },
    Tier.VERIFIED: {
        RouteClass.INVENTORY: 1000,
        RouteClass.MARKET: 1000,
        RouteClass.DEPOSIT: 500,
        RouteClass.WITHDRAW: 500,
        RouteClass.LOOKUP: 3000,
    },
}
"""Per-minute limits by tier; a route class not listed (OTHER) is not budgeted unless configured."""

USER_LIMITS: Mapping[Tier, Mapping[UserScope, int]] = {
    # An unverified merchant's whole budget is a handful a minute: no user may take more than half of it.
    Tier.UNVERIFIED: {UserScope.INVENTORY: 5, UserScope.MARKET: 15, UserScope.TRADES: 3},
    Tier.VERIFIED: {UserScope.INVENTORY: 30, UserScope.MARKET: 60, UserScope.TRADES: 20},
}
"""Per-user allowances per minute by tier."""


@dataclass(frozen=True, slots=True)
class Rate:
    """A bucket's size: `capacity` tokens at most, refilled at `per_second`."""

    capacity: float
    per_second: float

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.per_second <= 0:
            raise ValueError("a rate needs capacity >= 1 and per_second > 0")

    @classmethod
    def per_minute(cls, limit: int) -> Rate:
        """At most `limit` in any 60 s: a burst of a sixth of it, the rest refilled over the minute (a bucket lets
        `capacity + 60 * per_second` through in 60 s). A limit of 1 can only be approximated: 2 in the worst case."""
        if limit < 1:
            raise ValueError("a per-minute limit must be at least 1")
        capacity = max(1, math.ceil(limit / 6))
        return cls(capacity, max(1, limit - capacity) / 60)

    @classmethod
    def burst(cls, limit: int) -> Rate:
        """`limit` a minute, all of which may be spent at once."""
        if limit < 1:
            raise ValueError("a per-minute limit must be at least 1")
        return cls(limit, limit / 60)


def merchant_rates(tier: Tier, overrides: Mapping[RouteClass, int | None]) -> dict[RouteClass, Rate]:
    """The merchant's budget per route class: the tier's limits, with the configured ones instead where set."""
    limits: dict[RouteClass, int] = dict(MERCHANT_LIMITS[tier])
    limits.update({route: limit for route, limit in overrides.items() if limit is not None})
    return {route: Rate.per_minute(limit) for route, limit in limits.items()}


def user_rates(tier: Tier, overrides: Mapping[UserScope, int | None]) -> dict[UserScope, Rate]:
    """Each user's allowance per scope: the tier's, with the configured ones instead where set."""
    limits: dict[UserScope, int] = dict(USER_LIMITS[tier])
    limits.update({scope: limit for scope, limit in overrides.items() if limit is not None})
    return {scope: Rate.burst(limit) for scope, limit in limits.items()}


# -- the setup errors --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SetupWarning:
    key: str
    route: RouteClass
    fix: str
    message: str
    first_seen: float
    last_seen: float
    seen: int = 1

    def body(self) -> dict[str, object]:
        return {
            "key": self.key,
            "route": self.route.value,
            "fix": self.fix,
            "message": self.message,
            "lastSeen": datetime.fromtimestamp(self.last_seen, UTC).isoformat().replace("+00:00", "Z"),
            "seen": self.seen,
        }


@dataclass(slots=True)
class SetupWatch:
    """AssetPay's setup errors this process saw lately: logged (ERROR, naming the fix) and counted when seen;
    cleared when a call of the same route class succeeds (proof the setup works again) or after `expire_after`."""

    expire_after: float = 3600.0
    clock: Callable[[], float] = time.time
    _active: dict[str, SetupWarning] = field(default_factory=dict)

    def saw(self, route: RouteClass, error: AssetPayError) -> None:
        fix = SETUP_FIXES.get(error.key)
        if fix is None:
            return
        now = self.clock()
        SETUP_ERRORS.labels(error.key).inc()
        SETUP_ERROR_LAST_SEEN.labels(error.key).set(now)
        log.error(
            "AssetPay reports the merchant's setup is broken (%s on a %s request): %s. AssetPay said: %s",
            error.key,
            route.value,
            fix,
            error.message,
        )
        current = self._active.get(error.key)
        if current is None:
            self._active[error.key] = SetupWarning(error.key, route, fix, error.message, now, now)
        else:
            current.route, current.message, current.last_seen = route, error.message, now
            current.seen += 1

    def worked(self, route: RouteClass) -> None:
        """A request of `route` succeeded: the warnings it had raised are over."""
        if not self._active:
            return  # the common case: nothing to clear, no work on the hot path
        for key in [key for key, warning in self._active.items() if warning.route is route]:
            log.warning("AssetPay %s request succeeded: %s is cleared", route.value, key)
            del self._active[key]

    def warnings(self) -> list[dict[str, object]]:
        """The active warnings, oldest first, for /readyz."""
        cutoff = self.clock() - self.expire_after
        for key in [key for key, warning in self._active.items() if warning.last_seen < cutoff]:
            del self._active[key]
        return [warning.body() for warning in sorted(self._active.values(), key=lambda w: w.first_seen)]


# -- the buckets -----------------------------------------------------------------------------------------------


Clock = Callable[[], datetime]


class RateLimits:
    """The merchant's AssetPay budget and the users' allowances, in the database; the AssetPay client's policy.

    `clock`: None uses the database's clock (the one all processes share); tests pass a fake one.
    """

    def __init__(
        self,
        database: Database,
        *,
        merchant: Mapping[RouteClass, Rate],
        users: Mapping[UserScope, Rate],
        setup: SetupWatch | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._database = database
        self._merchant = dict(merchant)
        self._users = dict(users)
        self.setup = setup or SetupWatch()
        self._clock = clock

    def rate(self, route: RouteClass) -> Rate | None:
        return self._merchant.get(route)

    def _now(self) -> datetime | None:
        return self._clock() if self._clock is not None else None

    # -- the gateway's CallPolicy -------------------------------------------------------------------------------

    async def before_request(self, route: RouteClass) -> None:
        """Take a token of the merchant's budget for `route`, or refuse the request before it is sent."""
        rate = self._merchant.get(route)
        if rate is None:
            return
        async with self._database.statements() as db:  # one autocommit statement: no transaction stays open
            taken = await buckets.take(
                db, _merchant_key(route), capacity=rate.capacity, per_second=rate.per_second, now=self._now()
            )
        self._spent(route, taken)

    def _spent(self, route: RouteClass, taken: buckets.Take) -> None:
        """Note what a take of the merchant's bucket left; refuse the request unsent when it found no token."""
        RATE_BUDGET_TOKENS.labels(route.value).set(taken.tokens)
        if taken.taken:
            return
        RATE_LIMITED.labels(route.value, "merchant").inc()
        log.warning(
            "AssetPay %s request refused unsent: the merchant's shared quota is used up for %.1f s",
            route.value,
            taken.retry_after,
        )
        raise AssetPayError(
            ErrorKey.QUOTA_EXHAUSTED,
            f"The merchant's shared AssetPay quota for {route.value} requests is used up "
            f"(the next request is possible in {math.ceil(taken.retry_after)} s)",
            retry_after=taken.retry_after,
        )

    async def after_request(self, route: RouteClass, error: AssetPayError | None) -> None:
        """Watch the outcome: a 429 drains the bucket until AssetPay's Retry-After; setup errors are reported."""
        if error is None:
            self.setup.worked(route)
            return
        self.setup.saw(route, error)
        # TOO_MANY_ACTIVE_TRADES is one user's limit, not the merchant's: it must not stop everybody.
        if error.status == 429 and error.key != ErrorKey.TOO_MANY_ACTIVE_TRADES:
            RATE_LIMITED.labels(route.value, "upstream").inc()
            try:
                await self.drain(route, error.retry_after)
            except Exception:  # the answer stands as it is; the next 429 drains again
                log.exception("AssetPay answered 429 on %s; draining the shared budget failed", route.value)

    async def drain(self, route: RouteClass, retry_after: float | None) -> None:
        """Empty the merchant's bucket for `route` so no process asks again before `retry_after` seconds (no
        Retry-After: the next token comes at the bucket's own pace)."""
        rate = self._merchant.get(route)
        if rate is None:
            return
        seconds = min(retry_after, MAX_DRAIN_SECONDS) if retry_after is not None else 1 / rate.per_second
        async with self._database.statements() as db:
            tokens = await buckets.drain(
                db,
                _merchant_key(route),
                capacity=rate.capacity,
                per_second=rate.per_second,
                seconds=seconds,
                now=self._now(),
            )
        RATE_BUDGET_TOKENS.labels(route.value).set(tokens)
        log.warning("AssetPay rate-limited %s requests: every process holds off for %.0f s", route.value, seconds)

    # -- the users' allowances ----------------------------------------------------------------------------------

    async def check_user(self, user_id: str, scope: UserScope, *, db: Connection | None = None) -> None:
        """Count one request of the user against their allowance for `scope`, or refuse it (TOO_MANY_REQUESTS).
        `db`: run it in the caller's transaction (rolled back with it: a refused trade costs no allowance)."""
        rate = self._users.get(scope)
        if rate is None:
            return
        key = _user_key(scope, user_id)
        if db is not None:
            taken = await buckets.take(db, key, capacity=rate.capacity, per_second=rate.per_second, now=self._now())
        else:
            async with self._database.statements() as own:
                taken = await buckets.take(
                    own, key, capacity=rate.capacity, per_second=rate.per_second, now=self._now()
                )
        self._counted(scope, rate, taken)

    def _counted(self, scope: UserScope, rate: Rate, taken: buckets.Take) -> None:
        """Refuse the request when the take of the user's allowance found no token."""
        if taken.taken:
            return
        RATE_LIMITED.labels(scope.value, "user").inc()
        per_minute = round(rate.per_second * 60)
        raise TooManyRequests(
            f"Too many {scope.value} requests: at most {per_minute} a minute per user; try again shortly",
            key="TOO_MANY_REQUESTS",
            retry_after=taken.retry_after,
        )

    # -- both at once, with the user's profile -----------------------------------------------------------------

    async def admit(self, user_id: str, scope: UserScope, route: RouteClass | None) -> UserRow | None:
        """The user's profile, read in the one statement that counts this request against their allowance for
        `scope` and, with `route`, then takes the merchant's token for the AssetPay request it leads to (which the
        caller sends as prepaid, without `before_request`). None: no such user, and nothing was taken.

        Refused as `check_user` and `before_request` refuse; a request the user's allowance refuses spends nothing
        of the merchant's budget."""
        user_rate = self._users.get(scope)
        merchant_rate = self._merchant.get(route) if route is not None else None
        user_bucket = (
            buckets.Bucket(_user_key(scope, user_id), user_rate.capacity, user_rate.per_second)
            if user_rate is not None
            else None
        )
        merchant_bucket = (
            buckets.Bucket(_merchant_key(route), merchant_rate.capacity, merchant_rate.per_second)
            if route is not None and merchant_rate is not None
            else None
        )
        async with self._database.statements() as db:
            admission = await buckets.admit(
                db, user_id, user_bucket=user_bucket, merchant_bucket=merchant_bucket, now=self._now()
            )
        if admission.user_take is not None:
            assert user_rate is not None
            self._counted(scope, user_rate, admission.user_take)
        if admission.merchant_take is not None:
            assert route is not None
            self._spent(route, admission.merchant_take)
        return admission.user

    async def purge_idle_users(self, *, idle_for: timedelta = timedelta(hours=1)) -> int:
        """Delete the allowances of users idle for `idle_for` (full again by then, so nothing changes)."""
        async with self._database.statements() as db:
            now = self._now() or await db.fetchval("SELECT clock_timestamp()")
            return await buckets.purge(db, prefix=USER_PREFIX, idle_before=now - idle_for)

    async def purge_periodically(self, *, interval: float = 600.0) -> None:
        """`purge_idle_users` every `interval` seconds until cancelled (the app's background job)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.purge_idle_users()
            except Exception:  # the database may be away: try again next time
                log.warning("purging idle rate-limit buckets failed", exc_info=True)
