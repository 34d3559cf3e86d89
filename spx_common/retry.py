"""When to try again: one back-off (:class:`Backoff`) and one rate limiter (:class:`RateLimiter`) for every
client of the mesh (the feed's websocket and REST clients, the broker's Tradier client, the detector's
probes of a disabled plugin). Both are pure: the caller passes the attempt number or the time and does the
waiting, so they are tested without clocks or sockets.

What is retried at all is the exception's kind (:class:`spx_common.errors.Retryable`).
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Literal

Jitter = Literal["full", "spread", "none"]


class Backoff:
    """Capped exponential back-off: the ``attempt``-th retry (0 first) waits under
    ``cap = min(max_s, initial_s * 2**attempt)``, drawn by ``jitter``:

    * ``full``: uniform in ``[0, cap]`` ("full jitter": clients that failed together spread out at once);
    * ``spread``: uniform in ``[cap / 2, 3 cap / 2)`` (the mean stays the doubling sequence);
    * ``none``: exactly ``cap``.

    :meth:`delay` is a pure function of the attempt (and ``rng``); :meth:`next_delay` and :meth:`reset`
    keep the count for a reconnect loop."""

    def __init__(self, initial_s: float, max_s: float = math.inf, rng: random.Random | None = None, *,
                 jitter: Jitter = "full") -> None:
        if initial_s < 0 or max_s < 0:
            raise ValueError("back-off delays must be >= 0")
        if jitter not in ("full", "spread", "none"):
            raise ValueError(f"jitter must be full, spread or none, not {jitter!r}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.attempt = 0

    def cap(self, attempt: int | None = None) -> float:
        n = self.attempt if attempt is None else attempt
        return min(self.max_s, self.initial_s * 2 ** min(max(0, n), 60))

    def delay(self, attempt: int) -> float:
        cap = self.cap(attempt)
        if self.jitter == "full":
            return self.rng.uniform(0, cap)
        if self.jitter == "spread":
            return cap * (0.5 + self.rng.random())
        return cap

    def next_delay(self) -> float:
        d = self.delay(self.attempt)
        self.attempt += 1
        return d

    def reset(self) -> None:
        self.attempt = 0


class RateLimiter:
    """At most ``limit`` events in any ``window_s`` (a sliding log of the last ``limit`` event times, so the
    bound holds in every window, not only on average), and none while a server said it has no calls left
    (:meth:`told`). :meth:`wait_s` says how long to wait before the next event; :meth:`record` counts one.
    ``limit`` None: only what a server tells."""

    def __init__(self, limit: int | None = None, window_s: float = 1.0) -> None:
        if limit is not None and (limit < 1 or window_s <= 0):
            raise ValueError("a rate limit needs limit >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self.times: deque[float] = deque(maxlen=limit)
        #: the server's word: no call before this time (None: nothing said, or calls left)
        self.blocked_until: float | None = None

    @classmethod
    def per_second(cls, rate: float) -> RateLimiter:
        """``rate`` events a second (below 1: one every ``1 / rate`` s)."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        limit = max(1, round(rate))
        return cls(limit, limit / rate)

    def wait_s(self, now: float) -> float:
        wait = 0.0
        if self.blocked_until is not None:
            wait = max(0.0, self.blocked_until - now)
        if self.limit is not None and len(self.times) >= self.limit:
            wait = max(wait, self.times[0] + self.window_s - now)
        return wait

    def record(self, now: float) -> None:
        if self.limit is not None:
            self.times.append(now)  # the oldest falls out of the bounded log

    def told(self, available: int | None, until: float | None) -> None:
        """A server's rate-limit answer: ``available`` calls left until ``until`` (its clock, seconds)."""
        self.blocked_until = until if available is not None and available <= 0 and until is not None else None
