"""The synthetic session (determinism, realism checks) and the feed publishing it as live ingest would."""

from __future__ import annotations

import datetime as dt
import math
import re
from zoneinfo import ZoneInfo

from spx_common.models import IndexValue, Quote
from spx_common.topics import tick_topic
from tests.conftest import eventually

from services.feed.replay import SyntheticSource
from services.feed.synthetic import SyntheticSession, black_scholes, smile_iv
from tests.feed.helpers import RunningFeed


def _take(session: SyntheticSession, seconds: int) -> list:
    end = session.ts(seconds)
    out = []
    for ev in session.events():
        if ev.ts >= end:
            break
        out.append(ev)
    return out


def test_same_seed_same_day_and_time_order():
    a = _take(SyntheticSession(seed=3), 120)
    b = _take(SyntheticSession(seed=3), 120)
    c = _take(SyntheticSession(seed=4), 120)
    assert a == b
    assert a != c
    assert all(x.ts <= y.ts for x, y in zip(a, a[1:], strict=False))
    kinds = {(type(e).__name__, e.sym[:6]) for e in a}
    assert {("IndexValue", "I:SPX"), ("Trade", "SPY"), ("Quote", "SPY"), ("Quote", "O:SPXW")} <= kinds


def test_session_hours_units_and_symbols():
    s = SyntheticSession(seed=1, date="2026-11-20")
    open_et = dt.datetime.fromtimestamp(s.open_ns / 1e9, ZoneInfo("America/New_York"))
    assert (open_et.hour, open_et.minute) == (9, 30)
    assert s.ts(23400) - s.open_ns == 23400 * 10**9
    evs = _take(s, 60)
    idx = [e for e in evs if isinstance(e, IndexValue)]
    assert len(idx) == 60  # one index value per second
    spy_q = [e for e in evs if isinstance(e, Quote) and e.sym == "SPY"]
    for q in spy_q:
        assert 0 < q.ask - q.bid <= 0.021
        assert q.bid_size % 100 == 0 and q.bid_size >= 100  # shares
        assert abs(q.bid * 10 - idx[0].value) / idx[0].value < 0.01  # SPY ~ SPX/10 with a small basis
    opt = [e for e in evs if e.sym.startswith("O:")]
    assert opt and all(re.fullmatch(r"O:SPXW261120[CP]\d{8}", e.sym) for e in opt)
    assert all(e.source == "replay" for e in evs)


def test_chain_prices_follow_black_scholes_with_skew():
    s = SyntheticSession(seed=2)
    t = s.ts(3600)
    chain = s.chain(t)
    assert len(chain) == 82  # +-20 strikes, calls and puts
    spot = s.spot(3600)
    atm = min(chain, key=lambda c: abs(c["strike"] - spot))
    assert atm["bid"] < atm["ask"] and atm["bid"] > 0
    assert smile_iv(0.16, spot, spot - 100) > smile_iv(0.16, spot, spot) < smile_iv(0.16, spot, spot + 100) * 1.2
    calls = sorted((c for c in chain if c["type"] == "call"), key=lambda c: c["strike"])
    assert all(a["mid"] >= b["mid"] for a, b in zip(calls, calls[1:], strict=False))  # call value falls with strike
    assert all(-1 <= c["delta"] <= 1 and c["open_interest"] > 0 and c["gamma"] >= 0 for c in chain)
    peak = max(chain, key=lambda c: c["gamma"])
    assert abs(peak["strike"] - spot) <= 5.0  # gamma peaks at the money
    # put-call parity holds for the theoretical values
    c = black_scholes(spot, 5900, 0.01, 0.2, True)
    p = black_scholes(spot, 5900, 0.01, 0.2, False)
    assert abs((c - p) - (spot * math.exp(-0.013 * 0.01) - 5900 * math.exp(-0.04 * 0.01))) < 1e-6
    later = s.chain(s.ts(20000))
    assert sum(x["volume"] for x in later) > sum(x["volume"] for x in chain) > 0


def test_day_has_structure_for_detectors():
    s = SyntheticSession(seed=7)
    kinds = {r.kind for r in s.regimes}
    assert "opening_range" in kinds and "trend" in kinds and ({"reversal", "burst"} & kinds)
    assert max(s.path) - min(s.path) > 20  # a day that moves
    assert max(s.activity) > 2 * min(s.activity)  # volume bursts and the U-shape


def test_vwap_reclaim_and_opening_range_break_for_every_seed():
    for seed in (1, 7, 42):
        s = SyntheticSession(seed=seed)
        or_end = s.regimes[1].start_s
        or_hi, or_lo = max(s.path[:or_end]), min(s.path[:or_end])
        assert max(s.path[or_end:]) > or_hi or min(s.path[or_end:]) < or_lo  # the opening range breaks
        pv = vol = 0.0
        side, run, flips = None, 0, 0
        for minute in range(390):
            for sec in range(minute * 60, minute * 60 + 60):
                pv += s.path[sec] * s.activity[sec]
                vol += s.activity[sec]
            above = s.path[minute * 60 + 59] > pv / vol
            if side is not None and above != side and run >= 10:
                flips += 1  # price crossed VWAP after 10+ minutes on the other side: reclaim or loss
            run = run + 1 if above == side else 1
            side = above
        assert flips >= 1, seed


def test_compress_and_next_session():
    s = SyntheticSession(seed=1, compress=60)
    assert s.end_ns - s.open_ns == 390 * 10**9
    n = s.next_session()
    assert n.date == dt.date(2026, 11, 23)  # Friday -> Monday
    assert n.seed == 2


def test_feed_replays_synthetic_as_tick_frames_with_status_and_chain(run_dir):
    session = SyntheticSession(seed=5, duration_s=40)
    src = SyntheticSource(session)
    with RunningFeed(run_dir, replay_source=src, replay_speed="max", chain_every_s=10,
                     replay_start_delay_s=0.5) as feed:
        eventually(lambda: feed.service.replay_done, 30, what="replay finished")
        eventually(lambda: feed.bodies("status.feed"), 5, what="feed status")
        eventually(lambda: len(feed.events()) >= feed.service._published, 10, what="all frames received")
        # the status carrying the session's availability follows the replay's last frames: under load it
        # can arrive after them
        eventually(lambda: any(s.availability_pct is not None for s in feed.bodies("status.feed")), 10,
                   what="feed status with availability")
        got = feed.events()
        topics = feed.topics("tick.")
        chains = feed.bodies("chain.SPXW")
        status = feed.bodies("status.feed")
    expected = [e for e in SyntheticSession(seed=5, duration_s=40).events()]
    assert len(got) == len(expected)
    assert sorted(got, key=lambda e: (e.ts, e.sym)) == sorted(expected, key=lambda e: (e.ts, e.sym))
    assert {"tick.I:SPX", "tick.SPY", "tick.O:SPXW"} == set(topics)
    for topic, frames in feed.frames.items():
        if topic.startswith("tick."):
            for frame, body in frames:
                # one symbol per frame, except options: one frame per root (tick.O:SPXW)
                assert frame.type == "ticks" and {tick_topic(e.sym) for e in body} == {topic}
                assert frame.event_ns == body[-1].ts
    assert chains and len(chains[0]["contracts"]) == 82 and chains[0]["underlying"] > 0
    assert any(s.mode == "replay" for s in status)
    # availability of the replayed session so far, on the replay's own clock (issue 28)
    avail = [s for s in status if s.availability_pct is not None]
    assert avail and avail[-1].availability_day == session.date.isoformat()
    assert avail[-1].availability_pct > 90.0
