"""Repository on both engines: idempotent writes, setup outcomes, profile history and re-quarantine."""

from __future__ import annotations

import math

import msgspec
import pytest

from spx_common import models as m
from spx_common.store import Floors, Profile, evaluate
from spx_common.store.profile import FamilyPolicy, FamilyStats


def tr(sid, to, ts, price, frm=None, family="orb", **kw):
    return m.SetupTransition(setup_id=sid, detector="orb_v1", family=family, sym="I:SPX", direction="long",
                             from_state=frm, to_state=to, reason=to, ts=ts, price=price, **kw)


def lifecycle(sid, t0=1_000, family="orb", end="target2_hit"):
    out = [tr(sid, "forming", t0, 100.0, family=family, entry_low=99.0, entry_high=101.0, stop=98.0,
              targets=[102.0, 104.0]),
           tr(sid, "triggered", t0 + 1, 100.0, "forming", family=family,
              microstructure={"bid_ask_imbalance": 0.3, "aggressor_skew": -0.1}, macro_alignment_score=0.7),
           tr(sid, "target1_hit", t0 + 2, 102.0, "triggered", family=family)]
    if end == "target2_hit":
        out.append(tr(sid, "target2_hit", t0 + 3, 104.0, "target1_hit", family=family))
    else:
        out.append(tr(sid, "stopped", t0 + 3, 98.0, "target1_hit", family=family))
    return out


def test_setup_outcome_fields_and_replay_idempotent(store):
    events = lifecycle("s1")
    store.record_transitions(events)
    store.record_transitions(events)          # a replay
    store.record_transitions(events[::-1])    # out of order
    row = store.setup_instance("s1")
    assert row["state"] == "target2_hit" and row["t1_hit"] and row["t2_hit"] and not row["stopped"]
    assert row["bid_ask_imbalance_at_trigger"] == 0.3 and row["aggressor_skew_at_trigger"] == -0.1
    assert row["macro_alignment_score"] == 0.7 and row["entry_price"] == 100.0
    assert row["r_multiple"] == 2.0 and row["mfe_r"] == 2.0 and row["mae_r"] == 0.0
    assert row["resolved_at"] == 1_003 and row["resolution"] == "target2_hit"
    assert store.count("setup_transitions") == 4 and store.count("setup_instances") == 1
    store.record_trailing_stop([m.ExitAdvice(setup_id="s1", action="trail_stop", reason="t", ts=1_002,
                                             trailing_stop_path=[98.0, 100.0, 101.5])])
    assert store.setup_instance("s1")["trailing_stop_path"] == [98.0, 100.0, 101.5]
    store.record_trailing_stop([m.ExitAdvice(setup_id="s1", action="trail_stop", reason="t", ts=1_001,
                                             trailing_stop_path=[1.0])])  # older advice loses
    assert store.setup_instance("s1")["trailing_stop_path"] == [98.0, 100.0, 101.5]
    # advice that arrives before the setup's first transition is applied when the setup lands
    store.record_trailing_stop([m.ExitAdvice(setup_id="s2", action="trail_stop", reason="t", ts=5,
                                             trailing_stop_path=[97.0, 99.0])])
    store.record_transitions(lifecycle("s2"))
    assert store.setup_instance("s2")["trailing_stop_path"] == [97.0, 99.0]


