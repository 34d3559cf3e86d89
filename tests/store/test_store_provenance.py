"""Provenance on every stored row (issue 19 item 2): each row carries its true source (live, replay,
synthetic, backtest, backfill) and run id, and only live rows reach the optimizer's rolling window, so
a demo never quarantines a detector."""

from __future__ import annotations

import sqlalchemy as sa

from spx_common import models as m
from spx_common.store import Floors, Profile
from spx_common.store import tables as t
from tests.conftest import eventually
from tests.store.test_store_recorder import Mesh

T0 = 1_700_000_000_000_000_000
S = 10**9
FLOORS = Profile(defaults=Floors(min_t1_hit_rate=0.5, min_expectancy_r=0.0, min_trades=3))


def losing(fam: str, n: int, t0: int = T0) -> list[m.SetupTransition]:
    """``n`` triggered setups of ``fam``, each stopped out (-1 R): a family failing every floor."""
    out = []
    for i in range(n):
        base = dict(setup_id=f"{fam}-{t0}-{i}", detector=fam, family=fam, sym="I:SPX", direction="long")
        ts = t0 + i * S
        out.append(m.SetupTransition(**base, to_state="triggered", reason="t", ts=ts, price=100.0, entry_low=99.0,
                                     entry_high=101.0, stop=98.0))
        out.append(m.SetupTransition(**base, to_state="stopped", reason="s", ts=ts + S // 2, price=98.0))
    return out


def sources(store, table: str) -> set[tuple[str, str | None]]:
    tb = t.metadata.tables[table]
    with store.engine.connect() as c:
        return set(c.execute(sa.select(tb.c.source, tb.c.run_id).distinct()).all())


def test_demo_replay_and_backtest_rows_never_reach_the_optimizer(store):
    store.save_profile(FLOORS, author="test", reason="floors")
    store.record_transitions(losing("level", 5), source="synthetic", run_id="demo-1")
    store.record_transitions(losing("inside_bar", 5, T0 + 100 * S), source="replay", run_id="replay-1")
    store.record_transitions(losing("orb", 5, T0 + 200 * S), source="backtest", run_id="bt-1")
    assert store.family_stats(T0, T0 + 10**12) == []  # live only by default
    assert store.requarantine(T0 + 10**12, 10**12) == {}
    assert store.get_active_profile().allows("level") and store.get_active_profile().allows("inside_bar")
    assert {f.family for f in store.family_stats(T0, T0 + 10**12, source=["synthetic", "replay"])} == {
        "level", "inside_bar"}
    assert sources(store, "setup_instances") == {("synthetic", "demo-1"), ("replay", "replay-1"), ("backtest", "bt-1")}
    assert sources(store, "setup_transitions") == sources(store, "setup_instances")
    # configured to read replay rows too: the same rule quarantines from them
    changes = store.requarantine(T0 + 10**12, 10**12, sources=["live", "replay"])
    assert set(changes) == {"inside_bar"}
    # live rows do move the window
    store.record_transitions(losing("vwap", 5, T0 + 300 * S), run_id="live-1")
    assert set(store.requarantine(T0 + 10**12, 10**12)) == {"vwap"}


def test_execution_rows_and_bars_carry_source_and_run(store):
    o = m.Order(order_id="o1", user="u", option_symbol="X", side="buy_to_open", quantity=1, type="market", ts=T0)
    store.record_orders([o], source="synthetic", run_id="demo-1")
    store.record_fills([m.Fill(order_id="o1", user="u", option_symbol="X", side="buy_to_open", quantity=1,
                               price=2.0, ts=T0)], source="synthetic", run_id="demo-1")
    store.record_positions([m.Position(user="u", option_symbol="X", quantity=1, avg_price=2.0, ts=T0)],
                           source="synthetic", run_id="demo-1")
    store.record_snapshots([{"user": "u", "ts": T0, "total_equity": 1.0}], source="synthetic", run_id="demo-1")
    for table in ("orders", "fills", "positions", "portfolio_snapshots"):
        assert sources(store, table) == {("synthetic", "demo-1")}, table

    def bar(close: float, src: str = "tick") -> m.MicroBar:
        return m.MicroBar(sym="SPY", interval="1s", start_ns=T0, open=close, high=close, low=close, close=close,
                          volume=1, trades=1, closed=True, source=src, quote_coverage_pct=50.0)

    store.upsert_bars([bar(1.0)], source="live", run_id="live-1")
    store.upsert_bars([bar(2.0, "replay")], source="replay", run_id="replay-1")  # never over live
    assert store.bars("SPY", "1s")[0].close == 1.0 and sources(store, "bars") == {("live", "live-1")}
    store.upsert_bars([bar(3.0, "poll")], source="live", run_id="live-2")  # same rank replaces
    got = store.bars("SPY", "1s")[0]
    assert (got.close, got.source, got.quote_coverage_pct) == (3.0, "poll", 50.0)
    store.upsert_bars([m.MicroBar(sym="SPY", interval="60s", start_ns=T0, open=1, high=1, low=1, close=1,
                                  source="backfill")])
    assert store.bars("SPY", "60s")[0].source == "backfill" and ("backfill", None) in sources(store, "bars")


def test_migration_keeps_older_rows_as_live(db_url):
    from alembic import command

    from spx_common.store import current, head, upgrade
    from spx_common.store.engine import _alembic_config, make_engine

    command.upgrade(_alembic_config(db_url), "0004")
    engine = make_engine(db_url)
    try:
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO bars (sym, interval, start_ns, open, high, low, close, volume, trades, "
                              "source) VALUES ('SPY', '1s', 1, 1, 1, 1, 1, 0, 0, 'tick'), "
                              "('SPY', '60s', 1, 1, 1, 1, 1, 0, 0, 'backfill')"))
            c.execute(sa.text("INSERT INTO orders (order_id, \"user\", option_symbol, side, quantity, type, status, "
                              "reason, ts) VALUES ('o', 'u', 'X', 'buy_to_open', 1, 'market', 'filled', '', 1)"))
        upgrade(db_url)
        assert current(db_url) == head()  # the newest revision, past 0005
        with engine.connect() as c:
            assert dict(c.execute(sa.text("SELECT interval, source FROM bars")).all()) == {"1s": "live",
                                                                                          "60s": "backfill"}
            assert c.execute(sa.text("SELECT source, run_id FROM orders")).one() == ("live", None)
    finally:
        engine.dispose()


def test_recorder_stamps_the_feeds_source_and_a_demo_never_quarantines(db_url, run_dir):
    """The recorder takes the provenance from the feed's status: a synthetic run's losing family is
    recorded as synthetic and quarantines nothing; the same from a live feed quarantines it."""
    from spx_common.store import open_store

    store = open_store(db_url)
    store.save_profile(FLOORS, author="test", reason="floors")
    mesh = Mesh(run_dir, db_url, SPX_STORE_REQUARANTINE_EVERY_S="60", SPX_STORE_REQUARANTINE_WINDOW_S="3600",
                SPX_FEED_SOURCE="live")  # the configuration says live: the feed's status overrides it
    try:
        def status(source: str, run: str, ts: int) -> None:
            mesh.publish("status.feed", "feed_status", m.FeedStatus(mode="replay", connected=True, ts=ts,
                                                                     source=source, run_id=run))
            eventually(lambda: (st := mesh.status()) and st.get("source") == source, 10, 0.1, f"recorder on {source}")

        status("synthetic", "demo-1", T0)
        for tr in losing("level", 4) + losing("inside_bar", 4, T0 + 10 * S):
            mesh.publish("setup.transition", "setup_transition", tr)
        mesh.publish("bar.1s.SPY", "bar", m.MicroBar(sym="SPY", interval="1s", start_ns=T0, open=1, high=1, low=1,
                                                     close=1, volume=1, trades=1, closed=True, source="replay"))
        mesh.publish("order.u", "order", m.Order(order_id="o1", user="u", option_symbol="X", side="buy_to_open",
                                                 quantity=1, type="market", ts=T0))
        eventually(lambda: store.count("setup_transitions") == 16 and store.count("bars") == 1
                   and store.count("orders") == 1, 15, 0.1, "demo rows recorded")
        # far later in event time: the recorder checks its window, which holds no live row
        mesh.publish("setup.transition", "setup_transition", m.SetupTransition(
            setup_id="late", detector="orb", family="orb", sym="I:SPX", direction="long", to_state="forming",
            reason="f", ts=T0 + 600 * S))
        eventually(lambda: store.count("setup_transitions") == 17, 15, 0.1, "late transition recorded")
        for table in ("setup_instances", "setup_transitions", "orders", "bars"):
            assert sources(store, table) == {("synthetic", "demo-1")}, table
        assert store.bars("SPY", "1s")[0].source == "replay"
        assert store.get_active_profile().version == 1  # the demo quarantined nothing

        status("live", "live-7", T0 + 610 * S)
        for tr in losing("level", 4, T0 + 610 * S):  # within requarantine_every_s of the last check
            mesh.publish("setup.transition", "setup_transition", tr)
        eventually(lambda: store.count("setup_transitions") == 25, 15, 0.1, "live rows recorded")
        mesh.publish("setup.transition", "setup_transition", m.SetupTransition(
            setup_id="late2", detector="orb", family="orb", sym="I:SPX", direction="long", to_state="forming",
            reason="f", ts=T0 + 700 * S))
        p = eventually(lambda: (p := store.get_active_profile()).version == 2 and p, 15, 0.1, "live re-quarantine")
        assert not p.allows("level") and p.allows("inside_bar")
        assert ("live", "live-7") in sources(store, "setup_instances")
    finally:
        store.close()
        code, err = mesh.close()
    assert code == 0, err


def test_restarts_restore_only_the_rows_of_their_own_provenance(store, db_url):
    """A live broker never takes over a demo's paper positions, cash or entries, nor a live detector a
    demo's setups (and the other way round)."""
    from services.broker.restore import load

    demo = {"source": "synthetic", "run_id": "demo-1"}
    store.record_orders([m.Order(order_id="o1", user="u", option_symbol="X", side="buy_to_open", quantity=1,
                                 type="market", ts=T0)], **demo)
    store.record_positions([m.Position(user="u", option_symbol="X", quantity=1, avg_price=2.0, ts=T0)], **demo)
    store.record_snapshots([{"user": "u", "ts": T0, "total_cash": 5.0}], **demo)
    store.record_transitions([m.SetupTransition(setup_id="s1", detector="orb", family="orb", sym="SPY",
                                                direction="long", to_state="forming", reason="f", ts=T0)], **demo)
    live = load(db_url, ["u"], T0, "live")
    assert (live.positions, live.entries, live.cash) == ([], {}, {})
    again = load(db_url, ["u"], T0, "synthetic")
    assert [p["option_symbol"] for p in again.positions] == ["X"] and again.entries == {"u": 1}
    assert again.cash == {"u": 5.0}
    assert store.active_setups(source="live") == []
    assert [r["setup_id"] for r in store.active_setups(source="synthetic")] == ["s1"]
