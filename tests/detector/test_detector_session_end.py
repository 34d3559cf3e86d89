"""Session end (issue 18, item 7): at the close (16:00 ET, 13:00 on early closes, spx_common/calendar.py)
every setup still forming, ready, triggered or at target 1 is resolved ``expired`` with its reason, at
the close, at the last price; it never carries into the next session; stored statistics count it."""

from __future__ import annotations

import datetime as dt

from services.detector.lifecycle import Lifecycle
from spx_common.calendar import ET
from spx_common.models import SetupCandidate
from spx_common.store import open_store

S = 1_000_000_000


def et(d: dt.date, h: int, m: int = 0) -> int:
    return int(dt.datetime.combine(d, dt.time(h, m), ET).timestamp()) * S


REGULAR = dt.date(2026, 2, 20)  # a Friday with a full session
EARLY = dt.date(2026, 11, 27)  # the day after Thanksgiving: 13:00 close


def cand(detector, ts, **kw):
    base = dict(detector=detector, family="f", sym="I:SPX", direction="long", entry_low=100.0, entry_high=101.0,
                stop=99.0, targets=[102.0, 103.0], ts=ts)
    base.update(kw)
    return SetupCandidate(**base)


def four_states(day: dt.date, lc: Lifecycle) -> None:
    """forming (zone above the price), ready, triggered and target1_hit setups, all open."""
    t = et(day, 10)
    lc.add(cand("forming", t, entry_low=110.0, entry_high=111.0, stop=90.0, targets=[120.0]), {}, None)
    lc.add(cand("ready", t, entry_low=100.0, entry_high=106.0, stop=90.0, targets=[120.0]), {}, None)
    lc.add(cand("triggered", t, stop=90.0, targets=[120.0]), {}, None)
    lc.add(cand("t1", t, stop=90.0, targets=[104.0, 120.0]), {}, None)
    states = {}
    for tr in lc.on_price("I:SPX", 104.5, t + S) + lc.on_price("I:SPX", 104.5, t + 2 * S):
        states[tr.detector] = tr.to_state
    assert states == {"ready": "ready", "triggered": "triggered", "t1": "target1_hit"}


def test_every_open_setup_expires_at_the_close_with_its_reason_and_last_price():
    lc = Lifecycle(confirm_ticks=1, confirm_ns=0, ttl_ns=10 * 3600 * S)
    four_states(REGULAR, lc)
    lc.on_price("I:SPX", 104.8, et(REGULAR, 15, 59))
    assert lc.session_end(et(REGULAR, 15, 59)) == []  # not yet
    out = lc.session_end(et(REGULAR, 16, 0))
    assert sorted((t.detector, t.from_state, t.to_state) for t in out) == [
        ("forming", "forming", "expired"), ("ready", "ready", "expired"), ("t1", "target1_hit", "expired"),
        ("triggered", "triggered", "expired")]
    assert {t.reason for t in out} == {"session close (16:00 ET)"}
    assert {t.ts for t in out} == {et(REGULAR, 16, 0)} and {t.price for t in out} == {104.8}
    assert lc.count() == 0
    assert lc.on_price("I:SPX", 80.0, et(REGULAR + dt.timedelta(days=3), 9, 31)) == []  # never "stopped" tomorrow


def test_early_close_and_a_price_after_the_close_expire_too():
    lc = Lifecycle(confirm_ticks=1, confirm_ns=0, ttl_ns=10 * 3600 * S)
    four_states(EARLY, lc)
    assert lc.session_end(et(EARLY, 12, 59)) == []
    out = lc.on_price("I:SPX", 95.0, et(EARLY, 13, 0))  # the next price is past the close: expiry, not a stop
    assert len(out) == 4 and {t.to_state for t in out} == {"expired"}
    assert {t.reason for t in out} == {"session close (13:00 ET early close)"} and {t.price for t in out} == {104.5}
    lc2 = Lifecycle(confirm_ticks=1, confirm_ns=0, ttl_ns=10 * 3600 * S)
    lc2.add(cand("late", et(EARLY, 14)), {}, None)  # formed after the close (extended hours): the next session's
    assert lc2.on_price("I:SPX", 99.5, et(EARLY, 14, 1)) == []  # not expired at 13:00, before it formed
    (tr,) = lc2.session_end(et(dt.date(2026, 11, 30), 16, 0))  # Monday's close
    assert (tr.to_state, tr.reason, tr.ts) == ("expired", "session close (16:00 ET)", et(dt.date(2026, 11, 30), 16))


def test_expired_at_the_close_is_counted_in_statistics(tmp_path):
    lc = Lifecycle(confirm_ticks=1, confirm_ns=0, ttl_ns=10 * 3600 * S)
    lc.add(cand("triggered", et(REGULAR, 10), stop=99.0, targets=[120.0]), {}, None)
    trs = lc.on_price("I:SPX", 101.5, et(REGULAR, 10, 1))
    lc.on_price("I:SPX", 103.5, et(REGULAR, 15, 59))
    trs += lc.session_end(et(REGULAR, 16, 1))
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    try:
        store.record_transitions(trs)
        [stats] = store.family_stats(0, 2**62)
        assert stats.trades == 1 and stats.stops == 0
        assert abs(stats.sum_r - (103.5 - 101.5) / (101.5 - 99.0)) < 1e-9  # closed at the last price
    finally:
        store.close()


def test_a_setup_formed_after_the_close_expires_at_the_next_sessions_close_never_before_it_formed():
    """A plugin allowed extended hours ([detector] extended_hours) forms a setup at 16:20 ET on a Friday: it
    belongs to Monday's session (it expired at Friday's 16:00, twenty minutes before it formed, before this
    fix: every load-benchmark transition after the close was stamped in the past)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    lc = Lifecycle(ttl_ns=10 * 24 * 3600 * S)  # no time-to-live expiry in the way
    formed = et(REGULAR, 16, 20)  # Friday after the close
    lc.add(cand("late", formed), {}, None)
    assert lc.session_end(et(REGULAR, 20, 0)) == []  # Friday evening: its session has not closed
    monday = dt.date(2026, 2, 23)
    assert lc.on_price("I:SPX", 99.5, et(monday, 9, 0)) == []  # Monday pre-market: still forming
    (tr,) = lc.session_end(et(monday, 16, 0))
    assert (tr.to_state, tr.ts) == ("expired", et(monday, 16, 0))

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 14 * 24 * 3600))
    def expiry_never_precedes_forming(offset_s):
        lc2 = Lifecycle()
        t = et(REGULAR, 0, 0) + offset_s * S
        lc2.add(cand("any", t), {}, None)
        trs = lc2.session_end(t + 30 * 24 * 3600 * S)
        assert len(trs) == 1 and trs[0].ts >= t

    expiry_never_precedes_forming()