def test_orders_fills_positions_snapshots_idempotent(store):
    o1 = m.Order(order_id="o1", user="alice", option_symbol="SPXW260220C05000000", side="buy_to_open",
                 quantity=2, type="limit", price=1.5, ts=10)
    o1b = m.Order(order_id="o1", user="alice", option_symbol="SPXW260220C05000000", side="buy_to_open",
                  quantity=2, type="limit", price=1.5, status="filled", ts=20)
    store.record_orders([o1b])
    store.record_orders([o1])  # an older status replayed never overwrites a newer one
    f = m.Fill(order_id="o1", user="alice", option_symbol="SPXW260220C05000000", side="buy_to_open",
               quantity=2, price=1.5, ts=20, fill_id="f1")
    store.record_fills([f, f])
    store.record_fills([f])
    p = m.Position(user="alice", option_symbol="SPXW260220C05000000", quantity=2, avg_price=1.5, ts=20)
    store.record_positions([p])
    store.record_positions([m.Position(user="alice", option_symbol="SPXW260220C05000000", quantity=0,
                                       avg_price=0, ts=5)])
    store.record_snapshots([{"user": "alice", "ts": 20, "total_equity": 1000.0, "option_buying_power": 500}] * 2)
    with pytest.raises(ValueError):
        store.record_snapshots([{"user": "alice"}])
    assert [store.count(x) for x in ("orders", "fills", "positions", "portfolio_snapshots")] == [1, 1, 1, 1]
    import sqlalchemy as sa

    from spx_common.store import tables as t
    with store.engine.connect() as c:
        assert c.execute(sa.select(t.orders.c.status)).scalar_one() == "filled"
        assert c.execute(sa.select(t.positions.c.quantity)).scalar_one() == 2


def test_bars_round_trip_and_credentials(store):
    bars = [m.MicroBar(sym="SPY", interval="1s", start_ns=i * 10**9, open=1, high=2, low=0.5, close=1.5,
                       volume=10, trades=3, vwap=1.2, bid_ask_imbalance=0.1, source="backfill") for i in range(5)]
    assert store.upsert_bars(bars + bars[:2]) == 5
    store.upsert_bars(bars)
    back = store.bars("SPY", "1s", 1 * 10**9, 4 * 10**9)
    assert [b.start_ns for b in back] == [10**9, 2 * 10**9, 3 * 10**9]
    assert back[0].bid_ask_imbalance == 0.1 and back[0].vwap == 1.2 and back[0].closed
    store.put_credentials("alice", "tradier", b"\x00sealed", "k1", now_ns=5)
    store.put_credentials("alice", "tradier", b"\x01sealed2", "k2", now_ns=9)
    c = store.credentials("alice", "tradier")
    assert c["ciphertext"] == b"\x01sealed2" and c["key_id"] == "k2" and c["created_ns"] == 5
    assert c["rotated_ns"] == 9


def test_bars_read_back_every_microstructure_field_exactly(store):
    """Every optional field comes back as stored (floats to the last bit), a replayed bar keeps its own source,
    and a non-finite value (which only Python's json reads: NaN) comes back too."""
    full = m.MicroBar(sym="SPY", interval="1s", start_ns=10**9, open=1.1, high=2.2, low=0.3, close=1.7, volume=123.0,
                      trades=9, vwap=1.2345678901234567, buy_volume=70.0, sell_volume=50.0, neutral_volume=3.0,
                      delta_volume=20.0, bid_ask_imbalance=-0.054835493519441676, ask_bid_size_ratio=1 / 3,
                      quote_coverage_pct=99.9, avg_spread_bps=0.1 + 0.2, bid_size_at_close=500.0,
                      ask_size_at_close=700.0, source="replay")
    bare = m.MicroBar(sym="SPY", interval="1s", start_ns=2 * 10**9, open=1, high=1, low=1, close=1)
    odd = m.MicroBar(sym="SPY", interval="1s", start_ns=3 * 10**9, open=1, high=1, low=1, close=1,
                     bid_ask_imbalance=float("nan"), avg_spread_bps=float("inf"))
    # JSON has no NaN: PostgreSQL's json type refused the whole batch, losing the good bars with the odd one
    store.upsert_bars([full, bare, odd])
    got = store.bars("SPY", "1s")
    assert got[0] == msgspec.structs.replace(full, closed=True)
    assert got[1] == msgspec.structs.replace(bare, closed=True)
    assert math.isnan(got[2].bid_ask_imbalance) and got[2].avg_spread_bps == float("inf")


