"""Event-time clocks. Logic asks a clock for "now"; only edges use the wall clock.

Live, replay and backtest run the same code: in all three the aggregator, detectors,
lifecycle and exit advisor read ``EventClock.now_ns()``, which is the newest event time
seen on the stream (the watermark), never ``time.time()``.
"""

from __future__ import annotations


class EventClock:
    """Monotonic watermark of event time. ``advance`` ignores times that go backwards."""

    __slots__ = ("_now",)

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def advance(self, ts_ns: int) -> int:
        if ts_ns > self._now:
            self._now = ts_ns
        return self._now

    def now_ns(self) -> int:
        return self._now


#: nanoseconds per second: every event time on the bus is integer nanoseconds since the epoch
NS_PER_S = 1_000_000_000
