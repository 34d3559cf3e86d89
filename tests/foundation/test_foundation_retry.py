"""The one back-off and the one rate limiter (spx_common/retry.py), pure: attempts and times in, delays out."""

from __future__ import annotations

import random

import pytest

from spx_common.retry import Backoff, RateLimiter


def test_backoff_caps_double_and_each_jitter_stays_in_its_band():
    caps = [Backoff(0.5, 30.0).cap(n) for n in range(10)]
    assert caps[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0] and caps[6:] == [30.0] * 4
    assert Backoff(0.25).cap(1000) == 0.25 * 2 ** 60  # uncapped: no overflow
    rng = random.Random(7)
    full, spread, none = (Backoff(1.0, 8.0, rng, jitter=j) for j in ("full", "spread", "none"))
    for n in range(8):
        cap = min(8.0, 2.0 ** n)
        assert 0 <= full.delay(n) <= cap
        assert cap / 2 <= spread.delay(n) < 3 * cap / 2
        assert none.delay(n) == cap
    assert none.delay(-1) == 1.0  # "the first" for callers counting from 1
    b = Backoff(1.0, 4.0, jitter="none")
    assert [b.next_delay() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 1.0
    with pytest.raises(ValueError):
        Backoff(1.0, jitter="sometimes")  # type: ignore[arg-type]  # refused at construction


def test_the_three_formulas_it_replaced_give_the_same_delays():
    rng_a, rng_b = random.Random(3), random.Random(3)
    b = Backoff(0.5, 20.0, rng_a)  # the feed's REST client and websocket: full jitter
    assert [b.delay(n) for n in range(6)] == [rng_b.uniform(0, min(20.0, 0.5 * 2 ** n)) for n in range(6)]
    rng_a, rng_b = random.Random(4), random.Random(4)
    b = Backoff(0.25, rng=rng_a, jitter="spread")  # Tradier: backoff_s * 2**(attempt-1) * (0.5 + random())
    assert [b.delay(a - 1) for a in range(1, 6)] == [0.25 * 2 ** (a - 1) * (0.5 + rng_b.random()) for a in range(1, 6)]
    b = Backoff(30.0, 1800.0, jitter="none")  # the detector's probes of a disabled plugin
    assert [b.delay(d - 1) for d in range(1, 9)] == [min(1800.0, 30.0 * 2 ** max(0, d - 1)) for d in range(1, 9)]


def test_rate_limiter_holds_the_bound_in_every_window():
    lim = RateLimiter(3, 60.0)
    for t in (0.0, 1.0, 2.0):
        assert lim.wait_s(t) == 0
        lim.record(t)
    assert lim.wait_s(3.0) == pytest.approx(57.0) and lim.wait_s(60.0) == 0
    lim.record(60.0)
    assert lim.wait_s(60.5) == pytest.approx(0.5)  # the one of 1.0 leaves the window at 61.0
    assert len(lim.times) == 3  # bounded: the last ``limit`` times only
    fast = RateLimiter.per_second(50)
    t, sent = 0.0, []
    while t < 3.0:  # a caller that always waits as told
        t += fast.wait_s(t)
        fast.record(t)
        sent.append(t)
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(sent, sent[50:], strict=False))  # <= 50 in any second
    slow = RateLimiter.per_second(0.5)
    assert (slow.limit, slow.window_s) == (1, 2.0)
    slow.record(0.0)
    assert slow.wait_s(1.5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        RateLimiter.per_second(0)


def test_rate_limiter_told_by_a_server():
    lim = RateLimiter()  # no local bound: what the server says only (Tradier's rate-limit headers)
    lim.record(0.0)
    assert lim.wait_s(0.0) == 0
    lim.told(0, 100.0)
    assert lim.wait_s(40.0) == pytest.approx(60.0) and lim.wait_s(101.0) == 0
    lim.told(5, 200.0)  # calls left: no wait
    assert lim.wait_s(150.0) == 0
    lim.told(0, None)  # no reset time said: nothing to wait for
    assert lim.wait_s(150.0) == 0