def test_profile_history_revert_and_requarantine(store):
    assert store.get_active_profile().version == 0 and store.get_active_profile().allows("orb")
    p1 = store.save_profile(Profile(defaults=Floors(min_t1_hit_rate=0.6, min_expectancy_r=0.1, min_trades=3),
                                    families={"fade": FamilyPolicy(enabled=False)}), author="me", reason="v1")
    assert p1.version == 1 and not p1.allows("fade") and p1.allows("orb")
    # orb: 3 resolved trades, 1 T1 hit -> fails min T1 hit rate 0.6 over the window
    for i, end in enumerate(["target2_hit", "stopped", "stopped"]):
        evs = lifecycle(f"o{i}", t0=10_000 + 10 * i)
        if end == "stopped":
            evs = [e for e in evs if e.to_state != "target1_hit"]
        store.record_transitions(evs[:-1] + ([evs[-1]] if end == "target2_hit" else
                                              [tr(f"o{i}", "stopped", 10_000 + 10 * i + 3, 98.0)]))
    for i in range(3):
        store.record_transitions(lifecycle(f"b{i}", t0=20_000 + 10 * i, family="breakout"))
    stats = {s.family: s for s in store.family_stats(0, 10**6)}
    assert stats["orb"].trades == 3 and stats["orb"].t1_hits == 1 and stats["orb"].stops == 2
    assert stats["orb"].expectancy_r == pytest.approx(0.0)
    assert stats["breakout"].t1_hit_rate == 1.0
    changes = store.requarantine(now_ns=10**6, window_ns=10**6)
    assert list(changes) == ["orb"] and "t1_hit_rate 0.333 < 0.600" in changes["orb"]
    active = store.get_active_profile()
    assert active.version == 2 and not active.allows("orb") and active.allows("breakout")
    assert store.requarantine(now_ns=10**6, window_ns=10**6) == {}  # stable when re-run
    reverted = store.revert_profile(1)
    assert reverted.version == 3 and reverted.allows("orb") and not reverted.allows("fade")
    assert [p.version for p in store.profile_history()] == [3, 2, 1]
    with pytest.raises(KeyError):
        store.revert_profile(99)


def test_evaluate_needs_min_trades():
    p = Profile(defaults=Floors(min_t1_hit_rate=0.9, min_trades=10))
    few = FamilyStats(family="x", trades=9, t1_hits=0, t2_hits=0, stops=9, sum_r=-9.0)
    assert evaluate(p, [few], window="w") == (p, {})
    many = FamilyStats(family="x", trades=10, t1_hits=9, t2_hits=0, stops=1, sum_r=-0.5)
    new, changes = evaluate(p, [many], window="backtest")
    assert "expectancy_r -0.050 < 0.000" in changes["x"] and not new.allows("x")


def test_events_round_trip_in_aggregation_order_and_instance_queries(store):
    evs = [m.Trade(sym="SPY", price=600.0, size=5, ts=100, seq=2), m.Quote(sym="SPY", bid=599.9, ask=600.1,
                                                                          bid_size=3, ask_size=4, ts=100, seq=1),
           m.Trade(sym="QQQ", price=500.0, size=1, ts=50, seq=1), m.Trade(sym="IWM", price=1.0, ts=60, seq=1)]
    assert store.insert_events(evs + evs[:1]) == 4
    back = store.events(["SPY", "QQQ"], 0, 1000)
    assert [(type(e).__name__, e.sym, e.ts) for e in back] == [("Trade", "QQQ", 50), ("Quote", "SPY", 100),
                                                               ("Trade", "SPY", 100)]
    assert back[1].bid == 599.9 and back[1].ask_size == 4 and back[2].size == 5
    store.record_transitions(lifecycle("a", t0=1_000, family="orb"), source="backtest")
    store.record_transitions(lifecycle("b", t0=2_000, family="fade"))
    assert [r["setup_id"] for r in store.setup_instances()] == ["a", "b"]
    assert [r["setup_id"] for r in store.setup_instances(source="backtest")] == ["a"]
    assert [r["setup_id"] for r in store.setup_instances(1_500, family="fade")] == ["b"]
