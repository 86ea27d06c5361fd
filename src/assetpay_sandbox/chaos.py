"""Chaos switches: the ways AssetPay's callback delivery misbehaves in production, turned on per run.

Every random choice the driver makes (chaos decisions and the jitter of retry backoff) is drawn from one RNG, seeded
when asked, so a run with the same seed, the same actions and the same clock makes the same choices. The switches
and what a merchant must do about each are documented in docs/sandbox.md.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, TypeVar

T = TypeVar("T")

JITTER = 0.2
"""Retry waits are drawn from (1 - JITTER, 1] of the schedule's wait: spread out, never later than documented."""
REORDER_HOLD_BACK = 0.5
"""With `reorder`, this share of new callbacks is held back (up to two steps), so newer news overtakes it."""
REORDER_SPREAD_STEPS = 2.0
DUPLICATE_SPREAD_STEPS = 2.0
"""A duplicate is sent again within this many steps after the delivery it repeats."""
MAX_SPREAD_SECONDS = 10.0
"""Hold-backs and duplicates stay within this many seconds whatever the step: a sandbox driven by hand (a step of
an hour, trades moved through the controls) still misbehaves while someone is watching."""

_WIRE_NAMES = {
    "duplicate_rate": "duplicateRate",
    "reorder": "reorder",
    "delay": "delay",
    "drop_rate": "dropRate",
    "approval_timeout_rate": "approvalTimeoutRate",
}
_RATES = ("duplicate_rate", "drop_rate", "approval_timeout_rate")


class ChaosError(ValueError):
    """Settings that cannot be used; `fields` names each rejected one (by its JSON name) with the reason."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {reason}" for name, reason in problems.items()))
        self.fields = dict(problems)


@dataclass(frozen=True, slots=True)
class ChaosSettings:
    """The switches, all off by default. Rates are probabilities (0..1) per callback or attempt; `delay` is seconds."""

    duplicate_rate: float = 0.0
    reorder: bool = False
    delay: float = 0.0
    drop_rate: float = 0.0
    approval_timeout_rate: float = 0.0

    def __post_init__(self) -> None:
        problems = {}
        for name in _RATES:
            value = getattr(self, name)
            if not 0 <= value <= 1:  # also refuses nan
                problems[_WIRE_NAMES[name]] = "must be a number from 0 to 1"
        if not 0 <= self.delay < float("inf"):
            problems["delay"] = "must be a number of seconds, 0 or more"
        if problems:
            raise ChaosError(problems)

    @property
    def calm(self) -> bool:
        return self == ChaosSettings()

    def wire(self) -> dict[str, Any]:
        """The JSON form (camelCase), as `GET /_sandbox/chaos` shows it."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {_WIRE_NAMES[k]: v if isinstance(v, bool) else float(v) for k, v in values.items()}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> ChaosSettings:
        """Settings from their JSON form; a key left out is off. Unknown keys and wrong types are refused."""
        known = {wire: name for name, wire in _WIRE_NAMES.items()}
        problems = {key: "is not a chaos switch" for key in body if key not in known and key != "seed"}
        values: dict[str, Any] = {}
        for wire, name in known.items():
            if wire not in body:
                continue
            value = body[wire]
            if name == "reorder":
                if not isinstance(value, bool):
                    problems[wire] = "must be true or false"
                values[name] = value
            elif isinstance(value, bool) or not isinstance(value, int | float | Decimal):
                problems[wire] = "must be a number"
            else:
                values[name] = float(value)  # a probability or a wait, never money
        if problems:
            raise ChaosError(problems)
        return cls(**values)


class Chaos:
    """The current switches and the seeded RNG behind every random choice of the driver."""

    def __init__(self, settings: ChaosSettings | None = None, *, seed: int | None = None) -> None:
        self.settings = settings or ChaosSettings()
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - simulated faults, not secrets

    def configure(self, settings: ChaosSettings, *, seed: int | None = None) -> None:
        """New switches; a seed restarts the RNG from it (else it carries on where it was)."""
        self.settings = settings
        if seed is not None:
            self.seed = seed
            self.rng.seed(seed)

    def wire(self) -> dict[str, Any]:
        return self.settings.wire() | {"seed": self.seed}

    # -- the decisions --------------------------------------------------------------------------------------------

    def _happens(self, rate: float) -> bool:
        # No draw when off: turning one switch on does not change the choices the others make.
        return rate > 0 and self.rng.random() < rate

    def first_wait(self, step_seconds: float) -> float:
        """Seconds a new callback waits before its first attempt: random up to `delay`, plus a hold-back when
        reordering."""
        wait = self.rng.uniform(0, self.settings.delay) if self.settings.delay > 0 else 0.0
        if self.settings.reorder and self._happens(REORDER_HOLD_BACK):
            wait += self.rng.uniform(0, min(REORDER_SPREAD_STEPS * step_seconds, MAX_SPREAD_SECONDS))
        return wait

    def order(self, due: Sequence[T]) -> list[T]:
        """The order to send due callbacks in: as they came, or shuffled when reordering."""
        chosen = list(due)
        if self.settings.reorder:
            self.rng.shuffle(chosen)
        return chosen

    def drop(self) -> str | None:
        """Whether this attempt is lost: None, `not sent`, or `answer lost` (sent, and the answer thrown away)."""
        if not self._happens(self.settings.drop_rate):
            return None
        return "not sent" if self.rng.random() < 0.5 else "answer lost"

    def duplicate_after(self, step_seconds: float) -> float | None:
        """Seconds until a delivered callback is delivered again, or None when it is not."""
        if not self._happens(self.settings.duplicate_rate):
            return None
        return self.rng.uniform(0, min(DUPLICATE_SPREAD_STEPS * step_seconds, MAX_SPREAD_SECONDS))

    def approval_times_out(self) -> bool:
        """Whether this approval attempt's answer is treated as timed out, whatever the merchant answered."""
        return self._happens(self.settings.approval_timeout_rate)

    def jitter(self, wait: float) -> float:
        """A retry wait spread over (1 - JITTER, 1] of the schedule, so a burst of failures does not retry at once."""
        return wait * (1 - JITTER * self.rng.random())

    # -- kept across restarts -------------------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """JSON-able: the switches, the seed and where the RNG stands (so a restarted run carries on the sequence)."""
        version, internal, gauss = self.rng.getstate()
        return {"settings": self.settings.wire(), "seed": self.seed, "rng": [version, list(internal), gauss]}

    def load(self, data: Mapping[str, Any]) -> None:
        self.settings = ChaosSettings.from_wire(data.get("settings", {}))
        self.seed = data.get("seed")
        rng = data.get("rng")
        if rng is not None:
            version, internal, gauss = rng
            self.rng.setstate((version, tuple(internal), gauss))
        else:
            self.rng.seed(self.seed)
