"""User records: validation of the settings a trader may have (pure, no I/O).

A user has risk settings (``max_risk_per_trade``: dollars lost per entry if its stop is hit, the budget
the broker sizes entries from; ``daily_loss_limit`` in dollars; ``max_contracts``), the day-trading
policy the broker applies (``alert``: PDT / day-trade buying power alerts, ``block``: also refuse 0DTE
entries when not PDT-qualified, ``off``: none), an auto-execution opt-in (off by default), a broker (``paper`` or ``tradier``)
and environment (``sandbox`` or ``production``) and coach preferences (``channels``, ``kinds``,
``min_severity``, ``quiet``).  :func:`validate` returns the clean record or raises :class:`UserError`
naming the field and what is allowed.
"""

from __future__ import annotations

import math
import re
from typing import Any
from spx_common.errors import Refused

USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # the gateway token's user pattern (topic-safe)
POLICIES = ("alert", "block", "off")
BROKERS = ("paper", "tradier")
ENVIRONMENTS = ("sandbox", "production")
SEVERITIES = ("info", "warning", "critical")
COACH_KEYS = ("channels", "kinds", "min_severity", "quiet")
MAX_DOLLARS = 10_000_000.0
MAX_CONTRACTS = 500

DEFAULTS: dict[str, Any] = {
    "display_name": "",
    "enabled": True,
    "max_risk_per_trade": 500.0,
    "max_contracts": 5,
    "daily_loss_limit": 1000.0,
    "day_trading_policy": "alert",
    "auto_execution": False,
    "broker": "paper",
    "environment": "sandbox",
    "coach": {"channels": ["ws"], "kinds": [], "min_severity": "info", "quiet": False},
}
SETTABLE = tuple(DEFAULTS)


class UserError(Refused, ValueError):
    """A user id or setting that is not allowed; the message names the field."""


def check_id(user: str) -> str:
    if not isinstance(user, str) or not USER_ID.match(user):
        raise UserError(f"user id {user!r}: use 1-64 letters, digits, '_' or '-'")
    return user


def _dollars(name: str, v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{name}: {v!r} is not a number of dollars") from None
    if isinstance(v, bool) or not math.isfinite(x) or not 0 < x <= MAX_DOLLARS:
        raise UserError(f"{name}: {v!r} must be more than 0 and at most {MAX_DOLLARS:,.0f} dollars")
    return x


def _bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise UserError(f"{name}: {v!r} is not true/false")


def _choice(name: str, v: Any, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise UserError(f"{name}: {v!r} is not one of {', '.join(allowed)}")
    return str(v)


def _coach(v: Any) -> dict:
    if not isinstance(v, dict):
        raise UserError("coach: must be an object with channels, kinds, min_severity, quiet")
    extra = set(v) - set(COACH_KEYS)
    if extra:
        raise UserError(f"coach: unknown key(s) {', '.join(sorted(extra))} (allowed: {', '.join(COACH_KEYS)})")
    out = dict(DEFAULTS["coach"])
    out.update(v)
    for k in ("channels", "kinds"):
        if not isinstance(out[k], list) or not all(isinstance(x, str) and 0 < len(x) <= 64 for x in out[k]) \
                or len(out[k]) > 50:
            raise UserError(f"coach.{k}: must be a list of at most 50 short strings")
    _choice("coach.min_severity", out["min_severity"], SEVERITIES)
    out["quiet"] = _bool("coach.quiet", out["quiet"])
    return out


def validate(fields: dict[str, Any]) -> dict[str, Any]:
    """Clean values of ``fields`` (a subset of :data:`SETTABLE`); UserError on the first bad one."""
    unknown = set(fields) - set(SETTABLE)
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(sorted(unknown))} (allowed: {', '.join(SETTABLE)})")
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k == "display_name":
            if not isinstance(v, str) or len(v) > 128:
                raise UserError("display_name: at most 128 characters")
            out[k] = v
        elif k in ("max_risk_per_trade", "daily_loss_limit"):
            out[k] = _dollars(k, v)
        elif k == "max_contracts":
            try:
                n = int(str(v))
            except ValueError:
                raise UserError(f"max_contracts: {v!r} is not a whole number") from None
            if not 1 <= n <= MAX_CONTRACTS:
                raise UserError(f"max_contracts: {n} must be 1..{MAX_CONTRACTS}")
            out[k] = n
        elif k in ("enabled", "auto_execution"):
            out[k] = _bool(k, v)
        elif k == "day_trading_policy":
            out[k] = _choice(k, v, POLICIES)
        elif k == "broker":
            out[k] = _choice(k, v, BROKERS)
        elif k == "environment":
            out[k] = _choice(k, v, ENVIRONMENTS)
        elif k == "coach":
            out[k] = _coach(v)
    return out
