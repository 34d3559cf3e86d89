"""Optimizer profile: per setup family enable/quarantine with floors (pure logic, no I/O).

A profile is a versioned document ``{"defaults": Floors, "families": {family: FamilyPolicy}}``.
A family is allowed when it is enabled and not quarantined; a family the profile does not
name follows ``default_enabled``.  :func:`evaluate` compares per-family statistics (from the
live rolling window or a backtest) with the floors and returns the profile with families that
fail quarantined -- only when they have at least ``min_trades`` resolved trades, so a family
is never judged on too little evidence.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec


class Floors(msgspec.Struct, kw_only=True, frozen=True):
    """Minimum evidence a family must keep to stay active."""

    min_t1_hit_rate: float = 0.5
    min_expectancy_r: float = 0.0
    min_trades: int = 20


class FamilyPolicy(msgspec.Struct, kw_only=True, frozen=True):
    enabled: bool = True
    quarantined: bool = False
    reason: str = ""
    floors: Floors | None = None  # None: the profile's defaults


class Profile(msgspec.Struct, kw_only=True, frozen=True):
    version: int = 0
    created_ns: int = 0
    author: str = "default"
    reason: str = "built-in default"
    default_enabled: bool = True
    defaults: Floors = Floors()
    families: dict[str, FamilyPolicy] = {}

    def policy(self, family: str) -> FamilyPolicy:
        return self.families.get(family) or FamilyPolicy(enabled=self.default_enabled)

    def allows(self, family: str) -> bool:
        """True when detections of ``family`` may be published as actionable."""
        p = self.policy(family)
        return p.enabled and not p.quarantined

    def floors(self, family: str) -> Floors:
        return self.policy(family).floors or self.defaults

    def body(self) -> dict:
        """The stored document (without version metadata)."""
        return msgspec.to_builtins(msgspec.structs.replace(self, version=0, created_ns=0, author="", reason=""))


class FamilyStats(msgspec.Struct, kw_only=True, frozen=True):
    """Resolved-trade statistics of one family over a window."""

    family: str
    trades: int
    t1_hits: int
    t2_hits: int
    stops: int
    sum_r: float

    @property
    def t1_hit_rate(self) -> float:
        return self.t1_hits / self.trades if self.trades else 0.0

    @property
    def expectancy_r(self) -> float:
        return self.sum_r / self.trades if self.trades else 0.0


def profile_from_body(body: dict, *, version: int, created_ns: int, author: str, reason: str) -> Profile:
    """Validate a stored document into a :class:`Profile` (raises ``msgspec.ValidationError``)."""
    p = msgspec.convert(body, Profile)
    return msgspec.structs.replace(p, version=version, created_ns=created_ns, author=author, reason=reason)


def failures(stats: FamilyStats, floors: Floors) -> list[str]:
    """Which floors ``stats`` fails (empty when it passes or has too few trades to judge)."""
    if stats.trades < floors.min_trades:
        return []
    out = []
    if stats.t1_hit_rate < floors.min_t1_hit_rate:
        out.append(f"t1_hit_rate {stats.t1_hit_rate:.3f} < {floors.min_t1_hit_rate:.3f}")
    if stats.expectancy_r < floors.min_expectancy_r:
        out.append(f"expectancy_r {stats.expectancy_r:.3f} < {floors.min_expectancy_r:.3f}")
    return out


def evaluate(profile: Profile, stats: Iterable[FamilyStats], *, window: str) -> tuple[Profile, dict[str, str]]:
    """Quarantine every active family that fails its floors; returns (new profile, {family: reason}).

    Already quarantined or disabled families are left alone (a person lifts a quarantine by
    enabling the family or reverting the profile), so the result is stable when re-run.
    """
    families = dict(profile.families)
    changes: dict[str, str] = {}
    for s in sorted(stats, key=lambda s: s.family):
        if not profile.allows(s.family):
            continue
        failed = failures(s, profile.floors(s.family))
        if failed:
            reason = f"{window}: " + "; ".join(failed) + f" over {s.trades} trades"
            families[s.family] = msgspec.structs.replace(profile.policy(s.family), quarantined=True, reason=reason)
            changes[s.family] = reason
    if not changes:
        return profile, {}
    return msgspec.structs.replace(profile, families=families), changes
