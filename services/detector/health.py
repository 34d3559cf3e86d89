"""A plugin's health: counters, disabling and half-open recovery (pure: the caller passes the clock).

States: ``active`` (called on every bar) -> ``disabled`` (not called) after ``max_failures`` errors,
``max_slow`` CPU-budget overruns, or at once after a crash or a hang of its worker; once the back-off
has passed (``retry_s``, doubling per failed probe up to ``retry_max_s``) the next bar is a
``probing`` call: one call, and the plugin is ``active`` again if it answers within its budget with
no error, or ``disabled`` with a doubled back-off if not. The clock is monotonic wall seconds: a
back-off is about the plugin's behaviour on this machine, not about market time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spx_common.retry import Backoff


def probe_backoff(retry_s: float = 30.0, retry_max_s: float = 1800.0) -> Backoff:
    """When a disabled plugin is probed again: ``retry_s`` doubling per failed probe, capped, no jitter
    (its ``delay(disables - 1)``)."""
    return Backoff(retry_s, retry_max_s, jitter="none")


@dataclass
class PluginHealth:
    max_failures: int = 3
    max_slow: int = 5
    backoff: Backoff = field(default_factory=probe_backoff)
    status: str = "active"
    calls: int = 0
    errors: int = 0
    slow: int = 0
    crashes: int = 0
    disables: int = 0
    last_error: str = ""
    reason: str = ""
    retry_at: float | None = None

    def __post_init__(self) -> None:
        self._run_errors = 0  # errors and overruns since the plugin was last (re-)enabled
        self._run_slow = 0

    def should_call(self, now: float) -> bool:
        """Whether to call the plugin on this bar (a disabled one whose back-off passed is probed)."""
        if self.status == "active":
            return True
        if self.status == "disabled" and self.retry_at is not None and now >= self.retry_at:
            self.status = "probing"
            return True
        return False

    def record(self, now: float, *, error: str = "", slow: str = "", crash: str = "",
               call: bool = True) -> str | None:
        """Account for one call's outcome (``call=False``: a fault found after the call was counted,
        e.g. its worker's memory); returns the reason when this disabled the plugin."""
        self.calls += call
        if error:
            self.errors += 1
            self._run_errors += 1
            self.last_error = error[:300]
        if slow:
            self.slow += 1
            self._run_slow += 1
            self.last_error = slow[:300]
        if crash:
            self.crashes += 1
            self.last_error = crash[:300]
            return self._disable(now, crash)
        if self.status == "probing":
            if error or slow:
                return self._disable(now, f"probe failed: {self.last_error}")
            self.status, self.reason, self.retry_at = "active", "", None
            self._run_errors = self._run_slow = 0
            return None
        if self._run_errors >= self.max_failures:
            return self._disable(now, f"raised {self._run_errors} times; last: {self.last_error}")
        if self._run_slow >= self.max_slow:
            return self._disable(now, f"over its CPU budget {self._run_slow} times; last: {self.last_error}")
        return None

    def _disable(self, now: float, why: str) -> str:
        self.disables += 1
        self.status, self.reason = "disabled", why[:300]
        self.retry_at = now + self.backoff.delay(self.disables - 1)
        self._run_errors = self._run_slow = 0
        return self.reason

    def describe(self, now: float) -> dict:
        return {"status": self.status, "calls": self.calls, "errors": self.errors, "slow": self.slow,
                "crashes": self.crashes, "last_error": self.last_error, "reason": self.reason,
                "retry_in_s": (round(max(0.0, self.retry_at - now), 1)
                               if self.status == "disabled" and self.retry_at is not None else None)}
